"""The numbers the pipeline reports for ``/metrics`` (``oxidip.metrics`` reads them when
scraped). Kept apart from the Prometheus client, which ``serve`` loads only when the HTTP
endpoint is on (~70 ms and 2 MB).

Metric names: ``oxidip_registered_instances_total``,
``oxidip_registration_failed_instances_total``, ``oxidip_registration_lag_seconds``,
``oxidip_cfind_lookups_total{outcome}`` (``oxidip_database_reachable`` and
``oxidip_registration_backlog`` come from the pipeline's ``Registrar``).
"""

from collections.abc import Sequence

from oxidip._boundary import InstanceStored

__all__ = ["CFIND_OUTCOMES", "PipelineMetrics"]

#: ``ExpectedCount.status`` values (``oxidip.completeness``).
CFIND_OUTCOMES = ("known", "unknown", "error")


class PipelineMetrics:
    """What the pipeline reports. One thread writes (the pipeline's, or a registration
    thread), the HTTP thread reads at scrape time: plain attributes, so a scrape sees each
    number as it was before or after an update, never torn."""

    def __init__(self) -> None:
        #: Instances whose registration committed.
        self.registered = 0
        #: Instances whose registration failed (they stay journaled and are registered later).
        self.registration_failed = 0
        #: Seconds from the storing of the oldest instance of the last registered batch to its
        #: registration.
        self.registration_lag = 0.0
        #: C-FIND lookups answered, by ``ExpectedCount.status``.
        self.cfind: dict[str, int] = dict.fromkeys(CFIND_OUTCOMES, 0)

    def instances_registered(self, instances: Sequence[InstanceStored], now: float) -> None:
        """A batch was registered at ``now`` (unix seconds)."""
        if not instances:
            return
        self.registered += len(instances)
        self.registration_lag = max(0.0, now - min(event.stored_at for event in instances))

    def instances_not_registered(self, count: int) -> None:
        """A batch of ``count`` instances failed to register for good (not because the
        database was unreachable: such registrations are retried, ``Registrar.outage``)."""
        self.registration_failed += count

    def cfind_answered(self, status: str) -> None:
        self.cfind[status] = self.cfind.get(status, 0) + 1
