//! The requestor: opens an association (PS3.8 §7.1), invokes DIMSE operations one at a time
//! on it, and releases or aborts. C-ECHO and C-STORE here, C-FIND, C-MOVE and C-GET in
//! `query_retrieve`. Built on the same negotiation (`ul::association::requestor`), message
//! channel (`dimse::channel`) and, for the C-STOREs of a C-GET, store service
//! (`service::store`) as the server.
//!
//! Every wait is bounded by `ClientOptions::timeout`: connecting (TLS handshake included),
//! each PDU awaited, each write (`Connection`'s write timeout). TCP_NODELAY is set, and the
//! connection acknowledges promptly after each of our writes (`ByteStream::
//! acknowledge_promptly`), so a peer that leaves Nagle on never waits on our delayed ACK.
//!
//! One association per `Client`. A per-destination pool of associations (forwarding many
//! instances to one peer over a few long-lived associations) is to be built above this type,
//! in a `client::pool` module holding `Client`s by destination: this type stays one
//! association.

pub mod query_retrieve;
pub mod retrieval;

use std::io;
use std::time::Duration;

use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_rustls::TlsConnector;

use crate::dicom::sop_class::VERIFICATION;
use crate::dicom::transfer_syntax::IMPLICIT_VR_LITTLE_ENDIAN;
use crate::dimse::channel::{Channel, ChannelError};
use crate::dimse::command::{self, element, CommandSet};
use crate::dimse::status::Status;
use crate::implementation::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::service::store::Origin;
use crate::transport::{tls, Transport};
use crate::ul::association::requestor::{self, Proposal, ProposalError, ProposedContext};
use crate::ul::association::{AcceptedContext, Association};
use crate::ul::connection::Connection;
use crate::ul::pdu::abort::REASON_UNEXPECTED_PDU;
use crate::ul::pdu::{Abort, AssociateRj, Pdu};

/// Largest P-DATA-TF we accept from the peer when we announce "unlimited": responses are
/// command sets and identifiers, so this is plenty; the C-STOREs of a C-GET are streamed,
/// never held whole, whatever their size.
const RECEIVE_LIMIT_UNLIMITED: u32 = 16 << 20;

/// Bytes of the read buffer to begin with; it grows to the largest PDU received.
const INITIAL_READ_BUFFER: usize = 64 * 1024;

/// What to propose when connecting.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub calling_aet: String,
    pub called_aet: String,
    /// Presentation contexts to propose, given IDs 1, 3, 5... in this order. Verification
    /// (implicit VR LE) is added when absent, if there is room.
    pub contexts: Vec<ProposedContext>,
    /// The largest P-DATA-TF we accept (51H sub-item); 0 = unlimited.
    pub max_pdu_length: u32,
    /// Bound on connecting (TLS handshake included), on each wait for the peer, and on each
    /// write.
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
    pub fn new(calling_aet: &str, called_aet: &str, contexts: Vec<ProposedContext>) -> Self {
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
pub enum ClientError {
    /// A-ASSOCIATE-RJ (PS3.8 table 9-21).
    Rejected(AssociateRj),
    /// The peer sent an A-ABORT.
    Aborted(Abort),
    /// The peer broke the protocol (we sent an A-ABORT when we could).
    Protocol(String),
    /// Nothing to propose that an association can carry.
    Proposal(ProposalError),
    /// No accepted presentation context on which we may invoke this abstract syntax.
    NoContext(String),
    Timeout,
    Io(io::Error),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Rejected(rj) => {
                write!(f, "association rejected (result {}, source {}, reason {})", rj.result, rj.source, rj.reason)
            }
            ClientError::Aborted(a) => {
                write!(f, "association aborted by peer (source {}, reason {})", a.source, a.reason)
            }
            ClientError::Protocol(m) => write!(f, "protocol error: {m}"),
            ClientError::Proposal(e) => write!(f, "cannot propose: {e}"),
            ClientError::NoContext(s) => write!(f, "no accepted presentation context for {s}"),
            ClientError::Timeout => f.write_str("timed out waiting for the peer"),
            ClientError::Io(e) => write!(f, "transport error: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// An established association, as its requestor.
pub struct Client {
    channel: Channel<Transport>,
    next_message_id: u16,
}

impl Client {
    /// Connects, sends the A-ASSOCIATE-RQ and waits for the answer.
    pub async fn connect(addr: impl ToSocketAddrs, options: ClientOptions) -> Result<Client, ClientError> {
        let timeout = options.timeout;
        let transport = within(timeout, async {
            let tcp = TcpStream::connect(addr).await?;
            // PS3.8 §9.1.x leaves this to the transport: a small request must not wait for the
            // acknowledgement of the one before.
            tcp.set_nodelay(true)?;
            Ok(match &options.tls {
                None => Transport::Plain(tcp),
                Some(client) => tls::connect(&client.connector, &client.server_name, tcp).await?,
            })
        })
        .await?;
        // Writes are bounded like every wait for the peer: one that stops reading cannot hold
        // the association (and, forwarding, the instances queued behind it) forever.
        let mut channel = Channel::new(Connection::new(transport, INITIAL_READ_BUFFER, timeout));
        let mut contexts = options.contexts.clone();
        if contexts.len() < requestor::MAX_CONTEXTS && !contexts.iter().any(|c| c.abstract_syntax == VERIFICATION) {
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
        let rq = proposal.request().map_err(ClientError::Proposal)?;
        let conn = channel.connection();
        conn.write_pdu(&Pdu::AssociateRq(rq)).await?;
        let answer = within(timeout, async { conn.read_pdu().await.map_err(read_error) }).await?;
        let ac = match answer {
            Some(Pdu::AssociateAc(ac)) => ac,
            Some(Pdu::AssociateRj(rj)) => return Err(ClientError::Rejected(rj)),
            Some(Pdu::Abort(a)) => return Err(ClientError::Aborted(a)),
            Some(other) => {
                channel.abort(Abort::by_provider(REASON_UNEXPECTED_PDU)).await;
                channel.close().await;
                return Err(ClientError::Protocol(format!("unexpected answer to A-ASSOCIATE-RQ: {}", other.name())));
            }
            None => return Err(ClientError::Io(io::ErrorKind::UnexpectedEof.into())),
        };
        channel.connection().set_max_pdata_len(match options.max_pdu_length {
            0 => RECEIVE_LIMIT_UNLIMITED,
            n => n,
        });
        channel.established(proposal.accepted(&ac), Some(timeout));
        Ok(Client { channel, next_message_id: 1 })
    }

    /// Bounds each wait for a PDU from now on (instead of `ClientOptions::timeout`, which
    /// still bounds each write): a retrieve waits on the peer's sub-operations, which may be
    /// longer than a connection should take.
    pub fn set_idle_timeout(&mut self, idle_timeout: Duration) {
        self.channel.set_read_timeout(Some(idle_timeout));
    }

    /// The association as negotiated.
    pub fn association(&self) -> &Association {
        self.channel.association()
    }

    /// The peer's maximum P-DATA-TF length used to fragment (0, unlimited, capped).
    pub fn peer_max_pdu(&self) -> u32 {
        self.channel.peer_max_pdu()
    }

    /// The first accepted context on which we may invoke `abstract_syntax`.
    pub fn context_for(&self, abstract_syntax: &str) -> Option<&AcceptedContext> {
        self.association().invoking(abstract_syntax)
    }

    /// Who the association is for the store service, when it receives C-STOREs on it
    /// (`query_retrieve::get`): the instances come from the peer we called, to us.
    pub fn store_origin(&self, association_id: u64) -> Origin {
        let association = self.association();
        let peer = self.channel.stream().tcp().peer_addr().map(|a| a.to_string()).unwrap_or_default();
        Origin {
            association_id,
            peer,
            sender_aet: association.called_ae_title.clone(),
            receiver_aet: association.calling_ae_title.clone(),
        }
    }

    /// The accepted context on which we may invoke `abstract_syntax` with data sets encoded
    /// in `transfer_syntax`.
    pub fn context_in(&self, abstract_syntax: &str, transfer_syntax: &str) -> Option<&AcceptedContext> {
        self.association()
            .contexts()
            .find(|c| c.roles.scu && c.abstract_syntax == abstract_syntax && c.transfer_syntax.uid == transfer_syntax)
    }

    /// The ID of the context to invoke `abstract_syntax` on, and a new message ID.
    fn invoke(&mut self, abstract_syntax: &str) -> Result<(u8, u16), ClientError> {
        let context_id =
            self.context_for(abstract_syntax).ok_or_else(|| ClientError::NoContext(abstract_syntax.into()))?.id;
        Ok((context_id, self.next_message_id()))
    }

    fn next_message_id(&mut self) -> u16 {
        let id = self.next_message_id;
        self.next_message_id = self.next_message_id.wrapping_add(1).max(1);
        id
    }

    /// C-ECHO; the response status.
    pub async fn echo(&mut self) -> Result<u16, ClientError> {
        let (context_id, id) = self.invoke(VERIFICATION)?;
        self.request(context_id, &command::c_echo_rq(id), None).await?;
        self.final_response(context_id, id, command::field::C_ECHO_RSP).await
    }

    /// C-STORE of a data set given as segments, in order (encoded in the accepted transfer
    /// syntax of the context for `abstract_syntax`, which the caller must match); the
    /// response status. The segments are sent from where they are, never copied.
    pub async fn store(
        &mut self,
        abstract_syntax: &str,
        sop_instance_uid: &str,
        dataset: &[&[u8]],
    ) -> Result<u16, ClientError> {
        let (context_id, id) = self.invoke(abstract_syntax)?;
        let rq = command::c_store_rq(id, abstract_syntax, sop_instance_uid);
        self.request(context_id, &rq, Some(dataset)).await?;
        self.final_response(context_id, id, command::field::C_STORE_RSP).await
    }

    /// C-STORE of a data set of `len` bytes encoded in `transfer_syntax`, read from `reader`
    /// (a stored file from the byte where its data set begins, say) a chunk at a time
    /// (`Channel::send_from_reader`: memory is one chunk, whatever the size), on the context
    /// accepted for that SOP class in that transfer syntax: the bytes go as they are, never
    /// re-encoded. The response status with its ErrorComment.
    pub async fn store_from_reader(
        &mut self,
        abstract_syntax: &str,
        transfer_syntax: &str,
        sop_instance_uid: &str,
        reader: &mut (impl tokio::io::AsyncRead + Unpin + Send),
        len: u64,
    ) -> Result<Status, ClientError> {
        let context_id = self
            .context_in(abstract_syntax, transfer_syntax)
            .ok_or_else(|| ClientError::NoContext(format!("{abstract_syntax} in {transfer_syntax}")))?
            .id;
        let id = self.next_message_id();
        let rq = command::c_store_rq(id, abstract_syntax, sop_instance_uid);
        let sent = self.channel.send_from_reader(context_id, &rq, reader, len).await;
        if let Err(e) = sent {
            return Err(self.fail(e).await);
        }
        self.final_status(context_id, id, command::field::C_STORE_RSP).await
    }

    /// How much of a data set `store_from_reader` reads at once (`Channel::chunk_len`).
    pub fn chunk_len(&self) -> usize {
        self.channel.chunk_len()
    }

    /// Sends a request; a failure ends the association.
    async fn request(&mut self, context_id: u8, rq: &CommandSet, dataset: Option<&[&[u8]]>) -> Result<(), ClientError> {
        match self.channel.send(context_id, rq, dataset).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e).await),
        }
    }

    /// Reads the only response to message `id`, which carries no data set: its status.
    async fn final_response(&mut self, context_id: u8, id: u16, expected: u16) -> Result<u16, ClientError> {
        Ok(self.final_status(context_id, id, expected).await?.code)
    }

    /// Reads the only response to message `id`, which carries no data set: its status and
    /// ErrorComment.
    async fn final_status(&mut self, context_id: u8, id: u16, expected: u16) -> Result<Status, ClientError> {
        let rsp = self.response(context_id, id, expected).await?;
        if rsp.has_data_set() {
            return Err(self.violation(format!("response {expected:#06x} announces a data set")).await);
        }
        match rsp.status() {
            Some(code) => Ok(Status { code, comment: rsp.get_text(element::ERROR_COMMENT) }),
            None => Err(self.violation("response without a status".into()).await),
        }
    }

    /// Reads the next message, which must be a response `expected` to message `id` on
    /// `context_id`.
    async fn response(&mut self, context_id: u8, id: u16, expected: u16) -> Result<CommandSet, ClientError> {
        let (received_on, rsp) = match self.channel.receive_command().await {
            Ok(received) => received,
            Err(e) => return Err(self.fail(e).await),
        };
        if received_on != context_id
            || rsp.command_field() != Some(expected)
            || rsp.get_u16(element::MESSAGE_ID_BEING_RESPONDED_TO) != Some(id)
        {
            return Err(self.violation(format!("unexpected response {:?} to message {id}", rsp.command_field())).await);
        }
        Ok(rsp)
    }

    /// Ends the association after a protocol error of the peer's; the error to return.
    async fn violation(&mut self, detail: String) -> ClientError {
        self.fail(ChannelError::violation(REASON_UNEXPECTED_PDU, detail)).await
    }

    /// What a channel error means for the caller, after answering it as PS3.8 asks: an
    /// A-P-ABORT for the peer's protocol error (PS3.8 §7.4), an A-ABORT when we stop waiting.
    async fn fail(&mut self, e: ChannelError) -> ClientError {
        let error = match e {
            ChannelError::Violation { reason, detail } => {
                self.channel.abort(Abort::by_provider(reason)).await;
                ClientError::Protocol(detail)
            }
            ChannelError::ReleaseRequested => {
                self.channel.abort(Abort::by_provider(REASON_UNEXPECTED_PDU)).await;
                ClientError::Protocol("A-RELEASE-RQ from the acceptor in the middle of an operation".into())
            }
            ChannelError::Timeout => {
                self.channel.abort(Abort::BY_USER).await;
                ClientError::Timeout
            }
            ChannelError::Aborted(abort) => ClientError::Aborted(abort),
            ChannelError::Closed => ClientError::Io(io::ErrorKind::UnexpectedEof.into()),
            ChannelError::Read(e) | ChannelError::Write(e) => ClientError::Io(e),
        };
        self.channel.close().await;
        error
    }

    /// A-RELEASE-RQ, waits for the A-RELEASE-RP, closes.
    pub async fn release(mut self) -> Result<(), ClientError> {
        match self.channel.release().await {
            Ok(()) => {
                self.channel.close().await;
                Ok(())
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    /// A-ABORT (source: service user) and close.
    pub async fn abort(mut self) {
        self.channel.abort(Abort::BY_USER).await;
        self.channel.close().await;
    }
}

fn read_error(e: crate::ul::connection::ReadError) -> ClientError {
    match e {
        crate::ul::connection::ReadError::Protocol(e) => ClientError::Protocol(e.to_string()),
        crate::ul::connection::ReadError::Io(e) => ClientError::Io(e),
    }
}

async fn within<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(timeout, fut).await.unwrap_or(Err(ClientError::Timeout))
}

#[cfg(test)]
pub(crate) mod tests;
