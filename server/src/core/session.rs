//! The life of a connection on its core: accept, the Hello handshake and
//! authentication, migration to the user's home core, frames of an active
//! session dispatched to their handlers, the per-user session cap, heartbeats
//! and hello deadlines, closing (with an Error first when it is the server's
//! decision) and shutdown.

use super::*;

impl Core {
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

    pub(super) fn insert(&mut self, state: State, now: Instant) -> ConnId {
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
            reading: false,
            conversation: false,
        });
        let at = self.deadline_of(key).unwrap_or(now);
        self.wheel.schedule(at, Mark { key, generation });
        ConnId(key)
    }

    /// When the session must next be checked: its hello deadline, or the
    /// heartbeat timeout after it was last heard from.
    pub(super) fn deadline_of(&self, key: usize) -> Option<Instant> {
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

    pub(super) fn take_input(&mut self, conn: ConnId, buf: &mut BytesMut, now: Instant) -> InputStatus {
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
            if !matches!(session.state, State::AwaitingHello { .. } | State::Active { .. }) || session.reading
            {
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

    pub(super) fn handle_frame(&mut self, conn: ConnId, frame: &[u8], now: Instant) {
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

    pub(super) fn handle_hello(&mut self, conn: ConnId, view: fb::Frame<'_>, _now: Instant) {
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
            session.conversation = hello.conversation();
            session.state = State::Authenticating {
                token: token.clone(),
                request_id,
                sync_first: hello.sync_first(),
            };
        }
        // A complete Hello ends the anonymous phase the pre-authentication
        // caps bound: what is left (one token lookup) finishes by itself.
        self.preauth_release(conn);
        self.actions.push_back(Action::Authenticate { conn, token });
    }

    pub(super) fn handle_active_frame(
        &mut self,
        conn: ConnId,
        view: fb::Frame<'_>,
        request_id: u64,
        now: Instant,
    ) {
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
            B::Edit => {
                if let Some(edit) = view.body_as_edit() {
                    let text = edit.text().unwrap_or_default();
                    let target = (edit.chat_id(), edit.target_seq(), edit.client_msg_id());
                    self.handle_amend_frame(conn, target, Some(text), request_id, now);
                }
            }
            B::Delete => {
                if let Some(delete) = view.body_as_delete() {
                    let target = (delete.chat_id(), delete.target_seq(), delete.client_msg_id());
                    self.handle_amend_frame(conn, target, None, request_id, now);
                }
            }
            B::Typing => {
                if let Some(typing) = view.body_as_typing() {
                    self.handle_typing_frame(conn, typing.chat_id(), typing.active(), now);
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

    /// Whether `conn` waits for the lookup of exactly this token (a driver
    /// that defers lookups checks it before reporting one: the id may belong
    /// to another connection by then).
    pub fn is_authenticating(&self, conn: ConnId, token: &str) -> bool {
        self.sessions.get(conn.0).is_some_and(|s| match &s.state {
            State::Authenticating { token: t, .. } | State::Migrating { token: t, .. } => t == token,
            _ => false,
        })
    }

    /// The driver's answer to [`Action::Authenticate`].
    pub fn handle_auth(&mut self, conn: ConnId, result: AuthResult, now: Instant) {
        self.handle_auth_seeded(conn, result, None, now);
    }

    /// [`Core::handle_auth`] with what the driver read for the session's start
    /// besides the token (on the user's home core; ignored elsewhere, and
    /// when a friendship change was applied since `seed.epoch`).
    pub fn handle_auth_seeded(
        &mut self,
        conn: ConnId,
        result: AuthResult,
        seed: Option<SessionSeed>,
        now: Instant,
    ) {
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
                self.preauth.release(conn.0);
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
                self.conversation_session_up(conn, user);
                self.presence_session_up(user, conn, now, seed);
            }
        }
    }

    /// Removes a session that is migrating to another core (after
    /// [`Action::Migrate`]). The id is free once this returns.
    pub fn detach(&mut self, conn: ConnId) -> Option<Detached> {
        self.preauth_release(conn);
        let session = self.sessions.try_remove(conn.0)?;
        Some(Detached {
            state: session.state,
            last_heard: session.last_heard,
            conversation: session.conversation,
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
            session.conversation = detached.conversation;
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
        self.preauth_release(conn);
        let Some(session) = self.sessions.try_remove(conn.0) else {
            return;
        };
        if let State::Active { user, .. } = session.state {
            self.forget_device(user, conn, session.last_heard);
        }
    }

    pub(super) fn forget_device(&mut self, user: UserId, conn: ConnId, last_heard: Instant) {
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
        self.conversation_handle_timeout(now);
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

    pub(super) fn transmit(&mut self, conn: ConnId, frame: Bytes) {
        self.stats.frames_out += 1;
        if self.input_conn == Some(conn) {
            self.input_reply_bytes += frame.len();
        }
        self.actions.push_back(Action::Transmit { conn, frame });
    }

    /// Answers one request with an Error; the session stays open.
    pub(super) fn reply_error(&mut self, conn: ConnId, code: ErrorCode, message: &str, request_id: u64) {
        let frame = self.encoder.error(code, message, request_id);
        self.transmit(conn, frame);
    }

    /// Sends an Error and closes the connection.
    pub(super) fn fail(&mut self, conn: ConnId, code: ErrorCode, message: &str, request_id: u64) {
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
