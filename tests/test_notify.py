"""NATS notifications, received by a real subscriber from a real nats-server."""

import itertools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from oxidip.nats_notifier import NatsNotifier
from oxidip.notify import (
    FORMAT_VERSION,
    Complete,
    Error,
    Finalized,
    NullNotifier,
    Progress,
    decode_message,
    open_notifier,
    sanitize_subject_part,
    subject_of,
)
from tests.helpers.nats import NatsServer, Received, Subscriber, closed_port

_roots = itertools.count()

SERIES_FIELDS = {
    "kind",
    "v",
    "series_instance_uid",
    "calling_aet",
    "time",
    "study_instance_uid",
    "received",
    "expected",
    "expected_status",
    "expected_detail",
    "state",
}
ERROR_FIELDS = {"kind", "v", "series_instance_uid", "calling_aet", "time", "message"}


class Row(msgspec.Struct):
    """Stands for ``oxidip.registry.SeriesRow`` (same fields)."""

    series_instance_uid: str = "1.2.840.99.1"
    study_instance_uid: str = "1.2.840.99"
    calling_aet: str = "PACS"
    patient_id: str = "P1"
    modality: str = "CT"
    series_description: str = "head"
    series_number: str = "3"
    expected: int | None = 5
    expected_status: str = "known"
    expected_detail: str = ""
    received: int = 0
    state: str = "receiving"
    first_received_at: float = 0.0
    last_received_at: float = 0.0
    finalized_at: float | None = None


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


MakeNotifier = Callable[..., NatsNotifier]


@pytest.fixture
def root() -> str:
    """A root subject of its own for each test."""
    return f"oxidiptest{next(_roots)}"


@pytest.fixture
def subscriber(nats_server: NatsServer, root: str) -> Iterator[Subscriber]:
    with Subscriber(nats_server.url, f"{root}.>") as sub:
        yield sub


@pytest.fixture
def notifier(nats_server: NatsServer, root: str) -> Iterator[MakeNotifier]:
    """Factory of notifiers on the test's server and root subject, closed at the end."""
    made: list[NatsNotifier] = []

    def make(**options: Any) -> NatsNotifier:
        options.setdefault("root_subject", root)
        n = NatsNotifier(nats_server.address, **options)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close(2)


def decoded(messages: list[Received]) -> list[tuple[str, Progress | Complete | Finalized | Error]]:
    return [(m.subject, decode_message(m.data)) for m in messages]


def count_of(message: Received | Progress | Complete | Finalized | Error) -> int:
    """``received`` of a series message."""
    if isinstance(message, Received):
        message = decode_message(message.data)
    assert not isinstance(message, Error), message
    return message.received


# --- subjects ----------------------------------------------------------------------------


def test_sanitize_subject_part_like_oxidicom() -> None:
    assert sanitize_subject_part("1.2.840.113619") == "1_2_840_113619"
    assert sanitize_subject_part("MY PACS") == "MY_PACS"
    assert sanitize_subject_part("a*b>c") == "a_b_c"
    assert sanitize_subject_part("a\0b") == "ab"
    # Beyond oxidicom: what NATS would refuse.
    assert sanitize_subject_part("a\tb\r\nc") == "a_b__c"
    assert sanitize_subject_part("") == "_"
    assert sanitize_subject_part("\0") == "_"
    assert subject_of("oxidip", "MY PACS", "1.2.3") == "oxidip.MY_PACS.1_2_3"


def test_invalid_root_subject() -> None:
    for bad in ("", "a..b", "a.*", "a b", "x.>", "a\n"):
        with pytest.raises(ValueError, match="invalid NATS root subject"):
            NatsNotifier("127.0.0.1:1", root_subject=bad)


# --- connection ----------------------------------------------------------------------------


def test_unreachable_at_start_warns_queues_and_closes_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A side channel must not stop intake: no exception, one warning; messages wait in the
    queue (dropped and counted past it) and ``close`` does not wait for a server that never
    answered."""
    port = closed_port()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="oxidip.notify"):
        n = NatsNotifier(f"127.0.0.1:{port}", connect_timeout=1.0, queue_size=2)
        assert time.monotonic() - started < 5
        for uid in ("1.2.1", "1.2.2", "1.2.3"):
            n.finalized(Row(series_instance_uid=uid, state="complete"))
        assert n.backlog == 2
        assert n.lost == 1
        closing = time.monotonic()
        n.close(timeout=5.0)
        assert time.monotonic() - closing < 2
    [warning] = [r for r in caplog.records if r.getMessage() == "nats unreachable"]
    assert warning.levelname == "WARNING"
    assert f"127.0.0.1:{port}" == warning.__dict__["address"]
    assert "refused" in warning.__dict__["error"].lower() or "connect" in warning.__dict__["error"]
    [closed] = [r for r in caplog.records if r.getMessage() == "nats closed"]
    assert closed.__dict__["lost"] == 3
    assert closed.__dict__["ever_connected"] is False
    # No thread left behind.
    assert not [t for t in threading.enumerate() if t.name == "oxidip-nats"]


def test_open_notifier_without_address_is_null() -> None:
    for address in (None, "", " "):
        n = open_notifier(address)
        assert isinstance(n, NullNotifier)
        n.progress(Row())
        n.complete(Row())
        n.finalized(Row())
        n.error("1.2", "PACS", "x")
        n.close()


def test_open_notifier_with_address(nats_server: NatsServer) -> None:
    n = open_notifier(f"nats://{nats_server.address}", root_subject="x")
    assert isinstance(n, NatsNotifier)
    n.close()


# --- messages ------------------------------------------------------------------------------


def test_complete_finalized_and_error_messages(
    subscriber: Subscriber, notifier: MakeNotifier, root: str
) -> None:
    n = notifier()
    before = datetime.now(UTC)
    n.progress(Row(received=1))
    n.complete(Row(received=5, state="complete"))
    n.finalized(Row(received=5, state="complete"))
    n.finalized(
        Row(
            series_instance_uid="1.2.840.99.2",
            received=3,
            expected=None,
            expected_status="unknown-aet",
            expected_detail="no OXIDIP_PACS_ADDRESS entry for PACS",
            state="finalized-unknown",
        )
    )
    n.error("1.2.840.99.3", "PACS", "disk full")
    received = subscriber.wait_for(5)
    after = datetime.now(UTC)

    subjects = [m.subject for m in received]
    assert subjects == [
        f"{root}.PACS.1_2_840_99_1",
        f"{root}.PACS.1_2_840_99_1",
        f"{root}.PACS.1_2_840_99_1",
        f"{root}.PACS.1_2_840_99_2",
        f"{root}.PACS.1_2_840_99_3",
    ]
    raw = [json.loads(m.data) for m in received]
    assert [r["kind"] for r in raw] == ["progress", "complete", "finalized", "finalized", "error"]
    for obj in raw[:4]:
        assert set(obj) == SERIES_FIELDS
    assert set(raw[4]) == ERROR_FIELDS
    assert all(obj["v"] == FORMAT_VERSION == 1 for obj in raw)
    assert raw[1] == {
        "kind": "complete",
        "v": 1,
        "series_instance_uid": "1.2.840.99.1",
        "calling_aet": "PACS",
        "time": raw[1]["time"],
        "study_instance_uid": "1.2.840.99",
        "received": 5,
        "expected": 5,
        "expected_status": "known",
        "expected_detail": "",
        "state": "complete",
    }
    assert raw[3]["expected"] is None
    assert raw[3]["state"] == "finalized-unknown"
    assert raw[3]["expected_detail"] == "no OXIDIP_PACS_ADDRESS entry for PACS"
    assert raw[4]["message"] == "disk full"
    assert raw[4]["series_instance_uid"] == "1.2.840.99.3"

    messages = [decode_message(m.data) for m in received]
    assert [type(m) for m in messages] == [Progress, Complete, Finalized, Finalized, Error]
    for message in messages:
        assert before - timedelta(seconds=1) <= message.time <= after
        assert message.time.tzinfo is not None
    assert raw[0]["time"].endswith("Z")


def test_subjects_are_sanitised(subscriber: Subscriber, notifier: MakeNotifier, root: str) -> None:
    n = notifier()
    n.complete(Row(series_instance_uid="1.2.3 4*5>6", calling_aet="MY.PACS 1", state="complete"))
    n.error("1.2\x00.3", "A*>", "oops")
    received = subscriber.wait_for(2)
    assert [m.subject for m in received] == [
        f"{root}.MY_PACS_1.1_2_3_4_5_6",
        f"{root}.A__.1_2_3",
    ]
    first, second = (decode_message(m.data) for m in received)
    assert (first.calling_aet, first.series_instance_uid) == ("MY.PACS 1", "1.2.3 4*5>6")
    assert (second.calling_aet, second.series_instance_uid) == ("A*>", "1.2\x00.3")


def test_progress_is_rate_limited_and_complete_carries_the_last_count(
    subscriber: Subscriber, notifier: MakeNotifier
) -> None:
    interval = 0.2
    n = notifier(progress_interval=interval)
    started = time.monotonic()
    calls = 60
    for count in range(1, calls + 1):
        n.progress(Row(received=count))
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    n.complete(Row(received=calls, state="complete"))
    n.finalized(Row(received=calls, state="complete"))
    received = decoded(subscriber.wait_for(3))
    received = decoded(subscriber.settle())

    kinds = [type(m).__name__ for _, m in received]
    progress = [m for _, m in received if isinstance(m, Progress)]
    # One at once, then at most one per interval (the held one going out at its end).
    assert 2 <= len(progress) <= math.floor(elapsed / interval) + 1, kinds
    assert len(progress) < calls
    counts = [m.received for m in progress]
    assert counts[0] == 1
    assert counts == sorted(counts)
    assert kinds[-2:] == ["Complete", "Finalized"]
    assert count_of(received[-2][1]) == calls
    assert count_of(received[-1][1]) == calls
    # Spaced by the interval (the time is when each count was reported).
    times = [m.time for m in progress]
    for earlier, later in itertools.pairwise(times):
        assert (later - earlier).total_seconds() >= interval * 0.9


def test_rate_limit_is_per_series(subscriber: Subscriber, notifier: MakeNotifier) -> None:
    n = notifier(progress_interval=5.0)
    for count in range(1, 4):
        for uid in ("1.1", "1.2", "1.3"):
            n.progress(Row(series_instance_uid=uid, received=count))
    received = decoded(subscriber.wait_for(3))
    received = decoded(subscriber.settle(0.3))
    assert sorted((m.series_instance_uid, count_of(m)) for _, m in received) == [
        ("1.1", 1),
        ("1.2", 1),
        ("1.3", 1),
    ]


def test_held_progress_goes_out_after_the_interval(
    subscriber: Subscriber, notifier: MakeNotifier
) -> None:
    n = notifier(progress_interval=0.3)
    for count in range(1, 11):
        n.progress(Row(received=count))
    first = subscriber.wait_for(1)
    first_arrival = time.monotonic()
    assert count_of(first[0]) == 1
    both = subscriber.wait_for(2, timeout=5)
    waited = time.monotonic() - first_arrival
    assert count_of(both[1]) == 10
    assert waited >= 0.2
    assert len(subscriber.settle(0.5)) == 2


def test_complete_drops_held_progress(subscriber: Subscriber, notifier: MakeNotifier) -> None:
    n = notifier(progress_interval=0.3)
    n.progress(Row(received=1))
    n.progress(Row(received=2))
    n.complete(Row(received=5, state="complete"))
    time.sleep(0.6)  # past the interval: the held count 2 must not come after complete
    received = decoded(subscriber.settle())
    assert [(type(m).__name__, count_of(m)) for _, m in received] == [
        ("Progress", 1),
        ("Complete", 5),
    ]
    # The series starts afresh after its end (e.g. sent again later).
    n.progress(Row(received=6))
    assert count_of(subscriber.wait_for(3)[2]) == 6


def test_close_flushes_queued_and_held_messages(
    subscriber: Subscriber, notifier: MakeNotifier
) -> None:
    n = notifier(progress_interval=10.0)
    for count in range(1, 6):
        n.progress(Row(received=count))
    for i in range(200):
        n.error(f"1.2.{i}", "PACS", "e")
    n.close()
    received = decoded(subscriber.wait_for(202))
    progress = [m.received for _, m in received if isinstance(m, Progress)]
    assert progress == [1, 5]
    assert n.published == 202
    n.progress(Row(received=7))  # after close: ignored, no error
    n.close()


def test_full_queue_drops_progress_never_complete(
    subscriber: Subscriber, notifier: MakeNotifier
) -> None:
    n = notifier(progress_interval=0, queue_size=2, block_timeout=10)
    release = threading.Event()
    n._loop.call_soon_threadsafe(release.wait, 10)  # the NATS side stalls
    for i in range(5):
        n.progress(Row(series_instance_uid=f"1.{i}", received=1))
    assert n.backlog == 2
    assert n.dropped_progress == 3
    threading.Timer(0.3, release.set).start()
    started = time.monotonic()
    n.complete(Row(series_instance_uid="1.0", received=1, state="complete"))  # waits for room
    assert time.monotonic() - started >= 0.2
    n.error("1.0", "PACS", "after")
    received = decoded(subscriber.wait_for(4))
    assert [(type(m).__name__, m.series_instance_uid) for _, m in received] == [
        ("Progress", "1.0"),
        ("Progress", "1.1"),
        ("Complete", "1.0"),
        ("Error", "1.0"),
    ]
    assert n.lost == 0


def test_complete_lost_after_block_timeout_is_logged(
    notifier: MakeNotifier, caplog: pytest.LogCaptureFixture
) -> None:
    n = notifier(progress_interval=0, queue_size=1, block_timeout=0.2)
    release = threading.Event()
    n._loop.call_soon_threadsafe(release.wait, 10)
    try:
        n.progress(Row(received=1))
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="oxidip.notify"):
            n.complete(Row(received=1, state="complete"))
        assert 0.15 <= time.monotonic() - started < 2
        assert n.lost == 1
        lost = [r for r in caplog.records if r.getMessage() == "nats message lost"]
        assert lost and lost[0].__dict__["kind"] == "complete"
    finally:
        release.set()


def test_survives_a_server_restart(caplog: pytest.LogCaptureFixture, root: str) -> None:
    server = NatsServer()
    n: NatsNotifier | None = None
    try:
        with Subscriber(server.url, f"{root}.>", reconnect=True) as sub:
            with caplog.at_level(logging.INFO, logger="oxidip.notify"):
                n = NatsNotifier(server.address, root_subject=root)
                n.complete(Row(series_instance_uid="1.1", state="complete"))
                sub.wait_for(1)

                server.stop()
                wait_for_record(caplog, "nats disconnected")
                started = time.monotonic()
                n.progress(Row(series_instance_uid="1.2", received=1))  # never blocks or raises
                n.complete(Row(series_instance_uid="1.2", state="complete"))
                assert time.monotonic() - started < 0.5

                server = NatsServer(port=server.port)
                wait_for_record(caplog, "nats reconnected")
                assert sub.reconnected.wait(10)
            n.complete(Row(series_instance_uid="1.3", state="complete"))
            sub.wait_for(2)
            received = decoded(sub.settle(0.5))
            # What was published during the outage may or may not have reached this
            # subscriber (NATS core delivers at most once, to whoever is subscribed then).
            assert received[0][1].series_instance_uid == "1.1"
            assert received[-1][1].series_instance_uid == "1.3"
    finally:
        if n is not None:
            n.close(2)
        server.stop()


def wait_for_record(caplog: pytest.LogCaptureFixture, msg: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(r.getMessage() == msg for r in caplog.records):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {msg!r} log record within {timeout} s: {caplog.text}")
        time.sleep(0.02)
