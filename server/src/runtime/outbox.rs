//! A core's outbox: the commands it has for other cores that their queues
//! have not taken yet, kept **FIFO per target core** under every queue state.
//!
//! Sequencing, membership ordering and the sync seam all rely on each pair of
//! cores seeing its commands in the order they were sent. So the outbox keeps
//! one queue per target and hands a target's commands over strictly from the
//! front: once one command for core X is refused (X's queue is full), every
//! later command for X — a `Core` batch, an `Adopt` from a migration, anything
//! — waits behind it, even if X frees a slot a moment later. Targets are
//! independent: a full core never holds back commands for another one.
//!
//! The outbox is bounded by backpressure, not by dropping: when more than
//! [`OUTBOX_PAUSE_MARK`] commands are waiting the worker stops reading its
//! client sockets (the source of almost everything it sends other cores) and
//! resumes once the outbox is at or below [`OUTBOX_RESUME_MARK`].

use std::collections::VecDeque;

use crate::ids::CoreId;

/// Commands waiting in a core's outbox past which the core stops reading its
/// client sockets. A core adds about one command per target per loop turn
/// (its `Core` batch) plus one per session it migrates, so a thousand means a
/// target has refused it for hundreds of turns: the target is overloaded and
/// taking more input would only grow this core's memory. Commands from other
/// cores are still drained meanwhile (stopping those too could deadlock two
/// cores whose queues are full of each other's work).
pub const OUTBOX_PAUSE_MARK: usize = 1024;

/// Outbox length at or below which reading resumes: half the pause mark, so a
/// core near the mark does not flip between paused and reading every turn.
pub const OUTBOX_RESUME_MARK: usize = OUTBOX_PAUSE_MARK / 2;

/// Commands for other cores, one FIFO per target (index = target core).
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    queues: Vec<VecDeque<T>>,
    len: usize,
    /// Past [`OUTBOX_PAUSE_MARK`] and not yet back to [`OUTBOX_RESUME_MARK`].
    paused: bool,
}

/// What [`Outbox::backpressure`] tells the worker to do about reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backpressure {
    /// The outbox just passed [`OUTBOX_PAUSE_MARK`]: stop reading client sockets.
    Pause,
    /// It just drained to [`OUTBOX_RESUME_MARK`]: serve the deferred sockets.
    Resume,
    /// No change since the last call.
    Unchanged,
}

impl<T> Outbox<T> {
    /// An empty outbox for a mesh of `cores` cores.
    pub(crate) fn new(cores: usize) -> Self {
        Self {
            queues: (0..cores).map(|_| VecDeque::new()).collect(),
            len: 0,
            paused: false,
        }
    }

    /// Whether reading must pause or may resume, by the outbox's length, with
    /// hysteresis between the two marks. Call after each flush.
    pub(crate) fn backpressure(&mut self) -> Backpressure {
        if !self.paused && self.len > OUTBOX_PAUSE_MARK {
            self.paused = true;
            Backpressure::Pause
        } else if self.paused && self.len <= OUTBOX_RESUME_MARK {
            self.paused = false;
            Backpressure::Resume
        } else {
            Backpressure::Unchanged
        }
    }

    /// Queues `cmd` for `to`, behind everything already waiting for `to`.
    pub(crate) fn push(&mut self, to: CoreId, cmd: T) {
        if self.queues.len() <= to.0 {
            self.queues.resize_with(to.0 + 1, VecDeque::new);
        }
        if let Some(queue) = self.queues.get_mut(to.0) {
            queue.push_back(cmd);
            self.len += 1;
        }
    }

    /// Commands waiting, over all targets.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hands waiting commands over with `try_push`, per target from the front,
    /// and stops for a target at its first refusal (the refused command goes
    /// back to the front: nothing is reordered or dropped). Calls `woken` once
    /// per target that took at least one command.
    pub(crate) fn flush(
        &mut self,
        mut try_push: impl FnMut(CoreId, T) -> Result<(), T>,
        mut woken: impl FnMut(CoreId),
    ) {
        if self.len == 0 {
            return;
        }
        for (core, queue) in self.queues.iter_mut().enumerate() {
            let mut took = false;
            while let Some(cmd) = queue.pop_front() {
                match try_push(CoreId(core), cmd) {
                    Ok(()) => {
                        self.len -= 1;
                        took = true;
                    }
                    Err(cmd) => {
                        queue.push_front(cmd);
                        break;
                    }
                }
            }
            if took {
                woken(CoreId(core));
            }
            if queue.is_empty() && queue.capacity() > 0 {
                // An idle outbox holds no memory.
                *queue = VecDeque::new();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A target queue of `capacity` commands whose consumer takes one command
    /// whenever `drain_after_each_push` says so: the state in which the old
    /// outbox reordered (the target frees a slot between two pushes).
    struct Target {
        capacity: usize,
        queue: VecDeque<u32>,
        received: Vec<u32>,
    }

    impl Target {
        fn new(capacity: usize) -> Self {
            Self {
                capacity,
                queue: VecDeque::new(),
                received: Vec::new(),
            }
        }

        fn try_push(&mut self, cmd: u32) -> Result<(), u32> {
            if self.queue.len() >= self.capacity {
                // The consumer runs concurrently: refusing this push, it takes one
                // command, so the *next* push would find a free slot.
                if let Some(front) = self.queue.pop_front() {
                    self.received.push(front);
                }
                return Err(cmd);
            }
            self.queue.push_back(cmd);
            Ok(())
        }

        fn drain(&mut self) {
            self.received.extend(self.queue.drain(..));
        }
    }

    #[test]
    fn a_refused_command_holds_back_every_later_one_for_that_core() {
        let mut outbox = Outbox::new(3);
        let mut targets = [Target::new(1), Target::new(1), Target::new(1)];
        let mut next = 0u32;
        for _turn in 0..50 {
            // Each turn queues a few commands for cores 1 and 2, interleaved.
            for _ in 0..3 {
                outbox.push(CoreId(1), next);
                outbox.push(CoreId(2), next + 1000);
                next += 1;
            }
            let mut woken = Vec::new();
            outbox.flush(
                |to, cmd| match targets.get_mut(to.0) {
                    Some(target) => target.try_push(cmd),
                    None => Err(cmd),
                },
                |core| woken.push(core),
            );
            assert!(woken.windows(2).all(|w| w[0] != w[1]), "each target woken once");
        }
        // Drain to the end: the consumers keep taking until the outbox is empty.
        while !outbox.is_empty() {
            for target in &mut targets {
                target.drain();
            }
            outbox.flush(
                |to, cmd| match targets.get_mut(to.0) {
                    Some(target) => target.try_push(cmd),
                    None => Err(cmd),
                },
                |_| {},
            );
        }
        for target in &mut targets {
            target.drain();
        }
        assert_eq!(targets[1].received, (0..next).collect::<Vec<_>>(), "core 1 order");
        assert_eq!(
            targets[2].received,
            (1000..1000 + next).collect::<Vec<_>>(),
            "core 2 order"
        );
        assert!(targets[0].received.is_empty());
        assert_eq!(outbox.len(), 0);
    }

    #[test]
    fn past_the_pause_mark_reading_pauses_until_the_outbox_is_back_to_the_resume_mark() {
        let mut outbox = Outbox::new(2);
        for i in 0..OUTBOX_PAUSE_MARK {
            outbox.push(CoreId(1), i);
        }
        assert_eq!(
            outbox.backpressure(),
            Backpressure::Unchanged,
            "at the mark: still reading"
        );
        outbox.push(CoreId(1), OUTBOX_PAUSE_MARK);
        assert_eq!(outbox.backpressure(), Backpressure::Pause);
        assert_eq!(outbox.backpressure(), Backpressure::Unchanged, "reported once");
        // The target takes a few at a time: no resume until the resume mark.
        let mut taken = Vec::new();
        while outbox.len() > OUTBOX_RESUME_MARK {
            let mut budget = 100;
            outbox.flush(
                |_, cmd| {
                    if budget == 0 {
                        return Err(cmd);
                    }
                    budget -= 1;
                    taken.push(cmd);
                    Ok(())
                },
                |_| {},
            );
            let expected = if outbox.len() <= OUTBOX_RESUME_MARK {
                Backpressure::Resume
            } else {
                Backpressure::Unchanged
            };
            assert_eq!(outbox.backpressure(), expected, "at {}", outbox.len());
        }
        assert!(taken.windows(2).all(|w| w[0] + 1 == w[1]), "in order");
        assert_eq!(outbox.backpressure(), Backpressure::Unchanged);
    }

    #[test]
    fn a_full_core_does_not_hold_back_another() {
        let mut outbox = Outbox::new(2);
        outbox.push(CoreId(0), 1);
        outbox.push(CoreId(1), 2);
        outbox.push(CoreId(0), 3);
        let mut taken = Vec::new();
        outbox.flush(
            |to, cmd| {
                if to == CoreId(0) {
                    Err(cmd)
                } else {
                    taken.push(cmd);
                    Ok(())
                }
            },
            |_| {},
        );
        assert_eq!(taken, vec![2]);
        assert_eq!(outbox.len(), 2);
        let mut taken = Vec::new();
        outbox.flush(
            |_, cmd| {
                taken.push(cmd);
                Ok(())
            },
            |_| {},
        );
        assert_eq!(taken, vec![1, 3]);
        assert!(outbox.is_empty());
    }
}
