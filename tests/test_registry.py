"""The registry (``oxidip.registry``) on SQLite and on a real PostgreSQL: registration,
duplicates, every transition of the series state rule, associations ending, idle
finalization, late expected counts, series split over associations and over two "processes"
(registry objects with their own connections) registering at once, migrations, throughput.

PostgreSQL: ``TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``)
must let us create a database; each session creates its own, uniquely named, and drops it at
the end; each test gets its own schema in it. Without a server the PostgreSQL tests are
skipped, except in CI (``CI=true``), where they fail.
"""

import itertools
import os
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import psycopg
import pytest
from psycopg import sql

from oxidip._boundary import Attributes, InstanceStored
from oxidip.registry import (
    ExpectedStatus,
    Registry,
    SeriesRow,
    SeriesState,
    Transition,
    open_registry,
    sqlite_path,
)

ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

OpenRegistry = Callable[..., Registry]

_uids = itertools.count(1)


def uid(prefix: str = "1.2.826.0.1.3680043.9.7777") -> str:
    return f"{prefix}.{next(_uids)}"


def stored(
    sop: str,
    series: str,
    *,
    study: str = "1.2.3.4",
    association: int = 1,
    at: float | None = None,
    path: str | None = None,
    size: int = 1000,
    aet: str = "PACS",
    patient: str | None = "P1",
) -> InstanceStored:
    when = time.time() if at is None else at
    return InstanceStored(
        association_id=association,
        path=path or f"/storage/{series}/{sop}.dcm",
        size=size,
        attributes=Attributes(
            SOPClassUID="1.2.840.10008.5.1.4.1.1.7",
            SOPInstanceUID=sop,
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            PatientID=patient,
            PatientName="Doe^Jane",
            Modality="OT",
            SeriesDescription="a series",
            SeriesNumber="3",
        ),
        calling_aet=aet,
        called_aet="OXIDIP",
        peer="127.0.0.1:40000",
        transfer_syntax="1.2.840.10008.1.2.1",
        received_at=when - 0.001,
        stored_at=when,
        duplicate=False,
    )


def batch(series: str, count: int, **kwargs: object) -> list[InstanceStored]:
    return [stored(f"{series}.{i}", series, **kwargs) for i in range(1, count + 1)]  # type: ignore[arg-type]


def one(registry: Registry, series: str) -> SeriesRow:
    (row,) = [r for r in registry.list_series() if r.series_instance_uid == series]
    return row


def states(transitions: list[Transition]) -> list[tuple[str | None, str]]:
    return [(t.previous, t.series.state) for t in transitions]


# --- PostgreSQL -------------------------------------------------------------------------


def _url(database: str, schema: str | None = None) -> str:
    parts = urllib.parse.urlsplit(ADMIN_URL)
    query = f"options=-csearch_path%3D{schema}" if schema else ""
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, f"/{database}", query, ""))


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of our own for this session, dropped at the end; yields its name."""
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable at {ADMIN_URL} (needed in CI): {error}")
        pytest.skip("start PostgreSQL at 127.0.0.1:5432")
    name = f"oxidip_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """A URL whose tables go to a fresh schema of the session's database."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(_url(postgres_database), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    yield _url(postgres_database, schema)
    with psycopg.connect(_url(postgres_database), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


# --- registries -------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenRegistry]:
    """Factory opening (and migrating) registry objects on one store: the same SQLite file,
    or the same PostgreSQL schema. Each object has its own connections, like a process."""
    connection = None
    if request.param == "postgresql":
        connection = request.getfixturevalue("postgres_url")
    opened: list[Registry] = []

    def open_(*, duplicates: str = "overwrite", migrate: bool = True) -> Registry:
        registry = open_registry(connection, tmp_path / "data", duplicates=duplicates)
        opened.append(registry)
        if migrate:
            registry.migrate()
        return registry

    yield open_
    for registry in opened:
        registry.close()


@pytest.fixture
def registry(open_store: OpenRegistry) -> Registry:
    return open_store()


# --- registration -----------------------------------------------------------------------


def test_new_series_is_reported_and_receiving(registry: Registry) -> None:
    series, study = uid(), uid()
    result = registry.register(batch(series, 3, study=study), "node-a")
    (new,) = result.new_series
    assert new.series_instance_uid == series
    assert new.study_instance_uid == study
    assert new.calling_aet == "PACS"
    assert new.patient_id == "P1"
    assert (new.modality, new.series_description, new.series_number) == ("OT", "a series", "3")
    assert new.received == 3
    assert new.state == SeriesState.RECEIVING
    assert (new.expected, new.expected_status) == (None, ExpectedStatus.PENDING)
    assert new.finalized_at is None
    assert new.first_received_at <= new.last_received_at <= time.time()
    assert states(result.transitions) == [(None, "receiving")]
    assert result.touched == [new]

    more = registry.register([stored(uid(), series, study=study)], "node-a")
    assert more.new_series == []
    assert more.transitions == []
    assert [row.received for row in more.touched] == [4]
    assert registry.list_series() == more.touched


def test_series_state_and_expected_status_are_enums(registry: Registry) -> None:
    """Read back from either backend, a series' state and expected status are the enums'
    members, and a state change's previous state too; their JSON is the words."""
    series = uid()
    registry.register(batch(series, 2), "node-a")
    (row,) = registry.list_series()
    assert row.state is SeriesState.RECEIVING
    assert row.expected_status is ExpectedStatus.PENDING
    registry.set_expected(series, 3, ExpectedStatus.KNOWN, "", "PACS")
    (ended,) = registry.association_ended("node-a", 1)
    assert ended.series.state is SeriesState.INCOMPLETE
    assert ended.series.expected_status is ExpectedStatus.KNOWN
    assert ended.previous is SeriesState.RECEIVING
    as_json = msgspec.json.decode(msgspec.json.encode(ended.series))
    assert (as_json["state"], as_json["expected_status"]) == ("incomplete", "known")


def test_batch_of_several_series(registry: Registry) -> None:
    a, b, c = uid(), uid(), uid()
    registry.register(batch(a, 2), "node-a")
    result = registry.register(
        batch(a, 4) + batch(b, 2, study="9.9") + batch(c, 1, study="8.8", patient=None), "node-a"
    )
    assert sorted(row.series_instance_uid for row in result.new_series) == sorted([b, c])
    assert {row.series_instance_uid: row.received for row in result.touched} == {
        a: 4,
        b: 2,
        c: 1,
    }
    assert one(registry, c).patient_id is None
    assert sorted(states(result.transitions)) == [(None, "receiving")] * 2


def test_instances_without_uids_are_skipped(registry: Registry) -> None:
    series = uid()
    bad = stored(uid(), series)
    bad.attributes.StudyInstanceUID = None
    result = registry.register([bad, stored(uid(), series)], "node-a")
    assert [row.received for row in result.touched] == [1]
    assert registry.register([bad], "node-a").touched == []


@pytest.mark.parametrize("policy", ["overwrite", "keep-first", "reject"])
def test_duplicates_count_once(open_store: OpenRegistry, policy: str) -> None:
    registry = open_store(duplicates=policy)
    series, sop, other = uid(), uid(), uid()
    registry.register([stored(sop, series, path="/first", size=1)], "node-a")
    # Sent again in a later batch by another association, and twice within one batch.
    again = registry.register(
        [stored(sop, series, path="/second", size=2, association=2)], "node-a"
    )
    assert [row.received for row in again.touched] == [1]
    within = registry.register(
        [
            stored(sop, series, path="/third", association=3),
            stored(other, series, path="/other-a"),
            stored(other, series, path="/other-b"),
        ],
        "node-b",
    )
    assert [row.received for row in within.touched] == [2]
    paths = dict(registry.instance_paths())
    if policy == "overwrite":
        assert paths == {sop: "/third", other: "/other-b"}
    else:
        assert paths == {sop: "/first", other: "/other-a"}
    assert one(registry, series).received == 2


def test_instance_stays_in_its_first_series(registry: Registry) -> None:
    first, second, sop = uid(), uid(), uid()
    registry.register([stored(sop, first)], "node-a")
    result = registry.register([stored(sop, second, path="/moved")], "node-a")
    assert {row.series_instance_uid: row.received for row in result.touched} == {second: 0}
    assert one(registry, first).received == 1
    assert dict(registry.instance_paths()) == {sop: "/moved"}


# --- the state rule ---------------------------------------------------------------------


def test_every_transition_of_the_rule(registry: Registry) -> None:
    series = uid()
    # receiving -> finalized-unknown: the association ends, no count known.
    registry.register(batch(series, 3), "node-a")
    assert states(registry.association_ended("node-a", 1)) == [("receiving", "finalized-unknown")]
    finalized = one(registry, series)
    assert finalized.finalized_at is not None
    # finalized-unknown -> receiving: another association sends more; finalized_at cleared.
    result = registry.register([stored(uid(), series, association=2)], "node-a")
    assert states(result.transitions) == [("finalized-unknown", "receiving")]
    assert result.touched[0].finalized_at is None
    # receiving stays receiving with a known count not reached yet.
    assert registry.set_expected(series, 6, ExpectedStatus.KNOWN, "") == []
    # receiving -> complete as soon as received == expected, association still open.
    result = registry.register(
        [stored(uid(), series, association=2), stored(uid(), series, association=2)], "node-a"
    )
    assert states(result.transitions) == [("receiving", "complete")]
    complete = result.transitions[0].series
    assert (complete.expected, complete.received) == (6, 6)
    assert complete.finalized_at is not None
    # complete -> overfull: one more than expected.
    result = registry.register([stored(uid(), series, association=2)], "node-a")
    assert states(result.transitions) == [("complete", "overfull")]
    assert result.transitions[0].series.finalized_at is not None
    # The association ending changes nothing for a finished series.
    assert registry.association_ended("node-a", 2) == []
    # overfull -> complete: the PACS count was corrected.
    assert states(registry.set_expected(series, 7, ExpectedStatus.KNOWN, "")) == [
        ("overfull", "complete")
    ]
    # complete -> incomplete: a larger count, nobody delivering.
    assert states(registry.set_expected(series, 9, ExpectedStatus.KNOWN, "")) == [
        ("complete", "incomplete")
    ]
    # incomplete -> finalized-unknown: the count becomes unknown again.
    assert states(registry.set_expected(series, None, ExpectedStatus.ERROR, "timeout")) == [
        ("incomplete", "finalized-unknown")
    ]
    row = one(registry, series)
    assert (row.expected, row.expected_status, row.expected_detail) == (None, "error", "timeout")


def test_expected_known_and_fewer_after_association_end_is_incomplete(
    registry: Registry,
) -> None:
    series = uid()
    registry.register(batch(series, 6), "node-a")
    registry.set_expected(series, 10, ExpectedStatus.KNOWN, "")
    assert states(registry.association_ended("node-a", 1)) == [("receiving", "incomplete")]
    assert one(registry, series).received == 6


def test_aborted_series_resent_becomes_complete(registry: Registry) -> None:
    series = uid()
    instances = batch(series, 10)
    registry.register(instances[:6], "node-a")
    registry.set_expected(series, 10, ExpectedStatus.KNOWN, "")
    assert states(registry.association_ended("node-a", 1)) == [("receiving", "incomplete")]
    # The sender starts over on a new association, sending everything again.
    resent = [stored(i.attributes.SOPInstanceUID or "", series, association=2) for i in instances]
    first = registry.register(resent[:4], "node-a")
    assert states(first.transitions) == [("incomplete", "receiving")]
    assert first.touched[0].received == 6
    rest = registry.register(resent[4:], "node-a")
    assert states(rest.transitions) == [("receiving", "complete")]
    assert rest.touched[0].received == 10
    assert registry.association_ended("node-a", 2) == []


@pytest.mark.parametrize(
    ("expected", "status", "state"),
    [
        (4, ExpectedStatus.KNOWN, "complete"),
        (5, ExpectedStatus.KNOWN, "incomplete"),
        (3, ExpectedStatus.KNOWN, "overfull"),
        (None, ExpectedStatus.UNKNOWN, "finalized-unknown"),
        (None, ExpectedStatus.ERROR, "finalized-unknown"),
    ],
)
def test_late_expected_count(
    registry: Registry, expected: int | None, status: ExpectedStatus, state: str
) -> None:
    series = uid()
    registry.register(batch(series, 4), "node-a")
    assert states(registry.association_ended("node-a", 1)) == [("receiving", "finalized-unknown")]
    transitions = registry.set_expected(series, expected, status, "detail")
    if state == "finalized-unknown":
        assert transitions == []
    else:
        assert states(transitions) == [("finalized-unknown", state)]
    row = one(registry, series)
    assert (row.state, row.expected, row.expected_status) == (state, expected, status)


def test_set_expected_while_receiving(registry: Registry) -> None:
    series = uid()
    registry.register(batch(series, 5), "node-a")
    assert states(registry.set_expected(series, 5, ExpectedStatus.KNOWN, "")) == [
        ("receiving", "complete")
    ]
    # The count becomes unknown: back to receiving, the association being still open.
    assert states(registry.set_expected(series, None, ExpectedStatus.UNKNOWN, "no count")) == [
        ("complete", "receiving")
    ]


def test_series_still_pending_can_be_listed(registry: Registry) -> None:
    """What a restart asks the PACS about again, whatever the series' state."""
    answered, pending_open, pending_ended = uid(), uid(), uid()
    registry.register(batch(answered, 2), "node-a")
    registry.register(batch(pending_open, 2), "node-a")
    registry.register(batch(pending_ended, 2), "node-b")
    registry.set_expected(answered, 2, ExpectedStatus.KNOWN, "")
    registry.association_ended("node-b", 1)
    pending = registry.list_series(expected_status=ExpectedStatus.PENDING)
    assert {(s.series_instance_uid, s.state) for s in pending} == {
        (pending_open, "receiving"),
        (pending_ended, "finalized-unknown"),
    }


def test_set_expected_checks_its_arguments(registry: Registry) -> None:
    series = uid()
    registry.register(batch(series, 1), "node-a")
    with pytest.raises(ValueError, match="known"):
        registry.set_expected(series, None, ExpectedStatus.KNOWN, "")
    with pytest.raises(ValueError, match="count"):
        registry.set_expected(series, 3, ExpectedStatus.ERROR, "")
    with pytest.raises(ValueError):
        registry.set_expected(series, -1, ExpectedStatus.KNOWN, "")
    assert registry.set_expected(uid(), 3, ExpectedStatus.KNOWN, "") == []  # unknown series


def test_association_ended(registry: Registry) -> None:
    series, other = uid(), uid()
    registry.register(batch(series, 2, association=1), "node-a")
    registry.register([stored(uid(), series, association=2)], "node-a")
    # The same association id on another node is another association.
    registry.register([stored(uid(), other, association=1)], "node-b")
    registry.set_expected(series, 5, ExpectedStatus.KNOWN, "")
    assert registry.association_ended("node-a", 1) == []  # association 2 still delivering
    assert one(registry, other).state == "receiving"
    assert states(registry.association_ended("node-a", 2)) == [("receiving", "incomplete")]
    assert registry.association_ended("node-a", 2) == []  # again: nothing left
    assert registry.association_ended("node-a", 99) == []
    assert states(registry.association_ended("node-b", 1)) == [("receiving", "finalized-unknown")]


def test_finalize_idle(registry: Registry) -> None:
    now = time.time()
    idle, busy, done = uid(), uid(), uid()
    registry.register(batch(idle, 3, at=now - 100), "crashed-node")
    registry.register(batch(busy, 2, at=now - 5), "node-a")
    registry.register(batch(done, 2, at=now - 100, association=7), "node-a")
    registry.set_expected(done, 2, ExpectedStatus.KNOWN, "")  # complete, activity left over
    transitions = registry.finalize_idle(60, now)
    assert states(transitions) == [("receiving", "finalized-unknown")]
    assert transitions[0].series.series_instance_uid == idle
    assert transitions[0].series.finalized_at == pytest.approx(now)
    assert one(registry, busy).state == "receiving"
    assert one(registry, done).state == "complete"
    assert registry.finalize_idle(60, now) == []
    # Their activity is gone: ending the associations changes nothing.
    assert registry.association_ended("crashed-node", 1) == []
    assert registry.association_ended("node-a", 7) == []
    # busy becomes idle later.
    assert states(registry.finalize_idle(60, now + 60)) == [("receiving", "finalized-unknown")]


def test_list_series_filters(registry: Registry) -> None:
    study_a, study_b = uid(), uid()
    a, b, c = uid(), uid(), uid()
    registry.register(batch(a, 1, study=study_a, aet="CT1"), "node-a")
    registry.register(batch(b, 1, study=study_a, aet="MR1", association=2), "node-a")
    registry.register(batch(c, 1, study=study_b, aet="CT1", association=3), "node-a")
    registry.association_ended("node-a", 2)

    def uids(**filters: str) -> list[str]:
        return [row.series_instance_uid for row in registry.list_series(**filters)]

    assert uids() == [a, b, c]
    assert uids(calling_aet="CT1") == [a, c]
    assert uids(study_instance_uid=study_a) == [a, b]
    assert uids(state="finalized-unknown") == [b]
    assert uids(state="receiving", calling_aet="CT1", study_instance_uid=study_b) == [c]
    assert uids(calling_aet="NOBODY") == []


# --- concurrency ------------------------------------------------------------------------


def test_series_split_over_two_associations(registry: Registry) -> None:
    series = uid()
    instances = batch(series, 8)
    registry.register(
        [stored(i.attributes.SOPInstanceUID or "", series) for i in instances[:5]], "n"
    )
    registry.register(
        [stored(i.attributes.SOPInstanceUID or "", series, association=2) for i in instances[3:]],
        "n",
    )
    registry.set_expected(series, 8, ExpectedStatus.KNOWN, "")
    assert one(registry, series).state == "complete"
    assert registry.association_ended("n", 1) == []
    assert registry.association_ended("n", 2) == []
    assert one(registry, series).received == 8


def test_two_processes_split_series_concurrently(open_store: OpenRegistry) -> None:
    """Two registry objects (own connections: like two oxidip processes on one database), two
    threads each, register overlapping parts of three series in batches mixing the series,
    while the expected counts are set; every series ends complete with the right count."""
    processes = [open_store(), open_store()]
    per_series = 300
    series = [uid() for _ in range(3)]
    sops = {s: [f"{s}.{i}" for i in range(per_series)] for s in series}
    workers = 4
    errors: list[BaseException] = []
    start = threading.Barrier(workers + 1)

    def work(index: int) -> None:
        registry = processes[index % 2]
        node = f"node-{index % 2}"
        try:
            start.wait()
            # Each worker sends its quarter of every series plus 20 instances of the next
            # quarter (sent twice, by two workers), 10 of each series per batch.
            chunk = per_series // workers
            for offset in range(index * chunk, (index + 1) * chunk + 20, 10):
                items = []
                for s in series:
                    for sop in sops[s][offset % per_series : offset % per_series + 10]:
                        items.append(stored(sop, s, association=index))
                registry.register(items, node)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    start.wait()
    # The C-FIND answers arrive while the instances do (the series exists once any is in).
    pending = set(series)
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for s in list(pending):
            processes[0].set_expected(s, per_series, ExpectedStatus.KNOWN, "")
            rows = processes[0].list_series()
            if any(r.series_instance_uid == s and r.expected == per_series for r in rows):
                pending.discard(s)
        time.sleep(0.001)
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert not pending
    for index in range(workers):
        processes[index % 2].association_ended(f"node-{index % 2}", index)
    for registry in processes:
        rows = registry.list_series()
        assert {r.series_instance_uid: (r.received, r.state) for r in rows} == {
            s: (per_series, "complete") for s in series
        }
    assert len(dict(processes[1].instance_paths())) == 3 * per_series


def test_postgres_connections_lost_are_replaced(
    postgres_database: str, postgres_url: str, tmp_path: Path
) -> None:
    """A server restart (here: every connection of the registry terminated) fails no call:
    the pool checks a connection before lending it."""
    registry = open_registry(postgres_url, tmp_path, pool_size=2)
    try:
        registry.migrate()
        series = uid()
        registry.register(batch(series, 2), "node-a")
        with psycopg.connect(_url(postgres_database), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        registry.register([stored(uid(), series)], "node-a")
        assert one(registry, series).received == 3
    finally:
        registry.close()


# --- schema -----------------------------------------------------------------------------


def test_migrate_twice_and_concurrently(open_store: OpenRegistry) -> None:
    registries = [open_store(migrate=False) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(registries))

    def migrate(registry: Registry) -> None:
        try:
            start.wait()
            registry.migrate()
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=migrate, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    registries[0].migrate()
    series = uid()
    registries[1].register(batch(series, 2), "node-a")
    assert one(registries[2], series).received == 2


def _schema(connection: str | None, root: Path) -> tuple[list[int], set[str]]:
    """(applied versions, index names) of a store."""
    if connection is None:
        with sqlite3.connect(sqlite_path(root)) as conn:
            versions = [v for (v,) in conn.execute("SELECT version FROM oxidip_schema_version")]
            indexes = {
                n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            }
        return versions, indexes
    with psycopg.connect(connection) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM oxidip_schema_version")]
        indexes = {
            n
            for (n,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            )
        }
    return versions, indexes


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_schema_version_and_indexes(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    connection = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    for _ in range(2):
        registry = open_registry(connection, tmp_path)
        registry.migrate()
        registry.close()
    versions, indexes = _schema(connection, tmp_path)
    assert versions == [1, 2, 3, 4]
    for index in (
        "studies_patient_id",
        "series_study_instance_uid",
        "series_state",
        "instances_series",
        "series_activity_association",
        "forward_jobs_claim",
        "forward_jobs_series",
        "forward_jobs_state",
        "forward_items_job",
    ):
        assert index in indexes
    # The primary keys: lookups by Study UID, by Series and SOP Instance UID (and sender).
    if backend == "postgresql":
        assert {"studies_pkey", "series_key", "instances_key", "forward_items_once"} <= indexes


def test_open_registry(tmp_path: Path) -> None:
    registry = open_registry(None, tmp_path / "root")
    registry.close()
    assert sqlite_path(tmp_path / "root").is_file()
    assert sqlite_path(tmp_path / "root") == (tmp_path / "root/.oxidip/registry.sqlite3")
    with pytest.raises(ValueError, match="postgresql://") as error:
        open_registry("mysql://user:secret@host/db", tmp_path)
    assert "secret" not in str(error.value)
    with pytest.raises(ValueError, match="postgresql://"):
        open_registry("registry.sqlite3", tmp_path)
    with pytest.raises(ValueError, match="duplicates"):
        open_registry(None, tmp_path, duplicates="ignore")
    with pytest.raises(psycopg.OperationalError):
        open_registry("postgresql://postgres@127.0.0.1:1/nothing", tmp_path)


# --- throughput -------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [500, 1000])
def test_registration_throughput(
    open_store: OpenRegistry, batch_size: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """10,000 instances (10 series of 1,000) in batches; prints the rate (no assertion on
    it: machines differ)."""
    registry = open_store()
    total = 10_000
    instances = [
        stored(f"{s}.{i}", s, association=1)
        for s in [uid() for _ in range(10)]
        for i in range(total // 10)
    ]
    started = time.perf_counter()
    for offset in range(0, total, batch_size):
        registry.register(instances[offset : offset + batch_size], "node-a")
    elapsed = time.perf_counter() - started
    backend = "sqlite" if isinstance(registry, _sqlite_class()) else "postgresql"
    with capsys.disabled():
        print(
            f"\nregistration: {backend}, batches of {batch_size}:"
            f" {total / elapsed:,.0f} instances/s ({elapsed:.2f} s for {total})"
        )
    assert sum(row.received for row in registry.list_series()) == total


def _sqlite_class() -> type:
    from oxidip.registry._sqlite import SqliteRegistry

    return SqliteRegistry
