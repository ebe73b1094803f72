"""The receivers the benchmarks compare, each started as a process of its own writing into a
given storage directory, and told when it is ready to receive.

Registered (``RECEIVERS``, in table order): oxidip with its SQLite registry and with
PostgreSQL (``python -m oxidip serve`` on its defaults otherwise), dcmtk ``storescp`` single
process and ``--fork``, and, as a reference that stores nothing, ``--ignore``; a pynetdicom
SCP writing the received bytes (``oxidip/bench/pynetdicom_scp.py``) and dicom-rs
``dicom-storescp --non-blocking``. Adding
one is a decorated function, e.g. a command that takes its port on the command line and
answers C-ECHO once it is ready:

    @receiver("my scp", needs=("my-scp", "echoscu"), aet="MYSCP")
    def my_scp(ctx: RunContext) -> Running:
        port = free_port()
        return start_command(
            [need("my-scp"), "--port", str(port), "--out", str(ctx.storage)],
            port=port, aet=ctx.aet, log=ctx.log,
        )
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from oxidip.bench.tools import HOST, dcmtk_env, free_port, need, tool

__all__ = [
    "BASELINE_OXIDIP",
    "RECEIVERS",
    "ReceiverSpec",
    "RunContext",
    "Running",
    "add_oxidip_baseline",
    "count_files",
    "receiver",
    "start_announcing",
    "start_command",
    "start_oxidip",
]

READY_TIMEOUT = 60.0
#: The receiver ``add_oxidip_baseline`` registers.
BASELINE_OXIDIP = "oxidip baseline"
PYNETDICOM_SCP = Path(__file__).resolve().parent / "pynetdicom_scp.py"


@dataclass
class RunContext:
    storage: Path
    log: TextIO
    aet: str
    #: For receivers with ``registry="postgresql"``: the URL of a fresh, empty schema.
    database: str | None = None


@dataclass
class Running:
    """A started receiver: where to send, how to stop it."""

    port: int
    aet: str
    proc: subprocess.Popen[str]
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
    #: Serves several associations at once (a single-process storescp serves one at a time:
    #: an idle association would block it).
    concurrent: bool
    #: Where it registers instances: None, "sqlite" (under the storage root) or "postgresql"
    #: (``RunContext.database``).
    registry: str | None
    #: Writes the instances it receives (false for a reference that only receives them).
    stores: bool = True

    def missing(self) -> list[str]:
        return [name for name in self.needs if tool(name) is None]


RECEIVERS: dict[str, ReceiverSpec] = {}


def receiver(
    name: str,
    *,
    needs: tuple[str, ...] = (),
    aet: str = "BENCHSCP",
    concurrent: bool = True,
    registry: str | None = None,
    stores: bool = True,
) -> Callable[[Callable[[RunContext], Running]], Callable[[RunContext], Running]]:
    """Registers a receiver under ``name`` (the order of registration is the table order)."""

    def register(start: Callable[[RunContext], Running]) -> Callable[[RunContext], Running]:
        RECEIVERS[name] = ReceiverSpec(name, start, needs, aet, concurrent, registry, stores)
        return start

    return register


def _pump(stream: TextIO | None, log: TextIO, on_line: Callable[[str], None] | None) -> None:
    if stream is None:
        return
    for line in stream:
        log.write(line)
        if on_line is not None:
            on_line(line)


def _echo_ready(port: int, aet: str, deadline: float, proc: subprocess.Popen[str]) -> None:
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


def count_files(root: Path) -> int:
    """Files stored under ``root``, oxidip's own (``.oxidip*``) left out."""
    count = 0
    for directory, subdirectories, files in os.walk(root):
        if Path(directory) == root:
            subdirectories[:] = [d for d in subdirectories if not d.startswith(".oxidip")]
        count += len(files)
    return count


# --- the receivers --------------------------------------------------------------------------


def _oxidip_listening(field: str) -> Callable[[str], int | None]:
    """Finds a port in oxidip's JSON ``listening`` log line: ``port`` (the plain listener's)
    or ``tls_port``."""

    def port(line: str) -> int | None:
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if isinstance(record, dict) and record.get("msg") == "listening":
            return int(record[field])
        return None

    return port


def start_oxidip(
    ctx: RunContext,
    settings: dict[str, str],
    port_field: str = "port",
    python: str = sys.executable,
) -> Running:
    """``python -m oxidip serve`` on its defaults (default path template, no fsync), changed
    by ``settings`` (OXIDIP_* variables); ready on the port its ``listening`` log line gives
    as ``port_field``: ``port`` (the plain listener's) or ``tls_port``. ``python``: the
    interpreter whose oxidip runs (another installation's, to compare two builds)."""
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
        [python, "-m", "oxidip", "serve"],
        aet=ctx.aet,
        log=ctx.log,
        env=env,
        parse_port=_oxidip_listening(port_field),
    )


@receiver("oxidip", aet="OXIDIP", registry="sqlite")
def oxidip(ctx: RunContext) -> Running:
    """oxidip on its defaults: registration in SQLite under the storage root."""
    return start_oxidip(ctx, {})


@receiver("oxidip postgresql", aet="OXIDIP", registry="postgresql")
def oxidip_postgresql(ctx: RunContext) -> Running:
    """oxidip registering in PostgreSQL (a fresh schema per run)."""
    if ctx.database is None:
        raise RuntimeError("oxidip postgresql needs a database URL")
    return start_oxidip(ctx, {"OXIDIP_DB_CONNECTION": ctx.database})


def add_oxidip_baseline(python: str) -> str:
    """Registers oxidip as installed for the interpreter ``python`` (say, a build of an earlier
    commit in a venv of its own), on its defaults, as the receiver ``BASELINE_OXIDIP``: a
    before/after comparison in one run. Returns its name."""

    def start(ctx: RunContext) -> Running:
        return start_oxidip(ctx, {}, python=python)

    RECEIVERS[BASELINE_OXIDIP] = ReceiverSpec(
        BASELINE_OXIDIP, start, (), "OXIDIP", concurrent=True, registry="sqlite"
    )
    return BASELINE_OXIDIP


def _storescp(ctx: RunContext, *options: str) -> Running:
    port = free_port()
    return start_command(
        [need("storescp"), *options, "-aet", ctx.aet, "-od", str(ctx.storage), str(port)],
        port=port,
        aet=ctx.aet,
        log=ctx.log,
    )


@receiver("dcmtk storescp", needs=("storescp", "echoscu"), aet="STORESCP", concurrent=False)
def dcmtk_storescp(ctx: RunContext) -> Running:
    """dcmtk's storescp with default options: one process serving one association at a time,
    every storage SOP class dcmtk knows, Part 10 files into ``-od``; TCP_NODELAY=1."""
    return _storescp(ctx)


@receiver("dcmtk storescp --fork", needs=("storescp", "echoscu"), aet="STORESCP")
def dcmtk_storescp_fork(ctx: RunContext) -> Running:
    """dcmtk's storescp ``--fork``: a child process per association."""
    return _storescp(ctx, "--fork")


@receiver(
    "dcmtk storescp --ignore",
    needs=("storescp", "echoscu"),
    aet="STORESCP",
    concurrent=False,
    stores=False,
)
def dcmtk_storescp_ignore(ctx: RunContext) -> Running:
    """A reference, not a contender: dcmtk's storescp receiving every data set and storing
    nothing (``--ignore``), what this sender and machine allow a receiver that writes no
    file."""
    return _storescp(ctx, "--ignore")


def _pynetdicom_port(line: str) -> int | None:
    if line.startswith("listening "):
        return int(line.split()[1])
    return None


@receiver("pynetdicom", aet="PYNETDICOM")
def pynetdicom_scp(ctx: RunContext) -> Running:
    """``oxidip/bench/pynetdicom_scp.py``: raw received bytes written as they are."""
    return start_announcing(
        [
            sys.executable,
            str(PYNETDICOM_SCP),
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
    association), otherwise on its defaults: its built-in list of storage SOP classes plus
    Verification, every transfer syntax it supports, maximum PDU 16378. It accepts any called
    AE title (``--calling-ae-title`` is its own title, despite the name), binds 0.0.0.0 on
    ``-p`` and writes flat ``<SOPInstanceUID>.dcm`` Part 10 files into ``-o``."""
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
