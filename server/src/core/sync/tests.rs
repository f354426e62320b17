//! Tests of sync, history, cursors and slow consumers on the sans-IO core:
//! one core (owner and home of everyone), a real store in a temporary
//! directory, a simulated writer that commits when the test says so, and a
//! simulated driver that reports "drained" when the test says so.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use natter_wire::{Ack, Body, Cursor, Frame, FrameDecoder, Hello, History, Limits, Message, Send, Sync};

use super::super::{Action, AuthResult, ChatSnapshot, ChatStore, ConnId, Core, CoreConfig, PROTOCOL_VERSION};
use super::{
    HISTORY_MAX_MESSAGES, HISTORY_PAGE_OVERHEAD, MAX_SYNC_READS_IN_FLIGHT, MESSAGE_OVERHEAD,
    NEW_DEVICE_BACKLOG, SYNC_PAGE_MESSAGES, SyncStore, max_text_bytes,
};
use crate::core::{MAX_HELD_BYTES, ReadAnswer, ReadError, ReadRequest, ReadTicket};
use crate::ids::{ChatId, ClientMsgId, CoreId, DeviceId, Seq, UserId};
use crate::store::writer::{Completion, WriteOp, apply_for_test};
use crate::store::{Store, StoredMessage};
use natter_wire::{Encoder, ErrorCode, HistoryPage};

struct Sim {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    core: Core,
    now: Instant,
    writes: Vec<WriteOp>,
    /// Frames sent to each connection, split into single frames.
    inbox: HashMap<ConnId, Vec<Frame>>,
    next_rid: u64,
    /// What the core reads through (the store, or a flaky wrapper of it).
    reads: Arc<dyn ChatStore>,
    /// Reads asked for and not answered yet, in order.
    pending_reads: Vec<(ReadTicket, ReadRequest)>,
    /// Leave reads unanswered until [`Sim::answer_reads`] (default: answer
    /// each pump, as a fast reader thread would).
    hold_reads: bool,
}

/// The real store, with sync page reads that fail while `fail_pages` is set.
#[derive(Debug)]
struct Flaky {
    inner: Arc<Store>,
    fail_pages: AtomicBool,
}

impl SyncStore for Flaky {
    fn sync_user_chats(&self, user: UserId) -> Result<Vec<ChatId>, ReadError> {
        self.inner.sync_user_chats(user)
    }
    fn sync_is_member(&self, chat: ChatId, user: UserId) -> Result<bool, ReadError> {
        self.inner.sync_is_member(chat, user)
    }
    fn sync_last_seq(&self, chat: ChatId) -> Result<Seq, ReadError> {
        self.inner.sync_last_seq(chat)
    }
    fn sync_device_cursor(&self, device: DeviceId, chat: ChatId) -> Result<Option<Seq>, ReadError> {
        self.inner.sync_device_cursor(device, chat)
    }
    fn sync_page(
        &self,
        chat: ChatId,
        after: Seq,
        n: usize,
        b: usize,
    ) -> Result<Vec<StoredMessage>, ReadError> {
        if self.fail_pages.load(Ordering::Relaxed) {
            return Err(ReadError::Corrupt {
                what: "injected by the test".into(),
            });
        }
        self.inner.sync_page(chat, after, n, b)
    }
    fn sync_history(
        &self,
        chat: ChatId,
        before: Seq,
        n: usize,
        b: usize,
    ) -> Result<(Vec<StoredMessage>, bool), ReadError> {
        self.inner.sync_history(chat, before, n, b)
    }
}

impl ChatStore for Flaky {
    fn chat_snapshot(&self, chat: ChatId) -> Result<Option<ChatSnapshot>, ReadError> {
        self.inner.chat_snapshot(chat)
    }
    fn dedupe(
        &self,
        chat: ChatId,
        sender: UserId,
        cmid: ClientMsgId,
    ) -> Result<Option<(Seq, u64)>, ReadError> {
        ChatStore::dedupe(&*self.inner, chat, sender, cmid)
    }
    fn are_friends(&self, a: UserId, b: UserId) -> Result<bool, ReadError> {
        ChatStore::are_friends(&*self.inner, a, b)
    }
    fn below_space_reserve(&self) -> bool {
        self.inner.below_space_reserve()
    }
    fn friend_ids(&self, user: UserId) -> Result<Vec<UserId>, ReadError> {
        ChatStore::friend_ids(&*self.inner, user)
    }
    fn member_since(&self, chat: ChatId, user: UserId) -> Result<Option<u64>, ReadError> {
        ChatStore::member_since(&*self.inner, chat, user)
    }
    fn last_seen(&self, user: UserId) -> Result<Option<u64>, ReadError> {
        ChatStore::last_seen(&*self.inner, user)
    }
    fn stored_text(&self, chat: ChatId, seq: Seq) -> Result<Option<String>, ReadError> {
        self.inner.stored_text(chat, seq)
    }

    fn stored_message(&self, chat: ChatId, seq: Seq) -> Result<Option<StoredMessage>, ReadError> {
        self.inner.stored_message(chat, seq)
    }
}

impl Sim {
    fn new() -> Self {
        Self::build(None, Limits::default())
    }

    /// A core reading through `flaky` (which wraps this Sim's store).
    fn flaky() -> (Self, Arc<Flaky>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let flaky = Arc::new(Flaky {
            inner: store,
            fail_pages: AtomicBool::new(false),
        });
        (Self::build(Some((dir, flaky.clone())), Limits::default()), flaky)
    }

    fn build(flaky: Option<(tempfile::TempDir, Arc<Flaky>)>, limits: Limits) -> Self {
        let (dir, store, reads): (_, Arc<Store>, Arc<dyn ChatStore>) = match flaky {
            Some((dir, f)) => (dir, f.inner.clone(), f),
            None => {
                let dir = tempfile::tempdir().unwrap();
                let store = Arc::new(Store::open(dir.path()).unwrap());
                (dir, store.clone(), store)
            }
        };
        let now = Instant::now();
        let config = CoreConfig {
            core: CoreId(0),
            cores: 1,
            heartbeat_timeout: Duration::from_secs(30),
            presence_grace: Duration::from_secs(1),
            limits,
            max_connections: 256,
            send_rate: 1_000_000,
            max_sessions_per_user: crate::core::DEFAULT_MAX_SESSIONS_PER_USER,
            edit_window: crate::core::DEFAULT_EDIT_WINDOW,
            delete_window: crate::core::DEFAULT_DELETE_WINDOW,
        };
        let core = Core::new(config, reads.clone(), now, 1_700_000_000_000);
        Self {
            reads,
            pending_reads: Vec::new(),
            hold_reads: false,
            _dir: dir,
            store,
            core,
            now,
            writes: Vec::new(),
            inbox: HashMap::new(),
            next_rid: 100,
        }
    }

    fn user(&self, name: &str) -> UserId {
        self.store.create_user(name, "$argon2id$not-used-here").unwrap()
    }

    /// Carries out the core's actions: writes are collected, frames split
    /// into the inboxes, reads answered (unless held) until none is left.
    fn pump(&mut self) {
        loop {
            self.pump_once();
            if self.hold_reads || self.pending_reads.is_empty() {
                return;
            }
            self.answer_reads();
        }
    }

    /// Answers the reads asked for so far, in order, each read from the store
    /// as it is now (then carries out what the answers caused, once).
    fn answer_reads(&mut self) {
        let answers = self.run_reads();
        self.deliver(answers);
    }

    /// Runs the reads asked for so far against the store as it is now, and
    /// keeps the answers from the core (a reader thread whose answers are on
    /// their way).
    fn run_reads(&mut self) -> Vec<(ReadTicket, ReadAnswer)> {
        std::mem::take(&mut self.pending_reads)
            .into_iter()
            .map(|(ticket, request)| (ticket, request.run(&*self.reads)))
            .collect()
    }

    /// Hands answers to the core, then carries out what they caused (once).
    fn deliver(&mut self, answers: Vec<(ReadTicket, ReadAnswer)>) {
        for (ticket, answer) in answers {
            self.core.handle_read(ticket, answer, self.now);
        }
        self.pump_once();
    }

    fn pump_once(&mut self) {
        self.core.handle_end_of_turn();
        let decoder = FrameDecoder::new(Limits::default());
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Write(op) => self.writes.push(op),
                Action::Read { ticket, request, .. } => self.pending_reads.push((ticket, request)),
                // Its input waits in no buffer here: `input` hands whole frames.
                Action::ResumeInput { .. } => {}
                // The driver would close the socket after what is queued.
                Action::Close { .. } => {}
                Action::Transmit { conn, frame } => {
                    let mut buf = BytesMut::from(&frame[..]);
                    while let Some(one) = decoder.split(&mut buf).unwrap() {
                        let f = Frame::decode(&one, &Limits::default()).unwrap();
                        if !matches!(f.body, Body::Presence(_)) {
                            self.inbox.entry(conn).or_default().push(f);
                        }
                    }
                    assert!(buf.is_empty(), "a transmit that is not whole frames");
                }
                Action::ToCore { .. } => panic!("one core has no one to talk to"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    fn connect(&mut self, user: UserId, device: u64) -> ConnId {
        self.connect_with(user, device, false)
    }

    fn connect_with(&mut self, user: UserId, device: u64, sync_first: bool) -> ConnId {
        let conn = self.core.handle_accept(self.now).unwrap();
        let hello = Frame::new(
            1,
            Body::Hello(Hello {
                token: "t".into(),
                device: "d".into(),
                protocol_version: PROTOCOL_VERSION,
                sync_first,
                conversation: false,
            }),
        );
        self.input(conn, &hello);
        assert!(matches!(
            self.core.poll_action(),
            Some(Action::Authenticate { .. })
        ));
        self.core
            .handle_auth(conn, AuthResult::Valid(user, DeviceId(device)), self.now);
        self.pump();
        let welcome = self.take(conn);
        assert!(matches!(welcome[0].body, Body::Welcome(_)), "{welcome:?}");
        conn
    }

    fn input(&mut self, conn: ConnId, frame: &Frame) {
        let mut buf = BytesMut::from(&frame.encode()[..]);
        self.core.handle_input(conn, &mut buf, self.now);
        assert!(buf.is_empty());
    }

    fn request(&mut self, conn: ConnId, body: Body) -> u64 {
        self.next_rid += 1;
        let rid = self.next_rid;
        self.input(conn, &Frame::new(rid, body));
        self.pump();
        rid
    }

    /// A send through the core; stays in flight until [`Sim::commit`].
    fn send(&mut self, conn: ConnId, chat: ChatId, cmid: u64, text: &str) {
        let body = Body::Send(Send {
            chat_id: chat.0,
            client_msg_id: cmid,
            text: text.into(),
        });
        self.request(conn, body);
    }

    /// Makes the collected writes durable, without telling the core yet.
    fn write_to_disk(&mut self) -> Vec<Completion> {
        let writes = std::mem::take(&mut self.writes);
        writes
            .into_iter()
            .filter_map(|op| apply_for_test(&self.store, op).1)
            .collect()
    }

    /// Reports completions to the core (pushes go out now).
    fn complete(&mut self, completions: Vec<Completion>) {
        self.core.handle_committed(completions, self.now);
        self.pump();
    }

    fn commit(&mut self) {
        let c = self.write_to_disk();
        self.complete(c);
    }

    fn drained(&mut self, conn: ConnId) {
        self.core.handle_drained(conn, self.now);
        self.pump();
    }

    fn take(&mut self, conn: ConnId) -> Vec<Frame> {
        self.inbox.remove(&conn).unwrap_or_default()
    }

    fn sync(&mut self, conn: ConnId, cursors: &[(ChatId, u64)]) -> u64 {
        let cursors = cursors
            .iter()
            .map(|&(c, s)| Cursor { chat_id: c.0, seq: s })
            .collect();
        self.request(conn, Body::Sync(Sync { cursors }))
    }

    /// Drains `conn`'s sync to its end; returns what it received and the SyncDone heads.
    fn finish_sync(&mut self, conn: ConnId) -> (Vec<Message>, Vec<(u64, u64)>) {
        let mut msgs = Vec::new();
        for _ in 0..100_000 {
            for f in self.take(conn) {
                match f.body {
                    Body::Message(m) => msgs.push(m),
                    Body::SyncDone(d) => {
                        return (msgs, d.heads.iter().map(|c| (c.chat_id, c.seq)).collect());
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            self.drained(conn);
        }
        panic!("the sync never finished")
    }

    /// Stores `n` messages of `chat` directly (as if sent long ago).
    fn backlog(&self, chat: ChatId, sender: UserId, from: u64, n: u64) {
        let ops: Vec<WriteOp> = (from..from + n)
            .map(|seq| WriteOp::Message {
                origin: CoreId(0),
                msg: StoredMessage {
                    chat,
                    seq: Seq(seq),
                    sender,
                    server_ts_ms: seq,
                    client_msg_id: ClientMsgId(1_000_000 + seq),
                    text: format!("m{seq}"),
                    meta: Default::default(),
                },
            })
            .collect();
        self.store.commit_writes(&ops);
    }

    /// Stores messages with these texts as seqs `from..` of `chat`.
    fn backlog_texts(&self, chat: ChatId, sender: UserId, from: u64, texts: &[String]) {
        let ops: Vec<WriteOp> = texts
            .iter()
            .zip(from..)
            .map(|(text, seq)| WriteOp::Message {
                origin: CoreId(0),
                msg: StoredMessage {
                    chat,
                    seq: Seq(seq),
                    sender,
                    server_ts_ms: seq,
                    client_msg_id: ClientMsgId(1_000_000 + seq),
                    text: text.clone(),
                    meta: Default::default(),
                },
            })
            .collect();
        self.store.commit_writes(&ops);
    }
}

fn seqs(msgs: &[Message], chat: ChatId) -> Vec<u64> {
    msgs.iter()
        .filter(|m| m.chat_id == chat.0)
        .map(|m| m.seq)
        .collect()
}

fn messages(frames: &[Frame]) -> Vec<Message> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Message(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_backlog_is_synced_in_bounded_pages_only_as_the_session_drains_then_sync_done() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    let g = s.store.create_group(alice, "g", &[bob]).unwrap();
    s.backlog(a, alice, 1, 3000);
    s.backlog(g, bob, 1, 10);
    let phone = s.connect(bob, 1);
    let rid = s.sync(phone, &[(a, 0), (g, 4)]);
    // One page now, nothing more until the driver reports a drain.
    let first = messages(&s.take(phone));
    assert_eq!(first.len(), SYNC_PAGE_MESSAGES);
    s.pump();
    assert!(s.take(phone).is_empty());
    assert!(s.core.is_syncing(phone));
    let mut all = first;
    let (rest, heads) = s.finish_sync(phone);
    all.extend(rest);
    assert_eq!(seqs(&all, a), (1..=3000).collect::<Vec<_>>());
    assert_eq!(seqs(&all, g), (5..=10).collect::<Vec<_>>());
    // Chat by chat, ascending chat id.
    let last_a = all.iter().rposition(|m| m.chat_id == a.0).unwrap();
    let first_g = all.iter().position(|m| m.chat_id == g.0).unwrap();
    assert!(last_a < first_g);
    assert_eq!(heads, vec![(a.0, 3000), (g.0, 10)]);
    assert!(!s.core.is_syncing(phone));
    let _ = rid;
}

#[test]
fn messages_committed_during_the_sync_arrive_exactly_once_and_in_order() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    let g = s.store.create_group(alice, "g", &[bob]).unwrap();
    let sender = s.connect(alice, 9);
    // Chat a has a backlog; chat g gets traffic only during the sync.
    for i in 1..=2500 {
        s.send(sender, a, i, "backlog");
    }
    s.commit();
    let phone = s.connect(bob, 1);
    s.sync(phone, &[(a, 0), (g, 0)]);
    let mut got = messages(&s.take(phone));
    let mut cmid = 10_000;
    let mut late = Vec::new();
    for round in 0..20 {
        // Sends into both chats: some committed and reported at once, some
        // committed now and reported (pushed) only after the next page was read.
        for chat in [a, g] {
            cmid += 1;
            s.send(sender, chat, cmid, "during");
        }
        let completions = s.write_to_disk();
        if round % 2 == 0 {
            s.complete(completions);
        } else {
            late = completions;
        }
        s.drained(phone);
        if !late.is_empty() {
            s.complete(std::mem::take(&mut late));
        }
        for f in s.take(phone) {
            match f.body {
                Body::Message(m) => got.push(m),
                Body::SyncDone(_) => got.push(Message::default()),
                other => panic!("{other:?}"),
            }
        }
    }
    // Past the sync: live pushes only, still exactly once.
    for chat in [a, g] {
        cmid += 1;
        s.send(sender, chat, cmid, "after");
    }
    s.commit();
    got.extend(messages(&s.take(phone)));
    let done = got.iter().filter(|m| m.chat_id == 0).count();
    assert_eq!(done, 1, "exactly one SyncDone");
    let head_a = s.store.last_seq(a).unwrap().0;
    let head_g = s.store.last_seq(g).unwrap().0;
    assert_eq!(seqs(&got, a), (1..=head_a).collect::<Vec<_>>());
    assert_eq!(seqs(&got, g), (1..=head_g).collect::<Vec<_>>());
    assert_eq!(head_g, 21);
}

#[test]
fn empty_cursors_use_the_stored_ones_and_a_new_device_gets_the_last_fifty() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    s.backlog(a, alice, 1, 120);
    let laptop = s.connect(bob, 2);
    s.sync(laptop, &[]);
    let (msgs, heads) = s.finish_sync(laptop);
    assert_eq!(
        seqs(&msgs, a),
        ((120 - NEW_DEVICE_BACKLOG + 1)..=120).collect::<Vec<_>>()
    );
    assert_eq!(heads, vec![(a.0, 120)]);
    // The laptop acknowledges up to 100; the phone (another device) up to 7.
    s.request(
        laptop,
        Body::Ack(Ack {
            chat_id: a.0,
            seq: 100,
        }),
    );
    let phone = s.connect(bob, 1);
    s.request(phone, Body::Ack(Ack { chat_id: a.0, seq: 7 }));
    // Two cursors (and the chat's owner, the same core here, records bob's delivered seq).
    let cursors = s
        .writes
        .iter()
        .filter(|w| matches!(w, WriteOp::Cursor { .. }))
        .count();
    assert_eq!(cursors, 2, "{:?}", s.writes);
    s.commit();
    let laptop2 = s.connect(bob, 2);
    s.sync(laptop2, &[]);
    assert_eq!(
        seqs(&s.finish_sync(laptop2).0, a),
        (101..=120).collect::<Vec<_>>()
    );
    s.sync(phone, &[]);
    assert_eq!(seqs(&s.finish_sync(phone).0, a), (8..=120).collect::<Vec<_>>());
    // An explicit cursor wins over the stored one.
    s.sync(phone, &[(a, 118)]);
    assert_eq!(seqs(&s.finish_sync(phone).0, a), vec![119, 120]);
}

#[test]
fn a_non_member_gets_nothing_of_a_chat_from_sync_history_or_ack() {
    let mut s = Sim::new();
    let (alice, bob, eve) = (s.user("alice"), s.user("bob"), s.user("eve"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    s.backlog(a, alice, 1, 30);
    let spy = s.connect(eve, 5);
    s.sync(spy, &[(a, 0)]);
    let (msgs, heads) = s.finish_sync(spy);
    assert!(msgs.is_empty() && heads.is_empty(), "{msgs:?} {heads:?}");
    let rid = s.request(
        spy,
        Body::History(History {
            chat_id: a.0,
            before_seq: 0,
            limit: 50,
        }),
    );
    let frames = s.take(spy);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].request_id, rid);
    let Body::HistoryPage(page) = &frames[0].body else {
        panic!("{frames:?}")
    };
    assert!(page.messages.is_empty() && !page.has_more);
    s.request(spy, Body::Ack(Ack { chat_id: a.0, seq: 3 }));
    assert!(s.writes.is_empty());
}

#[test]
fn history_pages_back_newest_first_capped_at_two_hundred() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    s.backlog(a, alice, 1, 450);
    let phone = s.connect(bob, 1);
    let mut before = 0;
    let mut all = Vec::new();
    loop {
        s.request(
            phone,
            Body::History(History {
                chat_id: a.0,
                before_seq: before,
                limit: 1000,
            }),
        );
        let frames = s.take(phone);
        let Body::HistoryPage(page) = &frames[0].body else {
            panic!("{frames:?}")
        };
        assert!(page.messages.len() <= HISTORY_MAX_MESSAGES);
        all.extend(page.messages.iter().map(|m| m.seq));
        before = page.messages.last().map_or(0, |m| m.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(all, (1..=450).rev().collect::<Vec<_>>());
}

#[test]
fn a_slow_consumer_is_told_to_resync_gets_no_pushes_and_then_catches_up() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    let sender = s.connect(alice, 9);
    let phone = s.connect(bob, 1);
    s.send(sender, a, 1, "one");
    s.commit();
    assert_eq!(seqs(&messages(&s.take(phone)), a), vec![1]);
    s.core.handle_outbound_overflow(phone);
    s.pump();
    let frames = s.take(phone);
    assert!(
        matches!(
            frames.as_slice(),
            [Frame {
                body: Body::Resync,
                ..
            }]
        ),
        "{frames:?}"
    );
    // Still open; a second overflow does not repeat the Resync.
    s.core.handle_outbound_overflow(phone);
    s.pump();
    assert!(s.take(phone).is_empty());
    for i in 2..=40 {
        s.send(sender, a, i, "while stopped");
    }
    s.commit();
    assert!(s.take(phone).is_empty(), "pushes to a stopped session");
    s.sync(phone, &[(a, 1)]);
    let (msgs, heads) = s.finish_sync(phone);
    assert_eq!(seqs(&msgs, a), (2..=40).collect::<Vec<_>>());
    assert_eq!(heads, vec![(a.0, 40)]);
    s.send(sender, a, 41, "live again");
    s.commit();
    assert_eq!(seqs(&messages(&s.take(phone)), a), vec![41]);
    assert_eq!(s.core.stats().slow_consumers, 1);
}

#[test]
fn pushes_queued_behind_the_frame_that_overflowed_are_dropped_before_the_resync() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    let sender = s.connect(alice, 9);
    let phone = s.connect(bob, 1);
    for i in 1..=40 {
        s.send(sender, a, i, "a batch");
    }
    // One commit of 40: the core queues 40 pushes for the phone at once. The
    // driver writes 5, the 5th overflows the connection's queue.
    let completions = s.write_to_disk();
    s.core.handle_committed(completions, s.now);
    let mut written = Vec::new();
    while written.len() < 5 {
        match s.core.poll_action().expect("the batch's pushes") {
            Action::Transmit { conn, frame } if conn == phone => {
                written.push(Frame::decode(&frame, &Limits::default()).unwrap());
            }
            _ => {}
        }
    }
    s.core.handle_outbound_overflow(phone);
    s.pump();
    let rest = s.take(phone);
    assert!(
        matches!(
            rest.as_slice(),
            [Frame {
                body: Body::Resync,
                ..
            }]
        ),
        "after the overflow only the Resync, not the rest of the batch: {rest:?}"
    );
    assert_eq!(seqs(&messages(&written), a), (1..=5).collect::<Vec<_>>());
    s.sync(phone, &[(a, 5)]);
    let (msgs, _) = s.finish_sync(phone);
    assert_eq!(seqs(&msgs, a), (6..=40).collect::<Vec<_>>());
}

#[test]
fn other_sessions_are_served_between_pages_and_a_closed_session_leaves_no_sync_state() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    s.backlog(a, alice, 1, 5000);
    let sender = s.connect(alice, 9);
    let phone = s.connect(bob, 1);
    let laptop = s.connect(bob, 2);
    s.sync(phone, &[(a, 0)]);
    assert_eq!(messages(&s.take(phone)).len(), SYNC_PAGE_MESSAGES);
    // The phone's sync waits for its drain; meanwhile a Ping and a send are served,
    // and the laptop (not syncing) gets the push at once.
    let rid = s.request(sender, Body::Ping(natter_wire::Ping { nonce: 5 }));
    let pong = s.take(sender);
    assert!(matches!(pong.as_slice(), [Frame { request_id, body: Body::Pong(_) }] if *request_id == rid));
    s.send(sender, a, 1, "live");
    s.commit();
    assert_eq!(seqs(&messages(&s.take(laptop)), a), vec![5001]);
    assert!(
        s.take(phone).is_empty(),
        "the phone's copy comes through its sync"
    );
    // A second Sync replaces the first.
    s.sync(phone, &[(a, 4990)]);
    let (msgs, heads) = s.finish_sync(phone);
    assert_eq!(seqs(&msgs, a), (4991..=5001).collect::<Vec<_>>());
    assert_eq!(heads, vec![(a.0, 5001)]);
    // A session that leaves mid-sync leaves nothing behind.
    s.sync(laptop, &[(a, 0)]);
    assert!(s.core.is_syncing(laptop));
    s.core.handle_closed(laptop);
    assert!(!s.core.is_syncing(laptop));
    s.core.handle_closed(phone);
    assert!(s.core.syncs.is_empty(), "{:?}", s.core.syncs);
}

#[test]
fn sync_first_holds_pushes_until_the_sync_which_hands_over_exactly_once_in_order() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    let g = s.store.create_group(alice, "g", &[bob]).unwrap();
    let sender = s.connect(alice, 9);
    for i in 1..=5 {
        s.send(sender, a, i, "before");
    }
    s.commit();
    // The phone held up to seq 3 of `a` before it reconnected.
    let phone = s.connect_with(bob, 1, true);
    // Messages committed between the Welcome and the Sync are not pushed...
    for i in 6..=8 {
        s.send(sender, a, i, "between");
        s.send(sender, g, 100 + i, "between");
    }
    s.commit();
    assert!(messages(&s.take(phone)).is_empty(), "pushed before the Sync");
    // ... they come through the sync, after the older ones, exactly once.
    let rid = s.sync(phone, &[(a, 3), (g, 0)]);
    let first = s.take(phone);
    assert!(
        first
            .iter()
            .all(|f| !matches!(f.body, Body::Message(_)) || f.request_id == rid),
        "sync pages carry the Sync's request id"
    );
    s.inbox.insert(phone, first);
    let (msgs, heads) = s.finish_sync(phone);
    assert_eq!(seqs(&msgs, a), (4..=8).collect::<Vec<_>>());
    assert_eq!(seqs(&msgs, g), (1..=3).collect::<Vec<_>>());
    assert_eq!(heads, vec![(a.0, 8), (g.0, 3)]);
    // Then live pushes, with request id 0.
    s.send(sender, a, 50, "live");
    s.commit();
    let live = s.take(phone);
    assert_eq!(seqs(&messages(&live), a), vec![9]);
    assert!(live.iter().all(|f| f.request_id == 0));
}

/// The race a CI run found: the fan-out of a batch committed before a device connected is still on
/// its way (to the device's home core, here: the completion not yet reported) when the device
/// connects and syncs. With `sync_first` the sync streams those messages and their late pushes are
/// dropped at the seam; without it they are pushed at once, before the Sync's older ones, which is
/// why PROTOCOL.md's reconnect recipe sets `sync_first`.
#[test]
fn late_pushes_of_messages_committed_before_the_hello_never_reach_a_sync_first_device_twice() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    let sender = s.connect(alice, 9);
    for i in 1..=5 {
        s.send(sender, a, i, "before");
    }
    s.commit();
    for i in 6..=9 {
        s.send(sender, a, i, "in flight");
    }
    // 6..=9 are durable; their fan-out has not reached the core yet.
    let late = s.write_to_disk();
    let phone = s.connect_with(bob, 1, true);
    s.sync(phone, &[(a, 0)]);
    let (msgs, heads) = s.finish_sync(phone);
    assert_eq!(seqs(&msgs, a), (1..=9).collect::<Vec<_>>());
    assert_eq!(heads, vec![(a.0, 9)]);
    // The late fan-out arrives after the sync finished the chat: all of it is already held.
    s.complete(late);
    assert!(messages(&s.take(phone)).is_empty(), "a late push went out twice");
    s.send(sender, a, 10, "live");
    s.commit();
    assert_eq!(seqs(&messages(&s.take(phone)), a), vec![10]);

    // The same late fan-out arriving while the sync still streams the chat.
    let laptop = s.connect_with(bob, 2, true);
    for i in 11..=12 {
        s.send(sender, a, i, "in flight");
    }
    let late = s.write_to_disk();
    s.sync(laptop, &[(a, 0)]);
    s.complete(late);
    let (msgs, heads) = s.finish_sync(laptop);
    let mut all = seqs(&msgs, a);
    all.extend(seqs(&messages(&s.take(laptop)), a));
    assert_eq!(all, (1..=12).collect::<Vec<_>>());
    assert_eq!(heads.first().map(|h| h.0), Some(a.0));

    // Without sync_first the device asked for pushes from its Welcome: the late fan-out is pushed
    // before the Sync it sends next (documented; the recipe avoids it).
    s.send(sender, a, 13, "in flight");
    let late = s.write_to_disk();
    let tablet = s.connect_with(bob, 3, false);
    s.complete(late);
    assert_eq!(seqs(&messages(&s.take(tablet)), a), vec![13]);
}

#[test]
fn a_store_error_mid_sync_answers_that_sync_and_the_next_sync_is_exact() {
    let (mut s, flaky) = Sim::flaky();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    s.backlog(a, alice, 1, 3000);
    let sender = s.connect(alice, 9);
    let phone = s.connect(bob, 1);
    let rid = s.sync(phone, &[(a, 0)]);
    let got = messages(&s.take(phone));
    assert_eq!(got.len(), SYNC_PAGE_MESSAGES);
    flaky.fail_pages.store(true, Ordering::Relaxed);
    s.drained(phone);
    let frames = s.take(phone);
    assert!(
        matches!(frames.as_slice(), [Frame { request_id, body: Body::Error(e) }]
            if *request_id == rid && e.request_id == rid && e.code == ErrorCode::Unavailable.as_u16()),
        "{frames:?}"
    );
    assert!(!s.core.is_syncing(phone));
    flaky.fail_pages.store(false, Ordering::Relaxed);
    // While the client has not synced again, nothing is pushed (it would leave a gap).
    s.send(sender, a, 1, "during the outage");
    s.commit();
    assert!(s.take(phone).is_empty());
    // The next Sync, from what the client holds, is exact.
    let held = got.last().unwrap().seq;
    s.sync(phone, &[(a, held)]);
    let (msgs, heads) = s.finish_sync(phone);
    assert_eq!(seqs(&msgs, a), (held + 1..=3001).collect::<Vec<_>>());
    assert_eq!(heads, vec![(a.0, 3001)]);
    s.send(sender, a, 2, "live");
    s.commit();
    assert_eq!(seqs(&messages(&s.take(phone)), a), vec![3002]);
}

#[test]
fn frame_overheads_are_what_the_page_budget_assumes() {
    let mut enc = Encoder::new();
    for text in ["x".to_owned(), "😀".repeat(100_000), "é".repeat(77)] {
        let m = Message {
            chat_id: u64::MAX,
            seq: u64::MAX,
            sender: u64::MAX,
            server_ts_ms: u64::MAX,
            client_msg_id: u64::MAX,
            text: text.clone(),
            // The largest a Message gets: every conversation field set.
            kind: natter_wire::fb::MessageKind::Delete,
            target_seq: u64::MAX,
            edited_seq: u64::MAX,
            deleted_seq: u64::MAX,
        };
        let one = enc.message(u64::MAX, &m);
        assert!(
            one.len() <= text.len() + MESSAGE_OVERHEAD,
            "{}",
            one.len() - text.len()
        );
        let n = 3;
        let page = Frame::new(
            u64::MAX,
            Body::HistoryPage(HistoryPage {
                chat_id: u64::MAX,
                messages: vec![m; n],
                has_more: true,
            }),
        )
        .encode();
        assert!(
            page.len() <= HISTORY_PAGE_OVERHEAD + n * (text.len() + MESSAGE_OVERHEAD),
            "{}",
            page.len() - n * text.len()
        );
    }
    assert!(max_text_bytes(natter_wire::DEFAULT_MAX_FRAME) >= 4 * natter_wire::MAX_TEXT_CHARS);
}

#[test]
fn history_pages_never_exceed_the_frame_limit_and_a_huge_message_gets_its_own_page() {
    for max_frame in [natter_wire::DEFAULT_MAX_FRAME, 64 * 1024] {
        let mut s = Sim::build(None, Limits::with_max_frame(max_frame));
        let (alice, bob) = (s.user("alice"), s.user("bob"));
        let (a, _) = s.store.create_dm(alice, bob).unwrap();
        // The largest texts this server accepts, 4-byte characters, mixed with small ones.
        let big_chars = (max_text_bytes(max_frame) / 4).min(natter_wire::MAX_TEXT_CHARS);
        let texts: Vec<String> = (0..12)
            .map(|i| {
                if i % 3 == 2 {
                    "s".repeat(10)
                } else {
                    "😀".repeat(big_chars - i)
                }
            })
            .collect();
        s.backlog_texts(a, alice, 1, &texts);
        let phone = s.connect(bob, 1);
        let mut before = 0;
        let mut seen = Vec::new();
        loop {
            s.now += Duration::from_secs(1);
            let rid = s.request(
                phone,
                Body::History(History {
                    chat_id: a.0,
                    before_seq: before,
                    limit: 200,
                }),
            );
            // The core hands over encoded frames: check their size before decoding.
            let frames = s.take(phone);
            let [
                Frame {
                    request_id,
                    body: Body::HistoryPage(page),
                },
            ] = frames.as_slice()
            else {
                panic!("{frames:?}")
            };
            assert_eq!(*request_id, rid);
            let encoded = Frame::new(rid, Body::HistoryPage(page.clone())).encode();
            assert!(
                encoded.len() <= max_frame,
                "a page of {} bytes > {max_frame}",
                encoded.len()
            );
            assert!(!page.messages.is_empty());
            seen.extend(page.messages.iter().map(|m| m.seq));
            before = page.messages.last().unwrap().seq;
            if !page.has_more {
                break;
            }
        }
        assert_eq!(seen, (1..=12).rev().collect::<Vec<_>>());
        // A send over what fits in a frame is refused with a clear code.
        let sender = s.connect(alice, 9);
        s.send(sender, a, 1, &"y".repeat(max_text_bytes(max_frame) + 1));
        let answer = s.take(sender);
        assert!(
            matches!(answer.as_slice(), [Frame { body: Body::Error(e), .. }] if e.code == ErrorCode::TextTooLong.as_u16()),
            "{answer:?}"
        );
    }
}

#[test]
fn sync_and_history_are_rate_limited_per_connection() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (a, _) = s.store.create_dm(alice, bob).unwrap();
    let phone = s.connect(bob, 1);
    let mut limited = 0;
    for _ in 0..100 {
        let body = Body::History(History {
            chat_id: a.0,
            before_seq: 0,
            limit: 1,
        });
        s.request(phone, body);
        limited += s
            .take(phone)
            .iter()
            .filter(|f| matches!(&f.body, Body::Error(e) if e.code == ErrorCode::RateLimited.as_u16()))
            .count();
    }
    assert_eq!(limited, 100 - super::super::HISTORY_PER_SECOND as usize);
    let mut limited = 0;
    for _ in 0..100 {
        s.sync(phone, &[]);
        limited += s
            .take(phone)
            .iter()
            .filter(|f| matches!(&f.body, Body::Error(e) if e.code == ErrorCode::RateLimited.as_u16()))
            .count();
    }
    assert_eq!(limited, 100 - super::super::SYNCS_PER_SECOND as usize);
    // A second later the buckets have refilled.
    s.now += Duration::from_secs(1);
    s.sync(phone, &[]);
    assert!(matches!(
        s.take(phone).as_slice(),
        [Frame {
            body: Body::SyncDone(_),
            ..
        }]
    ));
}

#[test]
fn a_storm_of_syncs_keeps_a_bounded_number_of_reads_in_flight_and_everyone_finishes() {
    let mut s = Sim::new();
    s.hold_reads = true;
    let alice = s.user("alice");
    let mut phones = Vec::new();
    let mut chats = Vec::new();
    let n = MAX_SYNC_READS_IN_FLIGHT + 6;
    for i in 0..n {
        let bob = s.user(&format!("bob{i}"));
        let (chat, _) = s.store.create_dm(alice, bob).unwrap();
        s.backlog(chat, alice, 1, 30);
        chats.push(chat);
        phones.push(s.connect(bob, 1));
    }
    for (&phone, &chat) in phones.iter().zip(&chats) {
        let sync = Frame::new(
            7,
            Body::Sync(Sync {
                cursors: vec![Cursor {
                    chat_id: chat.0,
                    seq: 0,
                }],
            }),
        );
        s.input(phone, &sync);
    }
    // One turn: a plan read for as many syncs as may be in flight; the rest
    // wait for a slot, and waiting for answers asks for no busy turn.
    s.pump();
    assert_eq!(s.pending_reads.len(), MAX_SYNC_READS_IN_FLIGHT);
    assert!(
        s.core.poll_timeout().is_none_or(|at| at > s.now),
        "a full read pipeline does not spin the loop"
    );
    // Answer after answer, every sync completes, exactly, never with more
    // reads in flight than the bound.
    let mut got: HashMap<ConnId, Vec<u64>> = HashMap::new();
    let mut done = 0;
    for _ in 0..1_000 {
        s.answer_reads();
        assert!(s.pending_reads.len() <= MAX_SYNC_READS_IN_FLIGHT);
        for &p in &phones {
            for f in s.take(p) {
                match f.body {
                    Body::Message(m) => got.entry(p).or_default().push(m.seq),
                    Body::SyncDone(_) => done += 1,
                    other => panic!("{other:?}"),
                }
            }
            s.core.handle_drained(p, s.now);
        }
        s.pump();
        if done == phones.len() {
            break;
        }
    }
    assert_eq!(done, phones.len());
    for p in &phones {
        assert_eq!(got[p], (1..=30).collect::<Vec<_>>());
    }
}

#[test]
fn a_member_removed_during_its_sync_gets_nothing_more_of_that_chat() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let g = s.store.create_group(alice, "g", &[bob]).unwrap();
    s.backlog(g, alice, 1, 3000);
    let phone = s.connect(bob, 1);
    s.sync(phone, &[(g, 0)]);
    // Turns until the first page is out.
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(messages(&s.take(phone)));
        if !got.is_empty() {
            break;
        }
        s.pump();
    }
    assert_eq!(got.len(), SYNC_PAGE_MESSAGES);
    // bob is removed (committed), then more is sent to the group.
    let removal = WriteOp::Membership {
        origin: CoreId(0),
        chat: g,
        user: bob,
        add: false,
        new_owner: None,
        ticket: 1,
    };
    apply_for_test(&s.store, removal);
    s.backlog(g, alice, 3001, 5);
    let (rest, _) = s.finish_sync(phone);
    assert!(rest.is_empty(), "{} messages after the removal", rest.len());
}

#[test]
fn a_plan_is_read_whole_so_no_push_falls_between_its_parts() {
    // Were the plan split over several reads, a push of a chat planned as up
    // to date by the first would be dropped (pushes wait for the plan) and
    // read by nothing.
    let mut s = Sim::new();
    let bob = s.user("bob");
    let mut chats = Vec::new();
    for i in 0..10 {
        let a = s.user(&format!("a{i}"));
        let (chat, _) = s.store.create_dm(a, bob).unwrap();
        s.backlog(chat, a, 1, 3);
        chats.push((chat, a));
    }
    let sender = s.connect(chats[0].1, 9);
    let phone = s.connect_with(bob, 1, true);
    let cursors: Vec<(ChatId, u64)> = chats.iter().map(|&(c, _)| (c, 3)).collect();
    s.sync(phone, &cursors); // planned in this turn, whole
    s.send(sender, chats[0].0, 77, "right after the plan");
    s.commit();
    // Everything the phone gets until SyncDone and a turn after it.
    let mut frames = Vec::new();
    for _ in 0..100 {
        frames.extend(s.take(phone));
        s.drained(phone);
    }
    assert!(frames.iter().any(|f| matches!(f.body, Body::SyncDone(_))));
    let got = seqs(&messages(&frames), chats[0].0);
    assert_eq!(got, vec![4], "the message after the plan arrives once");
}

/// Everything `conn` has been sent until its SyncDone (answering reads and
/// reporting drains as it goes).
fn until_sync_done(s: &mut Sim, conn: ConnId) -> Vec<Frame> {
    let mut frames = Vec::new();
    for _ in 0..100 {
        s.answer_reads();
        let got = s.take(conn);
        let done = got.iter().any(|f| matches!(f.body, Body::SyncDone(_)));
        frames.extend(got);
        if done {
            return frames;
        }
        s.drained(conn);
    }
    panic!("no SyncDone: {frames:?}")
}

#[test]
fn a_push_committed_after_the_plan_was_read_but_before_its_answer_arrives_once() {
    // The plan reads the chat's head as 3 (the device has 3: up to date);
    // message 4 is committed and pushed while that answer is on its way. The
    // push cannot be dropped for the plan (which does not hold it): it is held
    // and goes out once the plan says the chat is up to date at 3.
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (chat, _) = s.store.create_dm(alice, bob).unwrap();
    s.backlog(chat, alice, 1, 3);
    let sender = s.connect(alice, 9);
    let phone = s.connect_with(bob, 1, true);
    s.hold_reads = true;
    s.sync(phone, &[(chat, 3)]);
    let plan = s.run_reads();
    assert_eq!(plan.len(), 1, "one plan read");
    s.send(sender, chat, 77, "while the plan was on its way");
    s.commit();
    assert!(s.take(phone).is_empty(), "held while the plan is in flight");
    s.deliver(plan);
    let frames = until_sync_done(&mut s, phone);
    assert_eq!(seqs(&messages(&frames), chat), vec![4]);
    // And the seam is passed: the next push goes straight out.
    s.send(sender, chat, 78, "after");
    s.commit();
    assert_eq!(seqs(&messages(&s.take(phone)), chat), vec![5]);
}

#[test]
fn pushes_around_a_page_read_in_flight_arrive_exactly_once_in_order() {
    // Two orders, one chat each: a message committed before the page read
    // runs (the page holds it, the held push is dropped) and one committed
    // after it ran but before its answer (the page does not hold it, the held
    // push goes out after the page).
    for committed_before_the_read in [true, false] {
        let mut s = Sim::new();
        let (alice, bob) = (s.user("alice"), s.user("bob"));
        let (chat, _) = s.store.create_dm(alice, bob).unwrap();
        s.backlog(chat, alice, 1, 3);
        let sender = s.connect(alice, 9);
        let phone = s.connect_with(bob, 1, true);
        s.hold_reads = true;
        s.sync(phone, &[(chat, 0)]);
        s.answer_reads(); // the plan: 1..3 to stream; asks for the page
        assert_eq!(s.pending_reads.len(), 1, "the page read");
        let page = if committed_before_the_read {
            s.send(sender, chat, 77, "before the read");
            s.commit();
            s.run_reads()
        } else {
            let page = s.run_reads();
            s.send(sender, chat, 77, "after the read");
            s.commit();
            page
        };
        assert!(s.take(phone).is_empty(), "held while the page is in flight");
        s.deliver(page);
        let frames = until_sync_done(&mut s, phone);
        assert_eq!(
            seqs(&messages(&frames), chat),
            vec![1, 2, 3, 4],
            "committed before the read: {committed_before_the_read}"
        );
    }
}

#[test]
fn too_much_held_for_one_read_is_a_resync_and_the_next_sync_is_exact() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (chat, _) = s.store.create_dm(alice, bob).unwrap();
    let sender = s.connect(alice, 9);
    let phone = s.connect_with(bob, 1, true);
    s.hold_reads = true;
    s.sync(phone, &[(chat, 0)]);
    let plan = s.run_reads();
    // Pushes of 400 KB each while the plan is on its way, past the bound.
    let big = "𝄞".repeat(100_000);
    let n = MAX_HELD_BYTES / big.len() + 2;
    for i in 0..n {
        s.send(sender, chat, 100 + i as u64, &big);
        s.commit();
    }
    let frames = s.take(phone);
    assert!(
        matches!(
            &frames[..],
            [Frame {
                body: Body::Resync,
                ..
            }]
        ),
        "{:?}",
        frames.iter().map(|f| &f.body).collect::<Vec<_>>()
    );
    s.deliver(plan); // the stopped run's answer changes nothing
    assert!(s.take(phone).is_empty());
    s.sync(phone, &[(chat, 0)]);
    let frames = until_sync_done(&mut s, phone);
    assert_eq!(seqs(&messages(&frames), chat), (1..=n as u64).collect::<Vec<_>>());
}

#[test]
fn an_answer_for_a_session_closed_meanwhile_sends_it_nothing() {
    let mut s = Sim::new();
    let (alice, bob) = (s.user("alice"), s.user("bob"));
    let (chat, _) = s.store.create_dm(alice, bob).unwrap();
    s.backlog(chat, alice, 1, 3);
    let phone = s.connect(bob, 1);
    s.hold_reads = true;
    s.request(
        phone,
        Body::History(History {
            chat_id: chat.0,
            before_seq: 0,
            limit: 10,
        }),
    );
    assert_eq!(s.pending_reads.len(), 1);
    // The session is closed (a heartbeat timeout) before the answer comes.
    s.now += Duration::from_secs(120);
    s.core.handle_timeout(s.now);
    s.pump();
    let closing = s.take(phone);
    assert!(
        closing.iter().any(|f| matches!(f.body, Body::Error(_))),
        "{closing:?}"
    );
    s.answer_reads();
    assert!(s.take(phone).is_empty(), "no HistoryPage after its Close");
}
