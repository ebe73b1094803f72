"""``oxidip queue``: the forwarding jobs of the registry, as an aligned table for people or
(``--json``) one JSON object per line for scripts; ``oxidip queue retry`` and ``oxidip queue
cancel`` by job id or by state.

The registry is the one ``oxidip serve`` uses with the same environment (see
``oxidip.series_cli``); a running ``oxidip serve`` picks retried jobs up at its next claim
and stops a cancelled running job when it next renews its lease.
"""

import argparse
import sys
import time
from collections.abc import Sequence

import msgspec

from oxidip.registry import JobRow, JobState, Registry
from oxidip.series_cli import EXIT_FAILURE, EXIT_OK, Subparsers, format_age, run_on_registry
from oxidip.text_table import aligned

__all__ = ["add_parser", "format_jobs", "format_next", "run"]

_HEADERS = (
    "ID",
    "STATE",
    "SERIES INSTANCE UID",
    "AE",
    "DESTINATION",
    "RULE",
    "SENT",
    "ATTEMPTS",
    "NEXT",
    "LAST ERROR",
)
#: Columns aligned to the right (numbers).
_RIGHT = frozenset({"ID", "SENT", "ATTEMPTS"})

#: A command used wrongly (as argparse exits).
EXIT_USAGE = 2

#: Jobs shown by default (the newest); ``--limit 0`` shows them all.
DEFAULT_LIMIT = 200


def add_parser(subparsers: Subparsers) -> None:
    """Registers ``oxidip queue`` (and its ``retry`` and ``cancel``); the parsers set
    ``func``."""
    parser = subparsers.add_parser(
        "queue",
        help="list forwarding jobs; retry or cancel them",
        description="Lists the forwarding jobs of the registry (the one `oxidip serve` uses"
        " with the same environment), oldest first: state, series and sender, destination"
        " and rule, instances sent of the job's total, attempts, when the next attempt is"
        " due and the last error.",
        epilog="states: pending (waiting to be sent), running (being sent), done (every"
        " instance sent; those the destination refused are counted in the error), failed"
        " (waiting for its next attempt), dead (out of attempts, or refused for good: retry"
        " it by hand), held (its destination's circuit is open), cancelled.",
    )
    parser.add_argument(
        "--state",
        action="append",
        choices=[state.value for state in JobState],
        help="only jobs in this state (repeat for several)",
    )
    parser.add_argument("--series", metavar="UID", help="only jobs of this Series Instance UID")
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"the newest N jobs only (default {DEFAULT_LIMIT}; 0: all)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per job and line (id, series_instance_uid, study_instance_uid,"
        " calling_aet, rule, destination, trigger, priority, state, delivered, failed,"
        " warnings, total, attempts, next_attempt_at, last_error, created_at, updated_at,"
        " lease_owner, lease_until; times in unix seconds)",
    )
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(title="actions", metavar="ACTION")
    for name, states, words in (
        (
            "retry",
            (JobState.DEAD, JobState.FAILED, JobState.CANCELLED, JobState.DONE),
            (
                "Sends jobs again from their first attempt, only their instances not"
                " delivered: dead, failed and cancelled jobs, and done jobs with instances"
                " the destination refused."
            ),
        ),
        (
            "cancel",
            (JobState.PENDING, JobState.RUNNING, JobState.FAILED, JobState.HELD, JobState.DEAD),
            "Cancels jobs that are not done: they are not sent (a running one is stopped).",
        ),
    ):
        action = actions.add_parser(name, help=words.split(":")[0].lower(), description=words)
        action.add_argument("ids", nargs="*", type=int, metavar="ID", help="job ids")
        action.add_argument(
            "--state", choices=[state.value for state in states], help="every job in this state"
        )
        action.set_defaults(func=run_action, action=name)


def format_next(row: JobRow, now: float) -> str:
    """When the job is next tried, in words: "in 2m", "due" (at the next claim), "" when no
    attempt is scheduled."""
    if row.next_attempt_at is None:
        return ""
    if row.next_attempt_at <= now:
        return "due"
    return f"in {format_age(row.next_attempt_at - now)}"


def _sent(row: JobRow) -> str:
    return f"{row.delivered}/{row.total}" + (f" ({row.failed} failed)" if row.failed else "")


def format_jobs(rows: Sequence[JobRow], now: float) -> str:
    """The jobs as an aligned table with a header line (no trailing spaces)."""
    lines: list[list[str]] = []
    for row in rows:
        lines.append(
            [
                str(row.id),
                row.state,
                row.series_instance_uid,
                row.calling_aet,
                row.destination,
                row.rule,
                _sent(row),
                str(row.attempts),
                format_next(row, now),
                " ".join(row.last_error.split()),
            ]
        )
    return aligned(_HEADERS, lines, _RIGHT)


def run(args: argparse.Namespace) -> int:
    """Prints the jobs (and the destinations held); returns the exit status."""

    def work(registry: Registry) -> int:
        rows = registry.list_jobs(states=args.state, series=args.series, limit=args.limit or None)
        if args.json:
            encoder = msgspec.json.Encoder()
            for row in rows:
                sys.stdout.write(encoder.encode(row).decode() + "\n")
            return EXIT_OK
        if rows:
            print(format_jobs(rows, time.time()))
        else:
            print("no forwarding jobs", file=sys.stderr)
        for name, reason in registry.held_destinations().items():
            print(f"destination {name} held: {reason}")
        return EXIT_OK

    return run_on_registry("queue", work)


def run_action(args: argparse.Namespace) -> int:
    """``retry`` or ``cancel`` the jobs named; returns the exit status (1 when ids were
    given and none of them could be)."""
    command = f"queue {args.action}"
    if bool(args.ids) == bool(args.state):
        print(f"oxidip {command}: give job ids or --state (one of them)", file=sys.stderr)
        return EXIT_USAGE

    def work(registry: Registry) -> int:
        ids = args.ids or None
        if args.action == "retry":
            count = registry.retry_jobs(ids, args.state, now=time.time())
        else:
            count = registry.cancel_jobs(ids, args.state)
        done = "retried" if args.action == "retry" else "cancelled"
        print(f"{count} job{'' if count == 1 else 's'} {done}")
        if ids and count == 0:
            print(
                f"oxidip {command}: no job among {', '.join(map(str, ids))} could be {done}"
                " (unknown ids, or not in a state that allows it: see oxidip queue)",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        return EXIT_OK

    return run_on_registry(command, work)
