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

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz_hooks;
mod timer;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use natter_wire::{Body, Encoder, ErrorCode, FrameDecoder, Limits, PROTOCOL_VERSION, fb};
use slab::Slab;

use crate::ids::{CoreId, DeviceId, UserId};
use timer::{Mark, TimerWheel};

/// Frames one session may have handled per [`Core::handle_input`] call: a
/// client that pipelines thousands of frames cannot monopolise its core; the
/// driver calls again on the next loop turn.
pub const FRAMES_PER_SESSION_PER_TURN: usize = 64;

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
    /// Frame limits applied to every client frame.
    pub limits: Limits,
    /// Most connections this core holds at once; more are refused.
    pub max_connections: usize,
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
    Authenticating { token: String, request_id: u64 },
    /// Authenticated on another core, on the way to (or just adopted by) this one.
    Migrating {
        token: String,
        request_id: u64,
        user: UserId,
        device: DeviceId,
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
}

impl Core {
    /// A core with no connections. `unix_ms_now` is the wall clock at `now`; the
    /// core derives server timestamps from `now` afterwards, so a simulated clock
    /// drives them too.
    pub fn new(config: CoreConfig, now: Instant, unix_ms_now: u64) -> Self {
        let tick = (config.heartbeat_timeout / 16).clamp(Duration::from_millis(5), Duration::from_secs(1));
        Self {
            decoder: FrameDecoder::new(config.limits.clone()),
            encoder: Encoder::new(),
            sessions: Slab::new(),
            devices: HashMap::new(),
            wheel: TimerWheel::new(tick, now),
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
            sessions: self.devices.values().map(|d| d.len() as u64).sum(),
            connections: self.sessions.len() as u64,
            ..self.stats
        }
    }

    /// The next action for the driver, in order.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Core::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.wheel.next_deadline()
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
        for _ in 0..FRAMES_PER_SESSION_PER_TURN {
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
        if has_complete_frame(buf) {
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
            State::Active { .. } => self.handle_active_frame(conn, view, request_id),
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
        if let Some(session) = self.sessions.get_mut(conn.0) {
            session.state = State::Authenticating {
                token: token.clone(),
                request_id,
            };
        }
        self.actions.push_back(Action::Authenticate { conn, token });
    }

    fn handle_active_frame(&mut self, conn: ConnId, view: fb::Frame<'_>, request_id: u64) {
        use fb::Body as B;
        match view.body_type() {
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
            B::Send | B::Sync | B::History | B::Ack => {
                let message = format!(
                    "{} is defined in protocol version 1 but not served by this natterd yet",
                    view.body_type().variant_name().unwrap_or("this frame")
                );
                self.reply_error(conn, ErrorCode::Unavailable, &message, request_id);
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
        let request_id = match &session.state {
            State::Authenticating { request_id, .. } | State::Migrating { request_id, .. } => *request_id,
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
                    };
                    self.actions.push_back(Action::Migrate { conn, to: home });
                    return;
                }
                session.state = State::Active { user, device };
                session.last_heard = now;
                self.devices.entry(user).or_default().push((device, conn));
                let welcome = natter_wire::Welcome {
                    user_id: user.0,
                    device_id: device.0,
                    heartbeat_interval_ms: u32::try_from(self.config.heartbeat_interval().as_millis())
                        .unwrap_or(u32::MAX),
                    server_time_ms: self.unix_ms(now),
                    protocol_version: PROTOCOL_VERSION,
                };
                let frame = self
                    .encoder
                    .encode(&natter_wire::Frame::new(request_id, Body::Welcome(welcome)));
                self.transmit(conn, frame);
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
            self.forget_device(user, conn);
        }
    }

    fn forget_device(&mut self, user: UserId, conn: ConnId) {
        if let Some(list) = self.devices.get_mut(&user) {
            list.retain(|(_, c)| *c != conn);
            if list.is_empty() {
                self.devices.remove(&user);
            }
        }
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
    }

    /// Time passed: closes sessions past their hello deadline or silent past
    /// the heartbeat timeout.
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
    }

    fn transmit(&mut self, conn: ConnId, frame: Bytes) {
        self.stats.frames_out += 1;
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
        if let State::Active { user, .. } = old {
            self.forget_device(user, conn);
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

/// True when `buf` starts with a whole size-prefixed frame (or a prefix that
/// the decoder will refuse at once).
fn has_complete_frame(buf: &[u8]) -> bool {
    match buf.first_chunk::<4>() {
        Some(prefix) => buf.len() - 4 >= u32::from_le_bytes(*prefix) as usize,
        None => false,
    }
}

#[cfg(test)]
mod tests;
