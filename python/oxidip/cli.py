"""The ``oxidip`` command line.

Each subcommand is registered by a function in ``SUBCOMMANDS`` that adds its parser and sets
``func`` (returning the exit status). ``serve`` runs the receiver; what happens to events is a
list of handlers, each called with every batch (see ``event_handlers``).
"""

import argparse
import contextlib
import logging
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TypeAlias

from oxidip import __version__, logs
from oxidip._boundary import AssociationClosed, Event, InstanceFailed, InstanceStored
from oxidip.config import VARIABLES, Config, ConfigError, warn_unknown_variables
from oxidip.receiver import Receiver

__all__ = ["EventHandler", "build_parser", "consume", "event_handlers", "log_events", "main"]

log = logging.getLogger("oxidip")

#: Called with every non-empty batch of events, in order, from the main thread.
EventHandler = Callable[[list[Event]], None]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

#: Exit statuses.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


# --- event handling ----------------------------------------------------------------------


def log_events(batch: list[Event]) -> None:
    """One INFO line per closed association, a WARNING per failed instance and a DEBUG line per
    stored instance."""
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
                },
            )


def event_handlers(config: Config) -> list[EventHandler]:
    """The handlers ``serve`` passes every batch to, in order. Later features (registration,
    hooks, notifications) add theirs here."""
    return [log_events]


def consume(
    receiver: Receiver,
    handlers: Sequence[EventHandler],
    stop_requested: threading.Event,
    shutdown_timeout: float,
    *,
    max_events: int = 1000,
    poll: float = 0.5,
) -> bool:
    """Passes every batch of events to every handler until the receiver has stopped and all
    events were taken. Once ``stop_requested`` is set (checked at least every ``poll``
    seconds), stops the receiver gracefully and keeps draining. A handler that raises is
    logged and does not stop the loop. Returns whether the receiver stopped because it was
    asked to (False: it stopped by itself)."""
    stopping = False
    while True:
        if not stopping and stop_requested.is_set():
            stopping = True
            receiver.stop(shutdown_timeout)
            log.info("stopping", extra={"timeout": shutdown_timeout})
        batch = receiver.next_batch(max_events, poll)
        if batch is None:
            return stopping
        for handler in handlers if batch else ():
            try:
                handler(batch)
            except Exception:
                log.exception("event handler failed", extra={"handler": _name(handler)})


def _name(handler: EventHandler) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)


# --- serve -------------------------------------------------------------------------------


def _config_error(problems: Sequence[str]) -> int:
    for problem in problems:
        print(f"oxidip: configuration error: {problem}", file=sys.stderr)
    return EXIT_CONFIG


def serve(args: argparse.Namespace) -> int:
    """Runs the receiver until SIGTERM or SIGINT."""
    try:
        config = Config.from_env(warn_unknown=False)
    except ConfigError as error:
        return _config_error(error.problems)
    logs.configure(config.log_level, config.log_format)
    warn_unknown_variables()
    try:
        receiver = Receiver(config)
    except ValueError as error:  # the core's own range checks; Config should catch all first
        return _config_error([str(error)])

    stop_requested = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            receiver.start()
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
        started = time.monotonic()
        log.info(
            "listening",
            extra={
                "host": config.listener_host,
                "port": receiver.port,
                "aet": config.scp_aet,
                "files_root": config.core().files_root,
                "version": __version__,
            },
        )
        try:
            requested = consume(
                receiver, event_handlers(config), stop_requested, config.shutdown_timeout
            )
        except Exception:
            log.exception("receiver failed")
            with contextlib.suppress(Exception):  # the first error is the one to report
                receiver.stop(0)
            return EXIT_FAILURE
        uptime = round(time.monotonic() - started, 3)
        if not requested:
            log.error("receiver stopped unexpectedly", extra={"uptime": uptime})
            return EXIT_FAILURE
        log.info("stopped", extra={"uptime": uptime})
        return EXIT_OK
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _environment_help() -> str:
    lines = ["configuration (environment variables, default in brackets):"]
    for variable in VARIABLES:
        lines.append(f"  {variable.name} [{variable.default or 'empty'}]")
        text = f"{variable.help} Accepts {variable.accepts}."
        lines.extend(
            textwrap.wrap(text, width=96, initial_indent=" " * 6, subsequent_indent=" " * 6)
        )
    return "\n".join(lines)


def _add_serve(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOM receiver",
        description="Receives DICOM instances (C-STORE) and stores them under"
        " OXIDIP_FILES_ROOT until SIGTERM or SIGINT. Configured by the environment only.",
        epilog=_environment_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=serve)


#: Adds one subcommand each; the parser built sets ``func`` to its handler.
SUBCOMMANDS: list[Callable[[Subparsers], None]] = [_add_serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="oxidip", description="High-throughput DICOM C-STORE receiver."
    )
    parser.add_argument("--version", action="version", version=f"oxidip {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
