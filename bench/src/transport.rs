//! `--transport`: the benchmark's non-blocking client side of each transport,
//! over the mio sockets its drivers already use.
//!
//! [`Dial`] says where and how to connect (from `GET /v1/endpoints`);
//! [`ClientStream`] is one connection: raw TCP, TLS 1.3 (rustls, the
//! certificate pinned by the fingerprint natterd serves) or WebSocket (the
//! upgrade written and checked here, then tungstenite's frame codec; each
//! size-prefixed frame the driver queues leaves as one binary message) or
//! QUIC (quinn-proto over a non-blocking UDP socket per connection, one
//! bidirectional stream, driven inline by reads, writes and
//! [`ClientStream::on_timer`]). Its
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
    /// QUIC (UDP).
    Quic,
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
    /// Opens a connection from the next source address of `sources` (TCP
    /// connects start; a QUIC connection sends its first flight).
    ///
    /// # Errors
    /// Why no connection could be started.
    pub(crate) fn open(&self, sources: &mut crate::sockets::Sources) -> Result<ClientStream, String> {
        if self.kind == Kind::Quic {
            return Quic::open(self, sources.next()).map(|q| ClientStream::Quic(Box::new(q)));
        }
        let tcp = crate::sockets::connect_from(sources, self.addr)?;
        self.wrap(tcp).map_err(|e| format!("transport: {e}"))
    }

    /// The endpoint of `kind` that `target` serves.
    ///
    /// # Errors
    /// [`BenchError::Setup`] when natterd does not serve that transport.
    pub(crate) fn new(target: &Target, kind: Kind) -> Result<Dial, BenchError> {
        let scheme = match kind {
            Kind::Tcp => "tcp",
            Kind::Tls => "tls",
            Kind::Ws => "ws",
            Kind::Quic => "quic",
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
            (Kind::Quic, _) => format!("quic://{}", self.addr),
        }
    }

    /// Which transport this dial speaks.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// A quinn-proto client configuration for this dial's QUIC endpoint: the
    /// pinned certificate, ALPN `natter/1` and `transport`'s limits.
    ///
    /// # Errors
    /// When the dial carries no TLS configuration (not a QUIC dial) or rustls'
    /// configuration cannot carry QUIC.
    pub(crate) fn quic_client_config(
        &self,
        transport: quinn_proto::TransportConfig,
    ) -> Result<quinn_proto::ClientConfig, String> {
        let tls = self.tls.clone().ok_or("no TLS configuration for QUIC")?;
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![natter_client::QUIC_ALPN.to_vec()];
        let crypto =
            quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
        let mut config = quinn_proto::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        Ok(config)
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
            Kind::Quic => return Err(io::Error::other("QUIC does not run over a TCP socket")),
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
    /// QUIC.
    Quic(Box<Quic>),
}

impl ClientStream {
    /// The socket underneath (to register, and to see the connect finish).
    ///
    /// # Panics
    /// On QUIC, which has no TCP socket (use [`ClientStream::source`]).
    pub(crate) fn tcp(&mut self) -> &mut TcpStream {
        match self {
            ClientStream::Tcp(s) => s,
            ClientStream::Tls(s) => &mut s.tcp,
            ClientStream::Ws(s) => s.inner.tcp(),
            ClientStream::Quic(_) => unreachable!("QUIC connections have no TCP socket"),
        }
    }

    /// The socket to register with mio (TCP, or QUIC's UDP socket).
    pub(crate) fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            ClientStream::Quic(q) => &mut q.socket,
            other => other.tcp(),
        }
    }

    /// Whether the connect finished (TCP: the socket is connected; QUIC: at
    /// once, the handshake runs in reads and writes).
    ///
    /// # Errors
    /// The connect failed.
    pub(crate) fn connected(&mut self) -> io::Result<bool> {
        if let ClientStream::Quic(_) = self {
            return Ok(true);
        }
        let tcp = self.tcp();
        if let Some(e) = tcp.take_error()? {
            return Err(e);
        }
        match tcp.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// QUIC: when its next timer (acknowledgement delay, loss detection,
    /// idle) is due; `None` for the others.
    pub(crate) fn next_timeout(&mut self) -> Option<std::time::Instant> {
        match self {
            ClientStream::Quic(q) => q.conn.poll_timeout(),
            _ => None,
        }
    }

    /// QUIC: whether the connection is gone (natterd closed it, or it timed
    /// out), seen without reading the stream; `false` for the others, whose
    /// close shows as a readiness event on the socket.
    pub(crate) fn closed(&self) -> bool {
        matches!(self, ClientStream::Quic(q) if q.lost)
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
            ClientStream::Quic(q) => q.pump(),
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
            ClientStream::Quic(q) => q.read(buf),
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
            ClientStream::Quic(q) => q.write(buf),
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

/// A non-blocking QUIC client connection: its own UDP socket and quinn-proto
/// endpoint, one bidirectional stream. Every read, write and flush first
/// takes the datagrams waiting on the socket and fires a due timer, and
/// afterwards sends what quinn-proto has to send.
pub(crate) struct Quic {
    socket: mio::net::UdpSocket,
    endpoint: quinn_proto::Endpoint,
    conn: quinn_proto::Connection,
    ch: quinn_proto::ConnectionHandle,
    stream: Option<quinn_proto::StreamId>,
    recv: Vec<u8>,
    send: Vec<u8>,
    lost: bool,
}

impl Drop for Quic {
    /// Closes the connection (one CONNECTION_CLOSE, best effort), as dropping a
    /// TCP socket sends its FIN: natterd then ends the session at once instead
    /// of at its idle or heartbeat timeout (presence would see it late).
    fn drop(&mut self) {
        if !self.lost {
            self.conn.close(
                std::time::Instant::now(),
                quinn_proto::VarInt::from_u32(0),
                Bytes::new(),
            );
            let _ = self.transmit();
        }
    }
}

impl std::fmt::Debug for Quic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quic").field("stream", &self.stream).finish()
    }
}

impl Quic {
    fn open(dial: &Dial, source: Option<std::net::SocketAddrV4>) -> Result<Quic, String> {
        let mut transport = quinn_proto::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(quinn_proto::VarInt::from_u32(0))
            .max_concurrent_uni_streams(quinn_proto::VarInt::from_u32(0))
            .datagram_receive_buffer_size(None);
        let config = dial.quic_client_config(transport)?;
        let local: SocketAddr = match source {
            Some(s) => SocketAddr::V4(s),
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let socket = mio::net::UdpSocket::bind(local)
            .or_else(|_| mio::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
            .map_err(|e| format!("bind: {e}"))?;
        let mut endpoint =
            quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, true, None);
        let (ch, conn) = endpoint
            .connect(
                std::time::Instant::now(),
                config,
                dial.addr,
                &dial.addr.ip().to_string(),
            )
            .map_err(|e| format!("connect: {e}"))?;
        let mut q = Quic {
            socket,
            endpoint,
            conn,
            ch,
            stream: None,
            recv: vec![0; 64 * 1024],
            send: Vec::new(),
            lost: false,
        };
        q.pump().map_err(|e| format!("send: {e}"))?;
        Ok(q)
    }

    /// Takes waiting datagrams, fires a due timer, sends what is due.
    fn pump(&mut self) -> io::Result<()> {
        loop {
            match self.socket.recv_from(&mut self.recv) {
                Ok((n, from)) => {
                    let data = bytes::BytesMut::from(self.recv.get(..n).unwrap_or_default());
                    self.send.clear();
                    match self.endpoint.handle(
                        std::time::Instant::now(),
                        from,
                        None,
                        None,
                        data,
                        &mut self.send,
                    ) {
                        Some(quinn_proto::DatagramEvent::ConnectionEvent(_, event)) => {
                            self.conn.handle_event(event)
                        }
                        Some(quinn_proto::DatagramEvent::Response(t)) => {
                            let _ = self
                                .socket
                                .send_to(self.send.get(..t.size).unwrap_or_default(), t.destination);
                        }
                        Some(quinn_proto::DatagramEvent::NewConnection(incoming)) => {
                            self.endpoint.ignore(incoming)
                        }
                        None => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                Err(e) => return Err(e),
            }
        }
        let now = std::time::Instant::now();
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        self.transmit()
    }

    fn transmit(&mut self) -> io::Result<()> {
        loop {
            while let Some(event) = self.conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(self.ch, event) {
                    self.conn.handle_event(back);
                }
            }
            self.send.clear();
            let Some(t) = self
                .conn
                .poll_transmit(std::time::Instant::now(), 1, &mut self.send)
            else {
                break;
            };
            match self
                .socket
                .send_to(self.send.get(..t.size).unwrap_or_default(), t.destination)
            {
                Ok(_) => {}
                // Lost like any datagram: QUIC retransmits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
        while let Some(event) = self.conn.poll() {
            match event {
                quinn_proto::Event::Connected if self.stream.is_none() => {
                    self.stream = self.conn.streams().open(quinn_proto::Dir::Bi);
                }
                quinn_proto::Event::ConnectionLost { .. } => self.lost = true,
                _ => {}
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.pump()?;
        let Some(id) = self.stream else {
            return Err(if self.lost {
                io::ErrorKind::ConnectionReset.into()
            } else {
                io::ErrorKind::WouldBlock.into()
            });
        };
        let mut filled = 0;
        let mut ended = false;
        {
            let mut recv = self.conn.recv_stream(id);
            match recv.read(true) {
                Ok(mut chunks) => {
                    while filled < buf.len() {
                        match chunks.next(buf.len() - filled) {
                            Ok(Some(chunk)) => {
                                let n = chunk.bytes.len();
                                if let Some(dst) = buf.get_mut(filled..filled + n) {
                                    dst.copy_from_slice(&chunk.bytes);
                                }
                                filled += n;
                            }
                            Ok(None) | Err(quinn_proto::ReadError::Reset(_)) => {
                                ended = true;
                                break;
                            }
                            Err(quinn_proto::ReadError::Blocked) => break,
                        }
                    }
                    let _ = chunks.finalize();
                }
                Err(_) => ended = true,
            }
        }
        if filled > 0 {
            self.transmit()?;
            return Ok(filled);
        }
        if ended || self.lost {
            return Ok(0);
        }
        Err(io::ErrorKind::WouldBlock.into())
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pump()?;
        let Some(id) = self.stream else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        match self.conn.send_stream(id).write(buf) {
            Ok(n) => {
                self.transmit()?;
                Ok(n)
            }
            Err(quinn_proto::WriteError::Blocked) => Err(io::ErrorKind::WouldBlock.into()),
            Err(_) => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
}
