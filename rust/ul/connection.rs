//! A framed upper-layer connection: reads whole PDUs from a byte stream and writes PDUs to it,
//! with the codec doing the parsing (the shape of mini-redis's `Connection`).

use std::future::Future;
use std::io::{self, IoSlice};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, CodecError, MAX_CONTROL_PDU_LEN};
use super::pdu::Pdu;
use crate::transport::ByteStream;

/// Why reading a PDU failed.
#[derive(Debug)]
pub enum ReadError {
    /// The bytes are not a valid PDU: answer with an A-ABORT.
    Protocol(CodecError),
    /// The transport failed or closed in the middle of a PDU.
    Io(io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Protocol(e) => write!(f, "protocol error: {e}"),
            ReadError::Io(e) => write!(f, "transport error: {e}"),
        }
    }
}

pub struct Connection<S> {
    stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Largest P-DATA-TF accepted from the peer (PDU length field).
    max_pdata_len: u32,
    /// How long one write may wait for the peer to take our bytes.
    write_timeout: Duration,
    /// A write began and did not finish (it failed, timed out, or its future was dropped):
    /// the peer may hold part of a PDU, so nothing more can be written that it could parse.
    write_unfinished: bool,
    /// We wrote since the last read: acknowledge at once what the next read takes
    /// (`ByteStream::acknowledge_promptly`).
    acknowledge_next_read: bool,
}

impl<S: ByteStream> Connection<S> {
    /// `read_capacity`: initial read buffer size; it grows to the largest PDU received.
    /// `write_timeout`: bound on each write (PDU or message); past it the write fails with
    /// `TimedOut` and the connection can only be closed.
    pub fn new(stream: S, read_capacity: usize, write_timeout: Duration) -> Self {
        Connection {
            stream,
            read_buf: BytesMut::with_capacity(read_capacity),
            write_buf: BytesMut::with_capacity(4096),
            max_pdata_len: MAX_CONTROL_PDU_LEN,
            write_timeout,
            write_unfinished: false,
            acknowledge_next_read: false,
        }
    }

    /// Sets the largest P-DATA-TF PDU accepted from now on (after negotiation).
    pub fn set_max_pdata_len(&mut self, len: u32) {
        self.max_pdata_len = len;
    }

    /// The next PDU; Ok(None) when the peer closed the transport between PDUs.
    pub async fn read_pdu(&mut self) -> Result<Option<Pdu>, ReadError> {
        loop {
            if let Some(pdu) = codec::decode(&mut self.read_buf, self.max_pdata_len).map_err(ReadError::Protocol)? {
                return Ok(Some(pdu));
            }
            // Make room for at least the rest of the PDU being read, so a large P-DATA-TF is
            // read with few syscalls; the codec has already bounded its length.
            self.read_buf.reserve(self.pending_pdu_len().max(16 * 1024));
            let n = self.stream.read_buf(&mut self.read_buf).await.map_err(ReadError::Io)?;
            if n == 0 {
                return if self.read_buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a PDU")))
                };
            }
            self.after_read();
        }
    }

    /// Once per write, not per read: writing is what puts Linux in its delayed-ACK mode, and
    /// the first read after it takes that mode off until the next write. Not when that read
    /// completed the peer's request (a TCP_NODELAY sender's whole C-STORE in one read): it
    /// holds nothing back and waits for our answer, which carries the acknowledgement; that
    /// spares the fast path its one extra syscall.
    fn after_read(&mut self) {
        if std::mem::take(&mut self.acknowledge_next_read) && !codec::ends_a_data_set(&self.read_buf) {
            self.stream.acknowledge_promptly();
        }
    }

    /// Waits until the peer has sent something (bytes are buffered), or the stream ended
    /// (then `read_pdu` says how), without taking a PDU out. Cancel-safe: all it does is one
    /// read into the buffer (tokio's `read_buf` is), so a requestor can wait for the peer
    /// and for its own user at once, and write (a C-CANCEL-RQ) when the user comes first.
    pub async fn readable(&mut self) -> io::Result<()> {
        if !self.read_buf.is_empty() {
            return Ok(());
        }
        self.read_buf.reserve(16 * 1024);
        if self.stream.read_buf(&mut self.read_buf).await? > 0 {
            self.after_read();
        }
        Ok(())
    }

    /// Bytes still missing from the PDU at the front of the buffer, once its header is known.
    fn pending_pdu_len(&self) -> usize {
        if self.read_buf.len() < codec::PDU_HEADER_LEN {
            return 0;
        }
        let len = (&self.read_buf[2..6]).get_u32() as usize;
        (codec::PDU_HEADER_LEN + len).saturating_sub(self.read_buf.len())
    }

    pub async fn write_pdu(&mut self, pdu: &Pdu) -> io::Result<()> {
        self.write_buf.clear();
        codec::encode(pdu, &mut self.write_buf);
        self.acknowledge_next_read = true;
        let Connection { stream, write_buf, write_timeout, write_unfinished, .. } = self;
        bounded_write(*write_timeout, write_unfinished, async {
            stream.write_all(write_buf).await?;
            stream.flush().await
        })
        .await
    }

    /// Sends a DIMSE message (PS3.7 §6.3.1): its command set, then its data set if any, as
    /// PDVs of presentation context `context_id`, one PDV per P-DATA-TF, each PDU no longer
    /// than `peer_max_pdu` (0 = unlimited: one PDV each), the last fragment of each flagged
    /// last (PS3.8 annex E.2; a PDV item's length counts its 2 header bytes, so each fragment
    /// carries 6 bytes of PDU header and 6 of PDV item header).
    ///
    /// The data set is given as segments, in order: they are written from where they are
    /// with writev, never copied, whatever the size; a small message goes out in one
    /// system call, command and data set together.
    pub async fn write_message(
        &mut self,
        context_id: u8,
        command: &[u8],
        dataset: Option<&[&[u8]]>,
        peer_max_pdu: u32,
    ) -> io::Result<()> {
        self.write_pdvs(context_id, Some(command), dataset.map(|d| (d, true)), peer_max_pdu).await
    }

    /// Sends a message whose data set is to continue (`write_data`): its command set and
    /// the data set's first segments, none flagged last.
    pub async fn write_message_start(
        &mut self,
        context_id: u8,
        command: &[u8],
        first: &[&[u8]],
        peer_max_pdu: u32,
    ) -> io::Result<()> {
        self.write_pdvs(context_id, Some(command), Some((first, false)), peer_max_pdu).await
    }

    /// Sends more of a data set begun with `write_message_start`; `last` flags its end.
    pub async fn write_data(
        &mut self,
        context_id: u8,
        data: &[&[u8]],
        last: bool,
        peer_max_pdu: u32,
    ) -> io::Result<()> {
        self.write_pdvs(context_id, None, Some((data, last)), peer_max_pdu).await
    }

    /// The command set (whole) and data set segments (ending the data set or not) as
    /// P-DATA-TF PDUs, in one writev when the socket takes them.
    async fn write_pdvs(
        &mut self,
        context_id: u8,
        command: Option<&[u8]>,
        dataset: Option<(&[&[u8]], bool)>,
        peer_max_pdu: u32,
    ) -> io::Result<()> {
        // 12 bytes is the smallest PDU that carries any data; a peer asking for less is ignored.
        let max_fragment = match peer_max_pdu {
            0 => u32::MAX as usize - codec::PDATA_HEADER_LEN,
            n => (n as usize).max(12) - 6,
        };
        let mut headers = Vec::new();
        let mut pieces = Vec::new();
        if let Some(command) = command {
            fragment(&[command], true, true, context_id, max_fragment, &mut headers, &mut pieces);
        }
        if let Some((dataset, ends)) = dataset {
            fragment(dataset, false, ends, context_id, max_fragment, &mut headers, &mut pieces);
        }
        let mut slices: Vec<IoSlice<'_>> = pieces
            .iter()
            .map(|piece| match *piece {
                Piece::Header(i) => IoSlice::new(&headers[i]),
                Piece::Data(data) => IoSlice::new(data),
            })
            .collect();
        self.acknowledge_next_read = true;
        let Connection { stream, write_timeout, write_unfinished, .. } = self;
        bounded_write(*write_timeout, write_unfinished, async {
            write_all_vectored(stream, &mut slices).await?;
            stream.flush().await
        })
        .await
    }

    /// Closes the transport. After an unfinished write the peer is not reading: the
    /// connection is reset, dropping what it never took; otherwise our sending side is shut
    /// down so that the peer sees the end of the stream, within the write timeout (a TLS
    /// stream writes there).
    pub async fn close(&mut self) {
        if self.write_unfinished {
            self.stream.reset_on_close();
            return;
        }
        // The peer may already be gone; there is nothing to do about a failure here.
        if tokio::time::timeout(self.write_timeout, self.stream.shutdown()).await.is_err() {
            self.stream.reset_on_close();
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

/// One slice of a message to write: a P-DATA-TF header (an index into the headers) or data.
enum Piece<'a> {
    Header(usize),
    Data(&'a [u8]),
}

/// Cuts `segments` (one command set or data set, or a part of a data set) into fragments of
/// at most `max_fragment` bytes, appending each fragment's P-DATA-TF header and its data
/// slices to `pieces`; the last fragment is flagged last when `ends`.
fn fragment<'a>(
    segments: &[&'a [u8]],
    is_command: bool,
    ends: bool,
    context_id: u8,
    max_fragment: usize,
    headers: &mut Vec<[u8; codec::PDATA_HEADER_LEN]>,
    pieces: &mut Vec<Piece<'a>>,
) {
    let mut remaining: usize = segments.iter().map(|s| s.len()).sum();
    let mut segments = segments.iter().copied().filter(|s| !s.is_empty());
    let mut current: &[u8] = &[];
    loop {
        let len = remaining.min(max_fragment);
        remaining -= len;
        // `len` fits: max_fragment is below u32::MAX less the headers.
        headers.push(codec::pdata_header(context_id, is_command, ends && remaining == 0, len as u32));
        pieces.push(Piece::Header(headers.len() - 1));
        let mut needed = len;
        while needed > 0 {
            if current.is_empty() {
                current = segments.next().expect("the segments hold `remaining` bytes");
            }
            let (now, later) = current.split_at(needed.min(current.len()));
            pieces.push(Piece::Data(now));
            needed -= now.len();
            current = later;
        }
        if remaining == 0 {
            return;
        }
    }
}

/// Runs one write under `timeout`, keeping `unfinished` set unless it completes. A write
/// after an unfinished one is refused: the peer would read it as the rest of the earlier PDU.
///
/// Cost: a timer per write is a clock read and a struct, registered with the runtime only if
/// the write has to wait (tokio polls the write first); writes that fit the socket buffer,
/// nearly all of them, never touch the timer wheel.
async fn bounded_write(
    timeout: Duration,
    unfinished: &mut bool,
    write: impl Future<Output = io::Result<()>>,
) -> io::Result<()> {
    if *unfinished {
        return Err(io::Error::new(io::ErrorKind::BrokenPipe, "an earlier write to this peer did not finish"));
    }
    *unfinished = true;
    let result = match tokio::time::timeout(timeout, write).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer took nothing for {:.1} s (write timeout)", timeout.as_secs_f64()),
        )),
    };
    *unfinished = result.is_err();
    result
}

/// Most slices one writev takes (IOV_MAX on Linux).
const MAX_SLICES_PER_WRITE: usize = 1024;

/// Writes every slice, as few writev calls as the kernel allows.
async fn write_all_vectored<S: AsyncWrite + Unpin>(stream: &mut S, mut slices: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !slices.is_empty() {
        let n = stream.write_vectored(&slices[..slices.len().min(MAX_SLICES_PER_WRITE)]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, n);
    }
    Ok(())
}
