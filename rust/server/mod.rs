//! The Storage SCP: listener, per-association handler, configuration and the events it emits.

pub mod config;
mod handler;
mod listener;
pub mod metrics;
mod open_files;

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::runtime::Runtime;
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::events::{self, EventSink, EventStream};
use crate::service::store::StoreService;
use crate::storage::journal::Journal;
use crate::storage::writer::Storage;
use config::Settings;
use metrics::{Metrics, MetricsSnapshot};

/// Where the server is in its life; later phases compare greater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// Stopped accepting: connections that are not associations yet are closed, running
    /// associations may finish within the grace period.
    Draining,
    /// The grace period is over: every association is aborted wherever it waits.
    Aborting,
}

/// The server as its listener and every association task see it: settings, where events
/// go, counters, and the store service its associations' C-STOREs run through.
pub struct ServerContext {
    pub settings: Settings,
    pub events: EventSink,
    pub metrics: Arc<Metrics>,
    pub store: Arc<StoreService>,
    /// The id of the next association, accepted or requested (events carry it).
    association_ids: AtomicU64,
}

impl ServerContext {
    /// A new association id, unique in this process.
    pub fn next_association_id(&self) -> u64 {
        self.association_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// The ports a server listens on: plain TCP and TLS, each when configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub plain: Option<u16>,
    pub tls: Option<u16>,
}

fn bind(addr: &str) -> io::Result<std::net::TcpListener> {
    let socket = std::net::TcpListener::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn local_port(socket: Option<&std::net::TcpListener>) -> io::Result<Option<u16>> {
    socket.map(|s| s.local_addr().map(|a| a.port())).transpose()
}

/// A running server: its runtime, its ports, and the means to stop it.
pub struct Server {
    runtime: Runtime,
    ports: Ports,
    stop: Arc<Notify>,
    grace: Arc<Mutex<Duration>>,
    journal: Arc<Journal>,
    /// Not `ServerContext`: the event stream ends when the last association task drops that.
    metrics: Arc<Metrics>,
    /// For the storage check of `/healthz`.
    storage: Arc<Storage>,
    /// Events not yet taken (`EventStream::queued_counter`).
    queued: Arc<AtomicUsize>,
    /// Weak: the event stream ends once the listener and every association are done with it.
    context: Weak<ServerContext>,
}

impl Server {
    /// Opens storage, binds, and starts accepting. Events arrive on the returned stream until
    /// the server has stopped and every association has ended.
    pub fn start(settings: Settings) -> io::Result<(Server, EventStream)> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("oxidip").build()?;
        let storage = Arc::new(Storage::open(&settings.files_root, settings.storage_options())?);
        let journal = storage.journal().clone();
        runtime.spawn(crate::storage::journal::watch(Arc::downgrade(&journal)));
        let plain = settings.bind.as_deref().map(bind).transpose()?;
        let tls = match &settings.tls {
            Some(tls) => Some((bind(&tls.bind)?, TlsAcceptor::from(tls.config.clone()))),
            None => None,
        };
        let ports = Ports { plain: local_port(plain.as_ref())?, tls: local_port(tls.as_ref().map(|(s, _)| s))? };
        let sockets = {
            let _guard = runtime.enter();
            let tls = match tls {
                Some((socket, acceptor)) => Some((tokio::net::TcpListener::from_std(socket)?, acceptor)),
                None => None,
            };
            listener::Sockets { plain: plain.map(tokio::net::TcpListener::from_std).transpose()?, tls }
        };
        let (sink, stream) = events::channel(settings.event_queue_size);
        if let Some(warning) = open_files::raise_limit(settings.max_associations) {
            sink.try_send(events::Event::ServerWarning(warning));
        }
        let slots = Arc::new(Semaphore::new(settings.max_associations));
        let queued = stream.queued_counter();
        let metrics = Arc::new(Metrics::default());
        let store = Arc::new(StoreService {
            storage: storage.clone(),
            required: settings.required.clone(),
            inflate: settings.inflate,
            ack_registered: settings.ack_registered,
            events: sink.clone(),
            metrics: metrics.clone(),
        });
        let server = Arc::new(ServerContext {
            settings,
            events: sink,
            metrics: metrics.clone(),
            store,
            association_ids: AtomicU64::new(1),
        });
        let context = Arc::downgrade(&server);
        let stop = Arc::new(Notify::new());
        let grace = Arc::new(Mutex::new(Duration::ZERO));
        let (phase, _) = watch::channel(Phase::Serving);
        // Bound and listening already: connections queue in the backlog until the listener
        // task takes them, so `/healthz` may say so before `start` returns.
        metrics.set_listening(true);
        let listener = listener::Listener { server, slots, phase, stop: stop.clone(), grace: grace.clone() };
        runtime.spawn(listener.run(sockets));
        Ok((Server { runtime, ports, stop, grace, journal, metrics, storage, queued, context }, stream))
    }

    /// The plain TCP listener's port; 0 when there is none.
    pub fn port(&self) -> u16 {
        self.ports.plain.unwrap_or(0)
    }

    /// The bound ports (the real ones when configured with port 0).
    pub fn ports(&self) -> Ports {
        self.ports
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

    /// What the server's associations share, for an association it requests itself (a
    /// C-GET into its storage); None once it has stopped and every association has ended.
    pub fn context(&self) -> Option<Arc<ServerContext>> {
        self.context.upgrade()
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
