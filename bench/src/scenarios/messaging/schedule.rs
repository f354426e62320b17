//! The open-loop send schedule (`--rate N`): N messages per second in total, spread
//! evenly over the senders and over time, fixed before the run starts.
//!
//! Message `k` of sender `i` (of `S`) is message number `m = k·S + i` of the run and is
//! due `m / N` seconds after sending starts: each sender sends every `S / N` seconds,
//! the senders staggered by `1 / N`. The schedule never waits for the server — a stall
//! leaves messages overdue, and since latency is measured from the *due* instant the
//! stall shows in the figures instead of hiding (no coordinated omission).

/// Nanoseconds per second.
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// N messages per second over S senders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Schedule {
    rate: u64,
    senders: u64,
}

impl Schedule {
    /// `rate` messages per second in total over `senders` senders; `None` if either is 0.
    pub(crate) fn new(rate: u64, senders: u64) -> Option<Schedule> {
        (rate > 0 && senders > 0).then_some(Schedule { rate, senders })
    }

    /// When message `k` of sender `sender` is due, in nanoseconds after sending starts.
    pub(crate) fn due_ns(&self, sender: u64, k: u64) -> u64 {
        u128::from(k)
            .checked_mul(u128::from(self.senders))
            .and_then(|m| m.checked_add(u128::from(sender)))
            .and_then(|m| m.checked_mul(NANOS_PER_SEC))
            .and_then(|ns| u64::try_from(ns / u128::from(self.rate)).ok())
            .unwrap_or(u64::MAX)
    }

    /// A cursor over the messages of the given senders (global indexes, each below
    /// the schedule's sender count), in due order.
    pub(crate) fn cursor(&self, mut senders: Vec<u64>) -> ScheduleCursor {
        senders.sort_unstable();
        senders.dedup();
        ScheduleCursor {
            schedule: *self,
            senders,
            k: 0,
            position: 0,
        }
    }
}

/// The messages of some of a schedule's senders (one driver thread's), in due order.
#[derive(Clone, Debug)]
pub(crate) struct ScheduleCursor {
    schedule: Schedule,
    /// Global sender indexes, ascending.
    senders: Vec<u64>,
    /// Round of the next message.
    k: u64,
    /// Position in `senders` of the next message.
    position: usize,
}

impl ScheduleCursor {
    /// The next message: (position in this cursor's sender list, due nanoseconds).
    pub(crate) fn peek(&self) -> Option<(usize, u64)> {
        let sender = *self.senders.get(self.position)?;
        Some((self.position, self.schedule.due_ns(sender, self.k)))
    }

    /// The next message if it is due at or before `now_ns`, and moves past it.
    pub(crate) fn pop_due(&mut self, now_ns: u64) -> Option<(usize, u64)> {
        let (position, due) = self.peek()?;
        if due > now_ns {
            return None;
        }
        self.position += 1;
        if self.position == self.senders.len() {
            self.position = 0;
            self.k += 1;
        }
        Some((position, due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_until(cursor: &mut ScheduleCursor, end_ns: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Some((position, due)) = cursor.pop_due(end_ns) {
            out.push((cursor.senders[position], due));
        }
        out
    }

    #[test]
    fn zero_rate_or_senders_is_no_schedule() {
        assert_eq!(Schedule::new(0, 5), None);
        assert_eq!(Schedule::new(5, 0), None);
    }

    #[test]
    fn messages_are_evenly_spaced_and_senders_take_turns() {
        let schedule = Schedule::new(1_000, 4).unwrap();
        let mut cursor = schedule.cursor((0..4).collect());
        let sent = drain_until(&mut cursor, 999_999_999);
        assert_eq!(sent.len(), 1_000, "1,000 messages in the first second");
        for (m, (sender, due)) in sent.iter().enumerate() {
            assert_eq!(*due, m as u64 * 1_000_000, "message {m} every millisecond");
            assert_eq!(*sender, m as u64 % 4);
        }
        // Each sender sends rate / senders per second.
        assert_eq!(sent.iter().filter(|(s, _)| *s == 3).count(), 250);
    }

    #[test]
    fn nothing_is_due_before_its_time_and_overdue_messages_all_come_out() {
        let schedule = Schedule::new(100, 1).unwrap();
        let mut cursor = schedule.cursor(vec![0]);
        assert_eq!(cursor.pop_due(0), Some((0, 0)));
        assert_eq!(cursor.pop_due(9_999_999), None, "the next is due at 10 ms");
        // After a 50 ms stall the five overdue messages keep their due instants.
        let late = drain_until(&mut cursor, 50_000_000);
        let dues: Vec<u64> = late.iter().map(|(_, due)| *due).collect();
        assert_eq!(dues, [10_000_000, 20_000_000, 30_000_000, 40_000_000, 50_000_000]);
    }

    #[test]
    fn cursors_over_disjoint_senders_together_make_the_whole_schedule() {
        let schedule = Schedule::new(50_000, 1_000).unwrap();
        let mut whole = schedule.cursor((0..1_000).collect());
        let mut even = schedule.cursor((0..1_000).filter(|i| i % 2 == 0).collect());
        let mut odd = schedule.cursor((0..1_000).filter(|i| i % 2 == 1).rev().collect());
        let end = 200_000_000; // 0.2 s
        let expected = drain_until(&mut whole, end);
        let mut merged = drain_until(&mut even, end);
        merged.extend(drain_until(&mut odd, end));
        merged.sort_by_key(|&(sender, due)| (due, sender));
        assert_eq!(merged, expected);
        assert_eq!(expected.len(), 10_001, "0.2 s at 50,000/s, both ends included");
    }

    #[test]
    fn huge_rounds_saturate_instead_of_overflowing() {
        let schedule = Schedule::new(1, u64::MAX).unwrap();
        assert_eq!(schedule.due_ns(u64::MAX, u64::MAX), u64::MAX);
    }
}
