//! The push timing logic as a sans-IO state machine: what is owed to which
//! device for which chat, when it is due (settle, coalescing window, backoff
//! with jitter), and the per-user rate limit. It takes `now` from its caller
//! and touches no clock, socket or store, so its unit tests run under a
//! simulated clock.
//!
//! One entry per `(device, chat)`: a burst of messages for a chat moves the
//! entry's `seq` forward (coalesced), it never adds entries. An entry is due
//! at `max(first owed + settle, last sent + coalesce)`; the driver takes due
//! entries with [`Scheduler::poll_due`] (they are then *in flight*) and
//! reports each one's fate: sent, live (the device was online: nothing to
//! send), retry (timeout or 5xx: exponential backoff with jitter, capped), or
//! dropped (rejected pushkey, a refusal).

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;

use crate::ids::{ChatId, DeviceId, Seq, UserId};

/// Most users whose rate-limit bucket is kept. A bucket is 16 bytes; when the
/// table is full it is emptied (every user starts with a full bucket again),
/// as the side-port's limiters do: a bound on memory, not a way around the limit
/// for anyone who is not already able to wait a minute.
pub const MAX_RATE_BUCKETS: usize = 100_000;

/// The timing parameters (from `--push-*` flags; see `config.rs`).
#[derive(Clone, Copy, Debug)]
pub struct ScheduleConfig {
    /// At most one notification per device per chat per this window.
    pub coalesce: Duration,
    /// How long a first owed message waits before it is sent, so that a burst
    /// typed in one go, or the device's own Ack or read marker, can still
    /// catch up with it.
    pub settle: Duration,
    /// The first retry's delay; doubled per attempt.
    pub backoff_base: Duration,
    /// The longest delay between two attempts.
    pub backoff_cap: Duration,
    /// Notifications per user per minute (bursts of as many).
    pub rate_per_minute: u32,
    /// Most owed entries held; past it new ones are not held (the store still
    /// knows they are owed, and the driver rebuilds the table from it).
    pub max_owed: usize,
}

/// One owed notification, as handed to the driver by [`Scheduler::poll_due`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The chat.
    pub chat: ChatId,
    /// The newest seq owed (what the notification announces).
    pub seq: Seq,
    /// Attempts made before this one (0 for the first).
    pub attempts: u32,
    /// Only the counts changed (the chat was read after a notification was
    /// shown): a badge update without a message.
    pub badge_only: bool,
}

#[derive(Debug)]
struct Entry {
    user: UserId,
    seq: Seq,
    due: Instant,
    attempts: u32,
    /// The seq handed to the driver, while an attempt is in flight.
    in_flight: Option<Seq>,
    /// A badge update only (no message owed): see [`Scheduler::owe_badge`].
    badge_only: bool,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
}

type Key = (DeviceId, ChatId);

/// The sans-IO push scheduler (module docs).
#[derive(Debug)]
pub struct Scheduler {
    config: ScheduleConfig,
    owed: FxHashMap<Key, Entry>,
    /// `(due, key)` for every entry not in flight.
    timers: BTreeSet<(Instant, DeviceId, ChatId)>,
    /// When each key was last sent, for the coalescing window; pruned once
    /// older than it (`sent_order` is the pruning order).
    last_sent: FxHashMap<Key, Instant>,
    sent_order: VecDeque<(Instant, Key)>,
    buckets: FxHashMap<UserId, Bucket>,
    overflowed: bool,
    rng: u64,
}

impl Scheduler {
    /// An empty scheduler; `seed` drives the jitter (any value but 0 is as good).
    pub fn new(config: ScheduleConfig, seed: u64) -> Self {
        Self {
            config,
            owed: FxHashMap::default(),
            timers: BTreeSet::new(),
            last_sent: FxHashMap::default(),
            sent_order: VecDeque::new(),
            buckets: FxHashMap::default(),
            overflowed: false,
            rng: seed | 1,
        }
    }

    /// Entries held (owed, waiting or in flight): the queue depth.
    pub fn len(&self) -> usize {
        self.owed.len()
    }

    /// True when nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// `device` (of `user`) is owed `chat` up to `seq`. Returns `true` when
    /// this joined an entry already owed (a coalesced message). When the table
    /// is full a new entry is not held and [`Scheduler::take_overflow`] says so.
    pub fn owe(&mut self, user: UserId, device: DeviceId, chat: ChatId, seq: Seq, now: Instant) -> bool {
        if let Some(entry) = self.owed.get_mut(&(device, chat)) {
            entry.seq = entry.seq.max(seq);
            // A message now: it carries the new counts as well.
            let joined = !entry.badge_only;
            entry.badge_only = false;
            return joined;
        }
        if self.owed.len() >= self.config.max_owed {
            self.overflowed = true;
            return false;
        }
        let mut due = now + self.config.settle;
        if let Some(sent) = self.last_sent.get(&(device, chat)) {
            due = due.max(*sent + self.config.coalesce);
        }
        self.owed.insert(
            (device, chat),
            Entry {
                user,
                seq,
                due,
                attempts: 0,
                in_flight: None,
                badge_only: false,
            },
        );
        self.timers.insert((due, device, chat));
        false
    }

    /// `device` was shown a notification for `chat` and the chat has been read
    /// since (up to `seq`): its badge is stale. Owes a counts-only update,
    /// unless something is owed for the chat already (it will carry the counts).
    /// Coalesced and rate-limited like any notification.
    pub fn owe_badge(&mut self, user: UserId, device: DeviceId, chat: ChatId, seq: Seq, now: Instant) {
        if self.owed.contains_key(&(device, chat)) || self.owed.len() >= self.config.max_owed {
            return;
        }
        let mut due = now + self.config.settle;
        if let Some(sent) = self.last_sent.get(&(device, chat)) {
            due = due.max(*sent + self.config.coalesce);
        }
        self.owed.insert(
            (device, chat),
            Entry {
                user,
                seq,
                due,
                attempts: 0,
                in_flight: None,
                badge_only: true,
            },
        );
        self.timers.insert((due, device, chat));
    }

    /// The device has seen `chat` up to `seq` (a read marker, an Ack, its own
    /// message): what it is owed up to there is dropped. Returns whether an
    /// entry was dropped. An attempt in flight is not recalled.
    pub fn cancel(&mut self, device: DeviceId, chat: ChatId, seq: Seq) -> bool {
        match self.owed.get(&(device, chat)) {
            // A badge update stays: reading more only lowers the counts it will carry.
            Some(entry) if entry.in_flight.is_none() && entry.seq <= seq && !entry.badge_only => {
                self.timers.remove(&(entry.due, device, chat));
                self.owed.remove(&(device, chat));
                true
            }
            _ => false,
        }
    }

    /// Drops everything owed to `device` (its pusher was removed).
    pub fn forget_device(&mut self, device: DeviceId) {
        let keys: Vec<Key> = self.owed.keys().filter(|(d, _)| *d == device).copied().collect();
        for key in keys {
            if let Some(entry) = self.owed.remove(&key) {
                self.timers.remove(&(entry.due, key.0, key.1));
            }
        }
    }

    /// True once since the last call if an entry could not be held for lack
    /// of room (the driver rebuilds from the store when there is room again).
    pub fn take_overflow(&mut self) -> bool {
        std::mem::take(&mut self.overflowed)
    }

    /// When [`Scheduler::poll_due`] next has something (`None`: nothing waits).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(due, ..)| *due)
    }

    /// Up to `max` entries due at `now`, now in flight. An entry whose user has
    /// no rate-limit token left is pushed back to when one will be there.
    pub fn poll_due(&mut self, now: Instant, max: usize) -> Vec<Due> {
        self.prune_sent(now);
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(due, device, chat)) = self.timers.first() else {
                break;
            };
            if due > now {
                break;
            }
            self.timers.remove(&(due, device, chat));
            let Some(entry) = self.owed.get_mut(&(device, chat)) else {
                continue;
            };
            let rate = f64::from(self.config.rate_per_minute.max(1));
            if self.buckets.len() >= MAX_RATE_BUCKETS && !self.buckets.contains_key(&entry.user) {
                self.buckets.clear();
            }
            let bucket = self.buckets.entry(entry.user).or_insert(Bucket {
                tokens: rate,
                refilled: now,
            });
            let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate / 60.0).min(rate);
            bucket.refilled = now;
            if bucket.tokens < 1.0 {
                let wait = Duration::from_secs_f64((1.0 - bucket.tokens) * 60.0 / rate);
                entry.due = now + wait;
                self.timers.insert((entry.due, device, chat));
                continue;
            }
            bucket.tokens -= 1.0;
            entry.in_flight = Some(entry.seq);
            out.push(Due {
                user: entry.user,
                device,
                chat,
                seq: entry.seq,
                attempts: entry.attempts,
                badge_only: entry.badge_only,
            });
        }
        out
    }

    /// The attempt for `(device, chat)` went out (the gateway took it). If
    /// newer messages came meanwhile, they are due after the coalescing window.
    pub fn handle_sent(&mut self, device: DeviceId, chat: ChatId, now: Instant) {
        self.last_sent.insert((device, chat), now);
        self.sent_order.push_back((now, (device, chat)));
        self.settle_attempt(device, chat, now + self.config.coalesce);
    }

    /// The device had a live session: nothing was sent, and the rate-limit
    /// token is given back.
    pub fn handle_live(&mut self, device: DeviceId, chat: ChatId, now: Instant) {
        if let Some(entry) = self.owed.get(&(device, chat))
            && let Some(bucket) = self.buckets.get_mut(&entry.user)
        {
            bucket.tokens += 1.0;
        }
        self.settle_attempt(device, chat, now + self.config.settle);
    }

    /// The attempt failed in a way worth retrying (timeout, connection
    /// refused, 5xx): due again after the backoff for its attempt count.
    /// Returns the delay chosen.
    pub fn handle_retry(&mut self, device: DeviceId, chat: ChatId, now: Instant) -> Duration {
        let Some(entry) = self.owed.get_mut(&(device, chat)) else {
            return Duration::ZERO;
        };
        entry.attempts = entry.attempts.saturating_add(1);
        entry.in_flight = None;
        let delay = backoff(&self.config, entry.attempts, next_random(&mut self.rng));
        entry.due = now + delay;
        self.timers.insert((entry.due, device, chat));
        delay
    }

    /// The attempt could not even be made now (the sender pool or a core's
    /// queue was full): due again after `delay`, no attempt counted.
    pub fn handle_later(&mut self, device: DeviceId, chat: ChatId, now: Instant, delay: Duration) {
        if let Some(entry) = self.owed.get_mut(&(device, chat)) {
            entry.in_flight = None;
            entry.due = now + delay;
            self.timers.insert((entry.due, device, chat));
        }
    }

    /// The attempt ended for good (pushkey rejected, request refused): the
    /// entry is gone.
    pub fn handle_dropped(&mut self, device: DeviceId, chat: ChatId) {
        if let Some(entry) = self.owed.remove(&(device, chat)) {
            self.timers.remove(&(entry.due, device, chat));
        }
    }

    /// After a sent or live attempt: drop the entry if it covered everything
    /// owed, else keep what came meanwhile, due at `next`.
    fn settle_attempt(&mut self, device: DeviceId, chat: ChatId, next: Instant) {
        let Some(entry) = self.owed.get_mut(&(device, chat)) else {
            return;
        };
        let covered = entry.in_flight.take().unwrap_or(entry.seq);
        if entry.seq <= covered {
            self.owed.remove(&(device, chat));
        } else {
            entry.attempts = 0;
            entry.due = next;
            self.timers.insert((next, device, chat));
        }
    }

    fn prune_sent(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.sent_order.front() {
            if at + self.config.coalesce > now {
                break;
            }
            self.sent_order.pop_front();
            if self.last_sent.get(&key) == Some(&at) {
                self.last_sent.remove(&key);
            }
        }
    }
}

/// The delay before attempt `attempts + 1`: `base * 2^(attempts-1)`, capped,
/// then "equal jitter" (a uniform pick in its upper half), so retries of many
/// devices after one gateway outage spread out instead of arriving together.
fn backoff(config: &ScheduleConfig, attempts: u32, random: u64) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let full = config
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(config.backoff_cap);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random % nanos)
}

/// xorshift64: the jitter's randomness (not for anything secret).
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config() -> ScheduleConfig {
        ScheduleConfig {
            coalesce: 5000 * MS,
            settle: 200 * MS,
            backoff_base: 500 * MS,
            backoff_cap: 8000 * MS,
            rate_per_minute: 3,
            max_owed: 4,
        }
    }

    const U: UserId = UserId(1);
    const D: DeviceId = DeviceId(7);
    const C: ChatId = ChatId(3);

    #[test]
    fn a_burst_is_one_notification_after_the_settle_then_one_per_window() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(config(), 42);
        assert!(!s.owe(U, D, C, Seq(1), t0));
        for seq in 2..=10 {
            assert!(s.owe(U, D, C, Seq(seq), t0 + seq as u32 * MS), "coalesced");
        }
        assert_eq!(s.poll_timeout(), Some(t0 + 200 * MS));
        assert!(s.poll_due(t0 + 199 * MS, 10).is_empty());
        let due = s.poll_due(t0 + 200 * MS, 10);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].seq, Seq(10));
        // A message while in flight waits for the coalescing window after the send.
        assert!(s.owe(U, D, C, Seq(11), t0 + 210 * MS));
        assert!(s.poll_due(t0 + 210 * MS, 10).is_empty());
        s.handle_sent(D, C, t0 + 250 * MS);
        assert_eq!(s.poll_timeout(), Some(t0 + 5250 * MS));
        let due = s.poll_due(t0 + 5250 * MS, 10);
        assert_eq!(due[0].seq, Seq(11));
        s.handle_sent(D, C, t0 + 5260 * MS);
        assert!(s.is_empty());
        // The window also holds back a new burst right after a send.
        s.owe(U, D, C, Seq(12), t0 + 5300 * MS);
        assert_eq!(s.poll_timeout(), Some(t0 + 10_260 * MS));
        // Once the window has passed, the settle applies again.
        s.handle_dropped(D, C);
        s.poll_due(t0 + 20_000 * MS, 10);
        s.owe(U, D, C, Seq(13), t0 + 20_000 * MS);
        assert_eq!(s.poll_timeout(), Some(t0 + 20_200 * MS));
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_the_cap() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(config(), 7);
        s.owe(U, D, C, Seq(1), t0);
        let mut now = t0 + 200 * MS;
        let mut delays = Vec::new();
        for _ in 0..7 {
            assert_eq!(s.poll_due(now, 1).len(), 1);
            let d = s.handle_retry(D, C, now);
            delays.push(d);
            assert_eq!(s.poll_timeout(), Some(now + d));
            now += d;
            // Rate limit: keep the bucket out of the way of this test.
            s.buckets.clear();
        }
        let bounds = [500, 1000, 2000, 4000, 8000, 8000, 8000];
        for (d, full) in delays.iter().zip(bounds) {
            assert!(*d >= full / 2 * MS && *d <= full * MS, "{delays:?}");
        }
        assert_eq!(s.poll_due(now, 1)[0].attempts, 7);
        s.handle_sent(D, C, now);
        assert!(s.is_empty());
    }

    #[test]
    fn reads_cancel_what_is_owed_and_live_devices_give_their_token_back() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(config(), 1);
        s.owe(U, D, C, Seq(5), t0);
        assert!(!s.cancel(D, C, Seq(4)), "a read below the owed seq leaves it");
        assert!(s.cancel(D, C, Seq(5)));
        assert!(s.is_empty() && s.poll_timeout().is_none());
        // Live: three in a row do not use up the three tokens per minute.
        for i in 0..3u64 {
            let now = t0 + Duration::from_secs(i);
            s.owe(U, D, C, Seq(6 + i), now);
            assert_eq!(s.poll_due(now + 200 * MS, 1).len(), 1);
            s.handle_live(D, C, now + 200 * MS);
        }
        assert!(s.is_empty());
        s.owe(U, D, C, Seq(9), t0 + Duration::from_secs(4));
        assert_eq!(s.poll_due(t0 + Duration::from_secs(5), 1).len(), 1);
    }

    #[test]
    fn a_badge_update_is_owed_once_and_a_message_takes_it_over() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(config(), 1);
        s.owe_badge(U, D, C, Seq(5), t0);
        s.owe_badge(U, D, C, Seq(6), t0);
        assert_eq!(s.len(), 1);
        assert!(!s.cancel(D, C, Seq(9)), "a read does not cancel a badge update");
        let due = s.poll_due(t0 + 200 * MS, 10);
        assert!(due[0].badge_only && due[0].seq == Seq(5));
        s.handle_sent(D, C, t0 + 210 * MS);
        assert!(s.is_empty());
        // A message owed after a badge update turns it into a message notification.
        s.owe_badge(U, D, C, Seq(7), t0 + 6000 * MS);
        assert!(!s.owe(U, D, C, Seq(8), t0 + 6000 * MS), "not a coalesced message");
        let due = s.poll_due(t0 + Duration::from_secs(20), 10);
        assert!(!due[0].badge_only && due[0].seq == Seq(8));
    }

    #[test]
    fn the_rate_limit_defers_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut s = Scheduler::new(config(), 1);
        for c in 1..=4 {
            s.owe(U, D, ChatId(c), Seq(1), t0);
        }
        assert!(!s.take_overflow());
        s.owe(U, D, ChatId(5), Seq(1), t0);
        assert!(s.take_overflow(), "a fifth entry does not fit");
        assert!(!s.take_overflow(), "reported once");
        let due = s.poll_due(t0 + 200 * MS, 10);
        assert_eq!(due.len(), 3, "three per minute");
        // The fourth waits for a token: 20 s at 3 per minute.
        assert_eq!(s.poll_timeout(), Some(t0 + 200 * MS + Duration::from_secs(20)));
        assert_eq!(s.poll_due(t0 + Duration::from_secs(21), 10).len(), 1);
    }
}
