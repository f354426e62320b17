//! What the fuzz targets (and tests) may see of a [`Core`] beyond its driving
//! API: the phase of each connection and a consistency check of the core's
//! internal indexes. Compiled only for tests and the `fuzzing` feature
//! (CONTRIBUTING.md, convention 12); the runtime never calls it.
//!
//! `natter_server::fuzzing::session` uses both after every event it feeds two
//! cores: [`Core::phase`] to cross-check its own model of each connection (a
//! `Welcome` must leave the session [`Phase::Active`] as the user and device the
//! token lookup returned), [`Core::check_invariants`] to catch an index that
//! drifted from the sessions it describes.

use std::collections::HashSet;

use super::{ConnId, Core, State};
use crate::ids::{DeviceId, UserId};

/// Where a connection's handshake stands, as [`Core::phase`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; its first frame must be Hello.
    AwaitingHello,
    /// Hello received; waiting for [`Core::handle_auth`].
    Authenticating,
    /// Authenticated for a user homed on another core, or adopted from
    /// another core and waiting for the token to be looked up again.
    Migrating,
    /// Authenticated and served by this core.
    Active {
        /// The authenticated user.
        user: UserId,
        /// The authenticated device.
        device: DeviceId,
    },
    /// An Error and an [`super::Action::Close`] were queued; waiting for
    /// [`Core::handle_closed`].
    Closing,
}

impl Core {
    /// The phase of `conn`, or `None` when the core holds no such connection
    /// (never accepted, closed with [`Core::handle_closed`], or detached).
    pub fn phase(&self, conn: ConnId) -> Option<Phase> {
        let session = self.sessions.get(conn.0)?;
        Some(match session.state {
            State::AwaitingHello { .. } => Phase::AwaitingHello,
            State::Authenticating { .. } => Phase::Authenticating,
            State::Migrating { .. } => Phase::Migrating,
            State::Active { user, device } => Phase::Active { user, device },
            State::Closing => Phase::Closing,
        })
    }

    /// Whether `conn` waits for the answer of a read it asked for (History):
    /// its frames are not taken until then ([`InputStatus::Paused`](super::InputStatus::Paused)).
    pub fn is_reading(&self, conn: ConnId) -> bool {
        self.sessions.get(conn.0).is_some_and(|s| s.reading)
    }

    /// Checks that the index of authenticated devices describes exactly the
    /// sessions in [`Phase::Active`]: every entry names an active session of that
    /// user and device, on this core, listed once; every active session is
    /// listed; the user's home core is this core; and [`Core::stats`] counts them.
    /// Also presence: every user with a session is online, nobody in a grace
    /// period has one, and the friend lists are well-formed.
    ///
    /// # Errors
    ///
    /// A description of the first inconsistency found.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut listed = HashSet::new();
        for (user, list) in &self.devices {
            if list.is_empty() {
                return Err(format!("user {user} has an empty device list"));
            }
            for &(device, conn) in list {
                if !listed.insert(conn) {
                    return Err(format!("{conn:?} is listed twice in the device index"));
                }
                match self.phase(conn) {
                    Some(Phase::Active { user: u, device: d }) if u == *user && d == device => {}
                    other => {
                        return Err(format!(
                            "device index lists {conn:?} as user {user} device {device}, but it is {other:?}"
                        ));
                    }
                }
            }
        }
        if listed.len() as u64 != self.stats.sessions {
            return Err(format!(
                "the session counter says {} but the device index holds {}",
                self.stats.sessions,
                listed.len()
            ));
        }
        for (key, session) in &self.sessions {
            if let State::Active { user, .. } = session.state {
                if !listed.contains(&ConnId(key)) {
                    return Err(format!(
                        "active session {key} of user {user} is not in the device index"
                    ));
                }
                let home = user.home_core(self.config.cores);
                if home != self.config.core {
                    return Err(format!(
                        "user {user} is active on core {} but homed on core {home}",
                        self.config.core
                    ));
                }
            }
        }
        let stats = self.stats();
        if stats.sessions != listed.len() as u64 || stats.connections != self.sessions.len() as u64 {
            return Err(format!(
                "stats count {} sessions / {} connections, the core holds {} / {}",
                stats.sessions,
                stats.connections,
                listed.len(),
                self.sessions.len()
            ));
        }
        self.check_presence()
    }
}
