//! One association, from the A-ASSOCIATE-RQ to its release or abort: the PS3.8 state machine
//! on the acceptor side. Messages come and go on the DIMSE channel (`dimse::channel`);
//! C-STOREs are the store service's (`service::store`), C-ECHOs are answered here, anything
//! else is refused (0211).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant as Deadline;
use tokio_rustls::TlsAcceptor;

use super::metrics::{Metrics, Refusal};
use super::{Phase, ServerContext};
use crate::clock::unix_time;
use crate::dicom::sop_class;
use crate::dimse::channel::{Channel, ChannelError, DataSink};
use crate::dimse::command::{self, field};
use crate::dimse::status::Status;
use crate::events::{AssociationClosed, ConnectionRefused, ContextsRefused, Event, RefusedContext};
use crate::service::store::{Origin, StoreCounts, StoreProvider};
use crate::transport::{tls, Transport};
use crate::ul::association::acceptor;
use crate::ul::connection::{Connection, ReadError};
use crate::ul::pdu::abort::{REASON_NOT_SPECIFIED, REASON_UNEXPECTED_PDU};
use crate::ul::pdu::{reject, Abort, AssociateAc, AssociateRj, AssociateRq, Pdu, PresentationContextResult};

/// Bytes an association's read buffer starts with: an A-ASSOCIATE-RQ or a small P-DATA-TF.
const INITIAL_READ_BUFFER: usize = 16 * 1024;

/// When the server aborts every association at the end of its shutdown, how long the A-ABORT
/// may take to leave: the listener gives aborted associations a few seconds in all.
const SHUTDOWN_ABORT_WRITE: Duration = Duration::from_secs(1);

/// How an association ended (`outcome` of the AssociationClosed event).
#[derive(Debug)]
enum AssociationEnd {
    Released,
    AbortedByPeer,
    /// We aborted on a protocol error.
    Aborted(String),
    Rejected(String),
    Timeout(String),
    ConnectionLost(String),
    Shutdown(&'static str),
}

impl AssociationEnd {
    fn outcome(&self) -> (&'static str, String) {
        match self {
            AssociationEnd::Released => ("released", String::new()),
            AssociationEnd::AbortedByPeer => ("aborted-by-peer", String::new()),
            AssociationEnd::Aborted(d) => ("aborted", d.clone()),
            AssociationEnd::Rejected(d) => ("rejected", d.clone()),
            AssociationEnd::Timeout(d) => ("timeout", d.clone()),
            AssociationEnd::ConnectionLost(d) => ("connection-lost", d.clone()),
            AssociationEnd::Shutdown(detail) => ("shutdown", detail.to_string()),
        }
    }

    /// A write that failed: the peer did not read in time, or is gone.
    fn write_failed(e: io::Error) -> AssociationEnd {
        match e.kind() {
            io::ErrorKind::TimedOut => AssociationEnd::Timeout(e.to_string()),
            _ => AssociationEnd::ConnectionLost(e.to_string()),
        }
    }
}

/// When a connection was accepted: the start of its report, and of its ARTIM timer.
struct Accepted {
    started: SystemTime,
    clock: Instant,
    /// PS3.8 §9.1.5: ARTIM runs from the transport connection (its TLS handshake included) to
    /// the A-ASSOCIATE-RQ.
    artim_deadline: Deadline,
}

impl Accepted {
    fn now(artim: Duration) -> Self {
        Accepted { started: SystemTime::now(), clock: Instant::now(), artim_deadline: Deadline::now() + artim }
    }
}

/// Who the AssociationClosed event is about.
struct PeerIdentity {
    id: u64,
    peer: String,
    tls: bool,
    certificate_subject: String,
    /// From the A-ASSOCIATE-RQ, when one came.
    calling_aet: String,
    called_aet: String,
}

/// Serves one accepted connection: on the TLS port first the handshake (PS3.15 annex B),
/// here in the association's task, never in the accept loop, and within the ARTIM timer;
/// then the association.
pub async fn serve_connection(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    server: Arc<ServerContext>,
    id: u64,
    peer: String,
    mut phase: watch::Receiver<Phase>,
) {
    let accepted = Accepted::now(server.settings.artim_timeout);
    let transport = match tls {
        None => Ok(Transport::Plain(tcp)),
        Some(acceptor) => handshake(&acceptor, tcp, accepted.artim_deadline, &mut phase).await,
    };
    match transport {
        Ok(transport) => Handler::new(transport, server, id, peer, phase, accepted).run().await,
        Err(end) => {
            let identity = PeerIdentity {
                id,
                peer,
                tls: true,
                certificate_subject: String::new(),
                calling_aet: String::new(),
                called_aet: String::new(),
            };
            let closed = association_closed(identity, &accepted, StoreCounts::default(), &end);
            server.events.send(Event::AssociationClosed(closed)).await;
        }
    }
}

/// The server's side of the TLS handshake, bounded by the ARTIM timer; a connection still in
/// its handshake when the server begins to stop is closed at once (not an association yet).
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    deadline: Deadline,
    phase: &mut watch::Receiver<Phase>,
) -> Result<Transport, AssociationEnd> {
    tokio::select! {
        result = tokio::time::timeout_at(deadline, tls::accept(acceptor, tcp)) => match result {
            Ok(Ok(transport)) => Ok(transport),
            Ok(Err(e)) => Err(AssociationEnd::Rejected(format!("TLS handshake failed: {e}"))),
            Err(_) => Err(AssociationEnd::Timeout("no TLS handshake before the ARTIM timer expired".into())),
        },
        () = phase_reached(phase, Phase::Draining) => {
            Err(AssociationEnd::Shutdown("receiver stopping: closed during the TLS handshake"))
        }
    }
}

/// `counts`: the instances of the association, and the data set bytes it received.
fn association_closed(
    identity: PeerIdentity,
    accepted: &Accepted,
    counts: StoreCounts,
    end: &AssociationEnd,
) -> AssociationClosed {
    let (outcome, detail) = end.outcome();
    AssociationClosed {
        association_id: identity.id,
        calling_aet: identity.calling_aet,
        called_aet: identity.called_aet,
        peer: identity.peer,
        started_at: unix_time(accepted.started),
        duration: accepted.clock.elapsed().as_secs_f64(),
        instances_stored: counts.stored,
        instances_failed: counts.failed,
        bytes_received: counts.bytes,
        outcome,
        detail,
        tls: identity.tls,
        peer_certificate_subject: identity.certificate_subject,
    }
}

pub struct Handler {
    /// The connection, and once the association is established its messages.
    channel: Channel<Transport>,
    server: Arc<ServerContext>,
    id: u64,
    peer: String,
    /// The server's phase: draining closes a connection still waiting for its
    /// A-ASSOCIATE-RQ, aborting ends every association wherever it waits.
    phase: watch::Receiver<Phase>,
    accepted: Accepted,
    /// The peer certificate's subject, read once after the handshake ("" without one).
    certificate_subject: String,
    /// From the A-ASSOCIATE-RQ, kept for the report even when the association is rejected.
    calling_aet: String,
    called_aet: String,
    /// The C-STORE SCP, once the association is established.
    store: Option<StoreProvider>,
    /// Data set bytes of requests refused unread (0211).
    discarded_bytes: u64,
}

impl Handler {
    fn new(
        transport: Transport,
        server: Arc<ServerContext>,
        id: u64,
        peer: String,
        phase: watch::Receiver<Phase>,
        accepted: Accepted,
    ) -> Self {
        Handler {
            certificate_subject: transport.peer_certificate_subject(),
            // The read buffer grows to the largest PDU the peer sends (the codec bounds it):
            // an association that stays idle, or sends only small PDUs, keeps it small.
            channel: Channel::new(Connection::new(transport, INITIAL_READ_BUFFER, server.settings.write_timeout)),
            server,
            id,
            peer,
            phase,
            accepted,
            calling_aet: String::new(),
            called_aet: String::new(),
            store: None,
            discarded_bytes: 0,
        }
    }

    /// Serves the association to its end and reports it. When the server aborts everything,
    /// serving stops wherever it waits (a read, a write, the event queue, a registration).
    async fn run(mut self) {
        self.server.metrics.association_opened();
        let mut phase = self.phase.clone();
        let served = tokio::select! {
            end = self.serve() => Some(end),
            () = phase_reached(&mut phase, Phase::Aborting) => None,
        };
        let end = match served {
            Some(end) => end,
            None => self.abort_for_shutdown().await,
        };
        // Aborts, lost connections: gone before the association is reported closed.
        self.discard_temp_files();
        // Over TLS, closing writes a close_notify alert, which a peer that stopped reading
        // could hold up: bounded by the write timeout (`Connection::close`).
        self.channel.close().await;
        self.server.metrics.association_closed(end.outcome().0);
        let mut counts = self.store.as_ref().map(StoreProvider::counts).unwrap_or_default();
        counts.bytes += self.discarded_bytes;
        let identity = PeerIdentity {
            id: self.id,
            peer: std::mem::take(&mut self.peer),
            tls: self.channel.connection().get_ref().is_tls(),
            certificate_subject: std::mem::take(&mut self.certificate_subject),
            calling_aet: std::mem::take(&mut self.calling_aet),
            called_aet: std::mem::take(&mut self.called_aet),
        };
        let closed = association_closed(identity, &self.accepted, counts, &end);
        self.server.events.send(Event::AssociationClosed(closed)).await;
    }

    async fn serve(&mut self) -> AssociationEnd {
        if let Err(end) = self.establish().await {
            return end;
        }
        loop {
            if let Err(e) = self.serve_message().await {
                return self.ended(e).await;
            }
        }
    }

    /// Receives one request and answers it (PS3.7 §9.1).
    async fn serve_message(&mut self) -> Result<(), ChannelError> {
        let (context_id, command) = self.channel.receive_command().await?;
        match command.command_field() {
            Some(field::C_ECHO_RQ) => {
                let message_id = command.message_id().unwrap_or(0);
                let rsp =
                    command::response(field::C_ECHO_RSP, message_id, sop_class::VERIFICATION, None, &Status::success());
                self.channel.send(context_id, &rsp, None).await
            }
            Some(field::C_STORE_RQ) if command.has_data_set() => {
                let store = self.store.as_mut().expect("established before any message");
                store.serve(&mut self.channel, context_id, &command).await
            }
            // C-CANCEL has no response (PS3.7 §9.3.2.3).
            Some(field::C_CANCEL_RQ) => Ok(()),
            _ => {
                let mut discarded = Discarded { bytes: &mut self.discarded_bytes, metrics: &self.server.metrics };
                self.channel.refuse_unsupported(context_id, &command, &mut discarded).await
            }
        }
    }

    /// How the association ends when its channel cannot go on, with what is owed the peer:
    /// the A-RELEASE-RP of its release, an A-ABORT for its protocol error or silence.
    async fn ended(&mut self, e: ChannelError) -> AssociationEnd {
        match e {
            ChannelError::ReleaseRequested => {
                // A release while a message is half received drops that message: the peer
                // gave up on it (PS3.8 §7.2). A peer that has the A-RELEASE-RP finds no temp
                // file of this association left.
                self.discard_temp_files();
                match self.channel.answer_release().await {
                    Ok(()) => AssociationEnd::Released,
                    Err(e) => AssociationEnd::write_failed(e),
                }
            }
            ChannelError::Aborted(_) => AssociationEnd::AbortedByPeer,
            ChannelError::Closed => AssociationEnd::ConnectionLost("peer closed the connection without release".into()),
            ChannelError::Timeout => {
                self.abort(REASON_NOT_SPECIFIED, "idle timeout".into()).await;
                AssociationEnd::Timeout("idle timeout".into())
            }
            ChannelError::Violation { reason, detail } => self.abort(reason, detail).await,
            ChannelError::Read(e) => AssociationEnd::ConnectionLost(e.to_string()),
            ChannelError::Write(e) => AssociationEnd::write_failed(e),
        }
    }

    /// The end of the server's shutdown grace period: an A-ABORT (from us as service user,
    /// PS3.8 §7.3.1), unless a write to this peer is stuck half done.
    async fn abort_for_shutdown(&mut self) -> AssociationEnd {
        let _ = tokio::time::timeout(SHUTDOWN_ABORT_WRITE, self.channel.abort(Abort::BY_USER)).await;
        AssociationEnd::Shutdown("receiver stopping: association aborted")
    }

    /// Reads the A-ASSOCIATE-RQ under the ARTIM timer (PS3.8 §9.1.5) and answers it. A
    /// connection that has sent none when the server begins to stop is closed at once: it is
    /// not an association yet, and nothing of it is lost.
    async fn establish(&mut self) -> Result<(), AssociationEnd> {
        let conn = self.channel.connection();
        let read = tokio::select! {
            read = tokio::time::timeout_at(self.accepted.artim_deadline, conn.read_pdu()) => read,
            () = phase_reached(&mut self.phase, Phase::Draining) => {
                return Err(AssociationEnd::Shutdown("receiver stopping: closed before A-ASSOCIATE-RQ"));
            }
        };
        let rq = match read {
            Err(_) => return Err(AssociationEnd::Timeout("no A-ASSOCIATE-RQ before the ARTIM timer expired".into())),
            Ok(Ok(None)) => return Err(AssociationEnd::ConnectionLost("closed before A-ASSOCIATE-RQ".into())),
            Ok(Err(ReadError::Protocol(e))) => return Err(self.abort(e.abort_reason(), e.to_string()).await),
            Ok(Err(ReadError::Io(e))) => return Err(AssociationEnd::ConnectionLost(e.to_string())),
            Ok(Ok(Some(Pdu::AssociateRq(rq)))) => rq,
            Ok(Ok(Some(other))) => {
                let detail = format!("{} before A-ASSOCIATE-RQ", other.name());
                return Err(self.abort(REASON_UNEXPECTED_PDU, detail).await);
            }
        };
        self.calling_aet = rq.calling_ae_title.clone();
        self.called_aet = rq.called_ae_title.clone();
        let server = self.server.clone();
        let settings = &server.settings;
        match acceptor::negotiate(&rq, &settings.acceptor, &settings.served) {
            Ok((association, accept)) => {
                let refused = self.refused_contexts(&rq, &accept);
                let origin = Origin {
                    association_id: self.id,
                    peer: self.peer.clone(),
                    sender_aet: rq.calling_ae_title,
                    receiver_aet: rq.called_ae_title,
                };
                self.store = Some(StoreProvider::new(server.store.clone(), origin));
                let conn = self.channel.connection();
                let sent = conn.write_pdu(&Pdu::AssociateAc(accept)).await;
                conn.set_max_pdata_len(settings.receive_limit);
                self.channel.established(association, settings.idle_timeout);
                sent.map_err(AssociationEnd::write_failed)?;
                if let Some(event) = refused {
                    server.events.send(event).await;
                }
                Ok(())
            }
            Err(rj) => {
                server.metrics.association_refused(Refusal::of(&rj));
                let _ = self.channel.connection().write_pdu(&Pdu::AssociateRj(rj)).await;
                Err(AssociationEnd::Rejected(acceptor::rejection_reason(&rj, &rq, &settings.acceptor)))
            }
        }
    }

    /// The report of the presentation contexts refused in an accepted association, if any:
    /// one event per association, so that a sender that cannot store some SOP class is seen
    /// in the log with why, without a line per context.
    fn refused_contexts(&self, rq: &AssociateRq, accept: &AssociateAc) -> Option<Event> {
        let results = &accept.presentation_contexts;
        let refused: Vec<RefusedContext> = rq
            .presentation_contexts
            .iter()
            .zip(results)
            .filter(|(_, ac)| ac.result != PresentationContextResult::Acceptance)
            .map(|(proposed, ac)| RefusedContext {
                id: proposed.id,
                abstract_syntax: proposed.abstract_syntax.clone(),
                transfer_syntaxes: proposed.transfer_syntaxes.clone(),
                reason: ac.result.description(),
            })
            .collect();
        (!refused.is_empty()).then(|| {
            Event::ContextsRefused(ContextsRefused {
                association_id: self.id,
                calling_aet: rq.calling_ae_title.clone(),
                called_aet: rq.called_ae_title.clone(),
                peer: self.peer.clone(),
                accepted: results.len() - refused.len(),
                refused,
            })
        })
    }

    /// Sends an A-ABORT from the service provider (PS3.8 §7.3.1) for a protocol violation.
    async fn abort(&mut self, reason: u8, detail: String) -> AssociationEnd {
        self.channel.abort(Abort::by_provider(reason)).await;
        AssociationEnd::Aborted(detail)
    }

    /// Removes the temp files of this association: the one reserved for the next instance
    /// (an unfinished reception's went with the message it belonged to).
    fn discard_temp_files(&mut self) {
        if let Some(store) = self.store.as_mut() {
            store.discard_temp_files();
        }
    }
}

/// The data set of a request refused unread: counted, then dropped.
struct Discarded<'a> {
    bytes: &'a mut u64,
    metrics: &'a Metrics,
}

impl DataSink for Discarded<'_> {
    async fn fragment(&mut self, data: Bytes) {
        *self.bytes += data.len() as u64;
        self.metrics.bytes_received(data.len());
    }
}

/// Resolves once the server's phase is `target` or later, or once the server is gone.
pub(super) async fn phase_reached(phase: &mut watch::Receiver<Phase>, target: Phase) {
    let _ = phase.wait_for(|now| *now >= target).await;
}

/// Why a connection refused for a limit of this server was refused, in words.
fn refusal_detail(refusal: Refusal, settings: &super::config::Settings) -> String {
    match refusal {
        Refusal::OpenFiles => "no file descriptor left for another association (RLIMIT_NOFILE)".into(),
        _ => format!("all {} association slots are taken (OXIDIP_MAX_ASSOCIATIONS)", settings.max_associations),
    }
}

/// Answers a connection the server cannot serve (every slot taken, `Refusal::OverLimit`, or
/// no file descriptor left, `Refusal::OpenFiles`) with an A-ASSOCIATE-RJ (transient,
/// presentation-related, local limit exceeded: PS3.8 table 9-21), closes it and returns the
/// report. The RQ is read first (under ARTIM, after the TLS handshake on the TLS port): a
/// rejection answers a request. A server that begins to stop closes the connection at once
/// instead, and reports nothing.
pub async fn refuse(
    tcp: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: String,
    refusal: Refusal,
    server: Arc<ServerContext>,
    mut phase: watch::Receiver<Phase>,
) -> Option<ConnectionRefused> {
    let settings = &server.settings;
    let deadline = Deadline::now() + settings.artim_timeout;
    let mut refused = ConnectionRefused {
        peer,
        calling_aet: String::new(),
        called_aet: String::new(),
        reason: refusal.label(),
        detail: refusal_detail(refusal, settings),
    };
    let transport = match tls {
        None => Transport::Plain(tcp),
        Some(acceptor) => match handshake(&acceptor, tcp, deadline, &mut phase).await {
            Ok(transport) => transport,
            Err(AssociationEnd::Shutdown(_)) => return None,
            Err(_) => {
                refused.detail += "; closed without an answer: no TLS handshake";
                return Some(refused);
            }
        },
    };
    let mut conn = Connection::new(transport, INITIAL_READ_BUFFER, settings.write_timeout);
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, conn.read_pdu()) => read,
        () = phase_reached(&mut phase, Phase::Draining) => {
            conn.close().await;
            return None;
        }
    };
    if let Ok(Ok(Some(Pdu::AssociateRq(rq)))) = read {
        refused.calling_aet = rq.calling_ae_title;
        refused.called_aet = rq.called_ae_title;
        let rj = AssociateRj {
            result: reject::REJECTED_TRANSIENT,
            source: reject::SOURCE_SERVICE_PROVIDER_PRESENTATION,
            reason: reject::REASON_LOCAL_LIMIT_EXCEEDED,
        };
        if let Err(e) = conn.write_pdu(&Pdu::AssociateRj(rj)).await {
            refused.detail += &format!("; the A-ASSOCIATE-RJ could not be sent: {e}");
        }
    } else {
        refused.detail += "; closed without an answer: no A-ASSOCIATE-RQ came";
    }
    conn.close().await;
    Some(refused)
}
