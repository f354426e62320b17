//! Transports: how client bytes reach the cores. This folder owns the seam
//! between the per-core loop (`runtime/worker.rs`) and the wire: a [`Stream`]
//! is "a byte stream of size-prefixed frames belonging to one connection",
//! whatever carries it.
//!
//! * `tcp.rs` — raw TCP: listeners (`SO_REUSEPORT`, one per core) and the
//!   vectored write every transport ends in.
//! * `tls.rs` — TLS 1.3 over TCP (rustls, ring): the server configuration,
//!   the certificate (given, or self-signed and kept in the data dir) and its
//!   fingerprint, and [`tls::TlsStream`], rustls driven non-blocking.
//! * `ws.rs` — WebSocket (RFC 6455, tungstenite's frame codec) over TCP or
//!   TLS: the HTTP upgrade (parsed here, bounded), one binary message = one
//!   frame, clear close codes for everything else.
//! * `quic.rs` — QUIC (quinn-proto driven by the cores' loops over UDP): one
//!   bidirectional stream per session carrying the same framing as TCP;
//!   connection IDs that name their core, datagrams forwarded between cores.
//! * `quic_keys.rs` — QUIC's cipher suites with packet and record keys
//!   expanded on first use, so an idle connection does not carry unused keys.
//!
//! The worker sees only [`Stream`]'s five operations; it keeps the outbound
//! queue, the limits, backpressure and slow-consumer handling itself, so they
//! are the same on every transport. The sans-IO core never learns the
//! transport: it gets frame bytes and returns frames.

pub mod quic;
pub mod quic_keys;
pub mod tcp;
pub mod tls;
pub mod ws;

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;

/// Replaces `buf` with an unallocated buffer once it holds no bytes, so an
/// idle connection keeps no read memory. Checking `capacity() > 0` is not
/// enough: a buffer whose bytes were all split off (a frame that filled the
/// read exactly) or advanced past reports capacity 0 yet still owns, or
/// shares with the split-off frame, the allocation it was read into — which
/// kept ~200 bytes alive per idle connection.
pub(crate) fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

/// Which transport a listener (and every connection it accepts) speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Raw size-prefixed frames on TCP.
    Tcp,
    /// The same frames inside TLS 1.3.
    Tls,
    /// One frame per binary WebSocket message (plain, or over TLS with `--ws-tls`).
    Ws,
    /// The same frames on one bidirectional QUIC stream (UDP).
    Quic,
}

impl Kind {
    /// Every kind served by TCP listeners, in the order they are bound and
    /// listed (QUIC has UDP sockets of its own, `quic.rs`).
    pub const ALL: [Kind; 3] = [Kind::Tcp, Kind::Tls, Kind::Ws];

    /// The lowercase name used in logs, metrics and URLs (`tcp`, `tls`, `ws`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Ws => "ws",
            Kind::Quic => "quic",
        }
    }
}

/// One connection's transport: what the worker reads frame bytes from and
/// writes frames to. Static dispatch over the transports (an enum, not a trait
/// object): the raw TCP path stays as fast as before the seam.
#[derive(Debug)]
pub enum Stream {
    /// Raw TCP.
    Tcp(TcpStream),
    /// TLS over TCP.
    Tls(Box<tls::TlsStream>),
    /// WebSocket over TCP or TLS.
    Ws(Box<ws::WsStream>),
    /// A QUIC connection's stream (no socket of its own: its core's UDP
    /// socket and `quic::QuicDriver` move its datagrams).
    Quic(Box<quic::QuicConn>),
}

impl Stream {
    /// The socket underneath, to register with mio and to shut down; `None`
    /// for QUIC, whose readiness comes from its core's QUIC driver.
    pub fn tcp(&mut self) -> Option<&mut TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Tls(s) => Some(s.tcp()),
            Stream::Ws(s) => Some(s.tcp()),
            Stream::Quic(_) => None,
        }
    }

    /// For QUIC: whether the stream was read or written since the last call,
    /// so its connection must be driven (transmits may be due). Always false
    /// for the socket transports.
    pub fn take_dirty(&mut self) -> bool {
        match self {
            Stream::Quic(q) => q.take_dirty(),
            _ => false,
        }
    }

    /// Reads frame bytes (transport framing, records and handshakes removed)
    /// into `buf`, like [`io::Read::read`]: `Ok(0)` means the peer closed,
    /// `WouldBlock` that nothing more is there until the next readiness.
    ///
    /// # Errors
    /// `WouldBlock` as said; any other error means the connection is unusable
    /// (the peer misbehaved: a TLS alert or a WebSocket close code has been
    /// queued where the transport has one).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => io::Read::read(s, buf),
            Stream::Tls(s) => io::Read::read(&mut **s, buf),
            Stream::Ws(s) => s.read(buf),
            Stream::Quic(q) => q.read(buf),
        }
    }

    /// Writes frames from the front of `frames`, removing what was taken (the
    /// front may be left partly written on byte-stream transports; a WebSocket
    /// takes whole frames only). Returns the bytes taken.
    ///
    /// # Errors
    /// `WouldBlock` when nothing could be taken (the socket, and the
    /// transport's own bounded buffer, are full); anything else: closed.
    pub fn write_frames(&mut self, frames: &mut VecDeque<Bytes>) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => tcp::write_frames(s, frames),
            Stream::Tls(s) => tcp::write_frames(&mut **s, frames),
            Stream::Ws(s) => s.write_frames(frames),
            Stream::Quic(q) => q.write_frames(frames),
        }
    }

    /// Pushes bytes the transport holds itself (TLS records, WebSocket frame
    /// headers, a handshake answer) to the socket.
    ///
    /// # Errors
    /// `WouldBlock` while some are left (try again when writable); anything
    /// else: closed.
    pub fn flush_buffered(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(_) | Stream::Quic(_) => Ok(()),
            Stream::Tls(s) => s.flush_buffered(),
            Stream::Ws(s) => s.flush_buffered(),
        }
    }

    /// Starts the transport's own goodbye after the last frame: TLS
    /// `close_notify`, a WebSocket Close (1000, or the code the transport
    /// already chose). Idempotent; follow with [`Stream::flush_buffered`].
    pub fn start_close(&mut self) {
        match self {
            Stream::Tcp(_) => {}
            Stream::Tls(s) => s.start_close(),
            Stream::Ws(s) => s.start_close(),
            Stream::Quic(q) => q.start_close(),
        }
    }

    /// False while a TLS handshake or a WebSocket upgrade is still under way,
    /// and once a WebSocket Close was sent: frames written to it now would
    /// never be read, so a close at this point drops them and only says
    /// goodbye.
    pub fn established(&self) -> bool {
        match self {
            Stream::Tcp(_) => true,
            Stream::Tls(s) => !s.is_handshaking(),
            Stream::Ws(s) => s.is_open() && !s.is_closing(),
            Stream::Quic(q) => q.established(),
        }
    }
}

/// What turns an accepted socket into a [`Stream`] of its listener's kind;
/// one per natterd, shared by the cores.
#[derive(Debug)]
pub struct Acceptor {
    /// The TLS configuration (for `tls` listeners, and `ws` with `--ws-tls`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What WebSocket connections share.
    pub ws: Arc<ws::WsSettings>,
    /// `--ws-tls`: WebSocket listeners speak TLS first (`wss://`).
    pub ws_tls: bool,
}

impl Acceptor {
    /// Wraps a socket accepted on a `kind` listener (no I/O happens here: the
    /// handshake, if any, is driven by reads and writes).
    ///
    /// # Errors
    /// When TLS is needed but not configured, or rustls cannot start.
    pub fn wrap(&self, kind: Kind, tcp: TcpStream) -> io::Result<Stream> {
        let tls = |tcp| match &self.tls {
            Some(config) => tls::TlsStream::new(tcp, config.clone()),
            None => Err(io::Error::other("TLS is not configured")),
        };
        Ok(match kind {
            Kind::Tcp => Stream::Tcp(tcp),
            Kind::Tls => Stream::Tls(Box::new(tls(tcp)?)),
            Kind::Ws if self.ws_tls => Stream::Ws(Box::new(ws::WsStream::new(
                ws::ByteStream::Tls(Box::new(tls(tcp)?)),
                self.ws.clone(),
            ))),
            Kind::Ws => Stream::Ws(Box::new(ws::WsStream::new(
                ws::ByteStream::Plain(tcp),
                self.ws.clone(),
            ))),
            Kind::Quic => {
                return Err(io::Error::other(
                    "QUIC connections do not come from a TCP listener",
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Buf;

    use super::*;

    #[test]
    fn an_emptied_read_buffer_lets_go_of_its_allocation() {
        // A read into a fresh buffer, as the worker does it: the allocation is
        // exactly as large as the frame, which is then split off whole.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[7u8; 160]);
        let frame = buf.split_to(160).freeze();
        assert_eq!(buf.capacity(), 0);
        assert!(
            !frame.is_unique(),
            "the empty buffer still shares the frame's allocation"
        );
        release_if_empty(&mut buf);
        assert!(
            frame.is_unique(),
            "nothing but the frame holds the allocation any more"
        );
        assert_eq!(buf.capacity(), 0);

        // Bytes still waiting are kept, with their allocation.
        let mut partial = BytesMut::new();
        partial.extend_from_slice(b"half a frame");
        partial.advance(5);
        release_if_empty(&mut partial);
        assert_eq!(&partial[..], b"a frame");
    }
}
