"""Finding the external programs the benchmarks run, how to run dcmtk's, and what a report
says of the machine and the versions."""

import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "HOST",
    "INSTALL_HINT",
    "cargo_bin",
    "cpu_model",
    "dcmtk_env",
    "free_port",
    "keep_pynetdicom_responses",
    "need",
    "tool",
    "versions",
]

HOST = "127.0.0.1"

#: How to install each external tool, for error messages.
INSTALL_HINT = {
    "storescu": "apt-get install dcmtk",
    "storescp": "apt-get install dcmtk",
    "echoscu": "apt-get install dcmtk",
    "findscu": "apt-get install dcmtk",
    "dicom-storescp": "cargo install dicom-storescp --locked --version 0.10.1",
    "openssl": "apt-get install openssl",
    "dcmsend": "apt-get install dcmtk",
    "time": "apt-get install time (GNU time)",
}


def cargo_bin() -> Path:
    """Where ``cargo install`` puts executables."""
    home = os.environ.get("CARGO_HOME")
    return Path(home) / "bin" if home else Path.home() / ".cargo" / "bin"


def tool(name: str) -> str | None:
    """An executable on PATH, never from the running virtual environment's ``bin``: pynetdicom
    installs its own ``storescu``, ``echoscu``, ``storescp`` there. Falls back to
    ``cargo install``'s directory (dicom-rs's ``dicom-storescp``), often not on PATH."""
    skip = {Path(sys.prefix, "bin").resolve()} if sys.prefix != sys.base_prefix else set()
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if directory and Path(directory).resolve() not in skip:
            path = shutil.which(name, path=directory)
            if path is not None:
                return path
    return shutil.which(name, path=str(cargo_bin()))


def need(name: str) -> str:
    """``tool(name)``, or a RuntimeError saying how to install it."""
    path = tool(name)
    if path is None:
        hint = INSTALL_HINT.get(name, f"install {name}")
        raise RuntimeError(f"{name} not found on PATH ({hint})")
    return path


def dcmtk_env() -> dict[str, str]:
    """Debian's dcmtk 3.6.7 waits ~40 ms per message on delayed ACKs without TCP_NODELAY."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def free_port() -> int:
    """A port free right now (a small race with other processes; fine on a bench machine)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def versions() -> dict[str, str]:
    """Versions of Python, oxidip and the peers found."""
    versions = {"python": platform.python_version()}
    try:
        import oxidip

        versions["oxidip"] = oxidip.__version__
    except ImportError:
        versions["oxidip"] = "not importable"
    try:
        import pynetdicom

        versions["pynetdicom"] = pynetdicom.__version__
    except ImportError:
        pass
    if tool("storescp"):
        out = subprocess.run(
            [need("storescp"), "--version"], capture_output=True, text=True, check=False
        )
        first = out.stdout.splitlines()[0] if out.stdout else ""
        versions["dcmtk"] = first.replace("$dcmtk: ", "").rstrip(" $")
    if tool("dicom-storescp"):
        out = subprocess.run(
            [need("dicom-storescp"), "--version"], capture_output=True, text=True, check=False
        )
        versions["dicom-rs storescp"] = out.stdout.strip().removeprefix("dicom-storescp ")
    return versions


def cpu_model() -> str:
    """The CPU model name, for reports."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def keep_pynetdicom_responses() -> None:
    """Works around a race in pynetdicom's requestor (3.0): ``send_c_store()`` (and the other
    ``send_c_*()``) pauses the association's reactor thread, then sends and waits for the
    response; but the reactor can be just past its pause check when it is told to pause, take
    the response off the queue if it is back within microseconds, log "Received unexpected
    C-STORE service message" and drop it, and ``send_c_store()`` then waits for its DIMSE
    timeout (as in pydicom/pynetdicom#875 for C-FIND). A receiver that acknowledges at once
    answers that fast on loopback. A response the reactor takes is put back once for the
    waiting ``send_c_*()``; a request, or a response put back before, goes on as before.
    Patches ``Association`` once for the whole process; idempotent."""
    from pynetdicom.association import Association

    if getattr(Association, "_oxidip_keeps_responses", False):
        return
    serve_request = Association._serve_request

    def serve_or_put_back(self: Association, msg: Any, context_id: int) -> None:
        if msg.is_valid_request or getattr(msg, "_oxidip_put_back", False):
            serve_request(self, msg, context_id)
            return
        msg._oxidip_put_back = True
        self.dimse.msg_queue.put((context_id, msg))

    Association._serve_request = serve_or_put_back  # type: ignore[method-assign]
    Association._oxidip_keeps_responses = True  # type: ignore[attr-defined]
