//! One core's event loop: a thin mio driver around [`Core`].
//!
//! It accepts on its own `SO_REUSEPORT` listeners (one per enabled transport),
//! moves frame bytes between connections' [`Stream`]s (the transport seam)
//! and the core, drains its command queue, fires the core's timers and carries
//! out the core's actions (including token lookups in the store and handing
//! sessions to their home core). Every protocol decision is the core's.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::core::{
    AcceptRefusal, Action, AuthResult, ConnId, Core, CoreConfig, Detached, InputStatus, PreAuthLimits,
    ReadAnswer, ReadTicket, ReplyTicket, SessionSeed,
};
use crate::fdreserve::FdReserve;
use crate::ids::CoreId;
use crate::metrics::Metrics;
use crate::runtime::MembershipError;
use crate::runtime::outbox::{Backpressure, OUTBOX_PAUSE_MARK, Outbox};
use crate::runtime::reader::{Answer, Reader};
use crate::runtime::{COMMANDS_PER_TURN, Command, Mesh};
use crate::store::Store;
use crate::store::writer::{WriteOp, WriterSender};
use crate::transport::quic::{Conns, QuicConn, QuicDriver};
use crate::transport::{Acceptor, Kind, Stream, release_if_empty, tcp};

/// Tokens of the listeners, by [`Kind`] (in [`Kind::ALL`]'s order);
/// connections use their `ConnId` as token.
const LISTENERS: [Token; 3] = [
    Token(usize::MAX - 1),
    Token(usize::MAX - 3),
    Token(usize::MAX - 4),
];
/// Token of the core's QUIC (UDP) socket.
const QUIC_SOCKET: Token = Token(usize::MAX - 5);
/// Token of the waker other threads use after queueing a command.
pub(crate) const WAKER: Token = Token(usize::MAX - 2);
/// Tokens at or above this belong to closed connections that are lingering
/// (`Worker::lingering`, token = base + slab key); below it are live `ConnId`s.
const LINGER_TOKEN_BASE: usize = usize::MAX / 2;

/// Connections accepted per loop turn: a connect storm is spread over turns so
/// established sessions keep being served in between.
const ACCEPTS_PER_TURN: usize = 256;
/// Token lookup answers handed to the core per loop turn (each, on the home
/// core, the session's start: its presence snapshot and friend list). The
/// lookups themselves run on the reader thread; a connect storm of a thousand
/// Hellos would otherwise start every session in one turn, during which no
/// other session on the core is served. The rest wait, in order, for the next
/// turns (polled at once).
const AUTHS_PER_TURN: usize = 16;
/// Read answers (sync plans and pages, History pages) handed to the core per
/// loop turn: each page is up to 1,024 messages to encode, so a full pipeline
/// of answers is spread over turns. The rest wait for the next turns.
const READ_ANSWERS_PER_TURN: usize = 4;
/// Bytes read from one connection per loop turn before moving on to others.
const READ_BYTES_PER_TURN: usize = 256 * 1024;
/// Size of the per-core read scratch buffer (one read syscall's worth).
const READ_CHUNK: usize = 64 * 1024;
/// Bytes queued for one connection before the core stops reading from it
/// (TCP backpressure: a client that does not read its answers is not served).
const MAX_OUTBOUND: usize = 1024 * 1024;
/// Bytes queued for one connection at which it is declared a slow consumer
/// and closed: live pushes must not grow natterd's memory without bound.
/// Roughly 40,000 typical messages, or 20 maximum-size ones.
const MAX_OUTBOUND_HARD: usize = 8 * 1024 * 1024;
/// Outbound bytes at or below which a connection counts as drained: the core
/// is told ([`Core::handle_drained`]) so a sync writes its next page. Well
/// below `MAX_OUTBOUND`, so pages never stop the session's reading.
const DRAIN_MARK: usize = 128 * 1024;
/// Readiness events taken per `poll` call.
const EVENTS_CAPACITY: usize = 1024;
/// How often a core retries commands another core's full queue (or the
/// writer's full queue) refused, when nothing else wakes it: a full target
/// does not wake its senders when it drains, and retrying at once would spin
/// a core at 100 % CPU. A millisecond is far below any client-visible delay.
const RETRY_INTERVAL: Duration = Duration::from_millis(1);
/// Longest a stopping core waits for its closed sockets to deliver their
/// `ShuttingDown` Error and see the peer close (see [`LINGER_TIMEOUT`]):
/// clients close at once on that Error, and a shutdown must not wait long
/// for one that does not.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(500);
/// Longest gap between two write attempts on a socket whose send buffer was
/// full. With a large kernel send buffer, a peer that reads slowly frees too
/// little space for epoll to report the socket writable again (it waits for a
/// third of the buffer), so natterd would see no progress for many seconds
/// and close a live client as silent. Retrying the write every so often shows
/// whether the peer took bytes (it is reading) or not (it may be gone). A
/// quarter of the heartbeat timeout (at most this) leaves several probes per
/// timeout; each costs one failed `write` per blocked socket.
const MAX_WRITE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a closed connection lingers: after its last frames (usually the
/// Error saying why) are written and its write side is shut down, input is
/// read and discarded until the peer closes or this passes. Closing a socket
/// with unread input makes the kernel send a reset, which can destroy the
/// Error before the peer reads it; PROTOCOL.md promises the Error arrives. Long
/// enough for a client on a slow link to read the Error and close; short
/// enough that closed sockets (one file each) do not pile up: at most the
/// closes of the last two seconds linger.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// A session moving to another core, with its socket and buffered bytes.
#[derive(Debug)]
pub struct Adopted {
    stream: Stream,
    session: Detached,
    inbound: BytesMut,
    outbound: VecDeque<Bytes>,
}

/// What every core shares: the queue mesh, the store, the writer's queue and the metrics.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) mesh: Mesh,
    pub(crate) store: Arc<Store>,
    pub(crate) writer: WriterSender,
    pub(crate) metrics: Arc<Metrics>,
    /// The caps on connections awaiting authentication on this core.
    pub(crate) preauth: PreAuthLimits,
}

/// One client socket and its byte buffers. Empty buffers hold no allocation,
/// so an idle session costs only this struct and the core's session entry.
#[derive(Debug)]
struct Socket {
    stream: Stream,
    /// Bytes read but not yet consumed by the core (a partial frame, or frames
    /// left for the next turn).
    inbound: BytesMut,
    /// Frames (or their unwritten tails) waiting for the socket to drain.
    outbound: VecDeque<Bytes>,
    queued: usize,
    /// Reading stopped: the core paused input or too much outbound is queued.
    read_blocked: bool,
    /// In `Worker::drained`, waiting to be reported to the core.
    drain_noted: bool,
    /// The last write hit `WouldBlock`: the kernel's send buffer was full, so
    /// the next write that makes progress proves the peer is reading.
    write_blocked: bool,
    /// In `Worker::deferred`, waiting for the outbox to drain.
    deferred: bool,
    /// In `Worker::write_probes`, to be written again at the next probe.
    probe_listed: bool,
}

/// A closed connection's socket, kept a moment so its last frames reach the
/// peer before the socket is closed (see [`LINGER_TIMEOUT`]).
#[derive(Debug)]
struct Lingering {
    stream: Stream,
    /// Frames still to write before the write side is shut down.
    outbound: VecDeque<Bytes>,
    /// The transport's goodbye (TLS close_notify, WebSocket Close) is queued.
    goodbye: bool,
    /// `shutdown(Write)` done: only discarding input until EOF.
    half_closed: bool,
    /// The peer closed its side (read returned 0).
    eof: bool,
    deadline: Instant,
}

/// The event loop of one core.
pub(crate) struct Worker {
    id: CoreId,
    poll: Poll,
    /// One listener per enabled transport, with `accept_pending` per listener.
    listeners: Vec<(Kind, TcpListener, bool)>,
    /// This core's QUIC endpoint and socket (`--quic-port`), if enabled.
    quic: Option<QuicDriver>,
    /// QUIC sessions read or written since their connection was last driven.
    quic_dirty: Vec<ConnId>,
    acceptor: Arc<Acceptor>,
    queue: Receiver<Command>,
    mesh: Mesh,
    core: Core,
    sockets: Vec<Option<Socket>>,
    metrics: Arc<Metrics>,
    scratch: Box<[u8]>,
    /// Connections with work left over from the last turn (budget ran out).
    again: Vec<ConnId>,
    /// Connections given frames since their queue was last empty: written once
    /// the current batch of actions is carried out.
    unflushed: Vec<ConnId>,
    /// Connections whose outbound drained to `DRAIN_MARK` since they were last
    /// reported; reported once per turn, so a sync writes one page per turn.
    drained: Vec<ConnId>,
    /// Commands for other cores not yet taken by their queues, FIFO per target
    /// core (see `outbox.rs`); retried every turn.
    outbox: Outbox<Command>,
    /// Reading client sockets is paused because the outbox is past
    /// [`OUTBOX_PAUSE_MARK`] (backpressure instead of growth).
    reads_paused: bool,
    /// The most bytes queued for one connection since start (published as
    /// `natter_outbound_peak_bytes` when it grows).
    outbound_peak: usize,
    /// Connections with readiness (or buffered input) not served while reads
    /// were paused; served again once the outbox drains.
    deferred: Vec<ConnId>,
    /// Connections whose last write hit `WouldBlock`, retried every
    /// `probe_interval` (see [`MAX_WRITE_PROBE_INTERVAL`]).
    write_probes: Vec<ConnId>,
    probe_interval: Duration,
    next_probe: Instant,
    /// Connections whose socket took bytes again after it had been full:
    /// reported to the core as liveness ([`Core::handle_output_progress`]).
    progressed: Vec<ConnId>,
    /// Closed connections whose last frames are still leaving (token =
    /// [`LINGER_TOKEN_BASE`] + key), and their deadlines in order.
    lingering: slab::Slab<Lingering>,
    linger_deadlines: VecDeque<(Instant, usize)>,
    /// Lingering sockets whose read budget ran out: served again next turn.
    linger_again: Vec<usize>,
    /// The storage writer's queue, and what did not fit in it yet (kept in order).
    writer: WriterSender,
    write_backlog: VecDeque<WriteOp>,
    shutting_down: bool,
    /// Token lookups answered by the reader and not yet handed to the core
    /// (see [`AUTHS_PER_TURN`]), in order.
    pending_auths: VecDeque<(ConnId, String, AuthResult, Option<SessionSeed>)>,
    /// HTTP workers waiting for a membership change's outcome, by the ticket
    /// the core echoes in `Action::MembershipReply`.
    membership_waiters:
        std::collections::HashMap<u64, crossbeam_channel::Sender<Result<(), MembershipError>>>,
    next_membership_ticket: u64,
    /// This core's store reader (sync and History reads, off the loop).
    reader: Reader,
    /// A spare descriptor: `accept` never stalls when the process is out of them.
    fd_reserve: FdReserve,
    /// Most sockets lingering at once (the pre-authentication total: both
    /// bound what anonymous connections can cost in descriptors).
    max_lingering: usize,
    /// Read answers taken from the reader and not yet handed to the core
    /// (see [`READ_ANSWERS_PER_TURN`]), in order.
    pending_reads: VecDeque<(ReadTicket, ReadAnswer)>,
}

impl Worker {
    /// Builds the loop for core `id`; the listener is registered here.
    pub(crate) fn new(
        config: CoreConfig,
        poll: Poll,
        listeners: Vec<(Kind, TcpListener)>,
        mut quic: Option<QuicDriver>,
        acceptor: Arc<Acceptor>,
        queue: Receiver<Command>,
        shared: Shared,
    ) -> io::Result<Self> {
        let Shared {
            mesh,
            store,
            writer,
            metrics,
            preauth,
        } = shared;
        let mut registered = Vec::with_capacity(listeners.len());
        for (kind, mut listener) in listeners {
            poll.registry()
                .register(&mut listener, listener_token(kind), Interest::READABLE)?;
            registered.push((kind, listener, false));
        }
        if let Some(quic) = &mut quic {
            poll.registry()
                .register(quic.socket(), QUIC_SOCKET, Interest::READABLE)?;
        }
        let cores = config.cores;
        let probe_interval =
            (config.heartbeat_timeout / 4).clamp(Duration::from_millis(5), MAX_WRITE_PROBE_INTERVAL);
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let reader = Reader::start(config.core, config.cores, store.clone(), mesh.clone())?;
        let mut core = Core::new(config.clone(), store, Instant::now(), unix_ms);
        core.set_preauth_limits(preauth);
        Ok(Self {
            reader,
            id: config.core,
            core,
            fd_reserve: FdReserve::new(),
            max_lingering: preauth.total.max(1),
            poll,
            listeners: registered,
            quic,
            quic_dirty: Vec::new(),
            acceptor,
            queue,
            mesh,
            sockets: Vec::new(),
            metrics,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            again: Vec::new(),
            unflushed: Vec::new(),
            drained: Vec::new(),
            outbox: Outbox::new(cores),
            reads_paused: false,
            outbound_peak: 0,
            deferred: Vec::new(),
            progressed: Vec::new(),
            write_probes: Vec::new(),
            probe_interval,
            next_probe: Instant::now() + probe_interval,
            lingering: slab::Slab::new(),
            linger_deadlines: VecDeque::new(),
            linger_again: Vec::new(),
            writer,
            write_backlog: VecDeque::new(),
            shutting_down: false,
            pending_auths: VecDeque::new(),
            pending_reads: VecDeque::new(),
            membership_waiters: std::collections::HashMap::new(),
            next_membership_ticket: 0,
        })
    }

    /// Runs until a [`Command::Shutdown`] has been handled.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        tracing::debug!(core = self.id.0, "event loop started");
        loop {
            let timeout = if !self.again.is_empty()
                || !self.pending_auths.is_empty()
                || !self.pending_reads.is_empty()
                || !self.drained.is_empty()
                || !self.progressed.is_empty()
                || !self.linger_again.is_empty()
                || self.accept_pending()
                || !self.quic_dirty.is_empty()
                || self.quic.as_ref().is_some_and(QuicDriver::has_work)
            {
                Some(Duration::ZERO)
            } else {
                let now = Instant::now();
                let mut at = self.core.poll_timeout();
                if let Some(&(deadline, _)) = self.linger_deadlines.front() {
                    at = Some(at.map_or(deadline, |a| a.min(deadline)));
                }
                if let Some(deadline) = self.quic.as_ref().and_then(QuicDriver::next_deadline) {
                    at = Some(at.map_or(deadline, |a| a.min(deadline)));
                }
                if !self.write_probes.is_empty() {
                    let probe = self.next_probe;
                    at = Some(at.map_or(probe, |a| a.min(probe)));
                }
                if !self.outbox.is_empty() || !self.write_backlog.is_empty() {
                    let retry = now + RETRY_INTERVAL;
                    at = Some(at.map_or(retry, |a| a.min(retry)));
                }
                at.map(|at| at.saturating_duration_since(now))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            let again = std::mem::take(&mut self.again);
            for conn in again {
                self.service_read(conn, now);
            }
            for key in std::mem::take(&mut self.linger_again) {
                self.service_lingering(key);
            }
            for event in &events {
                match event.token() {
                    token if LISTENERS.contains(&token) => {
                        for (kind, _, pending) in &mut self.listeners {
                            *pending |= listener_token(*kind) == token;
                        }
                    }
                    WAKER => {}
                    QUIC_SOCKET => {
                        if let Some(quic) = &mut self.quic {
                            quic.set_readable();
                        }
                    }
                    Token(t) if t >= LINGER_TOKEN_BASE => self.service_lingering(t - LINGER_TOKEN_BASE),
                    token => {
                        let conn = ConnId(token.0);
                        if event.is_writable() {
                            self.flush(conn);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.service_read(conn, now);
                        }
                    }
                }
            }
            self.quic_turn(now);
            if now >= self.next_probe {
                self.next_probe = now + self.probe_interval;
                self.probe_writes();
            }
            self.report_drained(now);
            if self.accept_pending() && !self.shutting_down {
                self.accept(now);
            }
            self.drain_commands(now);
            self.drain_reads(now);
            self.core.handle_timeout(now);
            self.core.handle_end_of_turn();
            self.run_actions();
            self.quic_drive_dirty(now);
            self.flush_outbox();
            self.flush_writes();
            self.expire_lingering(now);
            self.publish_stats();
            self.metrics_core().observe_turn(now.elapsed());
            let reads = crate::store::take_reads_on_this_thread();
            self.metrics_core()
                .loop_store_reads
                .fetch_add(reads, Ordering::Relaxed);
            if self.shutting_down {
                break;
            }
        }
        self.finish_writes();
        self.finish_lingering(&mut events);
        tracing::debug!(core = self.id.0, "event loop stopped");
        Ok(())
    }

    /// Leaving the loop: gives the sockets just closed (each with its
    /// `ShuttingDown` Error) up to [`SHUTDOWN_LINGER`] to deliver it and see
    /// the peer close, serving nothing else meanwhile.
    fn finish_lingering(&mut self, events: &mut Events) {
        let deadline = Instant::now() + SHUTDOWN_LINGER;
        while !self.lingering.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.poll.poll(events, Some(deadline - now)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
            for event in events.iter() {
                if let Token(t) = event.token()
                    && t >= LINGER_TOKEN_BASE
                {
                    self.service_lingering(t - LINGER_TOKEN_BASE);
                }
            }
            for key in std::mem::take(&mut self.linger_again) {
                self.service_lingering(key);
            }
        }
    }

    /// Leaving the loop: hands the writer what its queue could not take yet
    /// (the `last_seen` of users still online, written by the shutdown), so
    /// the writer's final round commits it. Blocking here is safe: the writer
    /// never waits on a core (it keeps refused completions and retries them).
    fn finish_writes(&mut self) {
        for op in self.write_backlog.drain(..) {
            if self.writer.send_blocking(op).is_err() {
                tracing::error!(
                    core = self.id.0,
                    "the storage writer stopped before the shutdown's writes"
                );
                break;
            }
        }
    }

    /// Whether a listener has connections left to accept.
    fn accept_pending(&self) -> bool {
        self.listeners.iter().any(|(_, _, pending)| *pending)
    }

    /// Accepts from every listener with connections waiting, up to
    /// [`ACCEPTS_PER_TURN`] in all, and wraps each socket in its listener's
    /// transport. A TLS handshake or WebSocket upgrade then runs as the
    /// connection's first reads and writes, under the core's pre-authentication
    /// deadline like a raw connection's `Hello`.
    fn accept(&mut self, now: Instant) {
        let mut budget = ACCEPTS_PER_TURN;
        for i in 0..self.listeners.len() {
            while budget > 0 {
                let Some((kind, listener, pending)) = self.listeners.get_mut(i) else {
                    break;
                };
                let kind = *kind;
                if !*pending {
                    break;
                }
                let (tcp, peer) = match listener.accept() {
                    Ok(pair) => pair,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        *pending = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if FdReserve::is_out_of_fds(&e) => {
                        // Out of descriptors: accept-and-close with the spare, so the
                        // backlog drains and clients see a close instead of hanging.
                        budget -= 1;
                        if !self.fd_reserve.shed(|| listener.accept()) {
                            *pending = false;
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        // Other failures: the listener stays readable; back off
                        // until the next turn instead of spinning.
                        *pending = false;
                        tracing::warn!(core = self.id.0, error = %e, "accept failed");
                        break;
                    }
                };
                budget -= 1;
                self.metrics_core().accepted.fetch_add(1, Ordering::Relaxed);
                let stream = match tcp::configure_stream(&tcp).and_then(|()| self.acceptor.wrap(kind, tcp)) {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(core = self.id.0, error = %e, "could not set up a connection");
                        continue;
                    }
                };
                let conn = match self.core.handle_accept_from(peer.ip(), now) {
                    Ok(conn) => conn,
                    Err(AcceptRefusal::Full) => {
                        let frame = self.core.refusal();
                        self.linger(stream, VecDeque::from([frame]), now);
                        continue;
                    }
                    Err(AcceptRefusal::PerAddress(frame)) => {
                        // Closed at once, without lingering: an abuser's refusals
                        // must not hold descriptors. Raw TCP gets the Error if it fits.
                        let mut stream = stream;
                        if kind == Kind::Tcp
                            && let Some(tcp) = stream.tcp()
                        {
                            let _ = io::Write::write(tcp, &frame);
                        }
                        continue;
                    }
                };
                if let Err(e) = self.install(conn, stream, BytesMut::new(), VecDeque::new()) {
                    tracing::debug!(core = self.id.0, error = %e, "could not register a connection");
                    self.core.handle_closed(conn);
                }
                self.run_actions();
                // Read at once: a Hello (or TLS ClientHello) already buffered
                // is handled before the next accept can push this connection
                // out of a full pre-authentication table.
                self.service_read(conn, now);
            }
        }
        // Budget spent: a listener stays pending, so the loop polls with a zero timeout.
    }

    fn install(
        &mut self,
        conn: ConnId,
        mut stream: Stream,
        inbound: BytesMut,
        outbound: VecDeque<Bytes>,
    ) -> io::Result<()> {
        if let Stream::Quic(q) = &mut stream {
            if let Some(quic) = &mut self.quic {
                quic.settle(q, conn);
                self.quic_dirty.push(conn);
            }
        } else if let Some(tcp) = stream.tcp() {
            self.poll
                .registry()
                .register(tcp, Token(conn.0), Interest::READABLE | Interest::WRITABLE)?;
        }
        if self.sockets.len() <= conn.0 {
            self.sockets.resize_with(conn.0 + 1, || None);
        }
        let queued = outbound.iter().map(Bytes::len).sum();
        if let Some(slot) = self.sockets.get_mut(conn.0) {
            *slot = Some(Socket {
                stream,
                inbound,
                outbound,
                queued,
                read_blocked: false,
                drain_noted: false,
                write_blocked: false,
                deferred: false,
                probe_listed: false,
            });
        }
        Ok(())
    }

    fn socket(&mut self, conn: ConnId) -> Option<&mut Socket> {
        self.sockets.get_mut(conn.0).and_then(Option::as_mut)
    }

    /// Reads what the socket has (within the per-turn budget) and feeds the core.
    /// While reads are paused (outbox past its mark) the connection is only
    /// noted, and served once the outbox has drained.
    fn service_read(&mut self, conn: ConnId, now: Instant) {
        if self.reads_paused {
            if let Some(socket) = self.socket(conn)
                && !socket.deferred
            {
                socket.deferred = true;
                self.deferred.push(conn);
            }
            return;
        }
        let mut budget = READ_BYTES_PER_TURN;
        loop {
            // First let the core consume what is buffered.
            let status = {
                let Some(socket) = self.sockets.get_mut(conn.0).and_then(Option::as_mut) else {
                    return;
                };
                if socket.queued > MAX_OUTBOUND {
                    // Its answers are not being read: execute none of its
                    // requests until they drain (`flush` re-reads then), so a
                    // pipeline of requests cannot make natterd hold more
                    // than MAX_OUTBOUND plus one call's replies.
                    socket.read_blocked = true;
                    return;
                }
                if socket.inbound.is_empty() {
                    InputStatus::Drained
                } else {
                    let mut inbound = std::mem::take(&mut socket.inbound);
                    let status = self.core.handle_input(conn, &mut inbound, now);
                    if let Some(socket) = self.socket(conn) {
                        socket.inbound = inbound;
                    }
                    status
                }
            };
            let acted = self.run_actions();
            let Some(socket) = self.socket(conn) else {
                return;
            };
            // Give the buffer back: idle sessions hold no read memory.
            release_if_empty(&mut socket.inbound);
            match status {
                InputStatus::Drained => {}
                InputStatus::Budget => {
                    self.again.push(conn);
                    return;
                }
                // The actions just carried out may have ended the pause: a token
                // looked up at once makes the session Active on this (its home)
                // core, and the frames pipelined behind its Hello — already in
                // `inbound` or still in the kernel — must be handled now, after
                // the Welcome, not whenever the client next sends a byte.
                InputStatus::Paused if acted => continue,
                InputStatus::Paused => {
                    socket.read_blocked = true;
                    return;
                }
            }
            if socket.queued > MAX_OUTBOUND {
                socket.read_blocked = true;
                return;
            }
            socket.read_blocked = false;
            if budget == 0 {
                self.again.push(conn);
                return;
            }
            let Some(socket) = self.sockets.get_mut(conn.0).and_then(Option::as_mut) else {
                return;
            };
            let result = socket.stream.read(&mut self.scratch);
            if socket.stream.take_dirty() {
                self.quic_dirty.push(conn);
            }
            match result {
                Ok(0) => return self.close(conn),
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    let data = self.scratch.get(..n).unwrap_or_default();
                    if let Some(socket) = self.sockets.get_mut(conn.0).and_then(Option::as_mut) {
                        socket.inbound.extend_from_slice(data);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(conn),
            }
        }
    }

    /// Writes queued frames until the socket would block, up to
    /// [`WRITE_SLICES`] frames per (vectored) write.
    fn flush(&mut self, conn: ConnId) {
        let Some(socket) = self.socket(conn) else {
            return;
        };
        let mut blocked = false;
        let mut progressed = false;
        loop {
            // Frames first (each transport writes them its way: vectored on
            // TCP and TLS, one message each on WebSocket), then whatever the
            // transport holds itself (records, handshake answers).
            let written = if socket.outbound.is_empty() {
                match socket.stream.flush_buffered() {
                    Ok(()) => break,
                    Err(e) => Err(e),
                }
            } else {
                socket.stream.write_frames(&mut socket.outbound)
            };
            match written {
                Ok(n) => {
                    if socket.write_blocked {
                        // The peer acknowledged data that had filled its window:
                        // it is alive and reading, even if it sends nothing.
                        socket.write_blocked = false;
                        progressed = true;
                    }
                    socket.queued -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    socket.write_blocked = true;
                    if !socket.probe_listed {
                        socket.probe_listed = true;
                        self.write_probes.push(conn);
                    }
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(conn),
            }
        }
        if self.socket(conn).is_some_and(|s| s.stream.take_dirty()) {
            self.quic_dirty.push(conn);
        }
        if progressed {
            self.progressed.push(conn);
        }
        let Some(socket) = self.socket(conn) else {
            return;
        };
        if socket.queued <= DRAIN_MARK && !socket.drain_noted {
            socket.drain_noted = true;
            self.drained.push(conn);
        }
        if blocked {
            return;
        }
        let Some(socket) = self.socket(conn) else {
            return;
        };
        if socket.outbound.capacity() > 0 {
            socket.outbound = VecDeque::new();
        }
        if socket.read_blocked && socket.queued <= MAX_OUTBOUND / 2 {
            socket.read_blocked = false;
            self.again.push(conn);
        }
    }

    /// Writes again to every socket whose send buffer was full (see
    /// [`MAX_WRITE_PROBE_INTERVAL`]); one that takes bytes is reported as
    /// progress by `flush`, one that still would block is listed again.
    fn probe_writes(&mut self) {
        for conn in std::mem::take(&mut self.write_probes) {
            let Some(socket) = self.socket(conn) else {
                continue;
            };
            socket.probe_listed = false;
            if socket.write_blocked {
                self.flush(conn);
            }
        }
    }

    /// Tells the core which connections drained (see `drained`) and which
    /// made output progress (see `progressed`).
    fn report_drained(&mut self, now: Instant) {
        let progressed = std::mem::take(&mut self.progressed);
        for conn in progressed {
            self.core.handle_output_progress(conn, now);
            self.run_actions();
        }
        let drained = std::mem::take(&mut self.drained);
        for conn in drained {
            let Some(socket) = self.socket(conn) else {
                continue;
            };
            socket.drain_noted = false;
            self.core.handle_drained(conn, now);
            self.run_actions();
        }
    }

    fn transmit(&mut self, conn: ConnId, frame: Bytes) {
        let Some(socket) = self.socket(conn) else {
            return;
        };
        socket.queued += frame.len();
        socket.outbound.push_back(frame);
        let queued = socket.queued;
        let first = socket.outbound.len() == 1;
        if queued > self.outbound_peak {
            self.outbound_peak = queued;
            self.metrics_core()
                .outbound_peak_bytes
                .store(queued as u64, Ordering::Relaxed);
        }
        if queued > MAX_OUTBOUND_HARD {
            self.core.handle_outbound_overflow(conn);
        } else if first {
            // Written at the end of this batch of actions, with whatever else
            // the batch queues for the connection.
            self.unflushed.push(conn);
        }
    }

    /// Closes the connection and tells the core. The socket lingers (see
    /// [`Worker::linger`]) so the frames queued for it, usually the Error that
    /// says why, reach the peer.
    fn close(&mut self, conn: ConnId) {
        if let Some(mut socket) = self.sockets.get_mut(conn.0).and_then(Option::take) {
            if let Some(tcp) = socket.stream.tcp() {
                let _ = self.poll.registry().deregister(tcp);
            }
            self.linger(socket.stream, socket.outbound, Instant::now());
        }
        self.core.handle_closed(conn);
    }

    /// The graceful close (our choice over `SO_LINGER`, which would block the
    /// loop or reset): write `outbound`, then `shutdown(Write)` so the peer
    /// reads everything followed by EOF, then read and discard its input until
    /// it closes too or [`LINGER_TIMEOUT`] passes. Only then is the socket
    /// closed: with its receive queue empty the kernel sends FIN, not a reset
    /// that could destroy the unread Error at the peer.
    ///
    /// On TLS and WebSocket the transport's own goodbye follows the frames; a
    /// connection whose handshake had not completed gets no frames (they could
    /// not be read) but still its goodbye (an alert, or the HTTP refusal the
    /// upgrade already queued).
    ///
    /// At most `max_lingering` sockets linger (each is a file): past it, the
    /// one lingering longest is closed at once, so that a flood of refused or
    /// evicted connections cannot exhaust the descriptors through lingering.
    fn linger(&mut self, stream: Stream, mut outbound: VecDeque<Bytes>, now: Instant) {
        if !stream.established() {
            outbound.clear();
        }
        let stream = match stream {
            // QUIC's goodbye (frames, FIN, CONNECTION_CLOSE, draining) is its driver's.
            Stream::Quic(q) => {
                if let Some(quic) = &mut self.quic {
                    quic.linger(*q, outbound, now);
                }
                return;
            }
            stream => stream,
        };
        while self.lingering.len() >= self.max_lingering {
            let Some((deadline, key)) = self.linger_deadlines.pop_front() else {
                break;
            };
            // Skip entries whose socket is gone (or whose key was reused).
            if self.lingering.get(key).is_some_and(|l| l.deadline == deadline) {
                self.drop_lingering(key);
            }
        }
        let entry = self.lingering.vacant_entry();
        let key = entry.key();
        let mut lingering = Lingering {
            stream,
            outbound,
            goodbye: false,
            half_closed: false,
            eof: false,
            deadline: now + LINGER_TIMEOUT,
        };
        let Some(tcp) = lingering.stream.tcp() else {
            return;
        };
        if self
            .poll
            .registry()
            .register(
                tcp,
                Token(LINGER_TOKEN_BASE + key),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return;
        }
        entry.insert(lingering);
        self.linger_deadlines.push_back((now + LINGER_TIMEOUT, key));
        self.service_lingering(key);
    }

    /// Moves a lingering socket on: writes what is left, half-closes, discards
    /// input; drops it once the peer has closed and everything is written, or
    /// on any error.
    fn service_lingering(&mut self, key: usize) {
        let Some(l) = self.lingering.get_mut(key) else {
            return;
        };
        let mut done = false;
        let mut blocked = false;
        while !l.outbound.is_empty() {
            match l.stream.write_frames(&mut l.outbound) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(_) => {
                    done = true;
                    break;
                }
            }
        }
        if !done && !blocked && !l.goodbye {
            l.goodbye = true;
            l.stream.start_close();
        }
        if !done && !blocked && l.goodbye && !l.half_closed {
            match l.stream.flush_buffered() {
                Ok(()) => {
                    l.half_closed = true;
                    done = l
                        .stream
                        .tcp()
                        .is_none_or(|tcp| tcp.shutdown(std::net::Shutdown::Write).is_err());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => done = true,
            }
        }
        // Discard input within the per-turn read budget; what is left is read
        // next turn (the deadline bounds how long a flood costs us).
        let mut budget = READ_BYTES_PER_TURN;
        while !done && !l.eof {
            // Raw bytes: after the goodbye nothing is decoded any more.
            let Some(tcp) = l.stream.tcp() else {
                done = true;
                break;
            };
            match tcp.read(&mut self.scratch) {
                Ok(0) => l.eof = true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.linger_again.push(key);
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => done = true,
            }
        }
        if done || (l.eof && l.half_closed) {
            self.drop_lingering(key);
        }
    }

    fn drop_lingering(&mut self, key: usize) {
        if let Some(mut l) = self.lingering.try_remove(key)
            && let Some(tcp) = l.stream.tcp()
        {
            let _ = self.poll.registry().deregister(tcp);
        }
    }

    /// Closes lingering sockets whose deadline passed.
    fn expire_lingering(&mut self, now: Instant) {
        while let Some(&(deadline, key)) = self.linger_deadlines.front() {
            if deadline > now {
                break;
            }
            self.linger_deadlines.pop_front();
            // The key may have been dropped and reused meanwhile: check the deadline.
            if self.lingering.get(key).is_some_and(|l| l.deadline <= now) {
                self.drop_lingering(key);
            }
        }
    }

    /// Carries out the core's actions, then writes what they queued. Returns
    /// whether there was any action.
    fn run_actions(&mut self) -> bool {
        let mut acted = false;
        while let Some(action) = self.core.poll_action() {
            acted = true;
            match action {
                Action::Transmit { conn, frame } => self.transmit(conn, frame),
                Action::Close { conn } => self.close(conn),
                Action::Authenticate { conn, token } => {
                    let epoch = self.core.friends_epoch();
                    if let Some(failed) = self.reader.authenticate(conn, token, epoch) {
                        self.take_answer(failed);
                    }
                }
                Action::Migrate { conn, to } => self.migrate(conn, to),
                Action::ToCore { core, msgs } => self.outbox.push(core, Command::Core(msgs)),
                Action::Write(op) => {
                    if self.write_backlog.is_empty() {
                        if let Err(op) = self.writer.try_send(op) {
                            self.write_backlog.push_back(op);
                        }
                    } else {
                        self.write_backlog.push_back(op);
                    }
                }
                Action::Read { ticket, request, .. } => {
                    if let Some(failed) = self.reader.read(ticket, request) {
                        self.take_answer(failed);
                    }
                }
                Action::ResumeInput { conn } => self.again.push(conn),
                Action::MembershipReply { reply, result } => {
                    // The HTTP worker may have given up waiting; nothing to do then.
                    if let Some(waiter) = self.membership_waiters.remove(&reply.0) {
                        let _ = waiter.send(result);
                    }
                }
            }
        }
        // Flushing never queues frames, so the list can be drained in place.
        let mut unflushed = std::mem::take(&mut self.unflushed);
        for conn in unflushed.drain(..) {
            self.flush(conn);
        }
        self.unflushed = unflushed;
        acted
    }

    fn migrate(&mut self, conn: ConnId, to: CoreId) {
        let socket = self.sockets.get_mut(conn.0).and_then(Option::take);
        let session = self.core.detach(conn);
        let (Some(mut socket), Some(session)) = (socket, session) else {
            return;
        };
        if let Stream::Quic(q) = &socket.stream {
            if let Some(quic) = &mut self.quic {
                quic.moved(q, to);
            }
        } else if let Some(tcp) = socket.stream.tcp() {
            let _ = self.poll.registry().deregister(tcp);
        }
        let adopted = Adopted {
            stream: socket.stream,
            session,
            inbound: socket.inbound,
            outbound: socket.outbound,
        };
        // Behind everything already waiting for that core (FIFO per pair).
        self.outbox.push(to, Command::Adopt(Box::new(adopted)));
    }

    /// Sends the commands queued for other cores, FIFO per target: what a
    /// full queue refuses stays, with everything behind it for that core, for
    /// the next turn. Each target core is woken once per turn. Then pauses or
    /// resumes reading client sockets by the outbox's length.
    fn flush_outbox(&mut self) {
        let mesh = &self.mesh;
        self.outbox
            .flush(|to, cmd| mesh.try_push(to, cmd), |core| mesh.wake(core));
        let waiting = self.outbox.len();
        match self.outbox.backpressure() {
            Backpressure::Unchanged => {}
            Backpressure::Pause => {
                self.reads_paused = true;
                tracing::warn!(
                    core = self.id.0,
                    waiting,
                    mark = OUTBOX_PAUSE_MARK,
                    "other cores are not taking commands: reading client sockets paused"
                );
            }
            Backpressure::Resume => {
                self.reads_paused = false;
                tracing::info!(
                    core = self.id.0,
                    waiting,
                    "other cores caught up: reading resumed"
                );
                for conn in std::mem::take(&mut self.deferred) {
                    if let Some(socket) = self.socket(conn) {
                        socket.deferred = false;
                        self.again.push(conn);
                    }
                }
            }
        }
    }

    /// Hands the writes the writer's queue could not take earlier, in order.
    fn flush_writes(&mut self) {
        while let Some(op) = self.write_backlog.pop_front() {
            if let Err(op) = self.writer.try_send(op) {
                self.write_backlog.push_front(op);
                return;
            }
        }
    }

    fn drain_commands(&mut self, now: Instant) {
        for _ in 0..COMMANDS_PER_TURN {
            let Ok(cmd) = self.queue.try_recv() else {
                return;
            };
            match cmd {
                Command::Adopt(adopted) => {
                    let Adopted {
                        stream,
                        session,
                        inbound,
                        outbound,
                    } = *adopted;
                    let conn = self.core.handle_adopt(session, now);
                    if let Err(e) = self.install(conn, stream, inbound, outbound) {
                        tracing::debug!(core = self.id.0, error = %e, "could not adopt a connection");
                        self.core.handle_closed(conn);
                    }
                    self.run_actions();
                    // Frames pipelined behind the Hello wait in the inbound buffer.
                    self.service_read(conn, now);
                }
                Command::Core(msgs) => {
                    self.core.handle_core_msgs(msgs, now);
                    self.run_actions();
                }
                Command::Committed(completions) => {
                    self.core.handle_committed(completions, now);
                    self.run_actions();
                }
                Command::Membership { change, reply } => {
                    // The core answers by ticket; the channel stays here. At most one
                    // entry per HTTP worker waiting (each waits for its answer).
                    self.next_membership_ticket += 1;
                    let ticket = ReplyTicket(self.next_membership_ticket);
                    self.membership_waiters.insert(ticket.0, reply);
                    self.core.handle_membership(change, ticket, now);
                    self.run_actions();
                }
                Command::CloseDevice { user, device } => {
                    self.core.handle_close_device(user, device);
                    self.run_actions();
                }
                Command::FriendsChanged { a, b } => {
                    self.core.handle_friends_changed(a, b, now);
                    self.run_actions();
                }
                Command::PresenceQuery { user, reply } => {
                    // The HTTP worker may have given up waiting; nothing to do then.
                    let _ = reply.send(self.core.presence_of(user, now));
                }
                Command::PushLiveness {
                    devices,
                    silent_after,
                    reply,
                } => {
                    // The push thread may have given up waiting; nothing to do then.
                    let _ = reply.send(self.core.devices_heard_within(&devices, silent_after, now));
                }
                Command::Quic(cmd) => {
                    if let Some(quic) = &mut self.quic {
                        quic.handle_command(&mut self.sockets, *cmd, now);
                    }
                }
                Command::Shutdown => {
                    self.shutting_down = true;
                    self.core.handle_shutdown();
                    self.run_actions();
                }
            }
        }
        // Budget spent with commands left: come back at once.
        if !self.queue.is_empty() {
            self.mesh.wake(self.id);
        }
    }

    /// Keeps an answer of the reader for the core, in order with the others of its kind.
    fn take_answer(&mut self, answer: Answer) {
        match answer {
            Answer::Read(ticket, answer) => self.pending_reads.push_back((ticket, answer)),
            Answer::Auth {
                conn,
                token,
                result,
                seed,
            } => self.pending_auths.push_back((conn, token, result, seed)),
        }
    }

    /// Hands the core what its reader answered, within this turn's budgets
    /// ([`AUTHS_PER_TURN`], [`READ_ANSWERS_PER_TURN`]); the rest waits, in
    /// order, for the next turns. A lookup is reported only for the token it
    /// was made for: an entry whose connection no longer waits for it (it
    /// closed, and its id may belong to another connection now) is dropped.
    fn drain_reads(&mut self, now: Instant) {
        while let Some(answer) = self.reader.answer() {
            self.take_answer(answer);
        }
        for _ in 0..AUTHS_PER_TURN {
            let Some((conn, token, result, seed)) = self.pending_auths.pop_front() else {
                break;
            };
            if !self.core.is_authenticating(conn, &token) {
                continue;
            }
            self.core.handle_auth_seeded(conn, result, seed, now);
            self.run_actions();
            // Frames pipelined behind its Hello wait in the inbound buffer.
            self.again.push(conn);
        }
        for _ in 0..READ_ANSWERS_PER_TURN {
            let Some((ticket, answer)) = self.pending_reads.pop_front() else {
                break;
            };
            self.core.handle_read(ticket, answer, now);
            self.run_actions();
        }
    }

    /// The QUIC part of a turn: datagrams in (within their budget), due
    /// connection timers, new connections installed like accepted sockets
    /// (under the core's pre-authentication deadline), then the sessions
    /// whose connections have news are served like readable sockets.
    fn quic_turn(&mut self, now: Instant) {
        let Some(quic) = &mut self.quic else {
            return;
        };
        quic.turn(&mut self.sockets, now);
        for q in quic.take_accepted() {
            self.metrics_core().accepted.fetch_add(1, Ordering::Relaxed);
            let stream = Stream::Quic(Box::new(q));
            let Some(conn) = self.core.handle_accept(now) else {
                let frame = self.core.refusal();
                self.linger(stream, VecDeque::from([frame]), now);
                continue;
            };
            if let Err(e) = self.install(conn, stream, BytesMut::new(), VecDeque::new()) {
                tracing::debug!(core = self.id.0, error = %e, "could not install a QUIC connection");
                self.core.handle_closed(conn);
            }
            self.run_actions();
        }
        self.quic_drive_dirty(now);
    }

    /// Drives the QUIC connections of sessions read or written this turn
    /// (their acknowledgements, credit and data leave now), serves those with
    /// news, and hands the commands for other cores to the outbox. A few
    /// rounds at most: what is left is driven at the start of the next turn.
    fn quic_drive_dirty(&mut self, now: Instant) {
        for _round in 0..4 {
            let Some(quic) = &mut self.quic else {
                return;
            };
            for conn in std::mem::take(&mut self.quic_dirty) {
                quic.drive_session(&mut self.sockets, conn, now);
            }
            for (core, cmd) in quic.take_forward() {
                self.outbox.push(core, Command::Quic(Box::new(cmd)));
            }
            let ready = quic.take_ready();
            if ready.is_empty() && self.quic_dirty.is_empty() {
                return;
            }
            for conn in ready {
                self.flush(conn);
                self.service_read(conn, now);
            }
            self.run_actions();
        }
    }

    fn metrics_core(&self) -> &crate::metrics::CoreMetrics {
        static EMPTY: std::sync::OnceLock<crate::metrics::CoreMetrics> = std::sync::OnceLock::new();
        self.metrics
            .cores
            .get(self.id.0)
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }

    fn publish_stats(&self) {
        let stats = self.core.stats();
        let m = self.metrics_core();
        m.connections.store(stats.connections, Ordering::Relaxed);
        m.sessions.store(stats.sessions, Ordering::Relaxed);
        m.frames_in.store(stats.frames_in, Ordering::Relaxed);
        m.frames_out.store(stats.frames_out, Ordering::Relaxed);
        m.protocol_errors.store(stats.protocol_errors, Ordering::Relaxed);
        m.messages.store(stats.messages_accepted, Ordering::Relaxed);
        m.deliveries.store(stats.deliveries, Ordering::Relaxed);
        m.slow_consumers.store(stats.slow_consumers, Ordering::Relaxed);
        m.preauth_refused.store(stats.preauth_refused, Ordering::Relaxed);
        m.preauth_evicted.store(stats.preauth_evicted, Ordering::Relaxed);
        m.accept_shed.store(self.fd_reserve.dropped(), Ordering::Relaxed);
        m.presence_pushes.store(stats.presence_pushes, Ordering::Relaxed);
        m.online_users.store(stats.online_users, Ordering::Relaxed);
        if let Some(quic) = &self.quic {
            let q = quic.stats();
            m.quic_forwarded.store(q.forwarded, Ordering::Relaxed);
            m.quic_retries.store(q.retries, Ordering::Relaxed);
            m.quic_refused.store(q.refused, Ordering::Relaxed);
            m.quic_datagrams_in.store(q.datagrams_in, Ordering::Relaxed);
            m.quic_send_dropped.store(q.send_dropped, Ordering::Relaxed);
            m.quic_connections
                .store(q.endpoint_connections, Ordering::Relaxed);
        }
    }
}

impl Conns for Vec<Option<Socket>> {
    fn quic(&mut self, conn: ConnId) -> Option<&mut QuicConn> {
        match self
            .get_mut(conn.0)
            .and_then(Option::as_mut)
            .map(|s| &mut s.stream)
        {
            Some(Stream::Quic(q)) => Some(q),
            _ => None,
        }
    }
}

/// The token of the listener of `kind`.
fn listener_token(kind: Kind) -> Token {
    let i = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
    LISTENERS.get(i).copied().unwrap_or(Token(usize::MAX - 1))
}
