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
//! The store reads are not the core's: each plan and each page is an
//! [`Action::Read`](Action::Read) that the driver runs on the core's
//! reader thread ([`super::ReadRequest::run`]) and answers through
//! [`Core::handle_read`], so a cold read (tens of milliseconds when fjall first
//! loads a table) delays that one sync, never the loop and the other sessions
//! on it. A session has at most one sync read in flight, a core at most
//! [`MAX_SYNC_READS_IN_FLIGHT`] (more syncs wait their turn, in order). A plan
//! is one read, whole; a page read covers up to [`SYNC_CHATS_PER_READ`] chats.
//! Every Message of the stream carries the Sync's request id.
//!
//! # The seam with live pushes
//! A message is pushed only after it is committed, so a read that *starts*
//! after a push arrived holds that push's message. A read runs some time after
//! it is asked for and its answer arrives later still, so what a push that
//! arrives while the read is in flight means depends on the answer. Per
//! syncing session and chat:
//! * the read in flight covers the chat (the plan covers every chat): the push
//!   is **held** (at most [`MAX_HELD_PUSHES`] and [`MAX_HELD_BYTES`] per
//!   session, past which the session is sent `Resync`); once the answer is
//!   applied, the held pushes go through the rules below, in arrival order;
//! * the plan is not read yet, or the chat is still planned (not reached, or
//!   between pages) and no read covers it: the push is dropped; the read that
//!   finishes the chat starts later, so it includes it;
//! * the chat is finished (its last page was short, so it held everything
//!   committed when it was read), or was up to date in the plan: a push is
//!   forwarded iff its seq is past the last seq this session was sent, which
//!   then moves on. Pushes of one chat reach a home core in seq order, so past
//!   that point nothing is lost or doubled; the filter entry for the chat is
//!   dropped by the first push it lets through after `SyncDone`.
//!
//! A held push whose message the answer also held is at or below the chat's
//! mark and dropped; one it missed (committed after the read ran) is past the
//! mark and goes out, after the page. So each message reaches a syncing
//! session exactly once, in order per chat. Pushes of finished chats may
//! arrive before `SyncDone`.
//!
//! # Slow consumers
//! When a session's outbound buffer overflows (the driver calls
//! [`Core::handle_outbound_overflow`]), live pushes to it stop and it is sent
//! `Resync`; it stays open and catches up with Sync, paced by its own reading.
//!
//! # History and Ack
//! History pages (newest first, at most [`HISTORY_MAX_MESSAGES`] and about
//! [`HISTORY_MAX_BYTES`] of text) are read off the loop like sync pages, for
//! members only (a non-member gets an empty page); while a session's History
//! read is in flight its later frames wait ([`InputStatus::Paused`](super::InputStatus::Paused),
//! then [`Action::ResumeInput`](Action::ResumeInput)), so a pipeline of
//! Histories holds one page at a time in natterd. `Ack{chat, seq}` from a member stores the
//! device's cursor through the group-commit writer ([`WriteOp::Cursor`]).

use std::collections::{HashMap, HashSet, VecDeque};

use bytes::{Bytes, BytesMut};
use natter_wire::{Body, Cursor, Frame, HistoryPage, SyncDone, fb};

use super::WriteOp;
use super::reads::{ChatPage, PlannedChat, ReadAnswer, ReadRequest, ReadTicket};
use super::{Action, ConnId, Core, State};
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
pub const MESSAGE_OVERHEAD: usize = 160;

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

    /// Each chat of `user`, ascending, with its last seq, the user's read marker and unread
    /// count (what a conversation session gets after Welcome). The default (for the fuzzing
    /// harness's model store, which keeps no read markers) is no chats.
    ///
    /// # Errors
    /// The store failed.
    fn sync_chat_states(&self, user: UserId) -> Result<Vec<natter_wire::ChatState>, ReadError> {
        let _ = user;
        Ok(Vec::new())
    }
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
    /// The chats of `pending`: their live pushes are dropped (or held while read).
    planned: HashSet<ChatId>,
    /// Every chat of the user at the start, with its head then (for SyncDone).
    chats: Vec<(ChatId, u64)>,
    /// A page went out; the next waits for [`Core::handle_drained`].
    awaiting_drain: bool,
    /// The cursors the Sync sent, until its plan is read. While `Some`, every
    /// live push to the session is dropped (the plan read will include it) or,
    /// with the plan read in flight, held.
    unplanned: Option<HashMap<ChatId, u64>>,
    /// In `Core::sync_queue`, waiting for a read slot.
    queued: bool,
    /// The read in flight for this run, if any.
    reading: Option<Reading>,
    /// Live pushes that arrived while `reading` covers their chat, in arrival
    /// order: the answer may or may not hold them (it reads what is committed
    /// when the reader gets to it), so they are replayed through the filter
    /// once the answer is applied. At most [`MAX_HELD_PUSHES`] and
    /// [`MAX_HELD_BYTES`]; past that the session is sent `Resync`.
    held: Vec<(ChatId, u64, Bytes)>,
    held_bytes: usize,
}

/// The read in flight for a sync run.
#[derive(Debug)]
struct Reading {
    ticket: ReadTicket,
    /// The chats it reads (`None`: the plan, which covers every chat).
    chats: Option<HashSet<ChatId>>,
}

impl Reading {
    fn covers(&self, chat: ChatId) -> bool {
        self.chats.as_ref().is_none_or(|c| c.contains(&chat))
    }
}

/// Sync reads (plans and pages) a core has in flight at once, over all its
/// sessions; more syncs wait in `Core::sync_queue`, in order. Each session has
/// at most one read in flight and its next page waits for its outbound to
/// drain, so this bounds the reader's queue, not memory per session.
pub const MAX_SYNC_READS_IN_FLIGHT: usize = 64;

/// Most chats one sync page read covers (the page's message and byte limits
/// usually end it first).
pub const SYNC_CHATS_PER_READ: usize = 64;

/// Most live pushes held for one session while its sync read is in flight.
pub const MAX_HELD_PUSHES: usize = 4096;

/// Most bytes of live pushes held for one session while its sync read is in
/// flight (about one outbound buffer's worth of typical messages).
pub const MAX_HELD_BYTES: usize = 4 * 1024 * 1024;

/// Why the core asked for a read, kept until its answer arrives.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingRead {
    conn: ConnId,
    generation: u32,
    purpose: Purpose,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Sync,
    History {
        request_id: u64,
        chat: ChatId,
    },
    /// The ChatStates a conversation session gets after its Welcome.
    ChatStates,
}

impl Core {
    /// Whether a live push of message `(chat, seq)` may go to `conn` now (see
    /// the module docs). A push the session's in-flight sync read covers is
    /// held (a clone of `frame`) and replayed when the answer arrives; false
    /// is returned for it too.
    pub(super) fn sync_admits(&mut self, conn: ConnId, chat: ChatId, seq: Seq, frame: &Bytes) -> bool {
        let Some(state) = self.syncs.get_mut(&conn) else {
            return true;
        };
        if state.stopped {
            return false;
        }
        let seq = seq.0;
        if let Some(run) = state.run.as_mut() {
            if run.reading.as_ref().is_some_and(|r| r.covers(chat)) {
                if run.held.len() >= MAX_HELD_PUSHES || run.held_bytes + frame.len() > MAX_HELD_BYTES {
                    // The read is slower than the chat: catch up later instead.
                    self.sync_stop(conn);
                    return false;
                }
                run.held_bytes += frame.len();
                run.held.push((chat, seq, frame.clone()));
                return false;
            }
            if run.unplanned.is_some() || run.planned.contains(&chat) {
                return false;
            }
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
    /// A sync waiting for that reads its next page.
    pub fn handle_drained(&mut self, conn: ConnId, _now: std::time::Instant) {
        let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut()) else {
            return;
        };
        if run.awaiting_drain {
            run.awaiting_drain = false;
            self.sync_enqueue(conn);
        }
    }

    /// Queues `conn`'s sync for its next read (once).
    fn sync_enqueue(&mut self, conn: ConnId) {
        if let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut())
            && !run.queued
        {
            run.queued = true;
            self.sync_queue.push_back(conn);
        }
    }

    /// End of a loop turn: queued syncs ask for their next read, while fewer
    /// than [`MAX_SYNC_READS_IN_FLIGHT`] are in flight.
    pub(super) fn sync_run_queue(&mut self) {
        while self.sync_reads_in_flight < MAX_SYNC_READS_IN_FLIGHT {
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
            self.sync_step(conn);
        }
    }

    /// Whether queued syncs can ask for reads next turn.
    pub(super) fn sync_work_left(&self) -> bool {
        !self.sync_queue.is_empty() && self.sync_reads_in_flight < MAX_SYNC_READS_IN_FLIGHT
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
        // Messages already queued behind the frame that overflowed (the rest
        // of a batch of pushes) would go out before the Resync and grow the
        // connection's queue past its bound: they are dropped, so the client
        // holds a gapless prefix and syncs the rest from its cursor.
        self.actions.retain(|action| match action {
            Action::Transmit { conn: to, frame } if *to == conn => !is_message(frame),
            _ => true,
        });
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
        // Planned by a read asked for at the end of the turn; until the plan
        // is applied every live push to the session is dropped or held. A
        // read still in flight for an earlier run is ignored when it answers.
        let state = self.syncs.entry(conn).or_default();
        state.stopped = false;
        state.run = Some(Run {
            request_id,
            pending: VecDeque::new(),
            planned: HashSet::new(),
            chats: Vec::new(),
            awaiting_drain: false,
            unplanned: Some(given),
            queued: false,
            reading: None,
            held: Vec::new(),
            held_bytes: 0,
        });
        self.sync_enqueue(conn);
    }

    /// Asks for `read` on behalf of `conn` (its session as it is now).
    fn ask_read(&mut self, conn: ConnId, purpose: Purpose, request: ReadRequest) -> Option<ReadTicket> {
        let generation = self.sessions.get(conn.0)?.generation;
        self.next_read += 1;
        let ticket = ReadTicket(self.next_read);
        self.reads.insert(
            ticket.0,
            PendingRead {
                conn,
                generation,
                purpose,
            },
        );
        if matches!(purpose, Purpose::Sync) {
            self.sync_reads_in_flight += 1;
        }
        self.actions.push_back(Action::Read {
            ticket,
            conn,
            request,
        });
        Some(ticket)
    }

    /// Asks for the ChatStates of `user` for the conversation session `conn`.
    pub(super) fn ask_chat_states(&mut self, conn: ConnId, user: UserId) {
        self.ask_read(conn, Purpose::ChatStates, ReadRequest::ChatStates { user });
    }

    /// The next read of `conn`'s sync: its plan, else its next page; or
    /// SyncDone when nothing is left.
    fn sync_step(&mut self, conn: ConnId) {
        let Some((user, device)) = self.active(conn) else {
            return;
        };
        let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut()) else {
            return;
        };
        if let Some(given) = &run.unplanned {
            let request = ReadRequest::SyncPlan {
                user,
                device,
                given: given.clone(),
            };
            if let Some(ticket) = self.ask_read(conn, Purpose::Sync, request)
                && let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut())
            {
                run.reading = Some(Reading { ticket, chats: None });
            }
            return;
        }
        if run.pending.is_empty() {
            return self.sync_done(conn);
        }
        let chats: Vec<(ChatId, u64)> = run.pending.iter().take(SYNC_CHATS_PER_READ).copied().collect();
        let covered: HashSet<ChatId> = chats.iter().map(|&(c, _)| c).collect();
        let request = ReadRequest::SyncPages {
            user,
            chats,
            max_msgs: SYNC_PAGE_MESSAGES,
            max_bytes: SYNC_PAGE_BYTES,
        };
        if let Some(ticket) = self.ask_read(conn, Purpose::Sync, request)
            && let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut())
        {
            run.reading = Some(Reading {
                ticket,
                chats: Some(covered),
            });
        }
    }

    /// The driver: the read `ticket` (asked for by an [`Action::Read`](Action::Read))
    /// answered. An answer for a session that has gone, or for a sync that was
    /// replaced or stopped meanwhile, is dropped.
    pub fn handle_read(&mut self, ticket: ReadTicket, answer: ReadAnswer, _now: std::time::Instant) {
        let Some(pending) = self.reads.remove(&ticket.0) else {
            return;
        };
        if matches!(pending.purpose, Purpose::Sync) {
            self.sync_reads_in_flight = self.sync_reads_in_flight.saturating_sub(1);
        }
        let conn = pending.conn;
        let Some(session) = self.sessions.get_mut(conn.0) else {
            return;
        };
        if session.generation != pending.generation {
            return;
        }
        if !matches!(session.state, State::Active { .. }) {
            // Closing (an Error and Close went out): nothing more for it.
            return;
        }
        match (pending.purpose, answer) {
            (Purpose::History { request_id, chat }, ReadAnswer::History(result)) => {
                session.reading = false;
                self.history_answered(conn, request_id, chat, result);
                // Its later frames waited for this answer.
                self.actions.push_back(Action::ResumeInput { conn });
            }
            (Purpose::Sync, answer) => {
                let Some(run) = self.syncs.get_mut(&conn).and_then(|s| s.run.as_mut()) else {
                    return;
                };
                if run.reading.as_ref().map(|r| r.ticket) != Some(ticket) {
                    return;
                }
                run.reading = None;
                let held = std::mem::take(&mut run.held);
                run.held_bytes = 0;
                match answer {
                    ReadAnswer::SyncPlan(result) => self.sync_planned(conn, result),
                    ReadAnswer::SyncPages(result) => self.sync_paged(conn, result),
                    ReadAnswer::History(_) | ReadAnswer::ChatStates(_) => {}
                }
                // What arrived while the read was in flight, through the
                // filter as it stands after the answer: a push the answer
                // held is at or below the chat's mark and dropped, a newer
                // one goes out (in order, after the answer's messages), and
                // one of a chat still to read is dropped for that read.
                for (chat, seq, frame) in held {
                    if self.sync_admits(conn, chat, Seq(seq), &frame) {
                        self.stats.deliveries += 1;
                        self.transmit(conn, frame);
                    }
                }
            }
            (Purpose::ChatStates, ReadAnswer::ChatStates(result)) => self.chat_states_answered(conn, result),
            (Purpose::ChatStates, _) => {}
            // A mismatched answer is a driver bug; the session is not helped
            // by guessing. Its later frames must not wait forever, though.
            (Purpose::History { .. }, _) => {
                session.reading = false;
                self.actions.push_back(Action::ResumeInput { conn });
            }
        }
    }

    /// A read of `conn`'s sync failed: the Sync is answered `unavailable` and
    /// every live push is held back until the client's next Sync, which starts
    /// from its own cursors, so that one is exact (the filters may be
    /// part-way).
    fn sync_failed(&mut self, conn: ConnId, request_id: u64, e: &ReadError) {
        if let Some(state) = self.syncs.get_mut(&conn) {
            state.run = None;
            state.stopped = true;
            state.delivered.clear();
        }
        let message = format!("the store is unavailable: {e}; send Sync again");
        self.reply_error(conn, natter_wire::ErrorCode::Unavailable, &message, request_id);
    }

    /// The sync's plan was read: sets the run up (its first page is the next
    /// step), or answers the Sync with `unavailable`.
    fn sync_planned(&mut self, conn: ConnId, result: Result<Vec<PlannedChat>, ReadError>) {
        let Some(state) = self.syncs.get_mut(&conn) else {
            return;
        };
        let Some(run) = state.run.as_mut() else {
            return;
        };
        let request_id = run.request_id;
        let plan = match result {
            Ok(plan) => plan,
            Err(e) => return self.sync_failed(conn, request_id, &e),
        };
        run.unplanned = None;
        run.chats.reserve(plan.len());
        for PlannedChat { chat, after, head } in plan {
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
        self.sync_enqueue(conn);
    }

    /// A page of the sync was read: writes it, then waits for the session to
    /// drain (or, when nothing went out, asks for the next read at once).
    fn sync_paged(&mut self, conn: ConnId, result: Result<Vec<ChatPage>, ReadError>) {
        let Some(state) = self.syncs.get_mut(&conn) else {
            return;
        };
        let Some(run) = state.run.as_mut() else {
            return;
        };
        let request_id = run.request_id;
        let pages = match result {
            Ok(pages) => pages,
            Err(e) => return self.sync_failed(conn, request_id, &e),
        };
        let mut out = BytesMut::new();
        let mut msgs = 0u64;
        for page in pages {
            let chat = page.chat;
            if run.pending.front().map(|&(c, _)| c) != Some(chat) {
                // Pages come in the order asked, a prefix of `pending`.
                break;
            }
            if !page.member {
                // Removed during the sync: nothing more of this chat.
                run.pending.pop_front();
                run.planned.remove(&chat);
                continue;
            }
            let after = run.pending.front().map_or(0, |&(_, a)| a);
            let last = page.messages.last().map_or(after, |m| m.seq.0);
            msgs += page.messages.len() as u64;
            for m in page.messages {
                // The Sync's request id tells a sync page from a live push (0).
                let frame = self.encoder.message(request_id, &m.into_wire());
                out.extend_from_slice(&frame);
            }
            state.delivered.insert(chat, last);
            if page.complete {
                // Everything committed when it was read: the chat is done.
                run.pending.pop_front();
                run.planned.remove(&chat);
            } else {
                if let Some(front) = run.pending.front_mut() {
                    front.1 = last;
                }
                break;
            }
        }
        self.stats.deliveries += msgs;
        let pending_left = !run.pending.is_empty();
        if out.is_empty() {
            // Nothing went out (the chats read were already complete, or
            // left): no drain will be reported, so go on (or finish) at once.
            return self.sync_enqueue(conn);
        }
        if pending_left {
            run.awaiting_drain = true;
            self.transmit(conn, out.freeze());
        } else {
            self.transmit(conn, out.freeze());
            self.sync_done(conn);
        }
    }

    /// Every chat of `conn`'s sync is streamed: `SyncDone{heads}`.
    fn sync_done(&mut self, conn: ConnId) {
        let Some(state) = self.syncs.get_mut(&conn) else {
            return;
        };
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
        // A conversation session then gets the current receipts of its chats.
        let chats: Vec<ChatId> = run.chats.iter().map(|&(chat, _)| chat).collect();
        self.query_receipts(conn, &chats, self.anchor.0);
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
        let request = ReadRequest::History {
            user,
            chat,
            before,
            limit,
            max_bytes: budget,
        };
        let purpose = Purpose::History { request_id, chat };
        if self.ask_read(conn, purpose, request).is_some()
            && let Some(session) = self.sessions.get_mut(conn.0)
        {
            // Its later frames wait for the answer (one read per session at a
            // time, so pipelined Histories cannot pile pages up).
            session.reading = true;
        }
    }

    /// A History read answered: the page, or `unavailable`.
    fn history_answered(
        &mut self,
        conn: ConnId,
        request_id: u64,
        chat: ChatId,
        result: Result<(Vec<StoredMessage>, bool), ReadError>,
    ) {
        let (messages, has_more) = match result {
            Ok(page) => page,
            Err(e) => {
                let message = format!("the store is unavailable: {e}");
                return self.reply_error(conn, natter_wire::ErrorCode::Unavailable, &message, request_id);
            }
        };
        let page = HistoryPage {
            chat_id: chat.0,
            messages: messages.into_iter().map(StoredMessage::into_wire).collect(),
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
            Ok(true) => {
                self.actions.push_back(Action::Write(WriteOp::Cursor {
                    origin: self.config.core,
                    device,
                    chat,
                    seq: Seq(ack.seq()),
                }));
                // Delivered receipts are the owner core's (the highest Ack of any device).
                let delivered = super::CoreMsg::Delivered {
                    chat,
                    user,
                    seq: Seq(ack.seq()),
                };
                self.route(chat.owner_core(self.config.cores), delivered, now);
            }
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

/// Whether `frame` (one natterd encoded) carries a Message: a live push or a
/// sync page's message. Only read when a connection overflows. The verifier
/// counts vtables once per table that uses them, so the "apparent size" it
/// checks is a little above the frame's length: twice it is ample.
fn is_message(frame: &[u8]) -> bool {
    let limits = natter_wire::Limits::with_max_frame(frame.len().saturating_mul(2).saturating_add(1024));
    natter_wire::view(frame, &limits).is_ok_and(|f| f.body_type() == fb::Body::Message)
}

#[cfg(test)]
mod tests;
