"""Registration benchmark, in one run, into one report:

1. Registration throughput: ``Registry.register`` called in this process on synthetic
   ``InstanceStored`` events (``--reg-instances`` over ``--reg-series`` series of one study,
   ``--reg-batch`` per call, i.e. per transaction, as the receiver's pipeline does), SQLite and
   PostgreSQL, a fresh database per repetition (``migrate`` not timed). Instances/s over all
   the batches of a repetition: median, min, max over ``--reg-repeats``.

1b. Registration with routes (issue 11): the same calls with the registry given no routes,
   a ``series-finalized`` rule, or an ``instance`` rule (jobs created per batch), then
   ``association_ended`` (the series finalize: the series-finalized rule's jobs are created
   with all their items, in that transaction). Microseconds per instance of each, medians
   over ``--reg-repeats``.

2. Receiving with registration on vs off: ``bench/receive.py``'s small workload
   (``--small`` Secondary Capture 32x32 instances, one dcmtk ``storescu`` association) pushed
   to ``oxidip serve`` with registration on in SQLite (the default), on in PostgreSQL
   (``OXIDIP_DB_CONNECTION``), and off (``bench/hooks/noop_register.py``: ``REGISTER_MODE =
   "replace"`` and a ``register`` that does nothing; journaling stays), alternating in each
   repetition, a fresh storage directory (and PostgreSQL schema) each run. Two times per run:
   until ``storescu`` exits (every instance acknowledged, the receive benchmark's measure) and,
   with registration on, until the database holds every instance (polled after storescu
   exits). Ratios are to registration off; the issue's target is "on" within 10% of "off".

3. Series completion latency: a pynetdicom sender in this process (AE ``BENCHLAT``) sends
   ``--latency-series`` series of ``--latency-instances`` instances, one association each, one
   after the other, to ``oxidip serve`` whose ``OXIDIP_PACS_ADDRESS`` points at a pynetdicom
   Query SCP here that knows every series' count; ``bench/hooks/timestamps.py`` appends
   ``time.time()`` and the SeriesInstanceUID to a file when ``on_series_complete`` runs. The
   latency of a series is that time minus the time the sender got the C-STORE-RSP of its last
   instance (same clock, same machine). SQLite and PostgreSQL.

PostgreSQL: a database ``oxidip_bench_<random>`` is created on ``--postgres`` (default
``$BENCH_POSTGRES_URL`` or ``postgresql://postgres@127.0.0.1:5432/postgres``), one schema per
run in it, and dropped at the end; ``--no-postgres`` leaves PostgreSQL out.

    .venv/bin/python bench/registration.py            # the full benchmark, a few minutes
    .venv/bin/python bench/registration.py --quick    # smoke test, seconds

The markdown report is printed and written to ``bench/results/registration-<date>.md``.
"""

import argparse
import datetime
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TextIO

import psycopg
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from oxidip import InstanceStored
from oxidip._boundary import Attributes
from oxidip.bench.databases import DEFAULT_POSTGRES, Postgres, wait_registered
from oxidip.bench.receivers import RunContext, start_oxidip
from oxidip.bench.tools import cpu_model, keep_pynetdicom_responses, tool, versions
from oxidip.registry import open_registry
from oxidip.routing import Routes

HERE = Path(__file__).resolve().parent
HOOKS_DIR = HERE / "hooks"
RESULTS = HERE / "results"
HOST = "127.0.0.1"
#: The AE title of the latency sender, the one OXIDIP_PACS_ADDRESS maps to our Query SCP.
SENDER_AET = "BENCHLAT"
#: How long to wait for every instance to be registered, or for a series to complete.
WAIT_TIMEOUT = 120.0
#: The target of issue 3: receiving with registration on within 10% of receiving with it off.
TARGET = 0.90


def _load_receive() -> ModuleType:
    """``bench/receive.py`` as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_receive", HERE / "receive.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


receive = _load_receive()
# The latency sender is pynetdicom, whose requestor can drop a response that comes back as
# fast as oxidip's (see keep_pynetdicom_responses).
keep_pynetdicom_responses()


# --- PostgreSQL -----------------------------------------------------------------------------


@dataclass
class Backend:
    """Where the registry goes: SQLite under the storage root, or PostgreSQL."""

    name: str
    postgres: Postgres | None

    @contextmanager
    def fresh(self) -> Iterator[str | None]:
        """A fresh database: the ``OXIDIP_DB_CONNECTION`` URL, None for SQLite (fresh because
        every run has its own storage root)."""
        if self.postgres is None:
            yield None
        else:
            with self.postgres.schema() as url:
                yield url


# --- 1. registration throughput -------------------------------------------------------------


def synthetic_instances(count: int, series_count: int) -> list[InstanceStored]:
    """``count`` stored-instance events of one study, in ``series_count`` series sent one
    after the other, as the receiver would report them."""
    study = str(generate_uid())
    series = [str(generate_uid()) for _ in range(series_count)]
    per_series = -(-count // series_count)
    now = time.time()
    events = []
    for n in range(count):
        s = n // per_series
        sop = str(generate_uid())
        attributes = Attributes(
            SOPClassUID=str(SecondaryCaptureImageStorage),
            SOPInstanceUID=sop,
            StudyDate="20240101",
            StudyTime="120000",
            AccessionNumber="BENCH",
            Modality="OT",
            StudyDescription="Registration benchmark",
            SeriesDescription=f"series {s + 1}",
            PatientName="Bench^Mark",
            PatientID="BENCH001",
            PatientBirthDate="19700101",
            PatientSex="O",
            StudyInstanceUID=study,
            SeriesInstanceUID=series[s],
            SeriesNumber=str(s + 1),
            InstanceNumber=str(n + 1),
        )
        events.append(
            InstanceStored(
                association_id=1,
                path=(
                    "/data/BENCHSCU/BENCH001-Bench_Mark-19700101/Registration_benchmark-BENCH-"
                    f"20240101/{s + 1:05}-series_{s + 1}-0000000/{n + 1:04}-{sop}.dcm"
                ),
                size=2200,
                attributes=attributes,
                calling_aet="BENCHSCU",
                called_aet="OXIDIP",
                peer="127.0.0.1:40000",
                transfer_syntax=str(ExplicitVRLittleEndian),
                received_at=now,
                stored_at=now,
                duplicate=False,
                journal_seq=n,
            )
        )
    return events


@dataclass
class Throughput:
    backend: str
    repetition: int
    seconds: float
    count: int
    batch_seconds: list[float]

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


def measure_registration(
    backend: Backend, events: list[InstanceStored], batch: int, root: Path, rep: int
) -> Throughput:
    batches = [events[i : i + batch] for i in range(0, len(events), batch)]
    with backend.fresh() as connection:
        registry = open_registry(connection, root)
        try:
            registry.migrate()
            timings = []
            started = time.perf_counter()
            for chunk in batches:
                t0 = time.perf_counter()
                registry.register(chunk, "bench-node")
                timings.append(time.perf_counter() - t0)
            seconds = time.perf_counter() - started
        finally:
            registry.close()
    return Throughput(backend.name, rep, seconds, len(events), timings)


# --- 1b. registration with routes ------------------------------------------------------------

_DESTINATION = """
[destinations.archive]
aet = "ARCHIVE"
host = "127.0.0.1"
port = 11112
"""

#: Routes files of the routed registration runs (None: no routes, nothing routed).
ROUTINGS: dict[str, str | None] = {
    "none": None,
    "series-finalized": _DESTINATION
    + '[[rules]]\nname = "all"\non = "series-finalized"\nto = ["archive"]\n',
    "instance": _DESTINATION + '[[rules]]\nname = "all"\non = "instance"\nto = ["archive"]\n',
}


@dataclass
class Routed:
    backend: str
    routing: str
    count: int
    register_seconds: float
    #: ``association_ended`` of the association that sent everything (series finalized).
    end_seconds: float
    jobs: int
    items: int


def measure_routed(
    backend: Backend, events: list[InstanceStored], batch: int, root: Path, routing: str
) -> Routed:
    text = ROUTINGS[routing]
    router = Routes.parse(text, routing) if text else None
    batches = [events[i : i + batch] for i in range(0, len(events), batch)]
    with backend.fresh() as connection:
        registry = open_registry(connection, root, router=router)
        try:
            registry.migrate()
            started = time.perf_counter()
            for chunk in batches:
                registry.register(chunk, "bench-node")
            registered = time.perf_counter()
            registry.association_ended("bench-node", 1)
            ended = time.perf_counter()
            jobs = registry.list_jobs()
        finally:
            registry.close()
    return Routed(
        backend.name,
        routing,
        len(events),
        registered - started,
        ended - registered,
        len(jobs),
        sum(job.total for job in jobs),
    )


# --- 2. receiving with registration on vs off -----------------------------------------------


OFF = "registration off (noop hook)"


@dataclass
class ReceiveVariant:
    name: str
    #: None: registration off.
    backend: Backend | None


def _pythonpath() -> str:
    current = os.environ.get("PYTHONPATH")
    return f"{HOOKS_DIR}{os.pathsep}{current}" if current else str(HOOKS_DIR)


@dataclass
class ReceiveRun:
    variant: str
    repetition: int
    #: From storescu's start to its exit (every instance acknowledged).
    seconds: float
    #: From storescu's start until the database held every instance (None: registration off).
    registered_seconds: float | None
    count: int

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    @property
    def registered_per_second(self) -> float | None:
        return None if self.registered_seconds is None else self.count / self.registered_seconds


def measure_receive(
    variant: ReceiveVariant, workload: "receive.Workload", storage: Path, log: TextIO, rep: int
) -> ReceiveRun:
    storage.mkdir(parents=True)
    log.write(f"\n=== {variant.name} / {workload.name} / repetition {rep} ===\n")
    backend = variant.backend or Backend("none", None)
    with backend.fresh() as connection:
        settings: dict[str, str] = {}
        if variant.backend is None:
            settings = {"OXIDIP_HOOKS": "noop_register", "PYTHONPATH": _pythonpath()}
        elif connection is not None:
            settings = {"OXIDIP_DB_CONNECTION": connection}
        ctx = RunContext(storage=storage, log=log, aet="OXIDIP")
        running = start_oxidip(ctx, settings)
        registered_at = None
        try:
            started, seconds = receive.push(running, workload, log, variant.name)
            if variant.backend is not None:
                registered_at = (
                    wait_registered(connection, storage, workload.count, WAIT_TIMEOUT) - started
                )
        finally:
            running.stop()
    receive.check_stored(variant.name, storage, workload)
    return ReceiveRun(variant.name, rep, seconds, registered_at, workload.count)


# --- 3. series completion latency -----------------------------------------------------------


class CountScp:
    """A Study Root C-FIND SCP answering SERIES-level queries with ``counts[SeriesInstanceUID]``
    as NumberOfSeriesRelatedInstances (no match for other series)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        self.finds = 0
        self.ae = AE(ae_title="BENCHPACS")
        self.ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        server = self.ae.start_server(
            (HOST, 0), block=False, evt_handlers=[(evt.EVT_C_FIND, self._on_find)]
        )
        assert server is not None
        self.port: int = server.server_address[1]

    def _on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        self.finds += 1
        query = event.identifier
        uid = str(query.get("SeriesInstanceUID", ""))
        if uid in self.counts:
            match = Dataset()
            match.QueryRetrieveLevel = "SERIES"
            match.StudyInstanceUID = query.get("StudyInstanceUID", "")
            match.SeriesInstanceUID = uid
            match.NumberOfSeriesRelatedInstances = self.counts[uid]
            yield 0xFF00, match
        yield 0x0000, None

    def close(self) -> None:
        self.ae.shutdown()


@dataclass
class LatencySeries:
    uid: str
    datasets: list[Dataset]


def generate_latency_series(directory: Path, series: int, instances: int) -> list[LatencySeries]:
    """``series`` series of ``instances`` small instances each (receive.py's small ones), read
    into memory for the pynetdicom sender."""
    out = []
    for s in range(series):
        workload = receive.generate_small(directory / f"series{s:03d}", instances)
        datasets = [dcmread(path) for path in sorted(workload.directory.iterdir())]
        out.append(LatencySeries(str(datasets[0].SeriesInstanceUID), datasets))
    return out


@dataclass
class Latency:
    backend: str
    series: str
    instances: int
    #: From the last C-STORE-RSP to on_series_complete, seconds.
    seconds: float


def _read_timestamps(path: Path) -> dict[str, float]:
    found: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                found.setdefault(parts[1], float(parts[0]))
    return found


def _send_series(port: int, called_aet: str, series: LatencySeries) -> float:
    """Sends the series on one association; returns when (time.time()) the bytes of the last
    C-STORE-RSP were read from the socket (pynetdicom's EVT_DATA_RECV, before its decoding
    and hand-over to this thread)."""
    received: list[float] = []
    ae = AE(ae_title=SENDER_AET)
    ae.add_requested_context(
        SecondaryCaptureImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    assoc = ae.associate(
        HOST,
        port,
        ae_title=called_aet,
        evt_handlers=[(evt.EVT_DATA_RECV, lambda event: received.append(time.time()))],
    )
    if not assoc.is_established:
        raise RuntimeError(f"association to oxidip on port {port} not established")
    try:
        for ds in series.datasets:
            status = assoc.send_c_store(ds)
            if not status or status.Status != 0:
                raise RuntimeError(f"C-STORE answered {status!r}")
        return received[-1]
    finally:
        assoc.release()


def measure_latency(
    backend: Backend, series: list[LatencySeries], workdir: Path, log: TextIO
) -> list[Latency]:
    storage = workdir / f"latency-{backend.name}"
    storage.mkdir(parents=True)
    stamps = workdir / f"latency-{backend.name}.timestamps"
    log.write(f"\n=== latency / {backend.name} ===\n")
    pacs = CountScp({s.uid: len(s.datasets) for s in series})
    try:
        with backend.fresh() as connection:
            settings = {
                "OXIDIP_HOOKS": "timestamps",
                "PYTHONPATH": _pythonpath(),
                "BENCH_TIMESTAMPS_FILE": str(stamps),
                "OXIDIP_PACS_ADDRESS": f"{SENDER_AET}={HOST}:{pacs.port}",
            }
            if connection is not None:
                settings["OXIDIP_DB_CONNECTION"] = connection
            ctx = RunContext(storage=storage, log=log, aet="OXIDIP")
            running = start_oxidip(ctx, settings)
            try:
                results = []
                for one in series:
                    last_ack = _send_series(running.port, running.aet, one)
                    deadline = time.monotonic() + WAIT_TIMEOUT
                    while (completed := _read_timestamps(stamps).get(one.uid)) is None:
                        if running.proc.poll() is not None:
                            raise RuntimeError(f"oxidip exited {running.proc.returncode}")
                        if time.monotonic() > deadline:
                            raise RuntimeError(
                                f"series {one.uid} not complete after {WAIT_TIMEOUT:.0f} s"
                                f" ({pacs.finds} C-FIND(s) answered)"
                            )
                        time.sleep(0.002)
                    results.append(
                        Latency(backend.name, one.uid, len(one.datasets), completed - last_ack)
                    )
                return results
            finally:
                running.stop()
    finally:
        pacs.close()


# --- report ---------------------------------------------------------------------------------


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}" if value and base else "n/a"


def _verdict(name: str, ratio: float, what: str) -> str:
    if ratio >= TARGET:
        return f"{name}: {what} {ratio:.2f} of off, within 10% (target met)"
    return f"{name}: {what} {ratio:.2f} of off, NOT within 10% ({(1 - ratio) * 100:.0f}% slower)"


def report(
    args: argparse.Namespace,
    argv: Sequence[str],
    throughputs: list[Throughput],
    routed: list[Routed],
    backends: list[Backend],
    receive_runs: list[ReceiveRun],
    variants: list[ReceiveVariant],
    workload: "receive.Workload",
    latencies: list[Latency],
) -> str:
    lines = [
        f"# Registration benchmark, {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Command: `{' '.join(['bench/registration.py', *argv])}`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + ". PostgreSQL: "
        + (_postgres_version(args.postgres) if any(b.postgres for b in backends) else "not run")
        + ".",
        "",
        *(["**Quick mode (smoke test): too small to mean anything.**", ""] if args.quick else []),
        "## Registration throughput",
        "",
        (
            f"`Registry.register` in-process: {args.reg_instances} synthetic instances of one "
            f"study in {args.reg_series} series, {args.reg_batch} per call (one transaction), "
            f"a fresh database each repetition ({args.reg_repeats}), schema migration not timed."
        ),
        "",
        (
            "| backend | instances | batch | median inst/s | min-max inst/s | median ms/batch |"
            " max ms/batch |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend in backends:
        runs = [t for t in throughputs if t.backend == backend.name]
        if not runs:
            continue
        rates = [t.per_second for t in runs]
        batch_times = [b for t in runs for b in t.batch_seconds]
        lines.append(
            f"| {backend.name} | {runs[0].count:,} | {args.reg_batch:,} | "
            f"{statistics.median(rates):,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | "
            f"{statistics.median(batch_times) * 1000:.1f} | {max(batch_times) * 1000:.1f} |"
        )

    lines += [
        "",
        "## Registration with routes",
        "",
        (
            "The same `Registry.register` calls with routes given to the registry: none, one"
            " `series-finalized` rule, or one `instance` rule (a job per series and batch), then"
            " `association_ended` for the association that sent everything (the series"
            " finalize; the series-finalized rule's jobs are created then, with every instance)."
            f" Microseconds per instance, median over {args.reg_repeats} repetition(s)."
        ),
        "",
        "| backend | routes | register us/instance | association end us/instance | jobs | items |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for backend in backends:
        for routing in ROUTINGS:
            runs = [r for r in routed if r.backend == backend.name and r.routing == routing]
            if not runs:
                continue
            register_us = statistics.median(r.register_seconds / r.count * 1e6 for r in runs)
            end_us = statistics.median(r.end_seconds / r.count * 1e6 for r in runs)
            lines.append(
                f"| {backend.name} | {routing} | {register_us:.1f} | {end_us:.2f} |"
                f" {runs[0].jobs} | {runs[0].items:,} |"
            )
    lines += [
        "",
        "## Receiving with registration on vs off",
        "",
        (
            f"bench/receive.py's small workload ({workload.count} x {workload.description}, "
            f"{workload.total_bytes / 1e6:.1f} MB), dcmtk `storescu --scan-directories`, one "
            f"association, to `oxidip serve`; {args.repeats} repetitions after {args.warmup} "
            "untimed warm-up run(s) per receiver, receivers alternating, fresh storage (and "
            "database) each run. *acked*: storescu's start to its exit (every instance answered "
            "0000, the receive benchmark's measure); *registered*: storescu's start until the "
            "database holds every instance. Off = `bench/hooks/noop_register.py` "
            '(`REGISTER_MODE = "replace"`, `register` does nothing; the journal is still written).'
        ),
        "",
        (
            "| receiver | median inst/s acked | min-max | on/off | median inst/s registered "
            "| min-max | registered/off |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    off_runs = [r for r in receive_runs if r.variant == OFF]
    off_median = statistics.median(r.per_second for r in off_runs) if off_runs else None
    verdicts = []
    for variant in variants:
        runs = [r for r in receive_runs if r.variant == variant.name]
        if not runs:
            continue
        rates = [r.per_second for r in runs]
        median = statistics.median(rates)
        reg = [r.registered_per_second for r in runs if r.registered_per_second is not None]
        reg_median = statistics.median(reg) if reg else None
        lines.append(
            f"| {variant.name} | {median:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | "
            f"{_ratio(median, off_median)} | "
            + (
                f"{reg_median:,.0f} | {min(reg):,.0f}-{max(reg):,.0f} | "
                f"{_ratio(reg_median, off_median)} |"
                if reg_median
                else "- | - | - |"
            )
        )
        if variant.backend is not None and off_median:
            verdicts.append(_verdict(variant.name, median / off_median, "acked"))
            if reg_median:
                verdicts.append(_verdict(variant.name, reg_median / off_median, "registered"))
    lines.append("")
    lines += [f"- {v}" for v in verdicts]
    if off_runs and off_median:
        spread = max(r.per_second for r in off_runs) - min(r.per_second for r in off_runs)
        lines.append(
            f"- Run-to-run spread of registration off alone: {spread / off_median:.0%} of its "
            "median (max-min); a ratio is only meaningful beyond that noise, hence medians of "
            "several alternating runs."
        )
    lines += [
        "",
        "Raw runs (seconds acked/registered): "
        + "; ".join(
            f"{r.variant}#{r.repetition} {r.seconds:.2f}"
            + (f"/{r.registered_seconds:.2f}" if r.registered_seconds is not None else "")
            for r in receive_runs
        ),
        "",
        "## Series completion latency",
        "",
        (
            f"pynetdicom sender in-process (AE {SENDER_AET}), {args.latency_series} series of "
            f"{args.latency_instances} small instances, one association each, sent one after the "
            "other (the next once the previous completed); expected counts from a pynetdicom "
            "Query SCP (`OXIDIP_PACS_ADDRESS`). Latency: from the last C-STORE-RSP of a series "
            "(as the sender got it) to `on_series_complete` (`bench/hooks/timestamps.py`, "
            "`time.time()` in both processes)."
        ),
        "",
        "| backend | series | instances/series | median ms | min-max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for backend in backends:
        runs = [lat.seconds * 1000 for lat in latencies if lat.backend == backend.name]
        if not runs:
            continue
        lines.append(
            f"| {backend.name} | {len(runs)} | {args.latency_instances} | "
            f"{statistics.median(runs):.1f} | {min(runs):.1f}-{max(runs):.1f} |"
        )
    lines += [
        "",
        (
            "Both times are `time.time()` on the same machine. The sender's is taken when "
            "pynetdicom's reader thread gets the bytes of the last C-STORE-RSP (it polls its socket "
            "about every millisecond), so a latency under ~1 ms, or slightly negative, means the "
            "hook ran as fast as this can tell."
        ),
        "",
        "Raw latencies (ms): "
        + "; ".join(f"{lat.backend} {lat.seconds * 1000:.1f}" for lat in latencies),
    ]
    return "\n".join(lines) + "\n"


def _postgres_version(url: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "unknown"


# --- main -----------------------------------------------------------------------------------

QUICK = {
    "reg_instances": 2000,
    "reg_series": 2,
    "reg_batch": 1000,
    "reg_repeats": 2,
    "small": 200,
    "repeats": 1,
    "warmup": 0,
    "latency_series": 2,
    "latency_instances": 10,
}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Registration throughput, receiving with registration on vs off, and "
        "series completion latency (SQLite and PostgreSQL).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items()),
    )
    group = parser.add_argument_group("registration throughput")
    group.add_argument("--reg-instances", type=int, default=20000, help="instances per run")
    group.add_argument("--reg-series", type=int, default=4, help="series they are spread over")
    group.add_argument("--reg-batch", type=int, default=1000, help="instances per transaction")
    group.add_argument("--reg-repeats", type=int, default=5, help="repetitions per backend")
    group = parser.add_argument_group("receiving with registration on vs off")
    group.add_argument("--small", type=int, default=5000, help="small instances per run")
    group.add_argument("--repeats", type=int, default=7, help="repetitions per receiver")
    group.add_argument("--warmup", type=int, default=1, help="untimed runs per receiver first")
    group = parser.add_argument_group("series completion latency")
    group.add_argument("--latency-series", type=int, default=10, help="series per backend")
    group.add_argument("--latency-instances", type=int, default=100, help="instances per series")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("BENCH_POSTGRES_URL", DEFAULT_POSTGRES),
        help="PostgreSQL URL to create the benchmark database from (default: "
        "$BENCH_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where temporary files go (default: temp dir)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown report path (default: bench/results/registration-<date>.md)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    if args.quick:
        explicit = {a.split("=")[0] for a in argv if a.startswith("--")}
        for key, value in QUICK.items():
            if f"--{key.replace('_', '-')}" not in explicit:
                setattr(args, key, value)
    for key in ("reg_instances", "reg_series", "reg_batch", "reg_repeats", "small", "repeats"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.latency_series < 1 or args.latency_instances < 1:
        parser.error("--latency-series and --latency-instances must be at least 1")
    if tool("storescu") is None:
        parser.error("storescu not found: apt-get install dcmtk")
    return args


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="oxidip-bench-registration-", dir=args.workdir))
    output = args.output or RESULTS / f"registration-{datetime.date.today().isoformat()}.md"
    log_path = workdir / "receivers.log"
    _progress(f"work directory {workdir}; receiver output in {log_path}")
    postgres = None
    try:
        backends = [Backend("SQLite", None)]
        if not args.no_postgres:
            try:
                postgres = Postgres(args.postgres)
            except psycopg.OperationalError as error:
                _progress(f"PostgreSQL unreachable ({error}); use --no-postgres to leave it out")
                return 2
            backends.append(Backend("PostgreSQL", postgres))
            _progress(f"PostgreSQL database {postgres.name}")

        # 1. Registration throughput.
        events = synthetic_instances(args.reg_instances, args.reg_series)
        throughputs: list[Throughput] = []
        for rep in range(args.reg_repeats):
            for backend in backends if rep % 2 == 0 else backends[::-1]:
                root = workdir / f"registry-{rep}-{backend.name}"
                t = measure_registration(backend, events, args.reg_batch, root, rep)
                throughputs.append(t)
                _progress(
                    f"register rep {rep} {backend.name:10} {t.seconds:6.2f} s "
                    f"{t.per_second:8.0f} inst/s"
                )
        routed: list[Routed] = []
        for rep in range(args.reg_repeats):
            shift = rep % len(ROUTINGS)
            order = list(ROUTINGS)[shift:] + list(ROUTINGS)[:shift]
            for backend in backends:
                for routing in order:
                    root = workdir / f"routed-{rep}-{backend.name}-{routing}"
                    r = measure_routed(backend, events, args.reg_batch, root, routing)
                    routed.append(r)
                    _progress(
                        f"routes rep {rep} {backend.name:10} {routing:16} register"
                        f" {r.register_seconds / r.count * 1e6:6.1f} us/inst, end"
                        f" {r.end_seconds / r.count * 1e6:6.2f} us/inst, {r.jobs} jobs"
                    )

        # 2. Receiving with registration on vs off.
        variants = [ReceiveVariant(OFF, None)] + [
            ReceiveVariant(f"registration on, {b.name}", b) for b in backends
        ]
        started = time.perf_counter()
        workload = receive.generate_small(workdir / "series-small", args.small)
        _progress(f"generated in {time.perf_counter() - started:.1f} s")
        receive_runs: list[ReceiveRun] = []
        latencies: list[Latency] = []
        with log_path.open("w") as log:
            for warmup in range(args.warmup):
                for n, variant in enumerate(variants):
                    storage = workdir / f"warmup-{warmup}-{n}"
                    run = measure_receive(variant, workload, storage, log, -1 - warmup)
                    _progress(f"warm-up {variant.name:30} {run.seconds:6.2f} s (not counted)")
            for rep in range(args.repeats):
                shift = rep % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    storage = workdir / f"store-{rep}-{variants.index(variant)}"
                    run = measure_receive(variant, workload, storage, log, rep)
                    receive_runs.append(run)
                    registered = (
                        f" registered {run.registered_seconds:6.2f} s"
                        if run.registered_seconds is not None
                        else ""
                    )
                    _progress(
                        f"rep {rep} {variant.name:30} {run.seconds:6.2f} s "
                        f"{run.per_second:7.0f} inst/s{registered}"
                    )

            # 3. Series completion latency.
            series = generate_latency_series(
                workdir / "series-latency", args.latency_series, args.latency_instances
            )
            for backend in backends:
                found = measure_latency(backend, series, workdir, log)
                latencies += found
                _progress(
                    f"latency {backend.name:10} "
                    + " ".join(f"{lat.seconds * 1000:.0f}" for lat in found)
                    + " ms"
                )

        text = report(
            args, argv, throughputs, routed, backends, receive_runs, variants, workload, latencies
        )
        print(text)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        _progress(f"written to {output}")
    finally:
        if postgres is not None:
            postgres.close()
        if args.keep:
            _progress(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
