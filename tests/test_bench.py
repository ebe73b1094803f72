"""The receive benchmark runs end to end in its smallest form (every receiver, both
workloads), so that it does not rot between real benchmark runs."""

import subprocess
import sys
from pathlib import Path

from tests.helpers.tools import require_tool

REPO = Path(__file__).resolve().parent.parent


def test_receive_benchmark_smoke(tmp_path: Path) -> None:
    # Every registered receiver runs: a missing tool fails in CI, skips the test elsewhere
    # with what to install (dicom-storescp: cargo install dicom-storescp --locked).
    for tool in ("storescu", "storescp", "echoscu", "dicom-storescp"):
        require_tool(tool)
    output = tmp_path / "receive.md"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "receive.py"),
            "--small",
            "20",
            "--ct",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
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
    for workload in ("small", "ct"):
        for receiver in ("oxidip", "dcmtk storescp", "pynetdicom", "dicom-rs storescp"):
            assert f"| {workload} | {receiver} |" in table, table
