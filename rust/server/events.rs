//! Events the server hands to Python in batches: one per stored instance, per failed
//! instance and per finished association. The queue is bounded: when Python falls behind,
//! association tasks wait on `send`, stop reading their sockets, and TCP pushes back on the
//! senders.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::dicom::attributes::Attributes;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind")]
pub enum Event {
    #[serde(rename = "instance")]
    InstanceStored(Box<InstanceStored>),
    #[serde(rename = "failure")]
    InstanceFailed(InstanceFailed),
    #[serde(rename = "association")]
    AssociationClosed(AssociationClosed),
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceStored {
    pub association_id: u64,
    pub path: String,
    pub size: u64,
    pub attributes: Attributes,
    pub calling_aet: String,
    pub called_aet: String,
    pub peer: String,
    pub transfer_syntax: String,
    pub received_at: f64,
    pub stored_at: f64,
    pub duplicate: bool,
    /// Its entry in the journal: acknowledge it once registered (`Receiver.acknowledge`).
    pub journal_seq: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceFailed {
    pub association_id: u64,
    pub calling_aet: String,
    pub peer: String,
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub status: u16,
    pub comment: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct AssociationClosed {
    pub association_id: u64,
    pub calling_aet: String,
    pub called_aet: String,
    pub peer: String,
    pub started_at: f64,
    pub duration: f64,
    pub instances_stored: u64,
    pub instances_failed: u64,
    pub bytes_received: u64,
    pub outcome: &'static str,
    pub detail: String,
}

/// Seconds since the Unix epoch, as Python's `time.time()`.
pub fn unix_time(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The sending side, cloned into every association task.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    queued: Arc<AtomicUsize>,
}

impl EventSink {
    /// Waits for room in the queue. An error only means nobody takes events any more (the
    /// receiver was dropped), which must not disturb the network side. Counted before the
    /// send so the backlog includes tasks waiting for room, and never goes below zero.
    pub async fn send(&self, event: Event) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(event).await.is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The taking side, used from Python through blocking calls.
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    queued: Arc<AtomicUsize>,
}

pub fn channel(capacity: usize) -> (EventSink, EventStream) {
    let (tx, rx) = mpsc::channel(capacity);
    let queued = Arc::new(AtomicUsize::new(0));
    (EventSink { tx, queued: queued.clone() }, EventStream { rx, queued })
}

impl EventStream {
    /// Waits up to `timeout` for a first event, then takes up to `max` without waiting.
    /// None once every sender is gone and the queue is empty.
    pub fn next_batch(&mut self, runtime: &Handle, max: usize, timeout: Duration) -> Option<Vec<Event>> {
        let first = runtime.block_on(async { tokio::time::timeout(timeout, self.rx.recv()).await });
        let mut batch = match first {
            Err(_elapsed) => return Some(Vec::new()),
            Ok(None) => return None,
            Ok(Some(event)) => vec![event],
        };
        while batch.len() < max.max(1) {
            match self.rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        Some(batch)
    }

    /// A counter readable without holding the stream.
    pub fn queued_counter(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }
}
