//! The `connect` scenario over QUIC: many authenticated QUIC connections from
//! one thread on a few UDP sockets.
//!
//! QUIC needs no file descriptor per connection, so [`QuicFleet`] puts
//! [`CONNECTIONS_PER_SOCKET`] connections on each UDP socket, one quinn-proto
//! client `Endpoint` per socket (bound to its own 127.0.0.x source address, so
//! the kernel's `SO_REUSEPORT` hash spreads the sockets over natterd's cores).
//! One mio loop drives them all, in quinn's order: datagrams →
//! `Endpoint::handle` → `Connection::handle_event`; then, for each connection
//! that something happened to, `poll_endpoint_events`, `poll` (application
//! events: open the stream and write `Hello` on `Connected`, read frames on
//! `Readable`), `poll_transmit`, `poll_timeout` (into one timer heap, stale
//! entries skipped).
//!
//! The client side is kept cheap: no MTU discovery, no client idle timeout
//! (natterd's, above its heartbeat timeout, applies), small windows, and a
//! `Ping` per connection every half heartbeat interval from `Welcome` — the
//! only traffic while connections are held.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use indicatif::ProgressBar;
use mio::{Events, Interest, Poll, Token};
use natter_wire::{Body, Encoder, ErrorCode, Frame, FrameDecoder, Hello, Limits, PROTOCOL_VERSION, Ping};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event,
    StreamEvent, StreamId, TransportConfig, VarInt,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::accounts::DEVICE;
use crate::error::BenchError;
use crate::interrupt;
use crate::scenarios::connect::{Connected, FleetCounters};
use crate::sockets::Sources;
use crate::transport::Dial;

/// Default connections per UDP socket (and quinn-proto endpoint),
/// `--quic-connections-per-socket`: 100,000 connections need about 100
/// sockets, and one socket's datagrams stay a small share of a loop turn.
pub(crate) const CONNECTIONS_PER_SOCKET: usize = 1024;
/// Most connections one UDP socket may carry: the socket's [`SOCKET_BUFFER`]
/// (2 MiB) holds about 1,500 full-size datagrams, and the Pongs, ACKs and
/// handshake answers of more than 4,096 connections can arrive in one burst
/// between two reads of it, which the kernel would drop.
pub(crate) const MAX_CONNECTIONS_PER_SOCKET: usize = 4096;
/// Datagrams read from one socket per loop turn; the rest wait for the next
/// turn (the socket stays marked readable and the loop polls with zero timeout).
const DATAGRAMS_PER_SOCKET_TURN: usize = 256;
/// Transmits one connection may send per drive (a handshake flight is 1–4).
const TRANSMITS_PER_DRIVE: usize = 16;
/// New connections started per loop turn.
const CONNECTS_PER_TURN: usize = 64;
/// Pings written per loop turn; the rest wait for the next turn.
const PINGS_PER_TURN: usize = 4096;
/// Readiness events per `poll` call.
const EVENTS_CAPACITY: usize = 1024;
/// Longest sleep in `poll`.
const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// A handshake (QUIC + `Hello` → `Welcome`) older than this is given up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often handshakes are checked against [`HANDSHAKE_TIMEOUT`].
const TIMEOUT_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest ping interval, whatever the server's heartbeat says.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);
/// Kernel buffers asked for per socket: a burst of handshake answers for
/// [`CONNECTIONS_PER_SOCKET`] connections must not be dropped between turns.
const SOCKET_BUFFER: usize = 2 << 20;
/// Largest UDP payload read.
const MAX_DATAGRAM: usize = 2048;
/// Stream receive window each client connection offers: natterd sends it a
/// `Welcome` and `Pong`s only.
const CLIENT_STREAM_WINDOW: u32 = 16 * 1024;
/// Bytes of frames one client connection may have unacknowledged.
const CLIENT_SEND_WINDOW: u64 = 16 * 1024;

/// Where a QUIC connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// QUIC handshake running; `Hello` waits for the stream.
    Handshaking,
    /// `Hello` written, no `Welcome` yet.
    AwaitingWelcome,
    /// Authenticated and idle.
    Established,
}

/// One connection of the fleet.
struct QConn {
    /// Index of its socket / endpoint in [`QuicFleet::socks`].
    sock: usize,
    ch: ConnectionHandle,
    conn: Connection,
    stream: Option<StreamId>,
    state: State,
    since: Instant,
    /// Frame bytes received and not yet a whole frame.
    inbuf: BytesMut,
    /// Frame bytes to write into the stream (the `Hello` until it opens).
    outbuf: BytesMut,
    /// The deadline of its entry in the timer heap (stale entries differ).
    timer: Option<Instant>,
    /// Queued for a drive this turn.
    queued: bool,
}

/// One UDP socket and the quinn-proto endpoint of the connections on it.
struct Sock {
    socket: mio::net::UdpSocket,
    endpoint: Endpoint,
    /// The endpoint's connection handles → slots.
    slots: HashMap<ConnectionHandle, usize>,
    /// Readable and not drained yet (the per-turn budget ran out).
    readable: bool,
}

/// Every QUIC connection of the scenario and the loop that drives them.
pub(crate) struct QuicFleet {
    poll: Poll,
    events: Events,
    addr: SocketAddr,
    client: ClientConfig,
    endpoint_config: Arc<EndpointConfig>,
    sources: Sources,
    socks: Vec<Sock>,
    decoder: FrameDecoder,
    encoder: Encoder,
    conns: Vec<Option<QConn>>,
    /// Connections opened so far (the next one's socket is `opened / per_socket`).
    opened: usize,
    /// Connections per UDP socket (1 ..= [`MAX_CONNECTIONS_PER_SOCKET`]).
    per_socket: usize,
    max_in_flight: usize,
    rate: Option<u64>,
    in_flight: usize,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    /// Slots to drive at this turn's end.
    queue: Vec<usize>,
    pings: std::collections::VecDeque<(Instant, usize)>,
    ping_interval: Option<Duration>,
    next_nonce: u64,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
    counters: FleetCounters,
    reasons: BTreeMap<String, u64>,
    /// Handshakes completed and failed during the current turn.
    welcomed_now: u64,
    failed_now: u64,
}

impl QuicFleet {
    /// A fleet of connections to `dial`'s QUIC endpoint, `per_socket` of them
    /// on each UDP socket.
    ///
    /// # Errors
    /// [`BenchError::Usage`] when `per_socket` is 0 or above
    /// [`MAX_CONNECTIONS_PER_SOCKET`]; [`BenchError::Setup`] without a usable
    /// TLS configuration; [`BenchError::Io`] if the poll instance cannot be
    /// created.
    pub(crate) fn new(
        dial: &Dial,
        max_in_flight: usize,
        rate: Option<u64>,
        per_socket: usize,
    ) -> Result<QuicFleet, BenchError> {
        check_per_socket(per_socket)?;
        let mut transport = TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .stream_receive_window(VarInt::from_u32(CLIENT_STREAM_WINDOW))
            .receive_window(VarInt::from_u32(CLIENT_STREAM_WINDOW * 2))
            .send_window(CLIENT_SEND_WINDOW)
            .datagram_receive_buffer_size(None)
            .datagram_send_buffer_size(0)
            .mtu_discovery_config(None)
            .max_idle_timeout(None);
        let client = dial.quic_client_config(transport).map_err(BenchError::Setup)?;
        Ok(QuicFleet {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            addr: dial.addr,
            client,
            endpoint_config: Arc::new(EndpointConfig::default()),
            sources: Sources::for_server(dial.addr),
            socks: Vec::new(),
            decoder: FrameDecoder::new(Limits::default()),
            encoder: Encoder::new(),
            conns: Vec::new(),
            opened: 0,
            per_socket,
            max_in_flight,
            rate: rate.filter(|&r| r > 0),
            in_flight: 0,
            timers: BinaryHeap::new(),
            queue: Vec::new(),
            pings: std::collections::VecDeque::new(),
            ping_interval: None,
            next_nonce: 1,
            recv_buf: vec![0; MAX_DATAGRAM],
            send_buf: Vec::new(),
            counters: FleetCounters::default(),
            reasons: BTreeMap::new(),
            welcomed_now: 0,
            failed_now: 0,
        })
    }

    /// The UDP sockets opened.
    pub(crate) fn sockets(&self) -> usize {
        self.socks.len()
    }

    /// What happened so far.
    pub(crate) fn counters(&self) -> FleetCounters {
        self.counters
    }

    /// Failure reasons and how often each happened.
    pub(crate) fn reasons(&self) -> &BTreeMap<String, u64> {
        &self.reasons
    }

    /// Established connections still open.
    pub(crate) fn open_connections(&self) -> u64 {
        self.conns
            .iter()
            .flatten()
            .filter(|c| c.state == State::Established)
            .count() as u64
    }

    /// Opens one connection per `Some` token of `tokens[users]` (slot `i` is
    /// user `i`) and runs until every handshake has ended. Connections opened
    /// by an earlier call stay open and keep being served, so a fleet can be
    /// opened in parts.
    ///
    /// # Errors
    /// [`BenchError::Io`] if polling fails; [`BenchError::Interrupted`] after Ctrl-C.
    pub(crate) fn connect_all(
        &mut self,
        tokens: &[Option<String>],
        users: Range<usize>,
        bar: &ProgressBar,
    ) -> Result<Connected, BenchError> {
        if self.conns.len() < tokens.len() {
            self.conns.resize_with(tokens.len(), || None);
        }
        let end = users.end.min(tokens.len());
        let mut next_user = users.start;
        let mut started: u64 = 0;
        let mut established: u64 = 0;
        let mut failed: u64 = 0;
        let phase_start = Instant::now();
        let mut first_connect: Option<Instant> = None;
        let mut last_welcome = phase_start;
        let mut next_scan = phase_start + TIMEOUT_SCAN_INTERVAL;
        loop {
            interrupt::check()?;
            let now = Instant::now();
            let mut budget = CONNECTS_PER_TURN;
            let mut paced_until = None;
            while budget > 0 && self.in_flight < self.max_in_flight && next_user < end {
                if let Some(rate) = self.rate {
                    let due = phase_start + Duration::from_secs_f64(started as f64 / rate as f64);
                    if due > now {
                        paced_until = Some(due);
                        break;
                    }
                }
                let user = next_user;
                next_user += 1;
                let Some(token) = tokens.get(user).and_then(Option::as_deref) else {
                    continue;
                };
                budget -= 1;
                started += 1;
                first_connect.get_or_insert(now);
                if let Err(reason) = self.start(user, token, now) {
                    failed += 1;
                    self.fail_handshake(reason);
                    bar.inc(1);
                }
            }
            let more_to_start = next_user < end;
            if !more_to_start && self.in_flight == 0 {
                break;
            }
            let mut wait = if more_to_start && budget == 0 {
                Duration::ZERO
            } else {
                MAX_POLL_WAIT
            };
            if let Some(due) = paced_until {
                wait = wait.min(due.saturating_duration_since(now));
            }
            self.turn(wait)?;
            established += self.welcomed_now;
            failed += self.failed_now;
            bar.inc(self.welcomed_now + self.failed_now);
            if self.welcomed_now > 0 {
                last_welcome = Instant::now();
            }
            let now = Instant::now();
            if now >= next_scan {
                let expired = self.expire_handshakes(now);
                failed += expired;
                bar.inc(expired);
                next_scan = now + TIMEOUT_SCAN_INTERVAL;
            }
        }
        let elapsed = last_welcome.saturating_duration_since(first_connect.unwrap_or(last_welcome));
        Ok(Connected {
            established,
            failed,
            elapsed,
        })
    }

    /// Keeps every connection alive with pings for `duration`; returns how
    /// long the hold lasted.
    ///
    /// # Errors
    /// [`BenchError::Io`] if polling fails; [`BenchError::Interrupted`] after Ctrl-C.
    pub(crate) fn hold(&mut self, duration: Duration) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let end = start + duration;
        loop {
            interrupt::check()?;
            let now = Instant::now();
            if now >= end {
                break;
            }
            self.turn(end - now)?;
        }
        Ok(start.elapsed())
    }

    /// Opens slot `user`'s connection (on the current socket, opening a new
    /// one every `per_socket` connections) and queues its `Hello`.
    fn start(&mut self, user: usize, token: &str, now: Instant) -> Result<(), String> {
        let sock = self.opened / self.per_socket;
        if sock >= self.socks.len() {
            self.open_socket()?;
        }
        let sock = self.socks.len() - 1;
        let Some(s) = self.socks.get_mut(sock) else {
            return Err("no socket".into());
        };
        let (ch, conn) = s
            .endpoint
            .connect(now, self.client.clone(), self.addr, &self.addr.ip().to_string())
            .map_err(|e| format!("connect: {e}"))?;
        s.slots.insert(ch, user);
        self.opened += 1;
        let hello = Hello {
            token: token.to_owned(),
            device: DEVICE.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: false,
            conversation: false,
        };
        let bytes = self.encoder.encode(&Frame::new(1, Body::Hello(hello)));
        let mut outbuf = BytesMut::with_capacity(bytes.len());
        outbuf.extend_from_slice(&bytes);
        if let Some(slot) = self.conns.get_mut(user) {
            *slot = Some(QConn {
                sock,
                ch,
                conn,
                stream: None,
                state: State::Handshaking,
                since: now,
                inbuf: BytesMut::new(),
                outbuf,
                timer: None,
                queued: false,
            });
        }
        self.in_flight += 1;
        self.enqueue(user);
        Ok(())
    }

    /// Binds the next UDP socket from the next source address.
    fn open_socket(&mut self) -> Result<(), String> {
        let mut last_error = String::from("no source address");
        for _ in 0..64 {
            let local = match self.sources.next() {
                Some(source) => SocketAddr::V4(source),
                None => SocketAddr::new(
                    if self.addr.is_ipv4() {
                        std::net::Ipv4Addr::UNSPECIFIED.into()
                    } else {
                        std::net::Ipv6Addr::UNSPECIFIED.into()
                    },
                    0,
                ),
            };
            match bind_udp(local) {
                Ok(mut socket) => {
                    let index = self.socks.len();
                    self.poll
                        .registry()
                        .register(&mut socket, Token(index), Interest::READABLE)
                        .map_err(|e| format!("register: {e}"))?;
                    self.socks.push(Sock {
                        socket,
                        endpoint: Endpoint::new(self.endpoint_config.clone(), None, true, None),
                        slots: HashMap::new(),
                        readable: true,
                    });
                    return Ok(());
                }
                // A busy source address: take the next one.
                Err(e) => last_error = format!("bind {local}: {e}"),
            }
        }
        Err(last_error)
    }

    /// One loop turn: write due pings, wait up to `wait`, read every readable
    /// socket (within budgets), fire due timers, drive what changed.
    fn turn(&mut self, wait: Duration) -> Result<(), BenchError> {
        self.welcomed_now = 0;
        self.failed_now = 0;
        let now = Instant::now();
        let pings_left = self.write_due_pings(now);
        let mut wait = wait.min(MAX_POLL_WAIT);
        if let Some(&(due, _)) = self.pings.front() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        if let Some(Reverse((due, _))) = self.timers.peek() {
            wait = wait.min(due.saturating_duration_since(now));
        }
        if pings_left || !self.queue.is_empty() || self.socks.iter().any(|s| s.readable) {
            wait = Duration::ZERO;
        }
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
        for event in &self.events {
            if let Some(s) = self.socks.get_mut(event.token().0) {
                s.readable = true;
            }
        }
        for sock in 0..self.socks.len() {
            self.read_socket(sock)?;
        }
        let now = Instant::now();
        while let Some(&Reverse((due, slot))) = self.timers.peek() {
            if due > now {
                break;
            }
            self.timers.pop();
            if let Some(Some(c)) = self.conns.get_mut(slot)
                && c.timer == Some(due)
            {
                c.timer = None;
                c.conn.handle_timeout(now);
                self.enqueue(slot);
            }
        }
        let queue = std::mem::take(&mut self.queue);
        for slot in &queue {
            self.drive(*slot, now);
        }
        let mut queue = queue;
        queue.clear();
        if self.queue.is_empty() {
            self.queue = queue;
        }
        Ok(())
    }

    /// Reads datagrams of socket `sock` into their connections, within
    /// [`DATAGRAMS_PER_SOCKET_TURN`].
    fn read_socket(&mut self, sock: usize) -> Result<(), BenchError> {
        let Some(s) = self.socks.get_mut(sock) else {
            return Ok(());
        };
        if !s.readable {
            return Ok(());
        }
        for _ in 0..DATAGRAMS_PER_SOCKET_TURN {
            let (n, from) = match s.socket.recv_from(&mut self.recv_buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    s.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An ICMP error for an earlier datagram: nothing to read from it.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e.into()),
            };
            let data = BytesMut::from(self.recv_buf.get(..n).unwrap_or_default());
            self.send_buf.clear();
            let now = Instant::now();
            match s.endpoint.handle(now, from, None, None, data, &mut self.send_buf) {
                Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                    if let Some(&slot) = s.slots.get(&ch)
                        && let Some(Some(c)) = self.conns.get_mut(slot)
                    {
                        c.conn.handle_event(event);
                        if !c.queued {
                            c.queued = true;
                            self.queue.push(slot);
                        }
                    }
                }
                Some(DatagramEvent::Response(t)) => {
                    // Lost like any datagram if the buffer is full: the peer retransmits.
                    let _ = s
                        .socket
                        .send_to(self.send_buf.get(..t.size).unwrap_or_default(), t.destination);
                }
                Some(DatagramEvent::NewConnection(incoming)) => {
                    s.endpoint.ignore(incoming);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Queues `slot` for a drive at this turn's end (once).
    fn enqueue(&mut self, slot: usize) {
        if let Some(Some(c)) = self.conns.get_mut(slot)
            && !c.queued
        {
            c.queued = true;
            self.queue.push(slot);
        }
    }

    /// Drives slot `slot`: endpoint events, application events (stream open,
    /// frames), transmits, its next timer.
    fn drive(&mut self, slot: usize, now: Instant) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        c.queued = false;
        let Some(s) = self.socks.get_mut(c.sock) else {
            return;
        };
        let mut outcome: Result<Option<Duration>, String> = Ok(None);
        let mut drained = false;
        for _ in 0..2 {
            while let Some(event) = c.conn.poll_endpoint_events() {
                drained |= event.is_drained();
                if let Some(back) = s.endpoint.handle_event(c.ch, event) {
                    c.conn.handle_event(back);
                }
            }
            while let Some(event) = c.conn.poll() {
                match event {
                    Event::Connected if c.stream.is_none() => {
                        c.stream = c.conn.streams().open(Dir::Bi);
                        if c.stream.is_none() {
                            outcome = Err("natterd allowed no stream".into());
                        } else {
                            c.state = State::AwaitingWelcome;
                        }
                    }
                    Event::ConnectionLost { reason } => outcome = Err(format!("connection lost: {reason}")),
                    Event::Stream(StreamEvent::Readable { .. } | StreamEvent::Finished { .. }) => {}
                    _ => {}
                }
            }
            if outcome.is_ok() {
                outcome = c.exchange(&self.decoder, now, &mut self.counters.pongs);
            }
            let mut sent = 0;
            while sent < TRANSMITS_PER_DRIVE {
                self.send_buf.clear();
                let Some(t) = c.conn.poll_transmit(now, 1, &mut self.send_buf) else {
                    break;
                };
                sent += 1;
                match s
                    .socket
                    .send_to(self.send_buf.get(..t.size).unwrap_or_default(), t.destination)
                {
                    Ok(_) => {}
                    // Lost like any datagram (buffer full, ICMP): QUIC retransmits.
                    Err(_) => self.counters.send_dropped += 1,
                }
            }
            if sent < TRANSMITS_PER_DRIVE {
                break;
            }
        }
        let deadline = c.conn.poll_timeout();
        if deadline != c.timer {
            c.timer = deadline;
            if let Some(t) = deadline {
                self.timers.push(Reverse((t, slot)));
            }
        }
        let was = c.state;
        match outcome {
            Ok(Some(heartbeat)) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.welcomed_now += 1;
                let interval = (heartbeat / 2).max(MIN_PING_INTERVAL);
                self.ping_interval.get_or_insert(interval);
                self.pings.push_back((now + interval, slot));
            }
            Ok(None) if drained => self.fail(slot, was, "connection drained".into()),
            Ok(None) => {}
            Err(reason) => self.fail(slot, was, reason),
        }
    }

    /// Closes slot `slot` and counts why.
    fn fail(&mut self, slot: usize, was: State, reason: String) {
        self.close(slot);
        if was == State::Established {
            self.counters.lost += 1;
            *self.reasons.entry(format!("lost: {reason}")).or_default() += 1;
        } else {
            self.in_flight = self.in_flight.saturating_sub(1);
            self.failed_now += 1;
            self.fail_handshake(reason);
        }
    }

    /// Drops slot `slot`'s connection (its endpoint forgets it).
    fn close(&mut self, slot: usize) {
        if let Some(Some(c)) = self.conns.get_mut(slot).map(Option::take)
            && let Some(s) = self.socks.get_mut(c.sock)
        {
            s.slots.remove(&c.ch);
        }
    }

    /// Writes the pings that are due, up to [`PINGS_PER_TURN`]; returns
    /// whether more are due.
    fn write_due_pings(&mut self, now: Instant) -> bool {
        let Some(interval) = self.ping_interval else {
            return false;
        };
        for _ in 0..PINGS_PER_TURN {
            let Some(&(due, slot)) = self.pings.front() else {
                return false;
            };
            if due > now {
                return false;
            }
            self.pings.pop_front();
            let nonce = self.next_nonce;
            let Some(Some(c)) = self.conns.get_mut(slot) else {
                continue;
            };
            self.next_nonce += 1;
            let bytes = self
                .encoder
                .encode(&Frame::new(nonce, Body::Ping(Ping { nonce })));
            c.outbuf.extend_from_slice(&bytes);
            self.counters.pings_sent += 1;
            self.pings.push_back((now + interval, slot));
            self.enqueue(slot);
        }
        self.pings.front().is_some_and(|&(due, _)| due <= now)
    }

    /// Gives up handshakes older than [`HANDSHAKE_TIMEOUT`]; returns how many.
    fn expire_handshakes(&mut self, now: Instant) -> u64 {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(slot, c)| {
                let c = c.as_ref()?;
                (c.state != State::Established && now.saturating_duration_since(c.since) > HANDSHAKE_TIMEOUT)
                    .then_some(slot)
            })
            .collect();
        for &slot in &expired {
            self.close(slot);
            self.in_flight = self.in_flight.saturating_sub(1);
            self.fail_handshake(format!("handshake timed out after {HANDSHAKE_TIMEOUT:?}"));
        }
        expired.len() as u64
    }

    /// Counts a failed handshake under `reason`.
    fn fail_handshake(&mut self, reason: String) {
        self.counters.failed_handshakes += 1;
        *self.reasons.entry(reason).or_default() += 1;
    }
}

impl QConn {
    /// Writes queued frame bytes into the stream and reads and handles every
    /// whole frame; returns the `Welcome`'s heartbeat interval when the
    /// handshake completed now.
    ///
    /// # Errors
    /// A description of why the connection is dead.
    fn exchange(
        &mut self,
        decoder: &FrameDecoder,
        now: Instant,
        pongs: &mut u64,
    ) -> Result<Option<Duration>, String> {
        let Some(id) = self.stream else {
            return Ok(None);
        };
        while !self.outbuf.is_empty() {
            match self.conn.send_stream(id).write(&self.outbuf) {
                Ok(n) => {
                    let _ = self.outbuf.split_to(n);
                }
                Err(quinn_proto::WriteError::Blocked) => break,
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        if self.outbuf.is_empty() && self.outbuf.capacity() > 0 {
            // Idle connections hold no buffer.
            self.outbuf = BytesMut::new();
        }
        let mut ended = false;
        {
            let mut recv = self.conn.recv_stream(id);
            match recv.read(true) {
                Ok(mut chunks) => {
                    loop {
                        match chunks.next(usize::MAX) {
                            Ok(Some(chunk)) => self.inbuf.extend_from_slice(&chunk.bytes),
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
        let mut welcomed = None;
        while let Some(bytes) = decoder
            .split(&mut self.inbuf)
            .map_err(|e| format!("bad frame: {e}"))?
        {
            let frame = Frame::decode(&bytes, decoder.limits()).map_err(|e| format!("bad frame: {e}"))?;
            match (self.state, frame.body) {
                (State::AwaitingWelcome, Body::Welcome(welcome)) => {
                    self.state = State::Established;
                    self.since = now;
                    welcomed = Some(Duration::from_millis(u64::from(welcome.heartbeat_interval_ms)));
                }
                (_, Body::Error(error)) => {
                    let code = ErrorCode::from_u16(error.code)
                        .map_or_else(|| format!("code {}", error.code), |code| code.name().to_owned());
                    return Err(format!("server error {code}: {}", error.message));
                }
                (State::Established, Body::Pong(_)) => *pongs += 1,
                (State::Established, _) => {}
                (state, _) => return Err(format!("unexpected frame in state {state:?}")),
            }
        }
        if self.inbuf.is_empty() && self.inbuf.capacity() > 0 {
            self.inbuf = BytesMut::new();
        }
        if ended {
            return Err("closed by server".into());
        }
        Ok(welcomed)
    }
}

/// Checks `--quic-connections-per-socket`.
///
/// # Errors
/// [`BenchError::Usage`] for 0 or more than [`MAX_CONNECTIONS_PER_SOCKET`].
pub(crate) fn check_per_socket(per_socket: usize) -> Result<(), BenchError> {
    if per_socket == 0 || per_socket > MAX_CONNECTIONS_PER_SOCKET {
        return Err(BenchError::Usage(format!(
            "--quic-connections-per-socket {per_socket} is outside 1..={MAX_CONNECTIONS_PER_SOCKET}: one UDP \
             socket's {} MiB receive buffer cannot take the datagram bursts of more connections (the fleet \
             opens as many sockets as the connections need)",
            SOCKET_BUFFER >> 20
        )));
    }
    Ok(())
}

/// A non-blocking UDP socket bound to `local` with large kernel buffers.
fn bind_udp(local: SocketAddr) -> io::Result<mio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&local.into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}
