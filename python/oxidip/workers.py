"""One bounded work queue, and the worker threads that serve it.

Everything oxidip does beside the receiver's event loop goes through a ``WorkQueue``: the
registry calls (``oxidip.registration``), the expected-count C-FINDs
(``oxidip.completeness``), the hook calls (``oxidip.hooks``) and the NATS messages
(``oxidip.notify``); the forward queue of routing will be one too. It keeps memory bounded
and pushes back on whoever produces too fast, and it counts what ``/metrics`` shows
(``oxidip.metrics``).

Bound. Either on the work *waiting* (``max_waiting``: not yet taken by a worker, so a hook
call being run leaves room for the next) or on the work *pending* (``max_pending``: waiting
or being done, e.g. C-FINDs queued or running). An item weighs 1 unless ``weight`` says
otherwise (a registration weighs its instances; a registry call nothing): bounds and
counters are in weight. There is room while the load is under the bound.

Producers choose what happens when there is no room:

- ``put(item, timeout)`` waits for room (``timeout`` None: for as long as it takes), and
  gives up after ``timeout`` seconds (0: at once): the item is *refused* and counted;
- ``put_many(items)`` puts several in order, waiting for room whenever there is none;
- ``add(item)`` takes it past the bound, for a producer that must neither wait nor lose
  anything (the receiver's event loop): it pushes back upstream instead, taking no more
  input while ``wait_for_room`` says no.

Every wait for room is counted (``waits``): a queue that often makes its producers wait is
the bottleneck.

Consumers. With ``handle``, up to ``workers`` daemon threads, started as work arrives, take
*runs*: the item at the head and, while ``joins(run, next)`` says so, the items that follow
(several registrations in one transaction); ``handle(run)`` does the work. An exception for
which ``retry(error)`` is true (a database that cannot be reached) keeps the run and calls
``handle`` again after a backoff (``backoff[0]`` seconds, doubled at each failure up to
``backoff[1]``): with one worker, the order is kept through an outage. Any other exception
is logged and the run is over. Without ``handle``, the owner consumes (``take_nowait`` and
``Run.done``; ``wake`` tells it that work arrived): an asyncio task, for NATS.

Closing: ``close`` refuses new work (producers waiting for room give up), ``drain`` waits
until the work is done, ``abandon`` discards what still waits (counted as *dropped*, like
work put after ``close``) and lets the workers end after their current run; ``shutdown``
does the three within a timeout.
"""

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Generic, NamedTuple, TypeVar

__all__ = ["Run", "Shutdown", "WorkQueue"]

log = logging.getLogger("oxidip.workers")

T = TypeVar("T")

#: Seconds ``shutdown`` still gives the workers to end when its timeout is spent.
JOIN_AT_LEAST = 0.1


class Run(Generic[T]):
    """Items a consumer took together; ``done`` once they are done (the worker threads call
    it after ``handle``; a handler may call it earlier, e.g. before telling anyone)."""

    __slots__ = ("_finished", "_queue", "items", "weight")

    def __init__(self, queue: "WorkQueue[T]", items: list[T], weight: int) -> None:
        self._queue = queue
        self.items = items
        self.weight = weight
        self._finished = False

    def done(self) -> None:
        """The items no longer count as pending. Idempotent."""
        self._queue._finish(self)


class Shutdown(NamedTuple):
    """What ``WorkQueue.shutdown`` left undone, in weight."""

    #: Discarded while waiting.
    dropped: int
    #: Still being done by a worker that did not finish in time (it ends on its own).
    running: int


class WorkQueue(Generic[T]):
    """A bounded queue of work, served in order (see the module docstring). ``name`` names
    its threads (``oxidip-{name}``, numbered when there are several) and its metrics.
    Thread-safe."""

    def __init__(
        self,
        name: str,
        handle: Callable[[Run[T]], None] | None = None,
        *,
        max_waiting: int | None = None,
        max_pending: int | None = None,
        workers: int = 1,
        weight: Callable[[T], int] | None = None,
        joins: Callable[[list[T], T], bool] | None = None,
        retry: Callable[[Exception], bool] | None = None,
        backoff: tuple[float, float] = (0.1, 5.0),
        wake: Callable[[], None] | None = None,
    ) -> None:
        if max_waiting is not None and max_pending is not None:
            raise ValueError("bound the waiting or the pending work, not both")
        bound = max_waiting if max_waiting is not None else max_pending
        if bound is not None and bound < 1:
            raise ValueError(f"a work queue's bound must be at least 1, not {bound}")
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.name = name
        #: The bound, and whether it holds the pending work (else the waiting work).
        self.bound = bound
        self.bounds_pending = max_pending is not None
        self.workers = workers
        self._handle = handle
        self._weight = weight
        self._joins = joins
        self._retry = retry
        self._backoff = backoff
        self._wake = wake

        self._lock = threading.Lock()
        self._work_arrived = threading.Condition(self._lock)  # workers wait on it
        self._work_left = threading.Condition(self._lock)  # producers and drain wait on it
        self._queue: collections.deque[tuple[T, int]] = collections.deque()
        self._waiting = 0  # weight
        self._running = 0  # weight
        self._running_runs = 0
        self._closed = False
        self._abandoned = threading.Event()  # set under the lock
        self._threads: list[threading.Thread] = []
        #: Counters (weight): the largest waiting load seen, producers that waited for room,
        #: work refused for want of room, work dropped (discarded at abandon, or put after
        #: close).
        self.peak_waiting = 0
        self.waits = 0
        self.refused = 0
        self.dropped = 0

    # --- producers -------------------------------------------------------------------------

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Queues ``item``, waiting up to ``timeout`` seconds for room (None: as long as it
        takes). False when it was not queued: refused (no room in time) or dropped (closed)."""
        weight = self._weight(item) if self._weight is not None else 1
        with self._lock:
            if not self._closed and not self._has_room():
                if timeout is not None and timeout <= 0:
                    self.refused += weight
                    return False
                self.waits += 1
                room = self._work_left.wait_for(lambda: self._closed or self._has_room(), timeout)
                if not room:
                    self.refused += weight
                    return False
            return self._append(item, weight)

    def put_many(self, items: Iterable[T], on_full: Callable[[], None] | None = None) -> int:
        """Queues ``items`` in order, waiting for room whenever there is none (``on_full`` is
        called, locked, before each wait). Returns how many were queued: after ``close`` the
        others are dropped."""
        queued = 0
        with self._lock:
            for item in items:
                weight = self._weight(item) if self._weight is not None else 1
                if not self._closed and not self._has_room():
                    self.waits += 1
                    if on_full is not None:
                        on_full()
                    self._work_left.wait_for(lambda: self._closed or self._has_room())
                queued += self._append(item, weight)
        return queued

    def add(self, item: T) -> bool:
        """Queues ``item`` whatever the room (see the module docstring); False only after
        ``close`` (dropped)."""
        weight = self._weight(item) if self._weight is not None else 1
        with self._lock:
            return self._append(item, weight)

    def wait_for_room(self, timeout: float) -> bool:
        """Whether there is room, waiting up to ``timeout`` seconds for some."""
        with self._lock:
            return self._work_left.wait_for(self._has_room, timeout)

    def has_room(self) -> bool:
        with self._lock:
            return self._has_room()

    # --- state -----------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Work queued and not taken yet (weight)."""
        return self._waiting

    @property
    def running(self) -> int:
        """Work taken and not done yet (weight)."""
        return self._running

    @property
    def pending(self) -> int:
        """Work queued or being done (weight)."""
        with self._lock:
            return self._waiting + self._running

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def finished(self) -> bool:
        """Every worker thread has ended (true when none was ever needed)."""
        return not any(thread.is_alive() for thread in self._threads)

    # --- consumers -------------------------------------------------------------------------

    def take_nowait(self) -> Run[T] | None:
        """The next run, or None when nothing waits (for a consumer of its own)."""
        with self._lock:
            return self._take_run() if self._queue else None

    # --- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Refuses new work from now on; producers waiting for room give up. Idempotent."""
        with self._lock:
            self._closed = True
            self._work_arrived.notify_all()
            self._work_left.notify_all()

    def drain(self, timeout: float) -> bool:
        """Whether all the work is done, waiting up to ``timeout`` seconds for it."""
        with self._lock:
            return self._work_left.wait_for(
                lambda: not self._queue and not self._running_runs, max(timeout, 0.0)
            )

    def abandon(self) -> int:
        """Discards the work still waiting and lets the workers end after their current run
        (without waiting for them); returns the weight discarded."""
        with self._lock:
            self._closed = True
            self._abandoned.set()
            discarded = self._waiting
            self.dropped += discarded
            self._queue.clear()
            self._waiting = 0
            self._work_arrived.notify_all()
            self._work_left.notify_all()
        return discarded

    def join(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds in all for the worker threads to end."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(deadline - time.monotonic(), 0.0))

    def shutdown(self, timeout: float) -> Shutdown:
        """``close``, ``drain`` for at most ``timeout`` seconds, ``abandon``, then waits for
        the workers for what is left of the timeout (at least ``JOIN_AT_LEAST``: a worker
        stuck in its work is a daemon and is not waited out)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        self.close()
        self.drain(deadline - time.monotonic())
        dropped = self.abandon()
        running = self._running
        self.join(max(deadline - time.monotonic(), JOIN_AT_LEAST))
        return Shutdown(dropped, running)

    # --- internals (the lock held) ---------------------------------------------------------

    def _has_room(self) -> bool:
        if self.bound is None:
            return True
        load = self._waiting + self._running if self.bounds_pending else self._waiting
        return load < self.bound

    def _append(self, item: T, weight: int) -> bool:
        if self._closed:
            self.dropped += weight
            return False
        if not self._queue and self._wake is not None:
            self._wake()
        self._queue.append((item, weight))
        self._waiting += weight
        self.peak_waiting = max(self.peak_waiting, self._waiting)
        self._work_arrived.notify()
        if self._handle is not None and len(self._threads) < self.workers:
            self._start_worker()
        return True

    def _start_worker(self) -> None:
        """One more worker when every running one may be busy."""
        if len(self._threads) >= len(self._queue) + self._running_runs:
            return
        number = len(self._threads)
        thread = threading.Thread(
            target=self._serve,
            name=f"oxidip-{self.name}-{number}" if self.workers > 1 else f"oxidip-{self.name}",
            daemon=True,
        )
        self._threads.append(thread)
        thread.start()

    def _take_run(self) -> Run[T]:
        item, weight = self._queue.popleft()
        items = [item]
        joins = self._joins
        while joins is not None and self._queue and joins(items, self._queue[0][0]):
            following, more = self._queue.popleft()
            items.append(following)
            weight += more
        self._waiting -= weight
        self._running += weight
        self._running_runs += 1
        if not self.bounds_pending:
            self._work_left.notify_all()  # room for producers
        return Run(self, items, weight)

    def _finish(self, run: Run[T]) -> None:
        with self._lock:
            if run._finished:
                return
            run._finished = True
            self._running -= run.weight
            self._running_runs -= 1
            self._work_left.notify_all()

    # --- the worker threads ----------------------------------------------------------------

    def _serve(self) -> None:
        handle = self._handle
        assert handle is not None
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._work_arrived.wait()
                if self._abandoned.is_set() or not self._queue:
                    return
                run = self._take_run()
            try:
                self._attempt(handle, run)
            finally:
                run.done()

    def _attempt(self, handle: Callable[[Run[T]], None], run: Run[T]) -> None:
        """Calls ``handle`` until it succeeds, fails for good, or the queue is abandoned
        while it waits to retry."""
        failures = 0
        while True:
            try:
                handle(run)
                return
            except Exception as error:
                if self._retry is None or not self._retry(error):
                    log.exception("work failed", extra={"queue": self.name})
                    return
            failures += 1
            first, most = self._backoff
            delay = min(first * 2 ** (failures - 1), most)
            if self._abandoned.wait(delay):
                return
