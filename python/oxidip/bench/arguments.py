"""The command-line options every comparison of ``oxidip bench`` shares (``compare``,
``forward``, ``pull``): which workloads, how many repetitions, where the data goes and where
the report goes. Each adds its own beside them."""

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from oxidip.bench.model import Workload

__all__ = ["Subparsers", "add_comparison", "add_run_arguments"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_comparison(
    commands: Subparsers,
    name: str,
    summary: str,
    doc: str | None,
    run: Callable[[argparse.Namespace], int],
) -> argparse.ArgumentParser:
    """Registers the comparison ``name`` under ``oxidip bench``: ``summary`` for the list of
    commands, the first paragraph of ``doc`` as its description; ``run`` is its ``func``."""
    parser = commands.add_parser(name, help=summary, description=(doc or "").split("\n\n")[0])
    parser.set_defaults(func=run)
    return parser


def add_run_arguments(
    parser: argparse.ArgumentParser, workloads: Sequence[Workload], storage_help: str
) -> None:
    """--workloads, --repeats, --quick, --storage (``storage_help``: what goes there),
    --output-dir and --no-chart."""
    keys = ", ".join(w.key for w in workloads)
    parser.add_argument(
        "--workloads",
        default=",".join(w.key for w in workloads),
        help=f"comma-separated workloads among {keys} (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="repetitions (default: 3)")
    parser.add_argument(
        "--quick", action="store_true", help="small versions of every workload (smoke test)"
    )
    parser.add_argument(
        "--storage",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help=storage_help,
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("bench/results"),
        help="where the report goes (default: %(default)s)",
    )
    parser.add_argument(
        "--no-chart",
        action="store_true",
        help="write the report and its data without the chart (which needs matplotlib)",
    )
