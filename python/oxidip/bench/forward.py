"""``oxidip bench forward``: the same stored files forwarded to dcmtk ``storescp`` (single
process, writing into a fresh directory of the storage) by oxidip's engine
(``_core.Forwarder``, one job = one association, in a process that does nothing else:
``oxidip.bench.forward_worker``), by dcmtk ``dcmsend`` and by dcmtk ``storescu`` (all files on
one command line: one association; ``TCP_NODELAY=1``). Senders alternate (the order rotates
every repetition); the report gives medians with min-max, the ratios to dcmsend, the sender's
CPU time and peak resident memory (``VmHWM``), and checks the targets of issue 11. Writes
``forward-<date>-<hhmm>.md``, ``.json`` and ``.png`` into the output directory.

Workloads (``--quick`` shrinks each, for smoke tests):

  small    2,000 Secondary Capture instances of ~2 KB, one association (instances/s)
  ct       250 CT instances 512x512 16-bit (~514 KB), one association (MB/s)
  large    one multi-frame instance of 1 GiB: the sender's peak memory
  receive  oxidip receiving 20,000 instances of ~2 KB over 4 associations (``oxidip serve``,
           SQLite registry) alone, and while the same process forwards the ``small`` files to
           storescp over and over: the ratio of the two receive rates (storescp at a lower
           priority: it stands for a destination on another machine)

The stored files are made by oxidip itself (``oxidip serve`` receiving the load generator's
instances) before the first run, as a forwarding oxidip would find them. oxidip's time is
the engine's, from submitting the job to its end (the engine lives in ``oxidip serve``);
dcmtk's is its process's, start to exit (its file checks and association included).
"""

import argparse
import datetime
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import msgspec

from oxidip import _core
from oxidip._boundary import (
    ForwardDestination,
    ForwardItem,
    ForwardJob,
    LoadOptions,
    StoredDataSet,
)
from oxidip.bench import forward_report
from oxidip.bench.arguments import Subparsers, add_comparison, add_run_arguments
from oxidip.bench.databases import wait_registered
from oxidip.bench.forward_worker import ForwardRun
from oxidip.bench.model import CT_SLICE, MIB, Context, Failure, Measurement, Workload
from oxidip.bench.receivers import (
    RECEIVERS,
    RunContext,
    Running,
    count_files,
    start_announcing,
    start_oxidip,
)
from oxidip.bench.receivers import _oxidip_listening as oxidip_listening
from oxidip.bench.resources import ResourceMonitor
from oxidip.bench.send import EXPLICIT_VR_LITTLE_ENDIAN, send_load
from oxidip.bench.tools import HOST, INSTALL_HINT, dcmtk_env, need, tool

__all__ = ["FULL", "QUICK", "SENDERS", "ForwardResults", "add_parser", "main"]


#: Seconds any wait of a run may take.
TIMEOUT = 600.0
OXIDIP = "oxidip"
DCMSEND = "dcmtk dcmsend"
STORESCU = "dcmtk storescu"
SENDERS = (OXIDIP, DCMSEND, STORESCU)
RECEIVING_ALONE = "receiving alone"
#: storescp's niceness in ``receive``, where it stands for a destination on another machine.
DESTINATION_NICENESS = 10
RECEIVING_WHILE_FORWARDING = "receiving while forwarding"

FULL: tuple[Workload, ...] = (
    Workload("small", "sc", 2048, 2_000, 1),
    Workload("ct", "ct", CT_SLICE, 250, 1, by_bytes=True),
    Workload("large", "multiframe", 1024 * MIB, 1, 1, by_bytes=True),
    Workload("receive", "sc", 2048, 20_000, 4),
)

QUICK: tuple[Workload, ...] = (
    Workload("small", "sc", 2048, 100, 1),
    Workload("ct", "ct", CT_SLICE, 10, 1, by_bytes=True),
    Workload("large", "multiframe", 32 * MIB, 1, 1, by_bytes=True),
    Workload("receive", "sc", 2048, 200, 4),
)


class ForwardResults(msgspec.Struct):
    """A forwarding comparison: what ran, and how (also its JSON file)."""

    context: Context
    when: datetime.datetime
    workloads: list[Workload]
    senders: list[str]
    measurements: list[Measurement]
    failures: list[Failure]
    #: Per repetition, what the receiving process forwarded meanwhile.
    forwarded_while_receiving: list[ForwardRun]


class StoredSet(msgspec.Struct):
    """A workload's files as oxidip stored them."""

    items: list[ForwardItem]
    #: Data set bytes in all (what goes on the wire, besides the command sets).
    bytes: int


def add_parser(commands: Subparsers) -> None:
    """Registers ``forward`` under ``oxidip bench`` (sets ``func``)."""
    parser = add_comparison(
        commands,
        "forward",
        "forward the same stored files with oxidip's engine, dcmsend and storescu;"
        " report and chart",
        __doc__,
        lambda args: run(args, sys.argv[1:]),
    )
    add_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(
        parser,
        FULL,
        "directory under which the stored files and storescp's output go (default:"
        " /dev/shm, a tmpfs: the senders are measured, not this machine's disk)",
    )


# --- the stored files -----------------------------------------------------------------------


def store_files(workload: Workload, directory: Path, log: TextIO) -> StoredSet:
    """``oxidip serve`` receives the workload's instances into ``directory``; its files, as
    forwarding items (their UIDs read back as the registry knows them), in path order."""
    directory.mkdir(parents=True)
    running = start_oxidip(RunContext(storage=directory, log=log, aet="OXIDIP"), {})
    try:
        load = send_load(_load_options(workload, running, "MODALITY"))
    finally:
        running.stop()
    if load.instances != workload.instances or load.failures or load.errors:
        raise RuntimeError(f"storing the {workload.key} files: {load}")
    decoder = msgspec.msgpack.Decoder(StoredDataSet)
    items, total = [], 0
    paths = sorted(p for p in directory.rglob("*.dcm") if not _oxidip_own(directory, p))
    for n, path in enumerate(paths):
        stored = decoder.decode(_core.read_stored_for_sending(str(path)))
        items.append(
            ForwardItem(
                n,
                str(path),
                stored.sop_class_uid,
                stored.sop_instance_uid,
                stored.transfer_syntax_uid,
            )
        )
        total += stored.len
    if len(items) != workload.instances:
        raise RuntimeError(f"{len(items)} files stored of {workload.instances}")
    return StoredSet(items, total)


def _oxidip_own(root: Path, path: Path) -> bool:
    return path.relative_to(root).parts[0].startswith(".oxidip")


def _load_options(workload: Workload, running: Running, calling_aet: str) -> LoadOptions:
    return LoadOptions(
        addr=f"{HOST}:{running.port}",
        calling_aet=calling_aet,
        called_aet=running.aet,
        associations=workload.associations,
        instances=workload.instances,
        size=workload.size,
        transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
        max_pdu_length=16384,
        timeout=TIMEOUT,
        image=workload.image,
    )


# --- one run ----------------------------------------------------------------------------------


def run_measured(args: list[str], env: dict[str, str], log: TextIO) -> tuple[int, float, int]:
    """Runs a sender to its exit (killed past ``TIMEOUT``) under GNU ``time``: its exit
    status, CPU seconds (user + system) and peak resident memory in bytes. ``time`` (a small
    process) starts it: a child forked from this large Python process would count this
    process's pages in its own peak (``ru_maxrss`` keeps the high-water mark from before
    ``exec``), however little the sender uses."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as measured:
        timed = [need("time"), "-f", "%U %S %M", "-o", measured.name, *args]
        proc = subprocess.Popen(timed, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        try:
            status = proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{args[0]} still running after {TIMEOUT:.0f} s") from None
        # GNU time writes "Command exited with non-zero status N" first when it did.
        user, system, kib = measured.read().splitlines()[-1].split()
    return status, float(user) + float(system), int(kib) * 1024


def _job(items: list[ForwardItem], port: int, path: Path) -> Path:
    destination = ForwardDestination(
        name="storescp", called_aet="STORESCP", host=HOST, port=port, calling_aet="OXIDIP"
    )
    path.write_bytes(
        msgspec.msgpack.encode(ForwardJob(job_id=1, destination=destination, items=items))
    )
    return path


def _worker(mode: str, job: Path, result: Path) -> list[str]:
    return [sys.executable, "-m", "oxidip.bench.forward_worker", mode, str(job), str(result)]


def _result(path: Path) -> ForwardRun:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ForwardRun)
    except (OSError, msgspec.DecodeError) as error:
        raise RuntimeError(f"the forwarding worker left no result: {error}") from error


def measure_forward(
    sender: str, workload: Workload, stored: StoredSet, workdir: Path, log: TextIO, rep: int
) -> Measurement:
    """Forwards ``stored`` with ``sender`` to a fresh storescp; checks that it stored them
    all."""
    run_dir = workdir / f"{rep}-{workload.key}-{sender.replace(' ', '_')}"
    out = run_dir / "storescp"
    log.write(f"\n=== {sender} / {workload.key} / repetition {rep} ===\n")
    log.flush()
    out.mkdir(parents=True)
    scp = RECEIVERS["dcmtk storescp"].start(RunContext(storage=out, log=log, aet="STORESCP"))
    try:
        if sender == OXIDIP:
            job, result = _job(stored.items, scp.port, run_dir / "job"), run_dir / "result"
            args, env = _worker("forward", job, result), dict(os.environ)
        else:
            files = [item.path for item in stored.items]
            program = need("dcmsend" if sender == DCMSEND else "storescu")
            args = [program, "-aet", "OXIDIP", "-aec", "STORESCP", HOST, str(scp.port), *files]
            env = dcmtk_env()
        started = time.perf_counter()
        status, cpu_seconds, peak_rss = run_measured(args, env, log)
        seconds = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(f"{sender} exited with {status}")
        if sender == OXIDIP:
            forwarded = _result(result)
            if forwarded.errors or forwarded.delivered != len(stored.items):
                raise RuntimeError(f"oxidip delivered {forwarded.delivered}: {forwarded.errors}")
            # The engine's work, not the interpreter's start (oxidip serve runs it for good);
            # the memory is the whole process's.
            seconds, cpu_seconds = forwarded.seconds, forwarded.cpu_seconds
    finally:
        scp.stop()
    received = count_files(out)
    shutil.rmtree(run_dir, ignore_errors=True)
    if received != len(stored.items):
        raise RuntimeError(f"storescp holds {received} of {len(stored.items)} after {sender}")
    return Measurement(
        workload=workload.key,
        receiver=sender,
        repetition=rep,
        seconds=seconds,
        instances=len(stored.items),
        bytes=stored.bytes,
        cpu_seconds=cpu_seconds,
        peak_rss=peak_rss,
        latency_p50_ms=0.0,
        latency_p99_ms=0.0,
    )


def measure_receive(
    forwarding: StoredSet | None, workload: Workload, workdir: Path, log: TextIO, rep: int
) -> tuple[Measurement, ForwardRun | None]:
    """oxidip serve (in a forwarding worker) receives ``workload``; meanwhile, unless
    ``forwarding`` is None, the same process forwards those files to storescp, again and
    again (what it forwarded is returned)."""
    name = RECEIVING_ALONE if forwarding is None else RECEIVING_WHILE_FORWARDING
    run_dir = workdir / f"{rep}-receive-{name.replace(' ', '_')}"
    storage = run_dir / "oxidip"
    storage.mkdir(parents=True)
    log.write(f"\n=== {name} / repetition {rep} ===\n")
    log.flush()
    scp = None
    if forwarding is not None:
        out = run_dir / "storescp"
        out.mkdir()
        scp = RECEIVERS["dcmtk storescp"].start(RunContext(storage=out, log=log, aet="STORESCP"))
        # The destination stands for another machine: on this one it would take from the
        # receiver CPU time that is not oxidip's to spend.
        os.setpriority(os.PRIO_PROCESS, scp.proc.pid, DESTINATION_NICENESS)
    try:
        items = forwarding.items if forwarding is not None else []
        job = _job(items, scp.port if scp else 0, run_dir / "job")
        result = run_dir / "result"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OXIDIP_")}
        env.update(
            {
                "OXIDIP_LISTENER_HOST": HOST,
                "OXIDIP_LISTENER_PORT": "0",
                "OXIDIP_FILES_ROOT": str(storage),
                "OXIDIP_SCP_AET": "OXIDIP",
                "OXIDIP_LOG_FORMAT": "json",
            }
        )
        running = start_announcing(
            _worker("serve", job, result),
            aet="OXIDIP",
            log=log,
            env=env,
            parse_port=oxidip_listening("port"),
        )
        try:
            monitor = ResourceMonitor(running.proc.pid)
            monitor.start()
            started = time.perf_counter()
            load = send_load(_load_options(workload, running, "OXIDIP-BENCH"))
            if load.instances != workload.instances or load.failures or load.errors:
                raise RuntimeError(f"{name}: {load.instances} of {workload.instances} stored")
            registered = wait_registered(None, storage, workload.instances, TIMEOUT) - started
            cpu_seconds, peak_rss = monitor.stop()
        finally:
            running.stop()
    finally:
        if scp is not None:
            scp.stop()
    forwarded = _result(result)
    shutil.rmtree(run_dir, ignore_errors=True)
    if forwarded.errors or (forwarding is not None and forwarded.delivered == 0):
        raise RuntimeError(f"{name}: forwarded {forwarded.delivered}: {forwarded.errors[:3]}")
    measurement = Measurement(
        workload=workload.key,
        receiver=name,
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
    return measurement, (forwarded if forwarding is not None else None)


# --- the whole comparison ---------------------------------------------------------------------


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if not args.no_chart:
        no_chart = forward_report.chart_unavailable()
        if no_chart is not None:
            print(
                f"oxidip bench forward: the chart needs matplotlib ({no_chart}): install it"
                " (pip install 'oxidip[bench]'), or pass --no-chart",
                file=sys.stderr,
            )
            return 2
    missing = [t for t in ("storescp", "echoscu", "dcmsend", "storescu", "time") if tool(t) is None]
    if missing:
        hints = "; ".join(INSTALL_HINT.get(m, f"install {m}") for m in missing)
        print(f"oxidip bench forward: needs {missing} ({hints})", file=sys.stderr)
        return 2
    table = QUICK if args.quick else FULL
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in keys if k not in {w.key for w in table}]
    if unknown:
        print(f"oxidip bench forward: unknown workloads {unknown}", file=sys.stderr)
        return 2
    workloads = [w for w in table if w.key in keys]
    workdir = Path(tempfile.mkdtemp(prefix="oxidip-forward-", dir=args.storage))
    log_path = workdir / "processes.log"
    print(f"files under {workdir}; process output in {log_path}", file=sys.stderr)
    context = Context(
        command="oxidip bench " + " ".join(argv[1:] if argv[:1] == ["bench"] else argv),
        storage=str(args.storage or tempfile.gettempdir()),
        repeats=args.repeats,
    )
    results = ForwardResults(
        context,
        datetime.datetime.now(),
        workloads,
        [*SENDERS, RECEIVING_ALONE, RECEIVING_WHILE_FORWARDING],
        [],
        [],
        [],
    )
    try:
        with log_path.open("w") as log:
            # receive forwards the small files.
            needed = {w.key for w in workloads} | ({"small"} if "receive" in keys else set())
            stored = {
                w.key: store_files(w, workdir / f"stored-{w.key}", log)
                for w in table
                if w.key in needed - {"receive"}
            }
            for rep in range(args.repeats):
                for workload in workloads:
                    os.sync()
                    if workload.key == "receive":
                        # Alone first on even repetitions, second on odd ones.
                        for forwarding in [None, stored["small"]][:: 1 - 2 * (rep % 2)]:
                            measure: Callable[[], tuple[Measurement, ForwardRun | None]] = (
                                functools.partial(
                                    measure_receive, forwarding, workload, workdir, log, rep
                                )
                            )
                            who = (
                                RECEIVING_ALONE
                                if forwarding is None
                                else RECEIVING_WHILE_FORWARDING
                            )
                            _attempt(measure, results, workload.key, who, rep)
                        continue
                    for sender in SENDERS[rep % 3 :] + SENDERS[: rep % 3]:
                        measure = functools.partial(
                            _without_run,
                            measure_forward,
                            sender,
                            workload,
                            stored[workload.key],
                            workdir,
                            log,
                            rep,
                        )
                        _attempt(measure, results, workload.key, sender, rep)
        written = forward_report.write(args.output_dir, results, with_chart=not args.no_chart)
        print(written.read_text())
        print(f"written to {written}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if results.failures else 0


def _without_run(
    measure: Callable[..., Measurement], *args: object
) -> tuple[Measurement, ForwardRun | None]:
    return measure(*args), None


def _attempt(
    measure: Callable[[], tuple[Measurement, ForwardRun | None]],
    results: ForwardResults,
    workload: str,
    who: str,
    rep: int,
) -> None:
    """Runs one measurement; records it, or its failure (the comparison goes on)."""
    try:
        m, forwarded = measure()
    except RuntimeError as error:
        results.failures.append(Failure(workload, who, rep, str(error)[:2000]))
        print(f"rep {rep} {workload:8} {who:28} FAILED: {error}"[:300], file=sys.stderr)
        return
    results.measurements.append(m)
    if forwarded is not None:
        results.forwarded_while_receiving.append(forwarded)
    print(
        f"rep {rep} {workload:8} {who:28} {m.seconds:7.3f} s {m.per_second:8.0f} inst/s"
        f" {m.mb_per_second:8.1f} MB/s cpu {m.cpu_seconds:6.2f} s"
        f" rss {m.peak_rss / MIB:6.1f} MiB",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``bench/forward.py``'s entry point: the same as ``oxidip bench forward``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="oxidip bench forward", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv), ["forward", *argv])
