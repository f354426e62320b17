//! Liveness from the outbound direction: a client draining a large backlog
//! slowly may send nothing for a long time — natterd even stops reading it
//! while much is queued for it, so its Pings sit unread in the kernel — yet it
//! is plainly alive. The driver reports when the peer took bytes from a socket
//! whose send buffer had been full ([`Core::handle_output_progress`]); that
//! counts as hearing from it, like any frame.
//!
//! The push thread asks the same question from outside
//! ([`Core::devices_heard_within`]): is this device reachable over a live
//! session, or does it need a push notification?

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

impl Core {
    /// For the push thread: whether each `(user, device)` homed on this core has
    /// an authenticated session heard from within `silent_after` of `now` (a
    /// frame, or output progress). A device without one is "offline" for push:
    /// no session, or one silent for so long that its phone is probably in a
    /// pocket with the app suspended. The answer is in the order asked.
    pub fn devices_heard_within(
        &self,
        devices: &[(crate::ids::UserId, crate::ids::DeviceId)],
        silent_after: std::time::Duration,
        now: Instant,
    ) -> Vec<bool> {
        devices
            .iter()
            .map(|(user, device)| {
                self.devices.get(user).is_some_and(|list| {
                    list.iter().any(|(d, conn)| {
                        *d == *device
                            && self.sessions.get(conn.0).is_some_and(|s| {
                                matches!(s.state, State::Active { .. })
                                    && now.saturating_duration_since(s.last_heard) <= silent_after
                            })
                    })
                })
            })
            .collect()
    }
}
