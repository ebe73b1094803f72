"""Typed wrapper around the Rust ``_core.Receiver``: takes a ``Config``, yields decoded events."""

import os
import socket
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import msgspec

from oxidip import _core
from oxidip._boundary import Event, ReceiverMetrics
from oxidip.config import Config

__all__ = ["Receiver", "new_process_id"]

# Built once: decoding a batch is then a single call into msgspec's compiled decoder.
_DECODER: msgspec.msgpack.Decoder[list[Event]] = msgspec.msgpack.Decoder(list[Event])
_METRICS_DECODER = msgspec.msgpack.Decoder(ReceiverMetrics)


def new_process_id() -> str:
    """An id for this process, unique per start: association ids are per process, so
    (process id, association id) is the global key of an association."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Receiver:
    """The DICOM Storage SCP configured by ``config``.

    ``start()`` binds and serves in Rust threads; the caller takes events with
    ``next_batch``/``batches`` until they end after ``stop()``. Usable as a context manager
    (start on enter, stop on exit). ``process_id`` is the id of this process its instances are
    registered under (a new one by default): its journal records it, so that whoever replays
    the journal after a crash can end that process's association activity.
    """

    def __init__(self, config: Config, *, process_id: str | None = None) -> None:
        self.config = config
        self.process_id = new_process_id() if process_id is None else process_id
        core = msgspec.structs.replace(config.core(), node=self.process_id)
        self._core = _core.Receiver(msgspec.msgpack.encode(core))
        self._ports: tuple[int | None, int | None] | None = None

    def prepare_storage(self) -> None:
        """Makes the storage root ready before anything else touches it (see
        ``_core.Receiver.prepare_storage``); OSError saying why it cannot be."""
        self._core.prepare_storage()

    def start(self) -> None:
        """Opens storage and binds the listening sockets. Raises OSError when a port cannot
        be bound or storage is unusable."""
        self._ports = self._core.start()

    @property
    def port(self) -> int:
        """The plain TCP listener's bound port (the real one when configured with port 0)."""
        return self._bound(0, "plain TCP listener (OXIDIP_PLAIN_LISTENER=false)")

    @property
    def tls_port(self) -> int:
        """The TLS listener's bound port (the real one when configured with port 0)."""
        return self._bound(1, "TLS listener (OXIDIP_TLS_CERT and OXIDIP_TLS_KEY unset)")

    def _bound(self, index: int, listener: str) -> int:
        if self._ports is None:
            raise RuntimeError("the receiver's ports are only known after start()")
        port = self._ports[index]
        if port is None:
            raise RuntimeError(f"the receiver has no {listener}")
        return port

    def next_batch(
        self, max_events: int = 1000, timeout: float = 0.5, linger: float = 0.0
    ) -> list[Event] | None:
        """Waits up to ``timeout`` seconds for a first event, then up to ``linger`` seconds
        for more (fewer, larger batches), and returns up to ``max_events`` (an empty list on
        timeout); None once the receiver has stopped and every event was taken."""
        raw = self._core.next_batch(max_events, timeout, linger)
        if raw is None:
            return None
        return _DECODER.decode(raw)

    def batches(self, max_events: int = 1000, timeout: float = 0.5) -> Iterator[list[Event]]:
        """Yields non-empty batches until the receiver has stopped and every event was taken.
        Empty waits are skipped, so a loop that must do something between waits (check a
        flag, a timer) should call ``next_batch`` instead."""
        while True:
            batch = self.next_batch(max_events, timeout)
            if batch is None:
                return
            if batch:
                yield batch

    def acknowledge(self, seqs: list[int], *, registered: bool) -> None:
        """Tells the receiver these instances (``InstanceStored.journal_seq``) are registered,
        or that their registration failed (see ``_core.Receiver.acknowledge``)."""
        if seqs:
            self._core.acknowledge(seqs, registered)

    @property
    def core(self) -> _core.Receiver:
        """The Rust receiver itself, for what it does on its own associations (a C-GET,
        ``_core.Receiver.get``)."""
        return self._core

    def stop(self, timeout: float | None = None) -> None:
        """Graceful shutdown: stops accepting; running associations may finish within
        ``timeout`` seconds (default: ``config.shutdown_timeout``), then are aborted. Keep
        taking events: ``next_batch`` returns None once all is done and drained."""
        self._core.stop(self.config.shutdown_timeout if timeout is None else timeout)

    def metrics(self) -> ReceiverMetrics:
        """Every counter of the receiver now (associations, instances, bytes, store latency,
        backlogs). RuntimeError before ``start()``."""
        return _METRICS_DECODER.decode(self._core.metrics())

    def check_storage(self) -> None:
        """Raises OSError saying why when the storage root cannot take a new file now."""
        self._core.check_storage()

    @property
    def queued_events(self) -> int:
        """Events waiting to be taken: the backlog when Python falls behind."""
        return self._core.queued_events

    @property
    def journal_backlog(self) -> int:
        """Instances acknowledged (journaled) and not yet registered."""
        return self._core.journal_backlog

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
