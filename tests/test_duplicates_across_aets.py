"""The same instances sent by two calling AE titles (issue 9 item 17). The rule (README:
Duplicates): each sender's delivery is tracked on its own, series and instances keyed by
UID and calling AE; with a path template that keeps senders apart, every file on disk has
its own row, ``oxidip series`` shows one series per sender, and ``oxidip reconcile`` rebuilds
the same from the files.

- end to end: ``oxidip serve`` receives one series from two AEs, then the registry is lost
  and rebuilt by ``oxidip reconcile``;
- the registry on SQLite and PostgreSQL: counts, expected counts and states per sender, the
  duplicates policies per sender, and a version 1 database migrated with its rows.
"""

import shutil
import sqlite3
import time
from pathlib import Path

import psycopg
import pytest

from oxidip._boundary import Attributes, InstanceStored
from oxidip.registry import ExpectedStatus, Registry, open_registry, sqlite_path
from oxidip.registry._postgres import MIGRATIONS as POSTGRES_MIGRATIONS
from oxidip.registry._sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from tests.helpers.dicom import stored_files
from tests.helpers.e2e import (
    Oxidip,
    RegistryView,
    make_series,
    reconcile,
    send,
    series_json,
)

SENDERS = ("PACS_A", "PACS_B")


def deliveries(root: Path) -> dict[str, int]:
    """``oxidip series --json``: calling AE -> instances received, for every series row."""
    rows = series_json(root, None)
    assert len({row["series_instance_uid"] for row in rows}) == 1, rows
    return {str(row["calling_aet"]): int(str(row["received"])) for row in rows}


def registered_paths(root: Path) -> list[str]:
    registry = open_registry(None, root, pool_size=1)
    try:
        return sorted(path for _, path in registry.instance_paths())
    finally:
        registry.close()


def test_one_series_from_two_senders_agrees_with_the_disk(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    series = make_series(3)
    with Oxidip(root) as server, RegistryView(root, None) as view:
        for sender in SENDERS:
            assert set(send(server.port, series.datasets, calling_aet=sender).values()) == {0}
        view.wait_series(
            lambda _: (
                sorted((r.calling_aet, r.received) for r in view.registry.list_series())
                == [(SENDERS[0], 3), (SENDERS[1], 3)]
            ),
            server=server,
        )
        server.stop()
    files = sorted(str(path) for path in stored_files(root))
    assert len(files) == 6, "one file per sender and instance"
    assert registered_paths(root) == files
    assert deliveries(root) == dict.fromkeys(SENDERS, 3)

    # The registry is lost; the files are not.
    shutil.rmtree(root / ".oxidip")
    result = reconcile(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "registered 6 files, 0 unreadable" in result.stdout
    assert registered_paths(root) == files
    assert deliveries(root) == dict.fromkeys(SENDERS, 3)


# --- the registry -------------------------------------------------------------------------


def stored(sop: str, series: str, aet: str, *, path: str | None = None) -> InstanceStored:
    now = time.time()
    return InstanceStored(
        association_id=1,
        path=path or f"/storage/{aet}/{series}/{sop}.dcm",
        size=100,
        attributes=Attributes(
            SOPInstanceUID=sop, SeriesInstanceUID=series, StudyInstanceUID="1.2.3", PatientID="P"
        ),
        calling_aet=aet,
        called_aet="OXIDIP",
        peer="127.0.0.1:1",
        transfer_syntax="1.2.840.10008.1.2.1",
        received_at=now,
        stored_at=now,
        duplicate=False,
    )


def open_migrated(db: str | None, root: Path, duplicates: str = "overwrite") -> Registry:
    registry = open_registry(db, root, pool_size=1, duplicates=duplicates)
    registry.migrate()
    return registry


def rows_by_sender(registry: Registry) -> dict[str, tuple[int, str, str]]:
    return {
        row.calling_aet: (row.received, row.state, row.expected_status)
        for row in registry.list_series()
    }


def test_each_sender_has_its_count_expected_count_and_state(db: str | None, tmp_path: Path) -> None:
    registry = open_migrated(db, tmp_path)
    try:
        series = "1.2.3.4"
        first = registry.register([stored(f"{series}.{i}", series, "PACS_A") for i in (1, 2)], "n")
        assert [(r.calling_aet, r.state) for r in first.new_series] == [("PACS_A", "receiving")]
        # The same two instances and one more from another sender: a series of its own.
        second = registry.register(
            [stored(f"{series}.{i}", series, "PACS_B") for i in (1, 2, 3)], "n"
        )
        assert [r.calling_aet for r in second.new_series] == ["PACS_B"]
        # Sent again by the first sender: counts once.
        registry.register([stored(f"{series}.1", series, "PACS_A")], "n")
        assert rows_by_sender(registry) == {
            "PACS_A": (2, "receiving", "pending"),
            "PACS_B": (3, "receiving", "pending"),
        }
        # Each sender's PACS answers for its own series.
        changes = registry.set_expected(series, 2, ExpectedStatus.KNOWN, "", "PACS_A")
        assert [(t.series.calling_aet, t.series.state) for t in changes] == [("PACS_A", "complete")]
        registry.association_ended("n", 1)
        assert rows_by_sender(registry) == {
            "PACS_A": (2, "complete", "known"),
            "PACS_B": (3, "finalized-unknown", "pending"),
        }
        assert len(list(registry.instance_paths())) == 5
    finally:
        registry.close()


@pytest.mark.parametrize(("policy", "kept"), [("overwrite", "second"), ("keep-first", "first")])
def test_the_duplicates_policy_applies_per_sender(
    db: str | None, tmp_path: Path, policy: str, kept: str
) -> None:
    registry = open_migrated(db, tmp_path, policy)
    try:
        registry.register([stored("9.1", "9", "PACS_A", path="/a/first.dcm")], "n")
        registry.register([stored("9.1", "9", "PACS_B", path="/b/only.dcm")], "n")
        registry.register([stored("9.1", "9", "PACS_A", path="/a/second.dcm")], "n")
        assert sorted(path for _, path in registry.instance_paths()) == [
            f"/a/{kept}.dcm",
            "/b/only.dcm",
        ]
    finally:
        registry.close()


def test_a_version_1_registry_is_migrated_with_its_rows(db: str | None, tmp_path: Path) -> None:
    """Rows of version 1 (keyed by UID alone) belong to the sender of their series."""
    version_1 = (SQLITE_MIGRATIONS if db is None else POSTGRES_MIGRATIONS)[0]
    assert version_1[0] == 1
    at = "1.0" if db is None else "to_timestamp(1)"
    statements = [
        *version_1[1],
        "CREATE TABLE oxidip_schema_version (version integer PRIMARY KEY, applied_at REAL)",
        "INSERT INTO oxidip_schema_version VALUES (1, 0)",
        "INSERT INTO patients VALUES ('P', NULL, NULL, NULL)",
        "INSERT INTO studies VALUES ('1.2.3', 'P', NULL, NULL, NULL, NULL)",
        (
            "INSERT INTO series VALUES ('1.2.3.4', '1.2.3', 'PACS_A', NULL, NULL, NULL, 2,"
            f" 'known', '', 2, 'receiving', {at}, {at}, NULL)"
        ),
        *(
            f"INSERT INTO instances VALUES ('1.2.3.4.{i}', '1.2.3.4', NULL, NULL,"
            f" '1.2.840.10008.1.2.1', '/a/{i}.dcm', 100, 'n', 1, {at}, {at})"
            for i in (1, 2)
        ),
        "INSERT INTO series_activity VALUES ('1.2.3.4', 'n', 1)",
    ]
    if db is None:
        path = sqlite_path(tmp_path)
        path.parent.mkdir(parents=True)
        with sqlite3.connect(path) as conn:
            for statement in statements:
                conn.execute(statement)
    else:
        with psycopg.connect(db, autocommit=True) as pg:
            for statement in statements:
                pg.execute(statement.replace("REAL", "timestamptz").replace("(1, 0)", "(1, now())"))
    registry = open_migrated(db, tmp_path)
    try:
        assert rows_by_sender(registry) == {"PACS_A": (2, "receiving", "known")}
        assert sorted(path for _, path in registry.instance_paths()) == ["/a/1.dcm", "/a/2.dcm"]
        # The activity moved with its series: ending the association finalizes it.
        (change,) = registry.association_ended("n", 1)
        assert (change.series.calling_aet, change.series.state) == ("PACS_A", "complete")
        # And the series gets another sender's copy as a series of its own.
        registry.register([stored("1.2.3.4.1", "1.2.3.4", "PACS_B")], "n")
        assert rows_by_sender(registry)["PACS_B"] == (1, "receiving", "pending")
    finally:
        registry.close()
