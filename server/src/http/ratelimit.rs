//! Per-address token buckets for signup and login.
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

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most addresses tracked at once: ~100k × ~48 bytes ≈ 5 MB at worst.
pub(crate) const MAX_TRACKED: usize = 100_000;

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
    pub(crate) fn allow(&self, addr: IpAddr, now: Instant) -> bool {
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
                return false;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_sec).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
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
}
