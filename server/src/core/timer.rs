//! A hashed timing wheel for per-session deadlines (hello and heartbeat timeouts).
//!
//! Sessions are *not* moved in the wheel when they receive a frame: each entry is
//! a "look at this session again" mark. When its slot comes due, the core checks
//! the session's real deadline and either closes it or schedules a new mark. So a
//! busy session costs nothing per frame, and a tick costs only the entries in the
//! slot that came due — never a scan of every session.

use std::time::{Duration, Instant};

/// Slots in the wheel. A deadline further away than `SLOTS * tick` is parked in
/// the last reachable slot and re-armed when it comes due.
const SLOTS: usize = 512;

/// One mark: which session to look at, and which incarnation of that slot id
/// (a closed session's id may be reused; a stale mark is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mark {
    pub(crate) key: usize,
    pub(crate) generation: u32,
}

/// The wheel: `SLOTS` buckets of `tick` each, starting at `origin`.
#[derive(Debug)]
pub(crate) struct TimerWheel {
    tick: Duration,
    origin: Instant,
    /// The tick number of the next slot to expire.
    next_tick: u64,
    slots: Vec<Vec<Mark>>,
    len: usize,
}

impl TimerWheel {
    /// A wheel whose resolution is `tick`; `now` is its origin.
    pub(crate) fn new(tick: Duration, now: Instant) -> Self {
        Self {
            tick: tick.max(Duration::from_millis(1)),
            origin: now,
            next_tick: 0,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            len: 0,
        }
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        (since.as_nanos() / self.tick.as_nanos().max(1)) as u64
    }

    /// Schedules `mark` to come due at (or just after) `at`.
    pub(crate) fn schedule(&mut self, at: Instant, mark: Mark) {
        // Round up so a mark never fires before its deadline.
        let mut tick = self.tick_of(at) + 1;
        tick = tick.clamp(self.next_tick, self.next_tick + SLOTS as u64 - 1);
        if let Some(slot) = self.slots.get_mut((tick % SLOTS as u64) as usize) {
            slot.push(mark);
            self.len += 1;
        }
    }

    /// When the next non-empty slot comes due, if any mark is scheduled.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        let ahead = (0..SLOTS as u64)
            .find(|i| {
                self.slots
                    .get(((self.next_tick + i) % SLOTS as u64) as usize)
                    .is_some_and(|s| !s.is_empty())
            })
            .unwrap_or(0);
        let tick = self.next_tick + ahead;
        Some(self.origin + self.tick * u32::try_from(tick).unwrap_or(u32::MAX))
    }

    /// Moves every mark whose slot is due at `now` into `out`.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<Mark>) {
        let now_tick = self.tick_of(now);
        // Never spin more than one lap: after that every slot has been visited.
        let last = now_tick.min(self.next_tick + SLOTS as u64 - 1);
        while self.next_tick <= last {
            if let Some(slot) = self.slots.get_mut((self.next_tick % SLOTS as u64) as usize) {
                self.len -= slot.len();
                out.append(slot);
            }
            self.next_tick += 1;
        }
        if now_tick >= self.next_tick {
            self.next_tick = now_tick + 1;
        }
    }

    /// Number of marks scheduled.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(key: usize) -> Mark {
        Mark { key, generation: 0 }
    }

    #[test]
    fn marks_fire_at_or_after_their_deadline_not_before() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(Duration::from_millis(10), t0);
        w.schedule(t0 + Duration::from_millis(35), mark(1));
        w.schedule(t0 + Duration::from_millis(100), mark(2));
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(34), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + Duration::from_millis(40), &mut out);
        assert_eq!(out, vec![mark(1)]);
        out.clear();
        assert!(
            w.next_deadline()
                .is_some_and(|d| d >= t0 + Duration::from_millis(100))
        );
        w.expire(t0 + Duration::from_millis(111), &mut out);
        assert_eq!(out, vec![mark(2)]);
        assert_eq!(w.len(), 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn far_deadlines_park_in_the_last_slot_and_a_long_gap_expires_everything() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(Duration::from_millis(1), t0);
        w.schedule(t0 + Duration::from_secs(60), mark(7));
        let mut out = Vec::new();
        w.expire(t0 + Duration::from_millis(100), &mut out);
        assert!(out.is_empty());
        w.expire(t0 + Duration::from_secs(3600), &mut out);
        assert_eq!(out, vec![mark(7)]);
    }
}
