//! The correctness accounting of a messaging run: which `seq`s of a chat were
//! acknowledged ([`SeqSet`]), what one device saw of a chat ([`SeqTracker`]: in order,
//! duplicated, reordered), and from both, what it lost.
//!
//! A device's view of a chat is the stream of `Message`s it receives *and* the
//! `SendOk`s of its own sends (the server sends the sending device no `Message` for
//! its own message, and answers it in the same per-chat order). That stream must be
//! exactly `baseline + 1, baseline + 2, …` where `baseline` is the chat's last `seq`
//! before the run: every step that is not `last + 1` is either a duplicate (a `seq`
//! seen before) or a reordering (a step back, or a skip over a gap).

/// Most `seq`s past the baseline tracked per chat: 2^26 bits = 8 MiB per tracker at
/// worst, far beyond a run (millions of messages per chat would take minutes). A `seq`
/// beyond it counts as reordered.
pub(crate) const MAX_TRACKED_SEQS: u64 = 1 << 26;

/// A set of `seq`s above a baseline, as a bitmap grown on demand.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqSet {
    words: Vec<u64>,
}

impl SeqSet {
    /// Adds bit `index`; returns whether it was new. Indexes at or above
    /// [`MAX_TRACKED_SEQS`] are refused (`false`).
    pub(crate) fn insert(&mut self, index: u64) -> bool {
        if index >= MAX_TRACKED_SEQS {
            return false;
        }
        // Bounded by MAX_TRACKED_SEQS, so the casts are lossless.
        let word = (index / 64) as usize;
        let bit = 1u64 << (index % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        match self.words.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }

    /// Whether bit `index` is set.
    pub(crate) fn contains(&self, index: u64) -> bool {
        let word = usize::try_from(index / 64).unwrap_or(usize::MAX);
        self.words
            .get(word)
            .is_some_and(|w| w & (1u64 << (index % 64)) != 0)
    }

    /// Adds every member of `other`.
    pub(crate) fn union_with(&mut self, other: &SeqSet) {
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
    }

    /// How many members of `other` are not in `self`.
    pub(crate) fn missing_from(&self, other: &SeqSet) -> u64 {
        other
            .words
            .iter()
            .enumerate()
            .map(|(i, theirs)| u64::from((theirs & !self.words.get(i).copied().unwrap_or(0)).count_ones()))
            .sum()
    }

    /// Number of members.
    pub(crate) fn len(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// What one observed `seq` was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Observation {
    /// The next `seq` (`last + 1`), seen for the first time.
    InOrder,
    /// A `seq` seen before.
    Duplicate,
    /// A step back, a skip over a gap, or a `seq` outside the tracked range.
    Reordered,
}

/// One device's view of one chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SeqTracker {
    /// The chat's last `seq` before the run.
    baseline: u64,
    /// The highest `seq` seen (the baseline before any).
    last: u64,
    /// Every `seq` seen, as `seq - baseline - 1`.
    seen: SeqSet,
}

impl SeqTracker {
    /// A tracker for a chat whose last `seq` before the run is `baseline`.
    pub(crate) fn new(baseline: u64) -> Self {
        SeqTracker {
            baseline,
            last: baseline,
            seen: SeqSet::default(),
        }
    }

    /// Accounts for `seq` arriving (as a `Message`, or as the `SendOk` of one's own
    /// send).
    pub(crate) fn observe(&mut self, seq: u64) -> Observation {
        let Some(index) = seq_index(self.baseline, seq) else {
            return Observation::Reordered;
        };
        if self.seen.contains(index) {
            return Observation::Duplicate;
        }
        if !self.seen.insert(index) {
            return Observation::Reordered;
        }
        let in_order = seq == self.last + 1;
        self.last = self.last.max(seq);
        if in_order {
            Observation::InOrder
        } else {
            Observation::Reordered
        }
    }

    /// How many of the chat's acknowledged `seq`s (`acked`, indexed like this
    /// tracker: `seq - baseline - 1`) this device never saw.
    pub(crate) fn missing(&self, acked: &SeqSet) -> u64 {
        self.seen.missing_from(acked)
    }
}

/// The bit index of `seq` above `baseline` (`seq - baseline - 1`), `None` at or
/// below the baseline.
pub(crate) fn seq_index(baseline: u64, seq: u64) -> Option<u64> {
    seq.checked_sub(baseline)?.checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_sets_grow_and_count() {
        let mut set = SeqSet::default();
        assert!(set.insert(0));
        assert!(set.insert(200));
        assert!(!set.insert(200));
        assert!(!set.insert(MAX_TRACKED_SEQS));
        assert!(set.contains(0) && set.contains(200) && !set.contains(1) && !set.contains(10_000));
        assert_eq!(set.len(), 2);

        let mut other = SeqSet::default();
        other.insert(1);
        other.insert(500);
        set.union_with(&other);
        assert_eq!(set.len(), 4);
        assert_eq!(other.missing_from(&set), 2, "0 and 200 are not in `other`");
        assert_eq!(set.missing_from(&other), 0);
    }

    #[test]
    fn a_gapless_stream_is_in_order() {
        let mut tracker = SeqTracker::new(10);
        for seq in 11..=20 {
            assert_eq!(tracker.observe(seq), Observation::InOrder, "seq {seq}");
        }
    }

    #[test]
    fn a_repeated_seq_is_a_duplicate_and_does_not_move_the_cursor() {
        let mut tracker = SeqTracker::new(0);
        assert_eq!(tracker.observe(1), Observation::InOrder);
        assert_eq!(tracker.observe(2), Observation::InOrder);
        assert_eq!(tracker.observe(1), Observation::Duplicate);
        assert_eq!(tracker.observe(2), Observation::Duplicate);
        assert_eq!(tracker.observe(3), Observation::InOrder);
    }

    #[test]
    fn a_skip_and_the_late_arrival_are_both_reorderings() {
        let mut tracker = SeqTracker::new(0);
        assert_eq!(tracker.observe(1), Observation::InOrder);
        assert_eq!(tracker.observe(3), Observation::Reordered, "skips 2");
        assert_eq!(tracker.observe(2), Observation::Reordered, "goes back");
        assert_eq!(tracker.observe(4), Observation::InOrder);
    }

    #[test]
    fn seqs_outside_the_run_are_reorderings() {
        let mut tracker = SeqTracker::new(100);
        assert_eq!(tracker.observe(100), Observation::Reordered, "at the baseline");
        assert_eq!(tracker.observe(7), Observation::Reordered, "below it");
        assert_eq!(
            tracker.observe(100 + MAX_TRACKED_SEQS + 1),
            Observation::Reordered,
            "beyond the tracked range"
        );
        assert_eq!(tracker.observe(101), Observation::InOrder);
    }

    #[test]
    fn own_acks_interleave_with_deliveries() {
        // A device of a DM: its own sends come back as SendOk seqs, the friend's as Messages.
        let mut tracker = SeqTracker::new(0);
        for seq in 1..=6 {
            assert_eq!(tracker.observe(seq), Observation::InOrder);
        }
    }

    #[test]
    fn lost_counts_acked_seqs_a_device_never_saw() {
        let mut acked = SeqSet::default();
        for seq in 1..=10 {
            acked.insert(seq_index(0, seq).unwrap());
        }
        let mut tracker = SeqTracker::new(0);
        for seq in [1, 2, 3, 5, 6, 7, 8, 9] {
            tracker.observe(seq);
        }
        assert_eq!(tracker.missing(&acked), 2, "4 and 10");
        // A delivered but never acknowledged seq (its sender vanished) is not lost.
        tracker.observe(11);
        assert_eq!(tracker.missing(&acked), 2);
    }

    #[test]
    fn seq_index_is_relative_to_the_baseline() {
        assert_eq!(seq_index(0, 1), Some(0));
        assert_eq!(seq_index(5, 7), Some(1));
        assert_eq!(seq_index(5, 5), None);
        assert_eq!(seq_index(5, 0), None);
    }
}
