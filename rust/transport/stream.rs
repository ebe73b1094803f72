//! What the upper layer's framing (`ul::connection`) asks of its byte stream besides reading
//! and writing: the TCP socket options that decide how promptly bytes move and how a
//! connection ends. Implemented for the socket itself and for `Transport` (plain or TLS),
//! which reaches its socket.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::Transport;

/// A stream that carries PDUs.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin {
    /// Called after the first read that returns data after each of our writes: acknowledge
    /// at once what arrives, instead of delaying the acknowledgement.
    ///
    /// Why: a sender that leaves Nagle's algorithm on (Debian's dcmtk without TCP_NODELAY=1,
    /// Orthanc, many systems built on dcmtk) writes a PDU header and its body separately and
    /// holds the second write until the first is acknowledged. Once we have sent something
    /// (the A-ASSOCIATE-AC, a response), Linux treats the connection as interactive
    /// ("pingpong" mode) and delays that acknowledgement by up to 40 ms, hoping to carry it
    /// on our next answer, which only comes once the held bytes arrive: ~40 ms per message
    /// (300 small instances from such a storescu took 13.2 s instead of 0.07 s).
    /// TCP_QUICKACK leaves that mode and sends the pending acknowledgement at once; the mode
    /// comes back only with our next write (`man 7 tcp`: "not permanent"), hence once per
    /// write. Set right after a write instead, it loses the race with the peer's next bytes.
    /// Cost: one setsockopt (~0.6 us measured) per response, against the 40 ms it saves;
    /// none when the read after the response brings a whole request (`Connection::read_pdu`).
    fn acknowledge_promptly(&self);

    /// Makes closing the transport reset the connection (SO_LINGER 0) instead of the orderly
    /// FIN: for a peer that stopped reading, so that the bytes it never took are dropped at
    /// once rather than retried by the kernel for minutes.
    fn reset_on_close(&self);
}

impl ByteStream for TcpStream {
    fn acknowledge_promptly(&self) {
        // Failing only leaves the kernel's default in place (slower, still correct).
        let _ = quick_ack(self);
    }

    fn reset_on_close(&self) {
        // A failure leaves the orderly close, which the kernel bounds on its own.
        let _ = self.set_zero_linger();
    }
}

impl ByteStream for Transport {
    fn acknowledge_promptly(&self) {
        self.tcp().acknowledge_promptly();
    }

    fn reset_on_close(&self) {
        self.tcp().reset_on_close();
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn quick_ack(stream: &TcpStream) -> io::Result<()> {
    stream.set_quickack(true)
}

/// Other systems have no TCP_QUICKACK; their delayed acknowledgements stay as they are.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn quick_ack(_stream: &TcpStream) -> io::Result<()> {
    Ok(())
}
