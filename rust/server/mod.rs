//! The Storage SCP: listener, per-association handler, configuration and the events it emits.

pub mod config;
pub mod events;
mod handler;
mod listener;
pub mod metrics;
mod store;

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::{watch, Notify, Semaphore};

use crate::storage::journal::Journal;
use crate::storage::writer::{Storage, StorageOptions};
use config::Settings;
use events::{EventSink, EventStream};
use metrics::{Metrics, MetricsSnapshot};

/// What every association task shares.
pub struct Shared {
    pub settings: Settings,
    pub storage: Arc<Storage>,
    pub events: EventSink,
    pub metrics: Arc<Metrics>,
}

/// A running server: its runtime, its port, and the means to stop it.
pub struct Server {
    runtime: Runtime,
    port: u16,
    stop: Arc<Notify>,
    grace: Arc<Mutex<Duration>>,
    journal: Arc<Journal>,
    /// Not `Shared`: the event stream ends when the last association task drops that.
    metrics: Arc<Metrics>,
    /// For the storage check of `/healthz`.
    storage: Arc<Storage>,
    /// Events not yet taken (`EventStream::queued_counter`).
    queued: Arc<AtomicUsize>,
}

impl Server {
    /// Opens storage, binds, and starts accepting. Events arrive on the returned stream until
    /// the server has stopped and every association has ended.
    pub fn start(settings: Settings) -> io::Result<(Server, EventStream)> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("oxidip").build()?;
        let options = StorageOptions {
            template: settings.template.clone(),
            fsync: settings.fsync,
            duplicates: settings.duplicates,
            permissions: settings.permissions,
            node: settings.node.clone(),
        };
        let storage = Arc::new(Storage::open(&settings.files_root, options)?);
        let journal = storage.journal().clone();
        let std_listener = std::net::TcpListener::bind(&settings.bind)?;
        std_listener.set_nonblocking(true)?;
        let port = std_listener.local_addr()?.port();
        let (sink, stream) = events::channel(settings.event_queue_size);
        let slots = Arc::new(Semaphore::new(settings.max_associations));
        let queued = stream.queued_counter();
        let metrics = Arc::new(Metrics::default());
        let shared = Arc::new(Shared { settings, storage: storage.clone(), events: sink, metrics: metrics.clone() });
        let stop = Arc::new(Notify::new());
        let grace = Arc::new(Mutex::new(Duration::ZERO));
        let (abort, _) = watch::channel(false);
        let socket = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let listener = listener::Listener { shared, slots, abort, stop: stop.clone(), grace: grace.clone() };
        runtime.spawn(listener.run(socket));
        Ok((Server { runtime, port, stop, grace, journal, metrics, storage, queued }, stream))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Python's word on journal entries (`InstanceStored::journal_seq`): registered or not.
    pub fn acknowledge(&self, seqs: &[u64], registered: bool) {
        self.journal.acknowledge(seqs, registered);
    }

    /// Journal entries not yet registered (the journal backlog).
    pub fn journal_backlog(&self) -> usize {
        self.journal.backlog()
    }

    /// Every counter of `/metrics`, and the backlogs.
    pub fn metrics(&self) -> MetricsSnapshot {
        let queued = self.queued.load(Ordering::Relaxed) as u64;
        self.metrics.snapshot(queued, self.journal.backlog() as u64)
    }

    /// The storage instances go to (for its `check_writable`).
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Begins a graceful shutdown and returns at once: no new associations; running ones may
    /// finish within `grace`, then are aborted. The event stream ends when all is done.
    pub fn stop(&self, grace: Duration) {
        *self.grace.lock().unwrap_or_else(|e| e.into_inner()) = grace;
        // notify_one stores a permit, so a stop that comes before the listener waits is kept.
        self.stop.notify_one();
    }
}

#[cfg(test)]
pub(crate) mod tests;
