"""Series notifications published to NATS, the successor of oxidicom's LONK messages.

Enabled by ``OXIDIP_NATS_ADDRESS`` (``host:port``, ``nats://host:port``, or several of them
separated by commas); without it every notification is a no-op (``NullNotifier``).

Subjects
--------
``{root_subject}.{calling_aet}.{SeriesInstanceUID}``, like oxidicom's
``{root_subject}.{pacs_name}.{SeriesInstanceUID}``; the root subject is
``OXIDIP_NATS_ROOT_SUBJECT`` (by default our AE title). In the calling AE title and the UID, as in
oxidicom, ``' '``, ``'.'``, ``'*'`` and ``'>'`` become ``'_'`` and NULs are removed; beyond
oxidicom, any other whitespace or control character also becomes ``'_'`` (NATS rejects them)
and an empty part becomes ``'_'``. So, with root ``OXIDIP``, ``1.2.840.1`` from AE ``MY PACS``
is published on ``OXIDIP.MY_PACS.1_2_840_1``; subscribe to ``OXIDIP.>`` for everything, or to
``OXIDIP.MY_PACS.*`` for one PACS. The original values are in the message.

Messages (version 1)
--------------------
One JSON object per message (UTF-8, encoded with msgspec), internally tagged by ``kind``::

    {"kind": "progress", "v": 1, "series_instance_uid": "1.2.840.1", "calling_aet": "MY PACS",
     "time": "2026-11-23T10:00:00.123456Z", "study_instance_uid": "1.2.840",
     "received": 42, "expected": 120, "expected_status": "known", "expected_detail": "",
     "state": "receiving"}

- ``kind``: ``"progress"``, ``"complete"``, ``"finalized"`` or ``"error"``;
- ``v``: the format version, 1; fields may be added to version 1 (ignore those you do not
  know), anything else changes the version;
- ``series_instance_uid``, ``calling_aet``: as received, not sanitised;
- ``time``: when oxidip saw the state reported (RFC 3339, UTC).

``progress``, ``complete`` and ``finalized`` also carry the series as registered:
``study_instance_uid``; ``received`` (instances registered); ``expected`` (the PACS's
NumberOfSeriesRelatedInstances, ``null`` when unknown); ``expected_status`` and
``expected_detail`` (how the expected count was obtained, or why it is unknown);
``state``: ``receiving``, ``complete``, ``incomplete``, ``overfull`` or
``finalized-unknown``.

- ``progress``: instances keep arriving. At most one per series per ``progress_interval``
  (``OXIDIP_PROGRESS_INTERVAL``, like oxidicom's ``PROGRESS_INTERVAL``); the latest
  count held back by the limit is sent when the interval has passed, so a series that pauses
  still shows its real count. Under overload (more than ``queue_size`` messages waiting for
  NATS), progress messages are dropped and counted; the others never are.
- ``complete``: the series reached ``complete`` (received == expected). Its ``received`` is
  the final count, whatever progress messages were held back or dropped.
- ``finalized``: the series reached a final state (``state`` says which, ``complete``
  included): every series gets one when it stops receiving, after its ``complete`` when it
  has one. This is the equivalent of LONK's "done". A series sent again later (say, after an
  abort) gets new messages.
- ``error``: something went wrong for this series; ``message`` says what. It has no series
  fields.

Forwarding (``oxidip.forwarding``) publishes on
``{root_subject}.forward.{state}.{destination}.{SeriesInstanceUID}`` (destination and UID
sanitised like above) when a forwarding job ends an attempt: ``state`` is ``done``,
``failed`` (tried again at ``next_attempt_at``; also when the job is ``held``) or ``dead``
(gave up). Subscribe to ``OXIDIP.forward.>`` for all of it, ``OXIDIP.forward.dead.>`` for what
needs a person. One ``forward`` message per job end::

    {"kind": "forward", "v": 1, "series_instance_uid": "1.2.840.1", "calling_aet": "MY PACS",
     "time": "...", "study_instance_uid": "1.2.840", "job_id": 7, "rule": "ct-to-archive",
     "destination": "archive", "state": "done", "delivered": 120, "warnings": 0, "failed": 0,
     "total": 120, "attempts": 1, "next_attempt_at": null, "last_error": ""}

``next_attempt_at`` is unix seconds; ``last_error`` says in words what went wrong (for a
``done`` job with ``failed`` > 0: why those instances were refused).

Publishing never holds up the caller for long: messages are handed to a background thread
running the NATS client through a bounded queue; only when it is full do ``complete``,
``finalized`` and ``error`` wait for room, for at most ``block_timeout`` seconds (after which
the message is logged as lost). NATS is a side channel: it never stops DICOM intake. A
server unreachable at start is logged (a WARNING, ``nats unreachable``) and tried again every
second in the background; until it answers, messages wait in the queue (up to ``queue_size``,
published in order once connected) and those that find it full are dropped at once and
counted (a WARNING at most every 10 s; the count is in ``nats closed``). When the connection
drops later, the client reconnects forever, buffering what is published meanwhile (up to its
own limit of 2 MiB; beyond it messages fail and are counted). ``close`` flushes what is
queued; what is still waiting because the server is unreachable then is lost (logged).
Delivery is NATS core's: at most once, to the subscribers present at the time.
"""

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, TypeAlias

import msgspec

from oxidip.workers import WorkQueue

__all__ = [
    "FORMAT_VERSION",
    "Complete",
    "Error",
    "Finalized",
    "Forward",
    "Message",
    "NatsNotifier",
    "Notifier",
    "NotifierError",
    "NullNotifier",
    "Progress",
    "ReportedJob",
    "ReportedSeries",
    "check_root_subject",
    "decode_message",
    "encode_message",
    "forward_subject",
    "open_notifier",
    "sanitize_subject_part",
    "subject_of",
]

log = logging.getLogger("oxidip.notify")

#: The ``v`` of every message this module publishes.
FORMAT_VERSION = 1

#: Seconds between two warnings about the same kind of NATS trouble.
_WARNING_INTERVAL = 10.0


# --- message format ----------------------------------------------------------------------


class _Base(msgspec.Struct, tag_field="kind", kw_only=True):
    v: int = FORMAT_VERSION
    series_instance_uid: str
    calling_aet: str
    time: datetime


class _SeriesMessage(_Base, kw_only=True):
    study_instance_uid: str
    received: int
    expected: int | None
    expected_status: str
    expected_detail: str
    state: str


class Progress(_SeriesMessage, tag="progress", kw_only=True):
    """Instances of the series keep arriving (rate-limited per series)."""


class Complete(_SeriesMessage, tag="complete", kw_only=True):
    """The series reached ``complete``; ``received`` is the final count."""


class Finalized(_SeriesMessage, tag="finalized", kw_only=True):
    """The series reached a final state (``state``)."""


class Error(_Base, tag="error", kw_only=True):
    """Something went wrong for the series."""

    message: str


class Forward(_Base, tag="forward", kw_only=True):
    """A forwarding job ended an attempt (``state``: done, failed, held or dead)."""

    study_instance_uid: str
    job_id: int
    rule: str
    destination: str
    state: str
    delivered: int
    warnings: int
    failed: int
    total: int
    attempts: int
    next_attempt_at: float | None
    last_error: str


Message: TypeAlias = Progress | Complete | Finalized | Error | Forward

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)


def encode_message(message: Message) -> bytes:
    return _encoder.encode(message)


def decode_message(data: bytes) -> Message:
    """Parses a message published by oxidip (raises ``msgspec.ValidationError`` otherwise)."""
    message: Message = _decoder.decode(data)
    return message


class ReportedSeries(Protocol):
    """A series as a message reports it: counts, expected count and state
    (``oxidip.registry.SeriesRow`` has it all)."""

    @property
    def series_instance_uid(self) -> str: ...
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def calling_aet(self) -> str: ...
    @property
    def received(self) -> int: ...
    @property
    def expected(self) -> int | None: ...
    @property
    def expected_status(self) -> str: ...
    @property
    def expected_detail(self) -> str: ...
    @property
    def state(self) -> str: ...


class ReportedJob(Protocol):
    """A forwarding job as a message reports it (``oxidip.registry.JobRow`` has it all)."""

    @property
    def id(self) -> int: ...
    @property
    def series_instance_uid(self) -> str: ...
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def calling_aet(self) -> str: ...
    @property
    def rule(self) -> str: ...
    @property
    def destination(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def delivered(self) -> int: ...
    @property
    def warnings(self) -> int: ...
    @property
    def failed(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def attempts(self) -> int: ...
    @property
    def next_attempt_at(self) -> float | None: ...
    @property
    def last_error(self) -> str: ...


def _forward_message(job: ReportedJob, at: datetime) -> Forward:
    return Forward(
        series_instance_uid=job.series_instance_uid,
        calling_aet=job.calling_aet,
        time=at,
        study_instance_uid=job.study_instance_uid,
        job_id=job.id,
        rule=job.rule,
        destination=job.destination,
        state=str(job.state),
        delivered=job.delivered,
        warnings=job.warnings,
        failed=job.failed,
        total=job.total,
        attempts=job.attempts,
        next_attempt_at=job.next_attempt_at,
        last_error=job.last_error,
    )


def _series_message(
    kind: type[Progress] | type[Complete] | type[Finalized], series: ReportedSeries, at: datetime
) -> Progress | Complete | Finalized:
    return kind(
        series_instance_uid=series.series_instance_uid,
        calling_aet=series.calling_aet,
        time=at,
        study_instance_uid=series.study_instance_uid,
        received=series.received,
        expected=series.expected,
        expected_status=series.expected_status,
        expected_detail=series.expected_detail or "",
        state=series.state,
    )


# --- subjects ----------------------------------------------------------------------------

_REPLACED = frozenset(" .*>")


def sanitize_subject_part(text: str) -> str:
    """One token of a subject: ``' '``, ``'.'``, ``'*'``, ``'>'``, other whitespace and
    control characters become ``'_'``, NULs are removed, and an empty result is ``'_'``."""
    out = []
    for char in text:
        if char == "\0":
            continue
        if char in _REPLACED or char.isspace() or not char.isprintable():
            out.append("_")
        else:
            out.append(char)
    return "".join(out) or "_"


def subject_of(root_subject: str, calling_aet: str, series_instance_uid: str) -> str:
    return (
        f"{root_subject}.{sanitize_subject_part(calling_aet)}"
        f".{sanitize_subject_part(series_instance_uid)}"
    )


def forward_subject(root_subject: str, state: str, destination: str, series_uid: str) -> str:
    """Where a forwarding job's end is published; a ``held`` job is reported as ``failed``
    (it is tried again once its destination answers)."""
    kind = "failed" if state == "held" else state
    return (
        f"{root_subject}.forward.{kind}.{sanitize_subject_part(destination)}"
        f".{sanitize_subject_part(series_uid)}"
    )


def check_root_subject(root_subject: str) -> str:
    """``root_subject`` when it is usable as the start of a subject: dot-separated non-empty
    tokens without whitespace, control characters or wildcards; ``ValueError`` otherwise."""
    tokens = root_subject.split(".")
    for token in tokens:
        if (
            not token
            or "*" in token
            or ">" in token
            or any(c.isspace() or not c.isprintable() for c in token)
        ):
            raise ValueError(
                f"invalid NATS root subject {root_subject!r}: it must be dot-separated"
                " non-empty tokens without spaces, control characters, '*' or '>'"
            )
    return root_subject


# --- notifiers ---------------------------------------------------------------------------


class NotifierError(Exception):
    """The notifier cannot work, e.g. NATS cannot be reached at startup."""


class Notifier(Protocol):
    def progress(self, series: ReportedSeries) -> None: ...
    def complete(self, series: ReportedSeries) -> None: ...
    def finalized(self, series: ReportedSeries) -> None: ...
    def error(self, series_instance_uid: str, calling_aet: str, message: str) -> None: ...
    def forward(self, job: ReportedJob) -> None: ...
    def close(self, timeout: float = 5.0) -> None: ...


class NullNotifier:
    """Notifications disabled (no ``OXIDIP_NATS_ADDRESS``)."""

    def progress(self, series: ReportedSeries) -> None:
        pass

    def complete(self, series: ReportedSeries) -> None:
        pass

    def finalized(self, series: ReportedSeries) -> None:
        pass

    def error(self, series_instance_uid: str, calling_aet: str, message: str) -> None:
        pass

    def forward(self, job: ReportedJob) -> None:
        pass

    def close(self, timeout: float = 5.0) -> None:
        pass


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


def open_notifier(
    address: str | None,
    *,
    root_subject: str = "oxidip",
    progress_interval: float = 0.5,
    connect_timeout: float = 5.0,
) -> "Notifier":
    """A ``NatsNotifier`` for ``address``, or a ``NullNotifier`` when it is None or blank."""
    if address is None or not address.strip():
        return NullNotifier()
    return NatsNotifier(
        address,
        root_subject=root_subject,
        progress_interval=progress_interval,
        connect_timeout=connect_timeout,
    )
