"""What happens to the receiver's events in Python: registration, expected counts, series
states, hooks and notifications.

Per batch of events (taken from the receiver's bounded queue, never on the network path),
every registry call is handed to ``oxidip.registration.Registrar``, which makes them in order
on a thread of its own and retries them while the database is unreachable, so that taking
events (and logging associations) never waits for the database; the steps below that depend
on a call's result run there once it has succeeded:

1. Stored instances are registered in one transaction (group commit: the events that came
   while the registrar was busy are taken as one batch, ``wait_for_room``), then
   acknowledged to the receiver, which drops their journal entries (and, with ``OXIDIP_ACK=registered``,
   only now answers their senders). A registration that fails for another reason than an
   unreachable database is acknowledged as failed: the journal keeps the entries and the
   next start registers them again.
2. Series whose expected count is still "pending" get it looked up (C-FIND, in worker
   threads), once per process until the answer comes; answers arrive on later ticks and are
   stored with ``set_expected``. That is new series, but also series whose lookup died with
   the process that asked (kill -9) or that were first registered from a dead process's
   journal: asked again when they get instances, change state (``finalize_idle``), or at
   start (``request_expected``), so a series never stays "pending" for good.
3. Every state change of a series (computed by the registry, in the database) goes to the
   hooks and to NATS: ``complete`` fires ``on_series_complete``; any state other than
   ``receiving`` fires ``on_series_finalized``.
4. A closed association finalizes the series it was delivering; ``tick`` also finalizes
   series idle for ``OXIDIP_SERIES_IDLE_TIMEOUT``.
5. ``tick`` also adopts the journals of other oxidip processes that died on the same storage
   root (``oxidip.adoption``): their instances are registered and their series finalized
   within seconds, like this process's own.
6. The registry queues forwarding jobs in the transactions of those calls (``oxidip.routing``
   rules); after each, the forwarding component (``oxidip.forwarding``, its own thread) is
   woken to claim them.

Hooks and NATS have bounded queues of their own, and so has the registrar (the backlog of
unregistered instances, ``OXIDIP_REGISTRATION_BACKLOG``): when any falls behind, the caller
stops taking events (``wait_for_room``), the receiver's event queue fills, and TCP pushes back
on the senders. Memory stays bounded.
"""

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from oxidip._boundary import AssociationClosed, Event, InstanceStored
from oxidip.adoption import JournalAdopter
from oxidip.completeness import ExpectedCount, ExpectedCountLookup
from oxidip.forwarding import Forwarding
from oxidip.hooks import Hooks
from oxidip.notify import Notifier
from oxidip.pipeline_metrics import PipelineMetrics
from oxidip.receiver import Receiver
from oxidip.reconcile import Registration
from oxidip.registration import Registrar
from oxidip.registry import (
    ExpectedStatus,
    RegisterResult,
    Registry,
    SeriesRow,
    SeriesState,
    Transition,
)
from oxidip.routing import Trigger

__all__ = ["Pipeline"]

log = logging.getLogger("oxidip.pipeline")

#: How often idle series are looked for, at most (seconds).
IDLE_CHECK_INTERVAL = 1.0
#: Seconds the event thread waits at most for the registrar to catch up before it takes more
#: events (``Registrar.wait_caught_up``): a registration slower than that (a slow database)
#: does not hold events up for longer.
CATCH_UP_WAIT = 0.1
#: Seconds ``close`` gives the last registrations, hook calls and NATS messages even when the
#: shutdown timeout is spent (associations used it all): without them the last batch would
#: wait in the journal for the next start, and the last series states never be told. Not
#: for a database that is unreachable: its registrations wait in the journal anyway.
DRAIN_AT_LEAST = 1.0


class Pipeline:
    """Called with every batch of events (``handle``) and between batches (``tick``), from
    one thread; ``wait_for_room`` says whether to take more events. ``pending``: series whose
    expected count to look up at once (still pending from earlier runs)."""

    def __init__(
        self,
        *,
        receiver: Receiver,
        registry: Registry | None,
        lookup: ExpectedCountLookup,
        hooks: Hooks,
        notifier: Notifier,
        process_id: str,
        series_idle_timeout: float,
        backlog: int = 20000,
        answer_within: float | None = None,
        pending: Sequence[SeriesRow] = (),
        adopter: JournalAdopter | None = None,
        forwarding: Forwarding | None = None,
        clock: Callable[[], float] = time.time,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.registry = registry
        self.lookup = lookup
        self.hooks = hooks
        self.notifier = notifier
        self.process_id = process_id
        self.series_idle_timeout = series_idle_timeout
        self.adopter = adopter
        self.forwarding = forwarding
        self.clock = clock
        #: Read by ``/metrics`` (``oxidip.metrics``).
        self.metrics = metrics or PipelineMetrics()
        self._last_idle_check = 0.0
        self._idle_check_queued = False
        self._adoption_queued = False
        self._deadline: float | None = None
        #: Series (UID, calling AE) whose expected count this process asked for and has no
        #: answer for yet (used on the registrar's thread only, once it runs).
        self._looking_up: set[tuple[str, str]] = set()
        self.request_expected(pending)
        self.registrar: Registrar[RegisterResult | None] = Registrar(
            receiver,
            self._register,
            self._registered,
            self._not_registered,
            backlog=backlog,
            answer_within=answer_within,
        )

    # --- the event loop's side ---------------------------------------------------------------

    def start(self) -> None:
        """Starts forwarding, if configured (the receiver has started)."""
        if self.forwarding is not None:
            self.forwarding.start()

    def handle(self, batch: Sequence[Event]) -> None:
        stored = [event for event in batch if isinstance(event, InstanceStored)]
        if stored:
            self.registrar.register(stored)
        registry = self.registry
        if registry is None:
            return
        for event in batch:
            if isinstance(event, AssociationClosed):
                ended = functools.partial(
                    registry.association_ended, self.process_id, event.association_id
                )
                self.registrar.call(ended, self._apply, "association_ended")

    def tick(self) -> None:
        """Answers senders that waited too long for a registration, stores expected counts
        that arrived, finalizes idle series and adopts the journals of dead processes (the
        last three through the registrar)."""
        self.registrar.answer_overdue()
        if self.registry is None:
            return
        adopter = self.adopter
        if adopter is not None and not self._adoption_queued and adopter.due():
            self._adoption_queued = True
            self.registrar.call(self._adopt, self.registered_from_files, "adopt_journals")
        for answer in self.lookup.poll():
            self.metrics.cfind_answered(answer.status)
            self.registrar.call(
                functools.partial(self._set_expected, answer), self._apply, "set_expected"
            )
        now = self.clock()
        if (
            self.series_idle_timeout > 0
            and now - self._last_idle_check >= IDLE_CHECK_INTERVAL
            and not self._idle_check_queued
        ):
            self._last_idle_check = now
            self._idle_check_queued = True
            self.registrar.call(
                functools.partial(self._finalize_idle, now), self._apply, "finalize_idle"
            )

    def wait_for_room(self, timeout: float) -> bool:
        """Whether to take more events (see ``Registrar.wait_for_room``), once the registrar
        caught up with what it has (group commit: ``Registrar.wait_caught_up``, at most
        ``CATCH_UP_WAIT`` seconds)."""
        self.registrar.wait_caught_up(min(timeout, CATCH_UP_WAIT))
        return self.registrar.wait_for_room(timeout)

    def begin_stop(self, timeout: float) -> None:
        """The process stops within ``timeout`` seconds: ``close`` keeps to that deadline, and
        senders waiting on an unreachable database get their answer now."""
        self._deadline = time.monotonic() + timeout
        self.registrar.stopping()
        if self.forwarding is not None:
            self.forwarding.begin_stop(timeout)

    def close(self, timeout: float) -> None:
        """Last answers and idle checks, lets the registrar finish, then stops the helpers
        (hooks and NATS drain), within ``timeout`` seconds or the deadline of ``begin_stop``,
        whichever comes first, or ``DRAIN_AT_LEAST`` when that is later. What is left
        unregistered stays in the journal (logged by the registrar)."""
        now = time.monotonic()
        deadline = now + timeout
        if self._deadline is not None:
            deadline = min(deadline, self._deadline)
        end = max(deadline, now + DRAIN_AT_LEAST)
        self.tick()
        self.registrar.close((deadline if self.registrar.outage else end) - time.monotonic())
        self.lookup.close()
        if self.forwarding is not None:
            # After the registrar (its last jobs are queued, not sent: the next start does),
            # before the hooks and NATS it reports to.
            self.forwarding.close(max(deadline - time.monotonic(), 0.0))
        self.hooks.close(max(end - time.monotonic(), 0.0))
        self.notifier.close(max(end - time.monotonic(), 0.0))
        # A registry call stuck on an unreachable server still holds it (SQLite: its lock).
        if self.registry is not None and self.registrar.finished:
            self.registry.close()

    # --- the registrar's thread ----------------------------------------------------------------

    def _register(self, stored: list[InstanceStored]) -> RegisterResult | None:
        result = None
        if self.registry is not None and not self.hooks.replaces_registry:
            result = self.registry.register(stored, self.process_id)
        self.hooks.register(stored)
        return result

    def _registered(self, stored: list[InstanceStored], result: RegisterResult | None) -> None:
        self.metrics.instances_registered(stored, self.clock())
        self.hooks.instance_stored(stored)
        if result is None:
            return
        if self.forwarding is not None:
            self.forwarding.wake(Trigger.INSTANCE)  # the batch may have queued jobs
        self.request_expected(result.touched)
        self._apply(result.transitions)
        for series in result.touched:
            self.notifier.progress(series)

    def _not_registered(self, stored: list[InstanceStored], error: Exception) -> None:
        self.metrics.instances_not_registered(len(stored))
        log.error(
            "registration failed; kept in the journal for the next start",
            extra={
                "instances": len(stored),
                "first_sop_instance_uid": stored[0].attributes.SOPInstanceUID or "",
                "error": f"{type(error).__name__}: {error}",
            },
            exc_info=error,
        )
        failed = {(e.attributes.SeriesInstanceUID or "", e.calling_aet) for e in stored}
        for series_instance_uid, calling_aet in sorted(failed):
            self.notifier.error(series_instance_uid, calling_aet, "registration failed")

    def _set_expected(self, answer: ExpectedCount) -> list[Transition]:
        assert self.registry is not None
        self._looking_up.discard((answer.series_instance_uid, answer.calling_aet))
        return self.registry.set_expected(
            answer.series_instance_uid,
            answer.expected,
            answer.status,
            answer.detail,
            answer.calling_aet,
        )

    def _finalize_idle(self, now: float) -> list[Transition]:
        """Finalizes series idle at ``now``, the time the check was queued: the instances
        received before it were queued before it, so they are registered by now."""
        assert self.registry is not None
        self._idle_check_queued = False
        return self.registry.finalize_idle(self.series_idle_timeout, now)

    def _adopt(self) -> Registration | None:
        """Adopts the journals of dead processes (``JournalAdopter.adopt``: a failure is
        logged there and tried again at the next look)."""
        assert self.adopter is not None
        self._adoption_queued = False
        return self.adopter.adopt()

    def registered_from_files(self, done: Registration | None) -> None:
        """Instances were registered from files (a dead process's journal): their series'
        expected counts are asked for, their state changes announced."""
        if done is None:
            return
        self.request_expected(done.touched)
        self._apply(done.transitions)

    def request_expected(self, series: Iterable[SeriesRow]) -> None:
        """Looks up the expected count of those ``series`` whose count is still pending and
        that this process is not already asking about."""
        for row in series:
            key = (row.series_instance_uid, row.calling_aet)
            if row.expected_status != ExpectedStatus.PENDING or key in self._looking_up:
                continue
            self._looking_up.add(key)
            self.lookup.request(row.calling_aet, row.study_instance_uid, row.series_instance_uid)

    def _apply(self, transitions: Sequence[Transition]) -> None:
        self.request_expected(transition.series for transition in transitions)
        if self.forwarding is not None and any(
            t.series.state != SeriesState.RECEIVING for t in transitions
        ):
            self.forwarding.wake()  # series-complete/-finalized rules may have queued jobs
        for transition in transitions:
            series = transition.series
            if series.state == transition.previous:
                continue
            log.info(
                "series state",
                extra={
                    "series_instance_uid": series.series_instance_uid,
                    "calling_aet": series.calling_aet,
                    "state": series.state,
                    "previous": transition.previous or "",
                    "received": series.received,
                    "expected": "" if series.expected is None else series.expected,
                    "expected_status": series.expected_status,
                },
            )
            if series.state == SeriesState.COMPLETE:
                self.hooks.series_complete(series)
                self.notifier.complete(series)
            if series.state != SeriesState.RECEIVING:
                self.hooks.series_finalized(series)
                self.notifier.finalized(series)
