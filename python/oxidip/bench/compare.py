"""``oxidip bench compare``: every receiver (``oxidip.bench.receivers``) on the same machine,
one at a time, each run a fresh process writing into a fresh directory of the same storage,
driven by the same load generator (``oxidip bench send``'s) with the same data; receivers
alternate (the order rotates every repetition); the report gives medians with min/max, the
ratios to dcmtk storescp, the receiver's CPU time and peak resident memory, and checks the
targets of issue 4. Writes ``compare-<date>-<hhmm>.md``, ``.json`` and ``.png`` (and copies
named ``latest``) into the output directory; the chart needs matplotlib, checked before the
first run (``--no-chart`` leaves it out).

Workloads (``--quick`` shrinks each, for smoke tests):

  small     10,000 Secondary Capture instances of ~2 KB on one association
  small-16  the same over 16 concurrent associations
  ct        1,000 CT instances 512x512 16-bit (~514 KB) on one association
  ct-4      the same over 4 associations
  large     2 multi-frame instances of 1 GiB (2048 frames of 512x512 16-bit), one association
  idle      small-16 while 200 more associations are held open and idle (receivers serving
            one association at a time are left out: an idle association blocks them)

Every run is checked: every instance answered with success, the receiver holds exactly that
many files, and (oxidip) its registry holds every instance; a run that fails these is listed
as failed in the report (and the exit status is 1), and the comparison goes on. For oxidip the run's CPU time
includes the registration of every instance (measured once the registry holds them all);
"registered" is when that was, from the start of sending.
"""

import argparse
import datetime
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TextIO

from oxidip._boundary import LoadOptions
from oxidip.bench import report
from oxidip.bench.arguments import Subparsers, add_comparison, add_run_arguments
from oxidip.bench.databases import DEFAULT_POSTGRES, Postgres, wait_registered
from oxidip.bench.model import (
    FULL,
    MIB,
    QUICK,
    Ceiling,
    Context,
    Failure,
    Measurement,
    Results,
    Workload,
)
from oxidip.bench.receivers import (
    RECEIVERS,
    ReceiverSpec,
    RunContext,
    add_oxidip_baseline,
    count_files,
)
from oxidip.bench.resources import ResourceMonitor
from oxidip.bench.send import EXPLICIT_VR_LITTLE_ENDIAN, send_load
from oxidip.bench.tools import HOST, INSTALL_HINT

__all__ = ["add_parser", "main"]


#: Seconds the generator waits for the peer at each step, and for the registry to catch up.
TIMEOUT = 600.0


def add_parser(commands: Subparsers) -> None:
    """Registers ``compare`` under ``oxidip bench`` (sets ``func``)."""
    parser = add_comparison(
        commands,
        "compare",
        "run oxidip and its peers side by side on the same workloads; report and chart",
        __doc__,
        lambda args: run(args, sys.argv[1:]),
    )
    add_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(
        parser,
        FULL,
        "directory under which each run gets a fresh storage directory (default:"
        " /dev/shm, a tmpfs, so that the receivers and not this machine's disk are measured;"
        " give a disk directory to include the disk)",
    )
    parser.add_argument(
        "--receivers",
        default=",".join(RECEIVERS),
        help=f"comma-separated receivers among {', '.join(RECEIVERS)} (default: all)",
    )
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="also run oxidip as installed for this Python interpreter (e.g. an earlier"
        " commit's build in a venv of its own) as the receiver 'oxidip baseline', alternating"
        " with the others; the report compares oxidip with it",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="a run still sending after this long stops and is reported as failed, with what"
        " it stored (default: 300; pynetdicom with 200 idle associations stores a few"
        " instances a second)",
    )
    parser.add_argument(
        "--prefill",
        type=float,
        default=4.0,
        metavar="GIB",
        help="GiB written to the storage and deleted before the first run (default: 4), so"
        " that no run is the first to touch memory the machine never used (in a VM that costs"
        " the host a fault per page: tmpfs wrote 0.4 GB/s into fresh memory, 0.95 GB/s after)",
    )
    parser.add_argument(
        "--cpus",
        type=_cpu_set,
        metavar="LIST",
        help="confine every process of the run (receivers, sender, this harness) to these"
        " CPUs, e.g. 0 (comma-separated numbers). On one CPU, a one-association run measures"
        " what sender and receiver spend, without the cost of waking each other across CPUs"
        " (in a VM, an interrupt to a halted virtual CPU)",
    )
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help="PostgreSQL server for 'oxidip postgresql' (a scratch database is created and"
        " dropped; default: %(default)s)",
    )


def measure(
    spec: ReceiverSpec,
    workload: Workload,
    storage: Path,
    log: TextIO,
    rep: int,
    postgres: Postgres | None,
    run_timeout: float,
) -> Measurement:
    storage.mkdir(parents=True)
    log.write(f"\n=== {spec.name} / {workload.key} / repetition {rep} ===\n")
    log.flush()
    schema = postgres.schema() if spec.registry == "postgresql" and postgres else nullcontext()
    with schema as database:
        running = spec.start(RunContext(storage=storage, log=log, aet=spec.aet, database=database))
        monitor = ResourceMonitor(running.proc.pid)
        monitor.start()
        try:
            started = time.perf_counter()
            load = send_load(
                LoadOptions(
                    addr=f"{HOST}:{running.port}",
                    calling_aet="OXIDIP-BENCH",
                    called_aet=running.aet,
                    associations=workload.associations,
                    instances=workload.instances,
                    size=workload.size,
                    transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
                    max_pdu_length=16384,
                    timeout=TIMEOUT,
                    image=workload.image,
                    idle_associations=workload.idle,
                    deadline=run_timeout,
                )
            )
            problems = []
            if load.instances != workload.instances or load.failures:
                rate = load.instances / load.seconds if load.seconds else 0.0
                problems.append(
                    f"{load.instances} of {workload.instances} stored in {load.seconds:.0f} s"
                    f" ({rate:,.1f}/s), failure statuses {load.statuses}"
                )
            # One line per kind of error, not per association.
            kinds = Counter(re.sub(r"\d+", "N", error) for error in load.errors)
            problems += [f"{kind} (x{n})" if n > 1 else kind for kind, n in kinds.items()]
            if load.idle_associations != workload.idle:
                problems.append(f"{load.idle_associations} of {workload.idle} idle associations")
            if problems:
                raise RuntimeError(f"{spec.name} / {workload.key}: " + "; ".join(problems))
            registered = None
            if spec.registry is not None:
                registered = (
                    wait_registered(database, storage, workload.instances, TIMEOUT) - started
                )
            cpu_seconds, peak_rss = monitor.stop()
        finally:
            running.stop()
    stored = count_files(storage)
    if stored != (workload.instances if spec.stores else 0):
        raise RuntimeError(f"{spec.name} stored {stored} of {workload.instances} instances")
    return Measurement(
        workload=workload.key,
        receiver=spec.name,
        repetition=rep,
        seconds=load.seconds,
        instances=load.instances,
        bytes=load.bytes,
        cpu_seconds=cpu_seconds,
        peak_rss=peak_rss,
        latency_p50_ms=load.latency_p50_ms,
        latency_p99_ms=load.latency_p99_ms,
        registered_seconds=registered,
    )


def write_ceiling(workload: Workload, directory: Path, rep: int) -> Ceiling:
    """Writes the workload's instances as files into ``directory`` the way a receiver must at
    least (create a temp file, write 128 KiB at a time, close, rename into place), from one
    thread; then deletes them."""
    size = workload.size
    chunk = bytes(128 * 1024)
    directory.mkdir(parents=True)
    started = time.perf_counter()
    for n in range(workload.instances):
        temp, final = directory / f"{n}.tmp", directory / f"{n}.dcm"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            left = size
            while left > 0:
                left -= os.write(fd, chunk[: min(left, len(chunk))])
        finally:
            os.close(fd)
        os.rename(temp, final)
    seconds = time.perf_counter() - started
    shutil.rmtree(directory)
    return Ceiling(workload.key, rep, seconds, workload.instances, size * workload.instances)


def prefill(directory: Path, gib: float) -> None:
    """Writes ``gib`` GiB into a file under ``directory``, then deletes it."""
    block = bytes(4 * MIB)
    path = directory / "prefill"
    with path.open("wb") as f:
        for _ in range(int(gib * 1024 * MIB) // len(block)):
            f.write(block)
    path.unlink()


@contextmanager
def _postgres(url: str, needed: bool) -> Iterator[Postgres | None]:
    if not needed:
        yield None
        return
    postgres = Postgres(url)
    try:
        yield postgres
    finally:
        postgres.close()


def _selected(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"oxidip bench compare: unknown {what} {unknown}; known: {list(known)}")
    return names


def _cpu_set(text: str) -> list[int]:
    try:
        cpus = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of CPU numbers: {text!r}")
    available = os.sched_getaffinity(0)
    if not cpus or not set(cpus) <= available:
        raise argparse.ArgumentTypeError(f"CPUs {text!r} not among {sorted(available)}")
    return cpus


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if not args.no_chart:
        # Checked first: finding it missing at the end would waste the whole run.
        no_chart = report.chart_unavailable()
        if no_chart is not None:
            print(
                f"oxidip bench compare: the chart needs matplotlib ({no_chart}): install it"
                " (pip install 'oxidip[bench]', or '.[bench]' in a checkout), or pass"
                " --no-chart for the report without it",
                file=sys.stderr,
            )
            return 2
    table = QUICK if args.quick else FULL
    keys = _selected(args.workloads, [w.key for w in table], "workloads")
    workloads = [w for w in table if w.key in keys]
    names = _selected(args.receivers, list(RECEIVERS), "receivers")
    if args.baseline:
        names.append(add_oxidip_baseline(args.baseline))
    for name in names:
        missing = RECEIVERS[name].missing()
        if missing:
            hints = "; ".join(INSTALL_HINT.get(m, f"install {m}") for m in missing)
            print(
                f"oxidip bench compare: receiver {name!r} needs {missing} ({hints}),"
                " or leave it out with --receivers",
                file=sys.stderr,
            )
            return 2
    if args.cpus:
        # Inherited by every process the run starts.
        os.sched_setaffinity(0, args.cpus)
    workdir = Path(tempfile.mkdtemp(prefix="oxidip-compare-", dir=args.storage))
    log_path = workdir / "receivers.log"
    print(f"storage under {workdir}; receiver output in {log_path}", file=sys.stderr)
    measurements: list[Measurement] = []
    failures: list[Failure] = []
    ceilings: list[Ceiling] = []
    needs_postgres = any(RECEIVERS[n].registry == "postgresql" for n in names)
    try:
        with log_path.open("w") as log, _postgres(args.postgres, needs_postgres) as postgres:
            prefill(workdir, args.prefill)
            width = max(len(n) for n in names)
            for rep in range(args.repeats):
                # Rotate the order each repetition so that no receiver always runs first.
                order = names[rep % len(names) :] + names[: rep % len(names)]
                for workload in workloads:
                    os.sync()
                    ceilings.append(write_ceiling(workload, workdir / f"{rep}-ceiling", rep))
                    for name in order:
                        spec = RECEIVERS[name]
                        if workload.idle and not spec.concurrent:
                            continue
                        storage = workdir / f"{rep}-{workload.key}-{name.replace(' ', '_')}"
                        # No run pays for the previous run's writeback.
                        os.sync()
                        try:
                            m = measure(
                                spec, workload, storage, log, rep, postgres, args.run_timeout
                            )
                        except RuntimeError as error:
                            failures.append(Failure(workload.key, name, rep, str(error)[:2000]))
                            print(
                                f"rep {rep} {workload.key:8} {name:{width}} FAILED: {error}"[:300],
                                file=sys.stderr,
                            )
                            continue
                        finally:
                            # Free the space at once: tmpfs is memory.
                            shutil.rmtree(storage, ignore_errors=True)
                        measurements.append(m)
                        print(
                            f"rep {rep} {workload.key:8} {name:{width}} {m.seconds:7.2f} s"
                            f" {m.per_second:9.0f} inst/s {m.mb_per_second:8.1f} MB/s"
                            f" cpu {m.cpu_seconds:6.2f} s rss {m.peak_rss / MIB:6.1f} MiB",
                            file=sys.stderr,
                        )
        context = Context(
            command="oxidip bench " + " ".join(argv[1:] if argv[:1] == ["bench"] else argv),
            storage=str(args.storage or tempfile.gettempdir()),
            repeats=args.repeats,
            cpus=args.cpus,
        )
        when = datetime.datetime.now()
        results = Results(context, when, workloads, names, measurements, failures, ceilings)
        written = report.write(args.output_dir, results, with_chart=not args.no_chart)
        print(written.read_text())
        print(f"written to {written}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """``bench/compare.py``'s entry point: the same as ``oxidip bench compare``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="oxidip bench compare", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv), ["compare", *argv])
