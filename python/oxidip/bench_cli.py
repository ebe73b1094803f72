"""``oxidip bench send``: drives any Storage SCP with the Rust load generator
(``_core.send_load``): K concurrent associations sending N Secondary Capture instances of about
SIZE bytes, generated in memory with fresh UIDs, and reports throughput, failures and the
per-instance C-STORE round-trip latency.
"""

import argparse
import sys
from typing import TypeAlias

import msgspec

from oxidip import _core
from oxidip._boundary import LoadOptions, LoadReport

__all__ = ["add_parser", "format_report", "run_send"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK = 0
#: Some instances were not stored.
EXIT_FAILURE = 1
EXIT_USAGE = 2

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def add_parser(subparsers: Subparsers) -> None:
    """Registers ``oxidip bench`` and its ``send`` subcommand (sets ``func``)."""
    bench = subparsers.add_parser(
        "bench",
        help="benchmark tools (load generator)",
        description="Benchmark tools.",
    )
    commands = bench.add_subparsers(dest="bench_command", metavar="COMMAND", required=True)
    send = commands.add_parser(
        "send",
        help="send generated instances to a Storage SCP and report throughput and latency",
        description="Sends N Secondary Capture instances of about SIZE bytes, generated in"
        " memory with fresh UIDs (one study per run, one series per association), over K"
        " concurrent associations to any Storage SCP; reports instances/s, MB/s, failures"
        " and C-STORE round-trip latency percentiles. Exit status 1 when any instance was"
        " not stored.",
    )
    send.add_argument("--host", default="127.0.0.1", help="SCP host (default: %(default)s)")
    send.add_argument("--port", type=int, required=True, help="SCP port")
    send.add_argument("--aet", default="OXIDIP", help="called AE title (default: %(default)s)")
    send.add_argument(
        "--calling-aet", default="OXIDIP-BENCH", help="calling AE title (default: %(default)s)"
    )
    send.add_argument(
        "--associations",
        type=int,
        default=1,
        metavar="K",
        help="concurrent associations (default: %(default)s)",
    )
    send.add_argument(
        "--instances",
        type=int,
        default=1000,
        metavar="N",
        help="instances in all, spread over the associations (default: %(default)s)",
    )
    send.add_argument(
        "--size",
        type=int,
        default=2048,
        metavar="BYTES",
        help="approximate data set size (default: %(default)s)",
    )
    send.add_argument(
        "--transfer-syntax",
        default=EXPLICIT_VR_LITTLE_ENDIAN,
        metavar="UID",
        help="explicit (default) or implicit (1.2.840.10008.1.2) VR little endian",
    )
    send.add_argument(
        "--max-pdu",
        type=int,
        default=16384,
        metavar="N",
        help="maximum PDU length we accept; 0 = unlimited (default: %(default)s)",
    )
    send.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for the peer at each step (default: %(default)s)",
    )
    send.add_argument("--json", action="store_true", help="print the report as one JSON object")
    send.set_defaults(func=run_send)


def format_report(report: LoadReport) -> str:
    """The report for people: throughput, failures, latency percentiles."""
    seconds = report.seconds or float("nan")
    stored = (
        f"instances   {report.instances} stored, {report.failures} failed in {report.seconds:.3f} s"
    )
    rate = (
        f"throughput  {report.instances / seconds:.1f} instances/s,"
        f" {report.bytes / seconds / 1e6:.2f} MB/s"
    )
    latency = (
        f"latency ms  p50 {report.latency_p50_ms:.3f}  p90 {report.latency_p90_ms:.3f}"
        f"  p99 {report.latency_p99_ms:.3f}  max {report.latency_max_ms:.3f}"
    )
    lines = [stored, rate, latency]
    if report.statuses:
        statuses = ", ".join(f"{status:04X}H x{n}" for status, n in sorted(report.statuses.items()))
        lines.append(f"statuses    {statuses}")
    lines.extend(f"error       {error}" for error in report.errors)
    return "\n".join(lines)


def run_send(args: argparse.Namespace) -> int:
    if args.associations < 1 or args.instances < 0 or args.size < 0 or args.max_pdu < 0:
        print(
            "oxidip bench send: --associations must be >= 1; --instances, --size and"
            " --max-pdu >= 0",
            file=sys.stderr,
        )
        return EXIT_USAGE
    options = LoadOptions(
        addr=f"{args.host}:{args.port}",
        calling_aet=args.calling_aet,
        called_aet=args.aet,
        associations=args.associations,
        instances=args.instances,
        size=args.size,
        transfer_syntax=args.transfer_syntax,
        max_pdu_length=args.max_pdu,
        timeout=args.timeout,
    )
    try:
        raw = _core.send_load(msgspec.msgpack.encode(options))
    except ValueError as exc:
        print(f"oxidip bench send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = msgspec.msgpack.decode(raw, type=LoadReport)
    if args.json:
        seconds = report.seconds or float("nan")
        out = msgspec.to_builtins(report)
        out["instances_per_second"] = report.instances / seconds
        out["megabytes_per_second"] = report.bytes / seconds / 1e6
        print(msgspec.json.encode(out).decode())
    else:
        print(format_report(report))
    return EXIT_OK if report.failures == 0 and not report.errors else EXIT_FAILURE
