"""External tools (dcmtk, dicom-rs's storescp): found on PATH (or, for tools installed with
``cargo install``, in ``$CARGO_HOME/bin``, default ``~/.cargo/bin``), skipped outside CI when
missing, a failure in CI.

pynetdicom installs its own ``storescu``, ``echoscu``, ``storescp``... into the virtual
environment's ``bin``; those are never picked (an activated venv would put them first).

Debian's dcmtk 3.6.7 waits for a delayed ACK (~40 ms) per message unless ``TCP_NODELAY=1``
is in its environment, so every dcmtk process gets it.
"""

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

INSTALL_HINT = {
    "storescu": "apt-get install dcmtk",
    "echoscu": "apt-get install dcmtk",
    "storescp": "apt-get install dcmtk",
    "findscu": "apt-get install dcmtk",
    "dicom-storescp": "cargo install dicom-storescp --locked",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def cargo_bin() -> Path:
    """Where ``cargo install`` puts executables."""
    home = os.environ.get("CARGO_HOME")
    return Path(home) / "bin" if home else Path.home() / ".cargo" / "bin"


def find_tool(name: str) -> str | None:
    """``name`` on PATH, skipping the running virtual environment's ``bin`` (pynetdicom's
    same-named scripts); then in ``cargo install``'s directory, often not on PATH."""
    in_venv = sys.prefix != sys.base_prefix
    skip = {Path(sys.prefix, "bin").resolve()} if in_venv else set()
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if not directory or Path(directory).resolve() in skip:
            continue
        path = shutil.which(name, path=directory)
        if path is not None:
            return path
    return shutil.which(name, path=str(cargo_bin()))


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
