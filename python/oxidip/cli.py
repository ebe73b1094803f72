"""The ``oxidip`` command line: argument parsing only.

Each subcommand is registered by a function in ``SUBCOMMANDS`` that adds its parser and sets
``func`` (returning the exit status): ``serve`` (``oxidip.serve``), ``series``
(``oxidip.series_cli``), ``queue`` (``oxidip.queue_cli``), ``bench`` (``oxidip.bench``),
``reconcile`` (``oxidip.reconcile_cli``), ``routes`` (``oxidip.routes_cli``) and ``pull``
(``oxidip.pull.command``).
"""

import argparse
import textwrap
from collections.abc import Callable, Sequence
from typing import TypeAlias

from oxidip import __version__, bench, queue_cli, reconcile_cli, routes_cli, series_cli, serve
from oxidip.config import VARIABLES
from oxidip.pull import command as pull_command

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


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
    parser.set_defaults(func=serve.run)


#: Adds one subcommand each; the parser built sets ``func`` to its handler.
SUBCOMMANDS: list[Callable[[Subparsers], None]] = [
    _add_serve,
    series_cli.add_parser,
    queue_cli.add_parser,
    bench.add_parser,
    reconcile_cli.add_parser,
    routes_cli.add_parser,
    pull_command.add_parser,
]


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
