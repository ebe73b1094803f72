//! Events the core hands to Python in batches: one per stored instance, per failed
//! instance (from whichever association received it: the server's, or one a client
//! requested) and per finished association; one per association whose proposal was partly
//! refused, per connection refused before it became an association, and warnings about the
//! server itself. The queue is bounded: when Python falls behind, association tasks wait on
//! `send`, stop reading their sockets, and TCP pushes back on the senders.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, Notify};

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
    #[serde(rename = "contexts-refused")]
    ContextsRefused(ContextsRefused),
    #[serde(rename = "refused")]
    ConnectionRefused(ConnectionRefused),
    #[serde(rename = "warning")]
    ServerWarning(ServerWarning),
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
    /// Came on the TLS listener.
    pub tls: bool,
    /// Subject of the peer's certificate (mutual TLS), "" without one.
    pub peer_certificate_subject: String,
}

/// An association was accepted with some of its proposed presentation contexts refused:
/// one event per association, sent once it is established.
#[derive(Debug, Clone, Serialize)]
pub struct ContextsRefused {
    pub association_id: u64,
    pub calling_aet: String,
    pub called_aet: String,
    pub peer: String,
    /// How many contexts were accepted (0: the association can do nothing).
    pub accepted: usize,
    pub refused: Vec<RefusedContext>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefusedContext {
    pub id: u8,
    pub abstract_syntax: String,
    /// The transfer syntaxes proposed with it.
    pub transfer_syntaxes: Vec<String>,
    /// The result sent (PS3.8 table 9-18), in words.
    pub reason: &'static str,
}

/// A connection answered before it became an association (A-ASSOCIATE-RJ), or closed
/// without one, because of a limit of this server.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRefused {
    pub peer: String,
    /// From the A-ASSOCIATE-RQ; empty when none was read.
    pub calling_aet: String,
    pub called_aet: String,
    /// `metrics::Refusal::label`: "over-limit" (OXIDIP_MAX_ASSOCIATIONS) or "open-files" (RLIMIT_NOFILE).
    pub reason: &'static str,
    pub detail: String,
}

/// Something the operator must know about the server, not about one association.
#[derive(Debug, Clone, Serialize)]
pub struct ServerWarning {
    pub message: String,
    pub detail: String,
}

/// The sending side, cloned into every association task.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    queued: Arc<AtomicUsize>,
    /// Ends the taker's linger: a burst of instances is over (see `flush`).
    flush: Arc<Notify>,
}

impl EventSink {
    /// Waits for room in the queue. An error only means nobody takes events any more (the
    /// receiver was dropped), which must not disturb the network side. Counted before the
    /// send so the backlog includes tasks waiting for room, and never goes below zero. A
    /// closed association ends its burst: the batch lingering goes to Python at once.
    pub async fn send(&self, event: Event) {
        let ends_burst = matches!(event, Event::AssociationClosed(_));
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(event).await.is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        if ends_burst {
            self.flush();
        }
    }

    /// No more events of a burst are coming (an association ended, a C-GET's final response
    /// came): a taker lingering for more stops lingering, so that the burst's last instances
    /// are registered now, not up to a linger later (a pull waits on them to end a series).
    /// One wake-up per burst, never one per instance; nothing is kept for a later linger.
    pub fn flush(&self) {
        self.flush.notify_waiters();
    }

    /// Queues an event if there is room, else drops it: for reports from a task that must
    /// never wait on Python (the listener). Returns whether it was queued.
    pub fn try_send(&self, event: Event) -> bool {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let queued = self.tx.try_send(event).is_ok();
        if !queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        queued
    }
}

/// The taking side, used from Python through blocking calls.
pub struct EventStream {
    rx: mpsc::Receiver<Event>,
    queued: Arc<AtomicUsize>,
    flush: Arc<Notify>,
}

pub fn channel(capacity: usize) -> (EventSink, EventStream) {
    let (tx, rx) = mpsc::channel(capacity);
    let queued = Arc::new(AtomicUsize::new(0));
    let flush = Arc::new(Notify::new());
    (EventSink { tx, queued: queued.clone(), flush: flush.clone() }, EventStream { rx, queued, flush })
}

impl EventStream {
    /// Waits up to `timeout` for a first event, then takes up to `max` in all: those already
    /// queued and, when `linger` is not zero and the batch is not full, those that arrive
    /// within `linger`. Lingering trades a little latency for fewer, larger batches: one
    /// wake-up of the Python thread and one registry transaction for many instances, where
    /// waking on every event costs about as much as storing the instance.
    /// None once every sender is gone and the queue is empty.
    pub fn next_batch(
        &mut self,
        runtime: &Handle,
        max: usize,
        timeout: Duration,
        linger: Duration,
    ) -> Option<Vec<Event>> {
        let max = max.max(1);
        let first = runtime.block_on(async { tokio::time::timeout(timeout, self.rx.recv()).await });
        let mut batch = match first {
            Err(_elapsed) => return Some(Vec::new()),
            Ok(None) => return None,
            Ok(Some(event)) => vec![event],
        };
        // Listening for a flush before looking at the queue: one sent after the look still
        // ends the linger.
        let flushed = self.flush.clone();
        let flushed = flushed.notified();
        tokio::pin!(flushed);
        flushed.as_mut().enable();
        self.drain_into(&mut batch, max);
        let burst_over = batch.iter().any(|e| matches!(e, Event::AssociationClosed(_)));
        if batch.len() < max && !linger.is_zero() && !burst_over {
            // A sleep, not a wait on the channel, so that senders do not wake us: only the end
            // of a burst does (`EventSink::flush`).
            runtime.block_on(async {
                tokio::select! {
                    _ = tokio::time::sleep(linger) => {}
                    _ = flushed => {}
                }
            });
            self.drain_into(&mut batch, max);
        }
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        Some(batch)
    }

    fn drain_into(&mut self, batch: &mut Vec<Event>, max: usize) {
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(event) => batch.push(event),
                Err(_) => break,
            }
        }
    }

    /// A counter readable without holding the stream.
    pub fn queued_counter(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(association_id: u64) -> Event {
        Event::AssociationClosed(AssociationClosed {
            association_id,
            calling_aet: String::new(),
            called_aet: String::new(),
            peer: String::new(),
            started_at: 0.0,
            duration: 0.0,
            instances_stored: 0,
            instances_failed: 0,
            bytes_received: 0,
            outcome: "released",
            detail: String::new(),
            tls: false,
            peer_certificate_subject: String::new(),
        })
    }

    /// An event that ends no burst.
    fn warning(id: u64) -> Event {
        Event::ServerWarning(ServerWarning { message: id.to_string(), detail: String::new() })
    }

    fn ids(batch: &[Event]) -> Vec<u64> {
        batch
            .iter()
            .map(|e| match e {
                Event::AssociationClosed(c) => c.association_id,
                Event::ServerWarning(w) => w.message.parse().unwrap(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
    }

    /// Waits (in the runtime) until the stream has taken every event sent.
    async fn taken(sink: &EventSink) {
        while sink.tx.capacity() < sink.tx.max_capacity() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Python calls from its own thread, outside the runtime: lingering must work there.
    #[test]
    fn batches_take_what_is_queued_up_to_max_with_or_without_linger() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (sink, mut stream) = channel(16);
        runtime.block_on(async {
            for id in 0..5 {
                sink.send(closed(id)).await;
            }
        });
        let handle = runtime.handle();
        let linger = Duration::from_millis(1);
        let batch = stream.next_batch(handle, 3, Duration::from_secs(5), linger).unwrap();
        assert_eq!(ids(&batch), [0, 1, 2]);
        assert_eq!(stream.queued_counter().load(Ordering::Relaxed), 2);
        let batch = stream.next_batch(handle, 10, Duration::from_secs(5), linger).unwrap();
        assert_eq!(ids(&batch), [3, 4]);
        let batch = stream.next_batch(handle, 10, Duration::from_millis(1), Duration::ZERO).unwrap();
        assert!(batch.is_empty());
        drop(sink);
        assert!(stream.next_batch(handle, 10, Duration::from_secs(5), linger).is_none());
    }

    /// An event sent while the batch lingers joins it.
    #[test]
    fn linger_collects_events_sent_meanwhile() {
        let runtime = runtime();
        let (sink, mut stream) = channel(16);
        runtime.spawn(async move {
            sink.send(warning(1)).await;
            // Once the first event has been taken (the batch is lingering, or done), the next.
            taken(&sink).await;
            sink.send(warning(2)).await;
        });
        let batch = stream.next_batch(runtime.handle(), 10, Duration::from_secs(5), Duration::from_millis(500));
        assert_eq!(ids(&batch.unwrap()), [1, 2]);
    }

    /// An association closing while the batch lingers ends the linger: the batch, the close
    /// included, goes at once (a pull waits on those instances' registration).
    #[test]
    fn a_closed_association_ends_the_linger() {
        let runtime = runtime();
        let (sink, mut stream) = channel(16);
        runtime.spawn(async move {
            sink.send(warning(1)).await;
            taken(&sink).await;
            sink.send(closed(2)).await;
            std::future::pending::<()>().await; // the sink stays: only the flush ends the linger
        });
        let started = std::time::Instant::now();
        let batch = stream.next_batch(runtime.handle(), 10, Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!(ids(&batch.unwrap()), [1, 2]);
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    }

    /// A close already queued: no linger at all. A flush (a C-GET's end) ends one too, and
    /// leaves nothing behind that would cut the next linger short.
    #[test]
    fn a_queued_close_or_a_flush_ends_the_linger_and_only_that_one() {
        let runtime = runtime();
        let (sink, mut stream) = channel(16);
        let handle = runtime.handle();
        let long = Duration::from_secs(30);
        runtime.block_on(sink.send(closed(1)));
        let started = std::time::Instant::now();
        assert_eq!(ids(&stream.next_batch(handle, 10, long, long).unwrap()), [1]);
        assert!(started.elapsed() < Duration::from_secs(10));

        let flusher = sink.clone();
        runtime.spawn(async move {
            flusher.send(warning(2)).await;
            taken(&flusher).await;
            flusher.flush();
        });
        let started = std::time::Instant::now();
        assert_eq!(ids(&stream.next_batch(handle, 10, long, long).unwrap()), [2]);
        assert!(started.elapsed() < Duration::from_secs(10));

        runtime.block_on(sink.send(warning(3)));
        let linger = Duration::from_millis(200);
        let started = std::time::Instant::now();
        assert_eq!(ids(&stream.next_batch(handle, 10, long, linger).unwrap()), [3]);
        assert!(started.elapsed() >= linger, "{:?}", started.elapsed());
    }
}
