//! QUIC: quinn-proto's sans-IO endpoint and connections driven by the cores'
//! own mio loops over UDP (no async runtime in natterd).
//!
//! What this file owns:
//!
//! * [`QuicSetup`]: the server configuration every core shares — ALPN
//!   `natter/1`, the TLS certificate of `tls.rs`, explicit transport limits
//!   (one bidirectional stream, no unidirectional ones, small windows, an idle
//!   timeout) so an idle connection stays small — and the connection-ID key.
//! * [`CidKey`] / the connection-ID generator: every connection ID natterd
//!   issues names the core whose `Endpoint` owns the connection (16 bits,
//!   masked by a keyed hash of the ID's random part, so an observer cannot
//!   link two IDs by their core). A datagram that the kernel hands to another
//!   core's socket (the client's address changed: a new 4-tuple hashes to
//!   another `SO_REUSEPORT` socket) is forwarded to the owner over the core
//!   mesh.
//! * [`QuicDriver`]: one per core — its `SO_REUSEPORT` UDP socket (GSO/GRO
//!   through `quinn_udp::UdpSocketState`), its `Endpoint`, the timers of the
//!   connections living on the core, and where each connection lives.
//! * [`QuicConn`]: one connection and its single bidirectional stream, the
//!   QUIC case of [`super::Stream`]. It moves with its session to the user's
//!   home core (inside `Command::Adopt`), like a TCP socket does; the
//!   `Endpoint` that accepted it stays on the accepting core, and the two
//!   exchange quinn-proto's `ConnectionEvent`s / `EndpointEvent`s over the
//!   mesh ([`QuicCommand`]) — the same split as quinn's endpoint and
//!   connection tasks.
//!
//! The worker keeps the outbound queue, limits, backpressure and slow-consumer
//! handling exactly as for TCP: [`QuicConn::read`] / [`QuicConn::write_frames`]
//! behave like a non-blocking socket whose buffer is quinn-proto's stream
//! flow-control window. The call order follows quinn's own driver: datagrams
//! → `Endpoint::handle` → `Connection::handle_event`; then per connection
//! `poll_endpoint_events`, `poll_transmit`, `poll`, `poll_timeout`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use quinn_proto::{
    ConnectionEvent, ConnectionHandle, ConnectionId, ConnectionIdGenerator, DatagramEvent, Dir, EcnCodepoint,
    Endpoint, EndpointConfig, EndpointEvent, Event, IdleTimeout, InvalidCid, ServerConfig, StreamEvent,
    StreamId, TransportConfig, VarInt,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::core::ConnId;
use crate::ids::CoreId;

/// The ALPN protocol id natter speaks on QUIC; a client offering anything
/// else fails the handshake.
pub const ALPN: &[u8] = b"natter/1";
/// Length of the connection IDs natterd issues: 6 random bytes and 2 naming
/// the owning core.
const CID_LEN: usize = 8;
/// Datagrams handled per loop turn (GRO batches count each segment): a flood
/// is spread over turns so sessions on the core keep being served. The rest
/// waits in the socket's receive buffer; the loop polls again at once.
pub const DATAGRAMS_PER_TURN: usize = 2048;
/// Transmits (each up to the GSO segment count) one connection may send per
/// drive: a connection with a large backlog does not monopolise the turn; it
/// is driven again next turn.
const TRANSMITS_PER_DRIVE: usize = 64;
/// Per-stream receive window natterd offers: the most bytes of client frames
/// in flight towards one session. 64 KiB fills loopback and LAN paths; it is
/// also what a silent client can make natterd buffer (together with
/// `CONN_WINDOW`).
const STREAM_WINDOW: u32 = 64 * 1024;
/// Connection-level receive window (one stream, so a little above it).
const CONN_WINDOW: u32 = 80 * 1024;
/// Bytes of frames quinn-proto may hold for one connection unacknowledged:
/// the transport's share of the outbound path. The worker's own queue (with
/// its limits and slow-consumer policy) holds everything beyond it, as on TCP.
const SEND_WINDOW: u64 = 256 * 1024;
/// Handshakes in progress on one core at which new, unvalidated addresses get
/// a Retry first (address validation): a flood of Initials from spoofed
/// addresses then costs one stateless packet each, not a connection.
pub const RETRY_MARK: usize = 64;
/// Handshakes in progress on one core past which new connections are refused
/// outright (even validated ones), bounding handshake memory.
const MAX_HANDSHAKES: usize = 4096;
/// Bytes per receive buffer (one GRO batch of up to ~44 full datagrams).
const RECV_CHUNK: usize = 64 * 1024;
/// Receive buffers per `recvmmsg` call.
const RECV_BATCH: usize = 8;
/// How long a closed connection may take to deliver its last frames before
/// it is closed regardless (like the TCP linger).
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);
/// Kernel socket buffers asked for: a burst of many clients' datagrams must
/// not be dropped between two loop turns.
const SOCKET_BUFFER: usize = 4 << 20;

/// Why the QUIC set-up failed (natterd does not start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The TLS configuration cannot be used for QUIC (e.g. no TLS 1.3 suite).
    #[error("QUIC TLS configuration: {0}")]
    Crypto(String),
}

/// The secret that hides a connection ID's core from observers; shared by
/// every core (each must read the others' IDs).
#[derive(Clone, Copy, Debug)]
pub struct CidKey {
    k0: u64,
    k1: u64,
    cores: usize,
}

impl CidKey {
    /// A fresh random key for `cores` cores.
    pub fn new(cores: usize) -> Self {
        let mut seed = [0u8; 16];
        // A failed OS random source leaves a fixed key: IDs still route, they
        // are only less private.
        let _ = getrandom::fill(&mut seed);
        let (a, b) = seed.split_at(8);
        Self {
            k0: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(b.try_into().unwrap_or_default()),
            cores,
        }
    }

    fn mask(&self, random: &[u8]) -> u16 {
        let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .build_hasher();
        h.write_u64(self.k0);
        h.write(random);
        h.write_u64(self.k1);
        (h.finish() & 0xffff) as u16
    }

    /// A new connection ID owned by `core`.
    fn issue(&self, core: CoreId) -> ConnectionId {
        let mut b = [0u8; CID_LEN];
        let _ = getrandom::fill(&mut b[..CID_LEN - 2]);
        let tag = (core.0 as u16) ^ self.mask(&b[..CID_LEN - 2]);
        b[CID_LEN - 2..].copy_from_slice(&tag.to_be_bytes());
        ConnectionId::new(&b)
    }

    /// The core a connection ID natterd issued belongs to (`None`: not one of
    /// ours, or not of our length).
    pub fn owner(&self, cid: &[u8]) -> Option<CoreId> {
        if cid.len() != CID_LEN {
            return None;
        }
        let (random, tag) = cid.split_at(CID_LEN - 2);
        let tag = u16::from_be_bytes(tag.try_into().ok()?);
        let core = usize::from(tag ^ self.mask(random));
        (core < self.cores).then_some(CoreId(core))
    }
}

/// quinn-proto's connection-ID generator for one core's endpoint.
struct CoreCids {
    key: CidKey,
    core: CoreId,
}

impl ConnectionIdGenerator for CoreCids {
    fn generate_cid(&mut self) -> ConnectionId {
        self.key.issue(self.core)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        self.key.owner(cid).map(|_| ()).ok_or(InvalidCid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// What every core's QUIC endpoint shares.
#[derive(Clone)]
pub struct QuicSetup {
    server: Arc<ServerConfig>,
    key: CidKey,
}

impl std::fmt::Debug for QuicSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicSetup")
            .field("cores", &self.key.cores)
            .finish()
    }
}

impl QuicSetup {
    /// The QUIC server configuration from natterd's TLS configuration (same
    /// certificate, ALPN `natter/1`), for `cores` cores. `idle_timeout`
    /// closes a connection that sent nothing at all (not even an ACK) for
    /// that long; it sits above the heartbeat timeout, so the session's own
    /// liveness rule decides first.
    ///
    /// # Errors
    /// When rustls' configuration cannot carry QUIC.
    pub fn new(tls: &rustls::ServerConfig, cores: usize, idle_timeout: Duration) -> Result<Self, QuicError> {
        // The same certificate and settings, over ring's suites with lazily
        // expanded keys (`quic_keys.rs`: ~1.9 KB less per idle connection).
        let mut quic_tls =
            rustls::ServerConfig::builder_with_provider(Arc::new(super::quic_keys::provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .map_err(|e| QuicError::Crypto(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(tls.cert_resolver.clone());
        quic_tls.send_tls13_tickets = tls.send_tls13_tickets;
        quic_tls.ignore_client_order = tls.ignore_client_order;
        let mut tls = quic_tls;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        tls.max_early_data_size = 0;
        let crypto = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| QuicError::Crypto(e.to_string()))?;
        let mut transport = TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(1))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
            .receive_window(VarInt::from_u32(CONN_WINDOW))
            .send_window(SEND_WINDOW)
            .datagram_receive_buffer_size(None)
            .datagram_send_buffer_size(0)
            .crypto_buffer_size(8 * 1024)
            .max_idle_timeout(IdleTimeout::try_from(idle_timeout).ok());
        let mut server = ServerConfig::with_crypto(Arc::new(crypto));
        server
            .transport_config(Arc::new(transport))
            .migration(true)
            .max_incoming(MAX_HANDSHAKES);
        Ok(Self {
            server: Arc::new(server),
            key: CidKey::new(cores),
        })
    }
}

/// Binds `cores` UDP sockets on `addr` with `SO_REUSEPORT` (port 0: the first
/// picks a free port, the others join it).
///
/// # Errors
/// When the address cannot be bound.
pub fn bind_sockets(addr: SocketAddr, cores: usize) -> io::Result<(Vec<std::net::UdpSocket>, SocketAddr)> {
    let mut sockets = Vec::with_capacity(cores);
    let mut bound = addr;
    for _ in 0..cores.max(1) {
        let socket = Socket::new(Domain::for_address(bound), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
        socket.bind(&bound.into())?;
        let std_socket: std::net::UdpSocket = socket.into();
        bound = std_socket.local_addr()?;
        sockets.push(std_socket);
    }
    Ok((sockets, bound))
}

/// A connection's identity: the core whose `Endpoint` owns it and the handle
/// that endpoint gave it.
type Key = (CoreId, ConnectionHandle);

/// A received datagram for another core's endpoint.
#[derive(Debug)]
pub struct Inbound {
    remote: SocketAddr,
    local_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    data: BytesMut,
}

/// What cores send each other for QUIC, over the mesh.
#[non_exhaustive]
pub enum QuicCommand {
    /// A datagram that reached the wrong core's socket, for its owner's endpoint.
    Datagram(Box<Inbound>),
    /// An event from the endpoint on core `endpoint` for its connection `ch`,
    /// which lives on the receiving core.
    ToConnection {
        /// The core whose endpoint owns the connection.
        endpoint: CoreId,
        /// The connection.
        ch: ConnectionHandle,
        /// The event.
        event: ConnectionEvent,
    },
    /// An event from connection `ch` (living elsewhere) for the receiving
    /// core's endpoint.
    ToEndpoint {
        /// The connection.
        ch: ConnectionHandle,
        /// The event.
        event: EndpointEvent,
    },
}

impl std::fmt::Debug for QuicCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuicCommand::Datagram(d) => write!(f, "Datagram({} bytes from {})", d.data.len(), d.remote),
            QuicCommand::ToConnection { endpoint, ch, .. } => {
                write!(f, "ToConnection({}, {})", endpoint.0, ch.0)
            }
            QuicCommand::ToEndpoint { ch, .. } => write!(f, "ToEndpoint({})", ch.0),
        }
    }
}

/// One QUIC connection and its one bidirectional stream: what
/// [`super::Stream::Quic`] holds.
#[derive(Debug)]
pub struct QuicConn {
    conn: quinn_proto::Connection,
    key: Key,
    stream: Option<StreamId>,
    connected: bool,
    /// Counted in its endpoint core's handshakes in progress.
    handshaking: bool,
    lost: bool,
    drained: bool,
    /// `finish()` was called on our send side.
    finished: bool,
    /// The peer acknowledged everything up to our `finish()`.
    finish_acked: bool,
    /// The earliest deadline this connection has in its core's timer heap.
    timer: Option<Instant>,
    /// Read or written since the last drive: transmits may be due.
    dirty: bool,
}

impl QuicConn {
    fn new(conn: quinn_proto::Connection, key: Key) -> Self {
        Self {
            conn,
            key,
            stream: None,
            connected: false,
            handshaking: true,
            lost: false,
            drained: false,
            finished: false,
            finish_acked: false,
            timer: None,
            dirty: true,
        }
    }

    /// Reads frame bytes from the stream into `buf`, like a non-blocking
    /// socket: `Ok(0)` once the client finished its side.
    ///
    /// # Errors
    /// `WouldBlock` while nothing is there (or the stream is not open yet);
    /// `ConnectionReset` once the connection is lost or the stream reset.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(id) = self.stream else {
            return Err(if self.lost {
                io::ErrorKind::ConnectionReset.into()
            } else {
                io::ErrorKind::WouldBlock.into()
            });
        };
        let mut recv = self.conn.recv_stream(id);
        let mut chunks = match recv.read(true) {
            Ok(chunks) => chunks,
            Err(_) => return Err(io::ErrorKind::ConnectionReset.into()),
        };
        let mut filled = 0;
        let mut result: io::Result<()> = Ok(());
        let mut finished = false;
        while filled < buf.len() {
            match chunks.next(buf.len() - filled) {
                Ok(Some(chunk)) => {
                    let n = chunk.bytes.len();
                    if let Some(dst) = buf.get_mut(filled..filled + n) {
                        dst.copy_from_slice(&chunk.bytes);
                    }
                    filled += n;
                }
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(quinn_proto::ReadError::Blocked) => break,
                Err(quinn_proto::ReadError::Reset(_)) => {
                    result = Err(io::ErrorKind::ConnectionReset.into());
                    break;
                }
            }
        }
        let _ = chunks.finalize();
        self.dirty = true;
        if filled > 0 {
            return Ok(filled);
        }
        result?;
        if finished {
            return Ok(0);
        }
        Err(if self.lost {
            io::ErrorKind::ConnectionReset.into()
        } else {
            io::ErrorKind::WouldBlock.into()
        })
    }

    /// Writes frames from the front of `frames` into the stream (as far as
    /// flow control and [`SEND_WINDOW`] allow), removing what was taken.
    ///
    /// # Errors
    /// `WouldBlock` when nothing could be taken; `BrokenPipe` when the stream
    /// was stopped or the connection lost.
    pub fn write_frames(&mut self, frames: &mut VecDeque<Bytes>) -> io::Result<usize> {
        if self.lost {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let Some(id) = self.stream else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let mut written = 0;
        while let Some(front) = frames.front_mut() {
            match self.conn.send_stream(id).write(front) {
                Ok(n) => {
                    written += n;
                    self.dirty = true;
                    if n >= front.len() {
                        frames.pop_front();
                    } else {
                        front.advance(n);
                        break;
                    }
                }
                Err(quinn_proto::WriteError::Blocked) => break,
                Err(_) => return Err(io::ErrorKind::BrokenPipe.into()),
            }
        }
        if written == 0 && !frames.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(written)
    }

    /// Finishes our side of the stream after the last frame (idempotent).
    pub fn start_close(&mut self) {
        if let Some(id) = self.stream
            && !self.finished
        {
            self.finished = true;
            let _ = self.conn.send_stream(id).finish();
            self.dirty = true;
        }
    }

    /// The handshake is done and the client opened its stream.
    pub fn established(&self) -> bool {
        self.connected && self.stream.is_some() && !self.finished && !self.lost
    }

    /// Whether it was read or written since the last call (then it must be
    /// driven: acknowledgements, flow-control credit or data are due).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// The client's current address.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }
}

/// Where the QUIC connections this driver knows live.
#[derive(Debug, Clone, Copy)]
enum Home {
    /// A session's stream on this core (`Worker::sockets[conn]`).
    Here(ConnId),
    /// Closed by the session, delivering its last frames (`QuicDriver::closing`).
    Closing(usize),
    /// Moved with its session to another core; this core's endpoint forwards
    /// its events there.
    Away(CoreId),
}

/// A closed connection delivering its last frames (the QUIC linger).
#[derive(Debug)]
struct Closing {
    q: QuicConn,
    outbound: VecDeque<Bytes>,
    deadline: Instant,
    closed: bool,
}

/// How the driver reaches the connections the worker holds.
pub trait Conns {
    /// The QUIC connection of session `conn` on this core, if it is one.
    fn quic(&mut self, conn: ConnId) -> Option<&mut QuicConn>;
}

/// Counters one core's QUIC driver keeps (published by the worker).
#[derive(Debug, Default, Clone, Copy)]
pub struct QuicStats {
    /// Datagrams forwarded to the core owning their connection ID.
    pub forwarded: u64,
    /// Retry packets sent (address validation under a handshake flood).
    pub retries: u64,
    /// Incoming connections refused (too many handshakes in progress).
    pub refused: u64,
    /// Datagrams received on this core's socket.
    pub datagrams_in: u64,
    /// Datagrams dropped because the socket's send buffer was full.
    pub send_dropped: u64,
    /// Connections whose endpoint is on this core.
    pub endpoint_connections: u64,
}

/// The socket side of a driver: what [`drive`] needs besides the connection.
struct Io {
    core: CoreId,
    socket: mio::net::UdpSocket,
    state: quinn_udp::UdpSocketState,
    endpoint: Endpoint,
    send_buf: Vec<u8>,
    timers: BinaryHeap<Reverse<(Instant, CoreId, usize)>>,
    forward: Vec<(CoreId, QuicCommand)>,
    handshaking: usize,
    stats: QuicStats,
}

/// One core's QUIC endpoint, socket and connection bookkeeping.
pub struct QuicDriver {
    io: Io,
    key: CidKey,
    homes: HashMap<Key, Home>,
    closing: slab::Slab<Closing>,
    recv_buf: Box<[u8]>,
    /// The socket reported readable and was not drained yet (budget).
    readable: bool,
    /// Sessions whose connection produced application events (stream data,
    /// credit, loss): the worker serves them like a readable socket.
    ready: Vec<ConnId>,
    /// Connections accepted this turn, for the worker to install.
    accepted: Vec<QuicConn>,
    /// Closing entries to serve again.
    closing_dirty: Vec<usize>,
}

impl std::fmt::Debug for QuicDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicDriver")
            .field("core", &self.io.core.0)
            .field("connections", &self.homes.len())
            .finish()
    }
}

impl QuicDriver {
    /// The driver of `core` over its bound socket.
    ///
    /// # Errors
    /// When the socket cannot be prepared for GSO/GRO.
    pub fn new(core: CoreId, socket: std::net::UdpSocket, setup: &QuicSetup) -> io::Result<Self> {
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        let key = setup.key;
        let mut endpoint_config = EndpointConfig::default();
        endpoint_config.cid_generator(move || Box::new(CoreCids { key, core }));
        let endpoint = Endpoint::new(Arc::new(endpoint_config), Some(setup.server.clone()), true, None);
        Ok(Self {
            io: Io {
                core,
                socket: mio::net::UdpSocket::from_std(socket),
                state,
                endpoint,
                send_buf: Vec::new(),
                timers: BinaryHeap::new(),
                forward: Vec::new(),
                handshaking: 0,
                stats: QuicStats::default(),
            },
            key,
            homes: HashMap::new(),
            closing: slab::Slab::new(),
            recv_buf: vec![0; RECV_CHUNK * RECV_BATCH].into_boxed_slice(),
            readable: true,
            ready: Vec::new(),
            accepted: Vec::new(),
            closing_dirty: Vec::new(),
        })
    }

    /// The socket, to register with the core's `Poll`.
    pub fn socket(&mut self) -> &mut mio::net::UdpSocket {
        &mut self.io.socket
    }

    /// The socket became readable.
    pub fn set_readable(&mut self) {
        self.readable = true;
    }

    /// Whether work is left for this turn's end or the next turn (the loop
    /// then polls with a zero timeout).
    pub fn has_work(&self) -> bool {
        self.readable
            || !self.ready.is_empty()
            || !self.accepted.is_empty()
            || !self.closing_dirty.is_empty()
            || !self.io.forward.is_empty()
    }

    /// The earliest connection timer.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.io.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Counters so far.
    pub fn stats(&self) -> QuicStats {
        let mut stats = self.io.stats;
        stats.endpoint_connections = self.io.endpoint.open_connections() as u64;
        stats
    }

    /// Connections accepted since the last call: the worker gives each a
    /// `ConnId` and calls [`QuicDriver::settle`].
    pub fn take_accepted(&mut self) -> Vec<QuicConn> {
        std::mem::take(&mut self.accepted)
    }

    /// Sessions to serve (read and flush) since the last call.
    pub fn take_ready(&mut self) -> Vec<ConnId> {
        std::mem::take(&mut self.ready)
    }

    /// Commands for other cores since the last call.
    pub fn take_forward(&mut self) -> Vec<(CoreId, QuicCommand)> {
        std::mem::take(&mut self.io.forward)
    }

    /// A connection (accepted here, or adopted from another core) now lives
    /// in the worker's session `conn`.
    pub fn settle(&mut self, q: &mut QuicConn, conn: ConnId) {
        self.homes.insert(q.key, Home::Here(conn));
        q.dirty = true;
        q.timer = None;
    }

    /// A session's connection leaves for core `to` (the session migrates to
    /// its user's home core). Events for it are forwarded there from now on:
    /// the endpoint's when this core owns it, or whatever still arrives here
    /// when another core's endpoint does (until the connection drains).
    pub fn moved(&mut self, q: &QuicConn, to: CoreId) {
        self.homes.insert(q.key, Home::Away(to));
    }

    /// Drives session `conn`'s connection after the worker read or wrote it.
    pub fn drive_session(&mut self, conns: &mut dyn Conns, conn: ConnId, now: Instant) {
        let Some(q) = conns.quic(conn) else {
            return;
        };
        let key = q.key;
        let outcome = drive(&mut self.io, q, now);
        self.after_drive(key, outcome, Some(conn));
    }

    /// Takes over a connection whose session closed: its last `outbound`
    /// frames are written, the stream finished, and the connection closed once
    /// the client acknowledged them (or after [`LINGER_TIMEOUT`]).
    pub fn linger(&mut self, mut q: QuicConn, outbound: VecDeque<Bytes>, now: Instant) {
        let key = q.key;
        let deadline = now + LINGER_TIMEOUT;
        q.timer = None;
        let outbound = if q.connected { outbound } else { VecDeque::new() };
        let idx = self.closing.insert(Closing {
            q,
            outbound,
            deadline,
            closed: false,
        });
        self.homes.insert(key, Home::Closing(idx));
        self.io.timers.push(Reverse((deadline, key.0, key.1.0)));
        self.closing_dirty.push(idx);
    }

    /// Reads datagrams (up to [`DATAGRAMS_PER_TURN`]), fires due timers and
    /// serves closing connections.
    pub fn turn(&mut self, conns: &mut dyn Conns, now: Instant) {
        if self.readable {
            self.receive(conns, now);
        }
        self.fire_timers(conns, now);
        for idx in std::mem::take(&mut self.closing_dirty) {
            self.serve_closing(idx, now);
        }
    }

    /// A command from another core.
    pub fn handle_command(&mut self, conns: &mut dyn Conns, cmd: QuicCommand, now: Instant) {
        match cmd {
            QuicCommand::Datagram(d) => {
                let Inbound {
                    remote,
                    local_ip,
                    ecn,
                    data,
                } = *d;
                self.endpoint_datagram(conns, now, remote, local_ip, ecn, data);
            }
            QuicCommand::ToConnection { endpoint, ch, event } => {
                self.deliver(conns, (endpoint, ch), event, now);
            }
            QuicCommand::ToEndpoint { ch, event } => {
                let drained = event.is_drained();
                let back = self.io.endpoint.handle_event(ch, event);
                let key = (self.io.core, ch);
                if drained {
                    self.homes.remove(&key);
                } else if let Some(event) = back {
                    self.deliver(conns, key, event, now);
                }
            }
        }
    }

    fn receive(&mut self, conns: &mut dyn Conns, now: Instant) {
        let mut budget = DATAGRAMS_PER_TURN;
        let mut metas = [quinn_udp::RecvMeta::default(); RECV_BATCH];
        while budget > 0 {
            let result = {
                let mut bufs: Vec<IoSliceMut<'_>> = self
                    .recv_buf
                    .chunks_mut(RECV_CHUNK)
                    .map(IoSliceMut::new)
                    .collect();
                self.io
                    .state
                    .recv((&self.io.socket).into(), &mut bufs, &mut metas)
            };
            let n = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors surface here (ECONNREFUSED from a vanished
                    // client): not fatal for the socket.
                    tracing::trace!(core = self.io.core.0, error = %e, "UDP receive error");
                    continue;
                }
            };
            for (i, meta) in metas.iter().take(n).enumerate() {
                let start = i * RECV_CHUNK;
                let Some(data) = self.recv_buf.get(start..start + meta.len.min(RECV_CHUNK)) else {
                    continue;
                };
                let stride = meta.stride.max(1);
                let data = BytesMut::from(data);
                let mut data = data;
                while !data.is_empty() {
                    let seg = data.split_to(stride.min(data.len()));
                    budget = budget.saturating_sub(1);
                    self.io.stats.datagrams_in += 1;
                    let ecn = meta.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
                    self.datagram(conns, now, meta.addr, meta.dst_ip, ecn, seg);
                }
            }
        }
        // Budget spent: `readable` stays set and the loop comes back at once.
    }

    /// Routes one datagram: to the core owning its connection ID, or to this
    /// core's endpoint.
    fn datagram(
        &mut self,
        conns: &mut dyn Conns,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
    ) {
        if let Some(owner) = routed_cid(&data).and_then(|cid| self.key.owner(cid))
            && owner != self.io.core
        {
            self.io.stats.forwarded += 1;
            self.io.forward.push((
                owner,
                QuicCommand::Datagram(Box::new(Inbound {
                    remote,
                    local_ip,
                    ecn,
                    data,
                })),
            ));
            return;
        }
        self.endpoint_datagram(conns, now, remote, local_ip, ecn, data);
    }

    fn endpoint_datagram(
        &mut self,
        conns: &mut dyn Conns,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
    ) {
        let mut buf = std::mem::take(&mut self.io.send_buf);
        buf.clear();
        let event = self
            .io
            .endpoint
            .handle(now, remote, local_ip, ecn, data, &mut buf);
        match event {
            None => {}
            Some(DatagramEvent::Response(t)) => send(&mut self.io, &t, &buf),
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                self.io.send_buf = buf;
                self.deliver(conns, (self.io.core, ch), event, now);
                return;
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.io.handshaking >= RETRY_MARK
                    && !incoming.remote_address_validated()
                    && incoming.may_retry()
                {
                    match self.io.endpoint.retry(incoming, &mut buf) {
                        Ok(t) => {
                            self.io.stats.retries += 1;
                            send(&mut self.io, &t, &buf);
                        }
                        Err(e) => self.io.endpoint.ignore(e.into_incoming()),
                    }
                } else if self.io.handshaking >= MAX_HANDSHAKES {
                    self.io.stats.refused += 1;
                    let t = self.io.endpoint.refuse(incoming, &mut buf);
                    send(&mut self.io, &t, &buf);
                } else {
                    match self.io.endpoint.accept(incoming, now, &mut buf, None) {
                        Ok((ch, conn)) => {
                            self.io.handshaking += 1;
                            let key = (self.io.core, ch);
                            self.accepted.push(QuicConn::new(conn, key));
                        }
                        Err(e) => {
                            if let Some(t) = e.response {
                                send(&mut self.io, &t, &buf);
                            }
                        }
                    }
                }
            }
        }
        buf.clear();
        self.io.send_buf = buf;
    }

    /// Hands an endpoint event to connection `key`, wherever it lives.
    fn deliver(&mut self, conns: &mut dyn Conns, key: Key, event: ConnectionEvent, now: Instant) {
        match self.homes.get(&key).copied() {
            Some(Home::Here(conn)) => {
                let Some(q) = conns.quic(conn) else {
                    return;
                };
                q.conn.handle_event(event);
                let outcome = drive(&mut self.io, q, now);
                self.after_drive(key, outcome, Some(conn));
            }
            Some(Home::Closing(idx)) => {
                if let Some(c) = self.closing.get_mut(idx) {
                    c.q.conn.handle_event(event);
                    self.serve_closing(idx, now);
                }
            }
            Some(Home::Away(core)) => self.io.forward.push((
                core,
                QuicCommand::ToConnection {
                    endpoint: key.0,
                    ch: key.1,
                    event,
                },
            )),
            None => {}
        }
    }

    fn after_drive(&mut self, key: Key, outcome: Outcome, conn: Option<ConnId>) {
        if outcome.ready
            && let Some(conn) = conn
        {
            self.ready.push(conn);
        }
        if outcome.drained {
            // Its endpoint has been told (and, on this core, forgot it: the
            // handle may be reused at once).
            self.homes.remove(&key);
        }
    }

    fn fire_timers(&mut self, conns: &mut dyn Conns, now: Instant) {
        while let Some(Reverse((t, core, ch))) = self.io.timers.peek().copied() {
            if t > now {
                break;
            }
            self.io.timers.pop();
            let key = (core, ConnectionHandle(ch));
            match self.homes.get(&key).copied() {
                Some(Home::Here(conn)) => {
                    let Some(q) = conns.quic(conn) else {
                        continue;
                    };
                    if q.timer.is_some_and(|at| at <= now) {
                        q.timer = None;
                    }
                    if q.conn.poll_timeout().is_some_and(|at| at <= now) {
                        q.conn.handle_timeout(now);
                    }
                    let outcome = drive(&mut self.io, q, now);
                    self.after_drive(key, outcome, Some(conn));
                }
                Some(Home::Closing(idx)) => {
                    if let Some(c) = self.closing.get_mut(idx) {
                        if c.q.timer.is_some_and(|at| at <= now) {
                            c.q.timer = None;
                        }
                        if c.q.conn.poll_timeout().is_some_and(|at| at <= now) {
                            c.q.conn.handle_timeout(now);
                        }
                    }
                    self.serve_closing(idx, now);
                }
                Some(Home::Away(_)) | None => {}
            }
        }
    }

    /// Moves a closing connection on: last frames, finish, close, drain.
    fn serve_closing(&mut self, idx: usize, now: Instant) {
        let Some(c) = self.closing.get_mut(idx) else {
            return;
        };
        // Let stream events (opened, credit, acknowledgement) arrive first.
        let outcome = drive(&mut self.io, &mut c.q, now);
        if !c.closed && !c.q.lost {
            if c.q.stream.is_some() {
                while !c.outbound.is_empty() {
                    match c.q.write_frames(&mut c.outbound) {
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                if c.outbound.is_empty() {
                    c.q.start_close();
                }
                // Discard whatever the client still sends.
                let mut sink = [0u8; 4096];
                while let Ok(n) = c.q.read(&mut sink) {
                    if n == 0 {
                        break;
                    }
                }
            }
            let nothing_to_say = !c.q.connected || (c.q.stream.is_none() && c.outbound.is_empty());
            if c.q.finish_acked || now >= c.deadline || nothing_to_say {
                c.closed = true;
                c.q.conn.close(now, VarInt::from_u32(0), Bytes::new());
                c.q.dirty = true;
            }
        }
        let outcome2 = if c.q.dirty {
            c.q.dirty = false;
            drive(&mut self.io, &mut c.q, now)
        } else {
            Outcome::default()
        };
        let key = c.q.key;
        let gone = outcome.drained || outcome2.drained || c.q.conn.is_drained();
        if gone {
            if c.q.handshaking {
                c.q.handshaking = false;
                if key.0 == self.io.core {
                    self.io.handshaking = self.io.handshaking.saturating_sub(1);
                }
            }
            self.closing.remove(idx);
            if matches!(self.homes.get(&key), Some(Home::Closing(i)) if *i == idx) {
                self.homes.remove(&key);
            }
        }
    }
}

/// What a drive found.
#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    /// Application events: the session should read and write.
    ready: bool,
    /// The connection is drained (its endpoint was told).
    drained: bool,
}

/// quinn's driver order for one connection: endpoint events (answered at once
/// when the endpoint is on this core), transmits, application events, timer.
fn drive(io: &mut Io, q: &mut QuicConn, now: Instant) -> Outcome {
    let mut outcome = Outcome::default();
    q.dirty = false;
    for _round in 0..8 {
        let mut progress = false;
        while let Some(event) = q.conn.poll_endpoint_events() {
            progress = true;
            if event.is_drained() {
                outcome.drained = true;
                q.drained = true;
            }
            if q.key.0 == io.core {
                if let Some(back) = io.endpoint.handle_event(q.key.1, event) {
                    q.conn.handle_event(back);
                }
            } else {
                io.forward
                    .push((q.key.0, QuicCommand::ToEndpoint { ch: q.key.1, event }));
            }
        }
        let mut buf = std::mem::take(&mut io.send_buf);
        let segments = io.state.max_gso_segments().max(1);
        for _ in 0..TRANSMITS_PER_DRIVE {
            buf.clear();
            let Some(t) = q.conn.poll_transmit(now, segments, &mut buf) else {
                break;
            };
            progress = true;
            send(io, &t, &buf);
        }
        buf.clear();
        io.send_buf = buf;
        while let Some(event) = q.conn.poll() {
            progress = true;
            match event {
                Event::Connected => {
                    q.connected = true;
                    if q.handshaking {
                        q.handshaking = false;
                        if q.key.0 == io.core {
                            io.handshaking = io.handshaking.saturating_sub(1);
                        }
                    }
                    outcome.ready = true;
                }
                Event::ConnectionLost { .. } => {
                    q.lost = true;
                    outcome.ready = true;
                }
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                    if q.stream.is_none() {
                        q.stream = q.conn.streams().accept(Dir::Bi);
                    }
                    outcome.ready = true;
                }
                Event::Stream(StreamEvent::Finished { .. }) => {
                    q.finish_acked = true;
                    outcome.ready = true;
                }
                Event::Stream(_) => outcome.ready = true,
                Event::HandshakeDataReady | Event::DatagramReceived | Event::DatagramsUnblocked => {}
            }
        }
        if !progress {
            break;
        }
    }
    if q.lost && q.handshaking {
        q.handshaking = false;
        if q.key.0 == io.core {
            io.handshaking = io.handshaking.saturating_sub(1);
        }
    }
    if let Some(at) = q.conn.poll_timeout()
        && q.timer.is_none_or(|t| at < t)
    {
        q.timer = Some(at);
        io.timers.push(Reverse((at, q.key.0, q.key.1.0)));
    }
    outcome
}

/// Sends one transmit (a GSO batch when `segment_size` is set). A full send
/// buffer drops it: to QUIC that is packet loss, which it recovers from and
/// answers by slowing down.
fn send(io: &mut Io, t: &quinn_proto::Transmit, buf: &[u8]) {
    let Some(contents) = buf.get(..t.size) else {
        return;
    };
    let transmit = quinn_udp::Transmit {
        destination: t.destination,
        ecn: t.ecn.and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
        contents,
        segment_size: t.segment_size,
        src_ip: t.src_ip,
    };
    match io.state.try_send((&io.socket).into(), &transmit) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => io.stats.send_dropped += 1,
        Err(e) => tracing::trace!(core = io.core.0, error = %e, "UDP send failed"),
    }
}

/// The destination connection ID by which a datagram is routed between
/// cores: short-header packets and Handshake packets carry one natterd
/// issued. Initial and 0-RTT packets may carry the client's own choice; they
/// are handled where they land (the 4-tuple of a handshake does not change).
fn routed_cid(data: &[u8]) -> Option<&[u8]> {
    let first = *data.first()?;
    if first & 0x80 == 0 {
        return data.get(1..1 + CID_LEN);
    }
    let version = data.get(1..5)?;
    if version == [0, 0, 0, 0] {
        return None;
    }
    let kind = (first >> 4) & 0x3;
    if kind != 2 {
        return None;
    }
    let len = usize::from(*data.get(5)?);
    if len != CID_LEN {
        return None;
    }
    data.get(6..6 + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_name_their_core_and_vary() {
        let key = CidKey::new(5);
        for core in 0..5 {
            let a = key.issue(CoreId(core));
            let b = key.issue(CoreId(core));
            assert_eq!(key.owner(&a), Some(CoreId(core)));
            assert_eq!(key.owner(&b), Some(CoreId(core)));
            assert_ne!(&a[..], &b[..]);
        }
        let other = CidKey::new(5);
        let foreign = (0..200)
            .filter(|_| other.owner(&key.issue(CoreId(1))) == Some(CoreId(1)))
            .count();
        assert!(foreign < 100, "another key does not read our core");
        assert_eq!(key.owner(&[1, 2, 3]), None);
    }

    #[test]
    fn routing_reads_short_and_handshake_headers_only() {
        let cid = [9u8; CID_LEN];
        let mut short = vec![0x40];
        short.extend_from_slice(&cid);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(routed_cid(&short), Some(&cid[..]));
        let mut handshake = vec![0xe0, 0, 0, 0, 1, CID_LEN as u8];
        handshake.extend_from_slice(&cid);
        assert_eq!(routed_cid(&handshake), Some(&cid[..]));
        let mut initial = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
        initial.extend_from_slice(&cid);
        assert_eq!(routed_cid(&initial), None);
        assert_eq!(routed_cid(&[]), None);
        assert_eq!(routed_cid(&[0x40, 1]), None);
    }
}
