"""Registration off the event loop, and through database outages.

Every registry call of the pipeline (registering a batch of stored instances, ending an
association, storing an expected count, finalizing idle series) is a job for one worker
thread, run in the order submitted, so the thread that takes the receiver's events never
waits for the database. What follows a call (acknowledgements, hooks, notifications, series
states) runs on the same thread once the call has succeeded.

A call that fails because the database cannot be reached (``oxidip.registry.unreachable``:
connection refused or lost, pool timeout, server shutting down, SQLite busy...) stays at the
head of the queue and is retried with exponential backoff (``BACKOFF_FIRST`` doubling up to
``BACKOFF_MAX`` seconds); the outage is logged once when it begins and once when it ends. Any
other failure is final: a registration's instances are acknowledged as not registered (they
stay in the journal, and the next start registers them), another call is logged and dropped.

Meanwhile the receiver keeps storing and answering (the journal holds the acknowledged
instances) and the unregistered instances wait here, up to ``backlog`` of them; past that
``wait_for_room`` says no, the caller stops taking events, the receiver's bounded event queue
fills and TCP pushes back on the senders. With ``OXIDIP_ACK=registered`` a sender waits for
its instance's registration: ``answer_overdue`` answers those waiting longer than
``answer_within`` seconds with a failure (A700; the instance is still registered once the
database is back), and all of them at once when the process stops during an outage.
"""

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from oxidip._boundary import InstanceStored
from oxidip.registry import unreachable

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "MERGE_LIMIT", "Acknowledger", "Registrar"]

log = logging.getLogger("oxidip.registration")

#: Seconds before the first retry of a call that found the database unreachable; doubled at
#: every failed retry, up to ``BACKOFF_MAX``, which bounds how long registration may lag
#: behind the database's return.
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
#: Instances registered in one transaction at most when several batches wait (catching up
#: after an outage): fewer commits, in a transaction of bounded size.
MERGE_LIMIT = 5000

R = TypeVar("R")


class Acknowledger(Protocol):
    """The receiver's side of registration (``oxidip.receiver.Receiver.acknowledge``)."""

    def acknowledge(self, seqs: list[int], *, registered: bool) -> None: ...


class _Batch:
    """Instances handed over together, and whether their senders have had their answer."""

    __slots__ = ("answered", "deadline", "events", "seqs")

    def __init__(self, events: list[InstanceStored], deadline: float) -> None:
        self.events = events
        self.seqs = [event.journal_seq for event in events if event.journal_seq is not None]
        self.deadline = deadline
        self.answered = False


class _Registration:
    """Batches registered in one transaction."""

    def __init__(self, batches: list[_Batch]) -> None:
        self.batches = batches
        self.events = [event for batch in batches for event in batch.events]
        self.seqs = [seq for batch in batches for seq in batch.seqs]

    @property
    def instances(self) -> int:
        return len(self.events)


class _Call:
    """Any other registry call, and what to do with its result."""

    instances = 0

    def __init__(self, work: Callable[[], Any], then: Callable[[Any], None], what: str) -> None:
        self.work = work
        self.then = then
        self.what = what


class Registrar(Generic[R]):
    """Runs registrations and other registry calls in order on its own thread (see the module
    docstring). ``register(events)`` does the registration (its exceptions decide: retried
    while ``unreachable``, final otherwise); ``registered(events, result)`` follows a success,
    after the receiver was told; ``not_registered(events, error)`` follows a final failure.
    ``answer_within``: seconds a sender waits for its instance's registration
    (``OXIDIP_ACK=registered``), None when senders do not wait."""

    def __init__(
        self,
        receiver: Acknowledger,
        register: Callable[[list[InstanceStored]], R],
        registered: Callable[[list[InstanceStored], R], None],
        not_registered: Callable[[list[InstanceStored], Exception], None],
        *,
        backlog: int,
        answer_within: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if backlog < 1:
            raise ValueError(f"backlog must be at least 1, not {backlog}")
        self.receiver = receiver
        self.limit = backlog
        self.answer_within = answer_within
        self._register = register
        self._registered = registered
        self._not_registered = not_registered
        self._clock = clock

        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[_Batch | _Call] = collections.deque()
        self._current: _Registration | _Call | None = None
        #: Instances handed over and not registered (nor finally failed) yet.
        self._backlog = 0
        #: With ``answer_within``: batches whose senders may still wait, oldest first.
        self._waiting: collections.deque[_Batch] = collections.deque()
        self._stopping = False  # the process stops: no more waiting during an outage
        self._closing = False  # close() called: the worker ends once the queue is empty
        self._abandoned = False  # close() gave up: the worker ends after its current call
        self._outage_since: float | None = None
        self._failed_attempts = 0
        self._full_logged = False
        self._late_logged = False
        self._shed = 0
        self._thread = threading.Thread(target=self._work, name="oxidip-registration", daemon=True)
        self._thread.start()

    # --- the event loop's side ---------------------------------------------------------------

    def register(self, events: list[InstanceStored]) -> None:
        """Queues ``events`` for registration; never blocks. While the process stops with a
        full backlog, they are left to the journal instead (and their senders, if waiting,
        answered now)."""
        if not events:
            return
        now = self._clock()
        deadline = now + self.answer_within if self.answer_within is not None else now
        batch = _Batch(events, deadline)
        with self._cond:
            if self._stopping and self._backlog >= self.limit:
                self._shed += len(events)
                batch.answered = True
                shed = True
            else:
                shed = False
                self._queue.append(batch)
                self._backlog += len(events)
                if self.answer_within is not None and batch.seqs:
                    self._waiting.append(batch)
                self._cond.notify_all()
        if shed and self.answer_within is not None:
            self.receiver.acknowledge(batch.seqs, registered=False)

    def call(self, work: Callable[[], Any], then: Callable[[Any], None], what: str) -> None:
        """Queues a registry call ``work`` (after everything queued before it) and ``then``,
        called with its result once it succeeded; never blocks. ``what`` names it in logs."""
        with self._cond:
            self._queue.append(_Call(work, then, what))
            self._cond.notify_all()

    def wait_for_room(self, timeout: float) -> bool:
        """True when the backlog is under its bound, waiting up to ``timeout`` seconds for it
        to be; False: take no more events for now (back-pressure)."""
        with self._cond:
            if self._backlog < self.limit:
                return True
            if not self._full_logged:
                self._full_logged = True
                log.warning(
                    "registration backlog full",
                    extra={
                        "backlog": self._backlog,
                        "limit": self.limit,
                        "meanwhile": "no events are taken (senders wait) until it drains",
                    },
                )
            return self._cond.wait_for(lambda: self._backlog < self.limit, timeout)

    def answer_overdue(self) -> None:
        """Answers (as not registered: A700) the senders that waited ``answer_within`` seconds
        for their instances' registration, and all that wait when the process stops during an
        outage. Called regularly from the event loop."""
        if self.answer_within is None:
            return
        now = self._clock()
        overdue: list[_Batch] = []
        with self._cond:
            all_now = self._stopping and self._outage_since is not None
            while self._waiting:
                batch = self._waiting[0]
                if not batch.answered and not all_now and batch.deadline > now:
                    break
                self._waiting.popleft()
                if not batch.answered:
                    batch.answered = True
                    overdue.append(batch)
            log_it = bool(overdue) and not self._late_logged
            self._late_logged |= log_it
        for batch in overdue:
            self.receiver.acknowledge(batch.seqs, registered=False)
        if log_it:
            log.warning(
                "registration late",
                extra={
                    "instances": sum(len(b.seqs) for b in overdue),
                    "answered": "A700",
                    "meanwhile": "stored and journaled; registered when the database answers",
                },
            )

    def stopping(self) -> None:
        """The process is stopping: during an outage, senders waiting for a registration get
        their answer now, and a full backlog takes nothing more (left to the journal)."""
        with self._cond:
            self._stopping = True
        self.answer_overdue()

    @property
    def backlog(self) -> int:
        """Instances waiting for registration."""
        return self._backlog

    @property
    def outage(self) -> bool:
        """True while the database is unreachable (the last attempt failed so)."""
        return self._outage_since is not None

    @property
    def finished(self) -> bool:
        """The worker thread has ended (after ``close``)."""
        return not self._thread.is_alive()

    def close(self, timeout: float) -> int:
        """Lets the worker finish what is queued for at most ``timeout`` seconds, then gives
        up on the rest; returns how many instances are left unregistered (they stay in the
        journal for the next start), which is logged. Senders still waiting are answered."""
        deadline = self._clock() + max(timeout, 0.0)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: not self._queue and self._current is None, max(timeout, 0.0)
            )
            left = self._backlog + self._shed
            self._abandoned = True
            self._cond.notify_all()
            waiting = [batch for batch in self._waiting if not batch.answered]
            for batch in waiting:
                batch.answered = True
            self._waiting.clear()
        for batch in waiting:
            self.receiver.acknowledge(batch.seqs, registered=False)
        # Not waiting out a call stuck on an unreachable server: the thread is a daemon.
        self._thread.join(max(deadline - self._clock(), 0.05))
        if left:
            log.warning(
                "stopping with instances not registered",
                extra={
                    "instances": left,
                    "database_unreachable": self.outage,
                    "kept": "in the journal: registered at the next start, or by a process"
                    " that adopts the journal",
                },
            )
        return left

    # --- the worker --------------------------------------------------------------------------

    def _next(self) -> _Registration | _Call:
        """The next job (``_cond`` held, queue not empty): the next call, or the registrations
        waiting in a row, merged up to ``MERGE_LIMIT`` instances."""
        job = self._queue.popleft()
        if isinstance(job, _Call):
            return job
        batches = [job]
        size = len(job.events)
        while self._queue:
            following = self._queue[0]
            if not isinstance(following, _Batch) or size + len(following.events) > MERGE_LIMIT:
                break
            self._queue.popleft()
            batches.append(following)
            size += len(following.events)
        return _Registration(batches)

    def _work(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                if self._abandoned:
                    return
                if self._current is None:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:
                        return
                    self._current = self._next()
                job = self._current
            try:
                if isinstance(job, _Registration):
                    result: Any = self._register(job.events)
                else:
                    result = job.work()
            except Exception as error:  # noqa: BLE001 - every failure is judged, none lost
                if not unreachable(error):
                    self._done(job, None, error)
                    attempt = 0
                    continue
                attempt += 1
                self._unreachable(error, attempt)
                delay = min(BACKOFF_FIRST * 2 ** (attempt - 1), BACKOFF_MAX)
                with self._cond:
                    if self._cond.wait_for(lambda: self._abandoned, delay):
                        return
                continue
            attempt = 0
            self._reachable()
            self._done(job, result, None)

    def _done(self, job: _Registration | _Call, result: Any, error: Exception | None) -> None:
        """What follows a job, then the job leaves the backlog (after its hooks and
        notifications: a slow hook holds the backlog up, and so the senders)."""
        try:
            if isinstance(job, _Call):
                if error is None:
                    job.then(result)
                else:
                    log.error(
                        "registry call failed",
                        extra={"call": job.what, "error": f"{type(error).__name__}: {error}"},
                        exc_info=error,
                    )
            else:
                with self._cond:
                    for batch in job.batches:
                        batch.answered = True
                self.receiver.acknowledge(job.seqs, registered=error is None)
                if error is None:
                    self._registered(job.events, result)
                else:
                    self._not_registered(job.events, error)
        except Exception:
            log.exception("after a registry call", extra={"job": type(job).__name__})
        finally:
            with self._cond:
                self._current = None
                self._backlog -= job.instances
                self._cond.notify_all()

    def _unreachable(self, error: Exception, attempt: int) -> None:
        with self._cond:
            first = self._outage_since is None
            if first:
                self._outage_since = self._clock()
                self._late_logged = False
            self._failed_attempts += 1
            backlog = self._backlog
        detail = f"{type(error).__name__}: {error}".strip()
        if first:
            log.warning(
                "registry unreachable",
                extra={
                    "error": detail,
                    "backlog": backlog,
                    "backlog_limit": self.limit,
                    "meanwhile": "instances are received, stored and journaled; registration"
                    " is retried in the background",
                },
            )
        else:
            log.debug("registry still unreachable", extra={"attempt": attempt, "error": detail})

    def _reachable(self) -> None:
        with self._cond:
            since = self._outage_since
            if since is None:
                return
            self._outage_since = None
            self._full_logged = False
            attempts, self._failed_attempts = self._failed_attempts, 0
            backlog = self._backlog
        log.info(
            "registry reachable again",
            extra={
                "outage_seconds": round(self._clock() - since, 3),
                "failed_attempts": attempts,
                "backlog": backlog,
            },
        )
