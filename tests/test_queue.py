"""The forwarding queue in the registry (``oxidip.registry._queue``), on SQLite and on a real
PostgreSQL: jobs created in the transaction of the state change that triggers them (and
not when it fails), an instance queued once per rule and destination whatever re-sends,
second senders and late instances do, claims (room, priority, held destinations, leases,
two processes at once), outcomes, retries with backoff, dead, cancel and retry by hand.

Routes are real ``oxidip.routing.Routes`` parsed from TOML text.
"""

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import psycopg
import pytest

from oxidip._boundary import DeliveryResult, ItemOutcome, JobEndKind
from oxidip.registry import (
    MAX_PAIRS,
    ClaimedJob,
    ExpectedStatus,
    JobRow,
    JobState,
    Registry,
    RetryPolicy,
    SeriesState,
    _postgres,
    _sqlite,
    open_registry,
    sqlite_path,
)
from oxidip.routing import Router, Routes, SeriesFacts, Target, Trigger
from tests.test_registry import (  # noqa: F401 - fixtures
    postgres_database,
    postgres_url,
    stored,
    uid,
)

DESTINATIONS = """
[destinations.archive]
aet = "ARCHIVE"
host = "127.0.0.1"
port = 11112

[destinations.ai]
aet = "AI"
host = "127.0.0.1"
port = 11113
max_associations = 2
"""

COMPLETE_TO_ARCHIVE = (
    DESTINATIONS
    + """
[[rules]]
name = "to-archive"
on = "series-complete"
to = ["archive"]
"""
)

RETRY = RetryPolicy(base=10.0, maximum=100.0, attempts=3)
ROOM = {"archive": 10, "ai": 10}

OpenQueue = Callable[..., Registry]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_queue(request: pytest.FixtureRequest, tmp_path: Path) -> OpenQueue:
    """Factory opening (and migrating) registries on one store with the routes given as
    TOML text (or a Router, or none); each has its own connections, like a process."""
    connection = None
    if request.param == "postgresql":
        connection = request.getfixturevalue("postgres_url")
    opened: list[Registry] = []

    def open_(routes: str | Router | None = COMPLETE_TO_ARCHIVE) -> Registry:
        router = Routes.parse(routes) if isinstance(routes, str) else routes
        registry = open_registry(connection, tmp_path / "data", router=router)
        opened.append(registry)
        registry.migrate()
        return registry

    request.addfinalizer(lambda: [registry.close() for registry in opened])
    return open_


def series_of(
    registry: Registry,
    count: int,
    *,
    expected: int | None = None,
    aet: str = "PACS",
    series: str | None = None,
    sops: Sequence[str] | None = None,
    association: int = 1,
    sop_class: str | None = None,
) -> str:
    """Registers ``count`` instances of a series in one batch, then ends the association;
    with ``expected``, the count the PACS gave first. Returns the Series Instance UID."""
    series = series or uid()
    sops = list(sops or [f"{series}.{i}" for i in range(1, count + 1)])
    if expected is not None:
        registry.register([stored(sops[0], series, aet=aet, association=association)], "p1")
        registry.set_expected(series, expected, ExpectedStatus.KNOWN, "", aet)
    instances = [stored(sop, series, aet=aet, association=association) for sop in sops]
    if sop_class is not None:
        for instance in instances:
            instance.attributes.SOPClassUID = sop_class
    registry.register(instances, "p1")
    registry.association_ended("p1", association)
    return series


def jobs(registry: Registry, **kwargs: object) -> list[JobRow]:
    return registry.list_jobs(**kwargs)  # type: ignore[arg-type]


def claim(registry: Registry, now: float, room: dict[str, int] | None = None) -> list[ClaimedJob]:
    return registry.claim_jobs("p1", room or ROOM, 60.0, now)


def deliver(registry: Registry, job: ClaimedJob, now: float, *, failed: int = 0) -> None:
    """Records the job's items delivered (the first ``failed`` refused with C000)."""
    outcomes = [
        ItemOutcome(
            job.job_id,
            item.item_id,
            DeliveryResult.FAILED if i < failed else DeliveryResult.DELIVERED,
            0xC000 if i < failed else 0,
            "cannot understand" if i < failed else "",
        )
        for i, item in enumerate(job.items)
    ]
    registry.record_items("p1", outcomes, now)


def end(registry: Registry, job: int, kind: JobEndKind, now: float, error: str = "") -> JobRow:
    return registry.end_job("p1", job, kind, error, RETRY, now, random.Random(1))


# --- jobs created with the transitions ----------------------------------------------------


def test_a_series_completing_creates_its_job(open_queue: OpenQueue) -> None:
    registry = open_queue()
    series = uid()
    registry.register([stored(f"{series}.1", series)], "p1")
    registry.set_expected(series, 3, ExpectedStatus.KNOWN, "", "PACS")
    registry.register([stored(f"{series}.2", series)], "p1")
    assert jobs(registry) == []  # receiving: nothing yet
    registry.register([stored(f"{series}.3", series)], "p1")  # received == expected
    (job,) = jobs(registry)
    assert (job.series_instance_uid, job.calling_aet, job.rule, job.destination) == (
        series,
        "PACS",
        "to-archive",
        "archive",
    )
    assert (job.trigger, job.state, job.total, job.delivered, job.attempts) == (
        "series-complete",
        JobState.PENDING,
        3,
        0,
        0,
    )
    assert job.study_instance_uid == "1.2.3.4"
    assert job.state is JobState.PENDING


def test_no_router_no_jobs(open_queue: OpenQueue) -> None:
    registry = open_queue(None)
    series_of(registry, 3, expected=3)
    assert jobs(registry) == []


def test_when_conditions_see_the_registered_facts(open_queue: OpenQueue) -> None:
    """CalledAET is stored with the series; patient, study and series attributes come from
    their rows."""
    seen: list[dict[str, str | None]] = []

    class Recording:
        triggers = frozenset(Trigger)

        def targets(
            self, trigger: Trigger, series: SeriesFacts, state: SeriesState | None
        ) -> list[Target]:
            seen.append(dict(series))
            return []

    registry = open_queue(Recording())
    series = series_of(registry, 1)
    assert seen
    assert seen[-1] == {
        "PatientID": "P1",
        "PatientName": "Doe^Jane",
        "PatientBirthDate": None,
        "PatientSex": None,
        "StudyInstanceUID": "1.2.3.4",
        "StudyDate": None,
        "StudyTime": None,
        "AccessionNumber": None,
        "StudyDescription": None,
        "SeriesInstanceUID": series,
        "Modality": "OT",
        "SeriesDescription": "a series",
        "SeriesNumber": "3",
        "CallingAET": "PACS",
        "CalledAET": "OXIDIP",
    }


class Boom(BaseException):
    """Not an Exception: the registry lets it through, failing its transaction."""


def test_no_job_when_the_transaction_fails(open_queue: OpenQueue) -> None:
    """The job of the series-complete rule is created, then the series-finalized routing
    raises: the transaction rolls back, the series is not complete and no new job exists;
    done again without the failure, the job is there."""
    routes = Routes.parse(
        COMPLETE_TO_ARCHIVE
        + """
[[rules]]
name = "finalized-to-ai"
on = "series-finalized"
to = ["ai"]
"""
    )
    failing = [True]

    class Failing:
        triggers = routes.triggers

        def targets(
            self, trigger: Trigger, series: SeriesFacts, state: SeriesState | None
        ) -> list[Target]:
            if trigger is Trigger.SERIES_FINALIZED and state is SeriesState.COMPLETE and failing[0]:
                raise Boom
            return routes.targets(trigger, series, state)

    registry = open_queue(Failing())
    series = uid()
    registry.register([stored(f"{series}.1", series)], "p1")
    registry.association_ended("p1", 1)
    (unknown,) = jobs(registry)  # finalized-unknown: only the series-finalized rule
    with pytest.raises(Boom):
        registry.set_expected(series, 1, ExpectedStatus.KNOWN, "", "PACS")
    assert jobs(registry) == [unknown]
    (row,) = registry.list_series()
    assert row.state is SeriesState.FINALIZED_UNKNOWN
    failing[0] = False
    registry.set_expected(series, 1, ExpectedStatus.KNOWN, "", "PACS")
    # The series-finalized rule queued its instance already: only the new rule's job.
    assert [(job.rule, job.total) for job in jobs(registry)] == [
        ("finalized-to-ai", 1),
        ("to-archive", 1),
    ]


def test_re_sends_and_restarts_queue_nothing_twice(open_queue: OpenQueue) -> None:
    registry = open_queue()
    series = series_of(registry, 3, expected=3)
    assert [job.total for job in jobs(registry)] == [3]
    # The whole series again (a re-send, another association): complete again, nothing new.
    series_of(registry, 3, series=series, association=2)
    # A second process (another registry object on the same store) does it too.
    other = open_queue()
    series_of(other, 3, series=series, association=3)
    assert [job.total for job in jobs(registry)] == [3]


def test_a_second_sender_queues_nothing_twice(open_queue: OpenQueue) -> None:
    """The same instances from a second AE are a second series row (its own count and
    state), but its completion queues nothing already queued for the rule's destination."""
    registry = open_queue()
    series = series_of(registry, 3, expected=3)
    series_of(registry, 3, expected=3, series=series, aet="OTHER", association=2)
    assert [(job.calling_aet, job.total) for job in jobs(registry)] == [("PACS", 3)]
    # One instance only the second sender has: a job with just it.
    registry.register([stored(f"{series}.9", series, aet="OTHER", association=3)], "p1")
    registry.set_expected(series, 4, ExpectedStatus.KNOWN, "", "OTHER")
    registry.association_ended("p1", 3)
    assert [(job.calling_aet, job.total) for job in jobs(registry)] == [
        ("PACS", 3),
        ("OTHER", 1),
    ]


def test_late_instances_make_a_job_of_their_own(open_queue: OpenQueue) -> None:
    registry = open_queue()
    series = series_of(registry, 3, expected=3)
    (first,) = jobs(registry)
    registry.register([stored(f"{series}.4", series, association=2)], "p1")
    registry.set_expected(series, 4, ExpectedStatus.KNOWN, "", "PACS")
    registry.association_ended("p1", 2)  # complete again
    late = jobs(registry)[1]
    assert (late.total, late.state) == (1, JobState.PENDING)
    (claimed,) = [job for job in claim(registry, time.time()) if job.job_id == late.id]
    assert [item.sop_instance_uid for item in claimed.items] == [f"{series}.4"]
    assert first.id != late.id


def test_series_finalized_rules_and_incomplete(open_queue: OpenQueue) -> None:
    registry = open_queue(
        DESTINATIONS
        + """
[[rules]]
name = "any"
on = "series-finalized"
to = ["archive"]

[[rules]]
name = "only-complete"
on = "series-finalized"
incomplete = "skip"
to = ["ai"]
"""
    )
    incomplete = series_of(registry, 2, expected=5)
    complete = series_of(registry, 2, expected=2)
    found = {(job.series_instance_uid, job.rule) for job in jobs(registry)}
    assert found == {(incomplete, "any"), (complete, "any"), (complete, "only-complete")}


def test_instance_rules_stream_per_batch(open_queue: OpenQueue) -> None:
    """An instance rule queues each batch's instances at once, adding them to the series'
    job still waiting to be claimed; once it is claimed, a new job takes the next ones."""
    registry = open_queue(
        DESTINATIONS
        + """
[[rules]]
name = "stream"
on = "instance"
to = ["ai"]
priority = 5
"""
    )
    series = uid()
    registry.register([stored(f"{series}.{i}", series) for i in (1, 2)], "p1")
    (job,) = jobs(registry)
    assert (job.trigger, job.total, job.priority, job.state) == ("instance", 2, 5, "pending")
    registry.register([stored(f"{series}.{i}", series) for i in (2, 3, 4)], "p1")  # 2 again
    assert [job.total for job in jobs(registry)] == [4]
    (claimed,) = claim(registry, time.time())
    assert len(claimed.items) == 4
    registry.register([stored(f"{series}.5", series)], "p1")
    assert [(job.total, job.state) for job in jobs(registry)] == [(4, "running"), (1, "pending")]


def test_instances_join_a_waiting_job_whole(open_queue: OpenQueue) -> None:
    """A registration adding instances to an instance rule's waiting job, and a claim by
    another process at that moment: the claim does not take the job half-filled (PostgreSQL
    skips it while the registration holds it; SQLite's claim waits for the write lock), so
    whoever claims it first gets the instances of both batches. (The lock taken when the
    job is chosen also closes the moment before the items are inserted, which a test cannot
    pause in.)"""
    routes = Routes.parse(
        DESTINATIONS + '[[rules]]\nname = "stream"\non = "instance"\nto = ["ai"]\n'
    )
    inside, go = threading.Event(), threading.Event()
    base = uid()
    first, second = f"{base}.1", f"{base}.2"  # registered in this order (UID order)

    class Pausing:
        triggers = routes.triggers

        def targets(
            self, trigger: Trigger, series: SeriesFacts, state: SeriesState | None
        ) -> list[Target]:
            if series["SeriesInstanceUID"] == second:  # after the first series' items
                inside.set()
                assert go.wait(30)
            return routes.targets(trigger, series, state)

    registry = open_queue(Pausing())
    other = open_queue()
    registry.register([stored(f"{first}.1", first)], "p1")
    (waiting,) = jobs(registry)
    adding = threading.Thread(
        target=registry.register,
        args=([stored(f"{first}.2", first), stored(f"{second}.1", second)], "p1"),
    )
    adding.start()
    assert inside.wait(30)
    claims: list[list[ClaimedJob]] = []
    claiming = threading.Thread(
        target=lambda: claims.append(other.claim_jobs("p2", ROOM, 60.0, time.time()))
    )
    claiming.start()
    claiming.join(timeout=2)  # PostgreSQL: done, the job skipped; SQLite: waiting
    go.set()
    adding.join(timeout=30)
    claiming.join(timeout=30)
    claims.append(other.claim_jobs("p2", ROOM, 60.0, time.time()))
    (taken,) = [job for claim in claims for job in claim if job.job_id == waiting.id]
    assert sorted(item.sop_instance_uid for item in taken.items) == [f"{first}.1", f"{first}.2"]


# --- claims -------------------------------------------------------------------------------


def test_claims_respect_room_priority_and_age(open_queue: OpenQueue) -> None:
    registry = open_queue(
        DESTINATIONS
        + """
[[rules]]
name = "low"
on = "series-complete"
to = ["archive"]

[[rules]]
name = "high"
on = "series-complete"
to = ["ai"]
priority = 9
"""
    )
    for _ in range(3):
        series_of(registry, 1, expected=1)
    now = time.time()
    assert claim(registry, now, {"archive": 0, "ai": 0}) == []
    first = claim(registry, now, {"archive": 1, "ai": 2, "unknown": 4})
    assert [(job.destination, job.rule) for job in first] == [
        ("ai", "high"),
        ("ai", "high"),
        ("archive", "low"),
    ]
    rows = {job.id: job for job in jobs(registry)}
    assert first[0].job_id < first[1].job_id  # oldest first
    for job in first:
        assert rows[job.job_id].state is JobState.RUNNING
        assert rows[job.job_id].lease_owner == "p1"
        assert rows[job.job_id].lease_until == pytest.approx(now + 60.0)
        assert job.attempts == rows[job.job_id].attempts == 1
    item = first[0].items[0]
    assert Path(item.path).is_absolute()
    assert (item.sop_class_uid, item.transfer_syntax) == (
        "1.2.840.10008.5.1.4.1.1.7",
        "1.2.840.10008.1.2.1",
    )
    second = claim(registry, now, ROOM)
    assert sorted(job.rule for job in second) == ["high", "low", "low"]
    assert claim(registry, now, ROOM) == []


def test_an_expired_lease_returns_the_job(open_queue: OpenQueue) -> None:
    registry = open_queue()
    series_of(registry, 2, expected=2)
    now = time.time()
    (job,) = claim(registry, now)
    deliver(registry, msgspec.structs.replace(job, items=job.items[:1]), now)
    assert claim(registry, now + 59) == []
    assert registry.renew_leases("p1", [job.job_id], 60.0, now + 30) == {job.job_id}
    assert claim(registry, now + 89) == []  # renewed until now + 90
    (again,) = registry.claim_jobs("p2", ROOM, 60.0, now + 91)  # p1 died
    assert (again.job_id, again.attempts) == (job.job_id, 2)
    assert [item.item_id for item in again.items] == [job.items[1].item_id]  # undelivered only
    # The first process is no longer the holder: its lease is gone, its end changes nothing.
    assert registry.renew_leases("p1", [job.job_id], 60.0, now + 92) == set()
    assert end(registry, job.job_id, JobEndKind.TRANSIENT, now + 92).state is JobState.RUNNING


def test_held_destinations_are_not_claimed(open_queue: OpenQueue) -> None:
    registry = open_queue()
    series_of(registry, 1, expected=1)
    now = time.time()
    registry.hold_destination("archive", "3 transient failures in a row", now)
    assert registry.held_destinations() == {"archive": "3 transient failures in a row"}
    assert [job.state for job in jobs(registry)] == [JobState.HELD]
    series_of(registry, 1, expected=1)  # a new job for a held destination is held
    assert [job.state for job in jobs(registry)] == [JobState.HELD, JobState.HELD]
    assert claim(registry, now) == []
    registry.release_destination("archive", now)
    assert registry.held_destinations() == {}
    assert [job.state for job in jobs(registry)] == [JobState.PENDING, JobState.PENDING]
    assert len(claim(registry, now)) == 2


def test_a_transient_failure_while_held_holds_the_job(open_queue: OpenQueue) -> None:
    registry = open_queue()
    series_of(registry, 1, expected=1)
    now = time.time()
    (job,) = claim(registry, now)
    registry.hold_destination("archive", "circuit open", now)
    row = end(registry, job.job_id, JobEndKind.TRANSIENT, now, "connection refused")
    assert (row.state, row.last_error) == (JobState.HELD, "connection refused")


def test_a_claim_takes_at_most_128_presentation_contexts(open_queue: OpenQueue) -> None:
    """A job with more (SOP class, transfer syntax) pairs than an association can propose
    is sent in parts: the first claim stops before the 129th pair, the rest follows."""
    registry = open_queue()
    series = uid()
    count = MAX_PAIRS + 2
    registry.register([stored(f"{series}.0", series)], "p1")
    registry.set_expected(series, count, ExpectedStatus.KNOWN, "", "PACS")
    instances = [stored(f"{series}.{i}", series) for i in range(count)]
    for i, instance in enumerate(instances):
        instance.attributes.SOPClassUID = f"1.2.3.{i}"
    registry.register(instances, "p1")
    now = time.time()
    (first,) = claim(registry, now)
    assert len({(i.sop_class_uid, i.transfer_syntax) for i in first.items}) == MAX_PAIRS
    deliver(registry, first, now)
    row = end(registry, first.job_id, JobEndKind.OK, now)
    assert (row.state, row.delivered, row.total) == (JobState.PENDING, MAX_PAIRS, count)
    (rest,) = claim(registry, now)
    assert len(rest.items) == 2
    deliver(registry, rest, now)
    assert end(registry, rest.job_id, JobEndKind.OK, now).state is JobState.DONE


def test_two_processes_never_claim_the_same_job(open_queue: OpenQueue) -> None:
    """Two registry objects (their own connections, like two processes) claim from threads
    at once: every job is claimed exactly once (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite:
    one writer at a time)."""
    first = open_queue()
    for _ in range(30):
        series_of(first, 1, expected=1)
    processes = [first, open_queue()]
    claimed: list[list[int]] = [[], []]
    start = threading.Barrier(2)
    now = time.time()

    def claimer(index: int) -> None:
        start.wait()
        while got := processes[index].claim_jobs(f"p{index}", {"archive": 2}, 60.0, now):
            claimed[index].extend(job.job_id for job in got)

    threads = [threading.Thread(target=claimer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    everything = claimed[0] + claimed[1]
    assert len(everything) == len(set(everything)) == 30
    assert {job.lease_owner for job in jobs(first)} <= {"p0", "p1"}


# --- outcomes and retries -------------------------------------------------------------------


def test_delivered_and_failed_items_make_a_done_job(open_queue: OpenQueue) -> None:
    registry = open_queue()
    series_of(registry, 3, expected=3)
    now = time.time()
    (job,) = claim(registry, now)
    registry.record_items(
        "p1",
        [
            ItemOutcome(job.job_id, job.items[0].item_id, DeliveryResult.DELIVERED, 0, ""),
            ItemOutcome(job.job_id, job.items[1].item_id, DeliveryResult.WARNING, 0xB000, "w"),
            ItemOutcome(job.job_id, job.items[2].item_id, DeliveryResult.FAILED, 0xC000, "bad"),
        ],
        now,
    )
    row = end(registry, job.job_id, JobEndKind.OK, now)
    assert (row.state, row.delivered, row.warnings, row.failed, row.total) == (
        JobState.DONE,
        2,
        1,
        1,
        3,
    )
    assert row.last_error == (
        f"1 of 3 instances failed; first: SOP Instance {job.items[2].sop_instance_uid}"
        " answered C000: bad"
    )
    assert (row.lease_owner, row.lease_until, row.next_attempt_at) == (None, None, None)
    # An outcome recorded again never undoes a delivery.
    registry.record_items(
        "p1",
        [ItemOutcome(job.job_id, job.items[0].item_id, DeliveryResult.FAILED, None, "x")],
        now,
    )
    assert jobs(registry)[0].delivered == 2


def test_transient_failures_back_off_then_die(open_queue: OpenQueue) -> None:
    registry = open_queue()
    series_of(registry, 2, expected=2)
    now = time.time()
    (job,) = claim(registry, now)
    deliver(registry, msgspec.structs.replace(job, items=job.items[:1]), now)
    row = end(registry, job.job_id, JobEndKind.TRANSIENT, now, "connection refused")
    assert (row.state, row.attempts, row.last_error) == (
        JobState.FAILED,
        1,
        "connection refused",
    )
    assert row.next_attempt_at is not None
    assert now + 5 <= row.next_attempt_at <= now + 10  # base 10, equal jitter
    assert claim(registry, row.next_attempt_at - 0.5) == []
    (again,) = claim(registry, row.next_attempt_at)
    assert [item.item_id for item in again.items] == [job.items[1].item_id]
    row = end(registry, job.job_id, JobEndKind.TRANSIENT, now, "timed out")
    assert (row.state, row.attempts) == (JobState.FAILED, 2)
    assert row.next_attempt_at is not None and now + 10 <= row.next_attempt_at <= now + 20
    claim(registry, row.next_attempt_at)
    row = end(registry, job.job_id, JobEndKind.TRANSIENT, now, "aborted")
    assert (row.state, row.attempts, row.last_error) == (
        JobState.DEAD,
        3,
        "aborted (gave up after 3 attempts)",
    )
    assert claim(registry, now + 10_000) == []


def test_retry_policy_delays() -> None:
    policy = RetryPolicy(base=10.0, maximum=60.0, attempts=10)
    rng = random.Random(7)
    for attempt, ceiling in ((1, 10), (2, 20), (3, 40), (4, 60), (9, 60), (500, 60)):
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered


def test_permanent_failures_are_dead_and_retried_by_hand(open_queue: OpenQueue) -> None:
    registry = open_queue()
    series_of(registry, 2, expected=2)
    now = time.time()
    (job,) = claim(registry, now)
    deliver(registry, job, now, failed=1)  # one refused, one delivered
    error = "association rejected (permanent): called AE title not recognized"
    row = end(registry, job.job_id, JobEndKind.TRANSIENT, now)
    assert row.state is JobState.DONE  # nothing pending: done, with its failure
    assert row.failed == 1
    series_of(registry, 1, expected=1)
    (other,) = claim(registry, now)
    row = end(registry, other.job_id, JobEndKind.PERMANENT, now, error)
    assert (row.state, row.last_error) == (JobState.DEAD, error)
    assert registry.retry_jobs(state=JobState.DEAD, now=now) == 1
    row = jobs(registry)[1]
    assert (row.state, row.attempts, row.last_error) == (JobState.PENDING, 0, "")
    # A done job with a failed item, retried by id: only that item is sent again.
    assert registry.retry_jobs([job.job_id], now=now) == 1
    retried = {claimed.job_id: claimed for claimed in claim(registry, now)}
    assert [item.item_id for item in retried[job.job_id].items] == [job.items[0].item_id]
    assert registry.retry_jobs([job.job_id], now=now) == 0  # running: nothing to retry
    with pytest.raises(ValueError, match="which jobs"):
        registry.retry_jobs(now=now)


def test_cancel_by_id_and_state(open_queue: OpenQueue) -> None:
    registry = open_queue()
    for _ in range(3):
        series_of(registry, 1, expected=1)
    now = time.time()
    (running,) = claim(registry, now, {"archive": 1})
    ids = [job.id for job in jobs(registry)]
    assert registry.cancel_jobs([running.job_id]) == 1
    # Its process learns it when renewing, and its end leaves it cancelled.
    assert registry.renew_leases("p1", [running.job_id], 60.0, now) == set()
    assert end(registry, running.job_id, JobEndKind.CANCELLED, now).state is JobState.CANCELLED
    assert registry.cancel_jobs(state=JobState.PENDING) == 2
    assert [job.state for job in jobs(registry)] == [JobState.CANCELLED] * 3
    assert claim(registry, now) == []
    assert registry.cancel_jobs(ids) == 0  # already
    assert registry.retry_jobs(state="cancelled", now=now) == 3
    assert [job.state for job in jobs(registry, states=["pending"])] == [JobState.PENDING] * 3


def test_a_job_stopped_by_its_process_is_pending_again(open_queue: OpenQueue) -> None:
    """A shutdown (engine cancelled, not a person): pending again, not an attempt; its
    delivered items stay delivered."""
    registry = open_queue()
    series_of(registry, 2, expected=2)
    now = time.time()
    (job,) = claim(registry, now)
    deliver(registry, msgspec.structs.replace(job, items=job.items[:1]), now)
    row = end(registry, job.job_id, JobEndKind.CANCELLED, now, "shutting down")
    assert (row.state, row.attempts, row.delivered) == (JobState.PENDING, 0, 1)
    (again,) = claim(registry, now)
    assert (again.attempts, len(again.items)) == (1, 1)
    # Stopped again, but after its last item was delivered: done.
    deliver(registry, again, now)
    row = end(registry, job.job_id, JobEndKind.CANCELLED, now, "shutting down")
    assert (row.state, row.delivered, row.last_error) == (JobState.DONE, 2, "")


def test_list_jobs_filters_and_forwarded(open_queue: OpenQueue) -> None:
    registry = open_queue()
    first = series_of(registry, 2, expected=2)
    second = series_of(registry, 1, expected=1)
    now = time.time()
    (job, _) = claim(registry, now)
    deliver(registry, job, now)
    end(registry, job.job_id, JobEndKind.OK, now)
    assert [row.series_instance_uid for row in jobs(registry, states=[JobState.DONE])] == [first]
    assert [row.series_instance_uid for row in jobs(registry, series=second)] == [second]
    assert [row.series_instance_uid for row in jobs(registry, limit=1)] == [second]
    forwarded = registry.forwarded([(first, "PACS"), (second, "PACS"), (second, "OTHER")])
    assert {
        key: [(f.destination, f.rule, f.state, f.delivered, f.total) for f in found]
        for key, found in forwarded.items()
    } == {
        (first, "PACS"): [("archive", "to-archive", JobState.DONE, 2, 2)],
        (second, "PACS"): [("archive", "to-archive", JobState.RUNNING, 0, 1)],
    }


# --- upgrade ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_version_2_registry_upgrades_and_forwards(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """A registry of schema version 2 holding a series (written as version 2 had it) is
    migrated to version 3; completing that series then queues its instances (CalledAET
    unknown for it: None)."""
    connection = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    with monkeypatch.context() as patched:
        for module in (_sqlite, _postgres):
            patched.setattr(module, "MIGRATIONS", module.MIGRATIONS[:2])
            patched.setattr(module, "LATEST", 2)
        old = open_registry(connection, tmp_path)
        old.migrate()
        old.close()
    ts = "to_timestamp(%(now)s)" if connection else ":now"
    rows = [
        "INSERT INTO patients (patient_id) VALUES ('P9')",
        "INSERT INTO studies (study_instance_uid, patient_id) VALUES ('1.9', 'P9')",
        f"""INSERT INTO series (series_instance_uid, study_instance_uid, calling_aet,
            modality, expected, expected_status, expected_detail, received, state,
            first_received_at, last_received_at, finalized_at)
            VALUES ('1.9.1', '1.9', 'OLD', 'CT', NULL, 'pending', '', 2,
                'finalized-unknown', {ts}, {ts}, {ts})""",
        *(
            f"""INSERT INTO instances (sop_instance_uid, calling_aet, series_instance_uid,
                sop_class_uid, transfer_syntax, path, size, node, association_id,
                received_at, stored_at)
                VALUES ('1.9.1.{i}', 'OLD', '1.9.1', '1.2.840.10008.5.1.4.1.1.2',
                    '1.2.840.10008.1.2.1', '/old/{i}.dcm', 10, 'p0', 1, {ts}, {ts})"""
            for i in (1, 2)
        ),
    ]
    if connection:
        with psycopg.connect(connection) as pg:
            for row in rows:
                pg.execute(row.encode(), {"now": time.time()})
    else:
        with contextlib.closing(sqlite3.connect(sqlite_path(tmp_path))) as lite, lite:
            for row in rows:
                lite.execute(row, {"now": time.time()})
    seen: list[SeriesFacts] = []
    routes = Routes.parse(COMPLETE_TO_ARCHIVE)

    class Recording:
        triggers = routes.triggers

        def targets(
            self, trigger: Trigger, series: SeriesFacts, state: SeriesState | None
        ) -> list[Target]:
            seen.append(series)
            return routes.targets(trigger, series, state)

    registry = open_registry(connection, tmp_path, router=Recording())
    try:
        registry.migrate()
        registry.set_expected("1.9.1", 2, ExpectedStatus.KNOWN, "", "OLD")
        (job,) = registry.list_jobs()
        assert (job.series_instance_uid, job.calling_aet, job.total) == ("1.9.1", "OLD", 2)
        assert [(facts["Modality"], facts["CalledAET"]) for facts in seen] == [("CT", None)]
        (claimed,) = registry.claim_jobs("p1", ROOM, 60.0, time.time())
        assert sorted(item.path for item in claimed.items) == ["/old/1.dcm", "/old/2.dcm"]
    finally:
        registry.close()
