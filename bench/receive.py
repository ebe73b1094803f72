"""Receive benchmark: the same synthetic series pushed by dcmtk ``storescu`` (one association,
``--scan-directories``, TCP_NODELAY=1) to every registered receiver, alternating receivers in
each repetition, each time into a fresh storage directory on the same filesystem (kept until
the end of the run: deleting thousands of files slows the next file creations for seconds on a
filesystem mounted with ``discard``, so a run costs about repeats x receivers x 270 MB of disk).

Workloads (generated once per run into a temporary directory, fresh UIDs):
  small  --small N instances (default 5000) of ~2 KB: Secondary Capture, 32x32 8-bit
  ct     --ct N instances (default 500) of CT 512x512 16-bit (~514 KB)

Timing: from storescu's start to its exit (every instance acknowledged), after an ``os.sync()``
so that no run pays for the previous run's writeback. Each run is checked:
storescu exits 0 and the receiver holds exactly N files. Reports, per workload and receiver,
the median instances/s and MB/s (MB = 10^6 bytes of the source files), min/max instances/s
and the ratio to dcmtk storescp, as a markdown table on stdout and in
``bench/results/receive-<date>.md``.

    .venv/bin/python bench/receive.py                      # the full benchmark
    .venv/bin/python bench/receive.py --small 50 --ct 5 --repeats 1   # smoke test, seconds

Receivers are those of ``oxidip.bench.receivers`` (how to add one: its docstring). By default: oxidip, dcmtk storescp (apt-get install dcmtk), pynetdicom and dicom-rs storescp
(``cargo install dicom-storescp --locked``; found on PATH or in ``$CARGO_HOME/bin``, default
``~/.cargo/bin``); ``oxidip bench compare`` drives the same receivers with oxidip's own load
generator instead of storescu.
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from oxidip.bench.receivers import (
    RECEIVERS,
    ReceiverSpec,
    RunContext,
    Running,
    count_files,
    receiver,
    start_oxidip,
)
from oxidip.bench.tools import HOST, INSTALL_HINT, cpu_model, dcmtk_env, need, tool, versions

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
STORESCU_TIMEOUT = 3600.0
#: The receivers compared by default (those of ``oxidip.bench.receivers`` that need no
#: database set up for them).
DEFAULT_RECEIVERS = ("oxidip", "dcmtk storescp", "pynetdicom", "dicom-rs storescp")


# --- workloads ------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    directory: Path
    count: int
    total_bytes: int
    description: str


def _base_dataset(sop_class: str, study: str, series: str, number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = "BENCH001"
    ds.PatientName = "Bench^Mark"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "BENCH"
    ds.StudyDescription = "Receive benchmark"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def _write(ds: Dataset, path: Path) -> int:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path.stat().st_size


def generate_small(directory: Path, count: int) -> Workload:
    directory.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    pixels = (np.arange(32 * 32) % 256).astype(np.uint8).tobytes()
    total = 0
    for n in range(count):
        ds = _base_dataset(SecondaryCaptureImageStorage, study, series, n + 1)
        ds.Modality = "OT"
        ds.SeriesDescription = "small instances"
        ds.Rows = ds.Columns = 32
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = pixels
        total += _write(ds, directory / f"small{n:06d}.dcm")
    return Workload("small", directory, count, total, "Secondary Capture 32x32 8-bit")


def generate_ct(directory: Path, count: int) -> Workload:
    directory.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(42)
    yy, xx = np.mgrid[0:512, 0:512]
    base = (((xx - 256) ** 2 + (yy - 256) ** 2) < 200**2).astype(np.int32) * 1000
    total = 0
    for n in range(count):
        noise = rng.integers(0, 64, size=(512, 512), dtype=np.int32)
        pixels = (base + noise + n).astype(np.uint16).tobytes()
        ds = _base_dataset(CTImageStorage, study, series, n + 1)
        ds.Modality = "CT"
        ds.SeriesDescription = "CT 512x512"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows = ds.Columns = 512
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.SliceThickness = 1.0
        ds.ImagePositionPatient = [0.0, 0.0, float(n)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.PixelData = pixels
        total += _write(ds, directory / f"ct{n:05d}.dcm")
    return Workload("ct", directory, count, total, "CT 512x512 16-bit")


# --- receivers ------------------------------------------------------------------------------


def register_oxidip_max_pdu(length: int) -> str:
    """Registers oxidip announcing ``length`` as its maximum PDU (to choose the default)."""
    name = f"oxidip pdu={length}"
    receiver(name, aet="OXIDIP")(
        lambda ctx: start_oxidip(ctx, {"OXIDIP_SCP_MAX_PDU_LENGTH": str(length)})
    )
    return name


# --- one measurement ------------------------------------------------------------------------


@dataclass
class Measurement:
    workload: str
    receiver: str
    repetition: int
    seconds: float
    count: int
    total_bytes: int

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.total_bytes / self.seconds / 1e6


def push(running: Running, workload: Workload, log: TextIO, name: str) -> tuple[float, float]:
    """Sends the workload to a running receiver with storescu (one association). Returns when
    storescu started (``time.perf_counter``) and how long it took; raises when it failed."""
    args = [
        need("storescu"),
        "-aet",
        "BENCHSCU",
        "-aec",
        running.aet,
        "--scan-directories",
        HOST,
        str(running.port),
        str(workload.directory),
    ]
    # Start every run with no dirty pages left by the previous one (its files, their
    # deletion), so one run's writeback does not slow the next.
    os.sync()
    started = time.perf_counter()
    result = subprocess.run(
        args,
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=STORESCU_TIMEOUT,
        check=False,
    )
    seconds = time.perf_counter() - started
    log.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(
            f"storescu to {name} exited {result.returncode}: {result.stderr[-2000:]}"
        )
    return started, seconds


def check_stored(name: str, storage: Path, workload: Workload) -> None:
    stored = count_files(storage)
    if stored != workload.count:
        raise RuntimeError(f"{name} stored {stored} of {workload.count} instances")


def measure(
    spec: ReceiverSpec, workload: Workload, storage: Path, log: TextIO, rep: int
) -> Measurement:
    storage.mkdir(parents=True)
    log.write(f"\n=== {spec.name} / {workload.name} / repetition {rep} ===\n")
    running = spec.start(RunContext(storage=storage, log=log, aet=spec.aet))
    try:
        _, seconds = push(running, workload, log, spec.name)
    finally:
        running.stop()
    check_stored(spec.name, storage, workload)
    return Measurement(workload.name, spec.name, rep, seconds, workload.count, workload.total_bytes)


# --- report ---------------------------------------------------------------------------------


def report(
    measurements: list[Measurement],
    workloads: list[Workload],
    receivers: list[str],
    args: argparse.Namespace,
    argv: Sequence[str],
) -> str:
    lines = [
        f"# Receive benchmark, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{' '.join(['bench/receive.py', *argv])}`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} "
        f"{platform.release()}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + ".",
        "",
        (
            "Sender: dcmtk `storescu --scan-directories`, one association, TCP_NODELAY=1; "
            "time from its start to its exit. Repetitions: "
            f"{args.repeats} (after {args.warmup} untimed warm-up run(s) per receiver), "
            "receivers alternating, fresh storage directory each run."
        ),
        "",
        "Workloads: "
        + "; ".join(
            f"{w.name} = {w.count} x {w.description} ({w.total_bytes / 1e6:.1f} MB)"
            for w in workloads
        )
        + ".",
        "",
        "| workload | receiver | median inst/s | median MB/s | min-max inst/s | vs storescp |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for w in workloads:
        rows = {}
        for name in receivers:
            runs = [m for m in measurements if m.workload == w.name and m.receiver == name]
            if runs:
                rows[name] = runs
        base = rows.get("dcmtk storescp")
        base_median = statistics.median(m.per_second for m in base) if base else None
        for name, runs in rows.items():
            rates = [m.per_second for m in runs]
            median = statistics.median(rates)
            mbs = statistics.median(m.mb_per_second for m in runs)
            ratio = f"{median / base_median:.2f}x" if base_median else "n/a"
            lines.append(
                f"| {w.name} | {name} | {median:,.0f} | {mbs:,.1f} | "
                f"{min(rates):,.0f}-{max(rates):,.0f} | {ratio} |"
            )
    lines.append("")
    lines.append(
        "Raw runs (seconds): "
        + "; ".join(
            f"{m.workload}/{m.receiver}#{m.repetition} {m.seconds:.2f}" for m in measurements
        )
    )
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return name.replace(" ", "_")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description="Receive throughput of oxidip vs dcmtk storescp, pynetdicom, dicom-rs.",
        epilog="Receivers: " + ", ".join(RECEIVERS),
    )
    parser.add_argument("--small", type=int, default=5000, help="small instances (0: skip)")
    parser.add_argument("--ct", type=int, default=500, help="CT 512x512 instances (0: skip)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per receiver")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed runs per receiver and workload first (page cache, filesystem state)",
    )
    parser.add_argument(
        "--receivers",
        default=",".join(DEFAULT_RECEIVERS),
        help="comma-separated receiver names (default: %(default)s)",
    )
    parser.add_argument(
        "--oxidip-max-pdu",
        type=lambda s: [int(n) for n in s.split(",")],
        default=[],
        help="also run oxidip announcing each of these maximum PDU lengths (comma-separated)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the series and the storage directories go (default: system temp dir)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown report path (default: bench/results/receive-<date>.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.receivers.split(",") if n.strip()]
    names += [register_oxidip_max_pdu(n) for n in args.oxidip_max_pdu]
    unknown = [n for n in names if n not in RECEIVERS or RECEIVERS[n].registry == "postgresql"]
    if unknown:
        parser.error(f"unknown receivers {unknown}; registered: {list(RECEIVERS)}")
    if tool("storescu") is None:
        parser.error("storescu not found: apt-get install dcmtk")
    for name in names:
        missing = RECEIVERS[name].missing()
        if missing:
            hints = "; ".join(INSTALL_HINT.get(m, f"install {m}") for m in missing)
            parser.error(
                f"receiver {name!r} needs {missing} on PATH ({hints}), "
                "or leave it out with --receivers"
            )

    workdir = Path(tempfile.mkdtemp(prefix="oxidip-bench-", dir=args.workdir))
    output = args.output or RESULTS / f"receive-{datetime.date.today().isoformat()}.md"
    log_path = workdir / "receivers.log"
    print(f"work directory {workdir}; receiver output in {log_path}", file=sys.stderr)
    try:
        workloads = []
        started = time.perf_counter()
        if args.small:
            workloads.append(generate_small(workdir / "series-small", args.small))
        if args.ct:
            workloads.append(generate_ct(workdir / "series-ct", args.ct))
        print(f"generated in {time.perf_counter() - started:.1f} s", file=sys.stderr)

        measurements: list[Measurement] = []
        width = max(len(name) for name in names)
        with log_path.open("w") as log:
            for warmup in range(args.warmup):
                for workload in workloads:
                    for name in names:
                        storage = workdir / f"warmup-{warmup}-{workload.name}-{_slug(name)}"
                        m = measure(RECEIVERS[name], workload, storage, log, -1 - warmup)
                        print(
                            f"warm-up {workload.name:5} {name:{width}} {m.seconds:7.2f} s "
                            "(not counted)",
                            file=sys.stderr,
                        )
            for rep in range(args.repeats):
                # Rotate the order each repetition so no receiver always runs first.
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for workload in workloads:
                    for name in order:
                        storage = workdir / f"store-{rep}-{workload.name}-{_slug(name)}"
                        m = measure(RECEIVERS[name], workload, storage, log, rep)
                        measurements.append(m)
                        # Storage directories are only deleted at the end: on a filesystem
                        # mounted with `discard` (ext4 here), creating files right after
                        # deleting thousands was 3-4x slower, which would punish whichever
                        # receiver runs next.
                        print(
                            f"rep {rep} {workload.name:5} {name:{width}} {m.seconds:7.2f} s "
                            f"{m.per_second:9.0f} inst/s {m.mb_per_second:8.1f} MB/s",
                            file=sys.stderr,
                        )
        text = report(measurements, workloads, names, args, argv)
        print(text)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        print(f"written to {output}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
