//! [`Backoff`]: the pause before a client's next connect or call after a
//! failure — exponential, with full jitter, capped, and reset by a success —
//! so that the scenarios' hundreds of clients do not all retry a restarting
//! natterd in lock-step every few milliseconds (a reconnect storm is a load
//! real clients would not make; docs/PROTOCOL.md asks clients for backoff).

use std::thread;
use std::time::Duration;

use crate::rng::Rng;

/// Exponential backoff with full jitter (each pause is uniform in
/// `[ceiling / 2, ceiling)`, and the ceiling doubles per failure from `base`
/// up to `cap`).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    ceiling: Duration,
    rng: Rng,
}

impl Backoff {
    /// A backoff whose first pause is below `base` and no pause reaches `cap`;
    /// `seed` fixes the jitter, so a run repeats with the same `--seed`.
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            ceiling: base,
            rng: Rng::new(seed),
        }
    }

    /// The pause to take after one more failure; the next one is (up to) twice as long.
    pub fn next_pause(&mut self) -> Duration {
        let hi = self.ceiling.as_micros() as u64;
        let pause = Duration::from_micros(self.rng.range(hi / 2, hi.max(1)));
        self.ceiling = (self.ceiling * 2).min(self.cap);
        pause
    }

    /// Sleeps for [`Backoff::next_pause`].
    pub fn wait(&mut self) {
        thread::sleep(self.next_pause());
    }

    /// Forgets the failures: the next pause starts again below `base`.
    pub fn reset(&mut self) {
        self.ceiling = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_with_jitter_and_reset_starts_over() {
        let base = Duration::from_millis(20);
        let cap = Duration::from_millis(500);
        let mut b = Backoff::new(base, cap, 7);
        let mut ceiling = base;
        for _ in 0..12 {
            let p = b.next_pause();
            assert!(
                p >= ceiling / 2 && p < ceiling,
                "{p:?} outside [{:?}, {ceiling:?})",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(cap);
        }
        assert_eq!(ceiling, cap, "twelve failures reach the cap");
        b.reset();
        assert!(b.next_pause() < base);
    }

    #[test]
    fn two_clients_with_other_seeds_do_not_retry_in_lock_step() {
        let mut a = Backoff::new(Duration::from_millis(20), Duration::from_secs(1), 1);
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_secs(1), 2);
        let same = (0..8).filter(|_| a.next_pause() == b.next_pause()).count();
        assert!(same < 8);
    }
}
