"""Retrieving a pull's series at the rate the PACS tolerates: ``concurrency`` retrievals at
once (one thread each: they wait on the Rust core with the GIL released), ``pause`` seconds
between two retrievals of a thread, each series claimed from the registry under a lease
(renewed while it runs, so that a second pull of the same series waits, and a pull killed
mid-way gives its series up when the lease expires), each attempt watched
(``oxidip.pull.retrieve.watch``), transient failures retried with backoff up to
``retries`` times, then the series' end state decided from what the registry registered.

A retrieval's end and its series' end are two steps: once the PACS's final response came, the
series waits for its last registrations on a thread of its own (``_settle``: milliseconds
with an in-process receiver, up to a poll interval with ``oxidip serve`` elsewhere) while its
retrieval thread starts the next series: the PACS is done with it, and the pull would
otherwise add that wait to every series.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol

import msgspec

from oxidip.nodes import RemoteNode
from oxidip.pull.progress import Display
from oxidip.pull.retrieve import Attempt, Counts, Retrieval, Verdict, start_failed, watch
from oxidip.registry import (
    PullRow,
    PullSeriesRow,
    PullSeriesState,
    Registry,
    RetryPolicy,
)

__all__ = ["LEASE", "Limits", "Polled", "Registrations", "Scheduler", "awaited", "decide"]

log = logging.getLogger("oxidip.pull")

#: Seconds a claimed series stays leased without renewal (renewed every third of it).
LEASE = 15.0
#: Seconds between two claims when nothing can be claimed (backoff, another pull's lease).
_IDLE = 0.2
#: Seconds between two reads of a series' registered count while waiting for it to catch up
#: with a retrieval: the first, doubled after each read up to the last (the registrations of
#: a retrieval that just ended land within milliseconds).
_FIRST_READ = 0.001
_LAST_READ = 0.1
#: Seconds a count must stay the same to be taken as final, when neither the count awaited
#: nor the receiver's being quiet can be known.
_STEADY = 1.0


class Registrations(Protocol):
    """The receiver whose registrations a pull waits for, as far as this process sees it."""

    def jobs_done(self) -> int:
        """A number that grows whenever the registry may have registered more."""

    def wait_done(self, seen: int, timeout: float) -> None:
        """Returns once ``jobs_done`` is past ``seen``, or after ``timeout`` seconds."""

    def quiet(self) -> bool:
        """Whether nothing more can be registered unless a PACS sends again (no association
        open, every instance stored registered); False when unknown."""


class Polled:
    """A receiver in another process (``oxidip serve``): nothing to wait on but the clock."""

    def jobs_done(self) -> int:
        return 0

    def wait_done(self, seen: int, timeout: float) -> None:
        time.sleep(timeout)

    def quiet(self) -> bool:
        return False


class Limits(msgspec.Struct, frozen=True):
    concurrency: int
    #: Seconds between two retrievals of one thread.
    pause: float
    #: Seconds without progress before a retrieval is cancelled.
    stall: float
    #: Attempts after the first for a transient failure.
    retries: int
    #: Seconds the PACS has to end a cancelled retrieval before A-ABORT.
    cancel_grace: float
    #: Backoff between attempts.
    retry: RetryPolicy
    #: Longest wait for registrations to catch up once a retrieval ended.
    settle: float


def awaited(expected: int | None, attempt: Attempt) -> int | None:
    """The registered count an attempt's end awaits: the expected count when the PACS said
    it sent everything, else what the final response says was sent (completed and warning
    sub-operations, PS3.4 C.4.2.1.5); None when there was no final response (aborted, lost,
    never started) or no count: then nothing says how many are on their way."""
    counts = attempt.counts
    sent = None if counts.completed is None else counts.completed + (counts.warning or 0)
    if attempt.verdict is Verdict.DONE:
        return expected if expected is not None else sent
    return sent if attempt.final else None


def decide(
    row: PullSeriesRow, attempt: Attempt, received: int, *, retries_left: bool
) -> tuple[PullSeriesState, str]:
    """A series' state after an attempt (PENDING: try again) and why, in words."""
    expected = row.expected
    if expected is not None and received >= expected:
        return PullSeriesState.COMPLETE, ""
    shortfall = f"{received} of {expected} instances registered" if expected is not None else ""
    if attempt.verdict is Verdict.DONE:
        if expected is None:
            return (
                PullSeriesState.UNKNOWN,
                (
                    f"{received} instances registered; the PACS gave no"
                    " NumberOfSeriesRelatedInstances to compare with"
                ),
            )
        if retries_left:
            return PullSeriesState.PENDING, f"the PACS said done but {shortfall}"
        return PullSeriesState.INCOMPLETE, f"the PACS said done but {shortfall}"
    words = attempt.words + (f"; {shortfall}" if shortfall else "")
    if attempt.verdict is Verdict.TRANSIENT and retries_left:
        return PullSeriesState.PENDING, words
    if received > 0:
        return PullSeriesState.INCOMPLETE, words
    return PullSeriesState.FAILED, words


class Scheduler:
    """Retrieves every series of one pull that is not complete; ``run`` returns when every
    series reached an end state, or ``stop`` is set (running retrievals cancelled, their
    series pending again)."""

    def __init__(
        self,
        *,
        registry: Registry,
        pull: PullRow,
        pacs: RemoteNode,
        owner: str,
        start: Callable[[PullSeriesRow], Retrieval],
        method: str,
        destination: str,
        limits: Limits,
        display: Display,
        stop: threading.Event,
        registrations: Registrations,
    ) -> None:
        self._registry = registry
        self._pull = pull
        self._pacs = pacs
        self._owner = owner
        self._start = start
        self._method = method
        self._destination = destination
        self._limits = limits
        self._display = display
        self._stop = stop
        self._registrations = registrations
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._finished = threading.Event()
        #: Series waiting for their registrations (``_settle``), by thread.
        self._settling: list[threading.Thread] = []
        #: Set when a series ends: a retrieval thread waiting for a claimable series looks
        #: again at once (the pull may be over).
        self._series_ended = threading.Event()

    def run(self) -> None:
        workers = [
            threading.Thread(target=self._work, name=f"oxidip-pull-{i}", daemon=True)
            for i in range(self._limits.concurrency)
        ]
        renewer = threading.Thread(target=self._renew, name="oxidip-pull-lease", daemon=True)
        renewer.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        with self._lock:
            settling = list(self._settling)
        for thread in settling:  # none left once the workers ended, but when stopped
            thread.join()
        self._finished.set()
        renewer.join()

    def _renew(self) -> None:
        while not self._finished.wait(LEASE / 3):
            with self._lock:
                held = sorted(self._held)
            kept = self._registry.renew_pull_leases(
                self._pull.id, self._owner, held, LEASE, time.time()
            )
            for uid in set(held) - kept:
                log.warning("series lease lost", extra={"series_instance_uid": uid})

    def _remaining(self) -> bool:
        """Whether any series of the pull is still pending or running (here or elsewhere)."""
        return any(
            row.state in (PullSeriesState.PENDING, PullSeriesState.RUNNING)
            for row in self._registry.pull_series(self._pull.id)
        )

    def _work(self) -> None:
        while not self._stop.is_set():
            row = self._registry.claim_pull_series(self._pull.id, self._owner, LEASE, time.time())
            if row is None:
                if not self._remaining():
                    return
                # A series settling elsewhere ends soon: its end wakes this wait.
                self._series_ended.wait(_IDLE)
                self._series_ended.clear()
                continue
            with self._lock:
                self._held.add(row.series_instance_uid)
            try:
                self._retrieve(row)
            except BaseException:
                self._release(row.series_instance_uid)
                raise
            self._stop.wait(self._limits.pause)

    def _release(self, uid: str) -> None:
        """The series ended (or its thread failed): its lease is no longer renewed."""
        with self._lock:
            self._held.discard(uid)
        self._series_ended.set()

    def _registered(self, uid: str) -> int:
        found = self._registry.received([uid], self._pacs.aet).get(uid)
        return found.count if found else 0

    def _retrieve(self, row: PullSeriesRow) -> None:
        uid = row.series_instance_uid
        before = self._registered(uid)
        if row.expected is not None and before >= row.expected:
            # Registered before (an earlier pull, a kill after the last instance): done.
            self._end(row, PullSeriesState.COMPLETE, "", Counts(), before)
            return
        self._display.started(row)
        try:
            retrieval = self._start(row)
        except OSError as error:
            attempt = start_failed(error, self._method, self._pacs)
        else:
            attempt = watch(
                retrieval,
                method=self._method,
                pacs=self._pacs,
                destination=self._destination,
                stall=self._limits.stall,
                cancel_grace=self._limits.cancel_grace,
                registered=lambda: self._registered(uid),
                on_progress=lambda counts, registered: self._display.progress(
                    uid, counts, registered
                ),
                stop=self._stop,
            )
        if attempt.verdict is Verdict.STOPPED:
            received = self._registered(uid)
            self._end(row, PullSeriesState.PENDING, attempt.words, attempt.counts, received)
            return
        settling = threading.Thread(
            target=self._conclude,
            args=(row, attempt),
            name=f"oxidip-pull-settle-{uid[-12:]}",
            daemon=True,
        )
        with self._lock:
            self._settling = [t for t in self._settling if t.is_alive()]
            self._settling.append(settling)
        settling.start()

    def _conclude(self, row: PullSeriesRow, attempt: Attempt) -> None:
        """Once registrations caught up with an attempt: the series' state, and a retry's
        time when it gets another attempt. A failure (the registry's) is logged and the series
        let go: its lease lapses and a later claim retrieves it again."""
        try:
            self._decide(row, attempt)
        except Exception:
            log.exception(
                "series not ended", extra={"series_instance_uid": row.series_instance_uid}
            )
            self._release(row.series_instance_uid)

    def _decide(self, row: PullSeriesRow, attempt: Attempt) -> None:
        uid = row.series_instance_uid
        received = self._settle(uid, awaited(row.expected, attempt))
        retries_left = row.attempts <= self._limits.retries
        state, words = decide(row, attempt, received, retries_left=retries_left)
        next_at = None
        if state is PullSeriesState.PENDING:
            delay = self._limits.retry.delay(row.attempts, self._rng)
            next_at = time.time() + delay
            words += (
                f" (attempt {row.attempts} of {self._limits.retries + 1}; next in {delay:.1f} s)"
            )
        self._end(row, state, words, attempt.counts, received, next_at)

    def _settle(self, uid: str, target: int | None) -> int:
        """The registered count once registrations caught up with the retrieval: ``target``
        reached; else (None: unknown) the receiver quiet, or the count the same for
        ``_STEADY`` seconds when that cannot be known. Woken by each registration (an
        in-process receiver), reading at growing intervals otherwise; at most ``settle``
        seconds."""
        registrations = self._registrations
        start = time.monotonic()
        deadline = start + self._limits.settle
        pause = _FIRST_READ
        steady: tuple[int, float] | None = None
        while True:
            seen = registrations.jobs_done()
            quiet = target is None and registrations.quiet()  # before the count: it then holds
            count = self._registered(uid)
            now = time.monotonic()
            if steady is None or steady[0] != count:
                steady = (count, now)
            if target is not None and count >= target:
                return count
            if quiet or (target is None and now - steady[1] >= _STEADY) or now >= deadline:
                return count
            if self._stop.is_set():  # stopping: what is registered now decides
                return count
            registrations.wait_done(seen, min(pause, deadline - now))
            pause = min(pause * 2, _LAST_READ)

    def _end(
        self,
        row: PullSeriesRow,
        state: PullSeriesState,
        words: str,
        counts: Counts,
        received: int,
        next_attempt_at: float | None = None,
    ) -> None:
        self._registry.end_pull_series(
            self._pull.id,
            row.series_instance_uid,
            self._owner,
            state,
            error=words,
            counts=(counts.completed, counts.failed, counts.warning),
            received=received,
            next_attempt_at=next_attempt_at,
            now=time.time(),
        )
        self._display.ended(row.series_instance_uid, state.value, received, words)
        self._release(row.series_instance_uid)
