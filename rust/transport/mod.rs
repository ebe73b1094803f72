//! The byte stream under the upper layer: TCP (PS3.8 §9.1) or TLS over TCP (PS3.15 annex B).
//! One enum rather than a type parameter on everything above it: the handler and the SCU stay
//! one type each, and the TCP socket stays reachable (`tcp`) for socket options whichever
//! it is.

pub mod stream;
pub mod tls;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;

pub use stream::ByteStream;

/// Bytes read from the socket at once under TLS. rustls reads 4 KiB per call: a 512 KiB CT
/// slice would take 128 read syscalls, which cost more than copying it once more.
const TLS_READ_BUFFER: usize = 64 * 1024;

/// What TLS runs over: the socket, read through a buffer (writes pass straight through).
pub type TlsSocket = BufReader<TcpStream>;

/// A connection's byte stream.
pub enum Transport {
    Plain(TcpStream),
    /// Boxed: a TLS session is a few KiB, a TcpStream a few words.
    Tls(Box<tokio_rustls::TlsStream<TlsSocket>>),
}

impl Transport {
    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.get_ref().0.get_ref(),
        }
    }

    /// The TCP socket as TLS runs over it.
    pub fn tls_socket(tcp: TcpStream) -> TlsSocket {
        BufReader::with_capacity(TLS_READ_BUFFER, tcp)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The subject of the certificate the peer presented (RFC 4514 form), or "" when it
    /// presented none or the transport is plain TCP.
    pub fn peer_certificate_subject(&self) -> String {
        let Transport::Tls(tls) = self else { return String::new() };
        let certificates = tls.get_ref().1.peer_certificates();
        certificates.and_then(|chain| chain.first()).map(tls::subject).unwrap_or_default()
    }
}

impl AsyncRead for Transport {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(tcp) => tcp.is_write_vectored(),
            Transport::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    /// On TLS, sends close_notify before closing our side (RFC 8446 §6.1).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Transport::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
