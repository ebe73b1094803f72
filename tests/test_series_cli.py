"""``oxidip series``: the table for people, ``--json`` for scripts, the filters, on SQLite and
PostgreSQL. Run through ``add_parser`` in-process; through ``python -m oxidip series`` too once
cli.py wires the subcommand."""

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oxidip.registry import ExpectedStatus, open_registry
from oxidip.series_cli import add_parser, format_age
from tests.test_registry import (  # noqa: F401 - fixtures
    postgres_database,
    postgres_url,
    stored,
)

STUDY_A = "1.2.826.0.1.3680043.9.7777.100"
STUDY_B = "1.2.826.0.1.3680043.9.7777.200"
COMPLETE = "1.2.826.0.1.3680043.9.7777.100.1"
RECEIVING = "1.2.826.0.1.3680043.9.7777.100.2"
UNKNOWN = "1.2.826.0.1.3680043.9.7777.200.1"


@pytest.fixture(params=["sqlite", "postgresql"])
def environment(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment of `oxidip series` (also set in os.environ), with a registry holding
    a complete series (CT1, study A), a receiving one (CT1, study A, 2 of 5) and a
    finalized-unknown one (MR1, study B, long description)."""
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
    registry = open_registry(connection, tmp_path / "data")
    try:
        registry.migrate()
        now = time.time()
        registry.register(
            [stored(f"{COMPLETE}.{i}", COMPLETE, study=STUDY_A, aet="CT1") for i in range(3)]
            + [stored(f"{RECEIVING}.{i}", RECEIVING, study=STUDY_A, aet="CT1") for i in range(2)],
            "node-a",
        )
        registry.set_expected(COMPLETE, 3, ExpectedStatus.KNOWN, "")
        registry.set_expected(RECEIVING, 5, ExpectedStatus.KNOWN, "")
        unknown = [
            stored(
                f"{UNKNOWN}.{i}", UNKNOWN, study=STUDY_B, aet="MR1", association=2, at=now - 7200
            )
            for i in range(4)
        ]
        for instance in unknown:
            instance.attributes.SeriesDescription = "a rather long description of a series, cut"
            instance.attributes.Modality = "MR"
        registry.register(unknown, "node-a")
        registry.set_expected(UNKNOWN, None, ExpectedStatus.ERROR, "C-FIND timed out")
        registry.association_ended("node-a", 2)
    finally:
        registry.close()
    yield env


def series(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Runs `oxidip series ARGV` in-process: (exit status, stdout, stderr)."""
    parser = argparse.ArgumentParser(prog="oxidip")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["series", *argv])
    capsys.readouterr()
    status = args.func(args)
    out, err = capsys.readouterr()
    return status, out, err


def test_table(environment: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = series(capsys=capsys)
    assert status == 0
    header, *lines = out.splitlines()
    assert header.split() == [
        "SERIES",
        "INSTANCE",
        "UID",
        "AE",
        "STUDY",
        "INSTANCE",
        "UID",
        "MODALITY",
        "DESCRIPTION",
        "EXPECTED",
        "RECEIVED",
        "STATE",
        "AGE",
    ]
    rows = {line.split()[0]: line for line in lines}
    assert list(rows) == [UNKNOWN, COMPLETE, RECEIVING]  # by first instance received
    assert rows[COMPLETE].split()[1:3] == ["CT1", STUDY_A]
    assert rows[COMPLETE].split()[-4:-1] == ["3", "3", "complete"]
    assert rows[RECEIVING].split()[-4:-1] == ["5", "2", "receiving"]
    assert "? (error)" in rows[UNKNOWN]
    assert rows[UNKNOWN].split()[-3:] == ["4", "finalized-unknown", "2h"]
    assert "a rather long description of..." in rows[UNKNOWN]
    # Aligned: every column starts where its header does; numbers end where theirs do.
    for name in ("AE", "STUDY INSTANCE UID", "STATE"):
        column = header.index(name)
        assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines)
    received_end = header.index("RECEIVED") + len("RECEIVED")
    assert [line[received_end - 1] for line in lines] == ["4", "3", "2"]
    assert all(line == line.rstrip() for line in out.splitlines())


def test_table_filters(environment: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    def listed(*argv: str) -> list[str]:
        status, out, _ = series(*argv, capsys=capsys)
        assert status == 0
        return [line.split()[0] for line in out.splitlines()[1:]]

    assert listed("--state", "complete") == [COMPLETE]
    assert listed("--aet", "CT1") == [COMPLETE, RECEIVING]
    assert listed() == [UNKNOWN, COMPLETE, RECEIVING]
    assert listed("--study", STUDY_B) == [UNKNOWN]
    assert listed("--aet", "CT1", "--state", "receiving", "--study", STUDY_A) == [RECEIVING]
    status, out, err = series("--aet", "NOBODY", capsys=capsys)
    assert (status, out, err) == (0, "", "no series\n")


def _objects(out: str) -> dict[str, dict[str, Any]]:
    objects = [json.loads(line) for line in out.splitlines()]
    return {obj["series_instance_uid"]: obj for obj in objects}


def _check_json(out: str) -> None:
    objects = _objects(out)
    assert list(objects) == [UNKNOWN, COMPLETE, RECEIVING]
    unknown, complete, receiving = objects.values()
    for obj in objects.values():
        assert {
            "series_instance_uid",
            "study_instance_uid",
            "calling_aet",
            "expected",
            "expected_status",
            "received",
            "state",
        } <= set(obj)
    assert complete["study_instance_uid"] == STUDY_A
    assert (complete["calling_aet"], complete["expected"], complete["received"]) == ("CT1", 3, 3)
    assert (complete["state"], complete["expected_status"]) == ("complete", "known")
    assert (receiving["expected"], receiving["received"], receiving["state"]) == (5, 2, "receiving")
    assert unknown["expected"] is None
    assert (unknown["expected_status"], unknown["expected_detail"]) == ("error", "C-FIND timed out")
    assert (unknown["received"], unknown["state"]) == (4, "finalized-unknown")
    assert unknown["finalized_at"] is not None


def test_json(environment: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = series("--json", capsys=capsys)
    assert status == 0
    _check_json(out)
    status, out, _ = series("--json", "--state", "finalized-unknown", capsys=capsys)
    assert list(_objects(out)) == [UNKNOWN]
    status, out, _ = series("--json", "--aet", "NOBODY", capsys=capsys)
    assert (status, out) == (0, "")


def test_through_oxidip_command(environment: dict[str, str]) -> None:
    from oxidip.cli import build_parser

    try:
        build_parser().parse_args(["series", "--json"])
    except SystemExit:
        pytest.skip("cli.py does not wire `oxidip series` yet")
    done = subprocess.run(
        [sys.executable, "-m", "oxidip", "series", "--json"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    _check_json(done.stdout)


def test_no_registry_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OXIDIP_FILES_ROOT", str(tmp_path / "nothing"))
    monkeypatch.delenv("OXIDIP_DB_CONNECTION", raising=False)
    status, out, err = series("--json", capsys=capsys)
    assert (status, out) == (0, "")
    assert "no registry at" in err
    assert not (tmp_path / "nothing").exists()  # nothing created


def test_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OXIDIP_DB_POOL", "zero")
    status, _, err = series(capsys=capsys)
    assert status == 2
    assert "OXIDIP_DB_POOL" in err


def test_unreachable_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OXIDIP_FILES_ROOT", str(tmp_path))
    monkeypatch.setenv("OXIDIP_DB_CONNECTION", "postgresql://postgres@127.0.0.1:1/nothing")
    status, _, err = series(capsys=capsys)
    assert status == 1
    assert "cannot open the registry" in err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-3, "0s"), (0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"), (7200, "2h"), (90000, "1d")],
)
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text
