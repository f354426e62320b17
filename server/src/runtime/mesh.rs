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
        crossbeam_channel::bounded(QUEUE_CAPACITY)
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
