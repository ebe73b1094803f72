"""DICOM over TLS against plain TCP: the same receiver, the same load, alternating.

Each run starts ``oxidip serve`` afresh (its defaults: registration in SQLite) on a fresh
storage directory, either with its plain listener only, or with its TLS listener only and
mutual TLS (``OXIDIP_TLS_CERT``/``KEY``/``CA``, certificates made with ``openssl`` for the
run: RSA 2048; TLS 1.3 with AES-128-GCM, the receiver's first choice), and drives it with
``oxidip bench send`` (the Rust load generator, rustls on the sending side too): ``ct``, CT
slices 512x512 16-bit on one association, and ``small``, Secondary Capture instances of about
2 KB on one association. Plain and TLS alternate within each repetition (which goes first
alternates too); medians, min-max, the median of the per-repetition TLS/plain ratios, and the
receiver's CPU time per instance (its process, registration included). Storage is
``/dev/shm`` by default, so that the receiver's network path is what differs.

    .venv/bin/python bench/tls.py                 # 5 repetitions, a few minutes
    .venv/bin/python bench/tls.py --quick         # smoke test, seconds

The markdown report is printed and written to ``bench/results/tls-<date>-<hhmm>.md``.
"""

import argparse
import datetime
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import msgspec

from oxidip._boundary import LoadOptions
from oxidip.bench.pki import Pki, make_pki
from oxidip.bench.receivers import RunContext, Running, start_oxidip
from oxidip.bench.resources import tree_cpu_seconds
from oxidip.bench.send import send_load
from oxidip.bench.tools import HOST, cpu_model, versions

RESULTS = Path(__file__).resolve().parent / "results"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
AET = "OXIDIP"
MODES = ("plain", "tls")
#: The issue's target: CT over TLS at least this fraction of plain.
TARGET_CT_RATIO = 0.7


@dataclass(frozen=True)
class Workload:
    name: str
    image: str
    instances: int
    size: int


@dataclass
class Run:
    instances_per_s: float
    mb_per_s: float
    cpu_us_per_instance: float
    sender_cpu_us_per_instance: float


@dataclass
class Series:
    """The runs of one workload in one mode, in repetition order."""

    runs: list[Run] = field(default_factory=list)

    def median(self, value: Callable[[Run], float]) -> float:
        return statistics.median(value(run) for run in self.runs)

    def span(self, value: Callable[[Run], float]) -> tuple[float, float]:
        values = [value(run) for run in self.runs]
        return min(values), max(values)


def start(mode: str, storage: Path, pki: Pki, log: TextIO) -> Running:
    context = RunContext(storage=storage, log=log, aet=AET)
    if mode == "plain":
        return start_oxidip(context, {})
    settings = {
        "OXIDIP_PLAIN_LISTENER": "false",
        "OXIDIP_TLS_PORT": "0",
        "OXIDIP_TLS_CERT": str(pki.server.cert),
        "OXIDIP_TLS_KEY": str(pki.server.key),
        "OXIDIP_TLS_CA": str(pki.ca),
    }
    return start_oxidip(context, settings, port_field="tls_port")


def measure(mode: str, workload: Workload, scratch: Path, pki: Pki, log: TextIO) -> Run:
    storage = scratch / f"{workload.name}-{mode}"
    receiver = start(mode, storage, pki, log)
    try:
        options = LoadOptions(
            addr=f"{HOST}:{receiver.port}",
            calling_aet="TLSBENCH",
            called_aet=AET,
            associations=1,
            instances=workload.instances,
            size=workload.size,
            transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
            max_pdu_length=16384,
            image=workload.image,
        )
        if mode == "tls":
            options = msgspec.structs.replace(
                options,
                tls_ca=str(pki.ca),
                tls_cert=str(pki.client.cert),
                tls_key=str(pki.client.key),
            )
        cpu_before, sender_before = tree_cpu_seconds(receiver.proc.pid), time.process_time()
        report = send_load(options)
        sender_cpu = time.process_time() - sender_before
        cpu = tree_cpu_seconds(receiver.proc.pid) - cpu_before
    finally:
        receiver.stop()
        shutil.rmtree(storage, ignore_errors=True)
    if report.failures or report.errors or report.instances != workload.instances:
        raise RuntimeError(f"{workload.name} over {mode}: {report}")
    return Run(
        instances_per_s=report.instances / report.seconds,
        mb_per_s=report.bytes / report.seconds / 1e6,
        cpu_us_per_instance=cpu / report.instances * 1e6,
        sender_cpu_us_per_instance=sender_cpu / report.instances * 1e6,
    )


def paired_ratios(results: dict[str, Series]) -> list[float]:
    plain, tls = results["plain"].runs, results["tls"].runs
    return [t.instances_per_s / p.instances_per_s for p, t in zip(plain, tls, strict=True)]


def cpu_ratio(results: dict[str, Series]) -> float:
    """Median CPU per instance, receiver plus sender, plain over TLS."""

    def total(mode: str) -> float:
        series = results[mode]
        receiver = series.median(lambda run: run.cpu_us_per_instance)
        return receiver + series.median(lambda run: run.sender_cpu_us_per_instance)

    return total("plain") / total("tls")


def markdown(
    workloads: Sequence[Workload],
    results: dict[str, dict[str, Series]],
    command: str,
    repeats: int,
    storage: str,
) -> str:
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    found = versions()
    software = ", ".join(f"{name} {found[name]}" for name in ("oxidip", "python") if name in found)
    ct_ratio = statistics.median(paired_ratios(results["ct"])) if "ct" in results else None
    lines = [
        f"# DICOM over TLS against plain TCP, {now}",
        "",
        (
            f"`{command}`: {repeats} repetitions, plain and TLS alternating; storage {storage};"
            f" {cpu_model()}; {software}."
        ),
        "",
    ]
    if ct_ratio is not None:
        verdict = "met" if ct_ratio >= TARGET_CT_RATIO else "missed"
        lines += [
            (
                f"Target: CT over TLS at least {TARGET_CT_RATIO}x plain: **{ct_ratio:.2f}x,"
                f" {verdict}** (median of the per-repetition ratios). CPU per CT instance,"
                f" receiver and sender together: plain/TLS = {cpu_ratio(results['ct']):.2f}, the"
                " throughput ratio two CPU-bound processes would reach."
            ),
            "",
        ]
    lines += [
        (
            "| workload | transport | median inst/s | median MB/s | min-max inst/s"
            " | CPU us/inst: receiver, sender | TLS/plain (median of pairs, min-max) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for workload in workloads:
        ratios = paired_ratios(results[workload.name])
        for mode in MODES:
            series = results[workload.name][mode]
            low, high = series.span(lambda run: run.instances_per_s)
            rate = series.median(lambda run: run.instances_per_s)
            mb = series.median(lambda run: run.mb_per_s)
            cpu = series.median(lambda run: run.cpu_us_per_instance)
            sender_cpu = series.median(lambda run: run.sender_cpu_us_per_instance)
            ratio = ""
            if mode == "tls":
                ratio = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            lines.append(
                f"| {workload.name} ({workload.instances} x {workload.image}) | {mode}"
                f" | {rate:,.0f} | {mb:,.1f} | {low:,.0f}-{high:,.0f} | {cpu:,.0f}, {sender_cpu:,.0f}"
                f" | {ratio} |"
            )
    lines += [
        "",
        (
            "TLS: mutual (client certificate checked against the CA), BCP 195 profile (TLS 1.3,"
            " AES-128-GCM), RSA 2048 certificates; the sender (`oxidip bench send`) encrypts"
            " with rustls too, on the same 2 CPUs. CPU: the receiver process's (registration"
            " included) and the sender's, per instance, medians."
        ),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=int, default=1000, help="CT slices per run")
    parser.add_argument("--small", type=int, default=5000, help="small instances per run")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--storage", type=Path, default=Path("/dev/shm"))
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="a smoke test: few instances")
    args = parser.parse_args(argv)
    if args.quick:
        args.ct, args.small, args.repeats = 5, 20, 1
    workloads = [Workload("ct", "ct", args.ct, 0), Workload("small", "sc", args.small, 2048)]
    results = {w.name: {mode: Series() for mode in MODES} for w in workloads}
    with tempfile.TemporaryDirectory(dir=args.storage, prefix="oxidip-tls-bench-") as scratch:
        root = Path(scratch)
        pki = make_pki(root / "pki")
        log = (root / "receivers.log").open("w")
        for rep in range(args.repeats):
            for workload in workloads:
                order = MODES if rep % 2 == 0 else MODES[::-1]
                for mode in order:
                    run = measure(mode, workload, root, pki, log)
                    results[workload.name][mode].runs.append(run)
                    print(
                        f"rep {rep + 1} {workload.name} {mode}: {run.instances_per_s:,.0f} inst/s,"
                        f" {run.mb_per_s:,.1f} MB/s",
                        file=sys.stderr,
                    )
    command = "bench/tls.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = markdown(workloads, results, command.strip(), args.repeats, str(args.storage))
    print(report)
    if not args.quick:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
        (args.output_dir / f"tls-{stamp}.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
