"""``oxidip bench pull``: the whole pull comparison in its quick form (every method, every
workload, one repetition) so that it does not rot between real runs; its targets and
oxidip's overhead over Orthanc's push checked on made-up numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oxidip.bench.model import Measurement
from oxidip.bench.pull import METHODS, QUICK
from oxidip.bench.pull_report import check_targets, overhead
from tests.helpers.orthanc import require_orthanc
from tests.helpers.tools import require_tool

REPO = Path(__file__).resolve().parent.parent


def test_quick_pull_comparison_of_every_method(tmp_path: Path) -> None:
    for tool in ("storescp", "echoscu", "movescu", "getscu", "time"):
        require_tool(tool)
    require_orthanc()
    out = tmp_path / "results"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "pull.py"),
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
    [report] = out.glob("pull-*.md")
    table = report.read_text()
    for workload in QUICK:
        assert f"### {workload.key}: " in table
    for name in METHODS:
        assert f"| {name} |" in table, name
    assert "| small | oxidip pull move / dcmtk movescu | at least 1 x |" in table
    assert "## Failed runs" not in table
    assert report.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = json.loads(report.with_suffix(".json").read_text())
    runs = {(m["workload"], m["receiver"]) for m in raw["measurements"]}
    assert runs == {(w.key, method) for w in QUICK for method in METHODS}
    for m in raw["measurements"]:
        assert m["instances"] == next(w.instances for w in QUICK if w.key == m["workload"])
        assert m["seconds"] > 0, m
        assert m["peak_rss"] > 0 or m["receiver"] == "Orthanc push", m
    assert not list(tmp_path.glob("oxidip-pull-*")), "the files are gone"


def _m(workload: str, who: str, seconds: float) -> Measurement:
    return Measurement(
        workload=workload,
        receiver=who,
        repetition=0,
        seconds=seconds,
        instances=1000,
        bytes=500_000_000,
        cpu_seconds=1.0,
        peak_rss=50 << 20,
        latency_p50_ms=0.0,
        latency_p99_ms=0.0,
    )


def test_targets_and_overhead_are_on_medians() -> None:
    small = QUICK[0]
    ms = [
        # oxidip move 1.0, 1.2, 9.0 s (median 1.2); movescu 1.5 s: 1.25x; push 0.8 s.
        _m("small", "oxidip pull move", 1.0),
        _m("small", "oxidip pull move", 1.2),
        _m("small", "oxidip pull move", 9.0),
        _m("small", "dcmtk movescu", 1.5),
        _m("small", "oxidip pull get", 2.0),
        _m("small", "dcmtk getscu", 1.0),
        _m("small", "Orthanc push", 0.8),
        _m("small", "Orthanc push", 0.7),
        _m("small", "Orthanc push", 5.0),
    ]
    targets = {t.what: t for t in check_targets(ms, [small])}
    move = targets["oxidip pull move / dcmtk movescu"]
    assert move.measured == pytest.approx(1.5 / 1.2) and move.met
    get = targets["oxidip pull get / dcmtk getscu"]
    assert get.measured == pytest.approx(0.5) and get.met is False
    assert overhead(ms, small, "oxidip pull move") == pytest.approx(1.2 / 0.8 - 1)
    assert overhead(ms, small, "dcmtk getscu") == pytest.approx(1.0 / 0.8 - 1)
