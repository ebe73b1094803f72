"""``oxidip bench compare``: the whole comparison in its quick form (every receiver, every
workload, one repetition) so that it does not rot between real runs; its report's target
checks on made-up numbers; the process measurements on processes doing known work."""

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from oxidip.bench.model import FULL, QUICK, Measurement
from oxidip.bench.receivers import RECEIVERS
from oxidip.bench.report import check_targets
from oxidip.bench.resources import ResourceMonitor
from tests.helpers.tools import require_tool

REPO = Path(__file__).resolve().parent.parent


def run_compare(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Runs ``bench/compare.py`` with ``argv``, as a user would."""
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "compare.py"), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def python_process(script: str) -> Iterator[tuple[subprocess.Popen[str], IO[str]]]:
    """A Python process running ``script``, and its standard output; killed at the end."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc, proc.stdout
    finally:
        proc.kill()
        proc.wait()


def test_quick_comparison_of_every_receiver(tmp_path: Path) -> None:
    # Every receiver runs: a missing tool fails in CI, skips the test elsewhere with what to
    # install. "oxidip postgresql" uses the PostgreSQL at 127.0.0.1:5432 (a scratch database).
    for tool in ("storescp", "echoscu", "dicom-storescp"):
        require_tool(tool)
    out = tmp_path / "results"
    result = run_compare(
        "--quick",
        "--repeats",
        "1",
        "--storage",
        str(tmp_path),
        "--prefill",
        "0.05",
        "--output-dir",
        str(out),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "latest.md").read_text()
    for workload in QUICK:
        assert f"### {workload.key}: " in table
    for name in RECEIVERS:
        assert f"| {name} |" in table, name
    assert "| small | oxidip / dcmtk storescp | at least 1.5 x |" in table
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Failed runs" not in table
    assert table.count("Write ceiling (one thread") == len(QUICK)
    raw = json.loads((out / "latest.json").read_text())
    assert raw["failures"] == []
    assert {c["workload"] for c in raw["ceilings"]} == {w.key for w in QUICK}
    assert all(c["seconds"] > 0 and c["bytes"] > 0 for c in raw["ceilings"])
    runs = {(m["workload"], m["receiver"]) for m in raw["measurements"]}
    # Every pair but the single-process storescp with idle associations, which it cannot serve.
    expected = {(w.key, name) for w in QUICK for name in RECEIVERS}
    serial = {("idle", name) for name, spec in RECEIVERS.items() if not spec.concurrent}
    assert serial == {("idle", "dcmtk storescp"), ("idle", "dcmtk storescp --ignore")}
    assert runs == expected - serial
    for m in raw["measurements"]:
        assert m["instances"] > 0 and m["seconds"] > 0 and m["peak_rss"] > 0, m
        assert (m["registered_seconds"] is not None) == m["receiver"].startswith("oxidip"), m
    # The storage directories are gone.
    assert not list(tmp_path.glob("oxidip-compare-*"))


def test_baseline_build_runs_alongside_and_is_compared(tmp_path: Path) -> None:
    # The interpreter running the tests stands in for another installation: what matters is
    # that the baseline runs as a receiver of its own and gets its before/after table.
    out = tmp_path / "results"
    result = run_compare(
        "--quick",
        "--repeats",
        "2",
        "--workloads",
        "small",
        "--receivers",
        "oxidip",
        "--baseline",
        sys.executable,
        "--storage",
        str(tmp_path),
        "--prefill",
        "0.01",
        "--output-dir",
        str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "latest.md").read_text()
    assert "## oxidip against `oxidip baseline`" in table
    section = table.split("## oxidip against `oxidip baseline`")[1].split("## Results")[0]
    row = next(line for line in section.splitlines() if line.startswith("| small | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].endswith("inst/s") and cells[2].endswith("inst/s")
    assert float(cells[3].rstrip("x")) > 0
    assert cells[4] == "2 / 2"
    raw = json.loads((out / "latest.json").read_text())
    receivers = {m["receiver"] for m in raw["measurements"]}
    assert receivers == {"oxidip", "oxidip baseline"}


def _m(workload: str, receiver: str, seconds: float, peak_rss: int = 50 << 20) -> Measurement:
    return Measurement(
        workload=workload,
        receiver=receiver,
        repetition=0,
        seconds=seconds,
        instances=1000,
        bytes=500_000_000,
        cpu_seconds=1.0,
        peak_rss=peak_rss,
        latency_p50_ms=1.0,
        latency_p99_ms=2.0,
    )


def test_targets_are_checked_on_medians() -> None:
    ms = [
        # oxidip: 1.0, 1.1 and 5.0 s: median 1.1 s; storescp's median 2.0 s: ratio 1.82.
        _m("small", "oxidip", 1.0),
        _m("small", "oxidip", 1.1),
        _m("small", "oxidip", 5.0),
        _m("small", "dcmtk storescp", 2.0),
        _m("small", "dcmtk storescp", 1.9),
        _m("small", "dcmtk storescp", 2.2),
        _m("small", "pynetdicom", 10.0),
        _m("large", "oxidip", 1.0, peak_rss=120 << 20),
    ]
    targets = {(t.workload, t.what): t for t in check_targets(ms, FULL, "tmpfs")}
    storescp = targets["small", "oxidip / dcmtk storescp"]
    assert storescp.measured == pytest.approx(2.0 / 1.1) and storescp.met
    pynetdicom = targets["small", "oxidip / pynetdicom"]
    assert pynetdicom.measured == pytest.approx(10.0 / 1.1) and pynetdicom.met is False
    # Not measured: reported, neither met nor failed.
    assert targets["small", "oxidip / dicom-rs storescp"].met is None
    rss = targets["large", "oxidip peak RSS"]
    assert rss.measured == pytest.approx(120) and rss.met is False
    # No measurement of oxidip with PostgreSQL: no targets for it.
    assert not any("postgresql" in what for _, what in targets)


def test_monitor_counts_the_cpu_and_memory_of_forked_children() -> None:
    # A parent that forks a child burning CPU and holding 64 MiB, then waits for it.
    script = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    block = bytearray(64 << 20)\n"
        "    for i in range(0, len(block), 4096): block[i] = 1\n"
        "    end = time.process_time() + 0.5\n"
        "    while time.process_time() < end: pass\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print('done', flush=True)\n"
        "time.sleep(30)\n"
    )
    with python_process(script) as (proc, stdout):
        # Sampled often enough to see the child, alive for half a second.
        monitor = ResourceMonitor(proc.pid, interval=0.05)
        monitor.start()
        assert stdout.readline() == "done\n"
        cpu, peak = monitor.stop()
    # The child's half second, reaped by the parent, is counted; its memory was sampled.
    assert cpu >= 0.45, cpu
    assert peak >= 64 << 20, peak


def test_monitor_measures_from_start_only() -> None:
    # Busy first, then says so and sleeps: the monitor started after that sees no CPU.
    script = (
        "import time\n"
        "end = time.process_time() + 0.4\n"
        "while time.process_time() < end: pass\n"
        "print('idle', flush=True)\n"
        "time.sleep(30)\n"
    )
    with python_process(script) as (proc, stdout):
        assert stdout.readline() == "idle\n"
        monitor = ResourceMonitor(proc.pid)
        monitor.start()
        cpu, peak = monitor.stop()
    assert cpu < 0.1, cpu
    assert peak > 0


def test_a_run_past_its_deadline_is_reported_failed(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["--quick", "--repeats", "1", "--workloads", "small", "--receivers", "oxidip"]
    argv += ["--run-timeout", "0.000001", "--prefill", "0", "--storage", str(tmp_path)]
    result = run_compare(*argv, "--output-dir", str(out))
    assert result.returncode == 1, result.stderr[-3000:]
    table = (out / "latest.md").read_text()
    assert "## Failed runs" in table and "- small / oxidip #0: " in table, table
    assert "of 200 stored" in table and "deadline of" in table, table
    assert json.loads((out / "latest.json").read_text())["measurements"] == []


def test_a_run_can_be_confined_to_chosen_cpus(tmp_path: Path) -> None:
    out = tmp_path / "results"
    argv = ["--quick", "--repeats", "1", "--workloads", "small", "--receivers", "oxidip"]
    argv += ["--prefill", "0", "--storage", str(tmp_path), "--output-dir", str(out)]
    cpu = min(os.sched_getaffinity(0))
    result = run_compare(*argv, "--cpus", str(cpu))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"every process confined to CPU {cpu}." in (out / "latest.md").read_text()
    assert json.loads((out / "latest.json").read_text())["context"]["cpus"] == [cpu]
    refused = run_compare(*argv, "--cpus", f"{cpu},4096", timeout=60)
    assert refused.returncode == 2
    allowed = sorted(os.sched_getaffinity(0))
    assert f"--cpus: CPUs '{cpu},4096' not among {allowed}" in refused.stderr, refused.stderr
