"""``python -m oxidip serve`` as a subprocess: started with an environment, ready once it
logs ``listening`` (JSON logs carry the bound port), always killed at the end; and any other
``oxidip`` command run to completion (``run_oxidip``)."""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self, TypeGuard

#: ``python -m oxidip serve`` with this interpreter.
SERVE = (sys.executable, "-m", "oxidip", "serve")


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without its ``OXIDIP_*`` variables, plus ``overrides``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OXIDIP_")}
    env.update(overrides)
    return env


def run_oxidip(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m oxidip ARGS`` to completion (killed after ``timeout``), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "oxidip", *args],
        env=env,
        cwd=cwd,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


class ServerProcess:
    def __init__(
        self, env: dict[str, str], *, cwd: Path | None = None, command: Sequence[str] = SERVE
    ) -> None:
        """``command``: what to run, ``SERVE`` unless a test wraps it (e.g. to set limits)."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OXIDIP_")}
        full_env.update(env)
        full_env.setdefault("OXIDIP_LOG_FORMAT", "json")
        self.proc = subprocess.Popen(
            list(command),
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port: int | None = None

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records so far (other lines skipped)."""
        out = []
        for line in list(self.lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def wait_for_record(self, msg: str, timeout: float = 30.0, **fields: object) -> dict[str, Any]:
        """Waits for the first JSON record whose ``msg`` is ``msg`` and whose fields include
        ``fields`` (already logged or not)."""

        def matches(record: object) -> TypeGuard[dict[str, Any]]:
            return (
                isinstance(record, dict)
                and record.get("msg") == msg
                and all(record.get(key) == value for key, value in fields.items())
            )

        deadline = time.monotonic() + timeout
        for record in self.records():
            if matches(record):
                return record
        wanted = f"{msg!r}" + (f" with {fields}" if fields else "")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {wanted} log record within {timeout} s:\n{self.output()}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(5)
                raise AssertionError(
                    f"server exited ({self.proc.returncode}) before {wanted}:\n{self.output()}"
                )
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if matches(record):
                return record

    def wait_listening(self, timeout: float = 30.0) -> int:
        record = self.wait_for_record("listening", timeout)
        self.port = int(record["port"])
        return self.port

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then waits for the exit; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"no exit within {timeout} s of SIGTERM:\n{self.output()}"
            ) from None

    def output(self) -> str:
        return "\n".join(self.lines[-50:])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
