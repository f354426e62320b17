//! Work between cores: what this core gathers for others during a turn (one
//! batch per core per turn), what it takes from them, and answers routed back
//! to the session that asked, wherever it lives.

use super::*;

impl Core {
    /// Delivers `msg` to `core`: at once when it is this core, else batched
    /// into this turn's one queue operation for that core.
    pub(super) fn route(&mut self, core: CoreId, msg: CoreMsg, now: Instant) {
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

    pub(super) fn handle_core_msg(&mut self, msg: CoreMsg, now: Instant) {
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
                // The sender's own session gets SendOk instead; only while it
                // is the same session: a connection slot closed and reused
                // since the Send holds another session, which gets the push.
                let skip = skip
                    .filter(|o| o.core == self.config.core && self.is_current(*o))
                    .map(|o| o.conn);
                let mut targets = Vec::new();
                for user in users.iter() {
                    if let Some(devices) = self.devices.get(user) {
                        targets.extend(devices.iter().map(|(_, c)| *c).filter(|c| Some(*c) != skip));
                    }
                }
                // Syncing and stopped sessions filter their pushes (sync.rs).
                targets.retain(|c| self.sync_admits(*c, chat, seq, &frame));
                self.stats.deliveries += targets.len() as u64;
                for conn in targets {
                    self.transmit(conn, frame.clone());
                }
            }
            CoreMsg::Presence(update) => self.handle_presence_update(update, now),
            CoreMsg::Amend(request) => self.handle_amend(request, now),
            CoreMsg::Typing { chat, user, active } => self.handle_typing(chat, user, active, now),
            CoreMsg::Delivered { chat, user, seq } => self.handle_delivered(chat, user, seq, now),
            CoreMsg::ReadMarker { chat, user, seq } => self.handle_read_marker(chat, user, seq, now),
            CoreMsg::Settings { user, read_receipts } => self.handle_settings(user, read_receipts, now),
            CoreMsg::Notify { users, frame } => self.handle_notify(&users, frame),
            CoreMsg::ReceiptsQuery { to, viewer, chats } => {
                self.handle_receipts_query(to, viewer, chats, now)
            }
        }
    }

    /// True when `origin` still names the same live, authenticated session here.
    pub(super) fn is_current(&self, origin: Origin) -> bool {
        self.sessions
            .get(origin.conn.0)
            .is_some_and(|s| s.generation == origin.generation && matches!(s.state, State::Active { .. }))
    }

    pub(super) fn reply_to(&mut self, to: Origin, frame: Bytes, now: Instant) {
        self.route(to.core, CoreMsg::Reply { to, frame }, now);
    }

    pub(super) fn error_to(
        &mut self,
        to: Origin,
        code: ErrorCode,
        message: &str,
        request_id: u64,
        now: Instant,
    ) {
        let frame = self.encoder.error(code, message, request_id);
        self.reply_to(to, frame, now);
    }
}
