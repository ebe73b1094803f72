"""The pull job in the registry (schema v4), on SQLite and PostgreSQL: creating and finding
a pull again, claims with leases (two pulls never hold one series at once, an expired lease
frees it), ends, a rerun skipping complete series, and what the registry registered."""

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oxidip.pull.retrieve import Attempt, Counts, Verdict
from oxidip.pull.schedule import decide
from oxidip.registry import FoundSeries, PullSeriesState, PullState, Registry, open_registry
from tests.test_registry import (  # noqa: F401 - fixtures
    batch,
    postgres_database,
    postgres_url,
    uid,
)

OpenStore = Callable[[], Registry]


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenStore]:
    """Opens migrated registries on one store (each its own connections, like a process)."""
    connection = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    opened: list[Registry] = []

    def open_() -> Registry:
        store = open_registry(connection, tmp_path / "data")
        store.migrate()
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def db(opener: OpenStore) -> Registry:
    return opener()


QUERIES = '[{"QueryRetrieveLevel":"STUDY","PatientID":"P1"}]'


def found(study: str, series: str, expected: int | None = 3) -> FoundSeries:
    return FoundSeries(
        study_instance_uid=study,
        series_instance_uid=series,
        modality="OT",
        expected=expected,
    )


def end(
    registry: Registry, pull: int, series: str, owner: str, state: PullSeriesState, **kw: object
) -> bool:
    return registry.end_pull_series(
        pull,
        series,
        owner,
        state,
        error=str(kw.get("error", "")),
        counts=(3, 0, 0),
        received=3,
        next_attempt_at=kw.get("next_at"),  # type: ignore[arg-type]
        now=time.time(),
    )


def test_a_pull_is_found_again_by_its_queries_and_pacs(db: Registry) -> None:
    registry = db
    created = registry.create_pull(QUERIES, "ORTHANC", "move", time.time())
    assert created.state is PullState.RUNNING
    assert registry.find_pull(QUERIES, "ORTHANC") == created
    assert registry.find_pull(QUERIES, "OTHER") is None
    assert registry.find_pull("[]", "ORTHANC") is None
    assert registry.get_pull(created.id) == created
    assert registry.get_pull(created.id + 1000) is None


def test_claims_lease_each_series_once_and_the_pull_finishes(db: Registry) -> None:
    registry = db
    study, s1, s2 = uid(), uid(), uid()
    pull = registry.create_pull(QUERIES, "ORTHANC", "move", time.time())
    rows = registry.restart_pull(pull.id, "move", [found(study, s1), found(study, s2, None)], 0)
    assert [(r.state, r.expected) for r in rows] == [
        (PullSeriesState.PENDING, 3),
        (PullSeriesState.PENDING, None),
    ]
    now = time.time()
    first = registry.claim_pull_series(pull.id, "proc-a", 30, now)
    second = registry.claim_pull_series(pull.id, "proc-a", 30, now)
    assert first is not None and second is not None
    assert {first.series_instance_uid, second.series_instance_uid} == {s1, s2}
    assert first.state is PullSeriesState.RUNNING and first.attempts == 1
    assert registry.claim_pull_series(pull.id, "proc-a", 30, now) is None
    assert registry.renew_pull_leases(pull.id, "proc-a", [s1, s2], 30, now) == {s1, s2}
    assert registry.renew_pull_leases(pull.id, "proc-b", [s1], 30, now) == set()
    assert end(registry, pull.id, s1, "proc-a", PullSeriesState.COMPLETE)
    assert not end(registry, pull.id, s1, "proc-a", PullSeriesState.FAILED), "not held any more"
    running = registry.get_pull(pull.id)
    assert running is not None and running.state is PullState.RUNNING
    assert end(registry, pull.id, s2, "proc-a", PullSeriesState.UNKNOWN, error="no count")
    finished = registry.get_pull(pull.id)
    assert finished is not None and finished.state is PullState.FINISHED
    by_uid = {r.series_instance_uid: r for r in registry.pull_series(pull.id)}
    assert by_uid[s1].state is PullSeriesState.COMPLETE
    assert (by_uid[s2].state, by_uid[s2].last_error) == (PullSeriesState.UNKNOWN, "no count")
    assert (by_uid[s1].completed, by_uid[s1].received, by_uid[s1].lease_owner) == (3, 3, None)


def test_two_pulls_never_hold_one_series_and_an_expired_lease_frees_it(
    opener: OpenStore,
) -> None:
    one, other = opener(), opener()  # two processes
    study, series = uid(), uid()
    a = one.create_pull(QUERIES, "ORTHANC", "move", time.time())
    b = other.create_pull('[{"QueryRetrieveLevel":"SERIES","Modality":"OT"}]', "ORTHANC", "get", 0)
    one.restart_pull(a.id, "move", [found(study, series)], time.time())
    other.restart_pull(b.id, "get", [found(study, series)], time.time())
    now = time.time()
    assert one.claim_pull_series(a.id, "proc-a", 10, now) is not None
    assert other.claim_pull_series(b.id, "proc-b", 10, now) is None, "pull a holds it"
    # Another PACS's copy of the same UID is another series.
    c = other.create_pull(QUERIES, "OTHERPACS", "move", now)
    other.restart_pull(c.id, "move", [found(study, series)], now)
    assert other.claim_pull_series(c.id, "proc-b", 10, now) is not None
    # proc-a died: once its lease expired, pull b takes the series, and proc-a lost it.
    later = now + 11
    taken = other.claim_pull_series(b.id, "proc-b", 10, later)
    assert taken is not None and taken.series_instance_uid == series
    assert one.claim_pull_series(a.id, "proc-a", 10, later) is None
    assert one.renew_pull_leases(a.id, "proc-a", [series], 10, later) == set(), "lost"


def test_a_rerun_skips_complete_series_and_starts_the_others_again(db: Registry) -> None:
    registry = db
    study, done, failed, stuck = uid(), uid(), uid(), uid()
    pull = registry.create_pull(QUERIES, "ORTHANC", "move", time.time())
    series = [found(study, done), found(study, failed), found(study, stuck)]
    registry.restart_pull(pull.id, "move", series, time.time())
    now = time.time()
    claimed = {
        row.series_instance_uid
        for row in (registry.claim_pull_series(pull.id, "dead", 10, now) for _ in range(3))
        if row is not None
    }
    assert claimed == {done, failed, stuck}
    end(registry, pull.id, done, "dead", PullSeriesState.COMPLETE)
    end(registry, pull.id, failed, "dead", PullSeriesState.FAILED, error="A801")
    # ``stuck`` stays running: its process was killed. Run the pull again:
    rows = registry.restart_pull(pull.id, "get", [*series, found(study, uid())], now + 1)
    states = {r.series_instance_uid: (r.state, r.attempts) for r in rows}
    assert states[done] == (PullSeriesState.COMPLETE, 1)
    assert (registry.get_pull(pull.id) or pull).state is PullState.RUNNING
    assert states[failed] == (PullSeriesState.PENDING, 0)
    assert states[stuck] == (PullSeriesState.RUNNING, 1), "its lease runs out first"
    again = registry.get_pull(pull.id)
    assert again is not None and (again.state, again.method) == (PullState.RUNNING, "get")
    claimed_again = set()
    while (row := registry.claim_pull_series(pull.id, "new", 10, now + 20)) is not None:
        claimed_again.add(row.series_instance_uid)
    assert done not in claimed_again and {failed, stuck} <= claimed_again
    assert len(claimed_again) == 3


def test_a_retry_waits_for_its_next_attempt(db: Registry) -> None:
    registry = db
    study, series = uid(), uid()
    pull = registry.create_pull(QUERIES, "ORTHANC", "move", time.time())
    registry.restart_pull(pull.id, "move", [found(study, series)], time.time())
    now = time.time()
    assert registry.claim_pull_series(pull.id, "p", 10, now) is not None
    end(registry, pull.id, series, "p", PullSeriesState.PENDING, next_at=now + 5)
    assert registry.claim_pull_series(pull.id, "p", 10, now + 1) is None
    again = registry.claim_pull_series(pull.id, "p", 10, now + 6)
    assert again is not None and again.attempts == 2


def test_received_counts_what_the_pacs_ae_sent(db: Registry) -> None:
    registry = db
    study, series = uid(), uid()
    registry.register(batch(series, 3, study=study, aet="ORTHANC"), "node")
    registry.register(batch(series, 1, study=study, aet="ELSEWHERE"), "node")
    got = registry.received([series, uid()], "ORTHANC")
    assert list(got) == [series]
    assert got[series].count == 3
    assert got[series].path is not None and got[series].path.startswith(f"/storage/{series}/")
    assert registry.received([series], "ELSEWHERE")[series].count == 1


def row_of(expected: int | None) -> object:
    from oxidip.registry import PullSeriesRow

    return PullSeriesRow(
        1, "1.2", "1.1", "P", "CT", "", expected, PullSeriesState.RUNNING, 1, None, "",
        None, None, None, None, "p", None,
    )  # fmt: skip


def test_completeness_words() -> None:
    done = Attempt(Verdict.DONE, "", Counts(0, 3, 0, 0))
    assert decide(row_of(3), done, 3, retries_left=False) == (PullSeriesState.COMPLETE, "")  # type: ignore[arg-type]
    assert decide(row_of(3), done, 2, retries_left=True) == (  # type: ignore[arg-type]
        PullSeriesState.PENDING,
        "the PACS said done but 2 of 3 instances registered",
    )
    assert decide(row_of(3), done, 2, retries_left=False)[0] is PullSeriesState.INCOMPLETE  # type: ignore[arg-type]
    state, words = decide(row_of(None), done, 5, retries_left=True)  # type: ignore[arg-type]
    assert state is PullSeriesState.UNKNOWN
    assert "5 instances registered" in words and "NumberOfSeriesRelatedInstances" in words
    a801 = Attempt(Verdict.PERMANENT, "move destination OXIDIP unknown to the PACS (A801)")
    state, words = decide(row_of(3), a801, 0, retries_left=True)  # type: ignore[arg-type]
    assert state is PullSeriesState.FAILED and words.startswith("move destination OXIDIP")
    stall = Attempt(Verdict.TRANSIENT, "stalled")
    assert decide(row_of(3), stall, 1, retries_left=True)[0] is PullSeriesState.PENDING  # type: ignore[arg-type]
    assert decide(row_of(3), stall, 1, retries_left=False) == (  # type: ignore[arg-type]
        PullSeriesState.INCOMPLETE,
        "stalled; 1 of 3 instances registered",
    )
    assert decide(row_of(3), stall, 3, retries_left=False)[0] is PullSeriesState.COMPLETE  # type: ignore[arg-type]


def test_a_pull_with_everything_complete_is_finished_at_once(db: Registry) -> None:
    study, series = uid(), uid()
    pull = db.create_pull(QUERIES, "ORTHANC", "move", time.time())
    db.restart_pull(pull.id, "move", [found(study, series)], time.time())
    assert db.claim_pull_series(pull.id, "p", 10, time.time()) is not None
    end(db, pull.id, series, "p", PullSeriesState.COMPLETE)
    db.restart_pull(pull.id, "move", [found(study, series)], time.time())
    again = db.get_pull(pull.id)
    assert again is not None and again.state is PullState.FINISHED
