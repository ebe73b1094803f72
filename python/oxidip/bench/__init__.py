"""``oxidip bench``: the load generator (``send``), the side-by-side comparison of
receivers (``compare``), of senders forwarding stored files (``forward``) and of
retrieves from a PACS (``pull``). The compared receivers, their process measurements and the report
live here too, so that an installed oxidip can benchmark itself against its peers."""

import argparse
from typing import TypeAlias

from oxidip.bench import compare, forward, pull, send

__all__ = ["add_parser"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_parser(subparsers: Subparsers) -> None:
    """Registers ``oxidip bench`` and its subcommands."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark tools (load generator, comparison with other receivers and senders)",
        description="Benchmark tools.",
    )
    commands = bench.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    send.add_parser(commands)
    compare.add_parser(commands)
    forward.add_parser(commands)
    pull.add_parser(commands)
