//! One core's event loop: a thin mio driver around [`Core`].
//!
//! It accepts on its own `SO_REUSEPORT` listener, moves bytes between sockets
//! and the core, drains its command queue, fires the core's timers and carries
//! out the core's actions (including token lookups in the store and handing
//! sessions to their home core). Every protocol decision is the core's.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::core::{Action, AuthResult, ConnId, Core, CoreConfig, Detached, InputStatus};
use crate::ids::CoreId;
use crate::metrics::Metrics;
use crate::runtime::{COMMANDS_PER_TURN, Command, Mesh};
use crate::store::Store;
use crate::store::writer::{WriteOp, WriterSender};
use crate::transport::tcp;

/// Token of the listener; connections use their `ConnId` as token.
const LISTENER: Token = Token(usize::MAX - 1);
/// Token of the waker other threads use after queueing a command.
pub(crate) const WAKER: Token = Token(usize::MAX - 2);

/// Connections accepted per loop turn: a connect storm is spread over turns so
/// established sessions keep being served in between.
const ACCEPTS_PER_TURN: usize = 256;
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
/// Frames handed to one vectored write: a presence snapshot (one frame per
/// friend) or a burst of pushes leaves in one syscall instead of one per frame.
const WRITE_SLICES: usize = 64;

/// A session moving to another core, with its socket and buffered bytes.
#[derive(Debug)]
pub struct Adopted {
    stream: TcpStream,
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
}

/// One client socket and its byte buffers. Empty buffers hold no allocation,
/// so an idle session costs only this struct and the core's session entry.
#[derive(Debug)]
struct Socket {
    stream: TcpStream,
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
}

/// The event loop of one core.
pub(crate) struct Worker {
    id: CoreId,
    poll: Poll,
    listener: TcpListener,
    queue: Receiver<Command>,
    mesh: Mesh,
    core: Core,
    sockets: Vec<Option<Socket>>,
    store: Arc<Store>,
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
    accept_pending: bool,
    /// Commands for other cores whose queues were full; retried every turn.
    outbox: VecDeque<(CoreId, Command)>,
    /// The storage writer's queue, and what did not fit in it yet (kept in order).
    writer: WriterSender,
    write_backlog: VecDeque<WriteOp>,
    shutting_down: bool,
}

impl Worker {
    /// Builds the loop for core `id`; the listener is registered here.
    pub(crate) fn new(
        config: CoreConfig,
        poll: Poll,
        mut listener: TcpListener,
        queue: Receiver<Command>,
        shared: Shared,
    ) -> io::Result<Self> {
        let Shared {
            mesh,
            store,
            writer,
            metrics,
        } = shared;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Ok(Self {
            id: config.core,
            core: Core::new(config, store.clone(), Instant::now(), unix_ms),
            poll,
            listener,
            queue,
            mesh,
            sockets: Vec::new(),
            store,
            metrics,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            again: Vec::new(),
            unflushed: Vec::new(),
            drained: Vec::new(),
            accept_pending: false,
            outbox: VecDeque::new(),
            writer,
            write_backlog: VecDeque::new(),
            shutting_down: false,
        })
    }

    /// Runs until a [`Command::Shutdown`] has been handled.
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        tracing::debug!(core = self.id.0, "event loop started");
        loop {
            let timeout = if !self.again.is_empty()
                || !self.drained.is_empty()
                || self.accept_pending
                || !self.outbox.is_empty()
                || !self.write_backlog.is_empty()
            {
                Some(Duration::ZERO)
            } else {
                self.core
                    .poll_timeout()
                    .map(|at| at.saturating_duration_since(Instant::now()))
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
            for event in &events {
                match event.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => {}
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
            self.report_drained(now);
            if self.accept_pending && !self.shutting_down {
                self.accept(now);
            }
            self.drain_commands(now);
            self.core.handle_timeout(now);
            self.core.handle_end_of_turn();
            self.run_actions(now);
            self.flush_outbox();
            self.flush_writes();
            self.publish_stats();
            if self.shutting_down {
                break;
            }
        }
        tracing::debug!(core = self.id.0, "event loop stopped");
        Ok(())
    }

    fn accept(&mut self, now: Instant) {
        for _ in 0..ACCEPTS_PER_TURN {
            let (mut stream, _peer) = match self.listener.accept() {
                Ok(pair) => pair,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the listener stays readable; back off
                    // until the next turn instead of spinning.
                    tracing::warn!(core = self.id.0, error = %e, "accept failed");
                    self.accept_pending = false;
                    return;
                }
            };
            self.metrics_core().accepted.fetch_add(1, Ordering::Relaxed);
            let Some(conn) = self.core.handle_accept(now) else {
                let frame = self.core.refusal();
                let _ = stream.write(&frame);
                continue;
            };
            if let Err(e) = self.install(conn, stream, BytesMut::new(), VecDeque::new()) {
                tracing::debug!(core = self.id.0, error = %e, "could not register a connection");
                self.core.handle_closed(conn);
            }
            self.run_actions(now);
        }
        // Budget spent: accept_pending stays set, so the loop polls with a zero timeout.
    }

    fn install(
        &mut self,
        conn: ConnId,
        mut stream: TcpStream,
        inbound: BytesMut,
        outbound: VecDeque<Bytes>,
    ) -> io::Result<()> {
        tcp::configure_stream(&stream)?;
        self.poll.registry().register(
            &mut stream,
            Token(conn.0),
            Interest::READABLE | Interest::WRITABLE,
        )?;
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
            });
        }
        Ok(())
    }

    fn socket(&mut self, conn: ConnId) -> Option<&mut Socket> {
        self.sockets.get_mut(conn.0).and_then(Option::as_mut)
    }

    /// Reads what the socket has (within the per-turn budget) and feeds the core.
    fn service_read(&mut self, conn: ConnId, now: Instant) {
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
            self.run_actions(now);
            let Some(socket) = self.socket(conn) else {
                return;
            };
            if socket.inbound.is_empty() && socket.inbound.capacity() > 0 {
                // Give the buffer back: idle sessions hold no read memory.
                socket.inbound = BytesMut::new();
            }
            match status {
                InputStatus::Drained => {}
                InputStatus::Budget => {
                    self.again.push(conn);
                    return;
                }
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
            match socket.stream.read(&mut self.scratch) {
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
        while !socket.outbound.is_empty() {
            let written = {
                let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
                let n = slices
                    .iter_mut()
                    .zip(&socket.outbound)
                    .map(|(slice, frame)| *slice = IoSlice::new(frame))
                    .count();
                socket.stream.write_vectored(slices.get(..n).unwrap_or_default())
            };
            match written {
                Ok(0) => return self.close(conn),
                Ok(mut n) => {
                    socket.queued -= n;
                    while let Some(front) = socket.outbound.front_mut() {
                        if front.len() > n {
                            front.advance(n);
                            break;
                        }
                        n -= front.len();
                        socket.outbound.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.close(conn),
            }
        }
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

    /// Tells the core which connections drained (see `drained`).
    fn report_drained(&mut self, now: Instant) {
        let drained = std::mem::take(&mut self.drained);
        for conn in drained {
            let Some(socket) = self.socket(conn) else {
                continue;
            };
            socket.drain_noted = false;
            self.core.handle_drained(conn, now);
            self.run_actions(now);
        }
    }

    fn transmit(&mut self, conn: ConnId, frame: Bytes) {
        let Some(socket) = self.socket(conn) else {
            return;
        };
        socket.queued += frame.len();
        socket.outbound.push_back(frame);
        if socket.queued > MAX_OUTBOUND_HARD {
            self.core.handle_outbound_overflow(conn);
        } else if socket.outbound.len() == 1 {
            // Written at the end of this batch of actions, with whatever else
            // the batch queues for the connection.
            self.unflushed.push(conn);
        }
    }

    /// Closes the socket and tells the core.
    fn close(&mut self, conn: ConnId) {
        if let Some(mut socket) = self.sockets.get_mut(conn.0).and_then(Option::take) {
            // Best effort: the Error frame explaining the close is usually queued.
            for frame in &socket.outbound {
                if socket.stream.write_all(frame).is_err() {
                    break;
                }
            }
            let _ = self.poll.registry().deregister(&mut socket.stream);
            let _ = socket.stream.shutdown(std::net::Shutdown::Write);
        }
        self.core.handle_closed(conn);
    }

    fn run_actions(&mut self, now: Instant) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Transmit { conn, frame } => self.transmit(conn, frame),
                Action::Close { conn } => self.close(conn),
                Action::Authenticate { conn, token } => {
                    let result = match self.store.authenticate(&token) {
                        Ok(Some((user, device))) => AuthResult::Valid(user, device),
                        Ok(None) => AuthResult::Invalid,
                        Err(e) => {
                            tracing::error!(core = self.id.0, error = %e, "token lookup failed");
                            AuthResult::StoreUnavailable
                        }
                    };
                    self.core.handle_auth(conn, result, now);
                }
                Action::Migrate { conn, to } => self.migrate(conn, to),
                Action::ToCore { core, msgs } => self.outbox.push_back((core, Command::Core(msgs))),
                Action::Write(op) => {
                    if self.write_backlog.is_empty() {
                        if let Err(op) = self.writer.try_send(op) {
                            self.write_backlog.push_back(op);
                        }
                    } else {
                        self.write_backlog.push_back(op);
                    }
                }
                Action::MembershipReply { reply, result } => {
                    // The HTTP worker may have given up waiting; nothing to do then.
                    let _ = reply.send(result);
                }
            }
        }
        // Flushing never queues frames, so the list can be drained in place.
        let mut unflushed = std::mem::take(&mut self.unflushed);
        for conn in unflushed.drain(..) {
            self.flush(conn);
        }
        self.unflushed = unflushed;
    }

    fn migrate(&mut self, conn: ConnId, to: CoreId) {
        let socket = self.sockets.get_mut(conn.0).and_then(Option::take);
        let session = self.core.detach(conn);
        let (Some(mut socket), Some(session)) = (socket, session) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut socket.stream);
        let adopted = Adopted {
            stream: socket.stream,
            session,
            inbound: socket.inbound,
            outbound: socket.outbound,
        };
        self.outbox.push_back((to, Command::Adopt(Box::new(adopted))));
    }

    /// Sends the commands queued for other cores; what does not fit stays for
    /// the next turn. Each target core is woken once per turn.
    fn flush_outbox(&mut self) {
        let mut woken = Vec::new();
        let mut left = VecDeque::new();
        while let Some((to, cmd)) = self.outbox.pop_front() {
            match self.mesh.try_push(to, cmd) {
                Ok(()) => {
                    if !woken.contains(&to) {
                        woken.push(to);
                    }
                }
                Err(cmd) => left.push_back((to, cmd)),
            }
        }
        for core in woken {
            self.mesh.wake(core);
        }
        self.outbox = left;
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
                    self.run_actions(now);
                    // Frames pipelined behind the Hello wait in the inbound buffer.
                    self.service_read(conn, now);
                }
                Command::Core(msgs) => {
                    self.core.handle_core_msgs(msgs, now);
                    self.run_actions(now);
                }
                Command::Committed(completions) => {
                    self.core.handle_committed(completions, now);
                    self.run_actions(now);
                }
                Command::Membership(change) => {
                    self.core.handle_membership(change, now);
                    self.run_actions(now);
                }
                Command::CloseDevice { user, device } => {
                    self.core.handle_close_device(user, device);
                    self.run_actions(now);
                }
                Command::FriendsChanged { a, b } => {
                    self.core.handle_friends_changed(a, b, now);
                    self.run_actions(now);
                }
                Command::PresenceQuery { user, reply } => {
                    // The HTTP worker may have given up waiting; nothing to do then.
                    let _ = reply.send(self.core.presence_of(user, now).map_err(|e| e.to_string()));
                }
                Command::Shutdown => {
                    self.shutting_down = true;
                    self.core.handle_shutdown();
                    self.run_actions(now);
                }
            }
        }
        // Budget spent with commands left: come back at once.
        if !self.queue.is_empty() {
            self.mesh.wake(self.id);
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
        m.presence_pushes.store(stats.presence_pushes, Ordering::Relaxed);
        m.online_users.store(stats.online_users, Ordering::Relaxed);
    }
}
