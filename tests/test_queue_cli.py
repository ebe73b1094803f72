"""``oxidip queue`` (the table for people, ``--json``, ``retry``, ``cancel``) and the
``forwarded`` field of ``oxidip series --json``, on SQLite and PostgreSQL, in-process through
the real parser and once through ``python -m oxidip``."""

import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from oxidip._boundary import DeliveryResult, ItemOutcome, JobEndKind
from oxidip.cli import build_parser
from oxidip.registry import ExpectedStatus, JobRow, RetryPolicy, open_registry
from oxidip.routing import Routes
from tests.test_registry import (  # noqa: F401 - fixtures
    postgres_database,
    postgres_url,
    stored,
)

ROUTES = """
[destinations.archive]
aet = "ARCHIVE"
host = "127.0.0.1"
port = 11112

[[rules]]
name = "to-archive"
on = "series-complete"
to = ["archive"]
"""

DONE = "1.2.826.0.1.3680043.9.7777.300.1"
FAILED = "1.2.826.0.1.3680043.9.7777.300.2"
DEAD = "1.2.826.0.1.3680043.9.7777.300.3"
PENDING = "1.2.826.0.1.3680043.9.7777.300.4"

#: Backoff of at least 150 s: the next attempt is "in 2m" to "in 5m".
RETRY = RetryPolicy(base=300.0, maximum=300.0, attempts=5)


@pytest.fixture(params=["sqlite", "postgresql"])
def environment(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment of `oxidip queue` (also set in os.environ), with a registry holding
    four series of CT1, each complete with its job to the archive: one done (2 instances, one
    refused), one failed (connection refused), one dead (rejected for good), one pending."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OXIDIP_")}
    env["OXIDIP_FILES_ROOT"] = str(tmp_path / "data")
    connection = None
    if request.param == "postgresql":
        connection = request.getfixturevalue("postgres_url")
        env["OXIDIP_DB_CONNECTION"] = connection
    for name in [name for name in os.environ if name.startswith("OXIDIP_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    registry = open_registry(connection, tmp_path / "data", router=Routes.parse(ROUTES))
    try:
        registry.migrate()
        for series in (DONE, FAILED, DEAD, PENDING):
            registry.register([stored(f"{series}.{i}", series, aet="CT1") for i in (1, 2)], "p1")
            registry.set_expected(series, 2, ExpectedStatus.KNOWN, "")
        now = time.time()
        jobs = registry.claim_jobs("p1", {"archive": 3}, 60.0, now)
        assert [job.series_instance_uid for job in jobs] == [DONE, FAILED, DEAD]
        done, failed, dead = jobs
        registry.record_items(
            "p1",
            [
                ItemOutcome(done.job_id, done.items[0].item_id, DeliveryResult.DELIVERED, 0, ""),
                ItemOutcome(
                    done.job_id, done.items[1].item_id, DeliveryResult.FAILED, 0x0122, "no"
                ),
            ],
            now,
        )
        rng = random.Random(3)
        registry.end_job("p1", done.job_id, JobEndKind.OK, "", RETRY, now, rng)
        refused = "connection refused by 127.0.0.1:11112"
        registry.end_job("p1", failed.job_id, JobEndKind.TRANSIENT, refused, RETRY, now, rng)
        rejected = "association rejected (permanent):\ncalled AE title not recognized"
        registry.end_job("p1", dead.job_id, JobEndKind.PERMANENT, rejected, RETRY, now, rng)
    finally:
        registry.close()
    yield env


def oxidip(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Runs `oxidip ARGV` in-process: (exit status, stdout, stderr)."""
    args = build_parser().parse_args(list(argv))
    capsys.readouterr()
    status: int = args.func(args)
    out, err = capsys.readouterr()
    return status, out, err


def job_lines(out: str) -> dict[str, JobRow]:
    rows = [msgspec.json.decode(line, type=JobRow) for line in out.splitlines()]
    return {row.series_instance_uid: row for row in rows}


def test_table(environment: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = oxidip("queue", capsys=capsys)
    assert status == 0
    header, *lines = out.splitlines()
    assert re.split(r"\s{2,}", header) == [
        "ID",
        "STATE",
        "SERIES INSTANCE UID",
        "AE",
        "DESTINATION",
        "RULE",
        "SENT",
        "ATTEMPTS",
        "NEXT",
        "LAST ERROR",
    ]
    rows = {line.split()[2]: re.split(r"\s{2,}", line.strip()) for line in lines}
    assert list(rows) == [DONE, FAILED, DEAD, PENDING]  # oldest first
    assert rows[DONE][1:] == [
        "done",
        DONE,
        "CT1",
        "archive",
        "to-archive",
        "1/2 (1 failed)",
        "1",
        f"1 of 2 instances failed; first: SOP Instance {DONE}.2 answered 0122: no",
    ]
    assert rows[FAILED][1:6] == ["failed", FAILED, "CT1", "archive", "to-archive"]
    assert rows[FAILED][6:] == [
        "0/2",
        "1",
        rows[FAILED][8],
        "connection refused by 127.0.0.1:11112",
    ]
    assert re.fullmatch(r"in [2-5]m", rows[FAILED][8])
    # The error on one line, whatever its newlines.
    assert rows[DEAD][1] == "dead"
    assert rows[DEAD][-1] == ("association rejected (permanent): called AE title not recognized")
    assert rows[PENDING][1:] == ["pending", PENDING, "CT1", "archive", "to-archive", "0/2", "0"]
    # Aligned: every column starts where its header does.
    for name in ("STATE", "SERIES INSTANCE UID", "DESTINATION", "LAST ERROR"):
        column = header.index(name)
        assert all(line[column - 2 : column] == "  " for line in lines if len(line) > column)
    assert all(line == line.rstrip() for line in out.splitlines())


def test_json_and_filters(environment: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = oxidip("queue", "--json", capsys=capsys)
    assert status == 0
    rows = job_lines(out)
    assert list(rows) == [DONE, FAILED, DEAD, PENDING]
    first = json.loads(out.splitlines()[0])
    assert {
        "id",
        "series_instance_uid",
        "rule",
        "destination",
        "state",
        "delivered",
        "total",
        "attempts",
        "last_error",
    } <= set(first)
    assert (first["state"], first["delivered"], first["failed"], first["total"]) == (
        "done",
        1,
        1,
        2,
    )
    assert rows[FAILED].next_attempt_at is not None
    assert rows[FAILED].next_attempt_at > time.time() + 140
    status, out, _ = oxidip(
        "queue", "--json", "--state", "dead", "--state", "failed", capsys=capsys
    )
    assert list(job_lines(out)) == [FAILED, DEAD]
    status, out, _ = oxidip("queue", "--json", "--series", PENDING, capsys=capsys)
    assert list(job_lines(out)) == [PENDING]
    status, out, _ = oxidip("queue", "--json", "--limit", "2", capsys=capsys)
    assert list(job_lines(out)) == [DEAD, PENDING]  # the newest
    status, out, err = oxidip("queue", "--state", "held", capsys=capsys)
    assert (status, out, err) == (0, "", "no forwarding jobs\n")


def test_retry_and_cancel(environment: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    def states() -> dict[str, str]:
        _, out, _ = oxidip("queue", "--json", capsys=capsys)
        return {uid: row.state for uid, row in job_lines(out).items()}

    ids = {
        uid: row.id for uid, row in job_lines(oxidip("queue", "--json", capsys=capsys)[1]).items()
    }
    assert oxidip("queue", "retry", "--state", "dead", capsys=capsys) == (0, "1 job retried\n", "")
    assert states()[DEAD] == "pending"
    status, out, err = oxidip("queue", "retry", str(ids[PENDING]), capsys=capsys)
    assert (status, out) == (1, "0 jobs retried\n")
    assert f"no job among {ids[PENDING]} could be retried" in err
    status, out, _ = oxidip("queue", "retry", str(ids[DONE]), str(ids[FAILED]), capsys=capsys)
    assert (status, out) == (0, "2 jobs retried\n")
    assert states() == dict.fromkeys((DONE, FAILED, DEAD, PENDING), "pending")
    status, out, _ = oxidip("queue", "cancel", str(ids[DONE]), capsys=capsys)
    assert (status, out) == (0, "1 job cancelled\n")
    status, out, _ = oxidip("queue", "cancel", "--state", "pending", capsys=capsys)
    assert (status, out) == (0, "3 jobs cancelled\n")
    assert set(states().values()) == {"cancelled"}
    status, _, err = oxidip("queue", "cancel", capsys=capsys)
    assert status == 2 and "give job ids or --state" in err
    status, _, err = oxidip("queue", "cancel", "1", "--state", "dead", capsys=capsys)
    assert status == 2


def test_held_destinations_are_listed(
    environment: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    registry = open_registry(
        environment.get("OXIDIP_DB_CONNECTION"), environment["OXIDIP_FILES_ROOT"]
    )
    try:
        registry.hold_destination("archive", "3 transient failures in a row", time.time())
    finally:
        registry.close()
    status, out, _ = oxidip("queue", capsys=capsys)
    assert status == 0
    assert out.splitlines()[-1] == "destination archive held: 3 transient failures in a row"
    assert [line.split()[1] for line in out.splitlines()[1:-1]] == [
        "done",
        "held",
        "dead",
        "held",
    ]


def test_series_json_says_where_each_series_went(
    environment: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = oxidip("series", "--json", capsys=capsys)
    assert status == 0
    objects = {obj["series_instance_uid"]: obj for obj in map(json.loads, out.splitlines())}
    done = objects[DONE]["forwarded"]
    assert [{k: v for k, v in job.items() if k != "id"} for job in done] == [
        {
            "destination": "archive",
            "rule": "to-archive",
            "state": "done",
            "delivered": 1,
            "total": 2,
        }
    ]
    assert [job["state"] for job in objects[DEAD]["forwarded"]] == ["dead"]


def test_through_oxidip_command(environment: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "oxidip", "queue", "--json", "--state", "pending"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert list(job_lines(done.stdout)) == [PENDING]
