//! The queue mesh: how a core, the HTTP side-port or the shutdown path reaches
//! a core. Each core owns one bounded crossbeam queue of [`Command`]s and one
//! `mio::Waker`; senders push, then wake. Nothing on this path takes a lock
//! that a core holds while working.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::ids::{CoreId, DeviceId, UserId};
use crate::runtime::Command;

/// Commands a core's queue holds before senders see `Full`. A core drains up to
/// [`crate::runtime::COMMANDS_PER_TURN`] per loop turn, so this is many turns of slack.
pub const QUEUE_CAPACITY: usize = 65_536;

/// Why [`Mesh::offer`] did not queue a command.
#[derive(Debug)]
pub enum Refused {
    /// The core's queue is full: the command comes back, to be offered again
    /// (in order) once the core has drained some.
    Full(Command),
    /// The core has stopped (or never existed); the command is dropped.
    Stopped,
}

/// The sending half of one core's queue plus the waker of its `mio::Poll`.
#[derive(Debug, Clone)]
struct CoreHandle {
    tx: Sender<Command>,
    waker: Arc<mio::Waker>,
}

/// Handles to every core's queue; cheap to clone and shared by all threads.
#[derive(Debug, Clone)]
pub struct Mesh {
    cores: Arc<[CoreHandle]>,
}

impl Mesh {
    /// Builds the mesh from one `(sender, waker)` pair per core, in `CoreId` order.
    pub fn new(handles: Vec<(Sender<Command>, Arc<mio::Waker>)>) -> Self {
        Self {
            cores: handles
                .into_iter()
                .map(|(tx, waker)| CoreHandle { tx, waker })
                .collect(),
        }
    }

    /// Creates the queue for one core: the receiver goes to the core, the sender to [`Mesh::new`].
    pub fn queue() -> (Sender<Command>, Receiver<Command>) {
        Self::queue_with_capacity(QUEUE_CAPACITY)
    }

    /// [`Mesh::queue`] holding `capacity` commands (`--core-queue-capacity`;
    /// tests use tiny ones to exercise full queues). At least one.
    pub fn queue_with_capacity(capacity: usize) -> (Sender<Command>, Receiver<Command>) {
        crossbeam_channel::bounded(capacity.max(1))
    }

    /// Number of cores.
    pub fn len(&self) -> usize {
        self.cores.len()
    }

    /// True when the mesh has no cores (never, once natterd runs).
    pub fn is_empty(&self) -> bool {
        self.cores.is_empty()
    }

    /// Queues `cmd` for `core` without blocking and wakes it.
    ///
    /// # Errors
    /// Gives the command back when the queue is full or the core has stopped.
    pub fn try_send(&self, core: CoreId, cmd: Command) -> Result<(), Command> {
        let Some(handle) = self.cores.get(core.0) else {
            return Err(cmd);
        };
        match handle.tx.try_send(cmd) {
            Ok(()) => {
                // A failed wake means the Poll is gone: the core is shutting down.
                let _ = handle.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(cmd) | TrySendError::Disconnected(cmd)) => Err(cmd),
        }
    }

    /// Queues `cmd` without waking `core`; the caller wakes it once per batch with [`Mesh::wake`].
    ///
    /// # Errors
    /// Gives the command back when the queue is full or the core has stopped.
    pub fn try_push(&self, core: CoreId, cmd: Command) -> Result<(), Command> {
        let Some(handle) = self.cores.get(core.0) else {
            return Err(cmd);
        };
        handle.tx.try_send(cmd).map_err(|e| e.into_inner())
    }

    /// Like [`Mesh::try_send`] (queues and wakes, never blocks), telling a full
    /// queue (try again later) from a core that has stopped (it never will).
    ///
    /// # Errors
    /// [`Refused::Full`] with the command, or [`Refused::Stopped`].
    pub fn offer(&self, core: CoreId, cmd: Command) -> Result<(), Refused> {
        let Some(handle) = self.cores.get(core.0) else {
            return Err(Refused::Stopped);
        };
        match handle.tx.try_send(cmd) {
            Ok(()) => {
                let _ = handle.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(cmd)) => Err(Refused::Full(cmd)),
            Err(TrySendError::Disconnected(_)) => Err(Refused::Stopped),
        }
    }

    /// Wakes `core` so it drains its queue.
    pub fn wake(&self, core: CoreId) {
        if let Some(handle) = self.cores.get(core.0) {
            let _ = handle.waker.wake();
        }
    }

    /// Queues `cmd` for `core`, blocking while the queue is full. For threads that
    /// are not event loops (HTTP workers, shutdown), never for a core.
    ///
    /// # Errors
    /// Gives the command back when the core has stopped.
    pub fn send_blocking(&self, core: CoreId, cmd: Command) -> Result<(), Command> {
        let Some(handle) = self.cores.get(core.0) else {
            return Err(cmd);
        };
        handle.tx.send(cmd).map_err(|e| e.into_inner())?;
        let _ = handle.waker.wake();
        Ok(())
    }

    /// Closes every live session of `device` (after logout revoked its token).
    /// Goes to the user's home core, where authenticated sessions live.
    pub fn close_device(&self, user: UserId, device: DeviceId) {
        let core = user.home_core(self.len());
        let _ = self.send_blocking(core, Command::CloseDevice { user, device });
    }
}
