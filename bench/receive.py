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

Receivers are registered in ``RECEIVERS`` (name -> how to start it with a storage directory
and where to send); adding one is a decorated function, e.g. a command that takes its port on
the command line and answers C-ECHO once it is ready:

    @receiver("my scp", needs=("my-scp", "echoscu"), aet="MYSCP")
    def my_scp(ctx: RunContext) -> Running:
        port = free_port()
        return start_command(
            [need("my-scp"), "--port", str(port), "--out", str(ctx.storage)],
            port=port, aet=ctx.aet, log=ctx.log,
        )

Registered: oxidip, dcmtk storescp (apt-get install dcmtk), pynetdicom (bench/pynetdicom_scp.py)
and dicom-rs storescp (``cargo install dicom-storescp --locked``; found on PATH or in
``$CARGO_HOME/bin``, default ``~/.cargo/bin``).
"""

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
HOST = "127.0.0.1"
READY_TIMEOUT = 60.0
STORESCU_TIMEOUT = 3600.0


#: How to install each external tool, for error messages.
INSTALL_HINT = {
    "storescu": "apt-get install dcmtk",
    "storescp": "apt-get install dcmtk",
    "echoscu": "apt-get install dcmtk",
    "dicom-storescp": "cargo install dicom-storescp --locked",
}


def cargo_bin() -> Path:
    """Where ``cargo install`` puts executables."""
    home = os.environ.get("CARGO_HOME")
    return Path(home) / "bin" if home else Path.home() / ".cargo" / "bin"


def tool(name: str) -> str | None:
    """An executable on PATH, never from the running virtual environment's ``bin``: pynetdicom
    installs its own ``storescu``, ``echoscu``, ``storescp`` there. Falls back to
    ``cargo install``'s directory (dicom-rs's ``dicom-storescp``), often not on PATH."""
    skip = {Path(sys.prefix, "bin").resolve()} if sys.prefix != sys.base_prefix else set()
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        if directory and Path(directory).resolve() not in skip:
            path = shutil.which(name, path=directory)
            if path is not None:
                return path
    return shutil.which(name, path=str(cargo_bin()))


def need(name: str) -> str:
    path = tool(name)
    if path is None:
        hint = INSTALL_HINT.get(name, f"install {name}")
        raise RuntimeError(f"{name} not found on PATH ({hint})")
    return path


def dcmtk_env() -> dict[str, str]:
    """Debian's dcmtk 3.6.7 waits ~40 ms per message on delayed ACKs without TCP_NODELAY."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


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


@dataclass
class RunContext:
    storage: Path
    log: TextIO
    aet: str


@dataclass
class Running:
    """A started receiver: where to send, how to stop it."""

    port: int
    aet: str
    proc: subprocess.Popen[bytes]
    threads: list[threading.Thread] = field(default_factory=list)

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for thread in self.threads:
            thread.join(5)


@dataclass
class ReceiverSpec:
    name: str
    start: Callable[[RunContext], Running]
    #: Executables that must be on PATH.
    needs: tuple[str, ...]
    #: Default AE title.
    aet: str

    def missing(self) -> list[str]:
        return [name for name in self.needs if tool(name) is None]


RECEIVERS: dict[str, ReceiverSpec] = {}


def receiver(
    name: str, *, needs: tuple[str, ...] = (), aet: str = "BENCHSCP"
) -> Callable[[Callable[[RunContext], Running]], Callable[[RunContext], Running]]:
    """Registers a receiver under ``name`` (the order of registration is the table order)."""

    def register(start: Callable[[RunContext], Running]) -> Callable[[RunContext], Running]:
        RECEIVERS[name] = ReceiverSpec(name, start, needs, aet)
        return start

    return register


def free_port() -> int:
    """A port free right now (small race with other processes; fine on a bench machine)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _pump(stream: TextIO | None, log: TextIO, on_line: Callable[[str], None] | None) -> None:
    if stream is None:
        return
    for line in stream:
        log.write(line)
        if on_line is not None:
            on_line(line)


def _echo_ready(port: int, aet: str, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    """Readiness of a receiver that prints nothing useful: echoscu until it succeeds."""
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with {proc.returncode} before it was ready")
        result = subprocess.run(
            [need("echoscu"), "-to", "2", "-aec", aet, HOST, str(port)],
            env=dcmtk_env(),
            capture_output=True,
            timeout=30,
            check=False,
        )
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"receiver on port {port} not answering C-ECHO")
        time.sleep(0.1)


def start_command(
    args: Sequence[str],
    *,
    port: int,
    aet: str,
    log: TextIO,
    env: dict[str, str] | None = None,
) -> Running:
    """Starts a receiver that takes its port on the command line; ready once it echoes."""
    proc = subprocess.Popen(
        list(args),
        env=env or dcmtk_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    thread = threading.Thread(target=_pump, args=(proc.stdout, log, None), daemon=True)
    thread.start()
    running = Running(port=port, aet=aet, proc=proc, threads=[thread])
    try:
        _echo_ready(port, aet, time.monotonic() + READY_TIMEOUT, proc)
    except BaseException:
        running.stop()
        raise
    return running


def start_announcing(
    args: Sequence[str],
    *,
    aet: str,
    log: TextIO,
    env: dict[str, str],
    parse_port: Callable[[str], int | None],
    stream: str = "stderr",
) -> Running:
    """Starts a receiver that announces its bound port on a line of output."""
    proc = subprocess.Popen(
        list(args),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[int] = []
    ready = threading.Event()

    def on_line(line: str) -> None:
        if not found:
            port = parse_port(line)
            if port is not None:
                found.append(port)
                ready.set()

    threads = [
        threading.Thread(
            target=_pump,
            args=(proc.stderr, log, on_line if stream == "stderr" else None),
            daemon=True,
        ),
        threading.Thread(
            target=_pump,
            args=(proc.stdout, log, on_line if stream == "stdout" else None),
            daemon=True,
        ),
    ]
    for thread in threads:
        thread.start()
    running = Running(port=0, aet=aet, proc=proc, threads=threads)
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.wait(0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            running.stop()
            raise RuntimeError(f"{args[0]} did not announce its port (exit {proc.poll()})")
    running.port = found[0]
    return running


def _oxidip_port(line: str) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if isinstance(record, dict) and record.get("msg") == "listening":
        return int(record["port"])
    return None


def start_oxidip(ctx: RunContext, settings: dict[str, str]) -> Running:
    """``python -m oxidip serve`` on its defaults (default path template, no fsync), changed
    by ``settings`` (OXIDIP_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXIDIP_")}
    env.update(
        {
            "OXIDIP_LISTENER_HOST": HOST,
            "OXIDIP_LISTENER_PORT": "0",
            "OXIDIP_FILES_ROOT": str(ctx.storage),
            "OXIDIP_SCP_AET": ctx.aet,
            "OXIDIP_LOG_FORMAT": "json",
            **settings,
        }
    )
    return start_announcing(
        [sys.executable, "-m", "oxidip", "serve"],
        aet=ctx.aet,
        log=ctx.log,
        env=env,
        parse_port=_oxidip_port,
    )


@receiver("oxidip", aet="OXIDIP")
def oxidip(ctx: RunContext) -> Running:
    return start_oxidip(ctx, {})


def register_oxidip_max_pdu(length: int) -> str:
    """Registers oxidip announcing ``length`` as its maximum PDU (to choose the default)."""
    name = f"oxidip pdu={length}"
    receiver(name, aet="OXIDIP")(
        lambda ctx: start_oxidip(ctx, {"OXIDIP_SCP_MAX_PDU_LENGTH": str(length)})
    )
    return name


@receiver("dcmtk storescp", needs=("storescp", "echoscu"), aet="STORESCP")
def dcmtk_storescp(ctx: RunContext) -> Running:
    """dcmtk's storescp with default options (single process, accepts every storage SOP
    class dcmtk knows, writes Part 10 files into ``-od``), TCP_NODELAY=1."""
    port = free_port()
    return start_command(
        [need("storescp"), "-aet", ctx.aet, "-od", str(ctx.storage), str(port)],
        port=port,
        aet=ctx.aet,
        log=ctx.log,
    )


def _pynetdicom_port(line: str) -> int | None:
    if line.startswith("listening "):
        return int(line.split()[1])
    return None


@receiver("pynetdicom", aet="PYNETDICOM")
def pynetdicom_scp(ctx: RunContext) -> Running:
    """``bench/pynetdicom_scp.py``: raw received bytes written as they are."""
    return start_announcing(
        [
            sys.executable,
            str(HERE / "pynetdicom_scp.py"),
            "--port",
            "0",
            "--aet",
            ctx.aet,
            "--out",
            str(ctx.storage),
        ],
        aet=ctx.aet,
        log=ctx.log,
        env=dict(os.environ),
        parse_port=_pynetdicom_port,
        stream="stdout",
    )


@receiver("dicom-rs storescp", needs=("dicom-storescp", "echoscu"), aet="DICOM-RS")
def dicom_rs_storescp(ctx: RunContext) -> Running:
    """dicom-rs's ``dicom-storescp`` in its non-blocking mode (``-n``: a tokio task per
    association), otherwise on its defaults: its built-in list of storage SOP classes (CT
    Image and Secondary Capture among them) plus Verification, every transfer syntax it
    supports (the native ones included), maximum PDU 16378. It accepts any called AE title
    (``--calling-ae-title`` is its own title, despite the name), binds 0.0.0.0 on ``-p`` and
    writes flat ``<SOPInstanceUID>.dcm`` Part 10 files into ``-o``. It answers C-ECHO."""
    port = free_port()
    return start_command(
        [
            need("dicom-storescp"),
            "--non-blocking",
            "--calling-ae-title",
            ctx.aet,
            "-p",
            str(port),
            "-o",
            str(ctx.storage),
        ],
        port=port,
        aet=ctx.aet,
        log=ctx.log,
    )


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


def count_files(root: Path) -> int:
    return sum(
        1
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).parts[0].startswith(".oxidip")
    )


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


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    try:
        import oxidip

        versions["oxidip"] = oxidip.__version__
    except ImportError:
        versions["oxidip"] = "not importable"
    try:
        import pynetdicom

        versions["pynetdicom"] = pynetdicom.__version__
    except ImportError:
        pass
    if tool("storescu"):
        out = subprocess.run(
            [need("storescu"), "--version"], capture_output=True, text=True, check=False
        )
        first = out.stdout.splitlines()[0] if out.stdout else ""
        versions["dcmtk"] = first.replace("$dcmtk: ", "").rstrip(" $")
    if tool("dicom-storescp"):
        out = subprocess.run(
            [need("dicom-storescp"), "--version"], capture_output=True, text=True, check=False
        )
        # "dicom-storescp 0.10.1"
        versions["dicom-rs storescp"] = out.stdout.strip().removeprefix("dicom-storescp ")
    return versions


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


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
        f"Machine: {os.cpu_count()} CPUs ({_cpu()}), {platform.system()} "
        f"{platform.release()}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in _versions().items())
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
        default=",".join(RECEIVERS),
        help="comma-separated receiver names (default: all registered)",
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
    unknown = [n for n in names if n not in RECEIVERS]
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
