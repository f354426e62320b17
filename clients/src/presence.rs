//! Presence over the HTTP side-port: `GET /v1/presence?user_id=…`, a friend's
//! presence on demand. Live changes arrive over a [`crate::Connection`] as
//! `Presence` frames (a snapshot of every friend right after `Welcome`, then
//! one frame per change).

use serde::Deserialize;

use crate::{ClientError, HttpClient};

/// `GET /v1/presence`: one user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct UserPresence {
    /// The user.
    pub user_id: u64,
    /// Whether at least one of the user's devices is connected (or came back
    /// within the server's grace period).
    pub online: bool,
    /// Online: the server's current time; offline: when the user was last heard
    /// from. Milliseconds since the Unix epoch; 0 when never seen.
    pub last_seen_ms: u64,
}

impl HttpClient {
    /// `GET /v1/presence?user_id={user_id}`: a friend's presence (or one's own).
    ///
    /// # Errors
    /// [`ClientError::Http`] 403 `not_friends` for someone who is not a friend
    /// (or a user id that does not exist: the server answers both alike), 401
    /// for a bad token.
    pub fn presence(&self, token: &str, user_id: u64) -> Result<UserPresence, ClientError> {
        let path = format!("/v1/presence?user_id={user_id}");
        self.call_json("GET /v1/presence", "GET", &path, Some(token), None)
    }
}
