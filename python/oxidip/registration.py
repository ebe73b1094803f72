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
from oxidip.workers import Run, WorkQueue

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


class _Call:
    """Any other registry call, and what to do with its result."""

    def __init__(self, work: Callable[[], Any], then: Callable[[Any], None], what: str) -> None:
        self.work = work
        self.then = then
        self.what = what


_Job = _Batch | _Call


def _instances(job: _Job) -> int:
    """A job's weight in the backlog: its instances (a call has none)."""
    return len(job.events) if isinstance(job, _Batch) else 0


def _joins(run: list[_Job], following: _Job) -> bool:
    """Registrations waiting in a row are made in one transaction, up to ``MERGE_LIMIT``
    instances."""
    if not isinstance(following, _Batch) or not isinstance(run[0], _Batch):
        return False
    return sum(map(_instances, run)) + len(following.events) <= MERGE_LIMIT


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

        #: The jobs, in order; its pending weight is the backlog: instances handed over and
        #: not registered (nor finally failed) yet. A job leaves it after what follows it (a
        #: slow hook holds the backlog up, and so the senders).
        self.jobs: WorkQueue[_Job] = WorkQueue(
            "registration",
            self._run,
            max_pending=backlog,
            weight=_instances,
            joins=_joins,
            retry=unreachable,
            backoff=(BACKOFF_FIRST, BACKOFF_MAX),
        )
        self._lock = threading.Lock()
        #: With ``answer_within``: batches whose senders may still wait, oldest first.
        self._waiting: collections.deque[_Batch] = collections.deque()
        self._stopping = False  # the process stops: no more waiting during an outage
        self._outage_since: float | None = None
        self._failed_attempts = 0
        self._full_logged = False
        self._late_logged = False
        #: Jobs done (succeeded or finally failed, what follows them included), for waiters
        #: on the registry catching up (``wait_done``: ``oxidip pull`` ending a series).
        self._jobs_done = 0
        self._job_done = threading.Condition(self._lock)

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
        with self._lock:
            # Past the bound (``wait_for_room`` pushes back upstream), but not while stopping.
            queued = self.jobs.put(batch, timeout=0) if self._stopping else self.jobs.add(batch)
            if not queued:
                batch.answered = True
            elif self.answer_within is not None and batch.seqs:
                self._waiting.append(batch)
        if not queued and self.answer_within is not None:
            self.receiver.acknowledge(batch.seqs, registered=False)

    def call(self, work: Callable[[], Any], then: Callable[[Any], None], what: str) -> None:
        """Queues a registry call ``work`` (after everything queued before it) and ``then``,
        called with its result once it succeeded; never blocks. ``what`` names it in logs."""
        self.jobs.add(_Call(work, then, what))

    def wait_for_room(self, timeout: float) -> bool:
        """True when the backlog is under its bound, waiting up to ``timeout`` seconds for it
        to be; False: take no more events for now (back-pressure)."""
        if self.jobs.has_room():
            return True
        with self._lock:
            log_it = not self._full_logged
            self._full_logged = True
        if log_it:
            log.warning(
                "registration backlog full",
                extra={
                    "backlog": self.backlog,
                    "limit": self.limit,
                    "meanwhile": "no events are taken (senders wait) until it drains",
                },
            )
        return self.jobs.wait_for_room(timeout)

    def wait_caught_up(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds for every queued job to be done, unless the
        database is unreachable. The caller takes its next events after it: those that
        arrived meanwhile come as one batch, registered in one transaction, as when
        registration ran on the event thread itself; handed over as they come, they made
        transactions of ~110 instances where that made ~770 (small-16, SQLite), and each
        transaction rewrites the index pages it touches."""
        if not self.outage:
            self.jobs.drain(timeout)

    def answer_overdue(self) -> None:
        """Answers (as not registered: A700) the senders that waited ``answer_within`` seconds
        for their instances' registration, and all that wait when the process stops during an
        outage. Called regularly from the event loop."""
        if self.answer_within is None:
            return
        now = self._clock()
        overdue: list[_Batch] = []
        with self._lock:
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
        with self._lock:
            self._stopping = True
        self.answer_overdue()

    @property
    def backlog(self) -> int:
        """Instances waiting for registration."""
        return self.jobs.pending

    @property
    def outage(self) -> bool:
        """True while the database is unreachable (the last attempt failed so)."""
        return self._outage_since is not None

    @property
    def finished(self) -> bool:
        """The worker thread has ended (after ``close``)."""
        return self.jobs.finished

    def close(self, timeout: float) -> int:
        """Lets the worker finish what is queued for at most ``timeout`` seconds, then gives
        up on the rest; returns how many instances are left unregistered (they stay in the
        journal for the next start), which is logged. Senders still waiting are answered."""
        deadline = self._clock() + max(timeout, 0.0)
        jobs = self.jobs
        jobs.close()
        jobs.drain(timeout)
        # Given up, or shed while stopping.
        left = jobs.abandon() + jobs.running + jobs.refused
        with self._lock:
            waiting = [batch for batch in self._waiting if not batch.answered]
            for batch in waiting:
                batch.answered = True
            self._waiting.clear()
        for batch in waiting:
            self.receiver.acknowledge(batch.seqs, registered=False)
        # Not waiting out a call stuck on an unreachable server: the thread is a daemon.
        jobs.join(max(deadline - self._clock(), 0.05))
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

    def _run(self, run: Run[_Job]) -> None:
        """One job: the next call, or the registrations waiting in a row (``_joins``). An
        unreachable database is raised for the queue to retry the job (``unreachable``)."""
        first = run.items[0]
        try:
            if isinstance(first, _Call):
                result: Any = first.work()
            else:
                batches = [job for job in run.items if isinstance(job, _Batch)]
                result = self._register([event for batch in batches for event in batch.events])
        except Exception as error:
            if unreachable(error):
                self._unreachable(error)
                raise
            self._done(run.items, None, error)
            return
        self._reachable()
        self._done(run.items, result, None)

    @property
    def jobs_done(self) -> int:
        """Jobs done so far: read it before reading the registry, then ``wait_done`` it."""
        with self._lock:
            return self._jobs_done

    def wait_done(self, seen: int, timeout: float) -> int:
        """Waits up to ``timeout`` seconds for a job done after ``seen`` (``jobs_done``);
        returns ``jobs_done``."""
        with self._job_done:
            self._job_done.wait_for(lambda: self._jobs_done != seen, timeout)
            return self._jobs_done

    def _done(self, jobs: list[_Job], result: Any, error: Exception | None) -> None:
        """What follows a job, then its waiters are woken."""
        try:
            self._follow(jobs, result, error)
        finally:
            with self._job_done:
                self._jobs_done += len(jobs)
                self._job_done.notify_all()

    def _follow(self, jobs: list[_Job], result: Any, error: Exception | None) -> None:
        first = jobs[0]
        try:
            if isinstance(first, _Call):
                if error is None:
                    first.then(result)
                else:
                    log.error(
                        "registry call failed",
                        extra={"call": first.what, "error": f"{type(error).__name__}: {error}"},
                        exc_info=error,
                    )
                return
            batches = [job for job in jobs if isinstance(job, _Batch)]
            with self._lock:
                for batch in batches:
                    batch.answered = True
            seqs = [seq for batch in batches for seq in batch.seqs]
            self.receiver.acknowledge(seqs, registered=error is None)
            events = [event for batch in batches for event in batch.events]
            if error is None:
                self._registered(events, result)
            else:
                self._not_registered(events, error)
        except Exception:
            log.exception("after a registry call", extra={"job": type(first).__name__})

    def _unreachable(self, error: Exception) -> None:
        with self._lock:
            first = self._outage_since is None
            if first:
                self._outage_since = self._clock()
                self._late_logged = False
            self._failed_attempts += 1
            attempt = self._failed_attempts
        detail = f"{type(error).__name__}: {error}".strip()
        if first:
            log.warning(
                "registry unreachable",
                extra={
                    "error": detail,
                    "backlog": self.backlog,
                    "backlog_limit": self.limit,
                    "meanwhile": "instances are received, stored and journaled; registration"
                    " is retried in the background",
                },
            )
        else:
            log.debug("registry still unreachable", extra={"attempt": attempt, "error": detail})

    def _reachable(self) -> None:
        with self._lock:
            since = self._outage_since
            if since is None:
                return
            self._outage_since = None
            self._full_logged = False
            attempts, self._failed_attempts = self._failed_attempts, 0
        log.info(
            "registry reachable again",
            extra={
                "outage_seconds": round(self._clock() - since, 3),
                "failed_attempts": attempts,
                "backlog": self.backlog,
            },
        )
