"""What ``/metrics`` shows, in Prometheus's text format (through the official client).

Two sources, both read when scraped, never pushed:

- the receiver's counters, kept in Rust without locks on the network path
  (``server::metrics``) and read as one snapshot (``Receiver.metrics``): associations,
  instances, bytes, the store latency histogram, the event queue and journal backlogs;
- ``PipelineMetrics`` (``oxidip.pipeline_metrics``), plain numbers the pipeline updates once
  per batch (registration, its lag, the database as registration last saw it, C-FIND
  outcomes), and the backlogs and counters of its work queues (``oxidip.workers``:
  registration, C-FIND lookups, hooks, NATS), read from those objects;
- ``ForwardingMetrics`` (``oxidip.forwarding``), numbers the forwarding thread updates as it
  records outcomes (this process's share of the work; all zero without ``OXIDIP_ROUTES``).

Metric names (all prefixed ``oxidip_``): the tables ``_RECEIVER``, ``_PIPELINE`` and
``_FORWARDING``, and the README.
"""

from collections.abc import Callable, Iterator
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import msgspec
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
from oxidip.nats_notifier import NatsNotifier
from oxidip.receiver import Receiver
from oxidip.workers import WorkQueue

if TYPE_CHECKING:
    from oxidip.forwarding import ForwardingMetrics
    from oxidip.pipeline import Pipeline

__all__ = ["MetricsPage", "OxidipCollector", "metrics_page", "metrics_registry"]


class _Family(msgspec.Struct, frozen=True):
    """One metric: its kind, name (counters without ``_total``, which the client adds), help,
    the label of a labelled one (its value is then a dict label value -> count), and where
    its value comes from."""

    kind: str  # "counter" or "gauge"
    name: str
    documentation: str
    value: Callable[[Any], Any]
    label: str = ""

    def build(self, source: object) -> Metric:
        value = self.value(source)
        family_type = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        if not self.label:
            return family_type(self.name, self.documentation, value=float(value))
        family = family_type(self.name, self.documentation, labels=[self.label])
        for key, count in sorted(value.items()):
            family.add_metric([key], count)
        return family


#: Read from the receiver's snapshot (``ReceiverMetrics``).
_RECEIVER = (
    _Family(
        "gauge", "oxidip_listening", "1 while the DICOM listener accepts.", attrgetter("listening")
    ),
    _Family(
        "gauge",
        "oxidip_associations_open",
        "Associations being served.",
        attrgetter("associations_open"),
    ),
    _Family(
        "counter",
        "oxidip_associations",
        "Connections served as associations (refused at negotiation included, not over-limit).",
        attrgetter("associations_total"),
    ),
    _Family(
        "counter",
        "oxidip_associations_closed",
        "Ended associations, by outcome.",
        attrgetter("associations_closed"),
        label="outcome",
    ),
    _Family(
        "counter",
        "oxidip_associations_refused",
        "Associations refused (A-ASSOCIATE-RJ, or over OXIDIP_MAX_ASSOCIATIONS), by reason.",
        attrgetter("associations_refused"),
        label="reason",
    ),
    _Family(
        "counter",
        "oxidip_instances_stored",
        "Instances stored (answered 0000).",
        attrgetter("instances_stored"),
    ),
    _Family(
        "counter",
        "oxidip_instances_failed",
        "C-STOREs answered with a failure, by status (hex).",
        attrgetter("instances_failed"),
        label="status",
    ),
    _Family(
        "counter",
        "oxidip_received_bytes",
        "Data set bytes received (PDV values).",
        attrgetter("bytes_received"),
    ),
    _Family(
        "gauge",
        "oxidip_event_queue_backlog",
        "Events of the receiver not yet taken by the pipeline.",
        attrgetter("event_queue_backlog"),
    ),
    _Family(
        "gauge",
        "oxidip_journal_backlog",
        "Acknowledged instances journaled and not yet registered.",
        attrgetter("journal_backlog"),
    ),
)


def _unreplayed_journal_entries(pipeline: "Pipeline") -> int:
    adopter = pipeline.adopter
    return 0 if adopter is None else adopter.pending_entries


def _work_queues(pipeline: "Pipeline") -> dict[str, WorkQueue[Any] | None]:
    """The pipeline's work queues by the ``queue`` label (None: not in use)."""
    notifier = pipeline.notifier
    return {
        "registration": pipeline.registrar.jobs,
        "cfind": pipeline.lookup.jobs,
        "hooks": pipeline.hooks.calls,
        "nats": notifier.outbox if isinstance(notifier, NatsNotifier) else None,
    }


def _nats_backlog(pipeline: "Pipeline") -> int:
    outbox = _work_queues(pipeline)["nats"]
    return 0 if outbox is None else outbox.waiting


def _per_queue(counter: str) -> Callable[["Pipeline"], dict[str, int]]:
    """A ``WorkQueue`` counter of every work queue, by its name."""

    def value(pipeline: "Pipeline") -> dict[str, int]:
        queues = _work_queues(pipeline).items()
        return {name: 0 if queue is None else getattr(queue, counter) for name, queue in queues}

    return value


#: Read from the pipeline: its ``PipelineMetrics`` and the backlogs of its helpers.
_PIPELINE = (
    _Family(
        "counter",
        "oxidip_registered_instances",
        "Instances registered.",
        attrgetter("metrics.registered"),
    ),
    _Family(
        "counter",
        "oxidip_registration_failed_instances",
        "Instances whose registration failed (kept in the journal).",
        attrgetter("metrics.registration_failed"),
    ),
    _Family(
        "gauge",
        "oxidip_registration_lag_seconds",
        "Seconds from storing to registering, for the oldest instance of the last batch.",
        attrgetter("metrics.registration_lag"),
    ),
    _Family(
        "gauge",
        "oxidip_database_reachable",
        "0 while registration waits for an unreachable database, 1 otherwise.",
        lambda pipeline: 0 if pipeline.registrar.outage else 1,
    ),
    _Family(
        "counter",
        "oxidip_cfind_lookups",
        "Expected-count C-FIND lookups answered, by outcome.",
        attrgetter("metrics.cfind"),
        label="outcome",
    ),
    _Family(
        "gauge",
        "oxidip_cfind_pending",
        "C-FIND lookups queued or running.",
        attrgetter("lookup.pending"),
    ),
    _Family(
        "gauge",
        "oxidip_registration_backlog",
        "Stored instances waiting for registration (OXIDIP_REGISTRATION_BACKLOG bounds it).",
        attrgetter("registrar.backlog"),
    ),
    _Family(
        "gauge",
        "oxidip_unreplayed_journal_entries",
        "Instances listed by journals of stopped processes that could not be replayed yet.",
        _unreplayed_journal_entries,
    ),
    _Family("gauge", "oxidip_hook_backlog", "Hook calls queued.", attrgetter("hooks.backlog")),
    _Family("gauge", "oxidip_nats_backlog", "NATS messages waiting to be sent.", _nats_backlog),
    _Family(
        "counter",
        "oxidip_work_queue_waits",
        "Times a producer waited for room in a work queue (back-pressure), by queue.",
        _per_queue("waits"),
        label="queue",
    ),
    _Family(
        "counter",
        "oxidip_work_queue_refused",
        "Work refused for want of room (C-FINDs answered 'queue full', NATS progress dropped,"
        " registrations left to the journal while stopping), by queue; in instances for"
        " registration.",
        _per_queue("refused"),
        label="queue",
    ),
    _Family(
        "counter",
        "oxidip_work_queue_dropped",
        "Work dropped by a work queue that was closed or gave up at shutdown, by queue; in"
        " instances for registration.",
        _per_queue("dropped"),
        label="queue",
    ),
)


def _forwarding(read: Callable[["ForwardingMetrics"], Any], empty: Any) -> Callable[..., Any]:
    """A number of the pipeline's forwarding; ``empty`` when it does not forward."""

    def value(pipeline: "Pipeline") -> Any:
        forwarding = pipeline.forwarding
        return empty if forwarding is None else read(forwarding.metrics)

    return value


def _by_label(counts: Any, labels: tuple[str, ...]) -> dict[str, int]:
    """Every label of ``labels`` (at 0 until seen), so that rates start from the start."""
    return {label: int(counts.get(label, 0)) for label in labels}


_ITEM_RESULTS = ("delivered", "warning", "failed")
_JOB_ENDS = ("done", "failed", "held", "dead", "pending", "cancelled")

#: Read from the pipeline's forwarding (``ForwardingMetrics``).
_FORWARDING = (
    _Family(
        "gauge",
        "oxidip_forward_jobs_running",
        "Forwarding jobs being sent by this process (one association each).",
        _forwarding(attrgetter("running"), 0),
    ),
    _Family(
        "counter",
        "oxidip_forward_job_attempts",
        "Forwarding job attempts ended by this process, by the state they left the job in"
        " (done, failed: to be retried, held, dead, pending: interrupted, cancelled).",
        _forwarding(lambda m: _by_label(m.jobs_ended, _JOB_ENDS), _by_label({}, _JOB_ENDS)),
        label="state",
    ),
    _Family(
        "counter",
        "oxidip_forward_items",
        "Instances forwarded by this process, by result (delivered, warning: delivered with a"
        " warning status, failed: refused for good).",
        _forwarding(lambda m: _by_label(m.items, _ITEM_RESULTS), _by_label({}, _ITEM_RESULTS)),
        label="result",
    ),
    _Family(
        "gauge",
        "oxidip_forward_destinations_held",
        "Destinations whose circuit is open (held, probed with C-ECHO).",
        _forwarding(attrgetter("held"), 0),
    ),
)


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
        snapshot = self.receiver.metrics()
        for family in _RECEIVER:
            yield family.build(snapshot)
        yield _histogram(
            "oxidip_store_latency_seconds",
            "Seconds from a C-STORE-RQ's command to its response, whatever the status.",
            snapshot.store_latency,
        )
        for family in (*_PIPELINE, *_FORWARDING):
            yield family.build(self.pipeline)


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
