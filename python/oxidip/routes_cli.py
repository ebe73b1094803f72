"""``oxidip routes``: check a routes file, and try it on DICOM files.

- ``oxidip routes check FILE``: validates it (exit 0 and a summary of its destinations and
  rules, or exit 2 and every mistake, each as ``file:line: key: what is wrong``);
- ``oxidip routes test FILE [--calling-aet X] [--called-aet Y] [--state S] DICOM...``: for
  the series of each DICOM file (read with pydicom, as the registry would record it), which
  rules match and why, and for the others which condition failed (value against pattern).
  The ``route()`` hook is not called.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from oxidip.config import EXIT_CONFIG
from oxidip.registry import SeriesState
from oxidip.routing import FACT_KEYS, Routes, RoutesError, Rule, RuleVerdict

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = ["add_parser", "describe", "run_check", "run_test", "series_facts"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK = 0
EXIT_FAILURE = 1

#: The facts a DICOM file gives (the AE titles come from the command line).
_DATASET_KEYS = tuple(key for key in FACT_KEYS if key not in ("CallingAET", "CalledAET"))


def add_parser(subparsers: Subparsers) -> None:
    """Registers ``oxidip routes check|test``; each parser sets ``func``."""
    parser = subparsers.add_parser(
        "routes",
        help="check a routes file (OXIDIP_ROUTES), or try it on DICOM files",
        description="Validates a routes file, or shows which of its rules match the series of"
        " DICOM files, and why.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="validate a routes file",
        description="Validates a routes file: exit 0 and a summary of its destinations and"
        " rules, or exit 2 and each mistake (file:line: key: what is wrong).",
    )
    check.add_argument("file", type=Path, metavar="FILE", help="the routes file (TOML)")
    check.set_defaults(func=run_check)
    test = commands.add_parser(
        "test",
        help="show which rules match the series of DICOM files, and why",
        description="Reads each DICOM file's patient, study and series attributes and prints,"
        " per series, each rule that matches it (with the values that made it match) and"
        " each that does not (with the condition that failed: value against pattern).",
    )
    test.add_argument("file", type=Path, metavar="FILE", help="the routes file (TOML)")
    test.add_argument("dicom", type=Path, nargs="+", metavar="DICOM", help="DICOM files")
    test.add_argument(
        "--calling-aet", metavar="AET", help="the sender's AE title (CallingAET; default none)"
    )
    test.add_argument(
        "--called-aet", metavar="AET", help="the AE title it called (CalledAET; default none)"
    )
    test.add_argument(
        "--state",
        choices=[state.value for state in SeriesState if state is not SeriesState.RECEIVING],
        default=SeriesState.COMPLETE.value,
        help="the series' final state, for series-complete and series-finalized rules"
        " (default: complete)",
    )
    test.set_defaults(func=run_test)


def _load(path: Path) -> Routes | None:
    try:
        return Routes.load(path)
    except RoutesError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return None


def _conditions(rule: Rule) -> str:
    if not rule.conditions:
        return "any series"
    return ", ".join(f"{c.attribute} = {c.written!r}" for c in rule.conditions)


def describe(routes: Routes) -> str:
    """A summary of ``routes`` for people: destinations, then rules in the order they are
    tried (by trigger, highest priority first)."""
    lines = [f"{routes.source}: {len(routes.destinations)} destinations, {len(routes.rules)} rules"]
    used = {name for rule in routes.rules for name in rule.to}
    for name, destination in routes.destinations.items():
        calling = destination.calling_aet or "OXIDIP_SCP_AET"
        unused = "; no rule sends to it" if name not in used else ""
        lines.append(
            f"  destination {name}: {destination.aet} at {destination.host}:{destination.port}"
            f" (calling AE {calling}, associations at most {destination.max_associations}"
            f"{unused})"
        )
    for rule in routes.ranked:
        extra = f", incomplete {rule.incomplete.value}" if rule.incomplete is not None else ""
        lines.append(
            f"  rule {rule.name}: on {rule.on.value} (priority {rule.priority}{extra})"
            f" when {_conditions(rule)} -> {', '.join(rule.to)}"
        )
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    """``oxidip routes check``: the exit status."""
    routes = _load(args.file)
    if routes is None:
        return EXIT_CONFIG
    print(describe(routes))
    return EXIT_OK


def _text(value: object) -> str | None:
    """An attribute's value as the registry records it: text, values joined by backslash;
    None when empty."""
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):  # MultiValue
        text = "\\".join(str(item) for item in value)
    else:
        text = str(value)
    return text or None


def series_facts(
    dataset: "Dataset", calling_aet: str | None, called_aet: str | None
) -> dict[str, str | None]:
    """The facts rules see for the series of ``dataset``, received from ``calling_aet``."""
    facts: dict[str, str | None] = {key: _text(dataset.get(key)) for key in _DATASET_KEYS}
    facts["CallingAET"] = calling_aet
    facts["CalledAET"] = called_aet
    return facts


def _verdict_lines(verdict: RuleVerdict) -> list[str]:
    head = "MATCH   " if verdict.matched else "no match"
    lines = [
        (
            f"  {head} {verdict.rule} (on {verdict.on.value}, priority {verdict.priority})"
            f" -> {', '.join(verdict.destinations)}"
        )
    ]
    if not verdict.fires:
        lines.append(f"             trigger: {verdict.trigger}")
    for condition in verdict.conditions:
        mark = "ok  " if condition.holds else "FAIL"
        lines.append(f"             {mark} {condition}")
    if verdict.fires and not verdict.conditions:
        lines.append("             no conditions: every series")
    return lines


def run_test(args: argparse.Namespace) -> int:
    """``oxidip routes test``: the exit status (1 when a DICOM file could not be read)."""
    routes = _load(args.file)
    if routes is None:
        return EXIT_CONFIG
    import pydicom  # only here: reading DICOM files is this command's job alone
    from pydicom.errors import InvalidDicomError

    status = EXIT_OK
    series: dict[str, tuple[dict[str, str | None], list[str]]] = {}
    for path in args.dicom:
        try:
            dataset = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=list(_DATASET_KEYS)
            )
        except (OSError, ValueError, InvalidDicomError) as error:  # ValueError: malformed
            print(f"oxidip routes: {path}: cannot read it: {error}", file=sys.stderr)
            status = EXIT_FAILURE
            continue
        facts = series_facts(dataset, args.calling_aet, args.called_aet)
        key = facts["SeriesInstanceUID"] or "(no SeriesInstanceUID)"
        series.setdefault(key, (facts, []))[1].append(path.name)
    for uid, (facts, names) in series.items():
        print(_series_report(routes, uid, facts, names, SeriesState(args.state)))
    return status


def _series_report(
    routes: Routes, uid: str, facts: dict[str, str | None], files: Sequence[str], state: SeriesState
) -> str:
    shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    lines = [
        (
            f"series {uid} ({facts['Modality'] or 'no modality'};"
            f" {len(files)} file{'s' if len(files) > 1 else ''}: {shown};"
            f" state {state.value} for series rules)"
        )
    ]
    verdicts = routes.explain(facts, state)
    for verdict in verdicts:
        lines.extend(_verdict_lines(verdict))
    if not verdicts:
        lines.append("  no rules")
    return "\n".join(lines)
