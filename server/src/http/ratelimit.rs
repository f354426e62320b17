//! Token buckets: per source address for signup and login ([`RateLimiter`]),
//! per user for the other writes ([`UserRateLimiter`]).
//!
//! Each source address gets a bucket holding up to `per_minute` tokens (the
//! burst), refilled continuously at `per_minute` per minute; a request takes one
//! token or is refused. IPv6 addresses are grouped by their /64 (one subscriber's
//! network), IPv4-mapped IPv6 addresses count as their IPv4 address.
//!
//! Memory is bounded: the table holds at most [`MAX_TRACKED`] addresses. When it
//! is full, buckets that have refilled completely (they carry no information) are
//! dropped; if every bucket is still in use, a new address is refused rather than
//! letting an attacker evict the buckets of addresses that are being limited.
//!
//! The per-user table is bounded too ([`MAX_TRACKED_USERS`]) but never refuses
//! a user for being full: it evicts the least recently used bucket instead. A
//! user is authenticated (accounts cost a rate-limited signup each), so a full
//! table can only push out the bucket of a user who wrote less recently than
//! everyone else tracked, and that user comes back with a fresh bucket — at
//! worst one extra burst, never a lock-out.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ids::UserId;

/// Most addresses tracked at once: ~100k × ~48 bytes ≈ 5 MB at worst.
pub(crate) const MAX_TRACKED: usize = 100_000;

/// Most users whose write buckets are kept at once: each costs a map entry and
/// an LRU entry (~100 bytes), so ~10 MB at worst; past it, the least recently
/// used bucket is evicted (see the module docs).
pub(crate) const MAX_TRACKED_USERS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by source address.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    burst: f64,
    per_sec: f64,
    /// Time for an empty bucket to refill completely.
    refill: Duration,
    max_tracked: usize,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    buckets: HashMap<IpAddr, Bucket>,
    /// When the full table was last swept; sweeps are O(n), so at most one per second.
    last_sweep: Option<Instant>,
}

impl RateLimiter {
    /// `per_minute` requests per address per minute, with a burst of as many.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_TRACKED)
    }

    fn with_capacity(per_minute: u32, max_tracked: usize) -> Self {
        let burst = f64::from(per_minute.max(1));
        Self {
            burst,
            per_sec: burst / 60.0,
            refill: Duration::from_secs(60),
            max_tracked,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                last_sweep: None,
            }),
        }
    }

    /// Takes one token for `addr` at `now`; false when the address is over its limit.
    #[cfg(test)]
    pub(crate) fn allow(&self, addr: IpAddr, now: Instant) -> bool {
        self.check(addr, now).is_ok()
    }

    /// Takes one token for `addr` at `now`.
    ///
    /// # Errors
    /// The address is over its limit (or the table is full of active buckets):
    /// the time until a retry can succeed, in whole seconds, at least 1.
    pub(crate) fn check(&self, addr: IpAddr, now: Instant) -> Result<(), u64> {
        let key = group(addr);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Table { buckets, last_sweep } = &mut *table;
        if !buckets.contains_key(&key) && buckets.len() >= self.max_tracked {
            if last_sweep.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1)) {
                *last_sweep = Some(now);
                let refill = self.refill;
                buckets.retain(|_, b| now.saturating_duration_since(b.updated) < refill);
                if buckets.len() >= self.max_tracked {
                    // Logged at most once per sweep, i.e. once a second while it lasts.
                    tracing::warn!(
                        tracked = buckets.len(),
                        "rate-limit table full; refusing new addresses"
                    );
                }
            }
            if buckets.len() >= self.max_tracked {
                return Err(1);
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.updated = now;
        take(&mut bucket.tokens, self.per_sec)
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
struct UserBucket {
    tokens: f64,
    updated: Instant,
    /// This bucket's key in [`UserTable::lru`] (with `updated`).
    stamp: u64,
}

/// Token buckets by user id, for the side-port's writes other than signup and
/// login. `per_minute` tokens per user, refilled continuously, bursts of as many.
#[derive(Debug)]
pub(crate) struct UserRateLimiter {
    burst: f64,
    per_sec: f64,
    max_tracked: usize,
    table: Mutex<UserTable>,
}

#[derive(Debug, Default)]
struct UserTable {
    buckets: HashMap<UserId, UserBucket>,
    /// Every bucket by `(updated, stamp)`: the first entry is the least recently used.
    lru: BTreeMap<(Instant, u64), UserId>,
    next_stamp: u64,
}

impl UserRateLimiter {
    /// `per_minute` writes per user per minute, with a burst of as many.
    pub(crate) fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_TRACKED_USERS)
    }

    fn with_capacity(per_minute: u32, max_tracked: usize) -> Self {
        let burst = f64::from(per_minute.max(1));
        Self {
            burst,
            per_sec: burst / 60.0,
            max_tracked: max_tracked.max(1),
            table: Mutex::new(UserTable::default()),
        }
    }

    /// Takes one token for `user` at `now`.
    ///
    /// # Errors
    /// The user is over its limit: whole seconds (at least 1) until a retry can succeed.
    pub(crate) fn check(&self, user: UserId, now: Instant) -> Result<(), u64> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let UserTable {
            buckets,
            lru,
            next_stamp,
        } = &mut *table;
        let mut bucket = match buckets.get(&user) {
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
                UserBucket {
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
        lru.insert((bucket.updated, bucket.stamp), user);
        buckets.insert(user, bucket);
        result
    }
}

/// The key an address is limited under.
fn group(addr: IpAddr) -> IpAddr {
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
    fn table_is_bounded_and_evicts_only_refilled_buckets() {
        let rl = RateLimiter::with_capacity(1, 2);
        let t0 = Instant::now();
        assert!(rl.allow(ip("10.0.0.1"), t0));
        assert!(rl.allow(ip("10.0.0.2"), t0));
        assert!(!rl.allow(ip("10.0.0.3"), t0), "full of active buckets");
        assert!(
            !rl.allow(ip("10.0.0.1"), t0),
            "a tracked address keeps its bucket"
        );
        let later = t0 + Duration::from_secs(61);
        assert!(rl.allow(ip("10.0.0.3"), later), "refilled buckets were evicted");
        assert!(rl.table.lock().unwrap().buckets.len() <= 2);
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
            let table = rl.table.lock().unwrap();
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
        let table = rl.table.lock().unwrap();
        assert_eq!((table.buckets.len(), table.lru.len()), (3, 3));
    }
}
