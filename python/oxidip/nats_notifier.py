"""The NATS notifier (``OXIDIP_NATS_ADDRESS``): ``oxidip.notify``'s messages published by
nats-py on an asyncio loop of its own (``oxidip.notify``'s docstring says how it behaves).
Apart from ``oxidip.notify`` so that a process without NATS imports no asyncio."""

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from oxidip.notify import (
    Complete,
    Error,
    Finalized,
    Message,
    NotifierError,
    Progress,
    ReportedJob,
    ReportedSeries,
    _forward_message,
    _series_message,
    check_root_subject,
    encode_message,
    forward_subject,
    subject_of,
)
from oxidip.workers import WorkQueue

__all__ = ["NatsNotifier"]

log = logging.getLogger("oxidip.notify")

#: Seconds between two warnings about the same kind of NATS trouble.
_WARNING_INTERVAL = 10.0


class _Outgoing(NamedTuple):
    subject: str
    payload: bytes
    kind: str


class _Held(NamedTuple):
    """The latest progress of a series held back by the rate limit."""

    series: ReportedSeries
    at: datetime


class NatsNotifier:
    """Publishes to the NATS server(s) at ``address``. The constructor waits up to
    ``connect_timeout`` seconds for the connection; without one it logs a warning and keeps
    trying in the background (see the module docstring).

    Thread-safe. The NATS client (nats-py, asyncio) runs its own event loop in a daemon
    thread; the methods hand encoded messages over through a queue of ``queue_size``
    messages (see the module docstring for what happens when it is full)."""

    def __init__(
        self,
        address: str,
        *,
        root_subject: str = "oxidip",
        progress_interval: float = 0.5,
        connect_timeout: float = 5.0,
        queue_size: int = 10000,
        block_timeout: float = 5.0,
    ) -> None:
        servers = [part.strip() for part in address.split(",") if part.strip()]
        if not servers:
            raise NotifierError(f"no NATS server address in {address!r}")
        if progress_interval < 0:
            raise ValueError(f"progress_interval must be >= 0, not {progress_interval}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, not {queue_size}")
        self.address = address
        self.root_subject = check_root_subject(root_subject)
        self.progress_interval = progress_interval
        self.queue_size = queue_size
        self.block_timeout = block_timeout

        # Shared between the callers and the loop thread, under _lock.
        self._lock = threading.Lock()
        #: Messages waiting for the NATS client, handed over in order by the loop's pump.
        self.outbox: WorkQueue[_Outgoing] = WorkQueue(
            "nats", max_waiting=queue_size, wake=self._wake_soon
        )
        self._last_progress: dict[str, float] = {}  # series UID -> monotonic time of the last
        self._held: dict[str, _Held] = {}  # series UID -> latest progress held back
        self._closing = False  # close() called: nothing more is accepted
        self._finishing = False  # (loop thread) the pump returns once the outbox is empty
        self._published = 0
        self._dropped_progress = 0
        self._lost = 0
        self._failed = 0
        self._last_warnings: dict[str, float] = {}

        self._connected = False  # (loop thread) connected at least once
        self._up = threading.Event()  # the first connection is made
        self._last_error: BaseException | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._loop = asyncio.new_event_loop()
        self._wake: asyncio.Event | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._release_task: asyncio.Task[None] | None = None
        # Imported here, not with the module: a process without NATS (most, and every
        # ``oxidip pull``) does not pay the ~30 ms of importing nats-py at start.
        import nats.aio.client

        self._nc = nats.aio.client.Client()
        self._thread = threading.Thread(target=self._run_loop, name="oxidip-nats", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(servers), self._loop).result(5)
        if self._up.wait(connect_timeout):
            return  # logged by _connect
        error = self._last_error
        log.warning(
            "nats unreachable",
            extra={
                "address": address,
                "error": _describe(error) if error is not None else "no answer",
                "waited": connect_timeout,
                "meanwhile": f"reconnecting in the background; up to {queue_size} messages"
                " wait, more are dropped and counted; DICOM intake goes on",
            },
        )

    # --- the Notifier interface ------------------------------------------------------------

    def progress(self, series: ReportedSeries) -> None:
        """Publishes the count of ``series`` unless one was published for it less than
        ``progress_interval`` ago; then the latest count is held and published once the
        interval has passed (unless ``complete``/``finalized`` come first). Never blocks."""
        uid = series.series_instance_uid
        now = time.monotonic()
        at = datetime.now(UTC)
        with self._lock:
            if self._closing:
                return
            last = self._last_progress.get(uid)
            if last is not None and now - last < self.progress_interval:
                self._held[uid] = _Held(series, at)
                return
            self._last_progress[uid] = now
            self._held.pop(uid, None)
            self._offer_progress(self._outgoing(_series_message(Progress, series, at)))

    def complete(self, series: ReportedSeries) -> None:
        """Publishes that ``series`` is complete, with its final count (held-back progress of
        the series is dropped: this carries a newer count)."""
        self._final(Complete, series)

    def finalized(self, series: ReportedSeries) -> None:
        """Publishes that ``series`` reached a final state, with its final count."""
        self._final(Finalized, series)

    def error(self, series_instance_uid: str, calling_aet: str, message: str) -> None:
        """Publishes an error about a series."""
        error = Error(
            series_instance_uid=series_instance_uid,
            calling_aet=calling_aet,
            time=datetime.now(UTC),
            message=message,
        )
        self._send(self._outgoing(error))

    def forward(self, job: ReportedJob) -> None:
        """Publishes the end of an attempt of a forwarding job (waits like ``complete``)."""
        message = _forward_message(job, datetime.now(UTC))
        subject = forward_subject(
            self.root_subject, message.state, job.destination, job.series_instance_uid
        )
        self._send(_Outgoing(subject, encode_message(message), "forward"))

    def close(self, timeout: float = 5.0) -> None:
        """Publishes what is queued (held-back progress included) and flushes it to the server
        for at most ``timeout`` seconds, then disconnects. Idempotent."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            # Only a server that answered can take the held-back progress: it goes last.
            connected = self._up.is_set()
            if connected:
                self._release_due(time.monotonic(), everything=True)
        self.outbox.close()  # callers waiting for room give up
        unsent = 0
        if self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(
                self._shutdown(timeout, connected), self._loop
            )
            try:
                unsent = future.result(timeout + 2)
            except Exception as error:  # noqa: BLE001 - report, then stop anyway
                log.warning("nats close failed", extra={"error": _describe(error)})
            self._stop_loop()
        log.info(
            "nats closed",
            extra={
                "published": self._published,
                "dropped_progress": self._dropped_progress,
                "lost": self._lost + unsent,
                "failed": self._failed,
                "ever_connected": self._up.is_set(),
            },
        )

    # --- statistics ------------------------------------------------------------------------

    @property
    def published(self) -> int:
        """Messages handed to the NATS client."""
        return self._published

    @property
    def dropped_progress(self) -> int:
        """Progress messages dropped because the queue was full."""
        return self._dropped_progress

    @property
    def lost(self) -> int:
        """Other messages dropped: no room within ``block_timeout``, or unsent at close."""
        return self._lost

    @property
    def failed(self) -> int:
        """Messages the NATS client refused (e.g. disconnected and its buffer full)."""
        return self._failed

    @property
    def backlog(self) -> int:
        """Messages queued and not yet handed to the NATS client."""
        return self.outbox.waiting

    # --- callers' side ---------------------------------------------------------------------

    def _outgoing(self, message: Message) -> _Outgoing:
        subject = subject_of(self.root_subject, message.calling_aet, message.series_instance_uid)
        return _Outgoing(subject, encode_message(message), type(message).__name__.lower())

    def _final(self, kind: type[Complete] | type[Finalized], series: ReportedSeries) -> None:
        message = _series_message(kind, series, datetime.now(UTC))
        uid = series.series_instance_uid
        with self._lock:
            self._held.pop(uid, None)
            self._last_progress.pop(uid, None)
        self._send(self._outgoing(message))

    def _offer_progress(self, outgoing: _Outgoing) -> None:
        """Queues a progress message unless the outbox is full: then it is dropped (``_lock``
        held)."""
        if not self.outbox.put(outgoing, timeout=0):
            self._dropped_progress += 1
            self._warn_locked("queue full: progress dropped", subject=outgoing.subject)

    def _send(self, outgoing: _Outgoing) -> None:
        """Queues any other message: when the outbox is full, it waits for room for at most
        ``block_timeout`` s, unless the server has never answered (waiting would hold up
        registration for nothing): then, and once closing, it is lost."""
        connected = self._up.is_set()
        if self._closing:
            with self._lock:
                self._lost += 1
            return
        if self.outbox.put(outgoing, timeout=self.block_timeout if connected else 0):
            return
        with self._lock:
            self._lost += 1
            if not connected and not self.outbox.closed:
                self._warn_locked("unreachable and queue full: message dropped", lost=self._lost)
                return
        log.error(
            "nats message lost",
            extra={
                "kind": outgoing.kind,
                "subject": outgoing.subject,
                "reason": "closing" if self.outbox.closed else "queue full",
                "queue_size": self.queue_size,
            },
        )

    def _warn_locked(self, what: str, **fields: object) -> None:
        """A WARNING "nats {what}", at most every 10 s for each ``what`` (``_lock`` held)."""
        now = time.monotonic()
        if now - self._last_warnings.get(what, -_WARNING_INTERVAL) < _WARNING_INTERVAL:
            return
        self._last_warnings[what] = now
        extra: dict[str, object] = {
            **fields,
            "dropped_progress": self._dropped_progress,
            "failed": self._failed,
            "backlog": self.outbox.waiting,
        }
        log.warning(f"nats {what}", extra=extra)

    # --- the loop thread -------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = list(asyncio.all_tasks(self._loop))
                self._loop.run_until_complete(_cancel(pending, 1.0))
            self._loop.close()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # already closed
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _wake_soon(self) -> None:
        """Work arrived in the outbox (from any thread): the pump runs."""
        self._loop.call_soon_threadsafe(self._wake_up)

    def _server(self) -> str:
        uri = self._nc.connected_url
        return uri.netloc.rsplit("@", 1)[-1] if uri is not None else ""

    async def _start(self, servers: list[str]) -> None:
        self._wake = asyncio.Event()
        self._connect_task = asyncio.create_task(self._connect(servers), name="oxidip-nats")
        self._pump_task = asyncio.create_task(self._pump(), name="oxidip-nats-pump")
        if self.progress_interval > 0:
            self._release_task = asyncio.create_task(self._release(), name="oxidip-nats-release")

    async def _connect(self, servers: list[str]) -> None:
        """Connects, trying every second for as long as it takes (nats-py's initial connection
        with ``max_reconnect_attempts=-1``); then the client reconnects by itself."""
        await self._nc.connect(
            servers,
            name="oxidip",
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            connect_timeout=2,
        )
        self._connected = True
        self._up.set()
        log.info(
            "nats connected",
            extra={
                "address": self.address,
                "server": self._server(),
                "root_subject": self.root_subject,
                "progress_interval": self.progress_interval,
            },
        )

    async def _on_error(self, error: Exception) -> None:
        self._last_error = error
        if self._connected and not self._closing:
            with self._lock:
                self._warn_locked("error", error=_describe(error))

    async def _on_disconnected(self) -> None:
        if self._connected and not self._closing:
            log.warning("nats disconnected", extra={"address": self.address})

    async def _on_reconnected(self) -> None:
        log.info("nats reconnected", extra={"server": self._server()})

    async def _pump(self) -> None:
        """Hands queued messages to the NATS client, in order; returns once closing and
        everything is handed over."""
        assert self._wake is not None and self._connect_task is not None
        outbox = self.outbox
        await asyncio.shield(self._connect_task)
        while True:
            await self._wake.wait()
            self._wake.clear()
            while (run := outbox.take_nowait()) is not None:
                (outgoing,) = run.items
                try:
                    await self._nc.publish(outgoing.subject, outgoing.payload)
                    self._published += 1
                except Exception as error:  # noqa: BLE001 - count, warn, go on
                    self._last_error = error
                    with self._lock:
                        self._failed += 1
                        self._warn_locked(
                            "publish failed", subject=outgoing.subject, error=_describe(error)
                        )
                finally:
                    run.done()
            if self._finishing:
                return

    async def _release(self) -> None:
        """Queues held-back progress whose interval has passed; forgets idle series."""
        tick = min(max(self.progress_interval / 4, 0.01), 1.0)
        while True:
            await asyncio.sleep(tick)
            with self._lock:
                self._release_due(time.monotonic(), everything=False)

    def _release_due(self, now: float, *, everything: bool) -> None:
        """Queues the held-back progress whose interval has passed (all of it with
        ``everything``), dropped when the outbox is full (``_lock`` held)."""
        interval = self.progress_interval
        for uid, last in list(self._last_progress.items()):
            if now - last < interval and not everything:
                continue
            held = self._held.pop(uid, None)
            if held is None:
                del self._last_progress[uid]  # idle: the next progress goes out at once
                continue
            self._last_progress[uid] = now
            outgoing = self._outgoing(_series_message(Progress, held.series, held.at))
            if not self.outbox.put(outgoing, timeout=0):
                self._dropped_progress += 1

    async def _shutdown(self, timeout: float, connected: bool) -> int:
        """Runs in the loop once ``close`` queued the held progress (if ``connected``, the
        server having answered when it was called) and closed the outbox: sends what it
        holds, flushes, closes. Returns how many messages could not be handed to the client
        in time."""
        deadline = time.monotonic() + timeout
        if self._release_task is not None:
            self._release_task.cancel()
            await asyncio.gather(self._release_task, return_exceptions=True)
        if not connected:
            # Never connected: nothing can be sent, and there is no point waiting.
            await _cancel([t for t in (self._connect_task, self._pump_task) if t is not None], 1.0)
            with self._lock:
                unsent = len(self._held)
                self._held.clear()
            unsent += self.outbox.abandon()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 1.0)
            return unsent
        self._finishing = True
        self._wake_up()
        unsent = 0
        pump = self._pump_task
        if pump is not None:
            try:
                await asyncio.wait_for(asyncio.shield(pump), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
                unsent = self.outbox.abandon()
        if self._nc.is_connected:
            remaining = max(deadline - time.monotonic(), 0.1)
            try:
                await _with_timeout(self._nc.flush(timeout=max(1, round(remaining))), remaining)
            except Exception as error:  # noqa: BLE001 - closing anyway
                log.warning("nats flush failed", extra={"error": _describe(error)})
        elif self._nc.pending_data_size:
            log.warning(
                "nats closed while disconnected: buffered messages are lost",
                extra={"address": self.address, "bytes": self._nc.pending_data_size},
            )
        self._connected = False
        with contextlib.suppress(Exception):
            await self._nc.close()
        return unsent


async def _cancel(tasks: list[asyncio.Task[Any]], timeout: float) -> None:
    """Cancels ``tasks`` and waits up to ``timeout`` seconds for them to end, cancelling again
    those that go on: nats-py's connection loop can swallow a cancellation (asyncio.wait_for
    does, before Python 3.12, when what it waits for ends at the same moment), and one wait on
    it would then last for ever."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [task for task in tasks if not task.done()]
        remaining = deadline - time.monotonic()
        if not pending or remaining <= 0:
            return
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=min(remaining, 0.1))


async def _with_timeout(awaitable: Awaitable[None], timeout: float) -> None:
    await asyncio.wait_for(awaitable, timeout)


def _describe(error: BaseException) -> str:
    text = str(error)
    name = type(error).__name__
    return f"{name}: {text}" if text else name
