"""What ``/metrics`` shows, in Prometheus's text format (through the official client).

Two sources, both read when scraped, never pushed:

- the receiver's counters, kept in Rust without locks on the network path
  (``server::metrics``) and read as one snapshot (``Receiver.metrics``): associations,
  instances, bytes, the store latency histogram, the event queue and journal backlogs;
- ``PipelineMetrics`` (``oxidip.pipeline_metrics``), plain numbers the pipeline updates once per batch (registration, its
  lag, the database as registration last saw it, C-FIND outcomes), and the backlogs of the
  C-FIND lookups, the hooks and NATS, read from those objects.

Metric names (all prefixed ``oxidip_``): see ``OxidipCollector.collect`` and the README.
"""

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from oxidip._boundary import Histogram
from oxidip.notify import NatsNotifier
from oxidip.receiver import Receiver

if TYPE_CHECKING:
    from oxidip.pipeline import Pipeline

__all__ = ["MetricsPage", "OxidipCollector", "metrics_page", "metrics_registry"]


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _labelled_counter(
    name: str, documentation: str, label: str, counts: dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for key, count in sorted(counts.items()):
        family.add_metric([key], count)
    return family


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    """Prometheus buckets are cumulative, the receiver's are not. Bounds are written as the
    client writes its own (``floatToGoString``)."""
    buckets: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip(histogram.bounds, histogram.counts, strict=False):
        total += count
        le: str = floatToGoString(bound)  # type: ignore[no-untyped-call]  # untyped upstream
        buckets.append((le, total))
    total += histogram.counts[-1]
    buckets.append(("+Inf", total))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.sum)


class OxidipCollector(Collector):
    """Reads the receiver's snapshot and the pipeline's numbers at every scrape."""

    def __init__(self, receiver: Receiver, pipeline: "Pipeline") -> None:
        self.receiver = receiver
        self.pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        yield from self._receiver()
        yield from self._pipeline()

    def _receiver(self) -> Iterator[Metric]:
        m = self.receiver.metrics()
        yield _gauge("oxidip_listening", "1 while the DICOM listener accepts.", m.listening)
        yield _gauge("oxidip_associations_open", "Associations being served.", m.associations_open)
        yield _counter(
            "oxidip_associations",
            "Connections served as associations (refused ones included).",
            m.associations_total,
        )
        yield _labelled_counter(
            "oxidip_associations_closed",
            "Ended associations, by outcome.",
            "outcome",
            m.associations_closed,
        )
        yield _labelled_counter(
            "oxidip_associations_refused",
            "Associations refused (A-ASSOCIATE-RJ, or over OXIDIP_MAX_ASSOCIATIONS), by reason.",
            "reason",
            m.associations_refused,
        )
        yield _counter(
            "oxidip_instances_stored", "Instances stored (answered 0000).", m.instances_stored
        )
        yield _labelled_counter(
            "oxidip_instances_failed",
            "C-STOREs answered with a failure, by status (hex).",
            "status",
            m.instances_failed,
        )
        yield _counter(
            "oxidip_received_bytes", "Data set bytes received (PDV values).", m.bytes_received
        )
        yield _histogram(
            "oxidip_store_latency_seconds",
            "Seconds from a C-STORE-RQ's command to its response, whatever the status.",
            m.store_latency,
        )
        yield _gauge(
            "oxidip_event_queue_backlog",
            "Events of the receiver not yet taken by the pipeline.",
            m.event_queue_backlog,
        )
        yield _gauge(
            "oxidip_journal_backlog",
            "Acknowledged instances journaled and not yet registered.",
            m.journal_backlog,
        )

    def _pipeline(self) -> Iterator[Metric]:
        pipeline = self.pipeline
        numbers = pipeline.metrics
        yield _counter("oxidip_registered_instances", "Instances registered.", numbers.registered)
        yield _counter(
            "oxidip_registration_failed_instances",
            "Instances whose registration failed (kept in the journal).",
            numbers.registration_failed,
        )
        yield _gauge(
            "oxidip_registration_lag_seconds",
            "Seconds from storing to registering, for the oldest instance of the last batch.",
            numbers.registration_lag,
        )
        yield _gauge(
            "oxidip_database_reachable",
            "1 when the database answered the last registration attempt.",
            numbers.database_reachable,
        )
        yield _labelled_counter(
            "oxidip_cfind_lookups",
            "Expected-count C-FIND lookups answered, by outcome.",
            "outcome",
            numbers.cfind,
        )
        yield _gauge(
            "oxidip_cfind_pending", "C-FIND lookups queued or running.", pipeline.lookup.pending
        )
        yield _gauge("oxidip_hook_backlog", "Hook calls queued.", pipeline.hooks.backlog)
        notifier = pipeline.notifier
        nats_backlog = notifier.backlog if isinstance(notifier, NatsNotifier) else 0
        yield _gauge("oxidip_nats_backlog", "NATS messages waiting to be sent.", nats_backlog)


def metrics_registry(receiver: Receiver, pipeline: "Pipeline") -> CollectorRegistry:
    """A registry of its own (not the client's global one, so that several receivers in one
    process do not collide): oxidip's collector and the client's process metrics (CPU,
    memory, open file descriptors)."""
    registry = CollectorRegistry()
    registry.register(OxidipCollector(receiver, pipeline))
    ProcessCollector(registry=registry)
    return registry


#: Renders the metrics page for a request's Accept header: (content type, body).
MetricsPage = Callable[[str], tuple[str, bytes]]


def metrics_page(receiver: Receiver, pipeline: "Pipeline") -> MetricsPage:
    """The ``/metrics`` page: Prometheus text, or OpenMetrics when the scraper asks for it."""
    registry = metrics_registry(receiver, pipeline)

    def render(accept: str) -> tuple[str, bytes]:
        encoder, content_type = choose_encoder(accept)
        return content_type, encoder(registry)

    return render
