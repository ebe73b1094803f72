"""The TLS benchmark runs end to end in quick mode (plain and TLS receivers, the load
generator over both), so that it does not rot between real runs. No timing assertions."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_tls_benchmark_quick(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "tls.py"), "--quick", "--storage", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = result.stdout
    assert "Target: CT over TLS at least 0.7x plain" in report
    for row in ("| ct (5 x ct) | plain |", "| ct (5 x ct) | tls |", "| small (20 x sc) | tls |"):
        assert row in report, report
    # Every run stored every instance (the benchmark raises otherwise) and left nothing behind.
    assert list(tmp_path.iterdir()) == []
