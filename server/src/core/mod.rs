//! The sans-IO chat core of one event-loop thread.
//!
//! [`Core`] owns the logical state of every connection on its core — where the
//! handshake stands, who is authenticated, when each session was last heard
//! from — and the index of the authenticated sessions of the users this core is
//! home to. It never touches a socket, a thread or the clock: the driver
//! (`runtime`) feeds it events through `handle_*` methods, passing `now`, and
//! carries out the [`Action`]s it returns through [`Core::poll_action`].
//!
//! # Driving contract
//! 1. After **every** `handle_*` call, drain [`Core::poll_action`] until `None`
//!    before calling anything else, and carry each action out in order.
//! 2. Call [`Core::handle_timeout`] whenever [`Core::poll_timeout`] has passed.
//! 3. A connection id stays valid until the driver calls [`Core::handle_closed`]
//!    (after an [`Action::Close`], or when the peer went away) or
//!    [`Core::detach`] (after an [`Action::Migrate`]).

mod chat;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_hooks;
mod liveness;
mod preauth;
mod presence;
mod sync;
mod timer;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use natter_wire::{Body, Encoder, ErrorCode, FrameDecoder, Limits, MAX_TEXT_CHARS, PROTOCOL_VERSION, fb};
use slab::Slab;

pub use chat::{ChatSnapshot, ChatStore, CoreMsg, Origin, SendRequest};
pub use preauth::MAX_PRE_AUTH_INPUT;
pub use presence::{MAX_KNOWN_USERS, PresenceUpdate, UserPresence};
pub use sync::{
    HISTORY_MAX_BYTES, HISTORY_MAX_MESSAGES, HISTORY_PAGE_OVERHEAD, MESSAGE_OVERHEAD, NEW_DEVICE_BACKLOG,
    SYNC_PAGE_BYTES, SYNC_PAGE_MESSAGES, SYNC_STEPS_PER_TURN, SyncStore, max_text_bytes,
};

use crate::ids::{ChatId, ClientMsgId, CoreId, DeviceId, Seq, UserId};
use crate::runtime::{MembershipChange, MembershipError};
use crate::store::writer::{Completion, WriteOp};
use crate::store::{ChatKind, MAX_GROUP_MEMBERS, StoredMessage};
use chat::{ChatState, InFlight};
use timer::{Mark, TimerWheel};

/// Frames one session may have handled per [`Core::handle_input`] call: a
/// client that pipelines thousands of frames cannot monopolise its core; the
/// driver calls again on the next loop turn.
pub const FRAMES_PER_SESSION_PER_TURN: usize = 64;

/// Chats an owner core keeps in memory. Past this, chats with nothing in
/// flight are dropped (they reload from the store on their next send); a few
/// hundred bytes each, so the cap is tens of MiB per core at most.
pub const MAX_CACHED_CHATS: usize = 65_536;

/// Chats evicted at once when the cache is full, so eviction is amortised.
const CHAT_EVICTION_BATCH: usize = 1024;

/// Most sends one owner core holds in flight (handed to the storage writer,
/// not yet committed). Past it, sends are refused with the retryable
/// `overloaded` instead of growing memory while the writer is behind: at the
/// ~400 k records/s the writer commits, this is ~160 ms of work, as deep as the
/// writer's own queue.
pub const MAX_IN_FLIGHT_SENDS: usize = 65_536;

/// Most message text one owner core holds in flight, in bytes (see
/// [`MAX_IN_FLIGHT_SENDS`]): 160 maximum-size texts, or the whole send window
/// of short ones.
pub const MAX_IN_FLIGHT_BYTES: usize = 64 << 20;

/// Bytes of frames one [`Core::handle_input`] call may queue for the
/// connection it serves before it stops taking its frames for this turn: a
/// pipeline of History requests (each up to a frame of replies) cannot make
/// one call queue more than this plus one frame. The driver stops calling
/// while the connection's outbound is over its own budget.
pub const REPLY_BYTES_PER_CALL: usize = 256 * 1024;

/// Default cap on one user's live sessions (`--max-sessions-per-user`).
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 16;

/// Syncs one connection may start per second (bursts of as many): a sync
/// costs store reads per chat of the user, and a client needs one per
/// (re)connect or `Resync`.
pub const SYNCS_PER_SECOND: u32 = 10;

/// History requests one connection may make per second (bursts of as many):
/// enough to page back through a chat as fast as a person scrolls.
pub const HISTORY_PER_SECOND: u32 = 50;

/// Acks one connection may make per second (bursts of as many); more are
/// ignored. A client acks about once a second per chat (PROTOCOL.md).
pub const ACKS_PER_SECOND: u32 = 200;

/// Longest `device` description accepted in Hello, in bytes.
pub const MAX_DEVICE_DESCRIPTION: usize = 128;

/// Longest time a new connection may take to send its Hello. Short enough that
/// idle unauthenticated sockets cannot pile up; long enough for a phone on a
/// slow network to finish its TLS handshake and send one frame.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection on one core, numbered by the core (the driver's socket index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub usize);

/// Settings of one core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// This core.
    pub core: CoreId,
    /// How many cores natterd runs (for the home-core hash).
    pub cores: usize,
    /// A session silent this long is closed.
    pub heartbeat_timeout: Duration,
    /// A user whose last session ended goes offline only if none comes back within this.
    pub presence_grace: Duration,
    /// Frame limits applied to every client frame.
    pub limits: Limits,
    /// Most connections this core holds at once; more are refused.
    pub max_connections: usize,
    /// Sends one session may make per second (burst: the same number).
    pub send_rate: u32,
    /// Most live sessions of one user on its home core; a new one closes the oldest.
    pub max_sessions_per_user: usize,
}

impl CoreConfig {
    /// The heartbeat interval told to clients: a third of the timeout, so two
    /// lost or delayed heartbeats in a row do not close a healthy session.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_timeout / 3
    }
}

/// What the driver must do for the core.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Action {
    /// Write this encoded frame to the connection (after what is already queued).
    Transmit {
        /// The connection.
        conn: ConnId,
        /// A size-prefixed frame.
        frame: Bytes,
    },
    /// Look the token up in the store, then call [`Core::handle_auth`].
    Authenticate {
        /// The connection whose Hello carried the token.
        conn: ConnId,
        /// The token as the client sent it.
        token: String,
    },
    /// Hand the connection to its user's home core: call [`Core::detach`] and
    /// send the result with the socket to `to`, which calls [`Core::handle_adopt`].
    Migrate {
        /// The connection.
        conn: ConnId,
        /// Its user's home core.
        to: CoreId,
    },
    /// Write what is queued (best effort), close the socket, then call
    /// [`Core::handle_closed`].
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Queue this batch for another core (one queue operation) and wake it.
    ToCore {
        /// The target core.
        core: CoreId,
        /// Its work, in order.
        msgs: Vec<CoreMsg>,
    },
    /// Hand this write to the storage writer, after every earlier `Write`.
    Write(WriteOp),
    /// Send the outcome of a membership change to the HTTP worker waiting for it.
    MembershipReply {
        /// The waiting worker's channel.
        reply: crossbeam_channel::Sender<Result<(), MembershipError>>,
        /// The outcome.
        result: Result<(), MembershipError>,
    },
}

impl PartialEq for Action {
    fn eq(&self, other: &Self) -> bool {
        use Action as A;
        match (self, other) {
            (A::Transmit { conn: a, frame: f }, A::Transmit { conn: b, frame: g }) => a == b && f == g,
            (A::Authenticate { conn: a, token: t }, A::Authenticate { conn: b, token: u }) => {
                a == b && t == u
            }
            (A::Migrate { conn: a, to: x }, A::Migrate { conn: b, to: y }) => a == b && x == y,
            (A::Close { conn: a }, A::Close { conn: b }) => a == b,
            (A::ToCore { core: a, msgs: m }, A::ToCore { core: b, msgs: n }) => a == b && m == n,
            (A::Write(a), A::Write(b)) => a == b,
            (A::MembershipReply { reply: r, result: x }, A::MembershipReply { reply: s, result: y }) => {
                r.same_channel(s) && x == y
            }
            _ => false,
        }
    }
}

/// The outcome of a token lookup, reported by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// The token belongs to this device of this user.
    Valid(UserId, DeviceId),
    /// No such token (never issued, or revoked by logout).
    Invalid,
    /// The store could not answer (it is poisoned or failing).
    StoreUnavailable,
}

/// What [`Core::handle_input`] left undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputStatus {
    /// Every complete frame was handled; read more from the socket.
    Drained,
    /// The per-turn frame budget ran out with complete frames left: call again
    /// next turn (poll with a zero timeout meanwhile).
    Budget,
    /// The session cannot take frames now (authenticating, migrating or
    /// closing): stop reading; bytes left in the buffer wait for it.
    Paused,
}

/// A session detached from one core for adoption by another.
#[derive(Debug)]
pub struct Detached {
    state: State,
    last_heard: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Accepted; the first frame must be Hello before `deadline`.
    AwaitingHello { deadline: Instant },
    /// Hello received; waiting for the driver's token lookup.
    Authenticating {
        token: String,
        request_id: u64,
        sync_first: bool,
    },
    /// Authenticated on another core, on the way to (or just adopted by) this one.
    Migrating {
        token: String,
        request_id: u64,
        user: UserId,
        device: DeviceId,
        sync_first: bool,
    },
    /// Authenticated and living on its user's home core.
    Active { user: UserId, device: DeviceId },
    /// An Error was queued and Close emitted; waiting for the driver.
    Closing,
}

#[derive(Debug)]
struct Session {
    state: State,
    last_heard: Instant,
    generation: u32,
    /// Per-connection request rate limits.
    sends: Bucket,
    syncs: Bucket,
    histories: Bucket,
    acks: Bucket,
}

/// A token bucket of `rate` per second with bursts of `rate`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f32,
    refilled: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Self {
        Self {
            tokens: rate as f32,
            refilled: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let rate = rate as f32;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f32();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Counters the driver publishes to `/metrics` after each loop turn.
#[derive(Debug, Default, Clone, Copy)]
pub struct CoreStats {
    /// Frames received and decoded.
    pub frames_in: u64,
    /// Frames queued for clients.
    pub frames_out: u64,
    /// Connections closed for protocol violations.
    pub protocol_errors: u64,
    /// Authenticated sessions currently on this core.
    pub sessions: u64,
    /// Connections currently on this core.
    pub connections: u64,
    /// Messages whose seq this core assigned (as owner core).
    pub messages_accepted: u64,
    /// Messages delivered to sessions: live pushes and messages streamed by syncs.
    pub deliveries: u64,
    /// Slow consumers: sessions whose outbound buffer overflowed (sent Resync,
    /// or closed when not yet authenticated).
    pub slow_consumers: u64,
    /// Presence frames queued for sessions (snapshots and pushes).
    pub presence_pushes: u64,
    /// Users homed here that are online (including those in their grace period).
    pub online_users: u64,
}

/// The sans-IO state of one core. See the module docs for the driving contract.
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    decoder: FrameDecoder,
    encoder: Encoder,
    sessions: Slab<Session>,
    /// Authenticated sessions of users whose home core this is.
    devices: HashMap<UserId, Vec<(DeviceId, ConnId)>>,
    wheel: TimerWheel,
    expired: Vec<Mark>,
    actions: VecDeque<Action>,
    next_generation: u32,
    /// Wall-clock anchor: `now` at construction and the Unix time then (ms).
    anchor: (Instant, u64),
    stats: CoreStats,
    store: Arc<dyn ChatStore>,
    /// Chats this core owns that have been touched since start.
    chats: HashMap<ChatId, ChatState>,
    /// Sends handed to the writer, by `(chat, seq)`.
    in_flight: HashMap<(ChatId, Seq), InFlight>,
    /// Text bytes of `in_flight` (bounded by [`MAX_IN_FLIGHT_BYTES`]).
    in_flight_bytes: usize,
    /// Cached chats that became idle (nothing in flight), oldest first: the
    /// eviction candidates, so eviction never scans the cache. Each chat is
    /// queued at most once (`ChatState::idle_queued`).
    idle_chats: VecDeque<ChatId>,
    /// Bytes queued for the connection `handle_input` is serving, this call.
    input_conn: Option<ConnId>,
    input_reply_bytes: usize,
    /// Membership changes handed to the writer, by ticket.
    memberships: HashMap<u64, (ChatId, crossbeam_channel::Sender<Result<(), MembershipError>>)>,
    next_ticket: u64,
    /// Work for other cores gathered this turn, index = core.
    outgoing: Vec<Vec<CoreMsg>>,
    /// Who is online among the users homed here, and what is known of others.
    presence: presence::Presence,
    /// Sessions syncing, filtering pushes after a sync, or stopped as slow consumers (`sync.rs`).
    syncs: HashMap<ConnId, sync::SessionSync>,
    /// Sessions whose sync waits for a step (planning or a page), in order.
    sync_queue: VecDeque<ConnId>,
}

impl Core {
    /// A core with no connections. `unix_ms_now` is the wall clock at `now`; the
    /// core derives server timestamps from `now` afterwards, so a simulated clock
    /// drives them too.
    pub fn new(config: CoreConfig, store: Arc<dyn ChatStore>, now: Instant, unix_ms_now: u64) -> Self {
        let tick = (config.heartbeat_timeout / 16).clamp(Duration::from_millis(5), Duration::from_secs(1));
        Self {
            store,
            chats: HashMap::new(),
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            idle_chats: VecDeque::new(),
            input_conn: None,
            input_reply_bytes: 0,
            memberships: HashMap::new(),
            next_ticket: 0,
            outgoing: (0..config.cores).map(|_| Vec::new()).collect(),
            decoder: FrameDecoder::new(config.limits.clone()),
            encoder: Encoder::new(),
            sessions: Slab::new(),
            devices: HashMap::new(),
            wheel: TimerWheel::new(tick, now),
            presence: presence::Presence::new(config.presence_grace, now),
            syncs: HashMap::new(),
            sync_queue: VecDeque::new(),
            expired: Vec::new(),
            actions: VecDeque::new(),
            next_generation: 0,
            anchor: (now, unix_ms_now),
            stats: CoreStats::default(),
            config,
        }
    }

    /// This core's settings.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> CoreStats {
        CoreStats {
            connections: self.sessions.len() as u64,
            online_users: self.presence.tracked_len() as u64,
            ..self.stats
        }
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Core::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.sync_work_left() {
            // Sync steps wait for the next turn: at once (a time already past).
            return Some(self.anchor.0);
        }
        match (self.wheel.next_deadline(), self.presence.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let (at, ms) = self.anchor;
        ms + now.saturating_duration_since(at).as_millis() as u64
    }

    /// A new connection was accepted. Returns its id, or `None` when this core
    /// is full — the driver then writes the frame from [`Core::refusal`] and
    /// closes the socket.
    pub fn handle_accept(&mut self, now: Instant) -> Option<ConnId> {
        if self.sessions.len() >= self.config.max_connections {
            return None;
        }
        let deadline = now + HELLO_TIMEOUT.min(self.config.heartbeat_timeout);
        let conn = self.insert(State::AwaitingHello { deadline }, now);
        Some(conn)
    }

    /// The frame sent to a connection refused because the core is full.
    pub fn refusal(&mut self) -> Bytes {
        self.encoder.error(
            ErrorCode::TooManyConnections,
            "this server is at its connection limit",
            0,
        )
    }

    fn insert(&mut self, state: State, now: Instant) -> ConnId {
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        let key = self.sessions.insert(Session {
            state,
            last_heard: now,
            generation,
            sends: Bucket::full(self.config.send_rate, now),
            syncs: Bucket::full(SYNCS_PER_SECOND, now),
            histories: Bucket::full(HISTORY_PER_SECOND, now),
            acks: Bucket::full(ACKS_PER_SECOND, now),
        });
        let at = self.deadline_of(key).unwrap_or(now);
        self.wheel.schedule(at, Mark { key, generation });
        ConnId(key)
    }

    /// When the session must next be checked: its hello deadline, or the
    /// heartbeat timeout after it was last heard from.
    fn deadline_of(&self, key: usize) -> Option<Instant> {
        let s = self.sessions.get(key)?;
        match s.state {
            State::AwaitingHello { deadline } => Some(deadline),
            State::Closing => None,
            _ => Some(s.last_heard + self.config.heartbeat_timeout),
        }
    }

    /// Bytes arrived on `conn`: handles the complete frames at the front of
    /// `buf` (up to [`FRAMES_PER_SESSION_PER_TURN`]) and leaves the rest there.
    pub fn handle_input(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant) -> InputStatus {
        self.input_conn = Some(conn);
        self.input_reply_bytes = 0;
        let status = self.take_input(conn, buf, now);
        self.input_conn = None;
        status
    }

    fn take_input(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant) -> InputStatus {
        for _ in 0..FRAMES_PER_SESSION_PER_TURN {
            if self.input_reply_bytes >= REPLY_BYTES_PER_CALL {
                // Its answers fill a turn's budget: the rest waits for the
                // driver to call again (after its outbound drained).
                return if has_complete_frame(self.decoder.limits(), buf) {
                    InputStatus::Budget
                } else {
                    InputStatus::Drained
                };
            }
            if self.refuse_oversized_pre_auth(conn, buf) {
                return InputStatus::Paused;
            }
            let Some(session) = self.sessions.get_mut(conn.0) else {
                return InputStatus::Paused;
            };
            if !matches!(session.state, State::AwaitingHello { .. } | State::Active { .. }) {
                return InputStatus::Paused;
            }
            match self.decoder.split(buf) {
                Ok(Some(frame)) => {
                    session.last_heard = now;
                    self.stats.frames_in += 1;
                    self.handle_frame(conn, &frame, now);
                }
                Ok(None) => return InputStatus::Drained,
                Err(err) => {
                    buf.clear();
                    self.fail(conn, err.code(), &err.to_string(), 0);
                    return InputStatus::Paused;
                }
            }
        }
        if has_complete_frame(self.decoder.limits(), buf) {
            InputStatus::Budget
        } else {
            InputStatus::Drained
        }
    }

    fn handle_frame(&mut self, conn: ConnId, frame: &[u8], now: Instant) {
        let view = match natter_wire::view(frame, self.decoder.limits()) {
            Ok(view) => view,
            Err(err) => {
                let request_id = natter_wire::peek_request_id(frame).unwrap_or(0);
                let active = self
                    .sessions
                    .get(conn.0)
                    .is_some_and(|s| matches!(s.state, State::Active { .. }));
                // A per-request error (invalid UTF-8 in a text) leaves an
                // authenticated session open; anything else, or any error
                // before authentication, closes it.
                return if active && !err.code().closes_connection() {
                    self.reply_error(conn, err.code(), &err.to_string(), request_id)
                } else {
                    self.fail(conn, err.code(), &err.to_string(), request_id)
                };
            }
        };
        let request_id = view.request_id();
        let Some(session) = self.sessions.get_mut(conn.0) else {
            return;
        };
        match session.state {
            State::AwaitingHello { .. } => self.handle_hello(conn, view, now),
            State::Active { .. } => self.handle_active_frame(conn, view, request_id, now),
            _ => {}
        }
    }

    fn handle_hello(&mut self, conn: ConnId, view: fb::Frame<'_>, _now: Instant) {
        let request_id = view.request_id();
        let Some(hello) = view.body_as_hello() else {
            return self.fail(
                conn,
                ErrorCode::NotAuthenticated,
                "the first frame must be Hello",
                request_id,
            );
        };
        if hello.protocol_version() != PROTOCOL_VERSION {
            let message = format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                hello.protocol_version()
            );
            return self.fail(conn, ErrorCode::UnsupportedVersion, &message, request_id);
        }
        if hello.device().is_some_and(|d| d.len() > MAX_DEVICE_DESCRIPTION) {
            let message = format!("device description over {MAX_DEVICE_DESCRIPTION} bytes");
            return self.fail(conn, ErrorCode::BadFrame, &message, request_id);
        }
        let token = hello.token().unwrap_or_default().to_owned();
        tracing::debug!(
            core = self.config.core.0,
            conn = conn.0,
            device = hello.device().unwrap_or_default(),
            sync_first = hello.sync_first(),
            "hello"
        );
        if let Some(session) = self.sessions.get_mut(conn.0) {
            session.state = State::Authenticating {
                token: token.clone(),
                request_id,
                sync_first: hello.sync_first(),
            };
        }
        self.actions.push_back(Action::Authenticate { conn, token });
    }

    fn handle_active_frame(&mut self, conn: ConnId, view: fb::Frame<'_>, request_id: u64, now: Instant) {
        use fb::Body as B;
        match view.body_type() {
            B::Send => {
                if let Some(send) = view.body_as_send() {
                    self.handle_send_frame(conn, send, request_id, now);
                }
            }
            B::Ping => {
                let nonce = view.body_as_ping().map_or(0, |p| p.nonce());
                let frame = self.encoder.encode(&natter_wire::Frame::new(
                    request_id,
                    Body::Pong(natter_wire::Pong { nonce }),
                ));
                self.transmit(conn, frame);
            }
            // A Pong answers a server Ping; like any frame it already counted as a heartbeat.
            B::Pong => {}
            B::Hello => self.reply_error(
                conn,
                ErrorCode::AlreadyAuthenticated,
                "this connection is already authenticated",
                request_id,
            ),
            B::Sync => {
                if let Some(sync) = view.body_as_sync() {
                    self.handle_sync_frame(conn, sync, request_id, now);
                }
            }
            B::History => {
                if let Some(history) = view.body_as_history() {
                    self.handle_history_frame(conn, history, request_id, now);
                }
            }
            B::Ack => {
                if let Some(ack) = view.body_as_ack() {
                    self.handle_ack_frame(conn, ack, request_id, now);
                }
            }
            other => {
                let message = format!(
                    "{} is a server-to-client frame",
                    other.variant_name().unwrap_or("this frame")
                );
                self.fail(conn, ErrorCode::UnexpectedFrame, &message, request_id);
            }
        }
    }

    /// The driver's answer to [`Action::Authenticate`].
    pub fn handle_auth(&mut self, conn: ConnId, result: AuthResult, now: Instant) {
        let Some(session) = self.sessions.get_mut(conn.0) else {
            return;
        };
        let (request_id, sync_first) = match &session.state {
            State::Authenticating {
                request_id,
                sync_first,
                ..
            }
            | State::Migrating {
                request_id,
                sync_first,
                ..
            } => (*request_id, *sync_first),
            _ => return,
        };
        match result {
            AuthResult::Invalid => self.fail(
                conn,
                ErrorCode::InvalidToken,
                "unknown or revoked token",
                request_id,
            ),
            AuthResult::StoreUnavailable => self.fail(
                conn,
                ErrorCode::Unavailable,
                "the account store is unavailable; try again later",
                request_id,
            ),
            AuthResult::Valid(user, device) => {
                let home = user.home_core(self.config.cores);
                if home != self.config.core {
                    let token = match std::mem::replace(&mut session.state, State::Closing) {
                        State::Authenticating { token, .. } | State::Migrating { token, .. } => token,
                        _ => String::new(),
                    };
                    session.state = State::Migrating {
                        token,
                        request_id,
                        user,
                        device,
                        sync_first,
                    };
                    self.actions.push_back(Action::Migrate { conn, to: home });
                    return;
                }
                session.state = State::Active { user, device };
                session.last_heard = now;
                // The cap on live sessions per user: the oldest goes (most
                // likely a phone's dead connection not timed out yet; refusing
                // the new one would lock the user out until it is).
                let oldest = self
                    .devices
                    .get(&user)
                    .filter(|list| list.len() >= self.config.max_sessions_per_user)
                    .and_then(|list| list.first())
                    .map(|&(_, c)| c);
                if let Some(oldest) = oldest {
                    let message = format!(
                        "this user has more than {} live sessions; the oldest is closed",
                        self.config.max_sessions_per_user
                    );
                    self.fail(oldest, ErrorCode::TooManySessions, &message, 0);
                }
                self.devices.entry(user).or_default().push((device, conn));
                self.stats.sessions += 1;
                if sync_first {
                    // Live message pushes wait for this session's first Sync,
                    // which hands over to them chat by chat (sync.rs).
                    self.sync_hold(conn);
                }
                let welcome = natter_wire::Welcome {
                    user_id: user.0,
                    device_id: device.0,
                    heartbeat_interval_ms: u32::try_from(self.config.heartbeat_interval().as_millis())
                        .unwrap_or(u32::MAX),
                    server_time_ms: self.unix_ms(now),
                    protocol_version: PROTOCOL_VERSION,
                    max_frame: u32::try_from(self.config.limits.max_frame).unwrap_or(u32::MAX),
                };
                let frame = self
                    .encoder
                    .encode(&natter_wire::Frame::new(request_id, Body::Welcome(welcome)));
                self.transmit(conn, frame);
                self.presence_session_up(user, conn, now);
            }
        }
    }

    /// Removes a session that is migrating to another core (after
    /// [`Action::Migrate`]). The id is free once this returns.
    pub fn detach(&mut self, conn: ConnId) -> Option<Detached> {
        let session = self.sessions.try_remove(conn.0)?;
        Some(Detached {
            state: session.state,
            last_heard: session.last_heard,
        })
    }

    /// Adopts a session detached by another core. Because the token may have
    /// been revoked while the session travelled, it is looked up once more
    /// ([`Action::Authenticate`]) before the Welcome goes out.
    pub fn handle_adopt(&mut self, detached: Detached, now: Instant) -> ConnId {
        let state = detached.state;
        let token = match &state {
            State::Migrating { token, .. } => Some(token.clone()),
            _ => None,
        };
        let conn = self.insert(state, now);
        if let Some(session) = self.sessions.get_mut(conn.0) {
            session.last_heard = detached.last_heard;
        }
        match token {
            Some(token) => self.actions.push_back(Action::Authenticate { conn, token }),
            None => self.fail(
                conn,
                ErrorCode::Internal,
                "session adopted in an unexpected state",
                0,
            ),
        }
        conn
    }

    /// The connection is gone (closed by us after [`Action::Close`], or by the
    /// peer). Idempotent.
    pub fn handle_closed(&mut self, conn: ConnId) {
        let Some(session) = self.sessions.try_remove(conn.0) else {
            return;
        };
        if let State::Active { user, .. } = session.state {
            self.forget_device(user, conn, session.last_heard);
        }
    }

    fn forget_device(&mut self, user: UserId, conn: ConnId, last_heard: Instant) {
        self.sync_forget(conn);
        // The list holds at most `max_sessions_per_user` entries (the cap in
        // `handle_auth`), so this is O(1) in the number of sessions.
        if let Some(list) = self.devices.get_mut(&user) {
            let before = list.len();
            list.retain(|(_, c)| *c != conn);
            self.stats.sessions -= (before - list.len()) as u64;
            if list.is_empty() {
                self.devices.remove(&user);
            }
        }
        self.presence_session_ended(user, last_heard);
    }

    /// Closes every session of `device` (its token was revoked).
    pub fn handle_close_device(&mut self, user: UserId, device: DeviceId) {
        let conns: Vec<ConnId> = self
            .devices
            .get(&user)
            .map(|list| {
                list.iter()
                    .filter(|(d, _)| *d == device)
                    .map(|(_, c)| *c)
                    .collect()
            })
            .unwrap_or_default();
        for conn in conns {
            self.fail(conn, ErrorCode::TokenRevoked, "this device logged out", 0);
        }
    }

    /// Closes every connection: natterd is shutting down.
    pub fn handle_shutdown(&mut self) {
        let conns: Vec<usize> = self.sessions.iter().map(|(k, _)| k).collect();
        for key in conns {
            self.fail(
                ConnId(key),
                ErrorCode::ShuttingDown,
                "the server is shutting down",
                0,
            );
        }
        self.presence_shutdown();
    }

    /// Time passed: closes sessions past their hello deadline or silent past
    /// the heartbeat timeout; starts and ends presence grace periods.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired = std::mem::take(&mut self.expired);
        self.wheel.expire(now, &mut expired);
        for mark in expired.drain(..) {
            let Some(session) = self.sessions.get(mark.key) else {
                continue;
            };
            if session.generation != mark.generation {
                continue;
            }
            let Some(deadline) = self.deadline_of(mark.key) else {
                continue;
            };
            if deadline > now {
                self.wheel.schedule(deadline, mark);
                continue;
            }
            let conn = ConnId(mark.key);
            match session.state {
                State::AwaitingHello { .. } => self.fail(
                    conn,
                    ErrorCode::NotAuthenticated,
                    "no Hello before the deadline",
                    0,
                ),
                _ => self.fail(
                    conn,
                    ErrorCode::HeartbeatTimeout,
                    "no frame within the heartbeat timeout",
                    0,
                ),
            }
        }
        self.expired = expired;
        self.presence_handle_timeout(now);
    }

    // ----- messaging: the sender's home core -------------------------------

    fn handle_send_frame(&mut self, conn: ConnId, send: fb::Send<'_>, request_id: u64, now: Instant) {
        let Some(session) = self.sessions.get_mut(conn.0) else {
            return;
        };
        let State::Active { user, .. } = session.state else {
            return;
        };
        let generation = session.generation;
        // Token bucket: `send_rate` per second, bursts of the same size.
        if !session.sends.take(self.config.send_rate, now) {
            let message = format!(
                "at most {} sends per second per connection",
                self.config.send_rate
            );
            return self.reply_error(conn, ErrorCode::RateLimited, &message, request_id);
        }
        let text = send.text().unwrap_or_default();
        if send.chat_id() == 0 {
            return self.reply_error(conn, ErrorCode::UnknownChat, "chat 0 does not exist", request_id);
        }
        if send.client_msg_id() == 0 {
            return self.reply_error(
                conn,
                ErrorCode::MissingClientMsgId,
                "client_msg_id must be a nonzero id chosen per message (0 is what an unset field reads as)",
                request_id,
            );
        }
        if text.is_empty() {
            return self.reply_error(
                conn,
                ErrorCode::EmptyText,
                "a message needs at least one character",
                request_id,
            );
        }
        // Byte length bounds the character count from above: count only when it could matter.
        if text.len() > MAX_TEXT_CHARS && text.chars().count() > MAX_TEXT_CHARS {
            let message = format!("a message has at most {MAX_TEXT_CHARS} characters");
            return self.reply_error(conn, ErrorCode::TextTooLong, &message, request_id);
        }
        let max_text = max_text_bytes(self.config.limits.max_frame);
        if text.len() > max_text {
            let message = format!(
                "with this server's frame limit of {} bytes a message has at most {max_text} bytes of UTF-8",
                self.config.limits.max_frame
            );
            return self.reply_error(conn, ErrorCode::TextTooLong, &message, request_id);
        }
        let chat = ChatId(send.chat_id());
        let request = SendRequest {
            origin: Origin {
                core: self.config.core,
                conn,
                generation,
            },
            request_id,
            sender: user,
            chat,
            client_msg_id: ClientMsgId(send.client_msg_id()),
            text: text.to_owned(),
        };
        self.route(chat.owner_core(self.config.cores), CoreMsg::Send(request), now);
    }

    /// Delivers `msg` to `core`: at once when it is this core, else batched
    /// into this turn's one queue operation for that core.
    fn route(&mut self, core: CoreId, msg: CoreMsg, now: Instant) {
        if core == self.config.core {
            self.handle_core_msg(msg, now);
        } else if let Some(batch) = self.outgoing.get_mut(core.0) {
            batch.push(msg);
        }
    }

    /// End of a loop turn: turns the work gathered for other cores into one
    /// [`Action::ToCore`] per core. Call once per turn, then drain actions.
    pub fn handle_end_of_turn(&mut self) {
        self.sync_run_queue();
        for (core, batch) in self.outgoing.iter_mut().enumerate() {
            if !batch.is_empty() {
                let msgs = std::mem::take(batch);
                self.actions.push_back(Action::ToCore {
                    core: CoreId(core),
                    msgs,
                });
            }
        }
    }

    /// Work from another core, in the order it was sent.
    pub fn handle_core_msgs(&mut self, msgs: Vec<CoreMsg>, now: Instant) {
        for msg in msgs {
            self.handle_core_msg(msg, now);
        }
    }

    fn handle_core_msg(&mut self, msg: CoreMsg, now: Instant) {
        match msg {
            CoreMsg::Send(request) => self.handle_send(request, now),
            CoreMsg::Reply { to, frame } => {
                if self.is_current(to) {
                    self.transmit(to.conn, frame);
                }
            }
            CoreMsg::Push {
                chat,
                seq,
                frame,
                users,
                skip,
            } => {
                let skip = skip.filter(|o| o.core == self.config.core).map(|o| o.conn);
                let mut targets = Vec::new();
                for user in users.iter() {
                    if let Some(devices) = self.devices.get(user) {
                        targets.extend(devices.iter().map(|(_, c)| *c).filter(|c| Some(*c) != skip));
                    }
                }
                // Syncing and stopped sessions filter their pushes (sync.rs).
                targets.retain(|c| self.sync_admits(*c, chat, seq));
                self.stats.deliveries += targets.len() as u64;
                for conn in targets {
                    self.transmit(conn, frame.clone());
                }
            }
            CoreMsg::Presence(update) => self.handle_presence_update(update, now),
        }
    }

    /// True when `origin` still names the same live, authenticated session here.
    fn is_current(&self, origin: Origin) -> bool {
        self.sessions
            .get(origin.conn.0)
            .is_some_and(|s| s.generation == origin.generation && matches!(s.state, State::Active { .. }))
    }

    fn reply_to(&mut self, to: Origin, frame: Bytes, now: Instant) {
        self.route(to.core, CoreMsg::Reply { to, frame }, now);
    }

    fn error_to(&mut self, to: Origin, code: ErrorCode, message: &str, request_id: u64, now: Instant) {
        let frame = self.encoder.error(code, message, request_id);
        self.reply_to(to, frame, now);
    }

    // ----- messaging: the chat's owner core ----------------------------------

    /// Loads a chat this core owns into memory (once).
    fn load_chat(&mut self, chat: ChatId) -> Result<Option<&mut ChatState>, String> {
        if !self.chats.contains_key(&chat) {
            if self.chats.len() >= MAX_CACHED_CHATS {
                self.evict_idle_chats();
            }
            match self.store.chat_snapshot(chat) {
                Ok(Some(snapshot)) => {
                    self.chats
                        .insert(chat, ChatState::new(snapshot, self.config.cores));
                    self.note_if_idle(chat);
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(self.chats.get_mut(&chat))
    }

    /// Drops up to [`CHAT_EVICTION_BATCH`] cached chats with nothing in
    /// flight, oldest idle first. Amortised O(1): it pops the idle queue, where
    /// each chat sits at most once per time it became idle; a chat found busy
    /// again is skipped (it is queued anew when it next becomes idle). When no
    /// chat is idle the cache grows past its cap, bounded by the chats with
    /// sends in flight ([`MAX_IN_FLIGHT_SENDS`]).
    fn evict_idle_chats(&mut self) {
        let mut evicted = 0;
        while evicted < CHAT_EVICTION_BATCH {
            let Some(id) = self.idle_chats.pop_front() else {
                return;
            };
            let Some(chat) = self.chats.get_mut(&id) else {
                continue;
            };
            chat.idle_queued = false;
            if chat.is_idle() {
                self.chats.remove(&id);
                evicted += 1;
            }
        }
    }

    /// Queues `chat` as an eviction candidate if it is idle and not queued yet.
    fn note_if_idle(&mut self, id: ChatId) {
        if let Some(chat) = self.chats.get_mut(&id)
            && chat.is_idle()
            && !chat.idle_queued
        {
            chat.idle_queued = true;
            self.idle_chats.push_back(id);
        }
    }

    fn handle_send(&mut self, req: SendRequest, now: Instant) {
        let (origin, rid) = (req.origin, req.request_id);
        let chat = match self.load_chat(req.chat) {
            Ok(Some(chat)) => chat,
            Ok(None) => return self.error_to(origin, ErrorCode::UnknownChat, "no such chat", rid, now),
            Err(e) => {
                let message = format!("the store is unavailable: {e}");
                return self.error_to(origin, ErrorCode::Unavailable, &message, rid, now);
            }
        };
        if !chat.members.contains(&req.sender) {
            return self.error_to(
                origin,
                ErrorCode::NotMember,
                "you are not a member of this chat",
                rid,
                now,
            );
        }
        let key = (req.sender, req.client_msg_id);
        let digest = text_digest(&req.text);
        // A retry while the original is still in flight waits for the same commit.
        if let Some(seq) = chat.in_flight.get(&key).copied() {
            if let Some(pending) = self.in_flight.get_mut(&(req.chat, seq)) {
                if pending.text_digest != digest {
                    return self.reused_id(origin, rid, now);
                }
                pending.waiters.push((origin, rid));
            }
            return;
        }
        match self.store.dedupe(req.chat, req.sender, req.client_msg_id) {
            Ok(Some((seq, ts))) => {
                match self.store.stored_text(req.chat, seq) {
                    Ok(Some(text)) if text != req.text => return self.reused_id(origin, rid, now),
                    Ok(_) => {}
                    Err(e) => {
                        let message = format!("the store is unavailable: {e}");
                        return self.error_to(origin, ErrorCode::Unavailable, &message, rid, now);
                    }
                }
                let frame = self.send_ok(rid, req.client_msg_id, req.chat, seq, ts);
                return self.reply_to(origin, frame, now);
            }
            Ok(None) => {}
            Err(e) => {
                let message = format!("the store is unavailable: {e}");
                return self.error_to(origin, ErrorCode::Unavailable, &message, rid, now);
            }
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT_SENDS
            || self.in_flight_bytes + req.text.len() > MAX_IN_FLIGHT_BYTES
        {
            return self.error_to(
                origin,
                ErrorCode::Overloaded,
                "the server's store is behind; retry shortly with the same client_msg_id",
                rid,
                now,
            );
        }
        let server_ts_ms = self.unix_ms(now);
        let Some(chat) = self.chats.get_mut(&req.chat) else {
            return;
        };
        let seq = Seq(chat.next_seq);
        chat.next_seq += 1;
        chat.in_flight.insert(key, seq);
        let recipients = chat.recipients.clone();
        let message = natter_wire::Message {
            chat_id: req.chat.0,
            seq: seq.0,
            sender: req.sender.0,
            server_ts_ms,
            client_msg_id: req.client_msg_id.0,
            text: req.text,
        };
        let frame = self.encoder.message(0, &message);
        self.in_flight_bytes += message.text.len();
        self.in_flight.insert(
            (req.chat, seq),
            InFlight {
                sender: req.sender,
                client_msg_id: req.client_msg_id,
                server_ts_ms,
                text_digest: digest,
                text_bytes: message.text.len(),
                frame,
                waiters: vec![(origin, rid)],
                recipients,
            },
        );
        self.stats.messages_accepted += 1;
        self.actions.push_back(Action::Write(WriteOp::Message {
            origin: self.config.core,
            msg: StoredMessage {
                chat: req.chat,
                seq,
                sender: req.sender,
                server_ts_ms,
                client_msg_id: req.client_msg_id,
                text: message.text,
            },
        }));
    }

    /// The writer is behind: this core's sends in flight reached their cap.
    fn overloaded(&self) -> bool {
        self.in_flight.len() >= MAX_IN_FLIGHT_SENDS || self.in_flight_bytes >= MAX_IN_FLIGHT_BYTES
    }

    fn reused_id(&mut self, origin: Origin, rid: u64, now: Instant) {
        self.error_to(
            origin,
            ErrorCode::ClientMsgIdReused,
            "this client_msg_id was already used for a different text in this chat; a new message needs a new id",
            rid,
            now,
        );
    }

    fn send_ok(&mut self, request_id: u64, cmid: ClientMsgId, chat: ChatId, seq: Seq, ts: u64) -> Bytes {
        let ok = natter_wire::SendOk {
            client_msg_id: cmid.0,
            chat_id: chat.0,
            seq: seq.0,
            server_ts_ms: ts,
        };
        self.encoder
            .encode(&natter_wire::Frame::new(request_id, Body::SendOk(ok)))
    }

    /// The storage writer made these writes of this core durable (in order):
    /// acknowledge the sends and push the messages to the members.
    pub fn handle_committed(&mut self, completions: Vec<Completion>, now: Instant) {
        for completion in completions {
            match completion {
                Completion::Message { chat, seq } => self.handle_message_committed(chat, seq, now),
                Completion::Membership { ticket } => {
                    if let Some((chat, reply)) = self.memberships.remove(&ticket) {
                        if let Some(state) = self.chats.get_mut(&chat) {
                            state.memberships_in_flight -= 1;
                        }
                        self.note_if_idle(chat);
                        self.actions.push_back(Action::MembershipReply {
                            reply,
                            result: Ok(()),
                        });
                    }
                }
            }
        }
    }

    fn handle_message_committed(&mut self, chat: ChatId, seq: Seq, now: Instant) {
        let Some(done) = self.in_flight.remove(&(chat, seq)) else {
            return;
        };
        self.in_flight_bytes -= done.text_bytes;
        if let Some(state) = self.chats.get_mut(&chat) {
            state.in_flight.remove(&(done.sender, done.client_msg_id));
        }
        self.note_if_idle(chat);
        let first = done.waiters.first().map(|(origin, _)| *origin);
        for (origin, rid) in done.waiters {
            let frame = self.send_ok(rid, done.client_msg_id, chat, seq, done.server_ts_ms);
            self.reply_to(origin, frame, now);
        }
        for (core, users) in done.recipients.iter().enumerate() {
            if !users.is_empty() {
                let push = CoreMsg::Push {
                    chat,
                    seq,
                    frame: done.frame.clone(),
                    users: users.clone(),
                    skip: first,
                };
                self.route(CoreId(core), push, now);
            }
        }
    }

    /// A membership change for a group this core owns: decided here, in order
    /// with the group's messages, then made durable through the writer.
    pub fn handle_membership(&mut self, change: MembershipChange, _now: Instant) {
        let MembershipChange {
            chat,
            actor,
            user,
            add,
            reply,
        } = change;
        let result = self.apply_membership(chat, actor, user, add);
        match result {
            Ok(new_owner) => {
                self.next_ticket += 1;
                let ticket = self.next_ticket;
                self.memberships.insert(ticket, (chat, reply));
                if let Some(state) = self.chats.get_mut(&chat) {
                    state.memberships_in_flight += 1;
                }
                self.actions.push_back(Action::Write(WriteOp::Membership {
                    origin: self.config.core,
                    chat,
                    user,
                    add,
                    new_owner,
                    ticket,
                }));
            }
            Err(e) => self.actions.push_back(Action::MembershipReply {
                reply,
                result: Err(e),
            }),
        }
    }

    /// Decides and applies one membership change in memory. Returns the new
    /// owner when the change is the owner leaving: the longest-standing
    /// remaining member (earliest committed `member_since`, ties to the lowest
    /// id; a member whose add is not committed yet joined last), or `None` when
    /// nobody remains — an empty group that nobody can reach.
    fn apply_membership(
        &mut self,
        chat_id: ChatId,
        actor: UserId,
        user: UserId,
        add: bool,
    ) -> Result<Option<UserId>, MembershipError> {
        let cores = self.config.cores;
        let store = self.store.clone();
        let chat = match self.load_chat(chat_id) {
            Ok(Some(chat)) => chat,
            Ok(None) => return Err(MembershipError::UnknownChat),
            Err(e) => return Err(MembershipError::Store(e)),
        };
        if chat.kind != ChatKind::Group {
            return Err(MembershipError::NotAGroup);
        }
        if !chat.members.contains(&actor) {
            return Err(MembershipError::UnknownChat);
        }
        let mut new_owner = None;
        if add {
            if actor != chat.owner {
                return Err(MembershipError::NotOwner);
            }
            if chat.members.contains(&user) {
                return Err(MembershipError::AlreadyMember);
            }
            if chat.members.len() >= MAX_GROUP_MEMBERS {
                return Err(MembershipError::TooManyMembers);
            }
            match store.are_friends(chat.owner, user) {
                Ok(true) => {}
                Ok(false) => return Err(MembershipError::NotFriends),
                Err(e) => return Err(MembershipError::Store(e.to_string())),
            }
            chat.members.insert(user);
        } else {
            if actor != chat.owner && actor != user {
                return Err(MembershipError::NotOwner);
            }
            if !chat.members.contains(&user) {
                return Err(MembershipError::NotMember);
            }
            if user == chat.owner {
                let mut next: Option<(u64, UserId)> = None;
                for &member in chat.members.iter().filter(|m| **m != user) {
                    let since = store
                        .member_since(chat_id, member)
                        .map_err(|e| MembershipError::Store(e.to_string()))?
                        .unwrap_or(u64::MAX);
                    if next.is_none_or(|best| (since, member) < best) {
                        next = Some((since, member));
                    }
                }
                new_owner = next.map(|(_, member)| member);
            }
            chat.members.remove(&user);
            if let Some(owner) = new_owner {
                chat.owner = owner;
            }
        }
        chat.rebuild_recipients(cores);
        Ok(new_owner)
    }

    /// The connection's outbound buffer overflowed: it is a slow consumer. An
    /// authenticated session stays open, gets no more live pushes and is sent
    /// `Resync` (it catches up with Sync, paced by its reading; see `sync.rs`);
    /// any other connection is closed.
    pub fn handle_outbound_overflow(&mut self, conn: ConnId) {
        match self.sessions.get(conn.0).map(|s| &s.state) {
            Some(State::Active { .. }) => self.sync_stop(conn),
            Some(State::Closing) | None => {}
            Some(_) => {
                self.stats.slow_consumers += 1;
                self.fail(
                    conn,
                    ErrorCode::SlowConsumer,
                    "you did not read fast enough; reconnect and catch up",
                    0,
                );
            }
        }
    }

    fn transmit(&mut self, conn: ConnId, frame: Bytes) {
        self.stats.frames_out += 1;
        if self.input_conn == Some(conn) {
            self.input_reply_bytes += frame.len();
        }
        self.actions.push_back(Action::Transmit { conn, frame });
    }

    /// Answers one request with an Error; the session stays open.
    fn reply_error(&mut self, conn: ConnId, code: ErrorCode, message: &str, request_id: u64) {
        let frame = self.encoder.error(code, message, request_id);
        self.transmit(conn, frame);
    }

    /// Sends an Error and closes the connection.
    fn fail(&mut self, conn: ConnId, code: ErrorCode, message: &str, request_id: u64) {
        let Some(session) = self.sessions.get_mut(conn.0) else {
            return;
        };
        if session.state == State::Closing {
            return;
        }
        let old = std::mem::replace(&mut session.state, State::Closing);
        let last_heard = session.last_heard;
        if let State::Active { user, .. } = old {
            self.forget_device(user, conn, last_heard);
        }
        if matches!(
            code,
            ErrorCode::BadFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::InvalidUtf8
                | ErrorCode::NotAuthenticated
                | ErrorCode::UnexpectedFrame
        ) {
            self.stats.protocol_errors += 1;
        }
        self.reply_error(conn, code, message, request_id);
        self.actions.push_back(Action::Close { conn });
    }
}

/// A 64-bit digest of a message text: tells a retry (same text) from a reused
/// `client_msg_id` (another text) while the original is in flight, without
/// keeping the text twice. `DefaultHasher::new()` has fixed keys, so the digest is stable within
/// the process, which is all it is used for (it is never stored).
fn text_digest(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// True when `buf` starts with a whole size-prefixed frame, or with a prefix
/// the decoder refuses at once (so the caller comes back and reports it now,
/// not when more bytes happen to arrive).
fn has_complete_frame(limits: &Limits, buf: &[u8]) -> bool {
    match limits.frame_len(buf) {
        Ok(Some(total)) => buf.len() >= total,
        Ok(None) => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests;
