"""``oxidip bench forward``: the whole forwarding comparison in its quick form (every sender,
every workload, one repetition) so that it does not rot between real runs; its targets
checked on made-up numbers; a sender's CPU and peak memory taken from the reaped process."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oxidip.bench.forward import (
    QUICK,
    RECEIVING_ALONE,
    RECEIVING_WHILE_FORWARDING,
    SENDERS,
    run_measured,
)
from oxidip.bench.forward_report import check_targets
from oxidip.bench.model import Measurement
from tests.helpers.tools import require_tool

REPO = Path(__file__).resolve().parent.parent


def test_quick_forwarding_comparison_of_every_sender(tmp_path: Path) -> None:
    for tool in ("storescp", "echoscu", "dcmsend", "storescu", "time"):
        require_tool(tool)
    out = tmp_path / "results"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "forward.py"),
            "--quick",
            "--repeats",
            "1",
            "--storage",
            str(tmp_path),
            "--output-dir",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [report] = out.glob("forward-*.md")
    table = report.read_text()
    for workload in QUICK:
        assert f"### {workload.key}: " in table
    for name in (*SENDERS, RECEIVING_ALONE, RECEIVING_WHILE_FORWARDING):
        assert f"| {name} |" in table, name
    assert "| small | oxidip / dcmsend | at least 1.5 x |" in table
    assert "| large | oxidip forwarding process peak RSS | at most 100 MiB |" in table
    assert "## Failed runs" not in table
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = json.loads(report.with_suffix(".json").read_text())
    runs = {(m["workload"], m["receiver"]) for m in raw["measurements"]}
    forwarding = {(w.key, s) for w in QUICK if w.key != "receive" for s in SENDERS}
    receiving = {("receive", RECEIVING_ALONE), ("receive", RECEIVING_WHILE_FORWARDING)}
    assert runs == forwarding | receiving
    for m in raw["measurements"]:
        assert m["instances"] > 0 and m["seconds"] > 0 and m["peak_rss"] > 0, m
    [meanwhile] = raw["forwarded_while_receiving"]
    assert meanwhile["delivered"] > 0 and meanwhile["errors"] == []
    assert not list(tmp_path.glob("oxidip-forward-*")), "the files are gone"


def _m(workload: str, who: str, seconds: float, peak_rss: int = 50 << 20) -> Measurement:
    return Measurement(
        workload=workload,
        receiver=who,
        repetition=0,
        seconds=seconds,
        instances=1000,
        bytes=500_000_000,
        cpu_seconds=1.0,
        peak_rss=peak_rss,
        latency_p50_ms=0.0,
        latency_p99_ms=0.0,
    )


def test_targets_are_checked_on_medians() -> None:
    ms = [
        # oxidip 1.0, 1.1, 9.0 s (median 1.1); dcmsend's median 2.0 s: 1.82x.
        _m("small", "oxidip", 1.0),
        _m("small", "oxidip", 1.1),
        _m("small", "oxidip", 9.0),
        _m("small", "dcmtk dcmsend", 2.0),
        _m("small", "dcmtk dcmsend", 1.5),
        _m("small", "dcmtk dcmsend", 3.0),
        _m("ct", "oxidip", 1.0),
        _m("ct", "dcmtk dcmsend", 1.1),
        _m("large", "oxidip", 1.0, peak_rss=120 << 20),
        _m("receive", "receiving alone", 1.0),
        _m("receive", "receiving while forwarding", 1.05),
    ]
    targets = {t.workload: t for t in check_targets(ms, QUICK)}
    assert targets["small"].measured == pytest.approx(2.0 / 1.1) and targets["small"].met
    assert targets["ct"].measured == pytest.approx(1.1) and targets["ct"].met is False
    assert targets["large"].measured == pytest.approx(120) and targets["large"].met is False
    assert targets["receive"].measured == pytest.approx(1 / 1.05) and targets["receive"].met


def test_a_senders_cpu_and_peak_memory_are_its_own(tmp_path: Path) -> None:
    script = (
        "import time\n"
        "block = bytearray(64 << 20)\n"
        "for i in range(0, len(block), 4096): block[i] = 1\n"
        "end = time.process_time() + 0.3\n"
        "while time.process_time() < end: pass\n"
    )
    require_tool("time")
    with (tmp_path / "log").open("w") as log:
        status, cpu, peak = run_measured([sys.executable, "-c", script], {}, log)
        assert status == 0
        assert cpu >= 0.3, cpu
        assert 64 << 20 <= peak < 120 << 20, peak
        # A small program is small, however large the process that started it.
        ballast = bytearray(200 << 20)
        ballast[::4096] = b"\1" * len(ballast[::4096])
        status, _, peak = run_measured(["/bin/true"], {}, log)
        assert status == 0 and peak < 20 << 20, peak
