//! Messaging on the chat's owner core: the bounded chat cache, seq assignment,
//! the dedupe window (in flight and committed), the in-flight caps that refuse
//! sends as `overloaded` while the writer is behind (and as `storage_full`
//! while the disk is below the free-space reserve), and what happens once the
//! writer reports a commit (SendOk to the senders, pushes to the members).

use super::*;

/// The answer to a `Send` naming a chat that does not exist or that the
/// sender is not a member of: one text for both, like the code.
pub(super) const NO_SUCH_CHAT: &str = "no such chat, or you are not a member of it";

impl Core {
    /// Loads a chat this core owns into memory (once).
    pub(super) fn load_chat(&mut self, chat: ChatId) -> Result<Option<&mut ChatState>, ReadError> {
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
                Err(e) => return Err(e),
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
    pub(super) fn evict_idle_chats(&mut self) {
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
    pub(super) fn note_if_idle(&mut self, id: ChatId) {
        if let Some(chat) = self.chats.get_mut(&id)
            && chat.is_idle()
            && !chat.idle_queued
        {
            chat.idle_queued = true;
            self.idle_chats.push_back(id);
        }
    }

    pub(super) fn handle_send(&mut self, req: SendRequest, now: Instant) {
        let (origin, rid) = (req.origin, req.request_id);
        let chat = match self.load_chat(req.chat) {
            Ok(Some(chat)) => chat,
            // A missing chat and a chat the sender is not in answer alike (code
            // and message), so that chat ids do not reveal which chats exist.
            Ok(None) => return self.error_to(origin, ErrorCode::UnknownChat, NO_SUCH_CHAT, rid, now),
            Err(e) => {
                let message = format!("the store is unavailable: {e}");
                return self.error_to(origin, ErrorCode::Unavailable, &message, rid, now);
            }
        };
        if !chat.members.contains(&req.sender) {
            return self.error_to(origin, ErrorCode::UnknownChat, NO_SUCH_CHAT, rid, now);
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
        // Below the free-space reserve nothing new is taken (a retry of a stored
        // message was answered above, from its dedupe record).
        if self.store.below_space_reserve() {
            return self.error_to(
                origin,
                ErrorCode::StorageFull,
                "the server's disk is below its free-space reserve; retry later with the same client_msg_id",
                rid,
                now,
            );
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
        self.typing_ended_by_send(req.chat, req.sender, now);
        let message = natter_wire::Message {
            chat_id: req.chat.0,
            seq: seq.0,
            sender: req.sender.0,
            server_ts_ms,
            client_msg_id: req.client_msg_id.0,
            text: req.text,
            ..natter_wire::Message::default()
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
                meta: Default::default(),
            },
        }));
    }

    /// The writer is behind: this core's sends in flight reached their cap.
    pub(super) fn overloaded(&self) -> bool {
        self.in_flight.len() >= MAX_IN_FLIGHT_SENDS || self.in_flight_bytes >= MAX_IN_FLIGHT_BYTES
    }

    pub(super) fn reused_id(&mut self, origin: Origin, rid: u64, now: Instant) {
        self.error_to(
            origin,
            ErrorCode::ClientMsgIdReused,
            "this client_msg_id was already used for a different text in this chat; a new message needs a new id",
            rid,
            now,
        );
    }

    pub(super) fn send_ok(
        &mut self,
        request_id: u64,
        cmid: ClientMsgId,
        chat: ChatId,
        seq: Seq,
        ts: u64,
    ) -> Bytes {
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

    pub(super) fn handle_message_committed(&mut self, chat: ChatId, seq: Seq, now: Instant) {
        let Some(done) = self.in_flight.remove(&(chat, seq)) else {
            return;
        };
        self.in_flight_bytes -= done.text_bytes;
        if let Some(state) = self.chats.get_mut(&chat) {
            state.in_flight.remove(&(done.sender, done.client_msg_id));
            if state.in_flight.is_empty() {
                // Everything the overlay held is committed: the store has it now.
                state.conv.amended.clear();
            }
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
}
