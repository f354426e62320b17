//! The push thread (`natter-push`) and its gateway sender threads
//! (`natter-push-send-N`): the driver around [`Scheduler`].
//!
//! Each turn the push thread takes up to [`EVENTS_PER_TURN`] events (facts of
//! commits, pusher changes, read markers) and every gateway result, feeds
//! them to the scheduler, takes what is due (at most [`DUE_PER_TURN`]), asks
//! the devices' home cores in one command per core whether each has a live
//! session, and for the others reads the newest message and the unread
//! counts from the store and hands a job to the sender pool. Watermarks of
//! what was sent (or delivered live) are written in one batch per turn. It
//! never runs on an event loop, and the event loops never wait for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustc_hash::{FxHashMap, FxHashSet};

use super::gateway::{self, Client, FailureClass, Job, Notification, Outcome};
use super::schedule::{ScheduleConfig, Scheduler};
use super::{BACKOFF_BASE, BACKOFF_CAP, EVENT_QUEUE_CAPACITY, Event, Fact, MAX_OWED, PushConfig, PushHandle};
use crate::ids::{ChatId, DeviceId, Seq, UserId};
use crate::metrics::Metrics;
use crate::runtime::{Command, Mesh, Refused};
use crate::store::{PushFormat, Pusher, Store, StoreError};

/// Events taken per turn: enough to amortise the turn, small enough that due
/// notifications are not held back behind a flood of commits.
pub const EVENTS_PER_TURN: usize = 4096;

/// Due entries handled per turn (one liveness command per core for all of
/// them, one watermark batch).
pub const DUE_PER_TURN: usize = 1024;

/// Jobs waiting for a sender thread, per sender. When full, due entries wait
/// [`BUSY_RETRY`] instead (nothing is dropped).
pub const JOBS_PER_SENDER: usize = 64;

/// How long the push thread waits for the home cores' liveness answers. A
/// core answers within a loop turn; a core that does not within a second is
/// stuck, and its devices are asked again later.
pub const LIVENESS_DEADLINE: Duration = Duration::from_secs(1);

/// Delay for an entry that could not be attempted now (full sender queue, a
/// core's full queue or missing answer): not an attempt, no backoff.
pub const BUSY_RETRY: Duration = Duration::from_millis(50);

/// How often each gateway failure class may be logged (with the number of
/// failures of that class since the previous line).
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// How often the push thread applies the messages it gathered (one pass over
/// each busy chat's members, whatever the number of messages): a busy 100-member
/// group costs 10 passes a second, not one per commit. A pass was most of the
/// push thread's time at 20 ms (50 a second, each a lookup per member and
/// chat). It delays a first notification by at most this on top of the settle
/// delay (200 ms); due entries and gateway results are handled every turn.
pub const EVENT_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// How often watermarks are written (one batch) while events keep coming; an
/// idle push thread writes them at once. A kill -9 within this after a
/// notification went out makes it go out once more after the restart: a rare
/// duplicate, for ~10 journal writes a second under load instead of one per turn.
pub const MARK_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Watermarks that make the push thread write at once.
pub const MAX_PENDING_MARKS: usize = 8192;

/// Most `(device, chat)` pairs remembered as shown a notification (for badge
/// updates after a read; 24 bytes each).
pub const MAX_NOTIFIED: usize = 1_000_000;

/// Most chats whose member lists the push thread caches (cleared when full;
/// a miss is one range read of `members`).
pub const MAX_CACHED_CHATS: usize = 65_536;

/// How much the push thread and its gateway senders lower their scheduling
/// priority (Linux nice +10: about a tenth of a nice-0 thread's CPU weight
/// while the CPUs are contended, the same as any thread when they are not).
/// Push is off the message path: when the machine is saturated by sends, the
/// event loops and the storage writer get the CPU first, and notifications
/// wait a little longer — which also makes them coalesce more, so the push
/// thread's work per message falls as the load rises. Nothing owed is lost by
/// waiting (it is derived from the store).
pub const PUSH_NICE: i32 = 10;

/// Lowers the calling thread's priority by [`PUSH_NICE`]. On Linux the nice
/// value is per thread: `setpriority(PRIO_PROCESS, 0, …)` changes the caller
/// only (setpriority(2), "BUGS"), which is what is wanted here. Raising one's
/// own nice value needs no privilege; a failure is logged and the thread runs
/// at normal priority.
fn lower_priority() {
    let result = rustix::process::getpriority_process(None)
        .and_then(|current| rustix::process::setpriority_process(None, (current + PUSH_NICE).min(19)));
    if let Err(e) = result {
        tracing::warn!(error = %e, "push: cannot lower the push threads' priority; running at normal priority");
    }
}

/// Most users whose chat lists, and most `(user, chat)` read markers, the
/// push thread caches for the unread counts (each cache emptied when full; a
/// miss is one store read). ~1M markers is ~40 MB at most.
pub const MAX_CACHED_COUNTS: usize = 1 << 20;

/// The running push thread; stop it with [`PushService::shutdown`].
#[derive(Debug)]
pub struct PushService {
    thread: JoinHandle<()>,
    stop: Sender<()>,
}

impl PushService {
    /// Stops the push thread and its senders (attempts in flight finish or time out).
    pub fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Starts the push thread and `config.senders` sender threads. Returns the
/// handle the writer and the side-port feed.
///
/// # Errors
/// A thread could not be spawned.
pub fn start(
    config: PushConfig,
    store: Arc<Store>,
    mesh: Mesh,
    metrics: Arc<Metrics>,
) -> std::io::Result<(PushService, PushHandle)> {
    let config = Arc::new(config);
    let (events_tx, events) = crossbeam_channel::bounded(EVENT_QUEUE_CAPACITY);
    let overflow = Arc::new(AtomicBool::new(false));
    let senders = config.senders.max(1);
    let (jobs_tx, jobs) = crossbeam_channel::bounded::<Job>(senders * JOBS_PER_SENDER);
    let (results_tx, results) = crossbeam_channel::unbounded();
    let client = Client::new(
        config.timeout.min(Duration::from_secs(5)),
        config.timeout,
        senders * 2,
        &config.gateway_ca,
    );
    for i in 0..senders {
        let (jobs, results_tx, client, metrics) =
            (jobs.clone(), results_tx.clone(), client.clone(), metrics.clone());
        std::thread::Builder::new()
            .name(format!("natter-push-send-{i}"))
            .spawn(move || {
                lower_priority();
                // Ends when the push thread drops the job queue.
                for job in jobs {
                    let started = Instant::now();
                    let outcome = client.send(&job);
                    metrics.push.observe_latency(started.elapsed());
                    if results_tx.send((job, outcome)).is_err() {
                        return;
                    }
                }
            })?;
    }
    let (stop, stop_rx) = crossbeam_channel::bounded(1);
    let handle = PushHandle {
        events: events_tx,
        overflow: overflow.clone(),
        config: config.clone(),
    };
    let schedule = ScheduleConfig {
        coalesce: config.coalesce,
        settle: config.settle,
        backoff_base: BACKOFF_BASE.min(config.coalesce.max(Duration::from_millis(100))),
        backoff_cap: BACKOFF_CAP,
        rate_per_minute: config.rate_per_minute,
        max_owed: MAX_OWED,
    };
    let seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
    let thread = std::thread::Builder::new()
        .name("natter-push".into())
        .spawn(move || {
            lower_priority();
            let mut push = PushThread {
                config,
                store,
                mesh,
                metrics,
                scheduler: Scheduler::new(schedule, seed),
                pushers: FxHashMap::default(),
                members: FxHashMap::default(),
                last_seqs: FxHashMap::default(),
                new_chats: Vec::new(),
                chats_of: FxHashMap::default(),
                read_markers: FxHashMap::default(),
                marks_known: FxHashMap::default(),
                events,
                overflow,
                jobs: jobs_tx,
                results,
                marks: Vec::new(),
                failures: HashMap::new(),
                bursts: FxHashMap::default(),
                notified: FxHashSet::default(),
            };
            push.run(&stop_rx);
        })?;
    Ok((PushService { thread, stop }, handle))
}

struct PushThread {
    config: Arc<PushConfig>,
    store: Arc<Store>,
    mesh: Mesh,
    metrics: Arc<Metrics>,
    scheduler: Scheduler,
    /// Every pusher, by user (a user has one per device at most).
    pushers: FxHashMap<UserId, Vec<Pusher>>,
    /// Member lists of chats seen (at most [`MAX_CACHED_CHATS`]).
    members: FxHashMap<ChatId, Arc<[UserId]>>,
    /// The newest committed seq of each chat whose messages this thread has
    /// seen since it started (from the writer's facts, which come after the
    /// fsync): the unread counts take it instead of a reverse range read of
    /// `messages` per notification (a fifth of natterd's CPU with push on).
    /// At most [`MAX_CACHED_CHATS`], emptied when full (a miss reads the store).
    last_seqs: FxHashMap<ChatId, Seq>,
    /// Chats whose first message since `last_seqs` last lost them was
    /// gathered this pass: their members' cached chat lists are dropped
    /// (a chat is created outside the writer, so its first message is the
    /// first the push thread hears of it; before that its unread count is 0).
    new_chats: Vec<ChatId>,
    /// Each user's chats (`user_chats`), for the unread counts: read once per
    /// user instead of once per notification. Emptied on a membership fact
    /// and on a rebuild; a user's entry is dropped on a new chat of theirs.
    chats_of: FxHashMap<UserId, Arc<[ChatId]>>,
    /// Read markers by `(user, chat)`, for the unread counts: filled from the
    /// store on a miss and moved forward by `Event::Read` (the side-port is
    /// their only writer and tells the push thread after each); emptied on a
    /// rebuild, since an overflow may have dropped a `Read`.
    read_markers: FxHashMap<(UserId, ChatId), Seq>,
    /// The push watermarks known to be stored (read or written by this
    /// thread), so a watermark write costs no read-before-write. A device's
    /// entries are dropped when its pusher is set or removed (registering
    /// writes watermarks of its own); emptied on a rebuild.
    marks_known: FxHashMap<DeviceId, FxHashMap<ChatId, Seq>>,
    events: Receiver<Event>,
    overflow: Arc<AtomicBool>,
    jobs: Sender<Job>,
    results: Receiver<(Job, Outcome)>,
    /// Watermarks to write at the end of the turn.
    marks: Vec<(DeviceId, ChatId, Seq)>,
    /// Per failure class: when it was last logged and how many since.
    failures: HashMap<FailureClass, (Instant, u64)>,
    /// Messages gathered this turn, per chat (applied by `apply_bursts`).
    bursts: FxHashMap<ChatId, Burst>,
    /// `(device, chat)` shown a message notification since the chat was last
    /// read: a read then owes it a badge update. In memory only (a restart
    /// forgets it: the next notification carries the right counts anyway); at
    /// most [`MAX_NOTIFIED`], emptied when full.
    notified: FxHashSet<(DeviceId, ChatId)>,
}

/// The messages of one chat gathered in one turn.
#[derive(Debug, Default)]
struct Burst {
    /// Messages in all.
    count: u64,
    /// Per sender: their newest seq and how many they sent.
    by_sender: Vec<(UserId, Seq, u64)>,
}

impl PushThread {
    fn run(&mut self, stop: &Receiver<()>) {
        self.rebuild(Instant::now());
        let mut flushed = Instant::now();
        let mut applied = Instant::now();
        loop {
            let now = Instant::now();
            let mut wait = self
                .scheduler
                .poll_timeout()
                .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now))
                .min(Duration::from_secs(1));
            if !self.bursts.is_empty() {
                wait = wait.min((applied + EVENT_BATCH_WINDOW).saturating_duration_since(now));
            }
            crossbeam_channel::select! {
                recv(stop) -> _ => {
                    self.flush_marks();
                    return;
                }
                recv(self.events) -> e => if let Ok(e) = e { self.handle_event(e, Instant::now()) },
                recv(self.results) -> r => if let Ok((job, outcome)) = r { self.handle_result(&job, outcome, Instant::now()) },
                default(wait) => {}
            }
            for _ in 0..EVENTS_PER_TURN {
                match self.events.try_recv() {
                    Ok(e) => self.handle_event(e, Instant::now()),
                    Err(_) => break,
                }
            }
            // Messages gathered over the batch window cost one pass over each
            // busy chat's members, not one per commit (due entries and
            // results are still handled every turn).
            let now = Instant::now();
            if now.saturating_duration_since(applied) >= EVENT_BATCH_WINDOW {
                self.apply_bursts(now);
                applied = now;
            }
            while let Ok((job, outcome)) = self.results.try_recv() {
                self.handle_result(&job, outcome, now);
            }
            let overflowed = self.scheduler.take_overflow() | self.overflow.swap(false, Ordering::Relaxed);
            if overflowed {
                self.rebuild(now);
            }
            self.handle_due(Instant::now());
            // Under load at most every MARK_FLUSH_INTERVAL; when idle at once
            // (so the queue depth below never shows 0 before the marks are written).
            if self.marks.len() >= MAX_PENDING_MARKS
                || flushed.elapsed() >= MARK_FLUSH_INTERVAL
                || self.events.is_empty()
            {
                self.flush_marks();
                flushed = Instant::now();
            }
            // Chats with gathered messages not yet applied count as queued:
            // the depth is 0 only when nothing at all is pending.
            self.metrics.push.queue_depth.store(
                (self.scheduler.len() + self.bursts.len()) as u64,
                Ordering::Relaxed,
            );
        }
    }

    /// Loads every pusher and derives what each is owed from the store (at
    /// start, and after an overflow). Owed entries already held coalesce.
    fn rebuild(&mut self, now: Instant) {
        let pushers = match self.store.all_pushers() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "push: cannot load pushers; retrying after the next event");
                self.overflow.store(true, Ordering::Relaxed);
                return;
            }
        };
        self.pushers.clear();
        // Facts may have been dropped (a full queue): the store answers again.
        self.last_seqs.clear();
        self.chats_of.clear();
        self.read_markers.clear();
        self.marks_known.clear();
        let mut owed = 0usize;
        for pusher in pushers {
            match self.store.owed_at_start(&pusher) {
                Ok(list) => {
                    for o in list {
                        self.scheduler.owe(o.user, o.device, o.chat, o.seq, now);
                        owed += 1;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, device = %pusher.device, "push: cannot derive what is owed")
                }
            }
            self.pushers.entry(pusher.user).or_default().push(pusher);
        }
        tracing::info!(
            pushers = self.pushers.values().map(Vec::len).sum::<usize>(),
            owed,
            "push: table built from the store"
        );
    }

    fn handle_event(&mut self, event: Event, now: Instant) {
        if !matches!(event, Event::Committed(_)) {
            // In order with the messages gathered before it.
            self.apply_bursts(now);
        }
        match event {
            Event::Committed(facts) => {
                for fact in facts {
                    self.handle_fact(fact, now);
                }
            }
            Event::PusherSet(pusher) => {
                self.marks_known.remove(&pusher.device);
                let list = self.pushers.entry(pusher.user).or_default();
                list.retain(|p| p.device != pusher.device);
                list.push(pusher);
            }
            Event::PusherRemoved(user, device) => {
                self.marks_known.remove(&device);
                self.forget_pusher(user, device);
            }
            Event::Read(user, chat, seq) => {
                if let Some(known) = self.read_markers.get_mut(&(user, chat)) {
                    *known = (*known).max(seq);
                }
                for device in self.devices_of(user) {
                    self.scheduler.cancel(device, chat, seq);
                    self.marks.push((device, chat, seq));
                    // Its badge shows counts from before the read: lower it.
                    if self.notified.remove(&(device, chat)) {
                        self.scheduler.owe_badge(user, device, chat, seq, now);
                    }
                }
            }
        }
    }

    fn handle_fact(&mut self, fact: Fact, now: Instant) {
        match fact {
            Fact::Message { chat, seq, sender } => {
                if !self.last_seqs.contains_key(&chat) {
                    if self.last_seqs.len() >= MAX_CACHED_CHATS {
                        self.last_seqs.clear();
                    }
                    self.new_chats.push(chat);
                }
                let last = self.last_seqs.entry(chat).or_insert(seq);
                *last = (*last).max(seq);
                let burst = self.bursts.entry(chat).or_default();
                burst.count += 1;
                match burst.by_sender.iter_mut().find(|(u, ..)| *u == sender) {
                    Some(entry) => {
                        entry.1 = entry.1.max(seq);
                        entry.2 += 1;
                    }
                    None => burst.by_sender.push((sender, seq, 1)),
                }
            }
            Fact::Cursor { device, chat, seq } => {
                self.apply_bursts(now);
                self.scheduler.cancel(device, chat, seq);
            }
            Fact::Membership { chat } => {
                self.apply_bursts(now);
                self.members.remove(&chat);
                self.chats_of.clear();
            }
        }
    }

    /// Applies the gathered messages, one pass over each chat's members: a
    /// member is owed the newest message not its own (coalesced with what is
    /// owed already); its own newest message cancels what it was owed before.
    fn apply_bursts(&mut self, now: Instant) {
        if self.bursts.is_empty() {
            return;
        }
        for chat in std::mem::take(&mut self.new_chats) {
            if let Some(members) = self.members_of(chat) {
                for member in members.iter() {
                    self.chats_of.remove(member);
                }
            }
        }
        let bursts = std::mem::take(&mut self.bursts);
        for (chat, burst) in bursts {
            let Some(members) = self.members_of(chat) else {
                continue;
            };
            for member in members.iter() {
                let Some(list) = self.pushers.get(member) else {
                    continue;
                };
                let own = burst.by_sender.iter().find(|(u, ..)| u == member);
                let (own_seq, own_count) = own.map_or((Seq(0), 0), |(_, s, c)| (*s, *c));
                let others = burst.count - own_count;
                let newest_other = burst
                    .by_sender
                    .iter()
                    .filter(|(u, ..)| u != member)
                    .map(|(_, s, _)| *s)
                    .max()
                    .unwrap_or(Seq(0));
                for p in list {
                    if own.is_some() {
                        // Their own message: they have seen the chat up to here.
                        self.scheduler.cancel(p.device, chat, own_seq);
                    }
                    if others > 0 && newest_other > own_seq {
                        let joined = self.scheduler.owe(p.user, p.device, chat, newest_other, now);
                        let folded = if joined { others } else { others - 1 };
                        self.metrics.push.coalesced.fetch_add(folded, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// The last seq of `c` as this thread knows it (see `last_seqs`); for the
    /// notification's own chat at least `seq`, which is committed. `None`: ask
    /// the store.
    fn known_last_seq(&self, c: ChatId, chat: ChatId, seq: Seq) -> Option<Seq> {
        let known = self.last_seqs.get(&c).copied();
        if c == chat {
            known.map(|k| k.max(seq))
        } else {
            known
        }
    }

    fn members_of(&mut self, chat: ChatId) -> Option<Arc<[UserId]>> {
        if let Some(m) = self.members.get(&chat) {
            return Some(m.clone());
        }
        match self.store.members(chat) {
            Ok(list) => {
                if self.members.len() >= MAX_CACHED_CHATS {
                    self.members.clear();
                }
                let list: Arc<[UserId]> = list.into();
                self.members.insert(chat, list.clone());
                Some(list)
            }
            Err(e) => {
                // What is owed is still derivable: rebuild once the store answers.
                tracing::error!(error = %e, %chat, "push: cannot read members; rebuilding later");
                self.overflow.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    fn devices_of(&self, user: UserId) -> Vec<DeviceId> {
        self.pushers
            .get(&user)
            .map(|l| l.iter().map(|p| p.device).collect())
            .unwrap_or_default()
    }

    fn pusher(&self, user: UserId, device: DeviceId) -> Option<&Pusher> {
        self.pushers.get(&user)?.iter().find(|p| p.device == device)
    }

    fn forget_pusher(&mut self, user: UserId, device: DeviceId) {
        if let Some(list) = self.pushers.get_mut(&user) {
            list.retain(|p| p.device != device);
            if list.is_empty() {
                self.pushers.remove(&user);
            }
        }
        self.scheduler.forget_device(device);
    }

    /// Takes what is due, asks the home cores which devices are live, and
    /// hands the others to the senders.
    fn handle_due(&mut self, now: Instant) {
        let due = self.scheduler.poll_due(now, DUE_PER_TURN);
        if due.is_empty() {
            return;
        }
        let cores = self.mesh.len();
        let mut by_core: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, d) in due.iter().enumerate() {
            by_core.entry(d.user.home_core(cores).0).or_default().push(i);
        }
        let mut live: Vec<Option<bool>> = vec![None; due.len()];
        let mut waiting = Vec::new();
        for (core, idx) in by_core {
            let devices = idx
                .iter()
                .filter_map(|i| due.get(*i).map(|d| (d.user, d.device)))
                .collect();
            let (reply, answer) = crossbeam_channel::bounded(1);
            let cmd = Command::PushLiveness {
                devices,
                silent_after: self.config.silent_after,
                reply,
            };
            match self.mesh.offer(crate::ids::CoreId(core), cmd) {
                Ok(()) => waiting.push((idx, answer)),
                Err(Refused::Full(_) | Refused::Stopped) => {}
            }
        }
        let deadline = Instant::now() + LIVENESS_DEADLINE;
        for (idx, answer) in waiting {
            if let Ok(flags) = answer.recv_deadline(deadline) {
                for (i, flag) in idx.into_iter().zip(flags) {
                    if let Some(slot) = live.get_mut(i) {
                        *slot = Some(flag);
                    }
                }
            }
        }
        let now = Instant::now();
        // The newest message of each chat, read once per turn for all its devices.
        let mut newest: HashMap<(ChatId, Seq), Option<crate::store::StoredMessage>> = HashMap::new();
        for (d, live) in due.iter().zip(live) {
            match live {
                None => self.scheduler.handle_later(d.device, d.chat, now, BUSY_RETRY),
                Some(true) => {
                    self.metrics.push.skipped_live.fetch_add(1, Ordering::Relaxed);
                    self.marks.push((d.device, d.chat, d.seq));
                    self.scheduler.handle_live(d.device, d.chat, now);
                }
                Some(false) => self.dispatch(d, now, &mut newest),
            }
        }
    }

    /// Builds the notification for `device` and queues it for a sender.
    fn dispatch(
        &mut self,
        due: &super::Due,
        now: Instant,
        newest: &mut HashMap<(ChatId, Seq), Option<crate::store::StoredMessage>>,
    ) {
        let (user, device, chat, seq) = (due.user, due.device, due.chat, due.seq);
        let Some(pusher) = self.pusher(user, device).cloned() else {
            self.scheduler.handle_dropped(device, chat);
            return;
        };
        let built = if due.badge_only {
            self.build_badge_job(&pusher, chat, seq).map(Some)
        } else {
            self.build_job(&pusher, chat, seq, newest)
        };
        let job = match built {
            Ok(Some(job)) => job,
            Ok(None) => {
                // Read meanwhile: nothing is owed any more.
                self.marks.push((device, chat, seq));
                self.scheduler.handle_dropped(device, chat);
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, %chat, "push: store read failed; retrying");
                self.scheduler.handle_retry(device, chat, now);
                return;
            }
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.scheduler.handle_later(device, chat, now, BUSY_RETRY);
            }
        }
    }

    fn build_job(
        &mut self,
        pusher: &Pusher,
        chat: ChatId,
        seq: Seq,
        newest: &mut HashMap<(ChatId, Seq), Option<crate::store::StoredMessage>>,
    ) -> Result<Option<Job>, StoreError> {
        let (chat_unread, total_unread) = self.unread_counts(pusher.user, chat, seq)?;
        if chat_unread == 0 {
            return Ok(None);
        }
        let message = match newest.get(&(chat, seq)) {
            Some(m) => m.clone(),
            None => {
                let m = self
                    .store
                    .messages(chat, Seq(seq.0.saturating_sub(1)), 1)?
                    .into_iter()
                    .next();
                newest.insert((chat, seq), m.clone());
                m
            }
        };
        let Some(message) = message else {
            return Ok(None);
        };
        let with_text = pusher.format == PushFormat::WithText;
        let sender_name = if with_text {
            self.store.username(message.sender)?
        } else {
            None
        };
        let note = Notification {
            chat,
            seq,
            sender: message.sender,
            sender_name: sender_name.as_deref(),
            text: with_text.then_some(message.text.as_str()),
            chat_unread,
            total_unread,
        };
        let body = gateway::body(
            &note,
            &pusher.app_id,
            &pusher.pushkey,
            pusher.created_ms / 1000,
            pusher.format,
            self.config.text_max,
        );
        Ok(Some(Job {
            user: pusher.user,
            device: pusher.device,
            chat,
            seq,
            gateway_url: pusher.gateway_url.clone(),
            pushkey: pusher.pushkey.clone(),
            body,
            badge_only: false,
        }))
    }

    /// The unread count of `user` in `chat` and their total (the badge), as
    /// `Store::unread_counts` computes them, from this thread's caches: the
    /// last seqs it saw committed, the user's chats, their read markers; the
    /// store answers only the misses.
    fn unread_counts(&mut self, user: UserId, chat: ChatId, seq: Seq) -> Result<(u64, u64), StoreError> {
        let chats = match self.chats_of.get(&user) {
            Some(list) => list.clone(),
            None => {
                let list: Arc<[ChatId]> = self.store.user_chats(user)?.into();
                if self.chats_of.len() >= MAX_CACHED_COUNTS {
                    self.chats_of.clear();
                }
                self.chats_of.insert(user, list.clone());
                list
            }
        };
        let (mut this, mut total) = (0, 0u64);
        for &c in chats.iter() {
            let last = match self.known_last_seq(c, chat, seq) {
                Some(last) => last,
                None => self.store.last_seq(c)?,
            };
            let read = match self.read_markers.get(&(user, c)) {
                Some(read) => *read,
                None => {
                    let read = self.store.read_marker(user, c)?;
                    if self.read_markers.len() >= MAX_CACHED_COUNTS {
                        self.read_markers.clear();
                    }
                    self.read_markers.insert((user, c), read);
                    read
                }
            };
            let unread = last.0.saturating_sub(read.0);
            if c == chat {
                this = unread;
            }
            total = total.saturating_add(unread);
        }
        Ok((this, total))
    }

    /// A counts-only notification (the chat was read after one was shown).
    fn build_badge_job(&mut self, pusher: &Pusher, chat: ChatId, seq: Seq) -> Result<Job, StoreError> {
        let (chat_unread, total_unread) = self.unread_counts(pusher.user, chat, seq)?;
        Ok(Job {
            user: pusher.user,
            device: pusher.device,
            chat,
            seq,
            gateway_url: pusher.gateway_url.clone(),
            pushkey: pusher.pushkey.clone(),
            body: gateway::badge_body(
                chat,
                chat_unread,
                total_unread,
                &pusher.app_id,
                &pusher.pushkey,
                pusher.created_ms / 1000,
                pusher.format,
            ),
            badge_only: true,
        })
    }

    fn handle_result(&mut self, job: &Job, outcome: Outcome, now: Instant) {
        let m = &self.metrics.push;
        match outcome {
            Outcome::Sent => {
                m.sent.fetch_add(1, Ordering::Relaxed);
                if !job.badge_only {
                    if self.notified.len() >= MAX_NOTIFIED {
                        self.notified.clear();
                    }
                    self.notified.insert((job.device, job.chat));
                }
                self.marks.push((job.device, job.chat, job.seq));
                self.scheduler.handle_sent(job.device, job.chat, now);
            }
            Outcome::Rejected => {
                m.rejected.fetch_add(1, Ordering::Relaxed);
                match self.store.remove_pusher(job.user, job.device, Some(&job.pushkey)) {
                    Ok(_) => {
                        tracing::info!(user = %job.user, device = %job.device, "push: the gateway rejected the pushkey; pusher removed")
                    }
                    Err(e) => tracing::error!(error = %e, "push: removing a rejected pusher failed"),
                }
                // A pusher registered again since (another key) stays.
                let still_same = self
                    .pusher(job.user, job.device)
                    .is_some_and(|p| p.pushkey == job.pushkey);
                if still_same {
                    self.forget_pusher(job.user, job.device);
                } else {
                    self.scheduler.handle_dropped(job.device, job.chat);
                }
            }
            Outcome::Retry(class) => {
                m.failed.fetch_add(1, Ordering::Relaxed);
                m.retried.fetch_add(1, Ordering::Relaxed);
                self.log_failure(class, job);
                self.scheduler.handle_retry(job.device, job.chat, now);
            }
            Outcome::Refused => {
                m.failed.fetch_add(1, Ordering::Relaxed);
                self.log_failure(FailureClass::Refused, job);
                // The gateway will refuse it again: give it up (it stays marked).
                self.marks.push((job.device, job.chat, job.seq));
                self.scheduler.handle_dropped(job.device, job.chat);
            }
        }
    }

    /// One log line per failure class per [`FAILURE_LOG_INTERVAL`], naming the
    /// gateway's host only (never the pushkey, never the URL's path or query).
    fn log_failure(&mut self, class: FailureClass, job: &Job) {
        let now = Instant::now();
        let entry = self
            .failures
            .entry(class)
            .or_insert((now - FAILURE_LOG_INTERVAL * 2, 0));
        entry.1 += 1;
        if now.saturating_duration_since(entry.0) >= FAILURE_LOG_INTERVAL {
            let (class, gateway, failures) = (class.as_str(), host_of(&job.gateway_url), entry.1);
            if class == "refused" {
                tracing::warn!(
                    class,
                    gateway,
                    failures,
                    "push gateway refused notifications (4xx); dropped"
                );
            } else {
                tracing::warn!(
                    class,
                    gateway,
                    failures,
                    "push gateway attempts failed; retrying with backoff"
                );
            }
            *entry = (now, 0);
        }
    }

    fn flush_marks(&mut self) {
        if self.marks.is_empty() {
            return;
        }
        let known = &self.marks_known;
        let result = self.store.set_push_marks_above(&self.marks, |device, chat| {
            known.get(&device).and_then(|chats| chats.get(&chat)).copied()
        });
        match result {
            Ok(()) => {
                if self.marks_known.len() >= MAX_CACHED_COUNTS {
                    self.marks_known.clear();
                }
                for &(device, chat, seq) in &self.marks {
                    let mark = self
                        .marks_known
                        .entry(device)
                        .or_default()
                        .entry(chat)
                        .or_insert(seq);
                    *mark = (*mark).max(seq);
                }
            }
            // Lost marks cost a duplicate notification after a restart, not a lost one.
            Err(e) => tracing::error!(error = %e, "push: writing watermarks failed"),
        }
        self.marks.clear();
    }
}

/// The host part of a gateway URL, for logs.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or("")
}
