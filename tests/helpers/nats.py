"""A real nats-server for the tests, and a subscriber that collects what it receives.

``NatsServer`` starts Debian's ``nats-server`` (``apt-get install nats-server``) on 127.0.0.1
and a free port, waits until it answers with its INFO line, and stops it at the end. Missing
binary: skipped outside CI, a failure in CI (where every test must run).

``Subscriber`` runs a nats-py client in its own thread and event loop, subscribed (and
confirmed by the server) before ``start`` returns, collecting every message in order.
"""

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

import nats
import nats.aio.client
import nats.aio.msg
import pytest

from tests.helpers.tools import find_tool, in_ci

#: Where Debian installs it; not on the PATH of non-root users.
_DEBIAN_PATH = Path("/usr/sbin/nats-server")


def require_nats_server() -> str:
    """The path of nats-server; fails the test in CI when missing, skips it elsewhere."""
    path = find_tool("nats-server") or shutil.which("nats-server")
    if path is None and _DEBIAN_PATH.is_file():
        path = str(_DEBIAN_PATH)
    if path is not None:
        return path
    message = "nats-server not found (install nats-server: apt-get install nats-server)"
    if in_ci():
        pytest.fail(f"{message}; CI must run every test", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def closed_port() -> int:
    """A port nothing listens on (as far as anyone can tell)."""
    return free_port()


def _answers(port: int) -> bool:
    """True when a NATS server on ``port`` sends its INFO line."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.settimeout(0.5)
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


class NatsServer:
    """``nats-server -a 127.0.0.1 -p PORT`` until ``stop`` (or the end of a ``with``)."""

    def __init__(
        self, *, port: int | None = None, timeout: float = 10.0, attempts: int = 3
    ) -> None:
        """On ``port``, or a free one (retried: it may be taken between choosing and
        binding)."""
        binary = require_nats_server()
        last_output = ""
        for _ in range(attempts if port is None else 1):
            self.port = free_port() if port is None else port
            self.proc = subprocess.Popen(
                [binary, "-a", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _answers(self.port):
                    return
                time.sleep(0.05)
            self._kill()
            last_output = self.proc.stderr.read() if self.proc.stderr else ""
        raise AssertionError(f"nats-server did not start within {timeout} s:\n{last_output}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"nats://{self.address}"

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def stop(self) -> None:
        self._kill()
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Received:
    """One message as the subscriber saw it."""

    def __init__(self, subject: str, data: bytes) -> None:
        self.subject = subject
        self.data = data

    def __repr__(self) -> str:
        return f"Received({self.subject!r}, {self.data!r})"


class Subscriber:
    """A nats-py client subscribed to ``subject`` on ``url``, in a thread of its own."""

    def __init__(self, url: str, subject: str, *, reconnect: bool = False) -> None:
        self.url = url
        self.subject = subject
        self.reconnect = reconnect
        #: Set (and cleared by the caller) each time the client reconnects.
        self.reconnected = threading.Event()
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-nats-subscriber", daemon=True)

    def start(self, timeout: float = 10.0) -> Self:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError(f"subscriber not ready within {timeout} s")
        if self._error is not None:
            raise AssertionError(f"subscriber failed: {self._error!r}") from self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as error:  # noqa: BLE001 - reported by start()
            self._error = error
            self._ready.set()
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        nc = nats.aio.client.Client()

        async def on_reconnected() -> None:
            self.reconnected.set()

        async def on_error(error: Exception) -> None:
            pass  # reconnection attempts while the server is down

        await nc.connect(
            self.url,
            allow_reconnect=self.reconnect,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            connect_timeout=5,
            reconnected_cb=on_reconnected,
            error_cb=on_error,
        )

        async def on_message(msg: nats.aio.msg.Msg) -> None:
            with self._cond:
                self.messages.append(Received(msg.subject, msg.data))
                self._cond.notify_all()

        await nc.subscribe(self.subject, cb=on_message)
        await nc.flush()  # the server has the subscription
        self._ready.set()
        await self._stop.wait()
        with contextlib.suppress(Exception):
            await nc.drain()
        with contextlib.suppress(Exception):
            await nc.close()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Waits until at least ``count`` messages arrived; returns them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{len(self.messages)} messages within {timeout} s, expected {count};"
                        f" the last ones: {self.messages[-5:]}"
                    )
                self._cond.wait(remaining)
            return list(self.messages)

    def settle(self, quiet: float = 0.3, timeout: float = 10.0) -> list[Received]:
        """Waits until no message arrived for ``quiet`` seconds; returns them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = -1
            while seen != len(self.messages) and time.monotonic() < deadline:
                seen = len(self.messages)
                self._cond.wait(quiet)
            return list(self.messages)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            stop = self._stop
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
