"""The registration benchmark runs end to end in quick mode (registration throughput,
receiving with registration on vs off, series completion latency; SQLite and PostgreSQL), so
that it does not rot between real benchmark runs. Sane numbers, no timing assertions."""

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.helpers.tools import in_ci, require_tool

REPO = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get(
    "BENCH_POSTGRES_URL",
    os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
)


def _require_postgres() -> None:
    try:
        psycopg.connect(POSTGRES, connect_timeout=5).close()
    except psycopg.OperationalError as error:
        message = f"PostgreSQL unreachable at {POSTGRES}: {error}"
        if in_ci():
            pytest.fail(f"{message}; CI must run every test", pytrace=False)
        pytest.skip(f"{message} (apt-get install postgresql, trust for user postgres)")


def _databases() -> set[str]:
    with psycopg.connect(POSTGRES, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'oxidip_bench_%'"
        ).fetchall()
    return {row[0] for row in rows}


def _rows(section: str) -> dict[str, list[str]]:
    """The table rows of a report section: first cell -> the other cells."""
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


def test_registration_benchmark_quick(tmp_path: Path) -> None:
    for tool in ("storescu", "echoscu"):
        require_tool(tool)
    _require_postgres()
    databases_before = _databases()
    output = tmp_path / "registration.md"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "registration.py"),
            "--quick",
            "--postgres",
            POSTGRES,
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
    text = output.read_text()
    assert text in result.stdout  # printed too

    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    titles = [s.splitlines()[0] for s in sections[1:]]
    assert titles == [
        "Registration throughput",
        "Registration with routes",
        "Receiving with registration on vs off",
        "Series completion latency",
    ], text
    throughput, _, receiving, latency = (_rows(s) for s in sections[1:])
    routed = [
        line.strip("|").split("|")
        for line in sections[2].splitlines()
        if line.startswith(("| SQLite", "| PostgreSQL"))
    ]
    # Per backend: no routes (no jobs), a series-finalized rule (one job per series, created
    # when the association ends), an instance rule (one job per series and batch).
    assert sorted((b.strip(), r.strip(), int(j), _number(i)) for b, r, _, _, j, i in routed) == [
        (backend, routing, jobs, items)
        for backend in ("PostgreSQL", "SQLite")
        for routing, jobs, items in (
            ("instance", 2, 2000),
            ("none", 0, 0),
            ("series-finalized", 2, 2000),
        )
    ], text

    for backend in ("SQLite", "PostgreSQL"):
        instances, batch, median, span, *_ = throughput[backend]
        assert _number(instances) == 2000 and _number(batch) == 1000, text
        low, high = (_number(n) for n in span.split("-"))
        assert 0 < low <= _number(median) <= high, text

    off = receiving["registration off (noop hook)"]
    assert _number(off[0]) > 0 and off[2] == "1.00", text
    for backend in ("SQLite", "PostgreSQL"):
        acked, _, ratio, registered, _, registered_ratio = receiving[f"registration on, {backend}"]
        assert _number(acked) > 0 and _number(ratio) > 0, text
        # Registered after (or when) acknowledged, never before.
        assert 0 < _number(registered) <= _number(acked) * 1.0001, text
        assert _number(registered_ratio) > 0, text
    assert "within 10%" in sections[3], text

    for backend in ("SQLite", "PostgreSQL"):
        series, per_series, median, span = latency[backend]
        assert _number(series) == 2 and _number(per_series) == 10, text
        # A latency can be slightly negative (the hook may run before pynetdicom has read
        # the last response), never more than a few ms; and a series completes within 60 s.
        assert -50 < _number(median) < 60_000, text

    # The benchmark's database is gone; its work directory too.
    assert _databases() <= databases_before
    assert [p.name for p in tmp_path.iterdir()] == ["registration.md"]
