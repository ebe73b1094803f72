//! The receiver's counters, for `/metrics` (Prometheus) and `/healthz`.
//!
//! Association tasks bump atomics, without a lock: an instance costs a few relaxed atomic adds
//! (stored, or its failure status; its latency bucket and the latency sum), and each PDV one
//! more (bytes). Python reads them all at once (`snapshot`) when it is scraped. Relaxed
//! ordering is enough: the counters are independent, and a scrape that sees an instance in one
//! counter and not yet in another is set right by the next one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::dimse::status;
use crate::service::store::StoreMetrics;
use crate::ul::pdu::reject::{
    REASON_APPLICATION_CONTEXT_NOT_SUPPORTED, REASON_CALLED_AE_NOT_RECOGNIZED, REASON_CALLING_AE_NOT_RECOGNIZED,
    REASON_LOCAL_LIMIT_EXCEEDED, REASON_PROTOCOL_VERSION_NOT_SUPPORTED, SOURCE_SERVICE_PROVIDER_ACSE,
    SOURCE_SERVICE_PROVIDER_PRESENTATION, SOURCE_SERVICE_USER,
};
use crate::ul::pdu::AssociateRj;

/// Upper bounds, in microseconds, of the store latency buckets (a last one, +Inf, follows):
/// from a small instance on fast storage (most of them take 50-100 us from command to answer
/// here) to a large one over a slow link.
pub const LATENCY_BOUNDS_US: [u64; 19] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// `AssociationClosed::outcome` values (`handler::End`); any other is counted as "other".
const OUTCOMES: [&str; 7] =
    ["released", "aborted-by-peer", "aborted", "rejected", "timeout", "connection-lost", "shutdown"];

/// Why an association was refused: an A-ASSOCIATE-RJ's source and reason (PS3.8 table 9-21),
/// every slot taken (`OXIDIP_MAX_ASSOCIATIONS`), or no file descriptor left (RLIMIT_NOFILE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    OverLimit,
    OpenFiles,
    CallingAeTitle,
    CalledAeTitle,
    ApplicationContext,
    ProtocolVersion,
    Other,
}

impl Refusal {
    const ALL: [Refusal; 7] = [
        Refusal::OverLimit,
        Refusal::OpenFiles,
        Refusal::CallingAeTitle,
        Refusal::CalledAeTitle,
        Refusal::ApplicationContext,
        Refusal::ProtocolVersion,
        Refusal::Other,
    ];

    /// The reason label of `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::OverLimit => "over-limit",
            Refusal::OpenFiles => "open-files",
            Refusal::CallingAeTitle => "calling-aet",
            Refusal::CalledAeTitle => "called-aet",
            Refusal::ApplicationContext => "application-context",
            Refusal::ProtocolVersion => "protocol-version",
            Refusal::Other => "other",
        }
    }

    /// What an A-ASSOCIATE-RJ we sent says (PS3.8 table 9-21: a reason means something only
    /// with its source).
    pub fn of(rj: &AssociateRj) -> Refusal {
        match (rj.source, rj.reason) {
            (SOURCE_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED) => Refusal::CallingAeTitle,
            (SOURCE_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED) => Refusal::CalledAeTitle,
            (SOURCE_SERVICE_USER, REASON_APPLICATION_CONTEXT_NOT_SUPPORTED) => Refusal::ApplicationContext,
            (SOURCE_SERVICE_PROVIDER_ACSE, REASON_PROTOCOL_VERSION_NOT_SUPPORTED) => Refusal::ProtocolVersion,
            (SOURCE_SERVICE_PROVIDER_PRESENTATION, REASON_LOCAL_LIMIT_EXCEEDED) => Refusal::OverLimit,
            _ => Refusal::Other,
        }
    }
}

/// Failure statuses told apart; a receiver sends a handful of distinct ones (`dimse::status`),
/// so running out of slots means something is wrong, and is counted as "other".
const STATUS_SLOTS: usize = 32;

/// Counts per DIMSE status, lock-free: a slot is claimed for a status by compare-and-swap the
/// first time it is seen.
struct StatusCounts {
    /// 0: free; otherwise the status + 1.
    keys: [AtomicU32; STATUS_SLOTS],
    counts: [AtomicU64; STATUS_SLOTS],
    other: AtomicU64,
}

impl StatusCounts {
    fn new() -> Self {
        StatusCounts {
            keys: std::array::from_fn(|_| AtomicU32::new(0)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            other: AtomicU64::new(0),
        }
    }

    fn add(&self, code: u16) {
        let key = u32::from(code) + 1;
        for (slot, count) in self.keys.iter().zip(&self.counts) {
            let found = match slot.load(Relaxed) {
                0 => match slot.compare_exchange(0, key, Relaxed, Relaxed) {
                    Ok(_) => true,
                    Err(taken) => taken == key,
                },
                taken => taken == key,
            };
            if found {
                count.fetch_add(1, Relaxed);
                return;
            }
        }
        self.other.fetch_add(1, Relaxed);
    }

    /// Status in hex ("A700", as in the logs and the README) -> count.
    fn snapshot(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (slot, count) in self.keys.iter().zip(&self.counts) {
            match slot.load(Relaxed) {
                0 => {}
                key => {
                    out.insert(format!("{:04X}", key - 1), count.load(Relaxed));
                }
            }
        }
        let other = self.other.load(Relaxed);
        if other > 0 {
            out.insert("other".to_string(), other);
        }
        out
    }
}

/// A histogram with fixed buckets: one counter per bucket (not cumulative; Prometheus's
/// cumulative form is computed when read) and the sum.
struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    fn new() -> Self {
        LatencyHistogram { buckets: std::array::from_fn(|_| AtomicU64::new(0)), sum_nanos: AtomicU64::new(0) }
    }

    fn observe(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // The first bound >= the value: Prometheus buckets count values <= their bound.
        let bucket = LATENCY_BOUNDS_US.partition_point(|&bound| bound < micros);
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            bounds: LATENCY_BOUNDS_US.iter().map(|&us| us as f64 / 1e6).collect(),
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Counts by a fixed set of names, the rest as "other".
struct NamedCounts<const N: usize> {
    names: [&'static str; N],
    counts: [AtomicU64; N],
    other: AtomicU64,
}

impl<const N: usize> NamedCounts<N> {
    fn new(names: [&'static str; N]) -> Self {
        NamedCounts { names, counts: std::array::from_fn(|_| AtomicU64::new(0)), other: AtomicU64::new(0) }
    }

    fn add(&self, name: &str) {
        match self.names.iter().position(|n| *n == name) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.other.fetch_add(1, Relaxed),
        };
    }

    /// Every name, even at 0 (a series that exists from the start is what Prometheus's
    /// `rate` and `increase` need); "other" once it is not 0.
    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let mut out: BTreeMap<&'static str, u64> =
            self.names.iter().zip(&self.counts).map(|(name, count)| (*name, count.load(Relaxed))).collect();
        let other = self.other.load(Relaxed);
        if other > 0 {
            out.insert("other", other);
        }
        out
    }
}

/// Shared by the listener and every association task.
pub struct Metrics {
    listening: AtomicBool,
    associations_open: AtomicU64,
    associations_total: AtomicU64,
    associations_closed: NamedCounts<{ OUTCOMES.len() }>,
    associations_refused: [AtomicU64; Refusal::ALL.len()],
    instances_stored: AtomicU64,
    instances_failed: StatusCounts,
    bytes_received: AtomicU64,
    store_latency: LatencyHistogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listening: AtomicBool::new(false),
            associations_open: AtomicU64::new(0),
            associations_total: AtomicU64::new(0),
            associations_closed: NamedCounts::new(OUTCOMES),
            associations_refused: std::array::from_fn(|_| AtomicU64::new(0)),
            instances_stored: AtomicU64::new(0),
            instances_failed: StatusCounts::new(),
            bytes_received: AtomicU64::new(0),
            store_latency: LatencyHistogram::new(),
        }
    }
}

impl Metrics {
    /// Whether the listener accepts connections (false before it runs and once it stops).
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Relaxed);
    }

    /// A connection is being served as an association (its handler started).
    pub fn association_opened(&self) {
        self.associations_open.fetch_add(1, Relaxed);
        self.associations_total.fetch_add(1, Relaxed);
    }

    /// Its handler is done; `outcome` as in the AssociationClosed event.
    pub fn association_closed(&self, outcome: &str) {
        self.associations_open.fetch_sub(1, Relaxed);
        self.associations_closed.add(outcome);
    }

    pub fn association_refused(&self, why: Refusal) {
        let index = Refusal::ALL.iter().position(|r| *r == why).expect("ALL lists every refusal");
        self.associations_refused[index].fetch_add(1, Relaxed);
    }

    /// Data set bytes received (PDV values), as the association log line counts them.
    pub fn bytes_received(&self, bytes: usize) {
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    /// A C-STORE-RSP with `status` was sent for a request whose command arrived at `received_at`.
    pub fn instance_answered(&self, code: u16, received_at: SystemTime) {
        if code == status::SUCCESS {
            self.instances_stored.fetch_add(1, Relaxed);
        } else {
            self.instances_failed.add(code);
        }
        // The wall clock (the event's `received_at`): a clock step makes one observation
        // wrong, and one that goes back counts as 0.
        self.store_latency.observe(received_at.elapsed().unwrap_or_default());
    }

    /// Every counter now, with the backlogs the server keeps elsewhere.
    pub fn snapshot(&self, event_queue_backlog: u64, journal_backlog: u64) -> MetricsSnapshot {
        MetricsSnapshot {
            listening: self.listening.load(Relaxed),
            associations_open: self.associations_open.load(Relaxed),
            associations_total: self.associations_total.load(Relaxed),
            associations_closed: self.associations_closed.snapshot(),
            associations_refused: Refusal::ALL
                .iter()
                .zip(&self.associations_refused)
                .map(|(why, count)| (why.label(), count.load(Relaxed)))
                .collect(),
            instances_stored: self.instances_stored.load(Relaxed),
            instances_failed: self.instances_failed.snapshot(),
            bytes_received: self.bytes_received.load(Relaxed),
            store_latency: self.store_latency.snapshot(),
            event_queue_backlog,
            journal_backlog,
        }
    }
}

/// The store path's counters are these (`service::store`).
impl StoreMetrics for Metrics {
    fn bytes_received(&self, bytes: usize) {
        Metrics::bytes_received(self, bytes);
    }

    fn instance_answered(&self, code: u16, received_at: SystemTime) {
        Metrics::instance_answered(self, code, received_at);
    }
}

/// What `_core.Receiver.metrics()` returns, as msgpack of `oxidip._boundary.ReceiverMetrics`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MetricsSnapshot {
    pub listening: bool,
    /// Associations being served.
    pub associations_open: u64,
    /// Connections served as associations since start (refused at negotiation included;
    /// over the association limit they are turned away before, see `associations_refused`).
    pub associations_total: u64,
    /// Ended associations by outcome.
    pub associations_closed: BTreeMap<&'static str, u64>,
    /// Refused associations by reason (`Refusal::label`).
    pub associations_refused: BTreeMap<&'static str, u64>,
    pub instances_stored: u64,
    /// Instances answered with a failure, by status in hex.
    pub instances_failed: BTreeMap<String, u64>,
    pub bytes_received: u64,
    /// From a C-STORE-RQ's command to its response, whatever the status.
    pub store_latency: HistogramSnapshot,
    /// Events not yet taken by Python.
    pub event_queue_backlog: u64,
    /// Journaled instances not yet registered.
    pub journal_backlog: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds in seconds, +Inf left out.
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative), one more than `bounds` (the +Inf bucket).
    pub counts: Vec<u64>,
    /// Seconds.
    pub sum: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ul::pdu::reject::REJECTED_PERMANENT;

    #[test]
    fn latency_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let histogram = LatencyHistogram::new();
        histogram.observe(Duration::from_micros(25)); // == first bound: first bucket
        histogram.observe(Duration::from_micros(26));
        histogram.observe(Duration::from_secs(31)); // past the last bound: +Inf
        histogram.observe(Duration::ZERO);
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.bounds.len() + 1, snapshot.counts.len());
        assert_eq!(snapshot.counts[0], 2);
        assert_eq!(snapshot.counts[1], 1);
        assert_eq!(*snapshot.counts.last().unwrap(), 1);
        assert_eq!(snapshot.counts.iter().sum::<u64>(), 4);
        assert!((snapshot.sum - 31.000051).abs() < 1e-9, "{}", snapshot.sum);
        assert_eq!(snapshot.bounds[0], 0.000025);
    }

    #[test]
    fn failures_are_counted_per_status_and_overflow_to_other() {
        let metrics = Metrics::default();
        let now = SystemTime::now();
        metrics.instance_answered(status::SUCCESS, now);
        metrics.instance_answered(status::OUT_OF_RESOURCES, now);
        metrics.instance_answered(status::OUT_OF_RESOURCES, now);
        metrics.instance_answered(status::MISSING_ATTRIBUTE, now);
        let snapshot = metrics.snapshot(0, 0);
        assert_eq!(snapshot.instances_stored, 1);
        let failed: Vec<(&str, u64)> = snapshot.instances_failed.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(failed, [("A700", 2), ("C001", 1)]);
        assert_eq!(snapshot.store_latency.counts.iter().sum::<u64>(), 4);

        let many = StatusCounts::new();
        for code in 1..=(STATUS_SLOTS as u16 + 3) {
            many.add(code);
        }
        let snapshot = many.snapshot();
        assert_eq!(snapshot.len(), STATUS_SLOTS + 1);
        assert_eq!(snapshot["other"], 3);
    }

    #[test]
    fn statuses_counted_from_many_threads_at_once_add_up() {
        let counts = StatusCounts::new();
        std::thread::scope(|scope| {
            for thread in 0..4u16 {
                let counts = &counts;
                scope.spawn(move || {
                    for i in 0..1000u16 {
                        counts.add(0xA700 + (i + thread) % 3);
                    }
                });
            }
        });
        let snapshot = counts.snapshot();
        assert_eq!(snapshot.len(), 3, "{snapshot:?}");
        assert_eq!(snapshot.values().sum::<u64>(), 4000);
    }

    #[test]
    fn associations_are_counted_by_outcome_and_refusals_by_reason() {
        let metrics = Metrics::default();
        metrics.set_listening(true);
        metrics.association_opened();
        metrics.association_opened();
        metrics.association_closed("released");
        metrics.association_closed("something new");
        metrics.association_opened();
        metrics.association_refused(Refusal::OverLimit);
        let rj = AssociateRj { result: REJECTED_PERMANENT, source: SOURCE_SERVICE_USER, reason: 3 };
        metrics.association_refused(Refusal::of(&rj));
        metrics.bytes_received(10);
        metrics.bytes_received(5);
        let snapshot = metrics.snapshot(7, 9);
        assert!(snapshot.listening);
        assert_eq!((snapshot.associations_open, snapshot.associations_total), (1, 3));
        assert_eq!(snapshot.associations_closed["released"], 1);
        assert_eq!(snapshot.associations_closed["other"], 1);
        assert_eq!(snapshot.associations_closed["timeout"], 0);
        assert_eq!(snapshot.associations_refused["over-limit"], 1);
        assert_eq!(snapshot.associations_refused["calling-aet"], 1);
        assert_eq!(snapshot.associations_refused["called-aet"], 0);
        assert_eq!(snapshot.bytes_received, 15);
        assert_eq!((snapshot.event_queue_backlog, snapshot.journal_backlog), (7, 9));
    }

    #[test]
    fn refusals_read_the_reason_with_its_source() {
        let rj = |source, reason| AssociateRj { result: REJECTED_PERMANENT, source, reason };
        assert_eq!(Refusal::of(&rj(SOURCE_SERVICE_USER, 7)), Refusal::CalledAeTitle);
        assert_eq!(Refusal::of(&rj(SOURCE_SERVICE_USER, 2)), Refusal::ApplicationContext);
        assert_eq!(Refusal::of(&rj(SOURCE_SERVICE_PROVIDER_ACSE, 2)), Refusal::ProtocolVersion);
        assert_eq!(Refusal::of(&rj(SOURCE_SERVICE_PROVIDER_PRESENTATION, 2)), Refusal::OverLimit);
        assert_eq!(Refusal::of(&rj(SOURCE_SERVICE_PROVIDER_ACSE, 7)), Refusal::Other);
    }
}
