"""``oxidip series``: the series of the registry with their expected and received counts and
state, as an aligned table for people or (``--json``) one JSON object per line for scripts,
with the forwarding jobs of each series (``forwarded``).

The registry is the one ``oxidip serve`` uses with the same environment: SQLite under
``OXIDIP_FILES_ROOT``, or the PostgreSQL database of ``OXIDIP_DB_CONNECTION``.
"""

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeAlias

import msgspec

from oxidip.config import EXIT_CONFIG, Config, ConfigError, report_config_error
from oxidip.registry import (
    ForwardSummary,
    Registry,
    SeriesRow,
    SeriesState,
    database_errors,
    open_registry,
    sqlite_path,
)
from oxidip.text_table import aligned

__all__ = [
    "SeriesJson",
    "add_parser",
    "format_age",
    "format_table",
    "run",
    "run_on_registry",
]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK = 0
EXIT_FAILURE = 1

#: Longest series description shown in the table (longer ones are cut, ending with "...").
_DESCRIPTION_WIDTH = 32

_HEADERS = (
    "SERIES INSTANCE UID",
    "AE",
    "STUDY INSTANCE UID",
    "MODALITY",
    "DESCRIPTION",
    "EXPECTED",
    "RECEIVED",
    "STATE",
    "AGE",
)
#: Columns aligned to the right (numbers).
_RIGHT = frozenset({"EXPECTED", "RECEIVED", "AGE"})


class SeriesJson(SeriesRow, frozen=True):
    """The ``--json`` line: the series and its forwarding jobs."""

    #: One per job (destination, rule, state, delivered of total), oldest first.
    forwarded: list[ForwardSummary] = msgspec.field(default_factory=list)


def add_parser(subparsers: Subparsers) -> None:
    """Registers ``oxidip series``; the parser sets ``func`` to ``run``."""
    parser = subparsers.add_parser(
        "series",
        help="list series with their expected and received counts and state",
        description="Lists the series of the registry (the one `oxidip serve` uses with the"
        " same environment), oldest first: expected count (from the sending PACS; '?' with"
        " the reason when unknown), instances received, state and time since the last"
        " instance arrived.",
        epilog="states: receiving, complete (received == expected), incomplete (finished"
        " with fewer), overfull (more than expected), finalized-unknown (finished, expected"
        " count unknown).",
    )
    parser.add_argument(
        "--state",
        choices=[state.value for state in SeriesState],
        help="only series in this state",
    )
    parser.add_argument("--aet", metavar="AET", help="only series sent by this calling AE title")
    parser.add_argument("--study", metavar="UID", help="only series of this Study Instance UID")
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per series and line (fields: those of the registry's series,"
        " and forwarded: its forwarding jobs with destination, rule, state, delivered, total)",
    )
    parser.set_defaults(func=run)


def format_age(seconds: float) -> str:
    """A short duration: 42s, 5m, 3h, 2d (rounded down; negative counts as 0)."""
    value = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size:
            return f"{value // size}{unit}"
    return f"{value}s"


def _expected(row: SeriesRow) -> str:
    return str(row.expected) if row.expected is not None else f"? ({row.expected_status})"


def _description(text: str | None) -> str:
    text = (text or "").replace("\n", " ")
    if len(text) > _DESCRIPTION_WIDTH:
        return text[: _DESCRIPTION_WIDTH - 3].rstrip() + "..."
    return text


def format_table(rows: Sequence[SeriesRow], now: float) -> str:
    """The rows as an aligned table with a header line (no trailing spaces)."""
    lines: list[list[str]] = []
    for row in rows:
        lines.append(
            [
                row.series_instance_uid,
                row.calling_aet,
                row.study_instance_uid,
                row.modality or "",
                _description(row.series_description),
                _expected(row),
                str(row.received),
                row.state,
                format_age(now - row.last_received_at),
            ]
        )
    return aligned(_HEADERS, lines, _RIGHT)


def _fail(command: str, message: str, status: int) -> int:
    print(f"oxidip {command}: {message}", file=sys.stderr)
    return status


def run_on_registry(command: str, work: Callable[[Registry], int]) -> int:
    """Runs ``work`` (returning the exit status) on the registry ``oxidip serve`` uses with
    the same environment, brought up to date; a database error is reported as ``oxidip
    COMMAND: ...`` (exit 1), a bad configuration exits 2. Without any SQLite registry yet,
    says so and returns 0 (nothing to show, nothing created)."""
    try:
        config = Config.from_env(warn_unknown=False)
    except ConfigError as error:
        return report_config_error(error.problems)
    connection = config.db_connection
    if connection is None and not sqlite_path(config.files_root).exists():
        # Do not create a database under a files root that may be the wrong one.
        print(
            f"oxidip {command}: no registry at {sqlite_path(config.files_root)}: nothing"
            " registered under this OXIDIP_FILES_ROOT yet",
            file=sys.stderr,
        )
        return EXIT_OK
    try:
        registry = open_registry(connection, config.files_root, pool_size=1)
    except ValueError as error:
        return _fail(command, str(error), EXIT_CONFIG)
    except database_errors() + (OSError,) as error:
        return _fail(command, f"cannot open the registry: {error}", EXIT_FAILURE)
    try:
        registry.migrate()
        return work(registry)
    except database_errors() + (OSError, RuntimeError) as error:
        return _fail(command, f"cannot read the registry: {error}", EXIT_FAILURE)
    finally:
        registry.close()


def run(args: argparse.Namespace) -> int:
    """Prints the series; returns the exit status."""

    def work(registry: Registry) -> int:
        rows = registry.list_series(
            state=args.state, calling_aet=args.aet, study_instance_uid=args.study
        )
        if args.json:
            forwarded = registry.forwarded(
                [(row.series_instance_uid, row.calling_aet) for row in rows]
            )
            encoder = msgspec.json.Encoder()
            for row in rows:
                line = SeriesJson(
                    **msgspec.structs.asdict(row),
                    forwarded=forwarded.get((row.series_instance_uid, row.calling_aet), []),
                )
                sys.stdout.write(encoder.encode(line).decode() + "\n")
        elif rows:
            print(format_table(rows, time.time()))
        else:
            print("no series", file=sys.stderr)
        return EXIT_OK

    return run_on_registry("series", work)
