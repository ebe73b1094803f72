"""The Nagle benchmark runs end to end in its smallest form (every sender, mode and receiver),
so that it does not rot between real benchmark runs."""

import subprocess
import sys
from pathlib import Path

from tests.helpers.orthanc import require_orthanc
from tests.helpers.tools import require_tool

REPO = Path(__file__).resolve().parent.parent


def test_nagle_benchmark_smoke(tmp_path: Path) -> None:
    for tool in ("storescu", "storescp", "echoscu"):
        require_tool(tool)
    require_orthanc()
    output = tmp_path / "nagle.md"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "nagle.py"),
            "--small",
            "5",
            "--repeats",
            "1",
            "--workdir",
            str(tmp_path),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = output.read_text()
    for sender in ("storescu", "orthanc"):
        for receiver in ("oxidip", "dcmtk storescp"):
            assert f"| {sender} | {receiver} |" in table, table
    assert "| oxidip bench send | dcmtk storescp |" in table, table
