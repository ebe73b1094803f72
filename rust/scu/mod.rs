//! A C-STORE SCU: opens an association (PS3.8 §7.1), sends C-ECHO and C-STORE requests
//! (PS3.7 §9.1.1, §9.1.5) one at a time, and releases or aborts. Built on the same codec,
//! framed connection and command sets as the server; used by the load generator (`load`) and
//! meant to become the forwarding engine.

pub mod load;
pub mod template;

use std::io;
use std::time::Duration;

use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;

use crate::dicom::sop_class::VERIFICATION;
use crate::dimse::command::{self, element, field, CommandSet, MAX_COMMAND_LEN};
use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::transport::{tls, Transport};
use crate::ul::association::requestor::{Proposal, ProposedContext};
use crate::ul::association::{AcceptedContext, Association, Roles};
use crate::ul::connection::{Connection, ReadError};
use crate::ul::pdu::*;

/// Implicit VR little endian, the transfer syntax every SCP supports (PS3.5 §10.1).
const IMPLICIT_VR_LITTLE_ENDIAN: &str = crate::dicom::transfer_syntax::IMPLICIT_VR_LITTLE_ENDIAN;
/// Data set fragment size when the peer announces no maximum PDU length (0, unlimited).
pub const UNLIMITED_PDU_CAP: u32 = 1 << 20;
/// Largest P-DATA-TF we accept from the peer when we announce "unlimited": responses are
/// command sets only, so this is plenty.
const RECEIVE_LIMIT_UNLIMITED: u32 = 16 << 20;

/// What to propose when connecting.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub calling_aet: String,
    pub called_aet: String,
    /// Presentation contexts to propose: (abstract syntax, transfer syntaxes), given IDs
    /// 1, 3, 5... in this order. Verification (implicit VR LE) is added when absent.
    pub contexts: Vec<(String, Vec<String>)>,
    /// The largest P-DATA-TF we accept (51H sub-item); 0 = unlimited.
    pub max_pdu_length: u32,
    /// Bound on connecting (TLS handshake included) and on each wait for the peer's answer.
    pub timeout: Duration,
    /// DICOM over TLS (PS3.15 annex B); None: plain TCP.
    pub tls: Option<ClientTls>,
}

/// How to speak TLS to the peer.
#[derive(Clone)]
pub struct ClientTls {
    pub connector: TlsConnector,
    /// The name (DNS name or IP address) the peer's certificate must carry.
    pub server_name: String,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientOptions {
    pub fn new(calling_aet: &str, called_aet: &str, contexts: Vec<(String, Vec<String>)>) -> Self {
        ClientOptions {
            calling_aet: calling_aet.into(),
            called_aet: called_aet.into(),
            contexts,
            max_pdu_length: 16384,
            timeout: Duration::from_secs(30),
            tls: None,
        }
    }
}

#[derive(Debug)]
pub enum ScuError {
    /// A-ASSOCIATE-RJ (PS3.8 table 9-21).
    Rejected(AssociateRj),
    /// The peer sent an A-ABORT.
    Aborted(Abort),
    /// The peer broke the protocol (we sent an A-ABORT when we could).
    Protocol(String),
    /// No accepted presentation context for this abstract syntax.
    NoContext(String),
    Timeout,
    Io(io::Error),
}

impl std::fmt::Display for ScuError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScuError::Rejected(rj) => {
                write!(f, "association rejected (result {}, source {}, reason {})", rj.result, rj.source, rj.reason)
            }
            ScuError::Aborted(a) => write!(f, "association aborted by peer (source {}, reason {})", a.source, a.reason),
            ScuError::Protocol(m) => write!(f, "protocol error: {m}"),
            ScuError::NoContext(s) => write!(f, "no accepted presentation context for {s}"),
            ScuError::Timeout => f.write_str("timed out waiting for the peer"),
            ScuError::Io(e) => write!(f, "transport error: {e}"),
        }
    }
}

impl std::error::Error for ScuError {}

impl From<io::Error> for ScuError {
    fn from(e: io::Error) -> Self {
        ScuError::Io(e)
    }
}

impl From<ReadError> for ScuError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Protocol(e) => ScuError::Protocol(e.to_string()),
            ReadError::Io(e) => ScuError::Io(e),
        }
    }
}

/// An established association.
pub struct Client {
    conn: Connection<Transport>,
    association: Association,
    /// The peer's maximum P-DATA-TF length, 0 (unlimited) turned into `UNLIMITED_PDU_CAP`.
    peer_max_pdu: u32,
    next_message_id: u16,
    timeout: Duration,
}

impl Client {
    /// Connects, sends the A-ASSOCIATE-RQ and waits for the answer.
    pub async fn connect(addr: impl ToSocketAddrs, options: ClientOptions) -> Result<Client, ScuError> {
        let timeout = options.timeout;
        let transport = within(timeout, async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(match &options.tls {
                None => Transport::Plain(tcp),
                Some(client) => tls::connect(&client.connector, &client.server_name, tcp).await?,
            })
        })
        .await?;
        // Writes are bounded like every wait for the peer: one that stops reading cannot hold
        // the association (and, forwarding, the instances queued behind it) forever.
        let mut conn = Connection::new(transport, 64 * 1024, timeout);
        let mut contexts: Vec<ProposedContext> = options
            .contexts
            .iter()
            .map(|(abstract_syntax, ts)| ProposedContext {
                abstract_syntax: abstract_syntax.clone(),
                transfer_syntaxes: ts.clone(),
                roles: Roles::SCU,
            })
            .collect();
        if !contexts.iter().any(|c| c.abstract_syntax == VERIFICATION) {
            contexts.push(ProposedContext::scu(VERIFICATION, &[IMPLICIT_VR_LITTLE_ENDIAN]));
        }
        let proposal = Proposal {
            calling_ae_title: options.calling_aet.clone(),
            called_ae_title: options.called_aet.clone(),
            contexts,
            max_pdu_length: options.max_pdu_length,
            implementation_class_uid: IMPLEMENTATION_CLASS_UID.into(),
            implementation_version_name: IMPLEMENTATION_VERSION_NAME.into(),
        };
        let rq = proposal.request().map_err(|e| ScuError::Protocol(e.to_string()))?;
        conn.write_pdu(&Pdu::AssociateRq(rq)).await?;
        let answer = within(timeout, async { Ok(conn.read_pdu().await?) }).await?;
        let ac = match answer {
            Some(Pdu::AssociateAc(ac)) => ac,
            Some(Pdu::AssociateRj(rj)) => return Err(ScuError::Rejected(rj)),
            Some(Pdu::Abort(a)) => return Err(ScuError::Aborted(a)),
            Some(other) => {
                abort(&mut conn).await;
                return Err(ScuError::Protocol(format!("unexpected answer to A-ASSOCIATE-RQ: {}", other.name())));
            }
            None => return Err(ScuError::Io(io::ErrorKind::UnexpectedEof.into())),
        };
        let association = proposal.accepted(&ac);
        let peer_max_pdu = match association.peer_max_pdu_length {
            0 => UNLIMITED_PDU_CAP,
            n => n,
        };
        conn.set_max_pdata_len(match options.max_pdu_length {
            0 => RECEIVE_LIMIT_UNLIMITED,
            n => n,
        });
        Ok(Client { conn, association, peer_max_pdu, next_message_id: 1, timeout })
    }

    /// The association as negotiated.
    pub fn association(&self) -> &Association {
        &self.association
    }

    /// The peer's maximum P-DATA-TF length used to fragment (0 already capped).
    pub fn peer_max_pdu(&self) -> u32 {
        self.peer_max_pdu
    }

    /// The first accepted context for `abstract_syntax`.
    pub fn context_for(&self, abstract_syntax: &str) -> Option<&AcceptedContext> {
        self.association.invoking(abstract_syntax)
    }

    fn message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// C-ECHO; the response status.
    pub async fn echo(&mut self) -> Result<u16, ScuError> {
        let context_id = self.context_for(VERIFICATION).ok_or_else(|| ScuError::NoContext(VERIFICATION.into()))?.id;
        let id = self.message_id();
        let rq = command::c_echo_rq(id).encode();
        self.conn.write_message(context_id, &rq, None, self.peer_max_pdu).await?;
        self.response(context_id, id, field::C_ECHO_RSP).await
    }

    /// C-STORE of a data set given as segments, in order (encoded in the accepted transfer
    /// syntax of the context for `abstract_syntax`, which the caller must match); the
    /// response status. The segments are sent from where they are, never copied.
    pub async fn store(
        &mut self,
        abstract_syntax: &str,
        sop_instance_uid: &str,
        dataset: &[&[u8]],
    ) -> Result<u16, ScuError> {
        let context_id =
            self.context_for(abstract_syntax).ok_or_else(|| ScuError::NoContext(abstract_syntax.into()))?.id;
        let id = self.message_id();
        let rq = command::c_store_rq(id, abstract_syntax, sop_instance_uid).encode();
        self.conn.write_message(context_id, &rq, Some(dataset), self.peer_max_pdu).await?;
        self.response(context_id, id, field::C_STORE_RSP).await
    }

    /// Reads the response to message `id`: a whole command set on `context_id`.
    async fn response(&mut self, context_id: u8, id: u16, expected: u16) -> Result<u16, ScuError> {
        let mut command = Vec::new();
        loop {
            let timeout = self.timeout;
            let pdu = within(timeout, async { Ok(self.conn.read_pdu().await?) }).await;
            let p_data = match pdu {
                Ok(Some(Pdu::PData(p_data))) => p_data,
                Ok(Some(Pdu::Abort(a))) => return Err(ScuError::Aborted(a)),
                Ok(Some(other)) => return self.fail(format!("unexpected {} awaiting a response", other.name())).await,
                Ok(None) => return Err(ScuError::Io(io::ErrorKind::UnexpectedEof.into())),
                Err(ScuError::Protocol(m)) => return self.fail(m).await,
                Err(e) => return Err(e),
            };
            for pdv in p_data.iter() {
                if !pdv.is_command || pdv.context_id != context_id {
                    return self.fail("response PDV not a command on the request's context".into()).await;
                }
                command.extend_from_slice(&pdv.data);
                if command.len() > MAX_COMMAND_LEN {
                    return self.fail("response command set too long".into()).await;
                }
                if pdv.is_last {
                    let rsp = match CommandSet::decode(&command) {
                        Ok(rsp) => rsp,
                        Err(e) => return self.fail(e.to_string()).await,
                    };
                    if rsp.command_field() != Some(expected)
                        || rsp.get_u16(element::MESSAGE_ID_BEING_RESPONDED_TO) != Some(id)
                    {
                        return self
                            .fail(format!("unexpected response {:?} to message {id}", rsp.command_field()))
                            .await;
                    }
                    return rsp.status().ok_or_else(|| ScuError::Protocol("response without a status".into()));
                }
            }
        }
    }

    /// Aborts the association after a protocol error and returns it.
    async fn fail<T>(&mut self, message: String) -> Result<T, ScuError> {
        abort(&mut self.conn).await;
        Err(ScuError::Protocol(message))
    }

    /// A-RELEASE-RQ, waits for the A-RELEASE-RP, closes.
    pub async fn release(mut self) -> Result<(), ScuError> {
        self.conn.write_pdu(&Pdu::ReleaseRq).await?;
        let timeout = self.timeout;
        let answer = within(timeout, async { Ok(self.conn.read_pdu().await?) }).await?;
        self.conn.close().await;
        match answer {
            Some(Pdu::ReleaseRp) => Ok(()),
            Some(Pdu::Abort(a)) => Err(ScuError::Aborted(a)),
            Some(other) => Err(ScuError::Protocol(format!("unexpected {} awaiting A-RELEASE-RP", other.name()))),
            None => Err(ScuError::Io(io::ErrorKind::UnexpectedEof.into())),
        }
    }

    /// A-ABORT (source: service user) and close.
    pub async fn abort(mut self) {
        abort(&mut self.conn).await;
    }
}

async fn abort(conn: &mut Connection<Transport>) {
    // The peer may be gone already; nothing to do about a failure.
    let _ = conn.write_pdu(&Pdu::Abort(Abort::BY_USER)).await;
    conn.close().await;
}

async fn within<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, ScuError>>,
) -> Result<T, ScuError> {
    tokio::time::timeout(timeout, fut).await.unwrap_or(Err(ScuError::Timeout))
}

#[cfg(test)]
mod tests;
