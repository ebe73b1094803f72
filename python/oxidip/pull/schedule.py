"""Retrieving a pull's series at the rate the PACS tolerates: ``concurrency`` retrievals at
once (one thread each: they wait on the Rust core with the GIL released), ``pause`` seconds
between two retrievals of a thread, each series claimed from the registry under a lease
(renewed while it runs, so that a second pull of the same series waits, and a pull killed
mid-way gives its series up when the lease expires), each attempt watched
(``oxidip.pull.retrieve.watch``), transient failures retried with backoff up to
``retries`` times, then the series' end state decided from what the registry registered.
"""

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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

__all__ = ["LEASE", "Limits", "Scheduler", "decide"]

log = logging.getLogger("oxidip.pull")

#: Seconds a claimed series stays leased without renewal (renewed every third of it).
LEASE = 15.0
#: Seconds between two claims when nothing can be claimed (backoff, another pull's lease).
_IDLE = 0.2


@dataclass(frozen=True)
class Limits:
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
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._finished = threading.Event()

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
                self._stop.wait(_IDLE)
                continue
            with self._lock:
                self._held.add(row.series_instance_uid)
            try:
                self._retrieve(row)
            finally:
                with self._lock:
                    self._held.discard(row.series_instance_uid)
            self._stop.wait(self._limits.pause)

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
        received = self._settle(uid, row.expected, attempt.counts)
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

    def _settle(self, uid: str, expected: int | None, counts: Counts) -> int:
        """The registered count once registrations caught up with the retrieval: waits (up
        to ``settle`` seconds) for the expected count (or the sub-operations completed), or
        for the count to stop growing for a second when neither is known."""
        target = expected if expected is not None else counts.completed
        deadline = time.monotonic() + self._limits.settle
        count = self._registered(uid)
        steady_since = time.monotonic()
        while time.monotonic() < deadline:
            if target is not None and count >= target:
                break
            if target is None and time.monotonic() - steady_since >= 1.0:
                break
            if (
                target is not None
                and not counts.completed
                and time.monotonic() - steady_since >= 1.0
            ):
                break  # nothing was sent: nothing to wait for
            time.sleep(0.1)
            now_count = self._registered(uid)
            if now_count != count:
                count, steady_since = now_count, time.monotonic()
        return count

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
