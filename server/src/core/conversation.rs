//! Conversation features (issue 15): edits and deletes, typing indicators and
//! delivery/read receipts, on the chat's owner core; the frames that start
//! them on the sender's home core; and what the home core does with the frames
//! the owner pushes back (`CoreMsg::Notify`).
//!
//! * **Edit / Delete** are messages with their own seq (kind Edit or Delete,
//!   `target` = the Text they change), sequenced, deduplicated (by
//!   `client_msg_id`, as a Send) and committed like a Send. The commit also
//!   rewrites the target's record with its current state (the latest text and
//!   `edited`, or no text and `deleted`) and, for a delete, every edit record of
//!   it without its text: one [`WriteOp::Amend`], durable whole or not at all.
//!   While amends of a chat are in flight the owner keeps the records it
//!   rewrote (`ChatConv::amended`), so a second amend sees the first before it
//!   is committed; the overlay is dropped once nothing of the chat is in flight.
//! * **Typing** is never stored: the owner passes at most one indicator per
//!   user and chat per [`TYPING_THROTTLE`] (more are dropped silently), to the
//!   other members' online conversation sessions. An indicator expires by
//!   itself [`TYPING_EXPIRY`] after the frame that started it; a Send from the
//!   typist while it is shown ends it (the owner pushes `active: false`).
//! * **Receipts**: the owner keeps each member's delivered seq (the highest
//!   any of its devices acked, stored in `receipts`) and read marker (set over
//!   HTTP). A change marks the member dirty; [`RECEIPT_INTERVAL`] after the
//!   first change the owner pushes one cumulative `Receipt` per changed member
//!   to every other member (so many messages and acks cost one frame). A member
//!   with read receipts off shows `read_seq: 0` to everyone and sees
//!   `read_seq: 0` of everyone.

use std::collections::{HashMap, HashSet};

use bytes::BytesMut;
use natter_wire::{ChatState as WireChatState, ChatStates, Frame, Receipt, Typing};

use super::*;
use crate::core::chat::AmendRequest;
use crate::core::owner::NO_SUCH_CHAT;
use crate::core::store_api::{MAX_EDITS_PER_MESSAGE, MessageKind, MessageMeta};

/// At most one typing indicator per user and chat is passed on per this long.
pub const TYPING_THROTTLE: Duration = Duration::from_secs(2);
/// A typing indicator ends by itself this long after the frame that started it.
pub const TYPING_EXPIRY: Duration = Duration::from_secs(6);
/// Receipt changes of a chat are gathered this long before they are pushed: short enough to
/// feel immediate, long enough that a burst of messages and acks costs one frame per member.
pub const RECEIPT_INTERVAL: Duration = Duration::from_millis(250);
/// Default `--edit-window`.
pub const DEFAULT_EDIT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Default `--delete-window`.
pub const DEFAULT_DELETE_WINDOW: Duration = Duration::from_secs(48 * 3600);
/// Most chats in one ChatStates frame (32 bytes each: well inside the smallest frame limit);
/// a user in more chats gets several frames.
pub const CHAT_STATES_PER_FRAME: usize = 4096;

/// A user shown as typing in one chat.
#[derive(Debug, Clone, Copy)]
struct Typist {
    /// When the last indicator of this user in this chat was passed on.
    passed: Instant,
    /// The indicator shown to the others ends by itself then (`None`: not shown).
    shown_until: Option<Instant>,
}

/// The conversation state of one chat on its owner core.
#[derive(Debug, Default)]
pub(crate) struct ChatConv {
    /// Per member: (delivered seq, read marker).
    receipts: HashMap<UserId, (u64, u64)>,
    /// Members with read receipts off.
    read_off: HashSet<UserId>,
    /// Members whose receipt changed since the last push.
    dirty: HashSet<UserId>,
    /// A flush of `dirty` is queued in `Core::receipt_flushes` (the chat is not idle meanwhile).
    pub(crate) flush_queued: bool,
    /// Members typing (or typed within [`TYPING_EXPIRY`]); at most one entry per member.
    typing: HashMap<UserId, Typist>,
    /// Records rewritten or written by amends still in flight, by seq.
    pub(crate) amended: HashMap<Seq, StoredMessage>,
}

impl ChatConv {
    /// From the chat's snapshot: delivered seqs, read markers, members with read receipts off.
    pub(crate) fn new(delivered: &[(UserId, Seq)], read: &[(UserId, Seq)], off: &[UserId]) -> Self {
        let mut receipts: HashMap<UserId, (u64, u64)> = HashMap::new();
        for &(user, seq) in delivered {
            receipts.entry(user).or_default().0 = seq.0;
        }
        for &(user, seq) in read {
            receipts.entry(user).or_default().1 = seq.0;
        }
        Self {
            receipts,
            read_off: off.iter().copied().collect(),
            ..Self::default()
        }
    }

    /// The receipt of `user` as `viewer` sees it.
    fn receipt(&self, chat: ChatId, user: UserId, viewer: UserId) -> Receipt {
        let (delivered, read) = self.receipts.get(&user).copied().unwrap_or_default();
        let shown = !self.read_off.contains(&user) && !self.read_off.contains(&viewer);
        Receipt {
            chat_id: chat.0,
            user_id: user.0,
            delivered_seq: delivered,
            read_seq: if shown { read } else { 0 },
        }
    }
}

/// Digest of an amend for the dedupe window: a retry must repeat kind, target and text.
fn amend_digest(target: Seq, text: Option<&str>) -> u64 {
    text_digest(&format!(
        "{}:{}:{}",
        u8::from(text.is_some()),
        target.0,
        text.unwrap_or_default()
    ))
}

/// Why an amend is refused, with its wire code.
fn refuse(code: ErrorCode, message: &str) -> Option<(ErrorCode, String)> {
    Some((code, message.to_owned()))
}

impl Core {
    // ---- the sender's home core -------------------------------------------------------------

    /// An `Edit` (`text: Some`) or `Delete` frame: checked as a Send is, then forwarded to the
    /// chat's owner core.
    pub(super) fn handle_amend_frame(
        &mut self,
        conn: ConnId,
        (chat_id, target, cmid): (u64, u64, u64),
        text: Option<&str>,
        request_id: u64,
        now: Instant,
    ) {
        let Some(session) = self.sessions.get_mut(conn.0) else {
            return;
        };
        let State::Active { user, .. } = session.state else {
            return;
        };
        let generation = session.generation;
        if !session.sends.take(self.config.send_rate, now) {
            let message = format!(
                "at most {} sends, edits and deletes per second per connection",
                self.config.send_rate
            );
            return self.reply_error(conn, ErrorCode::RateLimited, &message, request_id);
        }
        if chat_id == 0 {
            return self.reply_error(conn, ErrorCode::UnknownChat, "chat 0 does not exist", request_id);
        }
        if cmid == 0 {
            return self.reply_error(
                conn,
                ErrorCode::MissingClientMsgId,
                "client_msg_id must be a nonzero id chosen per edit or delete",
                request_id,
            );
        }
        if target == 0 {
            return self.reply_error(
                conn,
                ErrorCode::UnknownTarget,
                "target_seq 0 names no message",
                request_id,
            );
        }
        if let Some(text) = text {
            if text.is_empty() {
                return self.reply_error(
                    conn,
                    ErrorCode::EmptyText,
                    "an edit needs at least one character (delete the message instead)",
                    request_id,
                );
            }
            let max_text = max_text_bytes(self.config.limits.max_frame);
            if (text.len() > MAX_TEXT_CHARS && text.chars().count() > MAX_TEXT_CHARS) || text.len() > max_text
            {
                let message = format!("a message has at most {MAX_TEXT_CHARS} characters ({max_text} bytes)");
                return self.reply_error(conn, ErrorCode::TextTooLong, &message, request_id);
            }
        }
        let chat = ChatId(chat_id);
        let request = AmendRequest {
            origin: Origin {
                core: self.config.core,
                conn,
                generation,
            },
            request_id,
            sender: user,
            chat,
            target: Seq(target),
            client_msg_id: ClientMsgId(cmid),
            text: text.map(str::to_owned),
        };
        self.route(chat.owner_core(self.config.cores), CoreMsg::Amend(request), now);
    }

    /// A `Typing` frame: forwarded to the chat's owner core (which checks membership).
    pub(super) fn handle_typing_frame(&mut self, conn: ConnId, chat_id: u64, active: bool, now: Instant) {
        let Some((user, _)) = self.active_user(conn) else {
            return;
        };
        if chat_id == 0 {
            return;
        }
        let chat = ChatId(chat_id);
        self.route(
            chat.owner_core(self.config.cores),
            CoreMsg::Typing { chat, user, active },
            now,
        );
    }

    fn active_user(&self, conn: ConnId) -> Option<(UserId, DeviceId)> {
        match self.sessions.get(conn.0)?.state {
            State::Active { user, device } => Some((user, device)),
            _ => None,
        }
    }

    /// A session of `user` is authenticated: a conversation session gets its ChatStates (read
    /// off the loop).
    pub(super) fn conversation_session_up(&mut self, conn: ConnId, user: UserId) {
        if self.sessions.get(conn.0).is_some_and(|s| s.conversation) {
            self.ask_chat_states(conn, user);
        }
    }

    /// The ChatStates read answered: one or more ChatStates frames.
    pub(super) fn chat_states_answered(
        &mut self,
        conn: ConnId,
        result: Result<Vec<WireChatState>, ReadError>,
    ) {
        let chats = match result {
            Ok(chats) => chats,
            Err(e) => {
                let message = format!("the store is unavailable: {e}; unread counts are in GET /v1/chats");
                return self.reply_error(conn, ErrorCode::Unavailable, &message, 0);
            }
        };
        if chats.is_empty() {
            let frame = self
                .encoder
                .encode(&Frame::new(0, Body::ChatStates(ChatStates::default())));
            return self.transmit(conn, frame);
        }
        for part in chats.chunks(CHAT_STATES_PER_FRAME) {
            let frame = self.encoder.encode(&Frame::new(
                0,
                Body::ChatStates(ChatStates { chats: part.to_vec() }),
            ));
            self.transmit(conn, frame);
        }
    }

    /// A sync of `conn` finished with these chats: ask their owners for the current receipts.
    pub(super) fn query_receipts(&mut self, conn: ConnId, chats: &[ChatId], now: Instant) {
        let Some(session) = self.sessions.get(conn.0) else {
            return;
        };
        if !session.conversation {
            return;
        }
        let State::Active { user, .. } = session.state else {
            return;
        };
        let to = Origin {
            core: self.config.core,
            conn,
            generation: session.generation,
        };
        let mut by_core: Vec<Vec<ChatId>> = vec![Vec::new(); self.config.cores];
        for &chat in chats {
            if let Some(list) = by_core.get_mut(chat.owner_core(self.config.cores).0) {
                list.push(chat);
            }
        }
        for (core, chats) in by_core.into_iter().enumerate() {
            if !chats.is_empty() {
                let msg = CoreMsg::ReceiptsQuery {
                    to,
                    viewer: user,
                    chats,
                };
                self.route(CoreId(core), msg, now);
            }
        }
    }

    /// A conversation frame for the sessions of these users homed here that asked for them.
    pub(super) fn handle_notify(&mut self, users: &[UserId], frame: Bytes) {
        let mut targets = Vec::new();
        for user in users {
            if let Some(devices) = self.devices.get(user) {
                targets.extend(
                    devices
                        .iter()
                        .map(|&(_, c)| c)
                        .filter(|c| self.sessions.get(c.0).is_some_and(|s| s.conversation)),
                );
            }
        }
        for conn in targets {
            self.transmit(conn, frame.clone());
        }
    }

    // ---- the chat's owner core ----------------------------------------------------------------

    /// An Edit or Delete for a chat this core owns: checked against the target, sequenced and
    /// handed to the writer with the rewritten records; answered with SendOk after the commit.
    pub(super) fn handle_amend(&mut self, req: AmendRequest, now: Instant) {
        let (origin, rid) = (req.origin, req.request_id);
        let now_ms = self.unix_ms(now);
        let (edit_window, delete_window) = (self.config.edit_window, self.config.delete_window);
        let chat = match self.load_chat(req.chat) {
            Ok(Some(chat)) => chat,
            Ok(None) => return self.error_to(origin, ErrorCode::UnknownChat, NO_SUCH_CHAT, rid, now),
            Err(e) => {
                let message = format!("the store is unavailable: {e}");
                return self.error_to(origin, ErrorCode::Unavailable, &message, rid, now);
            }
        };
        if !chat.members.contains(&req.sender) {
            // Answered like a missing chat, as for Send: ids reveal nothing (SECURITY.md).
            return self.error_to(origin, ErrorCode::UnknownChat, NO_SUCH_CHAT, rid, now);
        }
        let key = (req.sender, req.client_msg_id);
        let digest = amend_digest(req.target, req.text.as_deref());
        if let Some(seq) = chat.in_flight.get(&key).copied() {
            if let Some(pending) = self.in_flight.get_mut(&(req.chat, seq)) {
                if pending.text_digest != digest {
                    return self.reused_id(origin, rid, now);
                }
                pending.waiters.push((origin, rid));
            }
            return;
        }
        let (kind, owner, next_seq) = (chat.kind, chat.owner, chat.next_seq);
        let overlay = chat.conv.amended.get(&req.target).cloned();
        match self.store.dedupe(req.chat, req.sender, req.client_msg_id) {
            Ok(Some((seq, ts))) => {
                let frame = self.send_ok(rid, req.client_msg_id, req.chat, seq, ts);
                return self.reply_to(origin, frame, now);
            }
            Ok(None) => {}
            Err(e) => {
                let message = format!("the store is unavailable: {e}");
                return self.error_to(origin, ErrorCode::Unavailable, &message, rid, now);
            }
        }
        // The target as it stands (with the amends in flight applied).
        let target = if req.target.0 >= next_seq {
            None
        } else if overlay.is_some() {
            overlay
        } else if self.in_flight.contains_key(&(req.chat, req.target)) {
            // Sent but not committed yet: its sender has no SendOk for it, so nobody can
            // legitimately know its seq.
            None
        } else {
            match self.store.stored_message(req.chat, req.target) {
                Ok(found) => found,
                Err(e) => {
                    let message = format!("the store is unavailable: {e}");
                    return self.error_to(origin, ErrorCode::Unavailable, &message, rid, now);
                }
            }
        };
        let refusal = match &target {
            None => refuse(
                ErrorCode::UnknownTarget,
                "target_seq names no message of this chat",
            ),
            Some(t) if t.meta.kind != MessageKind::Text => refuse(
                ErrorCode::UnknownTarget,
                "target_seq names an edit or delete record; edit or delete the original message",
            ),
            Some(t) if t.meta.deleted.0 != 0 => refuse(ErrorCode::MessageDeleted, "the message was deleted"),
            Some(t) => {
                let age = Duration::from_millis(now_ms.saturating_sub(t.server_ts_ms));
                match &req.text {
                    Some(_) if t.sender != req.sender => {
                        refuse(ErrorCode::NotSender, "only the sender of a message may edit it")
                    }
                    Some(_) if age > edit_window => refuse(
                        ErrorCode::WindowClosed,
                        &format!(
                            "a message may be edited for {} s after it was sent",
                            edit_window.as_secs()
                        ),
                    ),
                    Some(_) if t.meta.edits.len() >= MAX_EDITS_PER_MESSAGE => refuse(
                        ErrorCode::TooManyEdits,
                        &format!("a message may be edited at most {MAX_EDITS_PER_MESSAGE} times"),
                    ),
                    Some(_) => None,
                    None if t.sender == req.sender && age > delete_window => refuse(
                        ErrorCode::WindowClosed,
                        &format!(
                            "a message may be deleted for {} s after it was sent",
                            delete_window.as_secs()
                        ),
                    ),
                    None if t.sender == req.sender => None,
                    None if kind == ChatKind::Group && owner == req.sender => None,
                    None => refuse(
                        ErrorCode::NotSender,
                        "only the sender of a message (or the group's owner) may delete it",
                    ),
                }
            }
        };
        if let Some((code, message)) = refusal {
            return self.error_to(origin, code, &message, rid, now);
        }
        let Some(mut target) = target else {
            return;
        };
        let text_len = req.text.as_ref().map_or(0, String::len);
        if self.in_flight.len() >= MAX_IN_FLIGHT_SENDS
            || self.in_flight_bytes + text_len > MAX_IN_FLIGHT_BYTES
        {
            let message = "the server's store is behind; retry shortly with the same client_msg_id";
            return self.error_to(origin, ErrorCode::Overloaded, message, rid, now);
        }
        // A delete also takes the text out of every edit of the target.
        let mut rewrites = Vec::new();
        if req.text.is_none() {
            for &edit in &target.meta.edits {
                let known = self
                    .chats
                    .get(&req.chat)
                    .and_then(|c| c.conv.amended.get(&edit).cloned());
                let record = match known {
                    Some(record) => Some(record),
                    None => match self.store.stored_message(req.chat, edit) {
                        Ok(found) => found,
                        Err(e) => {
                            let message = format!("the store is unavailable: {e}");
                            return self.error_to(origin, ErrorCode::Unavailable, &message, rid, now);
                        }
                    },
                };
                if let Some(mut record) = record {
                    record.text.clear();
                    rewrites.push(record);
                }
            }
        }
        let Some(chat) = self.chats.get_mut(&req.chat) else {
            return;
        };
        let seq = Seq(chat.next_seq);
        chat.next_seq += 1;
        chat.in_flight.insert(key, seq);
        let (record_kind, text) = match req.text {
            Some(text) => {
                target.text.clone_from(&text);
                target.meta.edited = seq;
                target.meta.edits.push(seq);
                (MessageKind::Edit, text)
            }
            None => {
                target.text.clear();
                target.meta.deleted = seq;
                (MessageKind::Delete, String::new())
            }
        };
        let record = StoredMessage {
            chat: req.chat,
            seq,
            sender: req.sender,
            server_ts_ms: now_ms,
            client_msg_id: req.client_msg_id,
            text,
            meta: MessageMeta {
                kind: record_kind,
                target: target.seq,
                ..MessageMeta::default()
            },
        };
        for r in &rewrites {
            chat.conv.amended.insert(r.seq, r.clone());
        }
        chat.conv.amended.insert(target.seq, target.clone());
        chat.conv.amended.insert(seq, record.clone());
        rewrites.insert(0, target);
        let recipients = chat.recipients.clone();
        let text_bytes = record.text.len();
        let frame = self.encoder.message(0, &record.clone().into_wire());
        self.in_flight_bytes += text_bytes;
        self.in_flight.insert(
            (req.chat, seq),
            InFlight {
                sender: req.sender,
                client_msg_id: req.client_msg_id,
                server_ts_ms: now_ms,
                text_digest: digest,
                text_bytes,
                frame,
                waiters: vec![(origin, rid)],
                recipients,
            },
        );
        self.stats.messages_accepted += 1;
        self.actions.push_back(Action::Write(WriteOp::Amend {
            origin: self.config.core,
            msg: record,
            rewrites,
        }));
    }

    /// A typing indicator for a chat this core owns (see the module docs).
    pub(super) fn handle_typing(&mut self, chat_id: ChatId, user: UserId, active: bool, now: Instant) {
        let Ok(Some(chat)) = self.load_chat(chat_id) else {
            return;
        };
        if !chat.members.contains(&user) {
            return;
        }
        // At most one entry per member; entries past their expiry mean nothing any more.
        chat.conv.typing.retain(|_, t| now < t.passed + TYPING_EXPIRY);
        let shown = match chat.conv.typing.get(&user) {
            Some(t) if now < t.passed + TYPING_THROTTLE => return,
            Some(t) => t.shown_until.is_some_and(|until| now < until),
            None => false,
        };
        if !active && !shown {
            // Nothing shown to end.
            return;
        }
        chat.conv.typing.insert(
            user,
            Typist {
                passed: now,
                shown_until: active.then_some(now + TYPING_EXPIRY),
            },
        );
        self.push_typing(chat_id, user, active, now);
    }

    /// `user` sent a message to `chat`: an indicator it shows there ends.
    pub(super) fn typing_ended_by_send(&mut self, chat_id: ChatId, user: UserId, now: Instant) {
        let Some(chat) = self.chats.get_mut(&chat_id) else {
            return;
        };
        let Some(typist) = chat.conv.typing.get_mut(&user) else {
            return;
        };
        if typist.shown_until.is_some_and(|until| now < until) {
            typist.shown_until = None;
            self.push_typing(chat_id, user, false, now);
        }
    }

    fn push_typing(&mut self, chat: ChatId, user: UserId, active: bool, now: Instant) {
        let frame = self.encoder.encode(&Frame::new(
            0,
            Body::Typing(Typing {
                chat_id: chat.0,
                active,
                user_id: user.0,
            }),
        ));
        self.notify_members(chat, |u| u != user, frame, now);
    }

    /// Routes `frame` to the home cores of the chat's members for which `to` holds.
    fn notify_members(&mut self, chat: ChatId, to: impl Fn(UserId) -> bool, frame: Bytes, now: Instant) {
        let Some(state) = self.chats.get(&chat) else {
            return;
        };
        let groups: Vec<(usize, Arc<[UserId]>)> = state
            .recipients
            .iter()
            .enumerate()
            .filter_map(|(core, users)| {
                let users: Arc<[UserId]> = users.iter().copied().filter(|&u| to(u)).collect();
                (!users.is_empty()).then_some((core, users))
            })
            .collect();
        for (core, users) in groups {
            let msg = CoreMsg::Notify {
                users,
                frame: frame.clone(),
            };
            self.route(CoreId(core), msg, now);
        }
    }

    /// One of `user`'s devices acknowledged `seq` in `chat` (owner core).
    pub(super) fn handle_delivered(&mut self, chat_id: ChatId, user: UserId, seq: Seq, now: Instant) {
        let core = self.config.core;
        let Ok(Some(chat)) = self.load_chat(chat_id) else {
            return;
        };
        if !chat.members.contains(&user) {
            return;
        }
        // Never past the last seq handed out (an Ack may name any seq).
        let seq = seq.0.min(chat.next_seq.saturating_sub(1));
        let entry = chat.conv.receipts.entry(user).or_default();
        if seq <= entry.0 {
            return;
        }
        entry.0 = seq;
        self.actions.push_back(Action::Write(WriteOp::Receipt {
            origin: core,
            chat: chat_id,
            user,
            delivered: Seq(seq),
        }));
        self.receipt_changed(chat_id, user, now);
    }

    /// `user`'s read marker in `chat` is now `seq` (stored by the side-port; owner core).
    pub(super) fn handle_read_marker(&mut self, chat_id: ChatId, user: UserId, seq: Seq, now: Instant) {
        let Ok(Some(chat)) = self.load_chat(chat_id) else {
            return;
        };
        if !chat.members.contains(&user) {
            return;
        }
        let entry = chat.conv.receipts.entry(user).or_default();
        if seq.0 <= entry.1 {
            return;
        }
        entry.1 = seq.0;
        self.receipt_changed(chat_id, user, now);
    }

    /// `user` turned read receipts on or off: every cached chat of it here re-announces its
    /// receipt (the others now see its read marker, or 0).
    pub(super) fn handle_settings(&mut self, user: UserId, read_receipts: bool, now: Instant) {
        let chats: Vec<ChatId> = self
            .chats
            .iter_mut()
            .filter(|(_, c)| c.members.contains(&user))
            .filter_map(|(&id, c)| {
                let changed = if read_receipts {
                    c.conv.read_off.remove(&user)
                } else {
                    c.conv.read_off.insert(user)
                };
                changed.then_some(id)
            })
            .collect();
        for chat in chats {
            self.receipt_changed(chat, user, now);
        }
    }

    fn receipt_changed(&mut self, chat_id: ChatId, user: UserId, now: Instant) {
        let Some(chat) = self.chats.get_mut(&chat_id) else {
            return;
        };
        chat.conv.dirty.insert(user);
        if !chat.conv.flush_queued {
            chat.conv.flush_queued = true;
            self.receipt_flushes.push_back((now + RECEIPT_INTERVAL, chat_id));
        }
    }

    /// Time passed: pushes the receipts of every chat whose interval is over.
    pub(super) fn conversation_handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, chat)) = self.receipt_flushes.front() {
            if at > now {
                break;
            }
            self.receipt_flushes.pop_front();
            self.flush_receipts(chat, now);
        }
    }

    /// One cumulative Receipt per changed member of `chat_id`, to every other member.
    fn flush_receipts(&mut self, chat_id: ChatId, now: Instant) {
        let Some(chat) = self.chats.get_mut(&chat_id) else {
            return;
        };
        chat.conv.flush_queued = false;
        let mut dirty: Vec<UserId> = chat.conv.dirty.drain().collect();
        dirty.sort_unstable();
        for user in dirty {
            let Some(chat) = self.chats.get(&chat_id) else {
                return;
            };
            let hidden = chat.conv.read_off.contains(&user);
            let full = chat.conv.receipt(chat_id, user, user);
            let read_off = chat.conv.read_off.clone();
            let masked = Receipt {
                read_seq: 0,
                ..full.clone()
            };
            let shows_read = full.read_seq != 0 && !hidden;
            let full_frame = self.encoder.encode(&Frame::new(0, Body::Receipt(full)));
            let masked_frame = self.encoder.encode(&Frame::new(0, Body::Receipt(masked)));
            if shows_read {
                let off = read_off.clone();
                self.notify_members(chat_id, move |u| u != user && !off.contains(&u), full_frame, now);
                self.notify_members(
                    chat_id,
                    move |u| u != user && read_off.contains(&u),
                    masked_frame,
                    now,
                );
            } else {
                self.notify_members(chat_id, move |u| u != user, masked_frame, now);
            }
        }
        self.note_if_idle(chat_id);
    }

    /// A session synced these chats: their current receipts, as `viewer` sees them, in one
    /// reply (owner core).
    pub(super) fn handle_receipts_query(
        &mut self,
        to: Origin,
        viewer: UserId,
        chats: Vec<ChatId>,
        now: Instant,
    ) {
        let mut out = BytesMut::new();
        for chat_id in chats {
            let Ok(Some(chat)) = self.load_chat(chat_id) else {
                continue;
            };
            if !chat.members.contains(&viewer) {
                continue;
            }
            let mut users: Vec<UserId> = chat
                .conv
                .receipts
                .iter()
                .filter(|&(&u, &(d, r))| u != viewer && (d != 0 || r != 0))
                .map(|(&u, _)| u)
                .collect();
            users.sort_unstable();
            let receipts: Vec<Receipt> = users
                .iter()
                .map(|&u| chat.conv.receipt(chat_id, u, viewer))
                .collect();
            for receipt in receipts {
                out.extend_from_slice(&self.encoder.encode(&Frame::new(0, Body::Receipt(receipt))));
            }
        }
        if !out.is_empty() {
            self.reply_to(to, out.freeze(), now);
        }
    }
}
