//! Accepts connections and runs one handler task per association, up to the configured
//! limit; shuts down gracefully (the shape of mini-redis's `Listener`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::handler;
use super::metrics::Refusal;
use super::Shared;

/// Peers over the association limit that may wait for their A-ASSOCIATE-RJ at once; past
/// this, a connection is closed without an answer so a flood cannot pile up tasks.
const MAX_PENDING_REJECTIONS: usize = 64;

/// After the grace period, how long aborted associations get to clean up.
const ABORT_GRACE: Duration = Duration::from_secs(5);

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
    pub shared: Arc<Shared>,
    /// One permit per association slot (OXIDIP_MAX_ASSOCIATIONS).
    pub slots: Arc<Semaphore>,
    /// Set when the grace period is over: handlers abort their associations.
    pub abort: watch::Sender<bool>,
    /// Notified to stop accepting.
    pub stop: Arc<Notify>,
    /// Grace period for running associations, read when the stop comes.
    pub grace: Arc<std::sync::Mutex<Duration>>,
}

impl Listener {
    /// Accepts until told to stop, then closes the sockets and waits for the running
    /// associations.
    pub async fn run(self, sockets: Sockets) {
        let ids = AtomicU64::new(1);
        let rejections = Arc::new(Semaphore::new(MAX_PENDING_REJECTIONS));
        loop {
            // Biased: once a stop is asked for, no further connection is accepted.
            let accepted = tokio::select! {
                biased;
                _ = self.stop.notified() => break,
                accepted = sockets.accept() => accepted,
            };
            let Ok((stream, peer, tls)) = accepted else {
                // Accept errors are per connection (e.g. EMFILE, a reset before accept);
                // back off a moment rather than spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            // PS3.8 §9.1.x leaves this to the transport; delayed ACKs would add ~40 ms per
            // small response without it.
            let _ = stream.set_nodelay(true);
            match self.slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    let connection = handler::serve_connection(
                        stream,
                        tls,
                        self.shared.clone(),
                        id,
                        peer.to_string(),
                        self.abort.subscribe(),
                    );
                    tokio::spawn(async move {
                        connection.await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    self.shared.metrics.association_refused(Refusal::OverLimit);
                    if let Ok(permit) = rejections.clone().try_acquire_owned() {
                        let artim = self.shared.settings.artim_timeout;
                        tokio::spawn(async move {
                            handler::reject_over_limit(stream, tls, artim).await;
                            drop(permit);
                        });
                    }
                }
            }
        }
        self.shared.metrics.set_listening(false);
        drop(sockets);
        self.drain().await;
    }

    /// Waits for every association to end: first within the grace period, then after
    /// telling the rest to abort.
    async fn drain(&self) {
        let all = self.shared.settings.max_associations as u32;
        let grace = *self.grace.lock().unwrap_or_else(|e| e.into_inner());
        if tokio::time::timeout(grace, self.slots.acquire_many(all)).await.is_ok() {
            return;
        }
        let _ = self.abort.send(true);
        let _ = tokio::time::timeout(ABORT_GRACE, self.slots.acquire_many(all)).await;
    }
}
