//! One association, from the A-ASSOCIATE-RQ to its release or abort: the PS3.8 state machine
//! on the acceptor side, with the DIMSE messages (PS3.7) reassembled from PDV fragments.
//!
//! File writes happen inline with blocking std I/O: a write to the page cache takes
//! microseconds, far less than handing each fragment to a blocking thread pool would cost
//! (past its first MiB, a large data set goes to a background writer: see
//! `storage::background`). With an fsync policy, placing the file runs under
//! `block_in_place`, so other associations keep their worker thread. What need not delay an
//! answer waits until it is sent: closing the stored file, creating the next instance's temp
//! file, handing the event to Python.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant as Deadline;
use tokio_rustls::TlsAcceptor;

use super::metrics::Refusal;
use super::store::{InstanceReception, Outcome, Request, Sender};
use super::{Phase, Shared};
use crate::clock::unix_time;
use crate::dicom::sop_class;
use crate::dimse::command::{self, field, CommandSet, MAX_COMMAND_LEN};
use crate::dimse::status::{self, Status};
use crate::events::{
    AssociationClosed, ConnectionRefused, ContextsRefused, Event, InstanceFailed, InstanceStored, RefusedContext,
};
use crate::storage::writer::TempFile;
use crate::transport::{tls, Transport};
use crate::ul::association::{acceptor, Association};
use crate::ul::connection::{Connection, ReadError};
use crate::ul::pdu::abort::{
    REASON_INVALID_PDU_PARAMETER_VALUE as REASON_INVALID_PARAMETER, REASON_NOT_SPECIFIED, REASON_UNEXPECTED_PDU,
};
use crate::ul::pdu::{reject, Abort, AssociateAc, AssociateRq, PData, Pdu, Pdv, PresentationContextResult};

/// Bytes an association's read buffer starts with: an A-ASSOCIATE-RQ or a small P-DATA-TF.
const INITIAL_READ_BUFFER: usize = 16 * 1024;

/// When the server aborts every association at the end of its shutdown, how long the A-ABORT
/// may take to leave: the listener gives aborted associations a few seconds in all.
const SHUTDOWN_ABORT_WRITE: Duration = Duration::from_secs(1);

/// How an association ended (`outcome` of the AssociationClosed event).
#[derive(Debug)]
enum End {
    Released,
    AbortedByPeer,
    /// We aborted on a protocol error.
    Aborted(String),
    Rejected(String),
    Timeout(String),
    ConnectionLost(String),
    Shutdown(&'static str),
}

impl End {
    fn outcome(&self) -> (&'static str, String) {
        match self {
            End::Released => ("released", String::new()),
            End::AbortedByPeer => ("aborted-by-peer", String::new()),
            End::Aborted(d) => ("aborted", d.clone()),
            End::Rejected(d) => ("rejected", d.clone()),
            End::Timeout(d) => ("timeout", d.clone()),
            End::ConnectionLost(d) => ("connection-lost", d.clone()),
            End::Shutdown(detail) => ("shutdown", detail.to_string()),
        }
    }

    /// A write that failed: the peer did not read in time, or is gone.
    fn write_failed(e: io::Error) -> End {
        match e.kind() {
            io::ErrorKind::TimedOut => End::Timeout(e.to_string()),
            _ => End::ConnectionLost(e.to_string()),
        }
    }
}

/// Why serving an established association stops before its release.
enum Stop {
    /// A protocol violation: answered with an A-ABORT from the service provider.
    Violation { reason: u8, detail: String },
    /// Writing to the peer failed or timed out: nothing more can be sent.
    WriteFailed(io::Error),
}

fn violation(reason: u8, detail: impl Into<String>) -> Stop {
    Stop::Violation { reason, detail: detail.into() }
}

/// The DIMSE message being reassembled (PS3.7 §8.1, PS3.8 annex E).
enum Incoming {
    Idle,
    Command {
        context_id: u8,
        bytes: Vec<u8>,
    },
    Store(Box<InstanceReception>),
    /// The data set of a request we do not perform; answered with `status` once it is in.
    Discard {
        context_id: u8,
        response: CommandSet,
    },
}

#[derive(Default)]
struct Counters {
    stored: u64,
    failed: u64,
    bytes: u64,
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
    shared: Arc<Shared>,
    id: u64,
    peer: String,
    mut phase: watch::Receiver<Phase>,
) {
    let accepted = Accepted::now(shared.settings.artim_timeout);
    let transport = match tls {
        None => Ok(Transport::Plain(tcp)),
        Some(acceptor) => handshake(&acceptor, tcp, accepted.artim_deadline, &mut phase).await,
    };
    match transport {
        Ok(transport) => Handler::new(transport, shared, id, peer, phase, accepted).run().await,
        Err(end) => {
            let identity = PeerIdentity {
                id,
                peer,
                tls: true,
                certificate_subject: String::new(),
                calling_aet: String::new(),
                called_aet: String::new(),
            };
            let closed = association_closed(identity, &accepted, &Counters::default(), &end);
            shared.events.send(Event::AssociationClosed(closed)).await;
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
) -> Result<Transport, End> {
    tokio::select! {
        result = tokio::time::timeout_at(deadline, tls::accept(acceptor, tcp)) => match result {
            Ok(Ok(transport)) => Ok(transport),
            Ok(Err(e)) => Err(End::Rejected(format!("TLS handshake failed: {e}"))),
            Err(_) => Err(End::Timeout("no TLS handshake before the ARTIM timer expired".into())),
        },
        () = phase_reached(phase, Phase::Draining) => {
            Err(End::Shutdown("receiver stopping: closed during the TLS handshake"))
        }
    }
}

fn association_closed(
    identity: PeerIdentity,
    accepted: &Accepted,
    counters: &Counters,
    end: &End,
) -> AssociationClosed {
    let (outcome, detail) = end.outcome();
    AssociationClosed {
        association_id: identity.id,
        calling_aet: identity.calling_aet,
        called_aet: identity.called_aet,
        peer: identity.peer,
        started_at: unix_time(accepted.started),
        duration: accepted.clock.elapsed().as_secs_f64(),
        instances_stored: counters.stored,
        instances_failed: counters.failed,
        bytes_received: counters.bytes,
        outcome,
        detail,
        tls: identity.tls,
        peer_certificate_subject: identity.certificate_subject,
    }
}

pub struct Handler {
    conn: Connection<Transport>,
    shared: Arc<Shared>,
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
    association: Option<Association>,
    incoming: Incoming,
    /// The temp file of the next instance, made ahead (`prepare_next`).
    reserved: Option<TempFile>,
    counters: Counters,
}

impl Handler {
    fn new(
        transport: Transport,
        shared: Arc<Shared>,
        id: u64,
        peer: String,
        phase: watch::Receiver<Phase>,
        accepted: Accepted,
    ) -> Self {
        Handler {
            certificate_subject: transport.peer_certificate_subject(),
            // The read buffer grows to the largest PDU the peer sends (the codec bounds it):
            // an association that stays idle, or sends only small PDUs, keeps it small.
            conn: Connection::new(transport, INITIAL_READ_BUFFER, shared.settings.write_timeout),
            shared,
            id,
            peer,
            phase,
            accepted,
            calling_aet: String::new(),
            called_aet: String::new(),
            association: None,
            incoming: Incoming::Idle,
            reserved: None,
            counters: Counters::default(),
        }
    }

    /// Serves the association to its end and reports it. When the server aborts everything,
    /// serving stops wherever it waits (a read, a write, the event queue, a registration).
    async fn run(mut self) {
        self.shared.metrics.association_opened();
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
        self.conn.close().await;
        self.shared.metrics.association_closed(end.outcome().0);
        let identity = PeerIdentity {
            id: self.id,
            peer: std::mem::take(&mut self.peer),
            tls: self.conn.get_ref().is_tls(),
            certificate_subject: std::mem::take(&mut self.certificate_subject),
            calling_aet: std::mem::take(&mut self.calling_aet),
            called_aet: std::mem::take(&mut self.called_aet),
        };
        let closed = association_closed(identity, &self.accepted, &self.counters, &end);
        self.shared.events.send(Event::AssociationClosed(closed)).await;
    }

    async fn serve(&mut self) -> End {
        if let Err(end) = self.establish().await {
            return end;
        }
        loop {
            let pdu = match self.next_pdu().await {
                Ok(pdu) => pdu,
                Err(end) => return end,
            };
            let result = match pdu {
                Pdu::PData(p_data) => self.on_pdata(p_data).await,
                Pdu::ReleaseRq => {
                    // A release while a message is half received drops that message: the
                    // peer gave up on it (PS3.8 §7.2). A peer that has the A-RELEASE-RP
                    // finds no temp file of this association left.
                    self.discard_temp_files();
                    return match self.conn.write_pdu(&Pdu::ReleaseRp).await {
                        Ok(()) => End::Released,
                        Err(e) => End::write_failed(e),
                    };
                }
                Pdu::Abort(_) => return End::AbortedByPeer,
                other => {
                    Err(violation(REASON_UNEXPECTED_PDU, format!("unexpected {} after association", other.name())))
                }
            };
            if let Err(stop) = result {
                return match stop {
                    Stop::Violation { reason, detail } => self.abort(reason, detail).await,
                    Stop::WriteFailed(e) => End::write_failed(e),
                };
            }
        }
    }

    /// The end of the server's shutdown grace period: an A-ABORT (from us as service user,
    /// PS3.8 §7.3.1), unless a write to this peer is stuck half done.
    async fn abort_for_shutdown(&mut self) -> End {
        let abort = Pdu::Abort(Abort::BY_USER);
        let _ = tokio::time::timeout(SHUTDOWN_ABORT_WRITE, self.conn.write_pdu(&abort)).await;
        End::Shutdown("receiver stopping: association aborted")
    }

    /// Reads the A-ASSOCIATE-RQ under the ARTIM timer (PS3.8 §9.1.5) and answers it. A
    /// connection that has sent none when the server begins to stop is closed at once: it is
    /// not an association yet, and nothing of it is lost.
    async fn establish(&mut self) -> Result<(), End> {
        let read = tokio::select! {
            read = tokio::time::timeout_at(self.accepted.artim_deadline, self.conn.read_pdu()) => read,
            () = phase_reached(&mut self.phase, Phase::Draining) => {
                return Err(End::Shutdown("receiver stopping: closed before A-ASSOCIATE-RQ"));
            }
        };
        let rq = match read {
            Err(_) => return Err(End::Timeout("no A-ASSOCIATE-RQ before the ARTIM timer expired".into())),
            Ok(Ok(None)) => return Err(End::ConnectionLost("closed before A-ASSOCIATE-RQ".into())),
            Ok(Err(e)) => return Err(self.read_failed(e).await),
            Ok(Ok(Some(Pdu::AssociateRq(rq)))) => rq,
            Ok(Ok(Some(other))) => {
                let detail = format!("{} before A-ASSOCIATE-RQ", other.name());
                return Err(self.abort(REASON_UNEXPECTED_PDU, detail).await);
            }
        };
        self.calling_aet = rq.calling_ae_title.clone();
        self.called_aet = rq.called_ae_title.clone();
        let settings = &self.shared.settings;
        match acceptor::negotiate(&rq, &settings.acceptor, &settings.served) {
            Ok((assoc, accept)) => {
                let refused = self.refused_contexts(&rq, &accept);
                let sent = self.conn.write_pdu(&Pdu::AssociateAc(accept)).await;
                self.association = Some(assoc);
                sent.map_err(End::write_failed)?;
                self.conn.set_max_pdata_len(self.shared.settings.receive_limit);
                if let Some(event) = refused {
                    self.shared.events.send(event).await;
                }
                Ok(())
            }
            Err(rj) => {
                self.shared.metrics.association_refused(Refusal::of(&rj));
                let _ = self.conn.write_pdu(&Pdu::AssociateRj(rj)).await;
                Err(End::Rejected(acceptor::rejection_reason(&rj, &rq, &self.shared.settings.acceptor)))
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

    /// The next PDU, under the idle timeout.
    async fn next_pdu(&mut self) -> Result<Pdu, End> {
        let idle = self.shared.settings.idle_timeout;
        let result = match idle {
            Some(limit) => tokio::time::timeout(limit, self.conn.read_pdu()).await.ok(),
            None => Some(self.conn.read_pdu().await),
        };
        match result {
            None => {
                self.abort(REASON_NOT_SPECIFIED, "idle timeout".into()).await;
                Err(End::Timeout("idle timeout".into()))
            }
            Some(Ok(Some(pdu))) => Ok(pdu),
            Some(Ok(None)) => Err(End::ConnectionLost("peer closed the connection without release".into())),
            Some(Err(e)) => Err(self.read_failed(e).await),
        }
    }

    async fn read_failed(&mut self, e: ReadError) -> End {
        match e {
            ReadError::Protocol(codec_error) => self.abort(codec_error.abort_reason(), codec_error.to_string()).await,
            ReadError::Io(io) => End::ConnectionLost(io.to_string()),
        }
    }

    /// Sends an A-ABORT from the service provider (PS3.8 §7.3.1) for a protocol violation.
    async fn abort(&mut self, reason: u8, detail: String) -> End {
        let _ = self.conn.write_pdu(&Pdu::Abort(Abort::by_provider(reason))).await;
        End::Aborted(detail)
    }

    /// The PDVs of one P-DATA-TF, in order, taken from the PDU one at a time (never
    /// collected: see `PData`).
    async fn on_pdata(&mut self, p_data: PData) -> Result<(), Stop> {
        for pdv in p_data.iter() {
            self.on_pdv(pdv).await?;
        }
        Ok(())
    }

    /// One PDV: command fragments are collected, data fragments streamed (PS3.8 annex E).
    async fn on_pdv(&mut self, pdv: Pdv) -> Result<(), Stop> {
        let association = self.association.as_ref().expect("established before P-DATA");
        if association.context(pdv.context_id).is_none() {
            return Err(violation(
                REASON_INVALID_PARAMETER,
                format!("PDV on presentation context {} which was not accepted", pdv.context_id),
            ));
        }
        let incoming = std::mem::replace(&mut self.incoming, Incoming::Idle);
        self.incoming = match (incoming, pdv.is_command) {
            (Incoming::Idle, true) => self.on_command_fragment(pdv.context_id, Vec::new(), pdv).await?,
            (Incoming::Command { context_id, bytes }, true) if context_id == pdv.context_id => {
                self.on_command_fragment(context_id, bytes, pdv).await?
            }
            (Incoming::Store(mut reception), false) if reception.request.context_id == pdv.context_id => {
                self.counters.bytes += pdv.data.len() as u64;
                self.shared.metrics.bytes_received(pdv.data.len());
                reception.on_fragment(pdv.data).await;
                if pdv.is_last {
                    reception.finish_writes().await;
                    self.finish_store(*reception).await?;
                    Incoming::Idle
                } else {
                    Incoming::Store(reception)
                }
            }
            (Incoming::Discard { context_id, response }, false) if context_id == pdv.context_id => {
                self.counters.bytes += pdv.data.len() as u64;
                self.shared.metrics.bytes_received(pdv.data.len());
                if pdv.is_last {
                    self.send_command(context_id, &response).await?;
                    Incoming::Idle
                } else {
                    Incoming::Discard { context_id, response }
                }
            }
            (_, true) => return Err(violation(REASON_INVALID_PARAMETER, "command fragment where data was expected")),
            (_, false) => return Err(violation(REASON_INVALID_PARAMETER, "data fragment without a command")),
        };
        Ok(())
    }

    async fn on_command_fragment(&mut self, context_id: u8, mut bytes: Vec<u8>, pdv: Pdv) -> Result<Incoming, Stop> {
        if bytes.len() + pdv.data.len() > MAX_COMMAND_LEN {
            return Err(violation(REASON_INVALID_PARAMETER, "command set larger than 64 KiB"));
        }
        bytes.extend_from_slice(&pdv.data);
        if !pdv.is_last {
            return Ok(Incoming::Command { context_id, bytes });
        }
        let command =
            CommandSet::decode(&bytes).map_err(|e| violation(REASON_INVALID_PARAMETER, format!("command set: {e}")))?;
        self.dispatch(context_id, command).await
    }

    /// Starts serving a complete request (PS3.7 §9.1).
    async fn dispatch(&mut self, context_id: u8, command: CommandSet) -> Result<Incoming, Stop> {
        let message_id = command.message_id().unwrap_or(0);
        let sop_class_uid = command.affected_sop_class_uid().unwrap_or_default();
        match command.command_field() {
            Some(field::C_ECHO_RQ) => {
                let rsp =
                    command::response(field::C_ECHO_RSP, message_id, sop_class::VERIFICATION, None, &Status::success());
                self.send_command(context_id, &rsp).await?;
                Ok(Incoming::Idle)
            }
            Some(field::C_STORE_RQ) if command.has_data_set() => {
                Ok(self.begin_store(context_id, &command, message_id, sop_class_uid))
            }
            // C-CANCEL has no response (PS3.7 §9.3.2.3).
            Some(0x0FFF) => Ok(Incoming::Idle),
            other => {
                // Unrecognized operation (PS3.7 C.4.2), answered once any data set is in.
                let response_field = other.unwrap_or(0) | 0x8000;
                let st = Status::failure(0x0211, "operation not supported");
                let rsp = command::response(response_field, message_id, &sop_class_uid, None, &st);
                if command.has_data_set() {
                    Ok(Incoming::Discard { context_id, response: rsp })
                } else {
                    self.send_command(context_id, &rsp).await?;
                    Ok(Incoming::Idle)
                }
            }
        }
    }

    fn begin_store(
        &mut self,
        context_id: u8,
        command: &CommandSet,
        message_id: u16,
        sop_class_uid: String,
    ) -> Incoming {
        let association = self.association.as_ref().expect("established");
        let context = association.context(context_id).expect("checked in on_pdv");
        let sender = Sender { calling_aet: &association.calling_ae_title, called_aet: &association.called_ae_title };
        let request = Request {
            message_id,
            context_id,
            sop_class_uid,
            sop_instance_uid: command.affected_sop_instance_uid().unwrap_or_default(),
            transfer_syntax: context.transfer_syntax,
        };
        let inflate = self.shared.settings.inflate;
        let mut reception =
            InstanceReception::begin(&self.shared.storage, self.reserved.take(), &sender, request, inflate);
        let request = &reception.request;
        if request.sop_instance_uid.is_empty() || request.sop_class_uid.is_empty() {
            reception
                .reject(Status::failure(status::INVALID_COMMAND, "C-STORE-RQ lacks Affected SOP Class/Instance UID"));
        } else if request.sop_class_uid != context.abstract_syntax {
            reception.reject(Status::failure(
                status::SOP_CLASS_NOT_SUPPORTED,
                "SOP Class differs from the presentation context",
            ));
        }
        Incoming::Store(Box::new(reception))
    }

    /// The data set is complete: store it, journal it, answer, and report it. With
    /// `ack=registered` the answer also waits for Python to register the instance.
    async fn finish_store(&mut self, reception: InstanceReception) -> Result<(), Stop> {
        let (message_id, context_id) = (reception.request.message_id, reception.request.context_id);
        let sop_class_uid = reception.request.sop_class_uid.clone();
        let sop_instance_uid = reception.request.sop_instance_uid.clone();
        let transfer_syntax = reception.request.transfer_syntax.uid;
        let received_at = reception.received_at;
        let shared = self.shared.clone();
        let association = self.association.as_ref().expect("established");
        let sender = Sender { calling_aet: &association.calling_ae_title, called_aet: &association.called_ae_title };
        let complete = || reception.complete(&shared.storage, &sender, &shared.settings.required);
        // An fsync waits on the device for milliseconds: hand this worker's other tasks to
        // another thread meanwhile. Without one, placing the file takes microseconds, less
        // than that hand-off (a thread wake-up per instance) would cost.
        let outcome = if shared.storage.syncs() { tokio::task::block_in_place(complete) } else { complete() };
        let (st, event, registration, stored_file) = match outcome {
            Outcome::Stored { committed, attributes, file } => {
                let seq = committed.journal_seq;
                let event = Event::InstanceStored(Box::new(InstanceStored {
                    association_id: self.id,
                    path: committed.path.to_string_lossy().into_owned(),
                    size: committed.size,
                    attributes: *attributes,
                    calling_aet: association.calling_ae_title.clone(),
                    called_aet: association.called_ae_title.clone(),
                    peer: self.peer.clone(),
                    transfer_syntax: transfer_syntax.to_string(),
                    received_at: unix_time(received_at),
                    stored_at: unix_time(SystemTime::now()),
                    duplicate: committed.duplicate,
                    journal_seq: seq,
                }));
                let registration =
                    shared.settings.ack_registered.then(|| shared.storage.journal().registration_of(seq));
                (Status::success(), event, registration, Some(file))
            }
            Outcome::Failed(st) => {
                let event = Event::InstanceFailed(InstanceFailed {
                    association_id: self.id,
                    calling_aet: association.calling_ae_title.clone(),
                    peer: self.peer.clone(),
                    sop_class_uid: sop_class_uid.clone(),
                    sop_instance_uid: sop_instance_uid.clone(),
                    status: st.code,
                    comment: st.comment.clone().unwrap_or_default(),
                });
                (st, event, None, None)
            }
        };
        let reply = Reply {
            context_id,
            message_id,
            sop_class_uid: &sop_class_uid,
            sop_instance_uid: &sop_instance_uid,
            received_at,
        };
        let Some(registered) = registration else {
            self.answer(&reply, &st).await?;
            self.prepare_next(stored_file);
            // After the response: a slow event consumer delays the next request, not this one.
            shared.events.send(event).await;
            return Ok(());
        };
        // The event must reach Python before the answer can: registration comes first.
        shared.events.send(event).await;
        let st = match registered.await {
            Ok(true) => st,
            _ => Status::failure(status::OUT_OF_RESOURCES, "stored, but registration failed"),
        };
        self.answer(&reply, &st).await?;
        self.prepare_next(stored_file);
        Ok(())
    }

    /// Removes the temp files of this association: the unfinished reception's and the one
    /// reserved for the next instance (dropping them unlinks them).
    fn discard_temp_files(&mut self) {
        self.incoming = Incoming::Idle;
        self.reserved = None;
    }

    /// While the sender reads its answer: closes the stored file (already in place) and
    /// creates the temp file of the next instance, so that neither is on an instance's way
    /// to its answer.
    fn prepare_next(&mut self, stored_file: Option<File>) {
        drop(stored_file);
        if self.reserved.is_none() {
            // Failing here, the next instance tries again, and answers A700 if it fails too.
            self.reserved = self.shared.storage.reserve().ok();
        }
    }

    /// Sends the C-STORE-RSP and counts the outcome.
    async fn answer(&mut self, reply: &Reply<'_>, st: &Status) -> Result<(), Stop> {
        let rsp = command::response(
            field::C_STORE_RSP,
            reply.message_id,
            reply.sop_class_uid,
            Some(reply.sop_instance_uid),
            st,
        );
        self.send_command(reply.context_id, &rsp).await?;
        self.shared.metrics.instance_answered(st.code, reply.received_at);
        if st.is_success() {
            self.counters.stored += 1;
        } else {
            self.counters.failed += 1;
        }
        Ok(())
    }

    async fn send_command(&mut self, context_id: u8, command: &CommandSet) -> Result<(), Stop> {
        let peer_max = self.association.as_ref().map_or(0, |a| a.peer_max_pdu_length);
        self.conn.write_message(context_id, &command.encode(), None, peer_max).await.map_err(Stop::WriteFailed)
    }
}

/// What a C-STORE-RSP answers.
struct Reply<'a> {
    context_id: u8,
    message_id: u16,
    sop_class_uid: &'a str,
    sop_instance_uid: &'a str,
    /// When its command arrived (the store latency of `/metrics`).
    received_at: SystemTime,
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
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) -> Option<ConnectionRefused> {
    let settings = &shared.settings;
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
            Err(End::Shutdown(_)) => return None,
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
        let rj = crate::ul::pdu::AssociateRj {
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
