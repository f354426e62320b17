//! QUIC for the blocking client: quinn-proto (the same sans-IO state
//! machine natterd drives) over one `std::net::UdpSocket`, driven inline by
//! the calling thread — no async runtime and no background thread, so the
//! client stays as simple to embed as its TCP path.
//!
//! A connection opens exactly one bidirectional stream (ALPN `natter/1`) and
//! carries the same size-prefixed frames as TCP on it. The server is trusted
//! by the same [`Trust`] as TLS (a pinned certificate fingerprint or a CA
//! file). [`QuicIo::rebind`] moves the connection to a new local UDP port
//! (connection migration), as a phone does when it changes networks.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::crypto::rustls::QuicClientConfig;
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, IdleTimeout,
    StreamId, TransportConfig, VarInt,
};

use crate::error::ClientError;
use crate::transport::{Trust, tls_client_config};

/// The ALPN protocol id natterd expects.
pub const ALPN: &[u8] = b"natter/1";
/// Largest UDP datagram read.
const RECV_BUF: usize = 64 * 1024;
/// Idle timeout the client proposes (the smaller of both sides' applies).
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// One QUIC connection with its one bidirectional stream.
pub(crate) struct QuicIo {
    socket: UdpSocket,
    endpoint: Endpoint,
    conn: quinn_proto::Connection,
    ch: ConnectionHandle,
    stream: Option<StreamId>,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
    connected: bool,
    lost: Option<String>,
    /// How long a blocked write waits for flow-control credit.
    write_timeout: Duration,
}

impl std::fmt::Debug for QuicIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicIo")
            .field("remote", &self.conn.remote_address())
            .field("connected", &self.connected)
            .finish()
    }
}

impl QuicIo {
    /// Connects to `addr` (certificate checked for `host` as `trust` says),
    /// completes the handshake and opens the stream, within `timeout`.
    pub(crate) fn open(
        addr: SocketAddr,
        host: &str,
        trust: &Trust,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let local: SocketAddr = match addr.ip() {
            IpAddr::V4(ip) if ip.is_loopback() => (ip, 0).into(),
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)?;
        Self::open_on(socket, addr, host, trust, timeout)
    }

    /// [`QuicIo::open`] on a socket the caller bound (e.g. to an explicit
    /// source address and port).
    pub(crate) fn open_on(
        socket: UdpSocket,
        addr: SocketAddr,
        host: &str,
        trust: &Trust,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
        let (ch, conn) = endpoint
            .connect(Instant::now(), client_config(trust)?, addr, host)
            .map_err(|e| handshake(e.to_string()))?;
        let mut io = Self {
            socket,
            endpoint,
            conn,
            ch,
            stream: None,
            recv_buf: vec![0; RECV_BUF],
            send_buf: Vec::new(),
            connected: false,
            lost: None,
            write_timeout: timeout,
        };
        let deadline = Instant::now() + timeout;
        while !io.connected {
            if let Some(why) = &io.lost {
                return Err(handshake(why.clone()));
            }
            if Instant::now() >= deadline {
                return Err(handshake("timed out".into()));
            }
            io.wait(deadline)?;
        }
        io.stream = io.conn.streams().open(Dir::Bi);
        if io.stream.is_none() {
            return Err(handshake("the server allows no stream".into()));
        }
        Ok(io)
    }

    /// Writes `bytes` whole into the stream, waiting for flow-control credit.
    pub(crate) fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let Some(id) = self.stream else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let deadline = Instant::now() + self.write_timeout;
        while !bytes.is_empty() {
            match self.conn.send_stream(id).write(bytes) {
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(quinn_proto::WriteError::Blocked) => {
                    if self.lost.is_some() {
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                    if Instant::now() >= deadline {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    self.wait(deadline)?;
                }
                Err(_) => return Err(io::ErrorKind::BrokenPipe.into()),
            }
        }
        self.flush_transmits()
    }

    /// Reads what the stream has into `out`, waiting at most `wait`.
    /// `Ok(None)`: nothing came; `Ok(Some(false))`: data; `Ok(Some(true))`:
    /// the server finished the stream or the connection ended.
    pub(crate) fn read_some(&mut self, out: &mut BytesMut, wait: Duration) -> io::Result<Option<bool>> {
        let Some(id) = self.stream else {
            return Ok(Some(true));
        };
        let deadline = Instant::now() + wait;
        loop {
            let mut got = false;
            let mut ended = false;
            {
                let mut recv = self.conn.recv_stream(id);
                match recv.read(true) {
                    Ok(mut chunks) => {
                        loop {
                            match chunks.next(RECV_BUF) {
                                Ok(Some(chunk)) => {
                                    out.extend_from_slice(&chunk.bytes);
                                    got = true;
                                }
                                Ok(None) => {
                                    ended = true;
                                    break;
                                }
                                Err(quinn_proto::ReadError::Blocked) => break,
                                Err(quinn_proto::ReadError::Reset(_)) => {
                                    ended = true;
                                    break;
                                }
                            }
                        }
                        let _ = chunks.finalize();
                    }
                    Err(_) => ended = true,
                }
            }
            if got {
                // Acknowledgements and window updates for what was read.
                self.flush_transmits()?;
                return Ok(Some(false));
            }
            if ended || self.lost.is_some() {
                return Ok(Some(true));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.wait(deadline)?;
        }
    }

    /// Finishes our side of the stream (the server reads end of stream).
    pub(crate) fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(id) = self.stream {
            let _ = self.conn.send_stream(id).finish();
        }
        self.flush_transmits()
    }

    /// Closes the connection at once (CONNECTION_CLOSE, best effort).
    pub(crate) fn close(&mut self) {
        if self.lost.is_none() {
            self.conn.close(Instant::now(), VarInt::from_u32(0), Bytes::new());
            let _ = self.flush_transmits();
            self.lost = Some("closed".into());
        }
    }

    /// Our UDP address.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The server's address.
    pub(crate) fn peer_addr(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// Moves the connection to a new UDP socket bound to `local` (port 0:
    /// any): the server sees the client's address change and migrates the
    /// connection (path validation), keeping the session. Returns the new
    /// local address.
    pub(crate) fn rebind(&mut self, local: SocketAddr) -> io::Result<SocketAddr> {
        let socket = UdpSocket::bind(local)?;
        let addr = socket.local_addr()?;
        self.socket = socket;
        self.conn.local_address_changed();
        // Say something from the new address at once, so the server learns it.
        self.conn.ping();
        self.flush_transmits()?;
        Ok(addr)
    }

    /// Sends everything quinn-proto has to send and hands its endpoint
    /// events over.
    fn flush_transmits(&mut self) -> io::Result<()> {
        loop {
            while let Some(event) = self.conn.poll_endpoint_events() {
                if let Some(back) = self.endpoint.handle_event(self.ch, event) {
                    self.conn.handle_event(back);
                }
            }
            self.send_buf.clear();
            let Some(t) = self.conn.poll_transmit(Instant::now(), 1, &mut self.send_buf) else {
                break;
            };
            let data = self.send_buf.get(..t.size).unwrap_or_default();
            match self.socket.send_to(data, t.destination) {
                Ok(_) => {}
                // Lost like any datagram: QUIC retransmits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e),
            }
        }
        self.poll_events();
        Ok(())
    }

    fn poll_events(&mut self) {
        while let Some(event) = self.conn.poll() {
            match event {
                Event::Connected => self.connected = true,
                Event::ConnectionLost { reason } => self.lost = Some(reason.to_string()),
                _ => {}
            }
        }
    }

    /// Sends what is due, then waits for datagrams until `deadline` or the
    /// connection's next timer, and feeds them (and the timer) to quinn-proto.
    fn wait(&mut self, deadline: Instant) -> io::Result<()> {
        self.flush_transmits()?;
        let now = Instant::now();
        let until = self.conn.poll_timeout().map_or(deadline, |t| t.min(deadline));
        let wait = until
            .saturating_duration_since(now)
            .max(Duration::from_micros(100));
        self.socket.set_read_timeout(Some(wait))?;
        let mut first = true;
        loop {
            match self.socket.recv_from(&mut self.recv_buf) {
                Ok((n, from)) => {
                    let data = BytesMut::from(self.recv_buf.get(..n).unwrap_or_default());
                    let now = Instant::now();
                    self.send_buf.clear();
                    match self
                        .endpoint
                        .handle(now, from, None, None, data, &mut self.send_buf)
                    {
                        Some(DatagramEvent::ConnectionEvent(_, event)) => self.conn.handle_event(event),
                        Some(DatagramEvent::Response(t)) => {
                            let _ = self
                                .socket
                                .send_to(self.send_buf.get(..t.size).unwrap_or_default(), t.destination);
                        }
                        Some(DatagramEvent::NewConnection(incoming)) => self.endpoint.ignore(incoming),
                        None => {}
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) =>
                {
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                Err(e) => return Err(e),
            }
            if first {
                // Take what else is queued without blocking.
                first = false;
                self.socket.set_nonblocking(true)?;
            }
        }
        if !first {
            self.socket.set_nonblocking(false)?;
        }
        let now = Instant::now();
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        self.flush_transmits()
    }
}

impl Drop for QuicIo {
    fn drop(&mut self) {
        self.close();
    }
}

fn client_config(trust: &Trust) -> Result<ClientConfig, ClientError> {
    let mut tls = (*tls_client_config(trust)?).clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| handshake(e.to_string()))?;
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .datagram_receive_buffer_size(None)
        .max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    let mut config = ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

fn handshake(message: String) -> ClientError {
    ClientError::Handshake {
        transport: "QUIC",
        message,
    }
}
