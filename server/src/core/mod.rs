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
//!
//! # What lives where
//! The core owns its whole vocabulary: the events it takes (`handle_*`), the
//! [`Action`]s it returns, the store reads it needs ([`ChatStore`],
//! [`SyncStore`], their [`ReadError`]) and the writes it hands the storage
//! writer ([`WriteOp`], answered by [`Completion`]). `store/` implements the
//! read traits and executes the writes; `runtime/` drives the core. Nothing
//! here names mio, crossbeam or fjall (the dependency arrows point into the
//! core, as quinn's point into quinn-proto), so it could be a crate of its own.
//!
//! * `mod.rs` — the types, the [`Core`] struct, its clock and `poll_*`;
//! * `session.rs` — accept, handshake, authentication, migration, frames of an
//!   active session, heartbeats, the per-user session cap, closing, shutdown;
//! * `send.rs` — a `Send` on the sender's home core; `owner.rs` — the chat's
//!   owner core: cache, seq, dedupe, in-flight caps, commits and pushes;
//! * `membership.rs` — group membership and the owner hand-over;
//! * `routing.rs` — the batches between cores; `sync.rs` — sync, history, Ack
//!   and the live/sync seam; `reads.rs` — the store reads the driver runs off
//!   the loop for them ([`Action::Read`]); `presence.rs` — online state and last seen;
//! * `preauth.rs`, `liveness.rs`, `timer.rs` — the pre-authentication input
//!   cap, output progress as liveness, the timing wheel; `store_api.rs` — the
//!   storage vocabulary.

mod chat;
mod conversation;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_hooks;
mod liveness;
mod membership;
mod owner;
mod preauth;
mod presence;
mod reads;
mod routing;
mod send;
mod session;
mod store_api;
mod sync;
mod timer;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use natter_wire::{Body, Encoder, ErrorCode, FrameDecoder, Limits, MAX_TEXT_CHARS, PROTOCOL_VERSION, fb};
use slab::Slab;

pub use chat::{AmendRequest, ChatSnapshot, ChatStore, CoreMsg, Origin, SendRequest};
pub use conversation::{
    CHAT_STATES_PER_FRAME, DEFAULT_DELETE_WINDOW, DEFAULT_EDIT_WINDOW, RECEIPT_INTERVAL, TYPING_EXPIRY,
    TYPING_THROTTLE,
};
pub use membership::{MembershipChange, MembershipError, ReplyTicket};
pub use preauth::{AcceptRefusal, MAX_PRE_AUTH_INPUT, PreAuthLimits};
pub use presence::{MAX_KNOWN_USERS, PresenceUpdate, SessionSeed, UserPresence};
pub use reads::{ChatPage, PlannedChat, ReadAnswer, ReadRequest, ReadTicket};
pub use store_api::{
    ChatKind, Completion, MAX_EDITS_PER_MESSAGE, MAX_GROUP_MEMBERS, MessageKind, MessageMeta, ReadError,
    StoredMessage, WriteOp,
};
pub use sync::{
    HISTORY_MAX_BYTES, HISTORY_MAX_MESSAGES, HISTORY_PAGE_OVERHEAD, MAX_HELD_BYTES, MAX_HELD_PUSHES,
    MAX_SYNC_READS_IN_FLIGHT, MESSAGE_OVERHEAD, NEW_DEVICE_BACKLOG, SYNC_CHATS_PER_READ, SYNC_PAGE_BYTES,
    SYNC_PAGE_MESSAGES, SyncStore, max_text_bytes,
};

use crate::ids::{ChatId, ClientMsgId, CoreId, DeviceId, Seq, UserId};
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
    /// How long after a message its sender may edit it (`--edit-window`).
    pub edit_window: Duration,
    /// How long after a message its sender may delete it (`--delete-window`; a group's owner
    /// may delete any message of the group at any time).
    pub delete_window: Duration,
}

impl CoreConfig {
    /// The heartbeat interval told to clients: a third of the timeout, so two
    /// lost or delayed heartbeats in a row do not close a healthy session.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_timeout / 3
    }
}

/// What the driver must do for the core.
#[derive(Debug, Clone, PartialEq)]
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
    /// Run this store read off the event loop ([`ReadRequest::run`]), then
    /// call [`Core::handle_read`] with the ticket and the answer. Reads may be
    /// answered in any order; an answer nobody waits for any more is ignored.
    Read {
        /// Names the read in the answer.
        ticket: ReadTicket,
        /// The session it is for (the answer goes by ticket; this is for
        /// the driver's bookkeeping).
        conn: ConnId,
        /// What to read.
        request: ReadRequest,
    },
    /// The session can take frames again (it waited for a read): call
    /// [`Core::handle_input`] with its buffered bytes, then read its socket.
    ResumeInput {
        /// The connection.
        conn: ConnId,
    },
    /// Send the outcome of a membership change to the HTTP worker waiting for it.
    MembershipReply {
        /// Whom to tell: the ticket the driver gave [`Core::handle_membership`].
        reply: ReplyTicket,
        /// The outcome.
        result: Result<(), MembershipError>,
    },
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
    conversation: bool,
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
    /// A read for one of its requests (History) is in flight: its later
    /// frames wait in the driver's buffer until the answer.
    reading: bool,
    /// Hello said `conversation`: the session takes Receipt, Typing and ChatStates frames.
    conversation: bool,
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
    /// Connections refused: their address had too many awaiting authentication.
    pub preauth_refused: u64,
    /// Connections awaiting authentication closed to make room for a new one.
    pub preauth_evicted: u64,
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
    /// Connections awaiting authentication, by address (`preauth.rs`).
    preauth: preauth::PreAuthTable,
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
    memberships: HashMap<u64, (ChatId, ReplyTicket)>,
    next_ticket: u64,
    /// Work for other cores gathered this turn, index = core.
    outgoing: Vec<Vec<CoreMsg>>,
    /// Who is online among the users homed here, and what is known of others.
    presence: presence::Presence,
    /// Sessions syncing, filtering pushes after a sync, or stopped as slow consumers (`sync.rs`).
    syncs: HashMap<ConnId, sync::SessionSync>,
    /// Sessions whose sync waits for a read (its plan or a page), in order.
    sync_queue: VecDeque<ConnId>,
    /// Reads asked for and not answered yet, by ticket.
    reads: HashMap<u64, sync::PendingRead>,
    /// The last ticket given out.
    next_read: u64,
    /// Sync reads among `reads` (bounded by [`MAX_SYNC_READS_IN_FLIGHT`]).
    sync_reads_in_flight: usize,
    /// Chats whose receipts flush at the given time, oldest first (the interval is constant,
    /// so pushing to the back keeps the order; `conversation.rs`).
    receipt_flushes: VecDeque<(Instant, ChatId)>,
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
            reads: HashMap::new(),
            next_read: 0,
            sync_reads_in_flight: 0,
            receipt_flushes: VecDeque::new(),
            expired: Vec::new(),
            actions: VecDeque::new(),
            next_generation: 0,
            anchor: (now, unix_ms_now),
            stats: CoreStats::default(),
            preauth: preauth::PreAuthTable::default(),
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

    /// Whether work waits for the next turn (syncs queued for a read slot
    /// that is free): a driver then polls again at once; [`Core::poll_timeout`]
    /// says so too.
    pub fn work_left(&self) -> bool {
        self.sync_work_left()
    }

    /// When [`Core::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.sync_work_left() {
            // Syncs wait to ask for reads: at once (a time already past).
            return Some(self.anchor.0);
        }
        let next = match (self.wheel.next_deadline(), self.presence.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match (next, self.receipt_flushes.front().map(|&(at, _)| at)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        let (at, ms) = self.anchor;
        ms + now.saturating_duration_since(at).as_millis() as u64
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
