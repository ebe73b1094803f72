"""The forwarding component of ``oxidip serve``: queued jobs become deliveries.

One thread of its own (``oxidip-forward``) runs the loop; the event loop of ``serve`` never
waits for it. Each turn:

1. **Claim** (``Registry.claim_jobs``) as many jobs as each destination has room for: its
   ``max_associations`` minus the jobs this process runs for it; none for a destination
   whose circuit is open. Claims happen when woken (``wake``: a registration batch, with
   instance rules; a series leaving ``receiving``), when a job ended (room), when a retry is
   due, and at least every ``CLAIM_INTERVAL`` seconds (jobs queued by other processes,
   retries of theirs), at most every ``CLAIM_AT_MOST_EVERY``. Each claimed job becomes a
   ``_boundary.ForwardJob`` (the destination of the routes file, our calling AE title: the
   destination's or ``OXIDIP_SCP_AET``) submitted to the Rust engine (``_core.Forwarder``):
   one association per job.
2. **Record** what the engine reports, in batches (gathered for ``OUTCOME_LINGER`` once the
   first is in): item outcomes with one ``record_items`` call, then each job's end with
   ``end_job`` and the retry policy (``OXIDIP_FORWARD_RETRY_*``): done, failed (next attempt
   with backoff and jitter), dead, or back to pending. Each end is logged in words, sent to
   the hooks (``on_forwarded`` / ``on_forward_failed``, on the hooks' worker) and to NATS.
3. **Renew** the leases of running jobs every third of ``OXIDIP_FORWARD_LEASE``, well before
   they expire; a job whose lease was lost (taken by another process after a stall, or
   cancelled with ``oxidip queue cancel``) is aborted in the engine and left to its new
   state.
4. **Break** the circuit of a destination after ``OXIDIP_FORWARD_BREAKER_FAILURES`` transient
   job failures in a row (``oxidip.forwarding.breaker``): it is held in the registry and
   probed with C-ECHO (on a probe worker, never on this thread) at backoff intervals, then
   released when one passes.

A registry call that fails (database unreachable) keeps what it was recording and is tried
again after a backoff: an outcome is never dropped while the process lives; one lost with
the process (kill -9) costs at most a resend of the instances in flight.

``close`` (at shutdown): the engine stops (``Forwarder.stop``: no new items, those being sent
finish within the time left, then the associations are aborted), the last outcomes are
recorded, and every job not finished goes back to ``pending``, its delivered items staying
delivered: the next start, or another process, resends only the rest.
"""

import contextlib
import logging
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping

import msgspec

from oxidip import _core
from oxidip._boundary import (
    DeliveryResult,
    ForwardDestination,
    ForwarderConfig,
    ForwardJob,
    ForwardOutcome,
    ItemOutcome,
    JobEnded,
    JobEndKind,
)
from oxidip.config import ForwardConfig
from oxidip.forwarding.breaker import CircuitBreaker
from oxidip.hooks import Hooks
from oxidip.logs import one_line
from oxidip.notify import Notifier
from oxidip.registry import ClaimedJob, JobRow, JobState, Registry, RetryPolicy, unreachable
from oxidip.routing import Destination, Trigger
from oxidip.workers import Run, WorkQueue

__all__ = ["CLAIM_INTERVAL", "Forwarding", "ForwardingMetrics"]

log = logging.getLogger("oxidip.forwarding")

#: Seconds between two claims when nothing wakes the loop: how soon jobs queued by another
#: process, or whose retry is due, are seen at worst.
CLAIM_INTERVAL = 1.0
#: Seconds at least between two claims: registrations wake the loop many times a second
#: (with instance rules), and a claim is a write transaction (SQLite: the registrations'
#: lock). A job waits at most this long for its claim.
CLAIM_AT_MOST_EVERY = 0.01
#: Outcomes taken from the engine at once, and the longest wait for them (the loop's tick
#: while jobs run).
OUTCOME_BATCH = 1000
OUTCOME_WAIT = 0.1
#: Seconds the outcomes of running jobs are gathered, once the first is in, before they are
#: recorded (unless a job ends): one registry transaction per few dozen instances, not per
#: instance. Outcomes are recorded at most this much later.
OUTCOME_LINGER = 0.02
#: Seconds between two reads of the destinations held in the registry (held or released by
#: another process).
HELD_CHECK_INTERVAL = 5.0
#: Backoff of the loop after a failed registry call (first, most; seconds).
TROUBLE_BACKOFF = (0.1, 5.0)
#: Seconds the last outcomes are still awaited at shutdown once the engine's stop returned.
DRAIN_AT_LEAST = 1.0
#: Probes (C-ECHO) running at once.
PROBE_WORKERS = 2

_outcomes = msgspec.msgpack.Decoder(list[ForwardOutcome])
_encoder = msgspec.msgpack.Encoder()


class ForwardingMetrics:
    """What ``/metrics`` shows about forwarding (this process's share; plain numbers updated
    on the forwarding thread, read when scraped)."""

    def __init__(self) -> None:
        #: Items by result (delivered, warning, failed).
        self.items: Counter[str] = Counter()
        #: Job attempts ended, by the state they left the job in (done, failed, held, dead,
        #: pending, cancelled).
        self.jobs_ended: Counter[str] = Counter()
        #: Jobs being sent now.
        self.running = 0
        #: Destinations whose circuit is open.
        self.held = 0


class _Running(msgspec.Struct):
    """A job submitted to the engine and not recorded as ended yet."""

    job: ClaimedJob
    started: float  # monotonic


class _Probe(msgspec.Struct, frozen=True):
    destination: Destination
    calling_aet: str


class _ProbeResult(msgspec.Struct, frozen=True):
    destination: str
    error: str  # "" when the C-ECHO passed


class Forwarding:
    """See the module docstring. ``start`` once, then ``wake`` from any thread; ``begin_stop``
    and ``close`` at the end."""

    def __init__(
        self,
        *,
        registry: Registry,
        destinations: Mapping[str, Destination],
        triggers: frozenset[Trigger],
        forward: ForwardConfig,
        scp_aet: str,
        max_pdu_length: int,
        process_id: str,
        hooks: Hooks,
        notifier: Notifier,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.registry = registry
        self.destinations = dict(destinations)
        #: What the router queues jobs on (``Router.triggers``): a registration wakes the
        #: loop only with instance rules (or a route hook).
        self.triggers = triggers
        self.forward = forward
        self.scp_aet = scp_aet
        self.process_id = process_id
        self.hooks = hooks
        self.notifier = notifier
        self.clock = clock
        self.rng = rng or random.Random()
        self.retry = RetryPolicy(
            base=forward.retry_base, maximum=forward.retry_max, attempts=forward.attempts
        )
        self.metrics = ForwardingMetrics()
        self.breaker = CircuitBreaker(forward.breaker_failures, self.retry, self.rng)
        engine_config = ForwarderConfig(
            timeout=forward.timeout,
            max_pdu_length=max_pdu_length,
            max_associations=sum(d.max_associations for d in self.destinations.values()),
        )
        self.forwarder = _core.Forwarder(_encoder.encode(engine_config))

        self._running: dict[int, _Running] = {}
        self._per_destination: Counter[str] = Counter()
        #: Jobs whose lease another owner took: aborted, their end not recorded by us.
        self._lost: set[int] = set()
        self._unrecorded_items: list[ItemOutcome] = []
        self._unrecorded_ends: deque[JobEnded] = deque()
        #: Holds decided and not yet written to the registry (destination -> reason).
        self._holding: dict[str, str] = {}
        self._claim_at = 0.0
        self._last_claim = -CLAIM_AT_MOST_EVERY
        self._renew_at = 0.0
        self._held_check_at = 0.0
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._stop_deadline = 0.0  # monotonic
        self._probe_results: queue.SimpleQueue[_ProbeResult] = queue.SimpleQueue()
        self._probes: WorkQueue[_Probe] = WorkQueue(
            "forward-probes", self._probe, workers=PROBE_WORKERS
        )
        self._thread = threading.Thread(target=self._run, name="oxidip-forward", daemon=True)

    # --- the caller's side ----------------------------------------------------------------

    def start(self) -> None:
        log.info(
            "forwarding started",
            extra={
                "destinations": ", ".join(
                    f"{d.name} ({d.aet}@{d.host}:{d.port}, up to {d.max_associations}"
                    f" association{'s' if d.max_associations > 1 else ''})"
                    for d in self.destinations.values()
                ),
                "retry": f"after {self.retry.base:g} s, doubling up to {self.retry.maximum:g} s,"
                f" {self.retry.attempts} attempts",
                "lease": self.forward.lease,
                "breaker_failures": self.forward.breaker_failures,
            },
        )
        self._thread.start()

    def wake(self, trigger: Trigger | None = None) -> None:
        """Something may have been queued (by ``trigger``: nothing when the router has no
        rule for it; None: a series changed state): claim soon. Cheap; any thread."""
        if trigger is not None and trigger not in self.triggers:
            return
        self._claim_at = 0.0
        self._woken.set()

    def begin_stop(self, timeout: float) -> None:
        """Claims no more; the engine stops within ``timeout`` seconds (see ``close``)."""
        if not self._stopping.is_set():
            self._stop_deadline = time.monotonic() + timeout
            self._stopping.set()
            self._woken.set()

    def close(self, timeout: float) -> None:
        """Stops (``begin_stop`` unless called already) and waits for the thread: the last
        outcomes recorded, unfinished jobs back to pending. Idempotent."""
        self.begin_stop(timeout)
        if self._thread.ident is None:  # never started
            self.forwarder.stop(0)
            self._probes.shutdown(0)
            return
        self._thread.join(max(self._stop_deadline - time.monotonic(), 0) + DRAIN_AT_LEAST + 5)
        if self._thread.is_alive():
            log.warning(
                "forwarding did not stop in time",
                extra={
                    "running": len(self._running),
                    "meanwhile": "their leases expire and another start resends what was not"
                    " recorded as delivered",
                },
            )
        self._probes.shutdown(0)

    @property
    def running(self) -> int:
        return len(self._running)

    # --- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._turn()
                failures = 0
            except Exception as error:  # noqa: BLE001 - logged; the loop must go on
                failures += 1
                delay = min(TROUBLE_BACKOFF[0] * 2 ** (failures - 1), TROUBLE_BACKOFF[1])
                self._trouble(error, delay)
                self._stopping.wait(delay)
        self._finish()

    def _turn(self) -> None:
        now = self.clock()
        self._record()
        self._write_holds(now)
        self._take_probe_results(now)
        if now >= self._renew_at:
            self._renew(now)
        if now >= self._held_check_at:
            self._check_held(now)
        for name in self.breaker.due_probes(now):
            destination = self.destinations[name]
            self._probes.add(_Probe(destination, self._calling_aet(destination)))
        if now >= max(self._claim_at, self._last_claim + CLAIM_AT_MOST_EVERY):
            self._claim(now)
        self._wait(self.clock())
        self._record()

    def _wait(self, now: float) -> None:
        """Until outcomes arrive, something wakes the loop, or the next thing is due."""
        due = [self._renew_at, self._held_check_at, now + CLAIM_INTERVAL]
        due.append(max(self._claim_at, self._last_claim + CLAIM_AT_MOST_EVERY))
        probe = self.breaker.next_probe_at()
        if probe is not None:
            due.append(probe)
        timeout = min(max(min(due) - now, 0.0), CLAIM_INTERVAL)
        if self._running:
            self._take_outcomes(min(timeout, OUTCOME_WAIT))
        else:
            self._woken.wait(timeout)
        self._woken.clear()

    def _take_outcomes(self, timeout: float) -> None:
        """Waits up to ``timeout`` for outcomes; once some are in, gathers more for
        ``OUTCOME_LINGER`` unless a job ended (its room, log and hooks are not held back)."""
        linger_until = 0.0
        taken = 0
        while taken < OUTCOME_BATCH:
            outcomes = _outcomes.decode(
                self.forwarder.next_outcomes(OUTCOME_BATCH - taken, timeout)
            )
            if not outcomes:
                return
            taken += len(outcomes)
            ended = False
            for outcome in outcomes:
                if isinstance(outcome, ItemOutcome):
                    self._unrecorded_items.append(outcome)
                else:
                    self._unrecorded_ends.append(outcome)
                    ended = True
            now = time.monotonic()
            linger_until = linger_until or now + OUTCOME_LINGER
            if ended or now >= linger_until:
                return
            timeout = linger_until - now

    # --- claiming ---------------------------------------------------------------------------

    def _claim(self, now: float) -> None:
        self._last_claim = now
        self._claim_at = now + CLAIM_INTERVAL
        room: dict[str, int] = {}
        for name, destination in self.destinations.items():
            free = destination.max_associations - self._per_destination[name]
            if free > 0 and not self.breaker.is_open(name) and name not in self._holding:
                room[name] = free
        if not room:
            return
        claimed = self.registry.claim_jobs(self.process_id, room, self.forward.lease, now)
        jobs: list[ForwardJob] = []
        started = time.monotonic()
        for job in claimed:
            destination = self.destinations[job.destination]
            self._running[job.job_id] = _Running(job, started)
            self._per_destination[job.destination] += 1
            if not job.items:  # nothing left to send: done at once
                self._unrecorded_ends.append(JobEnded(job.job_id, JobEndKind.OK, ""))
                continue
            jobs.append(self._engine_job(job, destination))
            log.info(
                "forwarding",
                extra={
                    **_job_fields(job),
                    "instances": len(job.items),
                    "attempt": job.attempts,
                    "to": f"{destination.aet}@{destination.host}:{destination.port}",
                },
            )
        self.metrics.running = len(self._running)
        if not jobs:
            return
        try:
            self.forwarder.submit(_encoder.encode(jobs))
        except Exception as error:  # a defect; the jobs must not hang
            # Ended as transient: retried with backoff, then dead, and the error is shown.
            log.exception("forwarding engine refused jobs", extra={"jobs": len(jobs)})
            words = f"the forwarding engine refused the job: {one_line(error)}"
            for refused in jobs:
                ended = JobEnded(refused.job_id, JobEndKind.TRANSIENT, words)
                self._unrecorded_ends.append(ended)

    def _engine_job(self, job: ClaimedJob, destination: Destination) -> ForwardJob:
        return ForwardJob(
            job_id=job.job_id,
            destination=ForwardDestination(
                name=destination.name,
                called_aet=destination.aet,
                host=destination.host,
                port=destination.port,
                calling_aet=self._calling_aet(destination),
            ),
            items=job.items,
        )

    def _calling_aet(self, destination: Destination) -> str:
        return destination.calling_aet or self.scp_aet

    # --- recording --------------------------------------------------------------------------

    def _record(self) -> None:
        """Records the outcomes taken (kept for the next turn when the registry fails): the
        items of the batch in one call, then each job's end."""
        items = self._unrecorded_items
        if items:
            self.registry.record_items(self.process_id, items, self.clock())
            self._unrecorded_items = []
            self.metrics.items.update(item.result for item in items)
            if log.isEnabledFor(logging.DEBUG):  # the job's end says how many, and the first
                for item in items:
                    if item.result == DeliveryResult.FAILED:
                        log.debug(
                            "instance refused",
                            extra={
                                "job_id": item.job_id,
                                "item_id": item.item_id,
                                "status": "" if item.status is None else f"{item.status:04X}",
                                "reason": item.comment,
                            },
                        )
        while self._unrecorded_ends:
            self._end(self._unrecorded_ends[0])
            self._unrecorded_ends.popleft()

    def _end(self, ended: JobEnded) -> None:
        running = self._running.get(ended.job_id)
        if running is None:
            log.warning("engine reported the end of an unknown job", extra={"job_id": ended.job_id})
            return
        job = running.job
        if ended.job_id in self._lost:
            self._forget(ended.job_id)
            log.info(
                "forwarding job stopped: no longer ours",
                extra=_job_fields(job),
            )
            return
        now = self.clock()
        row = self.registry.end_job(
            self.process_id, ended.job_id, ended.end, ended.error, self.retry, now, self.rng
        )
        self._forget(ended.job_id)
        self.metrics.jobs_ended[row.state] += 1
        if row.next_attempt_at is not None:
            self._claim_at = min(self._claim_at, row.next_attempt_at)
        reason = self.breaker.job_ended(job.destination, ended.end, ended.error, now)
        if reason is not None:
            self._holding[job.destination] = reason
        self._announce(row, ended.end, time.monotonic() - running.started, now)

    def _forget(self, job_id: int) -> None:
        running = self._running.pop(job_id)
        self._lost.discard(job_id)
        self._per_destination[running.job.destination] -= 1
        self.metrics.running = len(self._running)
        self._claim_at = 0.0  # room for another job

    def _announce(self, row: JobRow, end: JobEndKind, seconds: float, now: float) -> None:
        """Logs the end of an attempt in words, and tells the hooks and NATS."""
        fields: dict[str, object] = {
            "job_id": row.id,
            "series_instance_uid": row.series_instance_uid,
            "calling_aet": row.calling_aet,
            "rule": row.rule,
            "destination": row.destination,
            "state": row.state,
            "delivered": row.delivered,
            "warnings": row.warnings,
            "failed": row.failed,
            "total": row.total,
            "attempts": row.attempts,
            "seconds": round(seconds, 3),
        }
        state = row.state
        if state == JobState.CANCELLED:  # by a person (oxidip queue cancel)
            log.info("forwarding cancelled", extra={**fields, "reason": row.last_error})
            return
        if state != JobState.DONE and end == JobEndKind.CANCELLED:
            # Stopped by us (shutdown, lease given up): not the end of an attempt.
            log.info(
                "forwarding interrupted; the job waits in the queue",
                extra={**fields, "reason": row.last_error},
            )
            return
        if state != JobState.DONE and end == JobEndKind.OK:
            # Split over claims (over 128 presentation contexts), or grown since claimed.
            log.info("forwarded part of a job; the rest follows", extra=fields)
            return
        if state == JobState.DONE:
            if row.failed:
                log.warning(
                    "forwarded, but the destination refused some instances",
                    extra={**fields, "error": row.last_error},
                )
            else:
                log.info("forwarded", extra=fields)
            self.hooks.forwarded(row)
        elif state == JobState.DEAD:
            log.error(
                "forwarding gave up",
                extra={
                    **fields,
                    "error": row.last_error,
                    "what_now": f"fix the cause, then: oxidip queue retry {row.id}",
                },
            )
            self.hooks.forward_failed(row)
        else:  # failed, or held: tried again later
            after = "" if row.next_attempt_at is None else round(row.next_attempt_at - now, 1)
            log.warning(
                "forwarding failed; it will be tried again",
                extra={**fields, "error": row.last_error, "next_attempt_in": after},
            )
            self.hooks.forward_failed(row)
        self.notifier.forward(row)

    # --- leases -----------------------------------------------------------------------------

    def _renew(self, now: float) -> None:
        self._renew_at = now + self.forward.lease / 3
        ids = [job_id for job_id in self._running if job_id not in self._lost]
        if not ids:
            return
        ours = self.registry.renew_leases(self.process_id, ids, self.forward.lease, now)
        lost = [job_id for job_id in ids if job_id not in ours]
        if not lost:
            return
        self._lost.update(lost)
        self.forwarder.cancel(lost)
        for job_id in lost:
            log.warning(
                "forwarding job no longer ours: aborted",
                extra={
                    **_job_fields(self._running[job_id].job),
                    "why": "cancelled (oxidip queue cancel), or its lease expired while this"
                    " process stalled and another took it",
                },
            )

    # --- the circuit breaker ----------------------------------------------------------------

    def _write_holds(self, now: float) -> None:
        for name, reason in list(self._holding.items()):
            self.registry.hold_destination(name, reason, now)
            del self._holding[name]
            self.metrics.held = len(self.breaker.held)
            log.warning(
                "destination held",
                extra={
                    "destination": name,
                    "reason": reason,
                    "meanwhile": "its jobs wait (state held); it is probed with C-ECHO and"
                    " released when one passes",
                    "first_probe_in": round((self.breaker.next_probe_at() or now) - now, 1),
                },
            )

    def _check_held(self, now: float) -> None:
        """Adopts holds made elsewhere (they get probed here too), forgets releases."""
        self._held_check_at = now + HELD_CHECK_INTERVAL
        held = self.registry.held_destinations()
        for name, reason in held.items():
            if name in self.destinations and not self.breaker.is_open(name):
                self.breaker.opened(name, reason, now)
                log.info("destination found held", extra={"destination": name, "reason": reason})
        for name in self.breaker.held:
            if name not in held and name not in self._holding:
                self.breaker.closed(name)
                self._claim_at = 0.0
                log.info("destination released elsewhere", extra={"destination": name})
        self.metrics.held = len(self.breaker.held)

    def _probe(self, run: Run[_Probe]) -> None:
        """(Probe worker.) One C-ECHO per probe; the result goes back to the loop."""
        for probe in run.items:
            destination = probe.destination
            try:
                status = _core.echo(
                    destination.host,
                    destination.port,
                    probe.calling_aet,
                    destination.aet,
                    self.forward.timeout,
                )
                error = "" if status == 0 else f"C-ECHO answered status {status:04X}"
            except OSError as failure:
                error = one_line(failure)
            self._probe_results.put(_ProbeResult(destination.name, error))
            self._woken.set()

    def _take_probe_results(self, now: float) -> None:
        while True:
            try:
                result = self._probe_results.get_nowait()
            except queue.Empty:
                return
            name = result.destination
            if not self.breaker.is_open(name):
                continue
            if result.error:
                delay = self.breaker.probe_failed(name, now)
                log.info(
                    "destination still unreachable",
                    extra={
                        "destination": name,
                        "error": result.error,
                        "next_probe_in": round(delay, 1),
                    },
                )
                continue
            self.registry.release_destination(name, now)
            self.breaker.closed(name)
            self.metrics.held = len(self.breaker.held)
            self._claim_at = 0.0
            log.info(
                "destination released: it answered C-ECHO, its jobs resume",
                extra={"destination": name},
            )

    # --- trouble and the end ----------------------------------------------------------------

    def _trouble(self, error: Exception, delay: float) -> None:
        fields = {"error": one_line(error), "next_try_in": round(delay, 2)}
        if unreachable(error):
            log.warning("forwarding waits for the registry database", extra=fields)
        else:
            log.exception("forwarding failed; trying again", extra=fields)

    def _finish(self) -> None:
        """The engine stops, the last outcomes are recorded, the rest goes back to pending."""
        remaining = max(self._stop_deadline - time.monotonic(), 0.0)
        if self._running:
            log.info(
                "forwarding stopping",
                extra={"running": len(self._running), "timeout": round(remaining, 1)},
            )
        try:
            self.forwarder.stop(remaining)
        except Exception:
            log.exception("forwarding engine did not stop cleanly")
        end = max(self._stop_deadline, time.monotonic() + DRAIN_AT_LEAST)
        while time.monotonic() < end:
            try:
                self._record()
                if not self._running:
                    break
                # Once the engine runs nothing, every end it owes is already queued.
                quiet = self.forwarder.running == 0
                taken = len(self._unrecorded_items) + len(self._unrecorded_ends)
                self._take_outcomes(OUTCOME_WAIT)
                if quiet and taken == len(self._unrecorded_items) + len(self._unrecorded_ends):
                    break
            except Exception as error:  # noqa: BLE001 - logged; stopping goes on
                self._trouble(error, OUTCOME_WAIT)
                time.sleep(OUTCOME_WAIT)  # a registry in trouble, within the deadline
        # The engine said nothing more about these: back to the queue all the same.
        for job_id in list(self._running):
            if job_id in self._lost:
                self._forget(job_id)
                continue
            with contextlib.suppress(Exception):  # lease expiry returns it otherwise
                self._end(JobEnded(job_id, JobEndKind.CANCELLED, "oxidip stopped"))


def _job_fields(job: ClaimedJob) -> dict[str, object]:
    return {
        "job_id": job.job_id,
        "series_instance_uid": job.series_instance_uid,
        "calling_aet": job.calling_aet,
        "rule": job.rule,
        "destination": job.destination,
    }
