//! Token buckets: per source address for signup and login ([`RateLimiter`]),
//! per user for the other writes ([`UserRateLimiter`]).
//!
//! Each source address gets a bucket holding up to `per_minute` tokens (the
//! burst), refilled continuously at `per_minute` per minute; a request takes one
//! token or is refused. IPv6 addresses are grouped by their /64 (one subscriber's
//! network), IPv4-mapped IPv6 addresses count as their IPv4 address.
//!
//! Memory is bounded: the table holds at most [`MAX_TRACKED`] addresses, the
//! per-user table at most [`MAX_TRACKED_USERS`] users. Neither ever refuses a
//! key for being full: the least recently used bucket is evicted instead
//! ([`LruBuckets`]). Refusing new addresses when full (what this table did
//! first) let `{}` logins from 100,000 source addresses lock every other
//! address out. With eviction, filling the table can only push out the bucket
//! of the address (or user) heard from least recently, which comes back with a
//! fresh bucket — at worst one extra burst per `MAX_TRACKED` new keys, never a
//! lock-out. Password guessing is bounded per account besides (`lockout.rs`).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use crate::ids::UserId;

/// The default of `--auth-rate-limit-table`: ~100k × ~64 bytes ≈ 6 MB at worst.
pub const MAX_TRACKED: usize = 100_000;

/// Most users whose write buckets are kept at once: each costs a map entry and
/// an LRU entry (~100 bytes), so ~10 MB at worst; past it, the least recently
/// used bucket is evicted (see the module docs).
pub(crate) const MAX_TRACKED_USERS: usize = 100_000;

/// Token buckets by source address.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    buckets: LruBuckets<IpAddr>,
}

impl RateLimiter {
    /// `per_minute` requests per address per minute, with a burst of as many.
    #[cfg(test)]
    pub(crate) fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_TRACKED)
    }

    /// Like `new`, tracking at most `max_tracked` addresses.
    pub(crate) fn with_capacity(per_minute: u32, max_tracked: usize) -> Self {
        Self {
            buckets: LruBuckets::new(per_minute, max_tracked),
        }
    }

    /// Takes one token for `addr` at `now`; false when the address is over its limit.
    #[cfg(test)]
    pub(crate) fn allow(&self, addr: IpAddr, now: Instant) -> bool {
        self.check(addr, now).is_ok()
    }

    /// Takes one token for `addr` at `now`. An address not in the table gets
    /// a full bucket, even when the table is full (the least recently used
    /// bucket is evicted for it).
    ///
    /// # Errors
    /// The address is over its limit: the time until a retry can succeed, in
    /// whole seconds, at least 1.
    pub(crate) fn check(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        self.buckets.check(group(addr), now)
    }
}

/// Takes a token from `tokens`, or says how many whole seconds (at least 1)
/// until one has refilled at `per_sec`.
fn take(tokens: &mut f64, per_sec: f64) -> Result<(), u64> {
    if *tokens >= 1.0 {
        *tokens -= 1.0;
        Ok(())
    } else {
        let wait = ((1.0 - *tokens) / per_sec).ceil();
        // `as` saturates; the bucket refills within a minute anyway.
        Err((wait as u64).max(1))
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// This bucket's key in [`Table::lru`] (with `updated`).
    stamp: u64,
}

/// Token buckets by user id, for the side-port's writes other than signup and
/// login. `per_minute` tokens per user, refilled continuously, bursts of as many.
#[derive(Debug)]
pub(crate) struct UserRateLimiter {
    buckets: LruBuckets<UserId>,
}

impl UserRateLimiter {
    /// `per_minute` writes per user per minute, with a burst of as many.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_TRACKED_USERS)
    }

    fn with_capacity(per_minute: u32, max_tracked: usize) -> Self {
        Self {
            buckets: LruBuckets::new(per_minute, max_tracked),
        }
    }

    /// Takes one token for `user` at `now`.
    ///
    /// # Errors
    /// The user is over its limit: whole seconds (at least 1) until a retry can succeed.
    pub(crate) fn check(&self, user: UserId, now: Instant) -> Result<(), u64> {
        self.buckets.check(user, now)
    }
}

/// A bounded table of token buckets that evicts the least recently used one
/// when a new key arrives and it is full: a new key always gets a full bucket.
#[derive(Debug)]
struct LruBuckets<K> {
    burst: f64,
    per_sec: f64,
    max_tracked: usize,
    table: Mutex<Table<K>>,
}

#[derive(Debug)]
struct Table<K> {
    buckets: HashMap<K, Bucket>,
    /// Every bucket by `(updated, stamp)`: the first entry is the least recently used.
    lru: BTreeMap<(Instant, u64), K>,
    next_stamp: u64,
}

impl<K: Copy + Eq + Hash> LruBuckets<K> {
    fn new(per_minute: u32, max_tracked: usize) -> Self {
        let burst = f64::from(per_minute.max(1));
        Self {
            burst,
            per_sec: burst / 60.0,
            max_tracked: max_tracked.max(1),
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                lru: BTreeMap::new(),
                next_stamp: 0,
            }),
        }
    }

    fn check(&self, key: K, now: Instant) -> Result<(), u64> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Table {
            buckets,
            lru,
            next_stamp,
        } = &mut *table;
        let mut bucket = match buckets.get(&key) {
            Some(b) => {
                lru.remove(&(b.updated, b.stamp));
                *b
            }
            None => {
                if buckets.len() >= self.max_tracked
                    && let Some((_, evicted)) = lru.pop_first()
                {
                    buckets.remove(&evicted);
                }
                Bucket {
                    tokens: self.burst,
                    updated: now,
                    stamp: 0,
                }
            }
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        // Never move a bucket back in time (callers' clocks race by microseconds).
        bucket.updated = bucket.updated.max(now);
        *next_stamp += 1;
        bucket.stamp = *next_stamp;
        let result = take(&mut bucket.tokens, self.per_sec);
        lru.insert((bucket.updated, bucket.stamp), key);
        buckets.insert(key, bucket);
        result
    }
}

/// The key an address is limited (and counted) under: IPv4 as is, IPv6 by its /64.
pub(crate) fn group(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refill() {
        let rl = RateLimiter::new(3);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        assert!(rl.allow(a, t0) && rl.allow(a, t0) && rl.allow(a, t0));
        assert!(!rl.allow(a, t0));
        assert!(rl.allow(ip("10.0.0.2"), t0), "other addresses are independent");
        // 3 per minute: one token every 20 s.
        assert!(!rl.allow(a, t0 + Duration::from_secs(19)));
        assert!(rl.allow(a, t0 + Duration::from_secs(21)));
        assert!(!rl.allow(a, t0 + Duration::from_secs(21)));
        assert!(rl.allow(a, t0 + Duration::from_secs(61)) && rl.allow(a, t0 + Duration::from_secs(61)));
        assert!(!rl.allow(a, t0 + Duration::from_secs(61)));
        // Long idle refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert!(rl.allow(a, later) && rl.allow(a, later) && rl.allow(a, later));
        assert!(!rl.allow(a, later));
    }

    #[test]
    fn v6_groups_by_prefix_and_mapped_v4_is_v4() {
        let rl = RateLimiter::new(1);
        let t0 = Instant::now();
        assert!(rl.allow(ip("2001:db8::1"), t0));
        assert!(!rl.allow(ip("2001:db8::ffff:2"), t0), "same /64");
        assert!(rl.allow(ip("2001:db8:0:1::1"), t0), "another /64");
        assert!(rl.allow(ip("192.0.2.7"), t0));
        assert!(!rl.allow(ip("::ffff:192.0.2.7"), t0));
    }

    #[test]
    fn a_full_address_table_evicts_the_least_recently_used_and_never_locks_out() {
        let rl = RateLimiter::with_capacity(1, 2);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(rl.allow(ip("10.0.0.1"), at(0)));
        assert!(rl.allow(ip("10.0.0.2"), at(1)));
        assert!(!rl.allow(ip("10.0.0.2"), at(2)), "limited");
        // A third address is served although both buckets are in use: 10.0.0.1,
        // the least recently used, is evicted.
        assert!(rl.allow(ip("10.0.0.3"), at(3)));
        assert!(
            !rl.allow(ip("10.0.0.2"), at(4)),
            "a tracked address keeps its bucket"
        );
        assert!(rl.allow(ip("10.0.0.1"), at(5)), "the evicted one starts afresh");
        // 100,000 new addresses (the table-fill attack) never lock out the next one.
        let rl = RateLimiter::with_capacity(1, 1000);
        for i in 0..100_000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(rl.allow(addr, at(10)));
        }
        assert!(rl.allow(ip("192.0.2.1"), at(10)), "an unseen address is served");
        assert_eq!(rl.buckets.table.lock().unwrap().buckets.len(), 1000);
    }

    #[test]
    fn refusals_say_when_to_retry() {
        let rl = RateLimiter::new(3);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(rl.check(a, t0), Ok(()));
        }
        // One token every 20 s.
        assert_eq!(rl.check(a, t0), Err(20));
        assert_eq!(rl.check(a, t0 + Duration::from_millis(15_500)), Err(5));
    }

    #[test]
    fn users_get_a_burst_then_the_rate_and_retry_after() {
        let rl = UserRateLimiter::new(60);
        let t0 = Instant::now();
        let (alice, bob) = (UserId(1), UserId(2));
        for i in 0..60 {
            assert_eq!(rl.check(alice, t0), Ok(()), "write {i} of the burst");
        }
        assert_eq!(rl.check(alice, t0), Err(1), "one token a second");
        assert_eq!(rl.check(bob, t0), Ok(()), "users are independent");
        assert_eq!(rl.check(alice, t0 + Duration::from_millis(1_001)), Ok(()));
        assert!(rl.check(alice, t0 + Duration::from_millis(1_001)).is_err());
        let slow = UserRateLimiter::new(2);
        assert_eq!((slow.check(bob, t0), slow.check(bob, t0)), (Ok(()), Ok(())));
        assert_eq!(slow.check(bob, t0), Err(30));
    }

    #[test]
    fn a_full_user_table_evicts_the_least_recently_used_and_never_locks_out() {
        let rl = UserRateLimiter::with_capacity(1, 3);
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        for (i, id) in [1, 2, 3].into_iter().enumerate() {
            assert_eq!(rl.check(UserId(id), at(i as u64)), Ok(()));
        }
        // All three are limited; user 1 is the least recently used.
        assert!(rl.check(UserId(2), at(10)).is_err());
        assert!(rl.check(UserId(3), at(11)).is_err());
        // A fourth user is served, whatever the table holds: user 1 is evicted.
        assert_eq!(rl.check(UserId(4), at(12)), Ok(()));
        {
            let table = rl.buckets.table.lock().unwrap();
            assert_eq!(table.buckets.len(), 3);
            assert_eq!(table.lru.len(), 3);
            assert!(!table.buckets.contains_key(&UserId(1)));
        }
        // The limited users kept their buckets; the evicted one starts afresh.
        assert!(rl.check(UserId(2), at(13)).is_err());
        assert_eq!(rl.check(UserId(1), at(14)), Ok(()));
        // Thousands of new users never grow the table past its bound.
        for id in 100..5_000 {
            assert_eq!(rl.check(UserId(id), at(20 + id)), Ok(()));
        }
        let table = rl.buckets.table.lock().unwrap();
        assert_eq!((table.buckets.len(), table.lru.len()), (3, 3));
    }
}
