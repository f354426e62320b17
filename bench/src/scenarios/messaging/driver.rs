//! [`Driver`]: one event-loop thread of a messaging run. It owns a share of the
//! users' connections (one mio `Poll`, non-blocking sockets from explicit loopback
//! source addresses), opens and authenticates them, sends on the schedule (closed
//! loop: a window of sends in flight per sending user; open loop: the messages of
//! [`ScheduleCursor`] when due), reads every `SendOk`, `Message` and `Error`, and
//! keeps the books: latencies, counts and each device's view of its chat.
//!
//! Threads share nothing on the hot path. Once per loop turn each publishes the
//! changes of a few counters to [`Shared`] — sends in flight, deliveries expected and
//! received — which tell every thread when the run has drained.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use natter_wire::{
    Ack, Body, Encoder, ErrorCode, Frame, FrameDecoder, Hello, Limits, PROTOCOL_VERSION, Ping, Send, Typing,
    fb, view,
};

use super::accounting::{Observation, SeqSet, SeqTracker, seq_index};
use super::schedule::ScheduleCursor;
use super::stamp::{Stamp, TEXT_LEN};
use super::{Plan, Shared, Timeline};
use crate::accounts::DEVICE;
use crate::interrupt;
use crate::series::Seconds;
use crate::sockets::Sources;
use crate::transport::{ClientStream, Dial};

/// Most handshakes (TCP connect + `Hello` → `Welcome`) in flight per thread.
const MAX_HANDSHAKES: usize = 512;
/// New connections started per loop turn, so that answers to earlier handshakes are
/// read between batches.
const CONNECTS_PER_TURN: usize = 64;
/// A handshake that takes longer than this is given up and counted as an error.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Readiness events handled per `poll` call.
const EVENTS_CAPACITY: usize = 1024;
/// Longest sleep in `poll`, so the clock-driven work (phases, pings) is checked at
/// least this often.
const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// Longest sleep while draining: the end of the drain depends on other threads'
/// counters, which do not wake this one.
const DRAIN_POLL_WAIT: Duration = Duration::from_millis(5);
/// Bytes read per `read` call: a group member receives thousands of frames per
/// second, so reads are large.
const READ_CHUNK: usize = 64 * 1024;
/// Request id of `Hello`; sends count up from [`FIRST_SEND_ID`].
const HELLO_ID: u64 = 1;
/// Request id of every `Ping` (the `Pong` is only read as a sign of life).
const PING_ID: u64 = 1;
/// The request id of a connection's first `Send`.
const FIRST_SEND_ID: u64 = 2;
/// Shortest ping interval, whatever the server's heartbeat says.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);
/// Ping interval when the server announced no heartbeat.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Latencies above this (µs) are recorded as this: one hour, far past any drain.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Bytes a connection may have queued in the benchmark but not yet taken by its
/// socket: past this (natterd has stopped reading it), due sends are skipped and
/// counted in [`Tally::skipped`] instead of growing the benchmark's memory. 1 MiB
/// holds about 6,500 stamped 160-byte sends or 100 of 10,000 bytes: far more than a
/// natterd that keeps up ever leaves unread.
const MAX_UNSENT_BYTES: usize = 1 << 20;

/// What a thread is given.
pub(super) struct DriverSpec<'a> {
    /// The thread's number (its name is `bench-driver-{id}`, for profilers).
    pub(super) id: usize,
    /// natterd's frame port and the transport (`--transport`).
    pub(super) server: Dial,
    /// This thread's share of source addresses.
    pub(super) sources: Sources,
    /// The whole plan (this thread reads the users in `users`).
    pub(super) plan: &'a Plan,
    /// The plan indexes of this thread's users.
    pub(super) users: Vec<usize>,
    /// Each plan user's index among all senders, `None` for a user who only receives.
    pub(super) sender_index: &'a [Option<u64>],
    /// Closed loop: sends in flight per sender. Unused in open loop.
    pub(super) window: usize,
    /// Open loop: the schedule of this thread's senders (global indexes).
    pub(super) schedule: Option<ScheduleCursor>,
    /// High 32 bits of every `client_msg_id` of this run, so that reused accounts
    /// never resend an earlier run's ids (the server would dedupe them).
    pub(super) run_id: u64,
    /// State shared with the other threads and the coordinator.
    pub(super) shared: &'a Shared,
    /// Filler bytes appended to every stamp (`--text-bytes` minus the stamp's
    /// [`TEXT_LEN`]).
    pub(super) padding: usize,
    /// `--conversation`: Hello{conversation}, Acks and Typing (see [`CONVERSATION_ROUND`]).
    pub(super) conversation: bool,
}

/// `--conversation`: how often each device acks what it received since its last Ack, and each
/// sender sends `Typing{active}` (natterd passes one per 2 s on, so about half are throttled,
/// and each Send ends a shown indicator). About what a phone does while a chat is open.
const CONVERSATION_ROUND: Duration = Duration::from_millis(1000);

/// Latencies, counts and failures of one thread (or, merged, of the run).
#[derive(Debug)]
pub(super) struct Tally {
    /// Sends whose intended instant lies in the measured phase.
    pub(super) sent: u64,
    /// Of those, the acknowledged ones.
    pub(super) acked: u64,
    /// Deliveries of those.
    pub(super) delivered: u64,
    /// `(chat, seq)`s a device saw again.
    pub(super) duplicated: u64,
    /// Steps of a device's `seq` stream that were not `last + 1`.
    pub(super) reordered: u64,
    /// Open-loop sends that were due while their connection already had
    /// [`MAX_UNSENT_BYTES`] unsent (natterd not reading), and were skipped.
    pub(super) skipped: u64,
    /// `Error` frames, unexpected frames, lost connections, failed handshakes.
    pub(super) errors: u64,
    /// Send → `SendOk`, µs, measured-phase sends only.
    pub(super) ack: Histogram<u64>,
    /// Send → `Message` at each recipient, µs, measured-phase sends only.
    pub(super) deliver: Histogram<u64>,
    /// Failures by reason.
    pub(super) reasons: BTreeMap<String, u64>,
    /// `Error` frames by error code name (`code N` for a code this build does not
    /// know), so that codes added to natterd later show up on their own.
    pub(super) codes: BTreeMap<String, u64>,
    /// `Receipt` frames received (`--conversation`).
    pub(super) receipts: u64,
    /// `Typing` frames received (`--conversation`).
    pub(super) typings: u64,
    /// Every ack and delivery (warm-up and drain too) by the second it arrived in,
    /// counted from the first send: the per-second series.
    pub(super) seconds: Seconds,
}

impl Tally {
    /// An empty tally.
    pub(super) fn new() -> Tally {
        Tally {
            sent: 0,
            acked: 0,
            delivered: 0,
            duplicated: 0,
            reordered: 0,
            skipped: 0,
            errors: 0,
            ack: latency_histogram(),
            deliver: latency_histogram(),
            reasons: BTreeMap::new(),
            codes: BTreeMap::new(),
            receipts: 0,
            typings: 0,
            seconds: Seconds::new(),
        }
    }

    /// Adds `other` into this tally.
    pub(super) fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.acked += other.acked;
        self.delivered += other.delivered;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.skipped += other.skipped;
        self.errors += other.errors;
        self.receipts += other.receipts;
        self.typings += other.typings;
        self.seconds.merge(&other.seconds);
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.ack.add(&other.ack);
        let _ = self.deliver.add(&other.deliver);
        for (reason, count) in other.reasons {
            *self.reasons.entry(reason).or_default() += count;
        }
        for (code, count) in other.codes {
            *self.codes.entry(code).or_default() += count;
        }
    }

    /// Counts one failure under `reason`.
    pub(super) fn fail(&mut self, reason: String) {
        self.errors += 1;
        *self.reasons.entry(reason).or_default() += 1;
    }
}

/// A histogram of microseconds from 1 µs to an hour, 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds that hdrhistogram documents as valid
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("1 µs .. 1 h at 3 digits is a valid histogram")
}

/// Records `from_ns → to_ns` in µs (at least 1).
fn record(histogram: &mut Histogram<u64>, from_ns: u64, to_ns: u64) {
    histogram.saturating_record(latency_us(from_ns, to_ns));
}

/// `from_ns → to_ns` in µs, at least 1.
fn latency_us(from_ns: u64, to_ns: u64) -> u64 {
    (to_ns.saturating_sub(from_ns) / 1_000).max(1)
}

/// What a thread hands back at the end.
#[derive(Debug)]
pub(super) struct DriverResult {
    /// Its figures.
    pub(super) tally: Tally,
    /// Per plan chat: the `seq`s this thread's senders saw acknowledged.
    pub(super) acked: Vec<SeqSet>,
    /// The views of the devices that stayed connected from before the first send to
    /// the end: (plan chat, tracker).
    pub(super) survivors: Vec<(usize, SeqTracker)>,
    /// Connections established.
    pub(super) connected: u64,
    /// SIGINT / SIGTERM stopped the thread.
    pub(super) interrupted: bool,
    /// The event loop itself failed (not a connection: `poll`).
    pub(super) fatal: Option<String>,
}

impl DriverResult {
    /// The result of a thread that could not run at all.
    pub(super) fn failed(reason: String, chats: usize) -> DriverResult {
        DriverResult {
            tally: Tally::new(),
            acked: vec![SeqSet::default(); chats],
            survivors: Vec::new(),
            connected: 0,
            interrupted: false,
            fatal: Some(reason),
        }
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    /// Not opened yet.
    Idle,
    /// TCP handshake in progress.
    Connecting,
    /// `Hello` sent, no `Welcome` yet.
    AwaitingWelcome,
    /// Authenticated.
    Active,
    /// Failed or closed; never used again.
    Dead,
}

/// A send waiting for its `SendOk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingSend {
    /// Intended send instant, ns since the clock origin.
    sent_ns: u64,
    /// Whether it belongs to the measured phase.
    counted: bool,
}

/// A connection's sends awaiting answers, by request id (consecutive from
/// [`FIRST_SEND_ID`]); answers may come in any order.
#[derive(Debug)]
struct Pending {
    /// Request id of `slots[0]`.
    first_id: u64,
    /// `None` once answered.
    slots: VecDeque<Option<PendingSend>>,
    /// Unanswered sends.
    live: usize,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            first_id: FIRST_SEND_ID,
            slots: VecDeque::new(),
            live: 0,
        }
    }

    /// Registers a send; returns its request id.
    fn push(&mut self, send: PendingSend) -> u64 {
        let id = self.first_id + self.slots.len() as u64;
        self.slots.push_back(Some(send));
        self.live += 1;
        id
    }

    /// The send with request id `id`, if it is still waiting.
    fn take(&mut self, id: u64) -> Option<PendingSend> {
        let index = usize::try_from(id.checked_sub(self.first_id)?).ok()?;
        let send = self.slots.get_mut(index)?.take()?;
        self.live -= 1;
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.first_id += 1;
        }
        Some(send)
    }

    /// Forgets every waiting send; returns how many there were.
    fn clear(&mut self) -> usize {
        let live = self.live;
        self.first_id += self.slots.len() as u64;
        self.slots.clear();
        self.live = 0;
        live
    }
}

/// One user's connection.
#[derive(Debug)]
struct Conn {
    stream: Option<ClientStream>,
    state: ConnState,
    /// When the handshake began.
    since: Instant,
    /// The plan's user index.
    user: usize,
    /// The plan's chat index of the user's chat.
    chat: usize,
    /// The user's id (the `s` of every stamp it writes).
    user_id: u64,
    /// Bytes received and not yet a whole frame.
    inbuf: BytesMut,
    /// Bytes to send that the socket did not take yet.
    outbuf: BytesMut,
    /// In the turn's flush list.
    dirty: bool,
    /// In the turn's closed-loop refill list.
    refill: bool,
    /// Sent a frame since the last ping round.
    spoke: bool,
    /// This device's view of its chat.
    tracker: SeqTracker,
    /// Sends awaiting answers.
    pending: Pending,
    /// `--conversation`: the highest seq received, and the highest one acked.
    seen_seq: u64,
    acked_seq: u64,
    /// Messages sent so far (the stamp's `n`).
    counter: u64,
}

/// Changes of the shared counters not yet published.
#[derive(Debug, Default)]
struct Deltas {
    in_flight: i64,
    expected: u64,
    received: u64,
    acked: u64,
}

/// The mutable state of a thread besides its connections.
struct Books {
    tally: Tally,
    acked: Vec<SeqSet>,
    deltas: Deltas,
    /// Slots of senders whose window has room again this turn.
    refill: Vec<usize>,
    /// Connections established.
    connected: u64,
    /// Handshakes running.
    handshakes: usize,
    /// The server's heartbeat interval (from `Welcome`).
    heartbeat: Option<Duration>,
}

/// The read-only context frame handling needs.
struct Context<'a> {
    plan: &'a Plan,
    shared: &'a Shared,
    limits: &'a Limits,
    /// Active members per plan chat when sending started (the first frames may
    /// arrive before: then every member counts).
    online: &'a [u64],
    timeline: Option<Timeline>,
    /// Filler bytes after each stamp.
    padding: usize,
}

/// One event-loop thread.
pub(super) struct Driver<'a> {
    id: usize,
    poll: Poll,
    events: Events,
    server: Dial,
    sources: Sources,
    decoder: FrameDecoder,
    limits: Limits,
    encoder: Encoder,
    /// The `Send` frame reused for every message.
    send_frame: Frame,
    /// Appended to every stamp to make texts `--text-bytes` long.
    padding: String,
    plan: &'a Plan,
    shared: &'a Shared,
    sender_index: &'a [Option<u64>],
    conns: Vec<Conn>,
    /// Open loop: cursor position → connection slot.
    sender_slots: Vec<usize>,
    schedule: Option<ScheduleCursor>,
    window: usize,
    run_id: u64,
    scratch: Vec<u8>,
    dirty: Vec<usize>,
    books: Books,
    online: Vec<u64>,
    conversation: bool,
}

impl<'a> Driver<'a> {
    /// A thread's driver, before any connection is opened.
    ///
    /// # Errors
    /// The `poll` instance cannot be created.
    pub(super) fn new(spec: DriverSpec<'a>) -> io::Result<Driver<'a>> {
        let now = Instant::now();
        let conns: Vec<Conn> = spec
            .users
            .iter()
            .map(|&user| {
                let plan_user = spec.plan.users.get(user);
                let chat = plan_user.map_or(0, |u| u.chat);
                let baseline = spec.plan.chats.get(chat).map_or(0, |c| c.baseline);
                Conn {
                    stream: None,
                    state: ConnState::Idle,
                    since: now,
                    user,
                    chat,
                    user_id: plan_user.map_or(0, |u| u.user_id),
                    inbuf: BytesMut::new(),
                    outbuf: BytesMut::new(),
                    dirty: false,
                    refill: false,
                    spoke: false,
                    tracker: SeqTracker::new(baseline),
                    pending: Pending::new(),
                    counter: 0,
                    seen_seq: 0,
                    acked_seq: 0,
                }
            })
            .collect();
        // Open loop: the cursor lists senders by ascending global index.
        let mut by_index: Vec<(u64, usize)> = conns
            .iter()
            .enumerate()
            .filter_map(|(slot, conn)| Some((spec.sender_index.get(conn.user).copied()??, slot)))
            .collect();
        by_index.sort_unstable();
        let limits = Limits::default();
        Ok(Driver {
            id: spec.id,
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            server: spec.server,
            sources: spec.sources,
            decoder: FrameDecoder::new(limits.clone()),
            limits,
            encoder: Encoder::new(),
            send_frame: Frame::new(
                0,
                Body::Send(Send {
                    chat_id: 0,
                    client_msg_id: 0,
                    text: String::with_capacity(TEXT_LEN + spec.padding),
                }),
            ),
            padding: Stamp::padding(spec.padding),
            plan: spec.plan,
            shared: spec.shared,
            sender_index: spec.sender_index,
            conns,
            sender_slots: by_index.into_iter().map(|(_, slot)| slot).collect(),
            schedule: spec.schedule,
            window: spec.window,
            run_id: spec.run_id,
            scratch: vec![0; READ_CHUNK],
            dirty: Vec::new(),
            books: Books {
                tally: Tally::new(),
                acked: vec![SeqSet::default(); spec.plan.chats.len()],
                deltas: Deltas::default(),
                refill: Vec::new(),
                connected: 0,
                handshakes: 0,
                heartbeat: None,
            },
            online: Vec::new(),
            conversation: spec.conversation,
        })
    }

    /// The whole life of the thread: connect, meet the others at the barriers, run,
    /// drain, hand back the books. The barriers are reached whatever happens, so one
    /// thread's failure never blocks the others.
    pub(super) fn run(mut self) -> DriverResult {
        // Only a label for `top -H` and `perf`: failing to set it changes nothing.
        if let Ok(name) = CString::new(format!("bench-driver-{}", self.id)) {
            let _ = rustix::thread::set_name(&name);
        }
        let mut fatal = None;
        let mut interrupted = false;
        match self.connect_all() {
            Ok(true) => {}
            Ok(false) => interrupted = true,
            Err(e) => fatal = Some(format!("poll failed while connecting: {e}")),
        }
        self.shared.connected.wait();
        self.shared.go.wait();
        self.online = self
            .shared
            .online
            .iter()
            .map(|n| n.load(Ordering::Acquire))
            .collect();
        let timeline = self.shared.timeline.get().copied();
        if let (None, false, Some(timeline)) = (&fatal, interrupted, timeline) {
            match self.exchange(timeline) {
                Ok(true) => {}
                Ok(false) => interrupted = true,
                Err(e) => fatal = Some(format!("poll failed: {e}")),
            }
        }
        self.finish(interrupted, fatal)
    }

    // ----- connecting -------------------------------------------------------

    /// Opens and authenticates every connection of this thread; `Ok(false)` if
    /// interrupted.
    fn connect_all(&mut self) -> io::Result<bool> {
        let mut next = 0;
        loop {
            if interrupt::requested() {
                return Ok(false);
            }
            let now = Instant::now();
            let mut budget = CONNECTS_PER_TURN;
            while budget > 0 && self.books.handshakes < MAX_HANDSHAKES && next < self.conns.len() {
                self.start(next, now);
                next += 1;
                budget -= 1;
            }
            let more = next < self.conns.len();
            if !more && self.books.handshakes == 0 {
                return Ok(true);
            }
            let wait = if more && budget == 0 {
                Duration::ZERO
            } else {
                MAX_POLL_WAIT
            };
            self.turn(wait, None)?;
            self.expire_handshakes(Instant::now());
        }
    }

    /// Opens slot `slot`'s socket and queues its `Hello`.
    fn start(&mut self, slot: usize, now: Instant) {
        let token = self
            .plan
            .users
            .get(self.conns.get(slot).map_or(usize::MAX, |c| c.user));
        let Some(token) = token.map(|u| u.token.clone()) else {
            return;
        };
        let stream = self.server.open(&mut self.sources).and_then(|mut stream| {
            self.poll
                .registry()
                .register(
                    stream.source(),
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("register: {e}"))?;
            Ok(stream)
        });
        let stream = match stream {
            Ok(stream) => stream,
            Err(reason) => {
                self.books.tally.fail(format!("handshake: {reason}"));
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.state = ConnState::Dead;
                }
                return;
            }
        };
        let hello = self.encoder.encode(&Frame::new(
            HELLO_ID,
            Body::Hello(Hello {
                token,
                device: DEVICE.to_owned(),
                protocol_version: PROTOCOL_VERSION,
                sync_first: false,
                conversation: self.conversation,
            }),
        ));
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.stream = Some(stream);
            conn.state = ConnState::Connecting;
            conn.since = now;
            conn.outbuf.extend_from_slice(&hello);
            self.books.handshakes += 1;
        }
    }

    /// Gives up handshakes older than [`HANDSHAKE_TIMEOUT`].
    fn expire_handshakes(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                matches!(c.state, ConnState::Connecting | ConnState::AwaitingWelcome)
                    && now.saturating_duration_since(c.since) > HANDSHAKE_TIMEOUT
            })
            .map(|(slot, _)| slot)
            .collect();
        for slot in expired {
            self.kill(slot, format!("timed out after {HANDSHAKE_TIMEOUT:?}"));
        }
    }

    // ----- the run ------------------------------------------------------------

    /// Sends and receives from the start of sending until the run has drained or
    /// the drain deadline passed; `Ok(false)` if interrupted.
    fn exchange(&mut self, timeline: Timeline) -> io::Result<bool> {
        let origin = self.shared.origin;
        let closed_loop = self.schedule.is_none();
        let mut sending = false;
        let mut stopped = false;
        let ping_interval = self
            .books
            .heartbeat
            .map(|h| (h / 2).max(MIN_PING_INTERVAL))
            .unwrap_or(DEFAULT_PING_INTERVAL);
        let mut next_ping = Instant::now() + ping_interval;
        let mut next_round = Instant::now() + CONVERSATION_ROUND;
        loop {
            if interrupt::requested() {
                return Ok(false);
            }
            let now_ns = nanos_since(origin);
            if !stopped && now_ns >= timeline.send_end {
                stopped = true;
                sending = false;
                self.publish();
                self.shared.stopped.fetch_add(1, Ordering::AcqRel);
            }
            if stopped && (self.drained() || now_ns >= timeline.drain_deadline) {
                return Ok(true);
            }
            if !stopped && !sending && now_ns >= timeline.send_start {
                sending = true;
                if closed_loop {
                    self.books.refill.extend(0..self.conns.len());
                }
            }
            if sending {
                if closed_loop {
                    self.refill_windows(timeline, now_ns);
                } else {
                    self.send_due(timeline, now_ns);
                }
            }
            self.flush_dirty();
            let now = Instant::now();
            if now >= next_ping {
                self.ping_idle();
                next_ping = now + ping_interval;
            }
            if self.conversation && now >= next_round {
                self.conversation_round(sending);
                next_round = now + CONVERSATION_ROUND;
            }
            self.publish();

            let now_ns = nanos_since(origin);
            let until = if stopped {
                timeline.drain_deadline
            } else if !sending {
                timeline.send_start
            } else {
                let next_due = self
                    .schedule
                    .as_ref()
                    .and_then(ScheduleCursor::peek)
                    .map_or(u64::MAX, |(_, due)| timeline.send_start.saturating_add(due));
                next_due.min(timeline.send_end)
            };
            let mut wait = Duration::from_nanos(until.saturating_sub(now_ns))
                .min(next_ping.saturating_duration_since(now))
                .min(MAX_POLL_WAIT);
            if stopped {
                wait = wait.min(DRAIN_POLL_WAIT);
            }
            self.turn(wait, Some(timeline))?;
        }
    }

    /// Closed loop: tops up the window of every sender that has room.
    fn refill_windows(&mut self, timeline: Timeline, now_ns: u64) {
        let refill = std::mem::take(&mut self.books.refill);
        for &slot in &refill {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.refill = false;
            if !self.sender_index.get(conn.user).is_some_and(Option::is_some) {
                continue;
            }
            let room = self.window.saturating_sub(conn.pending.live);
            for _ in 0..room {
                self.send_one(slot, now_ns, timeline);
            }
        }
        let mut refill = refill;
        refill.clear();
        self.books.refill = refill;
    }

    /// Open loop: sends every message that is due.
    fn send_due(&mut self, timeline: Timeline, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(timeline.send_start);
        while let Some((position, due)) = self.schedule.as_mut().and_then(|s| s.pop_due(elapsed)) {
            let intended = timeline.send_start.saturating_add(due);
            if intended >= timeline.send_end {
                break;
            }
            if let Some(&slot) = self.sender_slots.get(position) {
                self.send_one(slot, intended, timeline);
            }
        }
    }

    /// Queues one `Send` on slot `slot`, stamped with `intended_ns`.
    fn send_one(&mut self, slot: usize, intended_ns: u64, timeline: Timeline) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.state != ConnState::Active {
            return;
        }
        if conn.outbuf.len() >= MAX_UNSENT_BYTES {
            self.books.tally.skipped += 1;
            return;
        }
        let Some(chat) = self.plan.chats.get(conn.chat) else {
            return;
        };
        conn.counter += 1;
        let counted = timeline.counts(intended_ns);
        let request_id = conn.pending.push(PendingSend {
            sent_ns: intended_ns,
            counted,
        });
        self.send_frame.request_id = request_id;
        if let Body::Send(send) = &mut self.send_frame.body {
            send.chat_id = chat.chat_id;
            send.client_msg_id = (self.run_id << 32) | (conn.counter & 0xffff_ffff);
            Stamp {
                sent_ns: intended_ns,
                sender: conn.user_id,
                counter: conn.counter,
            }
            .write_to(&mut send.text);
            send.text.push_str(&self.padding);
        }
        let bytes = self.encoder.encode(&self.send_frame);
        conn.outbuf.extend_from_slice(&bytes);
        conn.spoke = true;
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(slot);
        }
        self.books.deltas.in_flight += 1;
        if counted {
            self.books.tally.sent += 1;
        }
    }

    /// Sends a `Ping` on every active connection that sent nothing since the last
    /// round, so that receivers stay within the server's heartbeat.
    fn ping_idle(&mut self) {
        let ping = self
            .encoder
            .encode(&Frame::new(PING_ID, Body::Ping(Ping { nonce: 0 })));
        for (slot, conn) in self.conns.iter_mut().enumerate() {
            if conn.state == ConnState::Active && !std::mem::replace(&mut conn.spoke, false) {
                conn.outbuf.extend_from_slice(&ping);
                if !conn.dirty {
                    conn.dirty = true;
                    self.dirty.push(slot);
                }
            }
        }
        self.flush_dirty();
    }

    /// `--conversation`: every device acks what it received since its last Ack; while sending,
    /// every sender says it is typing.
    fn conversation_round(&mut self, sending: bool) {
        for (slot, conn) in self.conns.iter_mut().enumerate() {
            if conn.state != ConnState::Active {
                continue;
            }
            let Some(chat) = self.plan.chats.get(conn.chat) else {
                continue;
            };
            let mut wrote = false;
            if conn.seen_seq > conn.acked_seq {
                conn.acked_seq = conn.seen_seq;
                let ack = Body::Ack(Ack {
                    chat_id: chat.chat_id,
                    seq: conn.seen_seq,
                });
                conn.outbuf
                    .extend_from_slice(&self.encoder.encode(&Frame::new(0, ack)));
                wrote = true;
            }
            if sending && self.sender_index.get(conn.user).is_some_and(Option::is_some) {
                let typing = Body::Typing(Typing {
                    chat_id: chat.chat_id,
                    active: true,
                    user_id: 0,
                });
                conn.outbuf
                    .extend_from_slice(&self.encoder.encode(&Frame::new(0, typing)));
                wrote = true;
            }
            if wrote && !conn.dirty {
                conn.spoke = true;
                conn.dirty = true;
                self.dirty.push(slot);
            }
        }
        self.flush_dirty();
    }

    /// Writes what the turn queued.
    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.dirty = false;
            if conn.state == ConnState::Connecting {
                continue;
            }
            if let Err(reason) = flush(conn) {
                self.kill(slot, reason);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        self.dirty = dirty;
    }

    /// Publishes the turn's counter changes.
    fn publish(&mut self) {
        let d = std::mem::take(&mut self.books.deltas);
        if d.in_flight != 0 {
            self.shared.in_flight.fetch_add(d.in_flight, Ordering::AcqRel);
        }
        if d.expected != 0 {
            self.shared.expected.fetch_add(d.expected, Ordering::AcqRel);
        }
        if d.received != 0 {
            self.shared.received.fetch_add(d.received, Ordering::AcqRel);
        }
        if d.acked != 0 {
            self.shared.acked.fetch_add(d.acked, Ordering::AcqRel);
        }
    }

    /// Every thread stopped sending, no send is unanswered, and every expected
    /// delivery arrived.
    fn drained(&self) -> bool {
        let s = self.shared;
        s.stopped.load(Ordering::Acquire) == s.threads
            && s.in_flight.load(Ordering::Acquire) <= 0
            && s.received.load(Ordering::Acquire) >= s.expected.load(Ordering::Acquire)
    }

    // ----- readiness ----------------------------------------------------------

    /// Waits up to `wait` for readiness and handles it.
    fn turn(&mut self, wait: Duration, timeline: Option<Timeline>) -> io::Result<()> {
        // QUIC connections have timers of their own (acknowledgements, loss
        // detection): wake for the earliest, and serve those that are due.
        let quic_due = self
            .conns
            .iter_mut()
            .filter_map(|c| c.stream.as_mut().and_then(ClientStream::next_timeout))
            .min();
        let wait = quic_due.map_or(wait, |t| wait.min(t.saturating_duration_since(Instant::now())));
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut ready: Vec<usize> = self.events.iter().map(|event| event.token().0).collect();
        if quic_due.is_some() {
            let now = Instant::now();
            for (slot, c) in self.conns.iter_mut().enumerate() {
                if c.stream
                    .as_mut()
                    .and_then(ClientStream::next_timeout)
                    .is_some_and(|t| t <= now)
                {
                    ready.push(slot);
                }
            }
        }
        let online = std::mem::take(&mut self.online);
        let ctx = Context {
            plan: self.plan,
            shared: self.shared,
            limits: &self.limits,
            online: &online,
            timeline,
            padding: self.padding.len(),
        };
        let mut dead = Vec::new();
        for slot in ready {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if matches!(conn.state, ConnState::Idle | ConnState::Dead) {
                continue;
            }
            let result = on_ready(
                conn,
                slot,
                &self.decoder,
                &mut self.scratch,
                &ctx,
                &mut self.books,
            );
            if let Err(reason) = result {
                dead.push((slot, reason));
            }
        }
        self.online = online;
        for (slot, reason) in dead {
            self.kill(slot, reason);
        }
        Ok(())
    }

    /// Closes slot `slot` and counts why: a failed handshake or a lost connection.
    fn kill(&mut self, slot: usize, reason: String) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        let what = match conn.state {
            ConnState::Idle | ConnState::Dead => return,
            ConnState::Connecting | ConnState::AwaitingWelcome => {
                self.books.handshakes = self.books.handshakes.saturating_sub(1);
                "handshake"
            }
            ConnState::Active => "lost connection",
        };
        conn.state = ConnState::Dead;
        if let Some(mut stream) = conn.stream.take() {
            // The socket is closed right after; a failed deregistration changes nothing.
            let _ = self.poll.registry().deregister(stream.source());
        }
        let unanswered = conn.pending.clear();
        self.books.deltas.in_flight -= unanswered as i64;
        conn.inbuf = BytesMut::new();
        conn.outbuf = BytesMut::new();
        self.books.tally.fail(format!("{what}: {reason}"));
    }

    /// The books, once the thread is done.
    fn finish(mut self, interrupted: bool, fatal: Option<String>) -> DriverResult {
        self.publish();
        let survivors = self
            .conns
            .into_iter()
            .filter(|c| c.state == ConnState::Active)
            .map(|c| (c.chat, c.tracker))
            .collect();
        DriverResult {
            tally: self.books.tally,
            acked: self.books.acked,
            survivors,
            connected: self.books.connected,
            interrupted,
            fatal,
        }
    }
}

/// Nanoseconds since `origin`.
fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Advances a connection on readiness: finishes the TCP connect, writes what is
/// pending, reads and handles every whole frame.
///
/// # Errors
/// Why the connection is dead.
fn on_ready(
    conn: &mut Conn,
    slot: usize,
    decoder: &FrameDecoder,
    scratch: &mut [u8],
    ctx: &Context<'_>,
    books: &mut Books,
) -> Result<(), String> {
    if conn.state == ConnState::Connecting {
        let Some(stream) = conn.stream.as_mut() else {
            return Err("no socket".into());
        };
        match stream.connected() {
            Ok(true) => conn.state = ConnState::AwaitingWelcome,
            // Not connected yet (a spurious event).
            Ok(false) => return Ok(()),
            Err(e) => return Err(format!("connect: {e}")),
        }
    }
    flush(conn)?;
    let end_of_stream = fill(conn, scratch)?;
    if conn.stream.as_ref().is_some_and(|s| !s.is_raw()) {
        // A TLS handshake or WebSocket upgrade that the read just finished
        // lets queued frames leave now.
        flush(conn)?;
    }
    let now_ns = nanos_since(ctx.shared.origin);
    while let Some(bytes) = decoder
        .split(&mut conn.inbuf)
        .map_err(|e| format!("bad frame: {e}"))?
    {
        handle_frame(conn, slot, &bytes, now_ns, ctx, books)?;
    }
    if end_of_stream {
        return Err("closed by server".into());
    }
    Ok(())
}

/// Handles one frame from the server.
///
/// # Errors
/// Why the connection must be given up (an unreadable frame, a refused `Hello`).
fn handle_frame(
    conn: &mut Conn,
    slot: usize,
    bytes: &[u8],
    now_ns: u64,
    ctx: &Context<'_>,
    books: &mut Books,
) -> Result<(), String> {
    let frame = view(bytes, ctx.limits).map_err(|e| format!("bad frame: {e}"))?;
    let request_id = frame.request_id();
    match frame.body_type() {
        fb::Body::Message => {
            if let Some(message) = frame.body_as_message() {
                conn.seen_seq = conn.seen_seq.max(message.seq());
                on_message(conn, message, now_ns, ctx, books);
            }
        }
        fb::Body::SendOk => {
            if let Some(ok) = frame.body_as_send_ok() {
                on_send_ok(conn, slot, request_id, ok, now_ns, ctx, books);
            }
        }
        fb::Body::Welcome if conn.state == ConnState::AwaitingWelcome => {
            conn.state = ConnState::Active;
            books.handshakes = books.handshakes.saturating_sub(1);
            books.connected += 1;
            if let Some(online) = ctx.shared.online.get(conn.chat) {
                online.fetch_add(1, Ordering::AcqRel);
            }
            let heartbeat = frame
                .body_as_welcome()
                .map_or(0, |w| u64::from(w.heartbeat_interval_ms()));
            if heartbeat > 0 {
                books.heartbeat.get_or_insert(Duration::from_millis(heartbeat));
            }
        }
        fb::Body::Error => {
            let (code, message, answers) = frame.body_as_error().map_or((0, "", 0), |e| {
                (e.code(), e.message().unwrap_or_default(), e.request_id())
            });
            let name =
                ErrorCode::from_u16(code).map_or_else(|| format!("code {code}"), |c| c.name().to_owned());
            if conn.state == ConnState::AwaitingWelcome {
                return Err(format!("server error {name}: {message}"));
            }
            let answers = if answers != 0 { answers } else { request_id };
            if conn.pending.take(answers).is_some() {
                books.deltas.in_flight -= 1;
            }
            *books.tally.codes.entry(name.clone()).or_default() += 1;
            books.tally.fail(format!("server error {name}"));
        }
        fb::Body::Receipt => books.tally.receipts += 1,
        fb::Body::Typing => books.tally.typings += 1,
        // Pong, Presence and anything newer: not this benchmark's business.
        _ => {}
    }
    Ok(())
}

/// A `SendOk`: ack latency, the chat's acknowledged set, the device's own view.
fn on_send_ok(
    conn: &mut Conn,
    slot: usize,
    request_id: u64,
    ok: fb::SendOk<'_>,
    now_ns: u64,
    ctx: &Context<'_>,
    books: &mut Books,
) {
    let Some(pending) = conn.pending.take(request_id) else {
        books
            .tally
            .fail("SendOk answering no waiting send (a duplicate or a wrong request id)".into());
        return;
    };
    books.deltas.in_flight -= 1;
    books.deltas.acked += 1;
    if pending.counted {
        books.tally.acked += 1;
        record(&mut books.tally.ack, pending.sent_ns, now_ns);
    }
    if let Some(t) = ctx.timeline {
        let at = now_ns.saturating_sub(t.send_start);
        books.tally.seconds.ack(at, latency_us(pending.sent_ns, now_ns));
    }
    if !conn.refill {
        conn.refill = true;
        books.refill.push(slot);
    }
    let Some(chat) = ctx.plan.chats.get(conn.chat) else {
        return;
    };
    if ok.chat_id() != chat.chat_id {
        books.tally.fail("SendOk names another chat than the send".into());
        return;
    }
    let online = ctx.online.get(conn.chat).copied().unwrap_or(0);
    books.deltas.expected += online.saturating_sub(1);
    if let (Some(index), Some(acked)) = (seq_index(chat.baseline, ok.seq()), books.acked.get_mut(conn.chat)) {
        acked.insert(index);
    }
    observe(conn, ok.seq(), books);
}

/// A `Message`: delivery latency and the device's view of its chat.
fn on_message(conn: &mut Conn, message: fb::Message<'_>, now_ns: u64, ctx: &Context<'_>, books: &mut Books) {
    let Some(chat) = ctx.plan.chats.get(conn.chat) else {
        return;
    };
    if message.chat_id() != chat.chat_id {
        books
            .tally
            .fail("Message in a chat the user is not part of in this run".into());
        return;
    }
    if observe(conn, message.seq(), books) == Observation::Duplicate {
        return;
    }
    books.deltas.received += 1;
    let Some(stamp) = Stamp::parse_padded(message.text().unwrap_or_default(), ctx.padding) else {
        books
            .tally
            .fail("Message text is not the one the benchmark sent".into());
        return;
    };
    if stamp.sender != message.sender() {
        books
            .tally
            .fail("Message sender differs from the sender in its text".into());
    }
    if ctx.timeline.is_some_and(|t| t.counts(stamp.sent_ns)) {
        books.tally.delivered += 1;
        record(&mut books.tally.deliver, stamp.sent_ns, now_ns);
    }
    if let Some(t) = ctx.timeline {
        let at = now_ns.saturating_sub(t.send_start);
        books
            .tally
            .seconds
            .delivery(at, latency_us(stamp.sent_ns, now_ns));
    }
}

/// Feeds `seq` to the device's tracker and counts what it was.
fn observe(conn: &mut Conn, seq: u64, books: &mut Books) -> Observation {
    let observation = conn.tracker.observe(seq);
    match observation {
        Observation::InOrder => {}
        Observation::Duplicate => books.tally.duplicated += 1,
        Observation::Reordered => books.tally.reordered += 1,
    }
    observation
}

/// Writes queued bytes until the socket would block.
///
/// # Errors
/// Why the connection is dead.
fn flush(conn: &mut Conn) -> Result<(), String> {
    let Some(stream) = conn.stream.as_mut() else {
        return Err("no socket".into());
    };
    while !conn.outbuf.is_empty() {
        match stream.write(&conn.outbuf) {
            Ok(0) => return Err("write: socket closed".into()),
            Ok(n) => conn.outbuf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    stream.flush_buffered().map_err(|e| format!("write: {e}"))
}

/// Reads until the socket is drained; returns whether the stream ended.
///
/// A read that returns less than it asked for has drained the socket: epoll(7) says
/// so for stream sockets, and the next data raises a new edge. Stopping there
/// instead of reading on to `WouldBlock` saves a `recv` call per readiness event.
///
/// # Errors
/// Why the connection is dead.
fn fill(conn: &mut Conn, scratch: &mut [u8]) -> Result<bool, String> {
    let Some(stream) = conn.stream.as_mut() else {
        return Err("no socket".into());
    };
    loop {
        match stream.read(scratch) {
            Ok(0) => return Ok(true),
            Ok(n) => {
                conn.inbuf.extend_from_slice(scratch.get(..n).unwrap_or_default());
                if n < scratch.len() && stream.is_raw() {
                    return Ok(false);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize};
    use std::sync::{Barrier, OnceLock};

    use super::*;
    use crate::scenarios::messaging::{ChatPlan, UserPlan};

    fn send(sent_ns: u64) -> PendingSend {
        PendingSend {
            sent_ns,
            counted: true,
        }
    }

    #[test]
    fn pending_sends_are_matched_by_request_id_in_any_order() {
        let mut pending = Pending::new();
        let a = pending.push(send(1));
        let b = pending.push(send(2));
        let c = pending.push(send(3));
        assert_eq!((a, b, c), (FIRST_SEND_ID, FIRST_SEND_ID + 1, FIRST_SEND_ID + 2));
        assert_eq!(pending.take(b), Some(send(2)));
        assert_eq!(pending.take(b), None, "answered twice");
        assert_eq!(pending.live, 2);
        assert_eq!(pending.take(a), Some(send(1)));
        assert_eq!(pending.slots.len(), 1, "answered slots at the front are dropped");
        assert_eq!(pending.take(c), Some(send(3)));
        assert_eq!(pending.live, 0);
        assert!(pending.slots.is_empty());
        let d = pending.push(send(4));
        assert_eq!(d, FIRST_SEND_ID + 3, "ids keep counting up");
    }

    #[test]
    fn unknown_request_ids_match_nothing() {
        let mut pending = Pending::new();
        pending.push(send(1));
        assert_eq!(pending.take(0), None);
        assert_eq!(pending.take(HELLO_ID), None);
        assert_eq!(pending.take(FIRST_SEND_ID + 1), None);
        assert_eq!(pending.take(u64::MAX), None);
        assert_eq!(pending.live, 1);
    }

    #[test]
    fn clearing_forgets_waiting_sends_but_not_the_id_sequence() {
        let mut pending = Pending::new();
        pending.push(send(1));
        pending.push(send(2));
        assert_eq!(pending.clear(), 2);
        assert_eq!(pending.take(FIRST_SEND_ID), None);
        assert_eq!(pending.push(send(3)), FIRST_SEND_ID + 2);
    }

    #[test]
    fn tallies_merge() {
        let mut a = Tally::new();
        a.sent = 2;
        a.fail("x".into());
        record(&mut a.ack, 0, 5_000);
        let mut b = Tally::new();
        b.sent = 3;
        b.duplicated = 1;
        b.fail("x".into());
        record(&mut b.ack, 0, 7_000);
        a.merge(b);
        assert_eq!((a.sent, a.duplicated, a.errors), (5, 1, 2));
        assert_eq!(a.reasons.get("x"), Some(&2));
        assert_eq!(a.ack.len(), 2);
        assert_eq!(a.ack.max(), 7);
    }

    #[test]
    fn refusals_are_counted_per_code_and_skips_merge() {
        let mut f = Fixture::new();
        for (code, n) in [(ErrorCode::RateLimited, 2), (ErrorCode::Unavailable, 1)] {
            for _ in 0..n {
                let id = f.conn.pending.push(PendingSend {
                    sent_ns: 0,
                    counted: false,
                });
                f.receive(id, Body::Error(natter_wire::ErrorBody::new(code, "no", id)), 0);
            }
        }
        // A code this build does not know yet (a newer natterd's) keeps its number.
        let id = f.conn.pending.push(PendingSend {
            sent_ns: 0,
            counted: false,
        });
        let mut unknown = natter_wire::ErrorBody::new(ErrorCode::Internal, "new", id);
        unknown.code = 60_000;
        f.receive(id, Body::Error(unknown), 0);
        let codes = &f.books.tally.codes;
        assert_eq!(codes.get("rate_limited"), Some(&2));
        assert_eq!(codes.get("unavailable"), Some(&1));
        assert_eq!(codes.get("code 60000"), Some(&1));
        assert_eq!(f.conn.pending.live, 0);

        let mut a = Tally::new();
        a.skipped = 3;
        a.codes.insert("rate_limited".into(), 1);
        let mut b = Tally::new();
        b.skipped = 4;
        b.codes.insert("rate_limited".into(), 2);
        a.merge(b);
        assert_eq!(a.skipped, 7);
        assert_eq!(a.codes.get("rate_limited"), Some(&3));
    }

    #[test]
    fn latencies_are_recorded_in_microseconds_and_at_least_one() {
        let mut h = latency_histogram();
        record(&mut h, 10, 10);
        record(&mut h, 0, 2_500_000);
        assert_eq!(h.min(), 1);
        assert_eq!(h.max(), h.highest_equivalent(2_500));
    }

    /// A device of a DM between users 7 (this one) and 8, in chat 42 whose last
    /// `seq` before the run was 10, with the books that frame handling writes.
    struct Fixture {
        plan: Plan,
        shared: Shared,
        conn: Conn,
        books: Books,
    }

    impl Fixture {
        fn new() -> Fixture {
            let plan = Plan {
                chats: vec![ChatPlan {
                    chat_id: 42,
                    baseline: 10,
                }],
                users: vec![UserPlan {
                    user_id: 7,
                    token: String::new(),
                    chat: 0,
                    sends: true,
                }],
                setup_errors: 0,
            };
            let shared = Shared {
                origin: Instant::now(),
                threads: 1,
                connected: Barrier::new(1),
                go: Barrier::new(1),
                timeline: OnceLock::new(),
                online: vec![AtomicU64::new(2)],
                in_flight: AtomicI64::new(0),
                expected: AtomicU64::new(0),
                received: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                stopped: AtomicUsize::new(0),
            };
            let conn = Conn {
                stream: None,
                state: ConnState::Active,
                since: Instant::now(),
                user: 0,
                chat: 0,
                user_id: 7,
                inbuf: BytesMut::new(),
                outbuf: BytesMut::new(),
                dirty: false,
                refill: false,
                spoke: false,
                tracker: SeqTracker::new(10),
                pending: Pending::new(),
                counter: 0,
                seen_seq: 0,
                acked_seq: 0,
            };
            let books = Books {
                tally: Tally::new(),
                acked: vec![SeqSet::default()],
                deltas: Deltas::default(),
                refill: Vec::new(),
                connected: 0,
                handshakes: 0,
                heartbeat: None,
            };
            Fixture {
                plan,
                shared,
                conn,
                books,
            }
        }

        /// Hands `body` (with `request_id`) to the frame handling at `now_ns`, in a run
        /// whose measured phase is [1 s, 2 s).
        fn receive(&mut self, request_id: u64, body: Body, now_ns: u64) {
            let limits = Limits::default();
            let online = [2];
            let ctx = Context {
                plan: &self.plan,
                shared: &self.shared,
                limits: &limits,
                online: &online,
                timeline: Some(Timeline {
                    send_start: 0,
                    measure_start: 1_000_000_000,
                    send_end: 2_000_000_000,
                    drain_deadline: 3_000_000_000,
                }),
                padding: 0,
            };
            let bytes = Frame::new(request_id, body).encode();
            handle_frame(&mut self.conn, 0, &bytes, now_ns, &ctx, &mut self.books).unwrap();
        }

        fn message(&mut self, seq: u64, sent_ns: u64, now_ns: u64) {
            let mut text = String::new();
            Stamp {
                sent_ns,
                sender: 8,
                counter: seq,
            }
            .write_to(&mut text);
            let message = natter_wire::Message {
                chat_id: 42,
                seq,
                sender: 8,
                server_ts_ms: 0,
                client_msg_id: seq,
                text,
                ..natter_wire::Message::default()
            };
            self.receive(0, Body::Message(message), now_ns);
        }
    }

    #[test]
    fn frames_feed_latencies_counts_and_the_device_view() {
        let mut f = Fixture::new();
        let id = f.conn.pending.push(PendingSend {
            sent_ns: 1_100_000_000,
            counted: true,
        });
        let ok = natter_wire::SendOk {
            client_msg_id: 1,
            chat_id: 42,
            seq: 11,
            server_ts_ms: 0,
        };
        f.receive(id, Body::SendOk(ok), 1_103_000_000);
        assert_eq!(f.books.tally.acked, 1);
        assert_eq!(
            f.books.tally.ack.max(),
            f.books.tally.ack.highest_equivalent(3_000)
        );
        assert!(
            f.books.acked[0].contains(0),
            "seq 11 is the first after baseline 10"
        );
        assert_eq!(f.books.deltas.expected, 1, "one other member online");
        assert_eq!(f.books.deltas.in_flight, -1);
        assert_eq!(f.books.refill, [0], "the window has room again");

        // The friend's message: a measured delivery, 2 ms after it was meant to be sent.
        f.message(12, 1_500_000_000, 1_502_000_000);
        // A warm-up message: seen, but not a measured delivery.
        f.message(13, 500_000_000, 1_600_000_000);
        assert_eq!(f.books.tally.delivered, 1);
        assert_eq!(f.books.tally.deliver.len(), 1);
        assert_eq!(f.books.deltas.received, 2);
        assert_eq!((f.books.tally.duplicated, f.books.tally.reordered), (0, 0));

        f.message(13, 500_000_000, 1_700_000_000);
        assert_eq!(f.books.tally.duplicated, 1);
        assert_eq!(f.books.deltas.received, 2, "a duplicate is not a new delivery");
        f.message(15, 1_500_000_000, 1_800_000_000);
        assert_eq!(f.books.tally.reordered, 1, "14 was skipped");
        assert_eq!(f.books.tally.errors, 0);
    }

    #[test]
    fn unexpected_answers_and_refusals_are_errors() {
        let mut f = Fixture::new();
        let ok = natter_wire::SendOk {
            client_msg_id: 1,
            chat_id: 42,
            seq: 11,
            server_ts_ms: 0,
        };
        f.receive(99, Body::SendOk(ok), 0);
        assert_eq!(f.books.tally.errors, 1, "no send waits for request 99");

        let id = f.conn.pending.push(PendingSend {
            sent_ns: 0,
            counted: false,
        });
        let refusal = natter_wire::ErrorBody::new(ErrorCode::RateLimited, "slow down", id);
        f.receive(id, Body::Error(refusal), 0);
        assert_eq!(f.books.tally.errors, 2);
        assert_eq!(f.conn.pending.live, 0, "the refused send is no longer waited for");
        assert!(f.books.tally.reasons.keys().any(|r| r.contains("rate_limited")));

        let mut text = String::new();
        Stamp {
            sent_ns: 0,
            sender: 8,
            counter: 1,
        }
        .write_to(&mut text);
        let elsewhere = natter_wire::Message {
            chat_id: 43,
            seq: 1,
            sender: 8,
            server_ts_ms: 0,
            client_msg_id: 1,
            text,
            ..natter_wire::Message::default()
        };
        f.receive(0, Body::Message(elsewhere), 0);
        assert_eq!(
            f.books.tally.errors, 3,
            "a message in a chat this device is not in"
        );
    }
}
