//! Per-account throttling of password guesses ([`AccountThrottle`]): the
//! per-address limiter alone lets N addresses try 30·N passwords a minute at one
//! account. This one counts consecutive failed logins per username, whatever
//! address they come from:
//!
//! * the first [`LoginBackoff::free`] failures cost nothing;
//! * after that, each further attempt must wait `base · 2^(n − free)` since
//!   the last failure (capped at `max_delay`) — exponential backoff; attempts
//!   inside the wait are answered 429 with `Retry-After` without hashing;
//! * at `max_failures` consecutive failures (100, NIST SP 800-63B §5.2.2) the
//!   account takes no password for `lockout`; after it, one attempt, and each
//!   further failure locks it for `lockout` again. With the defaults the 100th
//!   consecutive failure comes after ~21 h of guessing at the fastest allowed
//!   pace, and after it one guess an hour.
//!
//! The real owner is never locked out for good: every wait ends, and one
//! successful login clears the account's record. Attempts are reserved before
//! the (slow) hash runs, so guesses sent in parallel from many addresses are
//! serialised by the same waits as guesses sent one after another.
//!
//! Keyed by the canonical username, existing or not, so an unknown name and a
//! known one are throttled alike (no existence oracle). The table is bounded
//! ([`MAX_TRACKED_ACCOUNTS`]); when it is full the least recently failed record
//! is evicted. An attacker who wants to flush a record must make as many
//! failed logins at other names, each costing a per-address token.
//!
//! Pure logic with the time passed in, so the schedule is unit-tested under a
//! simulated clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most usernames with a failure record at once (~120 bytes each: ~12 MB).
pub(crate) const MAX_TRACKED_ACCOUNTS: usize = 100_000;

/// The backoff schedule (`--login-backoff-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginBackoff {
    /// Consecutive failures allowed without any wait.
    pub free: u32,
    /// The first wait; each further failure doubles it.
    pub base: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// Consecutive failures after which the account takes no password for `lockout`.
    pub max_failures: u32,
    /// How long an account stays closed to passwords after `max_failures`.
    pub lockout: Duration,
}

impl LoginBackoff {
    /// natterd's defaults: 5 free failures, then 1 s doubling up to 15 min;
    /// 100 consecutive failures close the account to passwords for 1 h.
    pub const DEFAULT: Self = Self {
        free: 5,
        base: Duration::from_secs(1),
        max_delay: Duration::from_secs(15 * 60),
        max_failures: 100,
        lockout: Duration::from_secs(3600),
    };

    /// The wait after the `failures`-th consecutive failure.
    fn delay(&self, failures: u32) -> Duration {
        if failures < self.free {
            return Duration::ZERO;
        }
        if failures >= self.max_failures {
            return self.lockout;
        }
        let doublings = (failures - self.free).min(30);
        self.base.saturating_mul(1 << doublings).min(self.max_delay)
    }
}

#[derive(Debug, Clone, Copy)]
struct Record {
    /// Consecutive failures, plus attempts reserved and not yet reported.
    failures: u32,
    /// No attempt is evaluated before this.
    next_allowed: Instant,
    /// The key of this record in [`Table::lru`].
    stamp: (Instant, u64),
}

#[derive(Debug, Default)]
struct Table {
    records: HashMap<String, Record>,
    lru: BTreeMap<(Instant, u64), String>,
    next_stamp: u64,
}

/// Consecutive login failures by username.
#[derive(Debug)]
pub(crate) struct AccountThrottle {
    schedule: LoginBackoff,
    max_tracked: usize,
    table: Mutex<Table>,
}

impl AccountThrottle {
    pub(crate) fn new(schedule: LoginBackoff) -> Self {
        Self::with_capacity(schedule, MAX_TRACKED_ACCOUNTS)
    }

    fn with_capacity(schedule: LoginBackoff, max_tracked: usize) -> Self {
        Self {
            schedule,
            max_tracked: max_tracked.max(1),
            table: Mutex::new(Table::default()),
        }
    }

    /// Reserves one password attempt at `name` at `now`. The caller must then
    /// report the outcome with [`AccountThrottle::succeeded`] or
    /// [`AccountThrottle::failed`]; an attempt not reported counts as failed.
    ///
    /// # Errors
    /// The account is waiting out its backoff: whole seconds (at least 1)
    /// until an attempt will be evaluated.
    pub(crate) fn begin(&self, name: &str, now: Instant) -> Result<(), u64> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Table {
            records,
            lru,
            next_stamp,
        } = &mut *table;
        *next_stamp += 1;
        let stamp = (now, *next_stamp);
        let Some(record) = records.get_mut(name) else {
            // No record: nothing failed lately. Reserve this attempt as the first failure.
            if records.len() >= self.max_tracked
                && let Some((_, evicted)) = lru.pop_first()
            {
                records.remove(&evicted);
            }
            records.insert(
                name.to_owned(),
                Record {
                    failures: 1,
                    next_allowed: now + self.schedule.delay(1),
                    stamp,
                },
            );
            lru.insert(stamp, name.to_owned());
            return Ok(());
        };
        if now < record.next_allowed {
            let wait = record.next_allowed.saturating_duration_since(now);
            return Err(whole_seconds(wait));
        }
        // Reserve: count this attempt as failed until it is reported, so that
        // parallel attempts wait as if it had failed.
        record.failures = record.failures.saturating_add(1);
        record.next_allowed = now + self.schedule.delay(record.failures);
        lru.remove(&record.stamp);
        record.stamp = stamp;
        lru.insert(stamp, name.to_owned());
        Ok(())
    }

    /// The attempt reserved by `begin` failed (wrong password or unknown name).
    pub(crate) fn failed(&self, name: &str, now: Instant) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Table {
            records,
            lru,
            next_stamp,
        } = &mut *table;
        *next_stamp += 1;
        let stamp = (now, *next_stamp);
        match records.get_mut(name) {
            Some(record) => {
                // `begin` already counted it; the wait runs from now.
                record.next_allowed = record
                    .next_allowed
                    .max(now + self.schedule.delay(record.failures));
                lru.remove(&record.stamp);
                record.stamp = stamp;
            }
            None => {
                if records.len() >= self.max_tracked
                    && let Some((_, evicted)) = lru.pop_first()
                {
                    records.remove(&evicted);
                }
                records.insert(
                    name.to_owned(),
                    Record {
                        failures: 1,
                        next_allowed: now + self.schedule.delay(1),
                        stamp,
                    },
                );
            }
        }
        lru.insert(stamp, name.to_owned());
    }

    /// The attempt reserved by `begin` succeeded: the account's record is cleared.
    pub(crate) fn succeeded(&self, name: &str) {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(record) = table.records.remove(name) {
            table.lru.remove(&record.stamp);
        }
    }
}

/// `d` rounded up to whole seconds, at least 1 (a `Retry-After` value).
fn whole_seconds(d: Duration) -> u64 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    s.max(1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const S: LoginBackoff = LoginBackoff {
        free: 3,
        base: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
        max_failures: 10,
        lockout: Duration::from_secs(3600),
    };

    /// One failed attempt at `t`; false when it was refused before hashing.
    fn guess(t: &AccountThrottle, name: &str, now: Instant) -> Result<(), u64> {
        t.begin(name, now)?;
        t.failed(name, now);
        Ok(())
    }

    #[test]
    fn free_failures_then_doubling_waits_then_the_lockout() {
        let t = AccountThrottle::new(S);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        for _ in 0..3 {
            assert_eq!(guess(&t, "bob", t0), Ok(()));
        }
        // Three failures: the next waits 1 s, then 2, 4, 8 ...
        assert_eq!(guess(&t, "bob", t0), Err(1));
        assert_eq!(guess(&t, "bob", at(1)), Ok(()));
        assert_eq!(guess(&t, "bob", at(1)), Err(2));
        assert_eq!(guess(&t, "bob", at(3)), Ok(()));
        assert_eq!(guess(&t, "bob", at(4)), Err(3));
        assert_eq!(guess(&t, "bob", at(7)), Ok(()));
        // Other names are independent.
        assert_eq!(guess(&t, "ann", at(7)), Ok(()));
        // Failures 7..9 wait 16, 32, 60 (capped) s; the 10th closes the account.
        let mut now = at(7);
        let mut evaluated = 6;
        while evaluated < 10 {
            match guess(&t, "bob", now) {
                Ok(()) => evaluated += 1,
                Err(wait) => now += Duration::from_secs(wait),
            }
        }
        assert_eq!(
            guess(&t, "bob", now),
            Err(3600),
            "at max_failures: locked for an hour"
        );
        assert_eq!(guess(&t, "bob", now + Duration::from_secs(3599)), Err(1));
        // Never for good: after the lockout the owner's right password works.
        let later = now + Duration::from_secs(3600);
        assert_eq!(t.begin("bob", later), Ok(()));
        t.succeeded("bob");
        assert_eq!(guess(&t, "bob", later), Ok(()), "the record was cleared");
    }

    #[test]
    fn parallel_attempts_are_serialised_by_the_reservation() {
        let t = AccountThrottle::new(S);
        let t0 = Instant::now();
        for _ in 0..3 {
            guess(&t, "bob", t0).unwrap();
        }
        // Forty attempts begin at the same instant (forty addresses): one is evaluated.
        let admitted = (0..40)
            .filter(|_| t.begin("bob", t0 + Duration::from_secs(5)).is_ok())
            .count();
        assert_eq!(admitted, 1);
    }

    #[test]
    fn at_most_max_failures_are_evaluated_per_lockout() {
        let t = AccountThrottle::new(LoginBackoff::DEFAULT);
        let t0 = Instant::now();
        // An attacker who retries the moment each wait ends, for 30 simulated days.
        let mut now = t0;
        let mut evaluated = 0u32;
        let end = t0 + Duration::from_secs(30 * 24 * 3600);
        let mut evaluated_in_first_lockout_window = None;
        while now < end {
            match guess(&t, "bob", now) {
                Ok(()) => evaluated += 1,
                Err(wait) => now += Duration::from_secs(wait),
            }
            if evaluated == 100 && evaluated_in_first_lockout_window.is_none() {
                evaluated_in_first_lockout_window = Some(now);
            }
        }
        let reached = evaluated_in_first_lockout_window.expect("100 failures reached");
        assert!(
            reached - t0 > Duration::from_secs(20 * 3600),
            "100 guesses take ~21 h: {:?}",
            reached - t0
        );
        // After the 100th, one guess per hour-long lockout.
        assert!(evaluated < 100 + 30 * 24 + 1, "{evaluated}");
    }

    #[test]
    fn the_table_is_bounded() {
        let t = AccountThrottle::with_capacity(S, 3);
        let t0 = Instant::now();
        for i in 0..100 {
            guess(&t, &format!("user{i}"), t0 + Duration::from_millis(i)).unwrap();
        }
        let table = t.table.lock().unwrap();
        assert_eq!((table.records.len(), table.lru.len()), (3, 3));
    }
}
