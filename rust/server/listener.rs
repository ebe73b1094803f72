//! Accepts connections and runs one handler task per association, up to the configured
//! limit; refuses the others with an A-ASSOCIATE-RJ, also when the process runs out of file
//! descriptors; shuts down gracefully (the shape of mini-redis's `Listener`).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::handler;
use super::metrics::Refusal;
use super::{Phase, ServerContext};
use crate::events::{Event, ServerWarning};

/// Peers over the association limit that may wait for their A-ASSOCIATE-RJ at once; past
/// this, a connection is closed without an answer so a flood cannot pile up tasks.
const MAX_PENDING_REJECTIONS: usize = 64;

/// After the grace period, how long aborted associations get to clean up.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// Pause after an accept error that the next accept would repeat (no descriptor left, no
/// memory), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// At most one warning of each kind per this interval, with the count since the last one:
/// a flood must not flood the log.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// The listening sockets: plain TCP, TLS (PS3.15 annex B) with its acceptor, or both.
pub struct Sockets {
    pub plain: Option<TcpListener>,
    pub tls: Option<(TcpListener, TlsAcceptor)>,
}

impl Sockets {
    /// The next connection on either socket, with the acceptor when it came on the TLS one.
    /// Unbiased, so that a flood on one port cannot starve the other.
    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr, Option<TlsAcceptor>)> {
        tokio::select! {
            accepted = accept_on(self.plain.as_ref()) => accepted.map(|(stream, peer)| (stream, peer, None)),
            accepted = accept_on(self.tls.as_ref().map(|(socket, _)| socket)) => {
                let acceptor = self.tls.as_ref().map(|(_, acceptor)| acceptor.clone());
                accepted.map(|(stream, peer)| (stream, peer, acceptor))
            }
        }
    }
}

/// Accepts on `socket`; never returns without one.
async fn accept_on(socket: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match socket {
        Some(socket) => socket.accept().await,
        None => std::future::pending().await,
    }
}

pub struct Listener {
    pub server: Arc<ServerContext>,
    /// One permit per association slot (OXIDIP_MAX_ASSOCIATIONS).
    pub slots: Arc<Semaphore>,
    /// The server's phase, told to every handler.
    pub phase: watch::Sender<Phase>,
    /// Notified to stop accepting.
    pub stop: Arc<Notify>,
    /// Grace period for running associations, read when the stop comes.
    pub grace: Arc<std::sync::Mutex<Duration>>,
}

impl Listener {
    /// Accepts until told to stop, then closes the sockets and waits for the running
    /// associations.
    pub async fn run(self, sockets: Sockets) {
        let rejections = Arc::new(Semaphore::new(MAX_PENDING_REJECTIONS));
        let spare = Arc::new(SpareDescriptor::open());
        // The spare was closed so that the next accepted connection can be answered.
        let mut spare_released = false;
        let mut out_of_descriptors = Throttled::default();
        let mut unanswered = Throttled::default();
        loop {
            // Biased: once a stop is asked for, no further connection is accepted.
            let accepted = tokio::select! {
                biased;
                _ = self.stop.notified() => break,
                accepted = sockets.accept() => accepted,
            };
            let (stream, peer, tls) = match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_out_of_descriptors(&e) => {
                    if let Some(count) = out_of_descriptors.hit() {
                        self.warn("accept failed: too many open files", out_of_descriptors_detail(&e, count));
                    }
                    // With the spare closed, the next accept gets its descriptor, for long
                    // enough to answer that peer (A-ASSOCIATE-RJ) rather than leave it
                    // hanging in the backlog. Without a spare, wait for a descriptor.
                    spare_released = spare.release();
                    if !spare_released && self.pause().await.is_break() {
                        break;
                    }
                    continue;
                }
                // Per connection (reset before accept) or passing (no memory): the next
                // accept is worth trying, after a moment.
                Err(_) => {
                    if self.pause().await.is_break() {
                        break;
                    }
                    continue;
                }
            };
            // PS3.8 §9.1.x leaves this to the transport; delayed ACKs would add ~40 ms per
            // small response without it.
            let _ = stream.set_nodelay(true);
            let peer = peer.to_string();
            // Either this connection took the spare's descriptor, or the spare is missing and
            // cannot be had back (one open() per accepted connection, only after descriptors
            // ran out): this connection holds the last descriptor, with no room for its
            // files. Refused; the refusal gets the spare back once it has closed.
            if std::mem::take(&mut spare_released) || !spare.ensure_open() {
                self.server.metrics.association_refused(Refusal::OpenFiles);
                tokio::spawn(self.refusal(stream, tls, peer, Refusal::OpenFiles, Some(spare.clone())));
                continue;
            }
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let id = self.server.next_association_id();
                    let connection =
                        handler::serve_connection(stream, tls, self.server.clone(), id, peer, self.phase.subscribe());
                    tokio::spawn(async move {
                        connection.await;
                        drop(permit);
                    });
                }
                Err(_) => match rejections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        self.server.metrics.association_refused(Refusal::OverLimit);
                        let refusal = self.refusal(stream, tls, peer, Refusal::OverLimit, None);
                        tokio::spawn(async move {
                            refusal.await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        self.server.metrics.association_refused(Refusal::OverLimit);
                        if let Some(count) = unanswered.hit() {
                            let detail = format!(
                                "{count} connection(s) over OXIDIP_MAX_ASSOCIATIONS closed without an A-ASSOCIATE-RJ \
                                 since the last warning: {MAX_PENDING_REJECTIONS} rejections were already pending \
                                 (last peer {peer})"
                            );
                            self.warn("connections refused without an answer", detail);
                        }
                    }
                },
            }
        }
        self.server.metrics.set_listening(false);
        drop(sockets);
        drop(spare);
        self.drain().await;
    }

    /// Answers `stream` with an A-ASSOCIATE-RJ and closes it (`handler::refuse`), opens the
    /// spare again if given (the descriptor is free now), then reports the refusal.
    fn refusal(
        &self,
        stream: TcpStream,
        tls: Option<TlsAcceptor>,
        peer: String,
        refusal: Refusal,
        spare: Option<Arc<SpareDescriptor>>,
    ) -> impl std::future::Future<Output = ()> {
        let server = self.server.clone();
        let refused = handler::refuse(stream, tls, peer, refusal, server.clone(), self.phase.subscribe());
        async move {
            let refused = refused.await;
            if let Some(spare) = spare {
                let _ = spare.ensure_open();
            }
            if let Some(refused) = refused {
                server.events.send(Event::ConnectionRefused(refused)).await;
            }
        }
    }

    /// Reports a warning without ever waiting on Python: dropped if the event queue is full
    /// (the next one, `WARNING_INTERVAL` later, carries the count).
    fn warn(&self, message: &str, detail: String) {
        self.server.events.try_send(Event::ServerWarning(ServerWarning { message: message.into(), detail }));
    }

    /// Waits `ACCEPT_ERROR_PAUSE`, or until a stop is asked for (`Break`).
    async fn pause(&self) -> std::ops::ControlFlow<()> {
        tokio::select! {
            biased;
            _ = self.stop.notified() => std::ops::ControlFlow::Break(()),
            _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => std::ops::ControlFlow::Continue(()),
        }
    }

    /// Waits for every association to end: first within the grace period, then after
    /// telling the rest to abort. Connections that are not associations yet are closed at
    /// once (`Phase::Draining`).
    async fn drain(&self) {
        self.phase.send_replace(Phase::Draining);
        let all = self.server.settings.max_associations as u32;
        let grace = *self.grace.lock().unwrap_or_else(|e| e.into_inner());
        if tokio::time::timeout(grace, self.slots.acquire_many(all)).await.is_ok() {
            return;
        }
        self.phase.send_replace(Phase::Aborting);
        let _ = tokio::time::timeout(ABORT_GRACE, self.slots.acquire_many(all)).await;
    }
}

/// EMFILE (this process) or ENFILE (the whole system): accept has a connection for us but no
/// descriptor to give it.
fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

fn out_of_descriptors_detail(e: &io::Error, count: u64) -> String {
    format!(
        "{e}: {count} time(s) since the last warning; connections are refused (A-ASSOCIATE-RJ, one at a time) \
         until descriptors are free: raise the open-files limit or lower OXIDIP_MAX_ASSOCIATIONS"
    )
}

/// One file descriptor held in reserve: when accept fails for want of descriptors, closing it
/// lets the listener accept one waiting peer and answer it, instead of leaving every peer in
/// the backlog until its own timeout (the classic "reserve descriptor" of accept loops).
/// Shared with the refusal it makes room for, which opens it again once it has closed its
/// connection, before the listener can hand that descriptor to another.
struct SpareDescriptor {
    file: Mutex<Option<File>>,
}

impl SpareDescriptor {
    fn open() -> Self {
        SpareDescriptor { file: Mutex::new(File::open("/dev/null").ok()) }
    }

    fn file(&self) -> std::sync::MutexGuard<'_, Option<File>> {
        self.file.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the spare, for the next accepted connection; false if there was none.
    fn release(&self) -> bool {
        self.file().take().is_some()
    }

    /// Opens the spare if it is not open. False only when no descriptor is left: any other
    /// failure to open /dev/null leaves the server without a spare, serving as before.
    fn ensure_open(&self) -> bool {
        let mut file = self.file();
        if file.is_some() {
            return true;
        }
        match File::open("/dev/null") {
            Ok(opened) => {
                *file = Some(opened);
                true
            }
            Err(e) => !is_out_of_descriptors(&e),
        }
    }
}

/// Counts occurrences of something worth one warning per `WARNING_INTERVAL`.
#[derive(Default)]
struct Throttled {
    last_warning: Option<Instant>,
    since_last_warning: u64,
}

impl Throttled {
    /// Counts one occurrence; Some(count since the last warning) when a warning is due.
    fn hit(&mut self) -> Option<u64> {
        self.since_last_warning += 1;
        let due = self.last_warning.is_none_or(|last| last.elapsed() >= WARNING_INTERVAL);
        if !due {
            return None;
        }
        self.last_warning = Some(Instant::now());
        Some(std::mem::take(&mut self.since_last_warning))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_warns_at_once_then_once_per_interval_with_the_count() {
        let mut throttled = Throttled::default();
        assert_eq!(throttled.hit(), Some(1));
        assert_eq!(throttled.hit(), None);
        assert_eq!(throttled.hit(), None);
        throttled.last_warning = Instant::now().checked_sub(WARNING_INTERVAL);
        assert_eq!(throttled.hit(), Some(3));
    }

    #[test]
    fn the_spare_descriptor_is_released_once_and_reopened() {
        let spare = SpareDescriptor::open();
        assert!(spare.release());
        assert!(!spare.release(), "nothing left to release");
        assert!(spare.ensure_open());
        assert!(spare.ensure_open(), "already open");
        assert!(spare.release());
    }
}
