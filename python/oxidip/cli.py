"""The ``oxidip`` command line: argument parsing only.

Each subcommand is registered by a function in ``SUBCOMMANDS`` that adds its parser and sets
``func`` (returning the exit status): ``serve`` (``oxidip.serve``), ``series``
(``oxidip.series_cli``), ``queue`` (``oxidip.queue_cli``), ``bench`` (``oxidip.bench``),
``reconcile`` (``oxidip.reconcile_cli``), ``routes`` (``oxidip.routes_cli``) and ``pull``
(``oxidip.pull.command``). Their modules are imported only when needed: a command line naming
one imports that one (``oxidip pull`` does not pay ~0.2 s for the bench's numpy and pydicom
pixel handlers); ``oxidip --help`` imports them all.
"""

import argparse
import importlib
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import TypeAlias

from oxidip import __version__
from oxidip.config import VARIABLES

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
    parser.set_defaults(func=_serve_run)


def _serve_run(args: argparse.Namespace) -> int:
    from oxidip import serve

    return serve.run(args)


def _module_parser(module: str) -> Callable[[Subparsers], None]:
    """The ``add_parser`` of ``module``, imported when called."""

    def add(subparsers: Subparsers) -> None:
        adder: Callable[[Subparsers], None] = importlib.import_module(module).add_parser
        adder(subparsers)

    return add


#: Adds one subcommand each, by name; the parser built sets ``func`` to its handler.
SUBCOMMANDS: dict[str, Callable[[Subparsers], None]] = {
    "serve": _add_serve,
    "series": _module_parser("oxidip.series_cli"),
    "queue": _module_parser("oxidip.queue_cli"),
    "bench": _module_parser("oxidip.bench"),
    "reconcile": _module_parser("oxidip.reconcile_cli"),
    "routes": _module_parser("oxidip.routes_cli"),
    "pull": _module_parser("oxidip.pull.command"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``only`` (one of ``SUBCOMMANDS``)."""
    parser = argparse.ArgumentParser(
        prog="oxidip", description="High-throughput DICOM C-STORE receiver."
    )
    parser.add_argument("--version", action="version", version=f"oxidip {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, add in SUBCOMMANDS.items():
        if only is None or name == only:
            add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The first word not an option names the subcommand (``oxidip`` itself has no option
    # taking a value): only its module is imported; otherwise all are, for help and errors.
    named = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(named if named in SUBCOMMANDS else None).parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)
