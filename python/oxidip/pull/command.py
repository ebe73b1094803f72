"""``oxidip pull``: the command (its parser and its run), composing the package's parts:
queries (``query``), the C-FIND walk (``find``), the pull job in the registry, the
retrievals (``schedule``, ``retrieve``), the display (``progress``) and the report
(``report``).

Exit status: 0 every series complete (or ``--find-only`` listed what matched), 1 otherwise
(a series incomplete, unknown or failed, a C-FIND or the registry failing), 2 bad arguments
or configuration (the message names the flag or the variable).
"""

import argparse
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import msgspec

from oxidip import _core, logs, serve
from oxidip.completeness import ExpectedCount
from oxidip.config import EXIT_CONFIG, Config, ConfigError, report_config_error
from oxidip.logs import one_line
from oxidip.nodes import NodeDirectory, RemoteNode
from oxidip.pipeline import Pipeline
from oxidip.pull.classes import SopClassesAhead
from oxidip.pull.find import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    PATIENT_ROOT,
    STUDY_ROOT,
    Finder,
    FindError,
    InformationModel,
    encode_identifier,
)
from oxidip.pull.progress import Display, LogDisplay, TerminalDisplay
from oxidip.pull.query import (
    Query,
    QueryError,
    canonical,
    load_queries,
    queries_of_canonical,
    query_from_keys,
)
from oxidip.pull.report import find_csv, find_json, result_of, table
from oxidip.pull.retrieve import Retrieval
from oxidip.pull.schedule import Limits, Polled, Registrations, Scheduler
from oxidip.receiver import Receiver, new_process_id
from oxidip.registry import (
    ExpectedStatus,
    PullRow,
    PullSeriesRow,
    PullSeriesState,
    Registry,
    RetryPolicy,
    database_errors,
)

__all__ = ["add_parser", "run"]

log = logging.getLogger("oxidip.pull")

EXIT_OK = 0
EXIT_FAILURE = 1

#: Storage SOP classes a C-GET proposes when the PACS says none for a series (neither
#: SOPClassesInSeries nor an IMAGE-level C-FIND): the common image and document classes.
COMMON_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG presentation
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
)

#: Transfer syntaxes a C-GET's storage contexts propose, so that the PACS can send what it
#: holds as it holds it (the receiver stores any; uncompressed only when it is so set).
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
COMPRESSED = (
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.4.51",  # JPEG extended
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE
    "1.2.840.10008.1.2.1.99",  # Deflated
)
#: At most this many storage contexts besides the C-GET's own (128 in all, PS3.8 9.3.2.2).
MAX_STORAGE_CONTEXTS = 127


def _number(kind: type[int] | type[float], minimum: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not value >= minimum:  # NaN too
            raise argparse.ArgumentTypeError(f"{text!r}: at least {minimum:g}")
        return value

    return parse


def add_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Registers ``oxidip pull``; the parser sets ``func``."""
    parser = subparsers.add_parser(
        "pull",
        help="query a PACS and retrieve every matching series",
        description="C-FINDs the PACS down to SERIES level with the queries (a pacsnpull JSON"
        " file, or -k flags), then retrieves each series (C-MOVE to oxidip's AE title, or"
        " C-GET), shows progress, and reports per series whether it is complete: registered"
        " as many instances as the PACS's NumberOfSeriesRelatedInstances. The pull is kept"
        " in the registry: run it again (same queries, or --resume ID) and series already"
        " complete are skipped.",
        epilog="exit status: 0 every series complete, 1 otherwise, 2 bad arguments or"
        " configuration. Configuration as for oxidip serve (OXIDIP_PACS_ADDRESS,"
        " OXIDIP_SCP_AET, OXIDIP_FILES_ROOT, OXIDIP_DB_CONNECTION...).",
    )
    parser.add_argument(
        "queries",
        nargs="?",
        type=Path,
        metavar="QUERIES.json",
        help="pacsnpull's queries: a JSON list of objects keyword -> value, each with"
        " QueryRetrieveLevel PATIENT, STUDY or SERIES",
    )
    parser.add_argument(
        "-k",
        dest="keys",
        action="append",
        default=[],
        metavar="Keyword=value",
        help="a matching key of one query given by flags (repeat: -k PatientID=123"
        " -k StudyDate=20240101-20240131 -k Modality=CT)",
    )
    parser.add_argument("--resume", type=int, metavar="ID", help="run pull ID again")
    parser.add_argument(
        "--pacs",
        metavar="AET[=host:port]",
        help="the PACS: an AE title of OXIDIP_PACS_ADDRESS, or AET=host:port (default: the"
        " only entry of OXIDIP_PACS_ADDRESS)",
    )
    parser.add_argument(
        "--method",
        choices=("move", "get"),
        default="move",
        help="C-MOVE to oxidip's AE title (default; the receiver must run: oxidip serve, or"
        " --serve) or C-GET (on the pull's own association, always received in-process)",
    )
    parser.add_argument(
        "--patient-root",
        action="store_true",
        help="query and retrieve with the Patient Root model (default Study Root)",
    )
    parser.add_argument(
        "--find-only",
        action="store_true",
        help="list the matching series (CSV, or JSON lines with --json) without retrieving",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per series at the end (per line)",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="run oxidip serve in this process for the duration of the pull",
    )
    parser.add_argument(
        "--concurrency",
        type=_number(int, 1, "a whole number"),
        default=1,
        metavar="N",
        help="series retrieved at once (default 1)",
    )
    parser.add_argument(
        "--pause",
        type=_number(float, 0, "a number of seconds"),
        default=0.0,
        metavar="S",
        help="seconds between two retrievals (default 0)",
    )
    parser.add_argument(
        "--stall",
        type=_number(float, 0.1, "a number of seconds"),
        default=120.0,
        metavar="S",
        help="a retrieval with no progress (no pending response, no instance registered)"
        " for S seconds is cancelled and retried (default 120)",
    )
    parser.add_argument(
        "--retries",
        type=_number(int, 0, "a whole number"),
        default=2,
        metavar="N",
        help="attempts after the first for a series that failed transiently, with backoff"
        " (default 2)",
    )
    parser.add_argument(
        "--timeout",
        type=_number(float, 0.1, "a number of seconds"),
        default=30.0,
        metavar="S",
        help="seconds to connect, for each C-FIND and each write (default 30)",
    )
    parser.set_defaults(func=run)


class UsageError(Exception):
    """A bad argument: the message names the flag; exit status 2."""


def resolve_pacs(text: str | None, directory: NodeDirectory, remembered: str | None) -> RemoteNode:
    """The PACS of ``--pacs`` (an AE title of the directory or ``AET=host:port``), else
    the pull's own (``remembered``), else the directory's only entry."""
    if text is not None and "=" in text:
        try:
            (node,) = NodeDirectory.parse(text).values()
        except ValueError as error:
            raise UsageError(f"--pacs {text!r}: {error}") from None
        return node
    aet = text or remembered
    if aet is None:
        if len(directory) == 1:
            return next(iter(directory.values()))
        known = ", ".join(directory) or "none"
        raise UsageError(
            "--pacs: say which PACS (an AE title of OXIDIP_PACS_ADDRESS, or AET=host:port);"
            f" OXIDIP_PACS_ADDRESS has {known}"
        )
    if aet not in directory:
        flag = "--pacs" if text else f"--resume (pull of {aet})"
        raise UsageError(
            f"{flag}: {aet!r} is not in OXIDIP_PACS_ADDRESS ({', '.join(directory) or 'empty'});"
            " add it there or give --pacs AET=host:port"
        )
    return directory[aet]


def _queries(args: argparse.Namespace) -> list[Query]:
    given = [bool(args.queries), bool(args.keys), args.resume is not None]
    if sum(given) != 1:
        raise UsageError("give one of: a QUERIES.json file, -k Keyword=value flags, --resume ID")
    try:
        if args.queries:
            return load_queries(args.queries)
        if args.keys:
            return [query_from_keys(args.keys)]
    except QueryError as error:
        raise UsageError(str(error)) from None
    return []


def run(args: argparse.Namespace) -> int:
    """``oxidip pull``; returns the exit status."""
    try:
        config = Config.from_env(warn_unknown=False)
    except ConfigError as error:
        return report_config_error(error.problems)
    logs.configure(config.log_level, config.log_format)
    try:
        queries = _queries(args)
        directory = NodeDirectory.parse(config.pacs_address)
        pacs = resolve_pacs(args.pacs, directory, None) if args.resume is None else None
    except UsageError as error:
        return _usage(str(error))
    except ValueError as error:  # the directory: Config checked it already
        return report_config_error([f"OXIDIP_PACS_ADDRESS: {error}"])
    model = PATIENT_ROOT if args.patient_root else STUDY_ROOT
    if args.find_only:
        if pacs is None:
            return _usage("--find-only: give the queries (a file or -k), not --resume")
        return _find_only(args, Finder(pacs, config.scp_aet, model, args.timeout), queries)
    try:
        registry = serve.open_migrated_registry(config, None)
    except ValueError as error:
        return report_config_error([f"OXIDIP_DB_CONNECTION: {error}"])
    except database_errors() + (OSError,) as error:
        print(f"oxidip pull: cannot open the registry: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        return _pull(args, config, registry, directory, pacs, model, queries)
    except UsageError as error:
        return _usage(str(error))
    except database_errors() as error:
        print(f"oxidip pull: registry failed: {one_line(error)}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        registry.close()


def _usage(message: str) -> int:
    print(f"oxidip pull: {message}", file=sys.stderr)
    return EXIT_CONFIG


def _find_only(args: argparse.Namespace, finder: Finder, queries: Sequence[Query]) -> int:
    try:
        found = finder.series(queries)
    except FindError as error:
        print(f"oxidip pull: {error}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(find_json(found) if args.json else find_csv(found))
    return EXIT_OK


def _pull(
    args: argparse.Namespace,
    config: Config,
    registry: Registry,
    directory: NodeDirectory,
    pacs: RemoteNode | None,
    model: InformationModel,
    queries: list[Query],
) -> int:
    if args.resume is not None:
        resumed = registry.get_pull(args.resume)
        if resumed is None:
            raise UsageError(f"--resume {args.resume}: no such pull in the registry")
        queries = queries_of_canonical(resumed.queries)
        pacs = resolve_pacs(args.pacs, directory, resumed.pacs)
    assert pacs is not None
    text = canonical(queries)
    pull = registry.get_pull(args.resume) if args.resume is not None else None
    pull = pull or registry.find_pull(text, pacs.aet)
    pull = pull or registry.create_pull(text, pacs.aet, args.method, time.time())
    finder = Finder(
        pacs,
        config.scp_aet,
        model,
        args.timeout,
        on_find=lambda level, n: log.info(
            "C-FIND done", extra={"level": level, "matches": n, "pacs": str(pacs)}
        ),
    )
    try:
        found = finder.series(queries)
    except FindError as error:
        print(f"oxidip pull: {error}", file=sys.stderr)
        return EXIT_FAILURE
    if args.method == "move" and not args.serve:
        _check_receiver(config)
    rows = registry.restart_pull(pull.id, args.method, found, time.time())
    log.info(
        "pull started",
        extra={
            "pull": pull.id,
            "pacs": str(pacs),
            "method": args.method,
            "series": len(rows),
            "already_complete": sum(r.state is PullSeriesState.COMPLETE for r in rows),
        },
    )
    display: Display = (
        TerminalDisplay(rows, sys.stderr) if sys.stderr.isatty() else LogDisplay(rows)
    )
    stall = float(args.stall)
    grace = max(1.0, min(stall, 10.0))
    limits = Limits(
        concurrency=int(args.concurrency),
        pause=float(args.pause),
        stall=stall,
        retries=int(args.retries),
        cancel_grace=grace,
        retry=RetryPolicy(base=1.0, maximum=60.0, attempts=int(args.retries) + 1),
        settle=10.0,
    )
    idle = stall + 2 * grace  # the core's own bound: the watchdog cancels first
    with contextlib.ExitStack() as stack:
        serving = None
        if args.serve or args.method == "get":
            serving = stack.enter_context(_in_process_serve(config, full=args.serve))
        stop = stack.enter_context(serve.stop_requested_by_signals())
        receiver = serving.receiver if serving is not None else None
        if serving is not None:
            # Its pipeline need not ask the PACS for the counts this pull's C-FIND found.
            serving.pipeline.lookup.already_known(_expected_counts(rows, pacs))
        ahead = None
        if args.method == "get":
            ahead = SopClassesAhead(finder, rows, int(args.concurrency))
            stack.callback(ahead.close)
        starter = _starter(args, config, pacs, model, ahead, receiver, idle)
        Scheduler(
            registry=registry,
            pull=pull,
            pacs=pacs,
            owner=new_process_id(),
            start=starter,
            method=args.method,
            destination=config.scp_aet,
            limits=limits,
            display=display,
            stop=stop,
            registrations=serving if serving is not None else Polled(),
        ).run()
        display.close()
    return _report(args, config, registry, pull)


def _expected_counts(rows: Sequence[PullSeriesRow], pacs: RemoteNode) -> list[ExpectedCount]:
    """The series' NumberOfSeriesRelatedInstances as the pull's C-FIND found them, as
    answers of the receiver's expected-count lookup (series sent by the PACS's AE title)."""
    found = f"NumberOfSeriesRelatedInstances from oxidip pull's C-FIND of {pacs}"
    return [
        ExpectedCount(
            row.series_instance_uid,
            row.expected,
            ExpectedStatus.UNKNOWN if row.expected is None else ExpectedStatus.KNOWN,
            f"no {found}" if row.expected is None else f"{row.expected}: {found}",
            pacs.aet,
        )
        for row in rows
    ]


def _check_receiver(config: Config) -> None:
    """Warns when no receiver answers a C-ECHO where this configuration's ``oxidip serve``
    listens: a C-MOVE's instances would have nowhere to go (the receiver may also run on
    another host, known to the PACS: a warning, not an error)."""
    host = config.listener_host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    try:
        _core.echo(host, config.listener_port, config.scp_aet, config.scp_aet, 2.0)
    except OSError as error:
        if "rejected" not in str(error):  # a rejection: something listens
            log.warning(
                "no receiver answers here: start oxidip serve, or use --serve",
                extra={"host": host, "port": config.listener_port, "error": str(error)},
            )


def _report(args: argparse.Namespace, config: Config, registry: Registry, pull: PullRow) -> int:
    rows = registry.pull_series(pull.id)
    received = registry.received([r.series_instance_uid for r in rows], _sender(pull))
    results = [
        result_of(row, received.get(row.series_instance_uid), config.core().files_root)
        for row in rows
    ]
    if args.json:
        encoder = msgspec.json.Encoder()
        for result in results:
            sys.stdout.write(encoder.encode(result).decode() + "\n")
    elif results:
        print(table(results))
    else:
        print("no series matched", file=sys.stderr)
    complete = all(r.state == PullSeriesState.COMPLETE.value for r in results)
    return EXIT_OK if complete else EXIT_FAILURE


def _sender(pull: PullRow) -> str:
    """The calling AE title of what the PACS sends: its own AE title (a C-MOVE's
    sub-operations, PS3.4 C.4.2.2.1; a C-GET's C-STOREs are recorded so as well)."""
    return pull.pacs


def _identifier(model: InformationModel, row: PullSeriesRow) -> bytes:
    """The SERIES-level identifier of one series (PS3.4 C.4.2.1.4: unique keys only)."""
    keys = {
        "QueryRetrieveLevel": "SERIES",
        "StudyInstanceUID": row.study_instance_uid,
        "SeriesInstanceUID": row.series_instance_uid,
    }
    if model is PATIENT_ROOT:
        keys = {"PatientID": row.patient_id, **keys}
    return encode_identifier(keys)


def _starter(
    args: argparse.Namespace,
    config: Config,
    pacs: RemoteNode,
    model: InformationModel,
    ahead: SopClassesAhead | None,
    receiver: Receiver | None,
    idle: float,
) -> Callable[[PullSeriesRow], Retrieval]:
    """How one series' retrieval starts: ``_core.move`` or the receiver's C-GET."""
    timeout = float(args.timeout)
    if args.method == "move":

        def move(row: PullSeriesRow) -> Retrieval:
            return _core.move(
                pacs.host,
                pacs.port,
                config.scp_aet,
                pacs.aet,
                model.move,
                _identifier(model, row),
                EXPLICIT_VR_LITTLE_ENDIAN,
                config.scp_aet,
                timeout,
                idle,
            )

        return move
    assert receiver is not None and ahead is not None
    syntaxes = list(UNCOMPRESSED if config.scp_uncompressed_only else UNCOMPRESSED + COMPRESSED)

    def get(row: PullSeriesRow) -> Retrieval:
        classes: list[str] = []
        try:
            classes = ahead.classes(row)
        except FindError as error:
            log.info(
                "SOP classes of the series not found: proposing the common ones",
                extra={"series_instance_uid": row.series_instance_uid, "why": str(error)},
            )
        classes = (classes or list(COMMON_STORAGE))[:MAX_STORAGE_CONTEXTS]
        return receiver.core.get(
            pacs.host,
            pacs.port,
            pacs.aet,
            model.get,
            _identifier(model, row),
            EXPLICIT_VR_LITTLE_ENDIAN,
            classes,
            syntaxes,
            timeout,
            idle,
        )

    return get


class Serving(Registrations):
    """The in-process receiver and its pipeline: a pull waits on their registrations."""

    def __init__(self, receiver: Receiver, pipeline: Pipeline) -> None:
        self.receiver = receiver
        self.pipeline = pipeline

    def jobs_done(self) -> int:
        return self.pipeline.registrar.jobs_done

    def wait_done(self, seen: int, timeout: float) -> None:
        self.pipeline.registrar.wait_done(seen, timeout)

    def quiet(self) -> bool:
        """No association open (a C-MOVE's sub-operations all delivered), and every stored
        instance registered (the journal's backlog: acknowledged once committed)."""
        metrics = self.receiver.metrics()
        return metrics.associations_open == 0 and metrics.journal_backlog == 0


@contextlib.contextmanager
def _in_process_serve(config: Config, *, full: bool) -> Iterator[Serving]:
    """``oxidip serve`` in this process (a thread) for the duration: the receiver and its
    pipeline (registration, hooks, notifications, forwarding) as configured. ``full``
    False (a C-GET without ``--serve``): it listens on a port of its own choosing and
    without the HTTP endpoint, so as not to take those of a running ``oxidip serve``."""
    if not full:
        config = msgspec.structs.replace(config, listener_port=0, http_port=None)
    prepared = serve.prepare(config)
    if isinstance(prepared, int):
        raise UsageError("the in-process receiver cannot start (see above)")
    receiver, pipeline = prepared
    stop = threading.Event()
    started = threading.Event()
    status: list[int] = []
    thread = threading.Thread(
        target=lambda: status.append(serve.serve_until(config, receiver, pipeline, stop, started)),
        name="oxidip-pull-serve",
        daemon=True,
    )
    thread.start()
    if not started.wait(60) or status:  # ended already: it could not start (logged)
        raise UsageError("the in-process receiver cannot start (see above)")
    try:
        yield Serving(receiver, pipeline)
    finally:
        stop.set()
        # Stopped from here, at once: the serve loop would see ``stop`` only when its wait
        # for events ends (up to its poll, 0.5 s); the receiver's end ends that wait.
        receiver.stop()
        thread.join(config.shutdown_timeout + 30)
