"""External tools (dcmtk, dicom-rs's storescp): found on PATH (or, for tools installed with
``cargo install``, in ``$CARGO_HOME/bin``, default ``~/.cargo/bin``), skipped outside CI when
missing, a failure in CI.

pynetdicom installs its own ``storescu``, ``echoscu``, ``storescp``... into the virtual
environment's ``bin``; those are never picked (an activated venv would put them first).

Debian's dcmtk 3.6.7 waits for a delayed ACK (~40 ms) per message unless ``TCP_NODELAY=1``
is in its environment, so every dcmtk process gets it.
"""

import os
import socket
import subprocess
import time
from collections.abc import Sequence

import pytest

from oxidip.bench.tools import INSTALL_HINT
from oxidip.bench.tools import tool as find_tool

__all__ = ["dcmtk_env", "find_tool", "in_ci", "require_tool", "run_dcmtk", "wait_listening"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def require_tool(name: str) -> str:
    """The absolute path of ``name``. When missing: fails the test in CI (where every test
    must run), skips it elsewhere with what to install."""
    path = find_tool(name)
    if path is not None:
        return path
    hint = INSTALL_HINT.get(name, f"install {name}")
    message = f"{name} not found on PATH ({hint})"
    if in_ci():
        pytest.fail(f"{message}; CI must run every test", pytrace=False)
    pytest.skip(message)


def dcmtk_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if extra:
        env.update(extra)
    return env


def run_dcmtk(args: Sequence[str], *, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Runs a dcmtk tool to completion (killed after ``timeout``), output captured."""
    tool = require_tool(args[0])
    return subprocess.run(
        [tool, *args[1:]],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_listening(
    host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0
) -> None:
    """Waits until ``proc`` (a tool given ``port`` on its command line) accepts connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args!r} exited early"
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # polling until it listens, with the deadline above
    raise AssertionError(f"{proc.args!r} did not start listening on {port}")
