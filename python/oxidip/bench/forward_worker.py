"""The processes ``oxidip bench forward`` measures oxidip's forwarding engine in, so that their
CPU time and peak memory are the engine's (and, for ``serve``, a receiving oxidip's) alone:

``python -m oxidip.bench.forward_worker forward JOB RESULT``
    forwards the job (msgpack of ``_boundary.ForwardJob``) with ``_core.Forwarder``, one
    association, and writes a ``ForwardRun`` (JSON) to RESULT: seconds from submit to the
    job's end (the engine lives as long as ``oxidip serve``: its start is not the job's cost).

``python -m oxidip.bench.forward_worker serve JOB RESULT``
    runs ``oxidip serve`` (configured from ``OXIDIP_*`` as usual) in this process while a
    thread forwards the job again and again, as serve will run its forwarder next to its
    receiver, until serve stops (SIGTERM); then writes a ``ForwardRun`` of all it forwarded.
    An empty job (no items) forwards nothing: the same process receiving alone.
"""

import resource
import sys
import threading
import time
from pathlib import Path

import msgspec

from oxidip import _core
from oxidip._boundary import (
    DeliveryResult,
    ForwarderConfig,
    ForwardJob,
    ForwardOutcome,
    ItemOutcome,
    JobEnded,
    JobEndKind,
)

__all__ = ["ForwardRun", "forward_job"]

_OUTCOMES = msgspec.msgpack.Decoder(list[ForwardOutcome])
#: Seconds: the engine's bound on every wait and write.
TIMEOUT = 600.0


class ForwardRun(msgspec.Struct):
    """What a worker forwarded."""

    seconds: float
    delivered: int
    failed: int
    #: Jobs that did not end ok, and why.
    errors: list[str]
    #: CPU seconds (user + system, every thread) the forwarding took.
    cpu_seconds: float = 0.0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def forward_job(forwarder: _core.Forwarder, job: ForwardJob) -> ForwardRun:
    """Forwards ``job`` to its end (the outcomes taken in batches, as serve will)."""
    started, cpu = time.perf_counter(), _cpu_seconds()
    forwarder.submit(msgspec.msgpack.encode([job]))
    delivered = failed = 0
    errors: list[str] = []
    while True:
        for outcome in _OUTCOMES.decode(forwarder.next_outcomes(10_000, 1.0)):
            if isinstance(outcome, ItemOutcome):
                if outcome.result == DeliveryResult.FAILED:
                    failed += 1
                else:
                    delivered += 1
            elif isinstance(outcome, JobEnded):
                if outcome.end != JobEndKind.OK:
                    errors.append(f"{outcome.end}: {outcome.error}")
                seconds = time.perf_counter() - started
                return ForwardRun(seconds, delivered, failed, errors, _cpu_seconds() - cpu)


def _engine() -> _core.Forwarder:
    config = ForwarderConfig(timeout=TIMEOUT, max_pdu_length=0, max_associations=4)
    return _core.Forwarder(msgspec.msgpack.encode(config))


def _forward_until(job: ForwardJob, stop: threading.Event, runs: list[ForwardRun]) -> None:
    forwarder = _engine()
    while not stop.is_set():
        runs.append(forward_job(forwarder, job))
    forwarder.stop(10.0)


def main(argv: list[str]) -> int:
    mode, job_path, result_path = argv
    job = msgspec.msgpack.decode(Path(job_path).read_bytes(), type=ForwardJob)
    if mode == "forward":
        run = forward_job(_engine(), job)
    elif mode == "serve":
        # Here, not at the top: the CLI imports oxidip.bench, which imports this module.
        from oxidip import cli

        stop, runs = threading.Event(), list[ForwardRun]()
        forwarding = threading.Thread(target=_forward_until, args=(job, stop, runs))
        if job.items:
            forwarding.start()
        started = time.perf_counter()
        try:
            status = cli.main(["serve"])
        finally:
            stop.set()
            if job.items:
                forwarding.join()
        run = ForwardRun(
            seconds=time.perf_counter() - started,
            delivered=sum(r.delivered for r in runs),
            failed=sum(r.failed for r in runs),
            errors=[e for r in runs for e in r.errors],
        )
        if status != 0:
            run.errors.append(f"oxidip serve exited with {status}")
    else:
        raise SystemExit(f"unknown mode {mode!r}: forward or serve")
    Path(result_path).write_bytes(msgspec.json.encode(run))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
