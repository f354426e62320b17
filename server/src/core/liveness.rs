//! Liveness from the outbound direction: a client draining a large backlog
//! slowly may send nothing for a long time — natterd even stops reading it
//! while much is queued for it, so its Pings sit unread in the kernel — yet it
//! is plainly alive. The driver reports when the peer took bytes from a socket
//! whose send buffer had been full ([`Core::handle_output_progress`]); that
//! counts as hearing from it, like any frame.

use std::time::Instant;

use super::{ConnId, Core, State};

impl Core {
    /// The peer of `conn` accepted outbound bytes after the connection's send
    /// buffer had been full (the driver saw `WouldBlock`, then a write that made
    /// progress): proof that it is alive and reading. Counts as a heartbeat of
    /// an authenticated session, so a slow reader is not closed as silent. A
    /// write into a buffer that never filled proves nothing (the kernel takes
    /// it whether or not the peer is there) and must not be reported.
    pub fn handle_output_progress(&mut self, conn: ConnId, now: Instant) {
        if let Some(session) = self.sessions.get_mut(conn.0)
            && matches!(session.state, State::Active { .. })
        {
            session.last_heard = now;
        }
    }
}
