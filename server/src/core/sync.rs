//! Sync, history and cursors, served on the user's home core.
//!
//! # Sync
//! A `Sync{cursors}` from a session plans the chats of its user (the store's
//! `user_chats`, so a non-member gets nothing of a chat whatever cursors it
//! sends). For each chat the start is the cursor the device sent, else the
//! cursor it stored with `Ack`, else the chat's head minus
//! [`NEW_DEVICE_BACKLOG`] (a brand-new device gets the last 50 and pages
//! further back with History). The missing messages are then read from the
//! store and written **one bounded page per step** ([`SYNC_PAGE_MESSAGES`],
//! [`SYNC_PAGE_BYTES`]), chat by chat in ascending chat id and seq. After a
//! page the sync waits until the driver reports that the session's outbound
//! buffer drained ([`Core::handle_drained`]), so catching up on a million
//! messages holds at most about one page per session, and the core serves
//! everything else between pages. When every chat is done: `SyncDone{heads}`.
//!
//! The store reads are bounded per loop turn, not only per session: planning
//! a sync (the user's chats, then each chat's head and stored cursor) and
//! streaming it (one bounded range read per chat) take their reads from one
//! budget of [`SYNC_READS_PER_TURN`] per turn across all sessions, at the end
//! of the turn, so a storm of a thousand syncs on a cold cache delays other
//! sessions' frames by at most that many reads per turn. Until its plan is
//! read a sync drops every live push to its session (the reads that follow
//! cover them). Every Message of the stream carries the Sync's request id.
//!
//! # The seam with live pushes
//! A message is pushed only after it is committed, and reads and pushes are
//! handled by the same thread, so the store read always covers what was
//! committed before it. Per syncing session and chat:
//! * a chat still planned (not reached yet, or being paged): live pushes for
//!   it are dropped; the store read that finishes the chat includes them;
//! * a chat finished (its last page was short, so it held everything committed
//!   at that moment): a push is forwarded iff its seq is past the last seq this
//!   session was sent, which then moves on. Pushes of one chat reach a home core
//!   in seq order, so past that point nothing is lost or doubled; the filter
//!   entry for the chat is dropped by the first push it lets through after
//!   `SyncDone`.
//!
//! So each message reaches a syncing session exactly once, in order per chat.
//! Pushes of finished chats may arrive before `SyncDone`.
//!
//! # Slow consumers
//! When a session's outbound buffer overflows (the driver calls
//! [`Core::handle_outbound_overflow`]), live pushes to it stop and it is sent
//! `Resync`; it stays open and catches up with Sync, paced by its own reading.
//!
//! # History and Ack
//! History pages (newest first, at most [`HISTORY_MAX_MESSAGES`] and about
//! [`HISTORY_MAX_BYTES`] of text) are read on the home core for members only;
//! a non-member gets an empty page. `Ack{chat, seq}` from a member stores the
//! device's cursor through the group-commit writer ([`WriteOp::Cursor`]).

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::BytesMut;
use natter_wire::{Body, Cursor, Frame, HistoryPage, Message, SyncDone, fb};

use super::WriteOp;
use super::{ConnId, Core, State};
use super::{ReadError, StoredMessage};
use crate::ids::{ChatId, DeviceId, Seq, UserId};

/// Most messages one sync step reads and writes.
pub const SYNC_PAGE_MESSAGES: usize = 1024;
/// Most message text one sync step reads and writes (one message may pass it).
pub const SYNC_PAGE_BYTES: usize = 256 * 1024;
/// Messages a device with no cursor for a chat gets of it on Sync.
pub const NEW_DEVICE_BACKLOG: u64 = 50;
/// Most messages in one HistoryPage.
pub const HISTORY_MAX_MESSAGES: usize = 200;
/// Most message text in one HistoryPage when several messages share it; a
/// message too big to share a page gets one of its own. Every page also stays
/// within `--max-frame` (see [`max_text_bytes`]).
pub const HISTORY_MAX_BYTES: usize = 256 * 1024;

/// Bytes a `HistoryPage` frame holds besides its messages (prefix, Frame and
/// page tables, union, vector header), rounded up; checked by a unit test.
pub const HISTORY_PAGE_OVERHEAD: usize = 128;

/// Bytes one `Message` adds to a frame besides its text (its table, vtable,
/// offsets, string header and padding; as its own frame the prefix and Frame
/// table too), rounded up; checked by a unit test.
pub const MESSAGE_OVERHEAD: usize = 128;

/// The longest text (UTF-8 bytes) a server with this frame limit accepts: the
/// one that still fits alone in a `HistoryPage` (and so in a `Message` frame).
/// With the default 512 KiB limit every legal text (100,000 scalar values,
/// at most 400,000 bytes) fits.
pub fn max_text_bytes(max_frame: usize) -> usize {
    max_frame.saturating_sub(HISTORY_PAGE_OVERHEAD + MESSAGE_OVERHEAD)
}

/// The store reads sync and history need (the store implements them for its
/// fjall database; the fuzzing harness for its in-memory model).
pub trait SyncStore {
    /// The chats `user` is a member of, ascending.
    ///
    /// # Errors
    /// The store failed.
    fn sync_user_chats(&self, user: UserId) -> Result<Vec<ChatId>, ReadError>;

    /// Whether `user` is a member of `chat` now.
    ///
    /// # Errors
    /// The store failed.
    fn sync_is_member(&self, chat: ChatId, user: UserId) -> Result<bool, ReadError>;

    /// The chat's last committed seq.
    ///
    /// # Errors
    /// The store failed.
    fn sync_last_seq(&self, chat: ChatId) -> Result<Seq, ReadError>;

    /// The cursor the device stored for the chat.
    ///
    /// # Errors
    /// The store failed.
    fn sync_device_cursor(&self, device: DeviceId, chat: ChatId) -> Result<Option<Seq>, ReadError>;

    /// Up to `max_msgs` messages of `chat` with `seq > after`, ascending, whose
    /// texts stop once they reach `max_bytes` (at least one when any exists).
    ///
    /// # Errors
    /// The store failed.
    fn sync_page(
        &self,
        chat: ChatId,
        after: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>, ReadError>;

    /// Up to `max_msgs` messages of `chat` with `seq < before`, newest first, whose
    /// texts stay within `max_bytes` except the first (always taken); and whether
    /// older ones exist.
    ///
    /// # Errors
    /// The store failed.
    fn sync_history(
        &self,
        chat: ChatId,
        before: Seq,
        max_msgs: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredMessage>, bool), ReadError>;
}

/// The sync state of one session (only sessions that synced or were stopped have one).
#[derive(Debug, Default)]
pub(crate) struct SessionSync {
    /// Live pushes stopped after an overflow: every push is dropped until the next Sync.
    stopped: bool,
    /// The sync in progress.
    run: Option<Run>,
    /// Per chat: the last seq this session was sent (the push filter).
    delivered: HashMap<ChatId, u64>,
}

#[derive(Debug)]
struct Run {
    request_id: u64,
    /// Chats still to stream, in order, with the last seq sent of each; the front is current.
    pending: VecDeque<(ChatId, u64)>,
    /// The chats of `pending`: their live pushes are dropped.
    planned: HashSet<ChatId>,
    /// Every chat of the user at the start, with its head then (for SyncDone).
    chats: Vec<(ChatId, u64)>,
    /// A page went out; the next waits for [`Core::handle_drained`].
    awaiting_drain: bool,
    /// The plan being read, until it is complete (its store reads wait for
    /// the turns' read budget like its pages). While `Some`, every live push
    /// to the session is dropped: the reads that follow include them.
    unplanned: Option<Planning>,
    /// In `Core::sync_queue`, waiting for a turn's budget.
    queued: bool,
}

/// A sync's plan, read a few chats per turn.
#[derive(Debug)]
struct Planning {
    /// The cursors the Sync sent.
    given: HashMap<ChatId, u64>,
    /// The user's chats still to plan (`None`: not read yet).
    chats: Option<VecDeque<ChatId>>,
    /// `(chat, start after, head)` of the chats planned so far.
    plan: Vec<(ChatId, u64, u64)>,
}

/// Store reads all syncs of a core make per loop turn: the list of a user's
/// chats, a chat's head and stored cursor while planning, one bounded page
/// range (plus a membership check) per chat while streaming. A range read over
/// a cold store costs up to about a millisecond here (an iterator over every
/// table of the range), so four keep a storm of syncs from holding the loop —
/// and every other session's frames — for more than a few milliseconds per
/// turn, while a catch-up still reads up to 1,024 messages per range read
/// (`natter-bench sync`: ~1.1 M messages/s). Work left over runs next turn
/// ([`Core::poll_timeout`] asks for an immediate one).
pub const SYNC_READS_PER_TURN: usize = 4;

impl Core {
    /// Whether a live push of message `(chat, seq)` may go to `conn` (see the module docs).
    pub(super) fn sync_admits(&mut self, conn: ConnId, chat: ChatId, seq: Seq) -> bool {
        let Some(state) = self.syncs.get_mut(&conn) else {
            return true;
        };
        if state.stopped {
            return false;
        }
        let seq = seq.0;
        if state.run.as_ref().is_some_and(|r| r.unplanned.is_some()) {
            return false;
        }
        if state.run.as_ref().is_some_and(|r| r.planned.contains(&chat)) {
            return false;
        }
        match state.delivered.get(&chat).copied() {
            Some(last) if seq <= last => false,
            Some(_) => {
                if state.run.is_some() {
                    state.delivered.insert(chat, seq);
                } else {
                    // Past the seam: later pushes of this chat are all newer.
                    state.delivered.remove(&chat);
                    if state.delivered.is_empty() {
                        self.syncs.remove(&conn);
                    }
                }
                true
            }
            None => true,
        }
    }

    /// The session said `Hello{sync_first}`: hold live pushes until its first Sync.
    pub(super) fn sync_hold(&mut self, conn: ConnId) {
        self.syncs.entry(conn).or_default().stopped = true;
    }

    /// The session left (closed or failed): its sync state goes with it.
    pub(super) fn sync_forget(&mut self, conn: ConnId) {
        self.syncs.remove(&conn);
    }

    /// The driver: `conn`'s outbound buffer drained below its low-water mark.
    /// A sync waiting for that writes its next page.
    pub fn handle_drained(&mut self, conn: ConnId, _now: std::time::Instant) {
        let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut()) else {
            return;
        };
        if run.awaiting_drain {
            run.awaiting_drain = false;
            self.sync_enqueue(conn);
        }
    }

    /// Queues `conn`'s sync for a step in a coming turn (once).
    fn sync_enqueue(&mut self, conn: ConnId) {
        if let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut())
            && !run.queued
        {
            run.queued = true;
            self.sync_queue.push_back(conn);
        }
    }

    /// End of a loop turn: queued sync work, up to [`SYNC_READS_PER_TURN`]
    /// store reads.
    pub(super) fn sync_run_queue(&mut self) {
        let mut reads = SYNC_READS_PER_TURN;
        while reads > 0 {
            let Some(conn) = self.sync_queue.pop_front() else {
                return;
            };
            let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut()) else {
                continue;
            };
            if !run.queued {
                // A stale entry: the run it was queued for was replaced.
                continue;
            }
            run.queued = false;
            match run.unplanned.take() {
                Some(planning) => self.sync_plan(conn, planning, &mut reads),
                None => self.sync_step(conn, &mut reads),
            }
        }
    }

    /// Whether sync steps wait for the next turn.
    pub(super) fn sync_work_left(&self) -> bool {
        !self.sync_queue.is_empty()
    }

    /// Whether `conn` has a sync in progress (for tests and the fuzzing harness).
    pub fn is_syncing(&self, conn: ConnId) -> bool {
        self.syncs.get(&conn).is_some_and(|s| s.run.is_some())
    }

    /// The slow-consumer switch: stop live pushes to `conn` and tell it to resync.
    pub(super) fn sync_stop(&mut self, conn: ConnId) {
        let state = self.syncs.entry(conn).or_default();
        if state.stopped {
            return;
        }
        state.stopped = true;
        state.run = None;
        state.delivered.clear();
        self.stats.slow_consumers += 1;
        let frame = self.encoder.encode(&Frame::new(0, Body::Resync));
        self.transmit(conn, frame);
    }

    fn active(&self, conn: ConnId) -> Option<(UserId, DeviceId)> {
        match self.sessions.get(conn.0)?.state {
            State::Active { user, device } => Some((user, device)),
            _ => None,
        }
    }

    pub(super) fn handle_sync_frame(
        &mut self,
        conn: ConnId,
        sync: fb::Sync<'_>,
        request_id: u64,
        now: std::time::Instant,
    ) {
        let Some(_) = self.active(conn) else {
            return;
        };
        if !self
            .sessions
            .get_mut(conn.0)
            .is_some_and(|s| s.syncs.take(super::SYNCS_PER_SECOND, now))
        {
            let message = format!(
                "at most {} syncs per second per connection",
                super::SYNCS_PER_SECOND
            );
            return self.reply_error(conn, natter_wire::ErrorCode::RateLimited, &message, request_id);
        }
        let given: HashMap<ChatId, u64> = sync
            .cursors()
            .map(|v| v.iter().map(|c| (ChatId(c.chat_id()), c.seq())).collect())
            .unwrap_or_default();
        // Planned (store reads) in a coming turn, within the sync budget;
        // until then every live push to the session is dropped.
        let state = self.syncs.entry(conn).or_default();
        state.stopped = false;
        state.run = Some(Run {
            request_id,
            pending: VecDeque::new(),
            planned: HashSet::new(),
            chats: Vec::new(),
            awaiting_drain: false,
            unplanned: Some(Planning {
                given,
                chats: None,
                plan: Vec::new(),
            }),
            queued: false,
        });
        self.sync_enqueue(conn);
    }

    /// Reads more of the plan of `conn`'s queued sync, within `reads`; once it
    /// is complete, sets the run up (its first page is the next step).
    fn sync_plan(&mut self, conn: ConnId, mut planning: Planning, reads: &mut usize) {
        let Some((user, device)) = self.active(conn) else {
            return;
        };
        let request_id = self
            .syncs
            .get(&conn)
            .and_then(|s| s.run.as_ref())
            .map_or(0, |r| r.request_id);
        match self.plan_some(user, device, &mut planning, reads) {
            Ok(true) => {}
            Ok(false) => {
                // Budget spent: more next turn.
                if let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut()) {
                    run.unplanned = Some(planning);
                }
                return self.sync_enqueue(conn);
            }
            Err(e) => {
                // Nothing was sent: hold pushes until the next Sync (as after
                // a failed page), so that one is exact.
                if let Some(state) = self.syncs.get_mut(&conn) {
                    state.run = None;
                    state.stopped = true;
                    state.delivered.clear();
                }
                let message = format!("the store is unavailable: {e}; send Sync again");
                return self.reply_error(conn, natter_wire::ErrorCode::Unavailable, &message, request_id);
            }
        }
        let plan = planning.plan;
        let Some(state) = self.syncs.get_mut(&conn) else {
            return;
        };
        let mut run = Run {
            request_id,
            pending: VecDeque::new(),
            planned: HashSet::new(),
            chats: Vec::with_capacity(plan.len()),
            awaiting_drain: false,
            unplanned: None,
            queued: false,
        };
        for (chat, after, head) in plan {
            run.chats.push((chat, head));
            if after < head {
                run.pending.push_back((chat, after));
                run.planned.insert(chat);
                state.delivered.insert(chat, after);
            } else {
                // Up to date: only pushes past the head are new to it.
                state.delivered.insert(chat, head);
            }
        }
        state.run = Some(run);
        // The first page is the next step.
        self.sync_enqueue(conn);
    }

    /// Plans every chat of the user (`(chat, start after, head)` into
    /// `planning.plan`), charging one store read to `reads` per read; true once
    /// every chat is planned (always, unless a read fails).
    fn plan_some(
        &self,
        user: UserId,
        device: DeviceId,
        planning: &mut Planning,
        reads: &mut usize,
    ) -> Result<bool, ReadError> {
        let chats = match &mut planning.chats {
            Some(chats) => chats,
            None => {
                *reads = reads.saturating_sub(1);
                planning.chats.insert(self.store.sync_user_chats(user)?.into())
            }
        };
        // The whole plan in one step, whatever the budget (it only decides
        // when a plan starts): a plan split over turns would leave windows in
        // which a push of a chat already planned as up to date, or of a chat
        // joined meanwhile, is dropped and read by nothing. Its reads are
        // charged to the turn, which ends the turn's sync work.
        while let Some(chat) = chats.pop_front() {
            *reads = reads.saturating_sub(1);
            let head = self.store.sync_last_seq(chat)?.0;
            let after = match planning.given.get(&chat) {
                Some(&seq) => seq,
                None => {
                    *reads = reads.saturating_sub(1);
                    match self.store.sync_device_cursor(device, chat)? {
                        Some(seq) => seq.0,
                        None => head.saturating_sub(NEW_DEVICE_BACKLOG),
                    }
                }
            };
            planning.plan.push((chat, after, head));
        }
        Ok(true)
    }

    /// Writes the next page of `conn`'s sync (or SyncDone when nothing is
    /// left), one page range read per chat taken from `reads`.
    fn sync_step(&mut self, conn: ConnId, reads: &mut usize) {
        let Some((user, _)) = self.active(conn) else {
            return;
        };
        let mut out = BytesMut::new();
        let mut msgs = 0;
        let mut bytes = 0;
        let mut failed = None;
        loop {
            let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut()) else {
                return;
            };
            let Some(&(chat, after)) = run.pending.front() else {
                break;
            };
            let request_id = run.request_id;
            if msgs >= SYNC_PAGE_MESSAGES || bytes >= SYNC_PAGE_BYTES || *reads == 0 {
                break;
            }
            *reads = reads.saturating_sub(2);
            let want = SYNC_PAGE_MESSAGES - msgs;
            // The page first, then membership: a message sent after the user's
            // removal is committed after the removal, so if the page holds one,
            // the check already sees the removal and the page is dropped (the
            // other order could let a removal and later messages slip between).
            let read = self
                .store
                .sync_page(chat, Seq(after), want, SYNC_PAGE_BYTES - bytes)
                .and_then(|page| Ok((page, self.store.sync_is_member(chat, user)?)));
            let page = match read {
                Ok((page, true)) => page,
                Ok((_, false)) => {
                    // Removed during the sync: nothing more of this chat.
                    if let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut()) {
                        run.pending.pop_front();
                        run.planned.remove(&chat);
                    }
                    continue;
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let short = page.len() < want && bytes + page_bytes(&page) < SYNC_PAGE_BYTES;
            let last = page.last().map_or(after, |m| m.seq.0);
            msgs += page.len();
            for m in page {
                bytes += m.text.len();
                // The Sync's request id tells a sync page from a live push (0).
                let frame = self.encoder.message(
                    request_id,
                    &Message {
                        chat_id: chat.0,
                        seq: m.seq.0,
                        sender: m.sender.0,
                        server_ts_ms: m.server_ts_ms,
                        client_msg_id: m.client_msg_id.0,
                        text: m.text,
                    },
                );
                out.extend_from_slice(&frame);
            }
            let Some(state) = self.syncs.get_mut(&conn) else {
                return;
            };
            state.delivered.insert(chat, last);
            let Some(run) = state.run.as_mut() else {
                return;
            };
            if short {
                // Everything committed when it was read: the chat is done.
                run.pending.pop_front();
                run.planned.remove(&chat);
            } else if let Some(front) = run.pending.front_mut() {
                front.1 = last;
            }
        }
        self.stats.deliveries += msgs as u64;
        let out_len = out.len();
        if !out.is_empty() {
            self.transmit(conn, out.freeze());
        }
        if let Some(e) = failed {
            // The filters are part-way: hold every live push back until the
            // client's next Sync, which starts from its own cursors, so that
            // one is exact again.
            let mut request_id = 0;
            if let Some(state) = self.syncs.get_mut(&conn) {
                request_id = state.run.take().map_or(0, |r| r.request_id);
                state.stopped = true;
                state.delivered.clear();
            }
            let message = format!("the store is unavailable: {e}; send Sync again");
            return self.reply_error(conn, natter_wire::ErrorCode::Unavailable, &message, request_id);
        }
        let Some(state) = self.syncs.get_mut(&conn) else {
            return;
        };
        let Some(run) = state.run.as_mut() else {
            return;
        };
        if !run.pending.is_empty() {
            if out_len == 0 {
                // Nothing went out (the turn's reads ran out, or the chats
                // read were already complete): no drain will be reported,
                // so continue next turn.
                return self.sync_enqueue(conn);
            }
            run.awaiting_drain = true;
            return;
        }
        let Some(run) = state.run.take() else {
            return;
        };
        let heads: Vec<Cursor> = run
            .chats
            .iter()
            .map(|&(chat, head)| Cursor {
                chat_id: chat.0,
                seq: state.delivered.get(&chat).copied().unwrap_or(head),
            })
            .collect();
        if state.delivered.is_empty() && !state.stopped {
            self.syncs.remove(&conn);
        }
        let frame = self
            .encoder
            .encode(&Frame::new(run.request_id, Body::SyncDone(SyncDone { heads })));
        self.transmit(conn, frame);
    }

    pub(super) fn handle_history_frame(
        &mut self,
        conn: ConnId,
        history: fb::History<'_>,
        request_id: u64,
        now: std::time::Instant,
    ) {
        let Some((user, _)) = self.active(conn) else {
            return;
        };
        if !self
            .sessions
            .get_mut(conn.0)
            .is_some_and(|s| s.histories.take(super::HISTORY_PER_SECOND, now))
        {
            let message = format!(
                "at most {} history requests per second per connection",
                super::HISTORY_PER_SECOND
            );
            return self.reply_error(conn, natter_wire::ErrorCode::RateLimited, &message, request_id);
        }
        let chat = ChatId(history.chat_id());
        let before = match history.before_seq() {
            0 => Seq(u64::MAX),
            s => Seq(s),
        };
        let limit = (history.limit() as usize).min(HISTORY_MAX_MESSAGES);
        // Text budget: the frame must hold the page's own overhead and every
        // message's; a first message always goes in (it fits alone: sends
        // are bounded by `max_text_bytes`).
        let budget = HISTORY_MAX_BYTES.min(
            self.config
                .limits
                .max_frame
                .saturating_sub(HISTORY_PAGE_OVERHEAD + limit * MESSAGE_OVERHEAD),
        );
        let result = self.store.sync_is_member(chat, user).and_then(|member| {
            if member && limit > 0 {
                self.store.sync_history(chat, before, limit, budget)
            } else {
                Ok((Vec::new(), false))
            }
        });
        let (messages, has_more) = match result {
            Ok(page) => page,
            Err(e) => {
                let message = format!("the store is unavailable: {e}");
                return self.reply_error(conn, natter_wire::ErrorCode::Unavailable, &message, request_id);
            }
        };
        let page = HistoryPage {
            chat_id: chat.0,
            messages: messages
                .into_iter()
                .map(|m| Message {
                    chat_id: chat.0,
                    seq: m.seq.0,
                    sender: m.sender.0,
                    server_ts_ms: m.server_ts_ms,
                    client_msg_id: m.client_msg_id.0,
                    text: m.text,
                })
                .collect(),
            has_more,
        };
        let frame = self
            .encoder
            .encode(&Frame::new(request_id, Body::HistoryPage(page)));
        self.transmit(conn, frame);
    }

    pub(super) fn handle_ack_frame(
        &mut self,
        conn: ConnId,
        ack: fb::Ack<'_>,
        request_id: u64,
        now: std::time::Instant,
    ) {
        let Some((user, device)) = self.active(conn) else {
            return;
        };
        // Acks over the rate, or while the writer is behind (sends are being
        // refused as `overloaded`), are ignored: a cursor is a hint the next
        // Ack repeats, and dropping it keeps the writer's backlog bounded.
        if !self
            .sessions
            .get_mut(conn.0)
            .is_some_and(|s| s.acks.take(super::ACKS_PER_SECOND, now))
            || self.overloaded()
        {
            return;
        }
        let chat = ChatId(ack.chat_id());
        match self.store.sync_is_member(chat, user) {
            Ok(true) => self.actions.push_back(super::Action::Write(WriteOp::Cursor {
                origin: self.config.core,
                device,
                chat,
                seq: Seq(ack.seq()),
            })),
            // A cursor for a chat the user is not in is ignored (no row per
            // invented chat id); Ack has no answer.
            Ok(false) => {}
            Err(e) => {
                let message = format!("the store is unavailable: {e}");
                self.reply_error(conn, natter_wire::ErrorCode::Unavailable, &message, request_id);
            }
        }
    }
}

fn page_bytes(page: &[StoredMessage]) -> usize {
    page.iter().map(|m| m.text.len()).sum()
}

#[cfg(test)]
mod tests;
