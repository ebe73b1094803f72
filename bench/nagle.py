"""Nagle benchmark: senders that leave Nagle's algorithm on, against oxidip and dcmtk storescp.

Debian's dcmtk 3.6.7 (and Orthanc 1.10, built on it) writes a PDU header and its body
separately; with Nagle on (no ``TCP_NODELAY=1`` in its environment) the body waits until the
header is acknowledged, and a receiver that delays its ACKs makes every message wait ~40 ms.
oxidip acknowledges at once (TCP_QUICKACK, ``rust/transport/stream.rs``); dcmtk's
storescp does not. The target (issue 9): a Nagle-on sender reaches at least 80% of its
TCP_NODELAY rate into oxidip.

Measured, each sender with Nagle on (``nagle``) and with ``TCP_NODELAY=1`` (``nodelay``) in
its environment, into each receiver, on the receive benchmark's small workload (``--small``
Secondary Capture 32x32 instances, one series):

  storescu   dcmtk ``storescu --scan-directories``, one association; time from start to exit.
  orthanc    Orthanc pushing the series (``POST /modalities/{name}/store``, synchronous), one
             Orthanc per mode, each loaded once with the series; time of the REST call.

into ``oxidip`` (``python -m oxidip serve`` on its defaults) and ``dcmtk storescp`` (one
process; TCP_NODELAY=1 in its own environment, which only concerns what it sends). And our
own requestor the other way round: ``oxidip bench send`` (the Rust load generator, one
association, the same number of ~2 KB instances) into storescp with Nagle on and with
TCP_NODELAY=1.

Each repetition runs every combination once, in an order rotated per repetition, each run a
fresh receiver process on a fresh storage directory, checked to hold every instance. Reports
per sender and receiver the median instances/s of each mode, min-max, and the ratio
nagle/nodelay, as markdown on stdout and in ``bench/results/nagle-<date>-<hhmm>.md``.

    .venv/bin/python bench/nagle.py                  # 1000 instances, 5 repetitions, ~10 minutes
    .venv/bin/python bench/nagle.py --small 20 --repeats 1   # smoke test, seconds
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from receive import Workload, generate_small

from oxidip._boundary import LoadOptions
from oxidip.bench.receivers import (
    RECEIVERS,
    RunContext,
    Running,
    count_files,
    start_command,
)
from oxidip.bench.send import EXPLICIT_VR_LITTLE_ENDIAN, send_load
from oxidip.bench.tools import HOST, cpu_model, free_port, need, versions

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The Orthanc launcher the tests use (its config, ports, readiness, REST calls).
sys.path.insert(0, str(HERE.parent))
from tests.helpers.orthanc import OrthancServer

#: The issue's target: a Nagle-on sender at least this fraction of its TCP_NODELAY rate.
TARGET = 0.80
MODES = ("nagle", "nodelay")
RECEIVER_NAMES = ("oxidip", "dcmtk storescp")
SENDERS = ("storescu", "orthanc")
#: Our requestor's rows: sender name, and the storescp modes it sends to.
REQUESTOR = "oxidip bench send"
SEND_TIMEOUT = 600.0


def environment(mode: str) -> dict[str, str]:
    """This process's environment with (``nodelay``) or without (``nagle``) TCP_NODELAY=1."""
    env = {key: value for key, value in os.environ.items() if key != "TCP_NODELAY"}
    if mode == "nodelay":
        env["TCP_NODELAY"] = "1"
    return env


@dataclass
class Run:
    sender: str
    mode: str
    receiver: str
    repetition: int
    seconds: float
    count: int

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


# --- senders ----------------------------------------------------------------------------------


def storescu(mode: str, running: Running, workload: Workload, log: TextIO) -> float:
    args = [need("storescu"), "-aet", "BENCHSCU", "-aec", running.aet, "--scan-directories"]
    started = time.perf_counter()
    result = subprocess.run(
        [*args, HOST, str(running.port), str(workload.directory)],
        env=environment(mode),
        capture_output=True,
        text=True,
        timeout=SEND_TIMEOUT,
        check=False,
    )
    seconds = time.perf_counter() - started
    log.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"storescu ({mode}) exited {result.returncode}: {result.stderr[-2000:]}")
    return seconds


@dataclass
class LoadedOrthanc:
    """An Orthanc holding the workload's series, pushing it on demand."""

    server: OrthancServer
    series_id: str

    def push(self, running: Running) -> float:
        self.server.add_modality("receiver", running.aet, HOST, running.port)
        started = time.perf_counter()
        job = self.server.store_series("receiver", self.series_id)
        seconds = time.perf_counter() - started
        if job.get("FailedInstancesCount", 0):
            raise RuntimeError(f"Orthanc push failed: {job}")
        return seconds


@contextmanager
def orthancs(workdir: Path, workload: Workload) -> Iterator[dict[str, LoadedOrthanc]]:
    """One Orthanc per mode, each loaded with the workload's series."""
    with ExitStack() as stack:
        loaded = {}
        for mode in MODES:
            server = OrthancServer(workdir / f"orthanc-{mode}", environment=environment(mode))
            stack.enter_context(server)
            for path in sorted(workload.directory.iterdir()):
                server.upload(path)
            [series] = server.series()
            loaded[mode] = LoadedOrthanc(server, str(series["ID"]))
        yield loaded


# --- receivers --------------------------------------------------------------------------------


def start_receiver(name: str, storage: Path, log: TextIO) -> Running:
    spec = RECEIVERS[name]
    storage.mkdir(parents=True)
    return spec.start(RunContext(storage=storage, log=log, aet=spec.aet))


def start_storescp(mode: str, storage: Path, log: TextIO) -> Running:
    """dcmtk's storescp with (``nodelay``) or without (``nagle``) TCP_NODELAY=1: what our
    requestor sends to."""
    storage.mkdir(parents=True)
    port = free_port()
    args = [need("storescp"), "-aet", "STORESCP", "-od", str(storage), str(port)]
    return start_command(args, port=port, aet="STORESCP", log=log, env=environment(mode))


def requestor(running: Running, count: int) -> float:
    options = LoadOptions(
        addr=f"{HOST}:{running.port}",
        calling_aet="BENCHSCU",
        called_aet=running.aet,
        associations=1,
        instances=count,
        size=2048,
        transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
        max_pdu_length=16384,
        timeout=SEND_TIMEOUT,
    )
    report = send_load(options)
    if report.failures or report.errors or report.instances != count:
        raise RuntimeError(f"oxidip bench send failed: {report}")
    return report.seconds


# --- the benchmark ----------------------------------------------------------------------------


@dataclass
class Case:
    """One combination, run once per repetition."""

    sender: str
    mode: str
    receiver: str
    #: Starts the receiver on a storage directory, sends, returns the seconds.
    run: Callable[[Path, TextIO], float]


def cases(workload: Workload, loaded: dict[str, LoadedOrthanc]) -> list[Case]:
    def into(
        receiver: str, send: Callable[[Running, TextIO], float]
    ) -> Callable[[Path, TextIO], float]:
        def run(storage: Path, log: TextIO) -> float:
            running = start_receiver(receiver, storage, log)
            try:
                return send(running, log)
            finally:
                running.stop()

        return run

    def requestor_into(mode: str) -> Callable[[Path, TextIO], float]:
        def run(storage: Path, log: TextIO) -> float:
            running = start_storescp(mode, storage, log)
            try:
                return requestor(running, workload.count)
            finally:
                running.stop()

        return run

    def storescu_sends(mode: str) -> Callable[[Running, TextIO], float]:
        return lambda running, log: storescu(mode, running, workload, log)

    def orthanc_pushes(mode: str) -> Callable[[Running, TextIO], float]:
        return lambda running, log: loaded[mode].push(running)

    found = []
    for receiver in RECEIVER_NAMES:
        for mode in MODES:
            found.append(Case("storescu", mode, receiver, into(receiver, storescu_sends(mode))))
            found.append(Case("orthanc", mode, receiver, into(receiver, orthanc_pushes(mode))))
    for mode in MODES:
        found.append(Case(REQUESTOR, mode, f"dcmtk storescp ({mode})", requestor_into(mode)))
    return found


def measure(case: Case, storage: Path, log: TextIO, rep: int, count: int) -> Run:
    log.write(f"\n=== {case.sender} ({case.mode}) -> {case.receiver} / repetition {rep} ===\n")
    seconds = case.run(storage, log)
    stored = count_files(storage)
    if stored != count:
        raise RuntimeError(f"{case.receiver} stored {stored} of {count} instances")
    return Run(case.sender, case.mode, case.receiver, rep, seconds, count)


def report(
    runs: list[Run], workload: Workload, args: argparse.Namespace, argv: Sequence[str]
) -> str:
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# Nagle benchmark, {now}",
        "",
        f"Command: `{' '.join(['bench/nagle.py', *argv])}`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.system()} "
        f"{platform.release()}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + ".",
        "",
        (
            f"Workload: {workload.count} x {workload.description} "
            f"({workload.total_bytes / 1e6:.1f} MB), one association. "
            f"Repetitions: {args.repeats}, every combination once per repetition, order "
            "rotated, a fresh receiver each run. `nagle`: the sender without TCP_NODELAY in "
            "its environment; `nodelay`: with TCP_NODELAY=1. Ratio: median nagle rate / "
            f"median nodelay rate (target for oxidip: >= {TARGET:.0%})."
        ),
        "",
        "| sender | receiver | nagle inst/s (min-max) | nodelay inst/s (min-max) | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    pairs: dict[tuple[str, str], dict[str, list[float]]] = {}
    for run in runs:
        # The requestor's receivers differ by mode: one row for both.
        receiver = "dcmtk storescp" if run.sender == REQUESTOR else run.receiver
        pairs.setdefault((run.sender, receiver), {}).setdefault(run.mode, []).append(run.per_second)
    for (sender, receiver), modes in pairs.items():
        cells = []
        medians = {}
        for mode in MODES:
            rates = modes.get(mode, [])
            medians[mode] = statistics.median(rates) if rates else 0.0
            cells.append(
                f"{medians[mode]:,.0f} ({min(rates):,.0f}-{max(rates):,.0f})" if rates else "n/a"
            )
        ratio = medians["nagle"] / medians["nodelay"] if medians["nodelay"] else 0.0
        lines.append(f"| {sender} | {receiver} | {cells[0]} | {cells[1]} | {ratio:.2f} |")
    lines += [
        "",
        (
            "Rows `oxidip bench send`: our requestor (which sets TCP_NODELAY) sends to storescp; "
            "the modes are storescp's (Nagle on: its responses wait for our acknowledgement)."
        ),
        "",
        "Raw runs (seconds): "
        + "; ".join(
            f"{r.sender}/{r.mode}->{r.receiver}#{r.repetition} {r.seconds:.3f}" for r in runs
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="instances per run")
    parser.add_argument("--repeats", type=int, default=5, help="repetitions")
    parser.add_argument("--workdir", type=Path, default=None, help="default: system temp dir")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown report path (default: bench/results/nagle-<date>-<hhmm>.md)",
    )
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="oxidip-nagle-", dir=args.workdir))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H%M")
    output = args.output or RESULTS / f"nagle-{stamp}.md"
    log_path = workdir / "receivers.log"
    print(f"work directory {workdir}; receiver output in {log_path}", file=sys.stderr)
    runs: list[Run] = []
    try:
        workload = generate_small(workdir / "series", args.small)
        with orthancs(workdir, workload) as loaded, log_path.open("w") as log:
            all_cases = cases(workload, loaded)
            for rep in range(args.repeats):
                shift = rep % len(all_cases)
                for index, case in enumerate(all_cases[shift:] + all_cases[:shift]):
                    storage = workdir / f"store-{rep}-{index}"
                    run = measure(case, storage, log, rep, workload.count)
                    runs.append(run)
                    print(
                        f"rep {rep} {case.sender:18} {case.mode:8} -> {case.receiver:24} "
                        f"{run.seconds:8.3f} s {run.per_second:9.0f} inst/s",
                        file=sys.stderr,
                    )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(runs, workload, args, argv)
    print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print(f"report written to {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
