//! A framed upper-layer connection: reads whole PDUs from a byte stream and writes PDUs to it,
//! with the codec doing the parsing (the shape of mini-redis's `Connection`).

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, CodecError, MAX_CONTROL_PDU_LEN};
use super::pdu::{Pdu, Pdv};

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
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// `read_capacity`: initial read buffer size; it grows to the largest PDU received.
    pub fn new(stream: S, read_capacity: usize) -> Self {
        Connection {
            stream,
            read_buf: BytesMut::with_capacity(read_capacity),
            write_buf: BytesMut::with_capacity(4096),
            max_pdata_len: MAX_CONTROL_PDU_LEN,
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
        }
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
        self.stream.write_all(&self.write_buf).await?;
        self.stream.flush().await
    }

    /// Sends a command set in as many P-DATA-TF PDUs as the peer's maximum length needs
    /// (PS3.8 §9.3.5: a PDV item's length counts its 2 header bytes; 6 bytes of PDV item
    /// header go with each fragment).
    pub async fn write_command(&mut self, context_id: u8, command: &[u8], peer_max_pdu: u32) -> io::Result<()> {
        self.write_fragmented(context_id, true, command, peer_max_pdu).await
    }

    /// Sends a command set (`is_command`) or a data set as PDVs of one presentation context,
    /// one PDV per P-DATA-TF, each PDU no longer than `peer_max_pdu` (0 = unlimited: one PDV),
    /// the last one flagged last (PS3.8 annex E.2).
    pub async fn write_fragmented(
        &mut self,
        context_id: u8,
        is_command: bool,
        data: &[u8],
        peer_max_pdu: u32,
    ) -> io::Result<()> {
        // 12 bytes is the smallest PDU that carries any data; a peer asking for less is ignored.
        let max_fragment = match peer_max_pdu {
            0 => data.len().max(1),
            n => (n as usize).max(12) - 6,
        };
        if data.is_empty() {
            let pdv = Pdv { context_id, is_command, is_last: true, data: bytes::Bytes::new() };
            return self.write_pdu(&Pdu::PData(vec![pdv])).await;
        }
        let mut chunks = data.chunks(max_fragment).peekable();
        while let Some(chunk) = chunks.next() {
            let pdv = Pdv {
                context_id,
                is_command,
                is_last: chunks.peek().is_none(),
                data: bytes::Bytes::copy_from_slice(chunk),
            };
            self.write_pdu(&Pdu::PData(vec![pdv])).await?;
        }
        Ok(())
    }

    /// Closes our sending side so the peer sees the end of the stream.
    pub async fn shutdown(&mut self) {
        // The peer may already be gone; there is nothing to do about a failure here.
        let _ = self.stream.shutdown().await;
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}
