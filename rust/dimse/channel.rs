//! The DIMSE message channel of an established association, the same for both roles (the
//! shape of dicom-rs's `pdata` and pynetdicom's DIMSE layer): send a message, its command
//! set and data set fragmented to the peer's limit; receive one, its command set reassembled
//! from PDV fragments and its data set streamed, fragment by fragment, into a sink the caller
//! gives (PS3.7 §6.3.1, PS3.8 annex E). A data set is never buffered whole: each fragment is
//! a slice of the PDU it came in.
//!
//! Everything that ends an association on the peer's side or breaks its protocol comes out
//! as a [`ChannelError`]; the caller decides what to answer (an A-P-ABORT for a violation,
//! an A-RELEASE-RP for a release request).

use std::future::Future;
use std::io;
use std::time::Duration;

use bytes::Bytes;

use super::command::{self, CommandSet, MAX_COMMAND_LEN};
use super::status::{self, Status};
use crate::transport::ByteStream;
use crate::ul::association::Association;
use crate::ul::codec::Pdvs;
use crate::ul::connection::{Connection, ReadError};
use crate::ul::pdu::abort::{REASON_INVALID_PDU_PARAMETER_VALUE, REASON_UNEXPECTED_PDU};
use crate::ul::pdu::{Abort, Pdu, Pdv};

/// Data set fragment size when the peer announces no maximum PDU length (0, unlimited): one
/// fragment per MiB keeps a large data set from being one PDU the peer must buffer whole.
pub const UNLIMITED_PDU_CAP: u32 = 1 << 20;

/// The Command Field bit that makes a request's field its response's (PS3.7 annex E).
const RESPONSE_BIT: u16 = 0x8000;

/// Why the channel could not go on.
#[derive(Debug)]
pub enum ChannelError {
    /// The peer broke the protocol: answer with an A-P-ABORT of this reason (PS3.8 table
    /// 9-26) and close.
    Violation { reason: u8, detail: String },
    /// The peer sent an A-RELEASE-RQ (PS3.8 §7.2): a message it had begun is dropped.
    ReleaseRequested,
    /// The peer sent an A-ABORT.
    Aborted(Abort),
    /// The peer closed the transport between PDUs, without release.
    Closed,
    /// Nothing came within the read timeout.
    Timeout,
    /// The transport failed or closed in the middle of a PDU.
    Read(io::Error),
    /// A write failed or timed out (`Connection`'s write timeout): nothing more can be sent.
    Write(io::Error),
}

impl ChannelError {
    pub fn violation(reason: u8, detail: impl Into<String>) -> ChannelError {
        ChannelError::Violation { reason, detail: detail.into() }
    }

    fn invalid(detail: impl Into<String>) -> ChannelError {
        ChannelError::violation(REASON_INVALID_PDU_PARAMETER_VALUE, detail)
    }
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChannelError::Violation { detail, .. } => write!(f, "protocol error: {detail}"),
            ChannelError::ReleaseRequested => f.write_str("the peer asked to release the association"),
            ChannelError::Aborted(abort) => write!(f, "aborted by the peer ({abort})"),
            ChannelError::Closed => f.write_str("the peer closed the connection without release"),
            ChannelError::Timeout => f.write_str("timed out waiting for the peer"),
            ChannelError::Read(e) => write!(f, "transport error: {e}"),
            ChannelError::Write(e) => write!(f, "transport error: {e}"),
        }
    }
}

impl std::error::Error for ChannelError {}

/// Where the fragments of a data set go, in order, as they arrive.
pub trait DataSink {
    fn fragment(&mut self, data: Bytes) -> impl Future<Output = ()>;
}

/// The command set proper: group 0000 as long as its CommandGroupLength (0000,0000) says,
/// which PS3.7 §E.1 requires first. What follows it is dropped: dcmtk-based retrieve SCPs
/// (Orthanc 1.10 seen here) append the Failed SOP Instance UID List (0008,0058), with its
/// group length, to the command set of a failed C-GET-RSP, where PS3.7 §9.3.3.2 puts it in
/// the identifier. Without a group length first, the bytes are taken as they are.
fn command_group(bytes: &[u8]) -> &[u8] {
    // Tag (0000,0000), value length 4, then the UL value (implicit VR little endian).
    let Some((&[0, 0, 0, 0, 4, 0, 0, 0, l0, l1, l2, l3], body)) = bytes.split_first_chunk::<12>() else {
        return bytes;
    };
    let group_len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    match body.get(..group_len) {
        Some(_) => &bytes[..12 + group_len],
        None => bytes,
    }
}

/// A sink that drops what it is given: the data set of a request refused unread.
pub struct Discard;

impl DataSink for Discard {
    async fn fragment(&mut self, _: Bytes) {}
}

/// A sink that keeps the data set whole, for the small ones that are read as a whole:
/// identifiers of C-FIND matches and of retrieve responses (bounded by `limit`, past which
/// the rest is dropped and `overflowed` set).
#[derive(Debug, Default)]
pub struct Collected {
    pub bytes: Vec<u8>,
    pub overflowed: bool,
    limit: usize,
}

impl Collected {
    pub fn with_limit(limit: usize) -> Self {
        Collected { bytes: Vec::new(), overflowed: false, limit }
    }
}

impl DataSink for Collected {
    async fn fragment(&mut self, data: Bytes) {
        if self.bytes.len() + data.len() > self.limit {
            self.overflowed = true;
        } else {
            self.bytes.extend_from_slice(&data);
        }
    }
}

/// The message channel of one association: the framed connection, the association as
/// negotiated, and the rest of the P-DATA-TF being read.
pub struct Channel<S> {
    conn: Connection<S>,
    association: Association,
    /// Bound on each wait for a PDU; None: wait as long as the peer takes.
    read_timeout: Option<Duration>,
    /// PDVs of the last P-DATA-TF read not yet handed out: one PDU may end a message and
    /// begin the next.
    pdvs: Option<Pdvs>,
}

impl<S: ByteStream> Channel<S> {
    /// The channel of `conn`, whose association is to be negotiated on it (`connection`,
    /// then `established`). Until then every PDV is refused: no context is accepted.
    pub fn new(conn: Connection<S>) -> Self {
        Channel { conn, association: Association::default(), read_timeout: None, pdvs: None }
    }

    /// The association is established: messages may flow on its contexts, each PDU waited
    /// for `read_timeout` at most (None: as long as the peer takes).
    pub fn established(&mut self, association: Association, read_timeout: Option<Duration>) {
        self.association = association;
        self.read_timeout = read_timeout;
    }

    pub fn association(&self) -> &Association {
        &self.association
    }

    /// Bounds each wait for a PDU from now on (None: as long as the peer takes).
    pub fn set_read_timeout(&mut self, read_timeout: Option<Duration>) {
        self.read_timeout = read_timeout;
    }

    /// Waits until something of the peer's is there to receive (a PDV left of the last
    /// P-DATA-TF, or bytes on the connection), or the connection ended, receiving nothing.
    /// Cancel-safe (`Connection::readable`), and not bounded by the read timeout: the caller
    /// bounds it as it needs.
    pub async fn readable(&mut self) -> Result<(), ChannelError> {
        if self.pdvs.as_ref().is_some_and(|pdvs| !pdvs.is_exhausted()) {
            return Ok(());
        }
        self.conn.readable().await.map_err(ChannelError::Read)
    }

    /// The byte stream underneath (for its socket's address, say).
    pub fn stream(&self) -> &S {
        self.conn.get_ref()
    }

    /// The framed connection underneath, for the negotiation PDUs.
    pub fn connection(&mut self) -> &mut Connection<S> {
        &mut self.conn
    }

    /// How much of a data set `send_from_reader` reads at once: at least 1 MiB (a CT slice
    /// in one read: each read of a file is a system call, and a trip to a blocking thread
    /// when the reader is asynchronous), at least a few fragments, and at most 4 MiB, so that
    /// memory stays bounded whatever the data set's size. A chunk goes out in one writev,
    /// cut to the peer's maximum PDU length.
    pub fn chunk_len(&self) -> usize {
        (self.peer_max_pdu() as usize).saturating_mul(4).clamp(1 << 20, 4 << 20)
    }

    /// The largest P-DATA-TF we send, 0 (unlimited) capped (`UNLIMITED_PDU_CAP`).
    pub fn peer_max_pdu(&self) -> u32 {
        match self.association.peer_max_pdu_length {
            0 => UNLIMITED_PDU_CAP,
            n => n,
        }
    }

    /// Sends a message on `context_id`: its command set, then its data set if any, given as
    /// segments written from where they are (one writev for a small message; see
    /// `Connection::write_message`).
    pub async fn send(
        &mut self,
        context_id: u8,
        command: &CommandSet,
        dataset: Option<&[&[u8]]>,
    ) -> Result<(), ChannelError> {
        let peer_max = self.peer_max_pdu();
        self.conn.write_message(context_id, &command.encode(), dataset, peer_max).await.map_err(ChannelError::Write)
    }

    /// Sends a message whose data set, `len` bytes, is read from `reader` one chunk at a
    /// time (a stored file, say): the command set with the first chunk, then each chunk as
    /// data fragments. Memory is one chunk (`chunk_len`), whatever the data set's size. An
    /// `UnexpectedEof` if the reader has fewer bytes than it said: the message cannot be
    /// completed, and the association must be aborted. The reader is asynchronous: a file
    /// is read off the runtime's workers (`tokio::fs::File`), which a slow disk never stalls.
    pub async fn send_from_reader(
        &mut self,
        context_id: u8,
        command: &CommandSet,
        reader: &mut (impl tokio::io::AsyncRead + Unpin),
        len: u64,
    ) -> Result<(), ChannelError> {
        use tokio::io::AsyncReadExt;
        let mut chunk = vec![0; usize::try_from(len).unwrap_or(usize::MAX).min(self.chunk_len())];
        let mut left = len;
        let mut command = Some(command.encode());
        let peer_max = self.peer_max_pdu();
        loop {
            let n = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
            reader.read_exact(&mut chunk[..n]).await.map_err(ChannelError::Read)?;
            left -= n as u64;
            let data = &chunk[..n];
            let written = match command.take() {
                Some(command) if left == 0 => {
                    self.conn.write_message(context_id, &command, Some(&[data]), peer_max).await
                }
                Some(command) => self.conn.write_message_start(context_id, &command, &[data], peer_max).await,
                None => self.conn.write_data(context_id, &[data], left == 0, peer_max).await,
            };
            written.map_err(ChannelError::Write)?;
            if left == 0 {
                return Ok(());
            }
        }
    }

    /// Receives the next message's command set, whole, and the context it came on. Its data
    /// set, if the command announces one (`CommandSet::has_data_set`), must be taken next
    /// with `receive_data`.
    pub async fn receive_command(&mut self) -> Result<(u8, CommandSet), ChannelError> {
        let first = self.next_pdv().await?;
        if !first.is_command {
            return Err(ChannelError::invalid("data fragment without a command"));
        }
        let context_id = first.context_id;
        let decode = |bytes: &[u8]| {
            CommandSet::decode(command_group(bytes)).map_err(|e| ChannelError::invalid(format!("command set: {e}")))
        };
        if first.is_last {
            // The usual case: a command set in one fragment, decoded where it lies.
            return Ok((context_id, decode(&first.data)?));
        }
        let mut bytes = first.data.to_vec();
        loop {
            let pdv = self.next_pdv().await?;
            if !pdv.is_command {
                return Err(ChannelError::invalid("data fragment without a command"));
            }
            if pdv.context_id != context_id {
                return Err(ChannelError::invalid("command fragment where data was expected"));
            }
            if bytes.len() + pdv.data.len() > MAX_COMMAND_LEN {
                return Err(ChannelError::invalid("command set larger than 64 KiB"));
            }
            bytes.extend_from_slice(&pdv.data);
            if pdv.is_last {
                return Ok((context_id, decode(&bytes)?));
            }
        }
    }

    /// Receives the data set of the message whose command came on `context_id`, handing each
    /// fragment to `sink` as it arrives, until the last one.
    pub async fn receive_data(&mut self, context_id: u8, sink: &mut impl DataSink) -> Result<(), ChannelError> {
        loop {
            let pdv = self.next_pdv().await?;
            if pdv.is_command {
                return Err(ChannelError::invalid("command fragment where data was expected"));
            }
            if pdv.context_id != context_id {
                return Err(ChannelError::invalid("data fragment without a command"));
            }
            let last = pdv.is_last;
            sink.fragment(pdv.data).await;
            if last {
                return Ok(());
            }
        }
    }

    /// The next PDV of an accepted context; P-DATA-TF PDUs are taken apart one PDV at a time
    /// (see `PData`), other PDUs end the channel.
    async fn next_pdv(&mut self) -> Result<Pdv, ChannelError> {
        loop {
            if let Some(pdv) = self.pdvs.as_mut().and_then(Iterator::next) {
                if self.association.context(pdv.context_id).is_none() {
                    return Err(ChannelError::invalid(format!(
                        "PDV on presentation context {} which was not accepted",
                        pdv.context_id
                    )));
                }
                return Ok(pdv);
            }
            self.pdvs = None;
            match self.next_pdu().await? {
                Pdu::PData(p_data) => self.pdvs = Some(p_data.into_iter()),
                Pdu::ReleaseRq => return Err(ChannelError::ReleaseRequested),
                Pdu::Abort(abort) => return Err(ChannelError::Aborted(abort)),
                other => {
                    let detail = format!("unexpected {} after association", other.name());
                    return Err(ChannelError::violation(REASON_UNEXPECTED_PDU, detail));
                }
            }
        }
    }

    /// The next PDU, within the read timeout.
    async fn next_pdu(&mut self) -> Result<Pdu, ChannelError> {
        let read = match self.read_timeout {
            Some(limit) => {
                tokio::time::timeout(limit, self.conn.read_pdu()).await.map_err(|_| ChannelError::Timeout)?
            }
            None => self.conn.read_pdu().await,
        };
        match read {
            Ok(Some(pdu)) => Ok(pdu),
            Ok(None) => Err(ChannelError::Closed),
            Err(ReadError::Protocol(e)) => Err(ChannelError::violation(e.abort_reason(), e.to_string())),
            Err(ReadError::Io(e)) => Err(ChannelError::Read(e)),
        }
    }

    /// Answers a request we do not perform with 0211, unrecognized operation (PS3.7 C.4.2),
    /// once its data set, if it has one, is in (handed to `discard`, which drops it).
    pub async fn refuse_unsupported(
        &mut self,
        context_id: u8,
        command: &CommandSet,
        discard: &mut impl DataSink,
    ) -> Result<(), ChannelError> {
        if command.has_data_set() {
            self.receive_data(context_id, discard).await?;
        }
        let response_field = command.command_field().unwrap_or(0) | RESPONSE_BIT;
        let st = Status::failure(status::UNRECOGNIZED_OPERATION, "operation not supported");
        let sop_class_uid = command.affected_sop_class_uid().unwrap_or_default();
        let rsp = command::response(response_field, command.message_id().unwrap_or(0), &sop_class_uid, None, &st);
        self.send(context_id, &rsp, None).await
    }

    /// Sends an A-ABORT; the peer may be gone already, nothing to do about a failure.
    pub async fn abort(&mut self, abort: Abort) {
        let _ = self.conn.write_pdu(&Pdu::Abort(abort)).await;
    }

    /// Answers the peer's A-RELEASE-RQ.
    pub async fn answer_release(&mut self) -> io::Result<()> {
        self.conn.write_pdu(&Pdu::ReleaseRp).await
    }

    /// Asks to release (A-RELEASE-RQ) and waits for the A-RELEASE-RP (PS3.8 §7.2).
    pub async fn release(&mut self) -> Result<(), ChannelError> {
        self.conn.write_pdu(&Pdu::ReleaseRq).await.map_err(ChannelError::Write)?;
        match self.next_pdu().await? {
            Pdu::ReleaseRp => Ok(()),
            Pdu::Abort(abort) => Err(ChannelError::Aborted(abort)),
            other => Err(ChannelError::violation(
                REASON_UNEXPECTED_PDU,
                format!("unexpected {} awaiting A-RELEASE-RP", other.name()),
            )),
        }
    }

    /// Closes the transport (`Connection::close`).
    pub async fn close(&mut self) {
        self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dimse::command::{element, field};

    #[test]
    fn what_follows_the_command_group_is_dropped() {
        let mut rsp = CommandSet::default();
        rsp.set_u16(element::COMMAND_FIELD, field::C_GET_RSP).set_u16(element::STATUS, 0xC000);
        let group = rsp.encode();
        // Orthanc's failed C-GET-RSP: (0008,0000) and (0008,0058) after group 0000.
        let appended = [&[8, 0, 0, 0, 4, 0, 0, 0, 12, 0, 0, 0][..], &[8, 0, 0x58, 0, 4, 0, 0, 0], b"1.2\0"].concat();
        let received = [&group[..], &appended].concat();
        assert_eq!(command_group(&received), &group[..]);
        assert_eq!(CommandSet::decode(command_group(&received)).unwrap().status(), Some(0xC000));
        // No group length first, or one longer than the bytes: taken as they are (and
        // refused by the decoder if they are not a command set).
        assert_eq!(command_group(&appended), &appended[..]);
        let mut lying = group.clone();
        lying[8] = 0xFF;
        assert_eq!(command_group(&lying), &lying[..]);
        assert_eq!(command_group(&[0, 0]), &[0, 0]);
    }
}
