"""What happens to the receiver's events in Python: registration, expected counts, series
states, hooks and notifications.

Per batch of events (taken from the receiver's bounded queue, never on the network path):

1. Stored instances are registered in one transaction (group commit), then acknowledged to
   the receiver, which drops their journal entries (and, with ``OXIDIP_ACK=registered``,
   only now answers their senders). A failed registration is acknowledged as failed: the
   journal keeps the entries and the next start registers them again.
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

Hooks and NATS have bounded queues of their own: when they fall behind, ``handle`` waits,
the receiver's event queue fills, and TCP pushes back on the senders. Memory stays bounded.
"""

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from oxidip._boundary import AssociationClosed, Event, InstanceStored
from oxidip.adoption import JournalAdopter
from oxidip.completeness import ExpectedCountLookup
from oxidip.hooks import Hooks
from oxidip.notify import Notifier
from oxidip.pipeline_metrics import PipelineMetrics
from oxidip.receiver import Receiver
from oxidip.reconcile import Registration
from oxidip.registry import ExpectedStatus, Registry, SeriesRow, SeriesState, Transition

__all__ = ["Pipeline"]

log = logging.getLogger("oxidip.pipeline")

#: How often idle series are looked for, at most (seconds).
IDLE_CHECK_INTERVAL = 1.0


class Pipeline:
    """Called with every batch of events (``handle``) and between batches (``tick``)."""

    def __init__(
        self,
        *,
        receiver: Receiver,
        registry: Registry | None,
        lookup: ExpectedCountLookup,
        hooks: Hooks,
        notifier: Notifier,
        node: str,
        series_idle_timeout: float,
        adopter: JournalAdopter | None = None,
        clock: Callable[[], float] = time.time,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.receiver = receiver
        self.registry = registry
        self.lookup = lookup
        self.hooks = hooks
        self.notifier = notifier
        self.node = node
        self.series_idle_timeout = series_idle_timeout
        self.adopter = adopter
        self.clock = clock
        #: Read by ``/metrics`` (``oxidip.metrics``).
        self.metrics = metrics or PipelineMetrics()
        self._last_idle_check = 0.0
        #: Series (UID, calling AE) whose expected count this process asked for and has no
        #: answer for yet.
        self._looking_up: set[tuple[str, str]] = set()

    def handle(self, batch: Sequence[Event]) -> None:
        stored = [event for event in batch if isinstance(event, InstanceStored)]
        if stored:
            self._register(stored)
        for event in batch:
            if isinstance(event, AssociationClosed) and self.registry is not None:
                self._apply(self.registry.association_ended(self.node, event.association_id))
        self.tick()

    def tick(self) -> None:
        """Stores expected counts that arrived, finalizes idle series and adopts the journals
        of dead processes."""
        if self.registry is None:
            return
        if self.adopter is not None:
            adopted = self.adopter.poll()
            if adopted is not None:
                self.registered_from_files(adopted)
        for answer in self.lookup.poll():
            self._looking_up.discard((answer.series_instance_uid, answer.calling_aet))
            self.metrics.cfind_answered(answer.status)
            transitions = self.registry.set_expected(
                answer.series_instance_uid,
                answer.expected,
                ExpectedStatus(answer.status),
                answer.detail,
                answer.calling_aet,
            )
            self._apply(transitions)
        now = self.clock()
        if self.series_idle_timeout > 0 and now - self._last_idle_check >= IDLE_CHECK_INTERVAL:
            self._last_idle_check = now
            self._apply(self.registry.finalize_idle(self.series_idle_timeout, now))

    def _register(self, stored: list[InstanceStored]) -> None:
        seqs = [event.journal_seq for event in stored if event.journal_seq is not None]
        try:
            result = None
            if self.registry is not None and not self.hooks.replaces_registry:
                result = self.registry.register(stored, self.node)
            self.hooks.register(stored)
        except Exception as error:
            self.metrics.instances_not_registered(len(stored), error)
            log.exception(
                "registration failed; kept in the journal for the next start",
                extra={
                    "instances": len(stored),
                    "first_sop_instance_uid": stored[0].attributes.SOPInstanceUID or "",
                },
            )
            self.receiver.acknowledge(seqs, registered=False)
            failed = {(e.attributes.SeriesInstanceUID or "", e.calling_aet) for e in stored}
            for series_instance_uid, calling_aet in sorted(failed):
                self.notifier.error(series_instance_uid, calling_aet, "registration failed")
            return
        self.receiver.acknowledge(seqs, registered=True)
        self.metrics.instances_registered(stored, self.clock())
        self.hooks.instance_stored(stored)
        if result is None:
            return
        self.request_expected(result.touched)
        self._apply(result.transitions)
        for series in result.touched:
            self.notifier.progress(series)

    def registered_from_files(self, done: Registration) -> None:
        """Instances were registered from files (a dead process's journal): their series'
        expected counts are asked for, their state changes announced."""
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

    def close(self, timeout: float) -> None:
        """Last answers and idle checks, then stops the helpers (hooks drain up to
        ``timeout``)."""
        self.tick()
        self.lookup.close()
        self.hooks.close(timeout)
        self.notifier.close()
        if self.registry is not None:
            self.registry.close()
