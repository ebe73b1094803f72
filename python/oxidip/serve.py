"""``oxidip serve``: the receiver and what handles its events, from start to stop.

The components, in the order they start: the receiver (``oxidip.receiver``: the Rust
listeners and storage), the user hooks (``oxidip.hooks``), the registry with the journals of
dead processes replayed (``oxidip.registry``, ``oxidip.reconcile``), the expected-count
lookups (``oxidip.completeness``, asking the nodes of ``oxidip.nodes``), the notifier
(``oxidip.notify``), the journal adopter (``oxidip.adoption``), forwarding
(``oxidip.forwarding``, when ``OXIDIP_ROUTES`` names rules: the registry queues jobs with the
router of ``oxidip.routing``), all but the receiver held by the pipeline (``oxidip.pipeline``,
whose registrar runs every registry call), and the HTTP endpoint (``oxidip.http_endpoint``).
``consume`` then hands every batch of the receiver's events to the handlers (the log, then
the pipeline) and ticks the pipeline between batches, until SIGTERM or SIGINT; the receiver
stops first (forwarding stops claiming at once), the pipeline drains and closes (forwarding
after the registrar: unfinished jobs back to pending), the HTTP endpoint last.
"""

import argparse
import contextlib
import logging
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from oxidip import __version__, logs
from oxidip._boundary import (
    AckMode,
    AssociationClosed,
    AssociationOutcome,
    ConnectionRefused,
    ContextsRefused,
    Event,
    InstanceFailed,
    InstanceStored,
    ServerWarning,
)
from oxidip.adoption import JournalAdopter
from oxidip.completeness import ExpectedCountLookup
from oxidip.config import Config, ConfigError, report_config_error, warn_unknown_variables
from oxidip.forwarding import Forwarding
from oxidip.hooks import HookError, Hooks
from oxidip.logs import one_line
from oxidip.nodes import NodeDirectory
from oxidip.notify import NotifierError, open_notifier, sanitize_subject_part
from oxidip.pipeline import Pipeline
from oxidip.receiver import Receiver
from oxidip.reconcile import Registration, adopt_journals
from oxidip.registry import (
    ExpectedStatus,
    Registry,
    SeriesRow,
    open_registry,
    postgres_errors,
)
from oxidip.routing import Router, build_router

if TYPE_CHECKING:
    from oxidip.http_endpoint import HttpEndpoint

__all__ = [
    "EventHandler",
    "build_pipeline",
    "consume",
    "log_events",
    "open_migrated_registry",
    "prepare",
    "run",
    "serve_until",
    "stop_requested_by_signals",
]

log = logging.getLogger("oxidip")

#: Called with every non-empty batch of events, in order, from the main thread.
EventHandler = Callable[[list[Event]], None]

#: Seconds a batch of events waits for more once its first event is in, when senders are not
#: waiting for registration (``OXIDIP_ACK=stored``): at thousands of instances a second, a
#: registry transaction and a wake-up per few events cost more CPU than storing them.
#: Measured on 2 KB instances, one association: this thread's CPU per instance was ~40 us
#: with 5 ms, ~24 us with 20 ms (SQLite registration ~15 us at 30 events a transaction,
#: ~9.5 us at 140). Registration is delayed by at most this much.
EVENT_LINGER = 0.02

#: Exit statuses.
EXIT_OK = 0
EXIT_FAILURE = 1


# --- event handling ----------------------------------------------------------------------


def log_events(batch: list[Event]) -> None:
    """One INFO line per closed association (a WARNING when it was rejected), a WARNING per
    failed instance, per connection refused for a limit and per server warning, one line per
    association whose proposal was partly refused (INFO; a WARNING when nothing was accepted)
    and a DEBUG line per stored instance."""
    debug = log.isEnabledFor(logging.DEBUG)
    for event in batch:
        if isinstance(event, InstanceStored):
            if debug:
                log.debug(
                    "instance stored",
                    extra={
                        "association_id": event.association_id,
                        "calling_aet": event.calling_aet,
                        "sop_instance_uid": event.attributes.SOPInstanceUID or "",
                        "path": event.path,
                        "size": event.size,
                        "transfer_syntax": event.transfer_syntax,
                        "duplicate": event.duplicate,
                        "seconds": round(event.stored_at - event.received_at, 6),
                    },
                )
        elif isinstance(event, InstanceFailed):
            log.warning(
                "instance failed",
                extra={
                    "association_id": event.association_id,
                    "calling_aet": event.calling_aet,
                    "peer": event.peer,
                    "status": f"{event.status:04X}",
                    "comment": event.comment,
                    "sop_instance_uid": event.sop_instance_uid,
                    "sop_class_uid": event.sop_class_uid,
                },
            )
        elif isinstance(event, AssociationClosed):
            if event.outcome == AssociationOutcome.REJECTED:
                log.warning(
                    "association rejected",
                    extra={
                        "association_id": event.association_id,
                        "calling_aet": event.calling_aet,
                        "called_aet": event.called_aet,
                        "peer": event.peer,
                        "reason": event.detail,
                        **_tls_fields(event),
                    },
                )
                continue
            rate = event.bytes_received / event.duration / 1e6 if event.duration > 0 else 0.0
            log.info(
                "association closed",
                extra={
                    "association_id": event.association_id,
                    "calling_aet": event.calling_aet,
                    "called_aet": event.called_aet,
                    "peer": event.peer,
                    "outcome": event.outcome,
                    "detail": event.detail,
                    "stored": event.instances_stored,
                    "failed": event.instances_failed,
                    "bytes": event.bytes_received,
                    "duration": round(event.duration, 3),
                    "mb_per_s": round(rate, 2),
                    **_tls_fields(event),
                },
            )
        elif isinstance(event, ContextsRefused):
            log.log(
                logging.INFO if event.accepted else logging.WARNING,
                "presentation contexts refused",
                extra={
                    "association_id": event.association_id,
                    "calling_aet": event.calling_aet,
                    "called_aet": event.called_aet,
                    "peer": event.peer,
                    "accepted": event.accepted,
                    "refused": "; ".join(
                        f"{c.id}: {c.abstract_syntax} ({c.reason};"
                        f" proposed {', '.join(c.transfer_syntaxes) or 'no transfer syntax'})"
                        for c in event.refused
                    ),
                },
            )
        elif isinstance(event, ConnectionRefused):
            log.warning(
                "association refused",
                extra={
                    "peer": event.peer,
                    "calling_aet": event.calling_aet,
                    "called_aet": event.called_aet,
                    "reason": event.reason,
                    "detail": event.detail,
                },
            )
        elif isinstance(event, ServerWarning):
            log.warning(event.message, extra={"detail": event.detail})


def _tls_fields(event: AssociationClosed) -> dict[str, object]:
    """For an association on the TLS listener: that it was, and who its certificate names."""
    if not event.tls:
        return {}
    return {"tls": True, "peer_certificate_subject": event.peer_certificate_subject}


def consume(
    receiver: Receiver,
    handlers: Sequence[EventHandler],
    stop_requested: threading.Event,
    shutdown_timeout: float,
    *,
    tick: Callable[[], None] = lambda: None,
    ready: Callable[[float], bool] = lambda timeout: True,
    on_stop: Callable[[float], None] = lambda timeout: None,
    max_events: int = 1000,
    poll: float = 0.5,
    linger: float = 0.0,
) -> bool:
    """Passes every batch of events to every handler until the receiver has stopped and all
    events were taken, calling ``tick`` after every wait (with or without events). Takes
    events only while ``ready(timeout)`` says the handlers have room (it may wait up to
    ``timeout`` seconds for it): otherwise the receiver's bounded event queue fills and TCP
    pushes back on the senders. Once ``stop_requested`` is set (checked at least every
    ``poll`` seconds, or when the receiver ends: whoever sets it may stop the receiver
    itself so as not to wait for the poll), stops the receiver gracefully, calls ``on_stop(shutdown_timeout)``,
    and drains every event, ready or not (the receiver cannot end before). A handler that
    raises is logged and does not stop the loop. ``linger``: see ``Receiver.next_batch``.
    Returns whether the receiver stopped because it was asked to (False: by itself)."""
    stopping = False
    while True:
        if not stopping and stop_requested.is_set():
            stopping = True
            receiver.stop(shutdown_timeout)
            log.info("stopping", extra={"timeout": shutdown_timeout})
            on_stop(shutdown_timeout)
        if not stopping and not ready(poll):
            _call(tick)
            continue
        batch = receiver.next_batch(max_events, poll, linger)
        if batch is None and not stopping and stop_requested.is_set():
            continue  # whoever asked stopped the receiver too (at once): stop as asked
        if batch is None:
            return stopping
        for handler in handlers if batch else ():
            _call(handler, batch)
        _call(tick)


def _call(handler: Callable[..., None], *args: object) -> None:
    """Calls an event handler; its exception is logged and goes no further."""
    try:
        handler(*args)
    except Exception:
        log.exception("event handler failed", extra={"handler": _name(handler)})


def _name(handler: Callable[..., None]) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)


# --- the components ----------------------------------------------------------------------


def open_migrated_registry(config: Config, router: Router | None) -> Registry:
    """The registry ``serve`` and ``reconcile`` use, its schema brought up to date;
    ``router`` says which forwarding jobs its state changes queue (None: none)."""
    registry = open_registry(
        config.db_connection,
        config.core().files_root,
        pool_size=config.db_pool,
        duplicates=config.duplicates,
        dir_mode=config.dir_mode,
        router=router,
    )
    registry.migrate()
    return registry


def warn_untracked_series(config: Config, hooks: Hooks) -> None:
    """With ``REGISTER_MODE = "replace"`` nothing is registered in oxidip's database, so no
    series state is tracked: says which of what is configured therefore does nothing (a
    WARNING), or that nothing is lost (INFO)."""
    off: list[str] = [
        name
        for name in (
            "on_series_complete",
            "on_series_finalized",
            "on_forwarded",
            "on_forward_failed",
        )
        if name in hooks.names
    ]
    if config.nats_address:
        off.append("NATS progress, complete and finalized messages (OXIDIP_NATS_ADDRESS)")
    if config.pacs_address:
        off.append("expected-count C-FINDs (OXIDIP_PACS_ADDRESS)")
    if config.forward.routes is not None:
        off.append("forwarding (OXIDIP_ROUTES): its queue is in oxidip's database")
    fields = {"hooks_module": hooks.module_name or "", "register_mode": "replace"}
    if not off:
        log.info("series states are not tracked", extra=fields)
        return
    log.warning(
        "series states are not tracked",
        extra={
            **fields,
            "off": "; ".join(off),
            "why": "the register hook replaces oxidip's database, where series states live;"
            ' use REGISTER_MODE = "add" to keep them',
        },
    )


def build_pipeline(
    config: Config, receiver: Receiver, hooks: Hooks, router: Router | None
) -> Pipeline:
    """Opens the registry (migrating it, replaying journals of dead processes), the expected
    count lookup, the notifier and forwarding (not started)."""
    process_id = receiver.process_id
    files_root = config.core().files_root
    registry = None
    adopter = None
    replayed = Registration()
    pending: list[SeriesRow] = []
    if hooks.replaces_registry:
        warn_untracked_series(config, hooks)
    else:
        registry = open_migrated_registry(config, router)
        replayed = adopt_journals(files_root, registry, process_id)
        if replayed.registered:
            log.info(
                "registered instances from journals of stopped processes",
                extra={"count": replayed.registered},
            )
        adopter = JournalAdopter(files_root, registry, process_id)
        # Series whose expected count is still pending, whatever their state: a lookup that
        # died with a killed process is never answered otherwise. (Another live process may
        # be asking too: a second C-FIND for one series is harmless.)
        pending = registry.list_series(expected_status=ExpectedStatus.PENDING)
    lookup = ExpectedCountLookup(
        NodeDirectory.parse(config.pacs_address),
        config.scp_aet,
        timeout=config.cfind_timeout,
        retries=config.cfind_retries,
    )
    notifier = open_notifier(
        config.nats_address,
        root_subject=config.nats_root_subject or sanitize_subject_part(config.scp_aet),
        progress_interval=config.progress_interval,
    )
    forwarding = None
    routes = config.forward.routes
    if registry is not None and routes is not None and routes.destinations:
        forwarding = Forwarding(
            registry=registry,
            destinations=routes.destinations,
            triggers=router.triggers if router is not None else frozenset(),
            forward=config.forward,
            scp_aet=config.scp_aet,
            max_pdu_length=config.scp_max_pdu_length,
            process_id=process_id,
            hooks=hooks,
            notifier=notifier,
        )
    pipeline = Pipeline(
        receiver=receiver,
        registry=registry,
        lookup=lookup,
        hooks=hooks,
        notifier=notifier,
        process_id=process_id,
        series_idle_timeout=config.series_idle_timeout,
        adopter=adopter,
        backlog=config.registration_backlog,
        answer_within=config.registration_timeout if config.ack == AckMode.REGISTERED else None,
        pending=pending,
        forwarding=forwarding,
    )
    pipeline.registered_from_files(replayed)
    return pipeline


# --- serve -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``oxidip serve``: runs the receiver until SIGTERM or SIGINT; the exit status."""
    try:
        config = Config.from_env(warn_unknown=False)
    except ConfigError as error:
        return report_config_error(error.problems)
    logs.configure(config.log_level, config.log_format)
    warn_unknown_variables()
    prepared = prepare(config)
    if isinstance(prepared, int):
        return prepared
    with stop_requested_by_signals() as stop_requested:
        return serve_until(config, *prepared, stop_requested)


def prepare(config: Config) -> tuple[Receiver, Pipeline] | int:
    """The receiver (its storage ready) and the pipeline of ``config``, not started; or the
    exit status when they cannot be (logged or reported first). ``oxidip pull --serve``
    composes the same."""
    try:
        receiver = Receiver(config)
        hooks = Hooks.load(config.hooks, queue_size=config.hook_queue)
    except HookError as error:
        return report_config_error([f"OXIDIP_HOOKS={config.hooks!r}: {error}"])
    except ValueError as error:  # the core's own range checks; Config should catch all first
        return report_config_error([str(error)])
    try:
        router = build_router(config.forward.routes, hooks)
    except ValueError as error:  # a route() hook without routes
        hooks.close(0)
        return report_config_error([f"OXIDIP_HOOKS={config.hooks!r}: {error}"])
    try:
        # First, so that the root gets its mode and group before the registry is made in it.
        receiver.prepare_storage()
    except OSError as error:
        return report_config_error([f"OXIDIP_FILES_ROOT={config.files_root!r}: {error}"])
    try:
        pipeline = build_pipeline(config, receiver, hooks, router)
    except postgres_errors() as error:
        hooks.close(0)
        log.error(
            "cannot start",
            extra={
                "reason": "registry database unreachable",
                "variable": "OXIDIP_DB_CONNECTION",
                "error": one_line(error),
            },
        )
        return EXIT_FAILURE
    except (OSError, ValueError, NotifierError, sqlite3.Error) as error:
        hooks.close(0)
        log.error("cannot start", extra={"error": one_line(error)})
        return EXIT_FAILURE
    return receiver, pipeline


@contextlib.contextmanager
def stop_requested_by_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while in the block (their handlers restored after)."""
    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop_requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_until(
    config: Config,
    receiver: Receiver,
    pipeline: Pipeline,
    stop_requested: threading.Event,
    started: threading.Event | None = None,
) -> int:
    """Opens the HTTP endpoint, starts the receiver and consumes its events until it
    stopped (``stop_requested``); closes the pipeline, then the endpoint. ``started`` is set
    once the receiver listens (or could not start)."""
    http: HttpEndpoint | None = None
    try:
        try:
            if config.http_port is not None:
                # Its module (http.server...) only when the endpoint is on: oxidip pull
                # without it starts ~10 ms sooner.
                from oxidip.http_endpoint import open_http_endpoint

                http = open_http_endpoint(config, receiver, pipeline)
            receiver.start()
            pipeline.start()
        except OSError as error:
            log.error(
                "cannot start",
                extra={
                    "host": config.listener_host,
                    "port": config.listener_port,
                    "files_root": config.core().files_root,
                    "error": str(error),
                },
            )
            return EXIT_FAILURE
        finally:
            if started is not None:
                started.set()
        since = time.monotonic()
        log.info(
            "listening",
            extra={
                "host": config.listener_host,
                **_listening_ports(config, receiver),
                "aet": config.scp_aet,
                "files_root": config.core().files_root,
                "version": __version__,
            },
        )
        try:
            requested = consume(
                receiver,
                [log_events, pipeline.handle],
                stop_requested,
                config.shutdown_timeout,
                tick=pipeline.tick,
                ready=pipeline.wait_for_room,
                on_stop=pipeline.begin_stop,
                linger=0.0 if config.ack == AckMode.REGISTERED else EVENT_LINGER,
            )
        except Exception:
            log.exception("receiver failed")
            with contextlib.suppress(Exception):  # the first error is the one to report
                receiver.stop(0)
            return EXIT_FAILURE
        finally:
            pipeline.close(config.shutdown_timeout)
        uptime = round(time.monotonic() - since, 3)
        if not requested:
            log.error("receiver stopped unexpectedly", extra={"uptime": uptime})
            return EXIT_FAILURE
        log.info("stopped", extra={"uptime": uptime})
        return EXIT_OK
    finally:
        if http is not None:
            http.close()


def _listening_ports(config: Config, receiver: Receiver) -> dict[str, object]:
    """The bound ports of the listeners configured: ``port`` (plain TCP), ``tls_port`` and,
    with mutual TLS, ``tls_client_ca``."""
    ports: dict[str, object] = {}
    if config.plain_listener:
        ports["port"] = receiver.port
    if config.core().tls is not None:
        ports["tls_port"] = receiver.tls_port
        if config.tls_ca is not None:
            ports["tls_client_ca"] = config.tls_ca
    return ports
