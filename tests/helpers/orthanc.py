"""A real Orthanc playing the hospital PACS (``oxidip.bench.orthanc``, shared with ``oxidip
bench pull``; see its docstring). Orthanc must run in CI: when it is missing the test fails
there and is skipped elsewhere ("apt-get install orthanc")."""

import pytest

from oxidip.bench import orthanc
from oxidip.bench.orthanc import INSTALL_HINT, OrthancError, find_orthanc, free_port
from tests.helpers.tools import in_ci

__all__ = ["OrthancError", "OrthancServer", "find_orthanc", "free_port", "require_orthanc"]


def require_orthanc() -> str:
    """The Orthanc binary; when missing, fails the test in CI and skips it elsewhere."""
    path = find_orthanc()
    if path is not None:
        return path
    message = f"Orthanc not found on PATH nor in /usr/sbin ({INSTALL_HINT})"
    if in_ci():
        pytest.fail(f"{message}; CI must run every test", pytrace=False)
    pytest.skip(message)


class OrthancServer(orthanc.OrthancServer):
    """``oxidip.bench.orthanc.OrthancServer`` that fails or skips the test when Orthanc is
    missing."""

    def start(self) -> None:
        require_orthanc()
        super().start()
