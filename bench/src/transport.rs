//! `--transport`: the benchmark's non-blocking client side of each transport,
//! over the mio sockets its drivers already use.
//!
//! [`Dial`] says where and how to connect (from `GET /v1/endpoints`);
//! [`ClientStream`] is one connection: raw TCP, TLS 1.3 (rustls, the
//! certificate pinned by the fingerprint natterd serves) or WebSocket (the
//! upgrade written and checked here, then tungstenite's frame codec; each
//! size-prefixed frame the driver queues leaves as one binary message). Its
//! `read` yields frame bytes and its `write` takes frame bytes, so a driver
//! keeps its own buffers and framing whatever the transport.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use mio::net::TcpStream;
use natter_client::{Trust, tls_client_config};
use rustls::ClientConnection;
use rustls::pki_types::ServerName;
use tungstenite::Message;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::error::BenchError;
use crate::target::Target;

/// Largest upgrade answer read before the WebSocket is open.
const MAX_UPGRADE_ANSWER: usize = 4096;
/// Largest message accepted from natterd: its largest configurable frame.
const MAX_MESSAGE: usize = 16 << 20;
/// Bytes tungstenite gathers before writing (a window of sends leaves at once).
const WS_WRITE_BUFFER: usize = 64 * 1024;

/// The transports `--transport` names that natter-bench drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Raw TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// WebSocket (over TLS when natterd runs `--ws-tls`).
    Ws,
}

/// Where and how a driver connects.
#[derive(Clone, Debug)]
pub(crate) struct Dial {
    /// The listener's address.
    pub(crate) addr: SocketAddr,
    kind: Kind,
    /// The WebSocket listener speaks TLS (`wss://`).
    ws_tls: bool,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dial {
    /// The endpoint of `kind` that `target` serves.
    ///
    /// # Errors
    /// [`BenchError::Setup`] when natterd does not serve that transport.
    pub(crate) fn new(target: &Target, kind: Kind) -> Result<Dial, BenchError> {
        let scheme = match kind {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Ws => "ws",
        };
        let url = target
            .urls
            .iter()
            .find(|u| u.starts_with(&format!("{scheme}://")) || (kind == Kind::Ws && u.starts_with("wss://")))
            .ok_or_else(|| {
                BenchError::Setup(format!("natterd serves no {scheme} endpoint: {:?}", target.urls))
            })?;
        let endpoint = natter_client::Endpoint::parse(url).map_err(|e| BenchError::Setup(e.to_string()))?;
        let addr = SocketAddr::new(
            endpoint
                .host
                .parse()
                .map_err(|_| BenchError::Setup(format!("{url}: not an IP address")))?,
            endpoint.port,
        );
        let ws_tls = endpoint.scheme == natter_client::Scheme::Wss;
        let tls = if endpoint.scheme.uses_tls() {
            let pin = target.cert_sha256.clone().ok_or_else(|| {
                BenchError::Setup("natterd serves TLS but no certificate fingerprint".into())
            })?;
            Some(tls_client_config(&Trust::Fingerprint(pin)).map_err(|e| BenchError::Setup(e.to_string()))?)
        } else {
            None
        };
        Ok(Dial {
            addr,
            kind,
            ws_tls,
            tls,
        })
    }

    /// The endpoint URL (for [`natter_client::Connection::connect_url`]).
    pub(crate) fn url(&self) -> String {
        match (self.kind, self.ws_tls) {
            (Kind::Tcp, _) => format!("tcp://{}", self.addr),
            (Kind::Tls, _) => format!("tls://{}", self.addr),
            (Kind::Ws, false) => format!("ws://{}/", self.addr),
            (Kind::Ws, true) => format!("wss://{}/", self.addr),
        }
    }

    /// A dial of natterd's raw TCP port (for scenarios that speak TCP only).
    pub(crate) fn tcp(addr: SocketAddr) -> Dial {
        Dial {
            addr,
            kind: Kind::Tcp,
            ws_tls: false,
            tls: None,
        }
    }

    /// Wraps a socket (connecting or connected) to this dial's listener.
    ///
    /// # Errors
    /// When rustls cannot start a connection.
    pub(crate) fn wrap(&self, tcp: TcpStream) -> io::Result<ClientStream> {
        let tls = |tcp| -> io::Result<Tls> {
            let config = self
                .tls
                .clone()
                .ok_or_else(|| io::Error::other("no TLS configuration"))?;
            let name = ServerName::IpAddress(self.addr.ip().into());
            Ok(Tls {
                tcp,
                tls: ClientConnection::new(config, name).map_err(io::Error::other)?,
            })
        };
        Ok(match self.kind {
            Kind::Tcp => ClientStream::Tcp(tcp),
            Kind::Tls => ClientStream::Tls(Box::new(tls(tcp)?)),
            Kind::Ws => {
                let inner = if self.ws_tls {
                    Plain::Tls(Box::new(tls(tcp)?))
                } else {
                    Plain::Tcp(tcp)
                };
                ClientStream::Ws(Box::new(Ws::new(inner, self.addr)))
            }
        })
    }
}

/// One benchmark connection.
#[derive(Debug)]
pub(crate) enum ClientStream {
    /// Raw TCP.
    Tcp(TcpStream),
    /// TLS.
    Tls(Box<Tls>),
    /// WebSocket.
    Ws(Box<Ws>),
}

impl ClientStream {
    /// The socket underneath (to register, and to see the connect finish).
    pub(crate) fn tcp(&mut self) -> &mut TcpStream {
        match self {
            ClientStream::Tcp(s) => s,
            ClientStream::Tls(s) => &mut s.tcp,
            ClientStream::Ws(s) => s.inner.tcp(),
        }
    }

    /// True for raw TCP: a short read means the socket is drained (on TLS and
    /// WebSocket one read returns one record's or message's bytes).
    pub(crate) fn is_raw(&self) -> bool {
        matches!(self, ClientStream::Tcp(_))
    }

    /// Pushes what the transport holds itself (records, frames, the upgrade).
    ///
    /// # Errors
    /// Any error but `WouldBlock` (which is not one here).
    pub(crate) fn flush_buffered(&mut self) -> io::Result<()> {
        let result = match self {
            ClientStream::Tcp(_) => Ok(()),
            ClientStream::Tls(s) => s.push(),
            ClientStream::Ws(s) => s.flush_buffered(),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.read(buf),
            ClientStream::Tls(s) => s.read(buf),
            ClientStream::Ws(s) => s.read(buf),
        }
    }
}

impl Write for ClientStream {
    /// Takes frame bytes; on WebSocket only whole frames (what it returns is a
    /// sum of whole frames, and `WouldBlock` until one is whole and fits).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientStream::Tcp(s) => s.write(buf),
            ClientStream::Tls(s) => s.write(buf),
            ClientStream::Ws(s) => s.write_frames(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buffered()
    }
}

/// A non-blocking TLS client connection.
#[derive(Debug)]
pub(crate) struct Tls {
    tcp: TcpStream,
    tls: ClientConnection,
}

impl Tls {
    /// Writes pending records; `WouldBlock` is not an error here.
    fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Read for Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.tcp) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.tls
                .process_new_packets()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.push()?;
        }
    }
}

impl Write for Tls {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push()?;
        let n = self.tls.writer().write(buf)?;
        self.push()?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

/// The stream under a WebSocket.
#[derive(Debug)]
pub(crate) enum Plain {
    /// `ws://`.
    Tcp(TcpStream),
    /// `wss://`.
    Tls(Box<Tls>),
}

impl Plain {
    fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Plain::Tcp(s) => s,
            Plain::Tls(s) => &mut s.tcp,
        }
    }
}

impl Read for Plain {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Plain::Tcp(s) => s.read(buf),
            Plain::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Plain {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Plain::Tcp(s) => s.write(buf),
            Plain::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Plain::Tcp(_) => Ok(()),
            Plain::Tls(s) => s.push(),
        }
    }
}

/// A non-blocking WebSocket client: the upgrade, then one frame per message.
#[derive(Debug)]
pub(crate) struct Ws {
    inner: Plain,
    /// The upgrade request still to write.
    request: Bytes,
    /// The upgrade answer read so far (`None` once open).
    answer: Option<Vec<u8>>,
    ctx: WebSocketContext,
    /// The rest of the last message not yet handed to the reader.
    pending: Bytes,
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_write_buffer_size(WS_WRITE_BUFFER + MAX_MESSAGE)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

fn ws_error(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::ConnectionAborted.into()
        }
        e => io::Error::other(e),
    }
}

impl Ws {
    fn new(inner: Plain, addr: SocketAddr) -> Ws {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {}\r\n\r\n",
            tungstenite::handshake::client::generate_key()
        );
        Ws {
            inner,
            request: Bytes::from(request),
            answer: Some(Vec::new()),
            ctx: WebSocketContext::new(Role::Client, Some(ws_config())),
            pending: Bytes::new(),
        }
    }

    /// Writes the rest of the upgrade request.
    fn push_request(&mut self) -> io::Result<()> {
        while !self.request.is_empty() {
            match self.inner.write(&self.request) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.request.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.flush()
    }

    fn flush_buffered(&mut self) -> io::Result<()> {
        if self.answer.is_some() {
            return self.push_request();
        }
        self.ctx.flush(&mut self.inner).map_err(ws_error)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.answer.is_some() {
            match self.push_request() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let mut chunk = [0u8; 1024];
            let n = self.inner.read(&mut chunk)?;
            let Some(answer) = &mut self.answer else {
                break;
            };
            if n == 0 {
                return Ok(0);
            }
            answer.extend_from_slice(chunk.get(..n).unwrap_or_default());
            let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
                if answer.len() > MAX_UPGRADE_ANSWER {
                    return Err(io::Error::other("upgrade answer too long"));
                }
                continue;
            };
            if !answer.starts_with(b"HTTP/1.1 101") {
                let status = String::from_utf8_lossy(answer.get(..answer.len().min(40)).unwrap_or_default())
                    .into_owned();
                return Err(io::Error::other(format!("upgrade refused: {status}")));
            }
            let leftover = answer.get(end + 4..).unwrap_or_default().to_vec();
            self.ctx = WebSocketContext::from_partially_read(leftover, Role::Client, Some(ws_config()));
            self.answer = None;
        }
        // As many messages as fit (the driver then decodes many frames per read).
        let mut filled = 0;
        loop {
            if !self.pending.is_empty() {
                let rest = buf.get_mut(filled..).unwrap_or_default();
                let n = self.pending.len().min(rest.len());
                if let (Some(dst), Some(src)) = (rest.get_mut(..n), self.pending.get(..n)) {
                    dst.copy_from_slice(src);
                }
                self.pending.advance(n);
                filled += n;
                if filled == buf.len() {
                    return Ok(filled);
                }
                continue;
            }
            match self.ctx.read(&mut self.inner) {
                Ok(Message::Binary(b)) => self.pending = b,
                // The end (or an error) after gathered frames comes with the next read.
                Ok(Message::Close(_)) => return Ok(filled),
                Ok(Message::Text(_)) if filled == 0 => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a text message"));
                }
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(filled);
                }
                Err(_) if filled > 0 => return Ok(filled),
                Err(e) => return Err(ws_error(e)),
            }
        }
    }

    /// Sends the whole size-prefixed frames at the front of `buf`, one message
    /// each; returns the bytes of the frames taken.
    fn write_frames(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.answer.is_some() {
            self.push_request()?;
            // Frames wait until the upgrade is answered (the next read opens it).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut taken = 0;
        loop {
            let rest = buf.get(taken..).unwrap_or_default();
            let Some(prefix) = rest.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) else {
                break;
            };
            let len = 4 + u32::from_le_bytes(prefix) as usize;
            let Some(frame) = rest.get(..len) else {
                break;
            };
            match self
                .ctx
                .write(&mut self.inner, Message::Binary(Bytes::copy_from_slice(frame)))
            {
                Ok(()) => taken += len,
                Err(tungstenite::Error::WriteBufferFull(_)) => break,
                Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    taken += len;
                    break;
                }
                Err(e) => return Err(ws_error(e)),
            }
        }
        match self.ctx.flush(&mut self.inner) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(ws_error(e)),
        }
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }
}
