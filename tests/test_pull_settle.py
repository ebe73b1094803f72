"""How a pull knows a series' registrations caught up: the count it awaits after an attempt
(``oxidip.pull.schedule.awaited``) and the registrar's wake-up on each job done
(``Registrar.wait_done``), which ends a series within milliseconds instead of a poll."""

import threading
import time

from oxidip.pull.retrieve import Attempt, Counts, Verdict
from oxidip.pull.schedule import awaited
from oxidip.registration import Registrar


def test_the_count_awaited_is_what_the_pacs_says_it_sent() -> None:
    done = Attempt(Verdict.DONE, "", Counts(0, 98, 0, 2), final=True)
    assert awaited(100, done) == 100  # the PACS said all: the expected count
    assert awaited(None, done) == 100  # no expected count: completed + warning
    failed = Attempt(Verdict.TRANSIENT, "B000", Counts(0, 60, 40, 0), final=True)
    assert awaited(100, failed) == 60  # 40 failed: never coming
    aborted = Attempt(Verdict.TRANSIENT, "aborted", Counts(50, 50, 0, 0))
    assert awaited(100, aborted) is None  # no final response: unknown, wait for quiet
    assert awaited(100, Attempt(Verdict.PERMANENT, "A801", Counts(), final=True)) is None


class _Acknowledged:
    def acknowledge(self, seqs: list[int], *, registered: bool) -> None:
        pass


def test_wait_done_wakes_on_the_next_job_and_otherwise_times_out() -> None:
    registrar: Registrar[None] = Registrar(
        _Acknowledged(),
        lambda events: None,
        lambda events, result: None,
        lambda events, error: None,
        backlog=10,
        answer_within=None,
    )
    try:
        seen = registrar.jobs_done
        started = time.monotonic()
        assert registrar.wait_done(seen, 0.05) == seen
        assert time.monotonic() - started >= 0.05

        release = threading.Event()
        registrar.call(lambda: release.wait(5), lambda result: None, "slow call")
        waiter = threading.Thread(target=lambda: time.sleep(0.05) or release.set())
        waiter.start()
        started = time.monotonic()
        assert registrar.wait_done(seen, 10) == seen + 1
        assert time.monotonic() - started < 5  # woken by the job, not the 10 s timeout
        waiter.join()
    finally:
        registrar.close(5)
