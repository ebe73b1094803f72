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

import logging
from datetime import datetime
from typing import Protocol, TypeAlias

import msgspec

__all__ = [
    "FORMAT_VERSION",
    "Complete",
    "Error",
    "Finalized",
    "Forward",
    "Message",
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
    # Its module (asyncio, nats-py) only when notifications are on: ~15 ms of every start
    # (oxidip pull's among them) otherwise.
    from oxidip.nats_notifier import NatsNotifier

    return NatsNotifier(
        address,
        root_subject=root_subject,
        progress_interval=progress_interval,
        connect_timeout=connect_timeout,
    )
