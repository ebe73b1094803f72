"""The bounded work queue every background job of oxidip goes through (``oxidip.workers``):
order, the two kinds of bound, back-pressure and its counters, runs, retries with backoff,
closing. Handlers block on events the tests release, so nothing depends on timing."""

import logging
import threading
import time

import pytest

from oxidip.workers import Run, WorkQueue
from tests.helpers.polling import wait_until


class Recorder:
    """A handler recording every run; ``gate`` holds it back while cleared."""

    def __init__(self) -> None:
        self.runs: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, run: Run[int]) -> None:
        self.entered.set()
        assert self.gate.wait(10)
        self.runs.append(list(run.items))

    @property
    def items(self) -> list[int]:
        return [item for run in self.runs for item in run]


def worker_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(f"oxidip-{name}")]


def test_items_are_done_in_order_by_one_worker_started_on_demand() -> None:
    recorder = Recorder()
    queue = WorkQueue("test-order", recorder, max_waiting=100)
    assert worker_threads("test-order") == [], "no work, no thread"
    for item in range(50):
        assert queue.put(item)
    assert queue.drain(10)
    assert recorder.items == list(range(50))
    assert [t.name for t in worker_threads("test-order")] == ["oxidip-test-order"]
    assert queue.shutdown(5) == (0, 0)
    assert queue.finished


def test_a_bound_on_waiting_work_leaves_the_running_item_out() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    queue = WorkQueue("test-waiting", recorder, max_waiting=3)
    queue.put(0)
    assert recorder.entered.wait(5)  # the worker holds item 0
    for item in range(1, 4):
        assert queue.put(item, timeout=0)
    assert (queue.waiting, queue.running, queue.pending) == (3, 1, 4)
    assert not queue.has_room()
    assert not queue.put(4, timeout=0)
    assert queue.refused == 1
    waited = threading.Thread(target=queue.put, args=(5,))
    waited.start()
    wait_until(lambda: queue.waits == 1)
    recorder.gate.set()
    waited.join(5)
    assert queue.drain(5)
    assert recorder.items == [0, 1, 2, 3, 5]
    assert queue.peak_waiting == 3
    queue.shutdown(5)


def test_a_bound_on_pending_work_counts_the_running_item() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    queue = WorkQueue("test-pending", recorder, max_pending=3, workers=2)
    results = [queue.put(item, timeout=0) for item in range(5)]
    assert results == [True, True, True, False, False]
    assert queue.pending == 3
    assert queue.refused == 2
    wait_until(lambda: queue.running == 2)  # two workers, each holding one
    assert sorted(t.name for t in worker_threads("test-pending")) == [
        "oxidip-test-pending-0",
        "oxidip-test-pending-1",
    ]
    recorder.gate.set()
    assert queue.drain(5)
    assert sorted(recorder.items) == [0, 1, 2]
    queue.shutdown(5)


def test_add_goes_past_the_bound_and_wait_for_room_pushes_back() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    queue = WorkQueue("test-add", recorder, max_pending=10, weight=lambda instances: instances)
    assert queue.add(8)  # a batch of 8 instances
    assert queue.add(8)  # past the bound
    assert queue.add(0)  # weighs nothing
    assert queue.pending == 16
    assert not queue.wait_for_room(0.05)
    recorder.gate.set()
    assert queue.wait_for_room(5)
    assert queue.drain(5)
    assert queue.pending == 0
    queue.shutdown(5)


def test_runs_join_the_items_that_follow() -> None:
    recorder = Recorder()
    recorder.gate.clear()
    queue = WorkQueue(
        "test-runs", recorder, max_waiting=100, joins=lambda run, following: len(run) < 3
    )
    queue.put(0)
    assert recorder.entered.wait(5)
    for item in range(1, 8):
        queue.put(item)
    recorder.gate.set()
    assert queue.drain(5)
    assert recorder.runs == [[0], [1, 2, 3], [4, 5, 6], [7]]
    queue.shutdown(5)


class Outage(Exception):
    pass


def test_a_retried_run_stays_at_the_head_until_it_succeeds() -> None:
    calls: list[list[int]] = []
    failures = [2]

    def handle(run: Run[int]) -> None:
        calls.append(list(run.items))
        if run.items[0] == 0 and failures[0]:
            failures[0] -= 1
            raise Outage("unreachable")

    queue = WorkQueue(
        "test-retry",
        handle,
        retry=lambda error: isinstance(error, Outage),
        backoff=(0.01, 0.02),
    )
    for item in range(3):
        queue.put(item)
    assert queue.drain(5)
    assert calls == [[0], [0], [0], [1], [2]]
    queue.shutdown(5)


def test_other_failures_are_logged_and_the_next_item_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    done: list[int] = []

    def handle(run: Run[int]) -> None:
        if run.items[0] == 1:
            raise ValueError("bad item")
        done.extend(run.items)

    queue = WorkQueue("test-failure", handle, retry=lambda error: isinstance(error, Outage))
    with caplog.at_level(logging.ERROR, logger="oxidip.workers"):
        for item in range(3):
            queue.put(item)
        assert queue.drain(5)
    assert done == [0, 2]
    [record] = [r for r in caplog.records if r.getMessage() == "work failed"]
    assert record.__dict__["queue"] == "test-failure"
    assert record.exc_info is not None and "bad item" in str(record.exc_info[1])
    queue.shutdown(5)


def test_abandon_ends_a_retrying_worker_during_its_backoff() -> None:
    def handle(run: Run[int]) -> None:
        raise Outage("still unreachable")

    queue = WorkQueue("test-abandon", handle, retry=lambda error: True, backoff=(60.0, 60.0))
    queue.put(0)
    queue.put(1)
    wait_until(lambda: queue.running == 1)
    started = time.monotonic()
    assert queue.shutdown(0.1) == (1, 1)  # item 1 dropped, item 0 still in hand
    assert time.monotonic() - started < 5
    wait_until(lambda: queue.finished)
    assert queue.dropped == 1


def test_shutdown_drains_then_drops_and_close_refuses() -> None:
    recorder = Recorder()
    queue = WorkQueue("test-shutdown", recorder, max_waiting=100)
    for item in range(5):
        queue.put(item)
    assert queue.shutdown(5) == (0, 0)
    assert recorder.items == list(range(5))
    assert not queue.put(5) and not queue.add(6)
    assert queue.dropped == 2

    held = Recorder()
    held.gate.clear()
    stuck = WorkQueue("test-stuck", held, max_waiting=2)
    stuck.put(0)
    assert held.entered.wait(5)
    stuck.put(1)
    stuck.put(2)
    producer = threading.Thread(target=stuck.put_many, args=([3, 4, 5],))
    producer.start()
    wait_until(lambda: stuck.waits == 1)
    assert stuck.shutdown(0.1) == (2, 1)
    producer.join(5)
    assert not producer.is_alive(), "shutdown releases the producers waiting for room"
    assert stuck.dropped == 5  # 3, 4, 5 refused as closed; 1, 2 discarded
    held.gate.set()
    wait_until(lambda: stuck.finished)
    assert held.items == [0]


def test_an_owner_consumes_without_threads() -> None:
    woken: list[int] = []
    queue: WorkQueue[str] = WorkQueue("test-owner", max_waiting=2, wake=lambda: woken.append(1))
    assert queue.put("a") and queue.put("b")
    assert woken == [1], "woken when work arrives in an empty queue"
    assert not queue.put("c", timeout=0)
    run = queue.take_nowait()
    assert run is not None and run.items == ["a"]
    assert (queue.waiting, queue.running) == (1, 1)
    assert queue.put("c", timeout=0), "taking an item made room"
    run.done()
    run.done()  # idempotent
    assert queue.pending == 2
    assert worker_threads("test-owner") == []


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        WorkQueue("x", max_waiting=0)
    with pytest.raises(ValueError):
        WorkQueue("x", max_waiting=1, max_pending=1)
    with pytest.raises(ValueError):
        WorkQueue("x", workers=0)
