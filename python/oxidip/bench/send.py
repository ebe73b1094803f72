"""``oxidip bench send``: drives any Storage SCP with the Rust load generator
(``_core.send_load``): K concurrent associations sending N instances generated in memory with
fresh UIDs (Secondary Capture of about SIZE bytes, CT 512x512 slices, or multi-frame images),
optionally while M more associations are held open and idle, and reports throughput, failures
and the per-instance C-STORE round-trip latency.
"""

import argparse
import sys
from typing import TypeAlias

import msgspec

from oxidip import _core
from oxidip._boundary import LoadOptions, LoadReport

__all__ = ["IMAGES", "add_parser", "format_report", "run_send", "send_load"]

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK = 0
#: Some instances were not stored.
EXIT_FAILURE = 1
EXIT_USAGE = 2

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"

#: The generator's image kinds (``scu::template::Image``).
IMAGES = ("sc", "ct", "multiframe")


def send_load(options: LoadOptions) -> LoadReport:
    """Runs the load generator to the end (the GIL released meanwhile). Raises ValueError on
    invalid options."""
    raw = _core.send_load(msgspec.msgpack.encode(options))
    return msgspec.msgpack.decode(raw, type=LoadReport)


def add_parser(commands: Subparsers) -> None:
    """Registers ``send`` under ``oxidip bench`` (sets ``func``)."""
    send = commands.add_parser(
        "send",
        help="send generated instances to a Storage SCP and report throughput and latency",
        description="Sends N instances generated in memory with fresh UIDs (one study per"
        " run, one series per association) over K concurrent associations to any Storage"
        " SCP; reports instances/s, MB/s, failures and C-STORE round-trip latency"
        " percentiles. Exit status 1 when any instance was not stored.",
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
        "--image",
        choices=IMAGES,
        default="sc",
        help="sc: Secondary Capture 8-bit of about --size bytes; ct: CT 512x512 16-bit"
        " (about 514 KB, --size ignored); multiframe: 512x512 16-bit frames, as many as"
        " --size holds (default: %(default)s)",
    )
    send.add_argument(
        "--size",
        type=int,
        default=2048,
        metavar="BYTES",
        help="approximate data set size (default: %(default)s)",
    )
    send.add_argument(
        "--idle-associations",
        type=int,
        default=0,
        metavar="M",
        help="associations opened first and held idle until the load ends (default: 0)",
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
    send.add_argument(
        "--tls-ca",
        metavar="PEM",
        help="speak DICOM over TLS (PS3.15 annex B), checking the SCP's certificate against"
        " these CA certificates (and --host against its names)",
    )
    send.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="with --tls-ca: our client certificate chain, for mutual TLS (with --tls-key)",
    )
    send.add_argument("--tls-key", metavar="PEM", help="the private key of --tls-cert")
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
    if report.idle_associations:
        lines.append(f"idle        {report.idle_associations} associations held open")
    if report.statuses:
        statuses = ", ".join(f"{status:04X}H x{n}" for status, n in sorted(report.statuses.items()))
        lines.append(f"statuses    {statuses}")
    lines.extend(f"error       {error}" for error in report.errors)
    return "\n".join(lines)


def run_send(args: argparse.Namespace) -> int:
    counts = (args.instances, args.size, args.max_pdu, args.idle_associations)
    if args.associations < 1 or min(counts) < 0:
        print(
            "oxidip bench send: --associations must be >= 1; --instances, --size, --max-pdu"
            " and --idle-associations >= 0",
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
        image=args.image,
        idle_associations=args.idle_associations,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    try:
        report = send_load(options)
    except ValueError as exc:
        print(f"oxidip bench send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        seconds = report.seconds or float("nan")
        out = msgspec.to_builtins(report)
        out["instances_per_second"] = report.instances / seconds
        out["megabytes_per_second"] = report.bytes / seconds / 1e6
        print(msgspec.json.encode(out).decode())
    else:
        print(format_report(report))
    return EXIT_OK if report.failures == 0 and not report.errors else EXIT_FAILURE
