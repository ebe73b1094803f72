"""``oxidip bench pull``: the same series retrieved from Orthanc (the PACS) by ``oxidip pull``
(``--serve``: its own receiver in process; ``--method move`` and ``--method get``), by dcmtk
``movescu`` (one C-MOVE per series on one association, to a dcmtk ``storescp``) and by dcmtk
``getscu`` (one C-GET per series on one association), and Orthanc pushing the same series to
``storescp`` itself (``POST /modalities/{name}/store``: the PACS's own send rate, no
query/retrieve). Methods alternate (the order rotates every repetition); the report gives
medians with min-max, the ratios to the dcmtk tool doing the same, oxidip's overhead over
Orthanc's push, the client's CPU time and peak resident memory. Writes ``pull-<date>-<hhmm>.md``,
``.json`` and ``.png`` into the output directory.

Workloads (``--quick`` shrinks each, for smoke tests): ``small``: 1,200 Secondary Capture
instances of ~2 KB in 3 studies of 4 series; ``ct``: 240 CT instances 512x512 16-bit in 3
studies of 2 series; ``ct-1200``: the same with 1,200 (the issue's "1,000+ instances" at CT
size, ~630 MB: a run long enough that oxidip's fixed start-up no longer decides it). Loaded
into Orthanc by the load generator before the first run.

oxidip's time is its process's, start to exit: interpreter start, the C-FIND walk from the
study-level queries down to the series, the retrieves, and the registry's completeness check
included; dcmtk's tools are given the series (one query file each) and do no C-FIND. Every
receiving side writes into a fresh directory of the storage each run, and must hold every
instance at the end.
"""

import argparse
import compileall
import datetime
import functools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import msgspec

import oxidip
from oxidip._boundary import LoadOptions
from oxidip.bench import pull_report
from oxidip.bench.arguments import Subparsers, add_comparison, add_run_arguments
from oxidip.bench.forward import run_measured
from oxidip.bench.model import CT_SLICE, Context, Failure, Measurement, Workload
from oxidip.bench.orthanc import OrthancServer
from oxidip.bench.pull_report import GETSCU, MOVESCU, ORTHANC_PUSH, OXIDIP_GET, OXIDIP_MOVE
from oxidip.bench.receivers import RECEIVERS, RunContext, count_files
from oxidip.bench.send import EXPLICIT_VR_LITTLE_ENDIAN, send_load
from oxidip.bench.tools import HOST, INSTALL_HINT, dcmtk_env, free_port, need, tool

__all__ = ["FULL", "METHODS", "QUICK", "PullResults", "add_parser", "main"]


#: Seconds any run may take.
TIMEOUT = 900.0
#: dcmtk's DIMSE and ACSE timeouts (``-td``, ``-ta``): it waits forever by default.
DCMTK_TIMEOUT = "60"
METHODS = (OXIDIP_MOVE, OXIDIP_GET, MOVESCU, GETSCU, ORTHANC_PUSH)
OUR_AET = "OXIDIP"
#: Studies per workload; a workload's ``associations`` are its series per study.
STUDIES = 3

FULL: tuple[Workload, ...] = (
    Workload("small", "sc", 2048, 1_200, 4),
    Workload("ct", "ct", CT_SLICE, 240, 2, by_bytes=True),
    Workload("ct-1200", "ct", CT_SLICE, 1_200, 2, by_bytes=True),
)
QUICK: tuple[Workload, ...] = (
    Workload("small", "sc", 2048, 24, 2),
    Workload("ct", "ct", CT_SLICE, 6, 1, by_bytes=True),
    Workload("ct-1200", "ct", CT_SLICE, 12, 2, by_bytes=True),
)


class SeriesRef(msgspec.Struct, frozen=True):
    study_instance_uid: str
    series_instance_uid: str


class Loaded(msgspec.Struct):
    """A workload as Orthanc holds it."""

    series: list[SeriesRef]
    instances: int
    #: Data set bytes in all, as Orthanc reports its files' sizes.
    bytes: int


class PullResults(msgspec.Struct):
    """A pull comparison: what ran, and how (also its JSON file)."""

    context: Context
    when: datetime.datetime
    workloads: list[Workload]
    methods: list[str]
    measurements: list[Measurement]
    failures: list[Failure]
    orthanc_version: str


def add_parser(commands: Subparsers) -> None:
    """Registers ``pull`` under ``oxidip bench`` (sets ``func``)."""
    parser = add_comparison(
        commands,
        "pull",
        "retrieve the same series from Orthanc with oxidip pull, movescu and getscu;"
        " report and chart",
        __doc__,
        lambda args: run(args, sys.argv[1:]),
    )
    add_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(
        parser,
        FULL,
        "directory under which Orthanc's storage and the received files go (default:"
        " /dev/shm, a tmpfs: the retrieves are measured, not this machine's disk)",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated methods among {', '.join(METHODS)} (default: all)",
    )


# --- the PACS ---------------------------------------------------------------------------------


def load(orthanc: OrthancServer, workload: Workload) -> Loaded:
    """The load generator sends the workload to Orthanc: ``STUDIES`` runs, each one study of
    ``workload.associations`` series (one per association)."""
    before = {s["ID"] for s in orthanc.series()}
    per_study = workload.instances // STUDIES
    for _ in range(STUDIES):
        report = send_load(
            LoadOptions(
                addr=f"{HOST}:{orthanc.dicom_port}",
                calling_aet="BENCH-LOAD",
                called_aet=orthanc.aet,
                associations=workload.associations,
                instances=per_study,
                size=workload.size,
                transfer_syntax=EXPLICIT_VR_LITTLE_ENDIAN,
                max_pdu_length=16384,
                timeout=TIMEOUT,
                image=workload.image,
            )
        )
        if report.instances != per_study or report.failures or report.errors:
            raise RuntimeError(f"loading {workload.key} into Orthanc: {report}")
    added = [s for s in orthanc.series() if s["ID"] not in before]
    refs, instances, size = [], 0, 0
    for series in added:
        tags = series["MainDicomTags"]
        study = orthanc.get(f"/studies/{series['ParentStudy']}")
        refs.append(
            SeriesRef(study["MainDicomTags"]["StudyInstanceUID"], tags["SeriesInstanceUID"])
        )
        statistics = orthanc.get(f"/series/{series['ID']}/statistics")
        instances += int(statistics["CountInstances"])
        size += int(statistics["UncompressedSize"])
    if instances != per_study * STUDIES:
        raise RuntimeError(f"Orthanc holds {instances} {workload.key} instances")
    return Loaded(refs, instances, size)


# --- one run ----------------------------------------------------------------------------------


def _query_files(series: list[SeriesRef], directory: Path) -> list[str]:
    """One SERIES-level Study Root identifier per series (PS3.4 C.6.2.1), for dcmtk."""
    # Imported here: `oxidip` loads pydicom only when it must (tests/test_completeness.py).
    import pydicom
    from pydicom.dataset import Dataset

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ref in enumerate(series):
        ds = Dataset()
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = ref.study_instance_uid
        ds.SeriesInstanceUID = ref.series_instance_uid
        path = directory / f"q{n}.dcm"
        pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
        paths.append(str(path))
    return paths


def _oxidip(
    method: str, loaded: Loaded, orthanc: OrthancServer, run_dir: Path, received: Path
) -> tuple[list[str], dict[str, str]]:
    """``oxidip pull --serve`` of every study (oxidip walks down to the series), with its
    receiver on a port Orthanc knows as our AE title."""
    port = free_port()
    orthanc.add_modality("oxidip", OUR_AET, HOST, port)
    studies = sorted({ref.study_instance_uid for ref in loaded.series})
    queries = run_dir / "queries.json"
    queries.write_bytes(
        msgspec.json.encode(
            [{"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": s} for s in studies]
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OXIDIP_")}
    env.update(
        {
            "OXIDIP_FILES_ROOT": str(received),
            "OXIDIP_LISTENER_HOST": HOST,
            "OXIDIP_LISTENER_PORT": str(port),
            "OXIDIP_SCP_AET": OUR_AET,
            "OXIDIP_PACS_ADDRESS": f"{orthanc.aet}={HOST}:{orthanc.dicom_port}",
            "OXIDIP_LOG_FORMAT": "json",
        }
    )
    args = [sys.executable, "-m", "oxidip", "pull", "--pacs", orthanc.aet, "--serve"]
    return [*args, "--method", method, str(queries)], env


def _commands(
    method: str, loaded: Loaded, orthanc: OrthancServer, run_dir: Path, received: Path
) -> list[tuple[list[str], dict[str, str]]]:
    """The processes a retrieve by ``method`` runs one after the other, with their
    environments: oxidip pull once; movescu once with a query file per series (one C-MOVE
    each on one association); getscu once per series (dcmtk 3.6.7's getscu dies of SIGSEGV
    on the second query file of an association)."""
    if method in (OXIDIP_MOVE, OXIDIP_GET):
        verb = "move" if method == OXIDIP_MOVE else "get"
        return [_oxidip(verb, loaded, orthanc, run_dir, received)]
    queries = _query_files(loaded.series, run_dir / "queries")
    program = "movescu" if method == MOVESCU else "getscu"
    args = [need(program), "-S", "-aet", program.upper(), "-aec", orthanc.aet]
    args += ["-td", DCMTK_TIMEOUT, "-ta", DCMTK_TIMEOUT]
    peer = [HOST, str(orthanc.dicom_port)]
    if method == MOVESCU:
        return [([*args, "-aem", "STORESCP", *peer, *queries], dcmtk_env())]
    return [([*args, "-od", str(received), *peer, query], dcmtk_env()) for query in queries]


def measure(
    method: str,
    workload: Workload,
    loaded: Loaded,
    orthanc: OrthancServer,
    workdir: Path,
    log: TextIO,
    rep: int,
) -> Measurement:
    """Retrieves ``loaded`` with ``method`` into a fresh directory; checks that every
    instance arrived."""
    run_dir = workdir / f"{rep}-{workload.key}-{method.replace(' ', '_')}"
    received = run_dir / "received"
    received.mkdir(parents=True)
    log.write(f"\n=== {method} / {workload.key} / repetition {rep} ===\n")
    log.flush()
    cpu_seconds, peak_rss = 0.0, 0
    scp = None
    if method in (MOVESCU, ORTHANC_PUSH):
        scp = RECEIVERS["dcmtk storescp"].start(
            RunContext(storage=received, log=log, aet="STORESCP")
        )
        orthanc.add_modality("storescp", "STORESCP", HOST, scp.port)
    try:
        if method == ORTHANC_PUSH:
            started = time.perf_counter()
            resources = sorted({ref.study_instance_uid for ref in loaded.series})
            ids = [orthanc.request("POST", "/tools/lookup", uid)[0]["ID"] for uid in resources]
            pushed = orthanc.request(
                "POST",
                "/modalities/storescp/store",
                {"Resources": ids, "Synchronous": True},
                timeout=TIMEOUT,
            )
            seconds = time.perf_counter() - started
            if pushed.get("FailedInstancesCount"):
                raise RuntimeError(f"Orthanc's push failed: {pushed}")
        else:
            commands = _commands(method, loaded, orthanc, run_dir, received)
            started = time.perf_counter()
            for args, env in commands:
                status, cpu, rss = run_measured(args, env, log)
                cpu_seconds, peak_rss = cpu_seconds + cpu, max(peak_rss, rss)
                if status != 0:
                    raise RuntimeError(f"{method} exited with {status}")
            seconds = time.perf_counter() - started
    finally:
        if scp is not None:
            scp.stop()
    # oxidip's journal, registry and temporary files are its own (``.oxidip*``).
    got = count_files(received)
    shutil.rmtree(run_dir, ignore_errors=True)
    if got != loaded.instances:
        raise RuntimeError(f"{got} of {loaded.instances} instances arrived with {method}")
    return Measurement(
        workload=workload.key,
        receiver=method,
        repetition=rep,
        seconds=seconds,
        instances=loaded.instances,
        bytes=loaded.bytes,
        cpu_seconds=cpu_seconds,
        peak_rss=peak_rss,
        latency_p50_ms=0.0,
        latency_p99_ms=0.0,
    )


# --- the whole comparison ---------------------------------------------------------------------


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if not args.no_chart:
        no_chart = pull_report.chart_unavailable()
        if no_chart is not None:
            print(
                f"oxidip bench pull: the chart needs matplotlib ({no_chart}): install it"
                " (pip install 'oxidip[bench]'), or pass --no-chart",
                file=sys.stderr,
            )
            return 2
    tools = ("storescp", "echoscu", "movescu", "getscu", "time")
    missing = [t for t in tools if tool(t) is None]
    if missing:
        hints = "; ".join(INSTALL_HINT.get(m, f"install {m}") for m in missing)
        print(f"oxidip bench pull: needs {missing} ({hints})", file=sys.stderr)
        return 2
    table = QUICK if args.quick else FULL
    keys = [k.strip() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in keys if k not in {w.key for w in table}]
    if unknown:
        print(f"oxidip bench pull: unknown workloads {unknown}", file=sys.stderr)
        return 2
    workloads = [w for w in table if w.key in keys]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or set(methods) - set(METHODS):
        print(
            f"oxidip bench pull: unknown methods {sorted(set(methods) - set(METHODS))}",
            file=sys.stderr,
        )
        return 2
    compile_bytecode()
    workdir = Path(tempfile.mkdtemp(prefix="oxidip-pull-", dir=args.storage))
    log_path = workdir / "processes.log"
    print(f"files under {workdir}; process output in {log_path}", file=sys.stderr)
    context = Context(
        command="oxidip bench " + " ".join(argv[1:] if argv[:1] == ["bench"] else argv),
        storage=str(args.storage or tempfile.gettempdir()),
        repeats=args.repeats,
    )
    results = PullResults(context, datetime.datetime.now(), workloads, methods, [], [], "")
    # Orthanc answers C-FIND and C-MOVE only for AE titles among its modalities.
    clients = {"movescu": ("MOVESCU", HOST, 1), "getscu": ("GETSCU", HOST, 1)}
    try:
        with (
            log_path.open("w") as log,
            OrthancServer(
                workdir / "orthanc", modalities=clients, environment=dcmtk_env()
            ) as orthanc,
        ):
            results.orthanc_version = orthanc.version
            loaded = {w.key: load(orthanc, w) for w in workloads}
            for rep in range(args.repeats):
                for workload in workloads:
                    os.sync()
                    for method in methods[rep % len(methods) :] + methods[: rep % len(methods)]:
                        attempt = functools.partial(
                            measure,
                            method,
                            workload,
                            loaded[workload.key],
                            orthanc,
                            workdir,
                            log,
                            rep,
                        )
                        _attempt(attempt, results, workload.key, method, rep)
        written = pull_report.write(args.output_dir, results, with_chart=not args.no_chart)
        print(written.read_text())
        print(f"written to {written}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if results.failures else 0


def compile_bytecode() -> None:
    """Compiles oxidip's modules as ``pip install`` does, so that no run pays for it: an
    editable install (``maturin develop``) run with ``PYTHONDONTWRITEBYTECODE`` (as on some
    machines and images) would compile every module ``oxidip pull`` imports at each start,
    ~20 ms of a run that lasts half a second."""
    compileall.compile_dir(Path(oxidip.__file__).parent, quiet=1)


def _attempt(
    measure: Callable[[], Measurement], results: PullResults, workload: str, who: str, rep: int
) -> None:
    """Runs one measurement; records it, or its failure (the comparison goes on)."""
    try:
        m = measure()
    except RuntimeError as error:
        results.failures.append(Failure(workload, who, rep, str(error)[:2000]))
        print(f"rep {rep} {workload:6} {who:18} FAILED: {error}"[:300], file=sys.stderr)
        return
    results.measurements.append(m)
    print(
        f"rep {rep} {workload:6} {who:18} {m.seconds:7.3f} s {m.per_second:8.0f} inst/s"
        f" {m.mb_per_second:8.1f} MB/s cpu {m.cpu_seconds:6.2f} s",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``bench/pull.py``'s entry point: the same as ``oxidip bench pull``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="oxidip bench pull", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv), ["pull", *argv])
