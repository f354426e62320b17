//! The error catalogue: [`ErrorCode`], the stable numeric codes every natter error maps to (on the wire
//! in `Error.code`, over HTTP as the `"code"` string from [`ErrorCode::name`]), and [`WireError`], what
//! the frame codec reports when bytes from a peer cannot be read.
//!
//! Each code's documentation says who is at fault — the peer (it sent something it must not), a limit
//! (the peer is well-behaved but asked for too much), the server (an internal failure), or nobody
//! (the server is going away) — and whether natterd closes the connection after sending it
//! ([`ErrorCode::closes_connection`]). `docs/PROTOCOL.md` carries the same table for client authors.

use std::fmt;

use flatbuffers::InvalidFlatbuffer;

/// Stable numeric error codes (`u16` on the wire); also used as HTTP error `"code"` strings via
/// [`ErrorCode::name`].
///
/// Numbers and names never change and are never reused; new codes are appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Peer at fault: the bytes are not a valid frame (the FlatBuffer failed verification, the length
    /// prefix is too small, or the body is missing or of a type this protocol version does not know).
    /// Closes the connection: the stream can no longer be trusted to be in sync.
    BadFrame = 1,
    /// Limit hit by the peer: the length prefix announces a frame larger than the server's maximum
    /// (512 KiB by default). Closes the connection, since the rest of the frame is never read.
    FrameTooLarge = 2,
    /// Peer at fault: the first frame of a connection was not `Hello`. Closes the connection.
    NotAuthenticated = 3,
    /// Peer at fault (or its credentials are stale): the token in `Hello` is unknown, malformed or
    /// expired. Log in again over HTTP. Closes the connection.
    InvalidToken = 4,
    /// Incompatible peer: `Hello.protocol_version` is one the server does not speak. Closes the
    /// connection.
    UnsupportedVersion = 5,
    /// Peer at fault: a well-formed frame that a client must never send (a server-to-client frame such
    /// as `Welcome` or `Message`). The client misunderstands the protocol; closes the connection.
    UnexpectedFrame = 6,
    /// Peer at fault: the user is not a member of the chat named in the request. Reserved: the
    /// server no longer sends it (a non-member's `Send` answers [`ErrorCode::UnknownChat`], like a
    /// missing chat, so that ids reveal nothing); clients still decode it.
    NotMember = 7,
    /// Peer at fault: a `Send` with an empty text. The request is refused; the connection stays open.
    EmptyText = 8,
    /// Limit hit by the peer: a `Send` text longer than 100,000 characters. The request is refused;
    /// the connection stays open.
    TextTooLong = 9,
    /// Peer at fault: a string field (such as `Send.text`) is not valid UTF-8. The request is refused;
    /// the connection stays open.
    InvalidUtf8 = 10,
    /// Peer at fault: the chat named in the request does not exist, or the user is not a member
    /// of it (one answer for both). The request is refused; the connection stays open.
    UnknownChat = 11,
    /// Limit hit by the peer: too many requests (frames, sends, signups or logins) in too short a
    /// time. Slow down and retry later. The connection stays open.
    RateLimited = 12,
    /// Server at fault: an internal error. The request may be retried (a `Send` with the same
    /// `client_msg_id`). The connection stays open.
    Internal = 13,
    /// Nobody at fault: a resource the request needs is temporarily unavailable (for example the
    /// store is busy). Retry later; the connection stays open.
    Unavailable = 14,
    /// The token was revoked (`POST /v1/logout` or an administrator) while the session was live.
    /// Log in again. Closes the connection.
    TokenRevoked = 15,
    /// Nobody at fault: the server is shutting down. Reconnect (to another endpoint, or later) and
    /// sync. Closes the connection.
    ShuttingDown = 16,
    /// Peer at fault: no frame arrived within the heartbeat timeout. Closes the connection.
    HeartbeatTimeout = 17,
    /// Peer at fault: a second `Hello` on an authenticated connection. The frame is refused; the
    /// connection stays open.
    AlreadyAuthenticated = 18,
    /// Limit hit: the server has reached its connection limit. Retry later. Closes the
    /// connection.
    TooManyConnections = 19,
    /// Limit hit: the client did not read its frames fast enough and the server's outbound
    /// buffer for it overflowed. Closes the connection; reconnect and catch up (Sync/History).
    SlowConsumer = 20,
    /// Limit hit, nobody at fault: the server cannot take more writes right now (its store writer is
    /// behind). Retry the request later with the same `client_msg_id`; the connection stays open.
    Overloaded = 21,
    /// Limit hit: this user has the maximum number of live sessions; the oldest one is closed with
    /// this code to make room for the new one. Closes the connection it is sent on.
    TooManySessions = 22,
    /// Peer at fault: `Send.client_msg_id` is 0 (what an unset field reads as). Pick a nonzero id
    /// per message. The request is refused; the connection stays open.
    MissingClientMsgId = 23,
    /// Peer at fault: this `client_msg_id` was already used by this sender in this chat for a
    /// different text. Retries must repeat the same text; a new message needs a new id. The request
    /// is refused; the connection stays open.
    ClientMsgIdReused = 24,
    /// Peer at fault: an `Edit` or `Delete` of a message someone else sent (only its sender may
    /// edit it; only its sender or the group's owner may delete it). Refused; the connection stays
    /// open.
    NotSender = 25,
    /// Limit hit by the peer: the `Edit` or `Delete` came after its window (by default 15 minutes
    /// after the message for an edit, 48 hours for a delete). Refused; the connection stays open.
    WindowClosed = 26,
    /// Peer at fault: an `Edit` (or a second `Delete`) of a message that was deleted. Refused; the
    /// connection stays open.
    MessageDeleted = 27,
    /// Peer at fault: `target_seq` names no stored Text message of the chat (past the end, 0, or an
    /// edit or delete record). Refused; the connection stays open.
    UnknownTarget = 28,
    /// Limit hit by the peer: the message has been edited the most times allowed (64). Refused; the
    /// connection stays open.
    TooManyEdits = 29,
    /// Limit hit, nobody at fault: the server's disk is below its free-space reserve
    /// (`--disk-reserve`), so it takes no new messages (and, over HTTP, no new accounts, friends or
    /// groups) until space is freed — never an acknowledgement it could not keep. Reads (login,
    /// `Sync`, `History`, presence) keep working. Retry later with the same `client_msg_id`; the
    /// connection stays open.
    StorageFull = 30,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 30] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::NotAuthenticated,
        ErrorCode::InvalidToken,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnexpectedFrame,
        ErrorCode::NotMember,
        ErrorCode::EmptyText,
        ErrorCode::TextTooLong,
        ErrorCode::InvalidUtf8,
        ErrorCode::UnknownChat,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::TokenRevoked,
        ErrorCode::ShuttingDown,
        ErrorCode::HeartbeatTimeout,
        ErrorCode::AlreadyAuthenticated,
        ErrorCode::TooManyConnections,
        ErrorCode::SlowConsumer,
        ErrorCode::Overloaded,
        ErrorCode::TooManySessions,
        ErrorCode::MissingClientMsgId,
        ErrorCode::ClientMsgIdReused,
        ErrorCode::NotSender,
        ErrorCode::WindowClosed,
        ErrorCode::MessageDeleted,
        ErrorCode::UnknownTarget,
        ErrorCode::TooManyEdits,
        ErrorCode::StorageFull,
    ];

    /// The number sent in `Error.code`.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The code with this number, or `None` for a number this version does not know (a client should
    /// treat an unknown code as a failed request and show `Error.message`).
    pub fn from_u16(code: u16) -> Option<Self> {
        Some(match code {
            1 => ErrorCode::BadFrame,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::NotAuthenticated,
            4 => ErrorCode::InvalidToken,
            5 => ErrorCode::UnsupportedVersion,
            6 => ErrorCode::UnexpectedFrame,
            7 => ErrorCode::NotMember,
            8 => ErrorCode::EmptyText,
            9 => ErrorCode::TextTooLong,
            10 => ErrorCode::InvalidUtf8,
            11 => ErrorCode::UnknownChat,
            12 => ErrorCode::RateLimited,
            13 => ErrorCode::Internal,
            14 => ErrorCode::Unavailable,
            15 => ErrorCode::TokenRevoked,
            16 => ErrorCode::ShuttingDown,
            17 => ErrorCode::HeartbeatTimeout,
            18 => ErrorCode::AlreadyAuthenticated,
            19 => ErrorCode::TooManyConnections,
            20 => ErrorCode::SlowConsumer,
            21 => ErrorCode::Overloaded,
            22 => ErrorCode::TooManySessions,
            23 => ErrorCode::MissingClientMsgId,
            24 => ErrorCode::ClientMsgIdReused,
            25 => ErrorCode::NotSender,
            26 => ErrorCode::WindowClosed,
            27 => ErrorCode::MessageDeleted,
            28 => ErrorCode::UnknownTarget,
            29 => ErrorCode::TooManyEdits,
            30 => ErrorCode::StorageFull,
            _ => return None,
        })
    }

    /// The stable snake_case name (`"bad_frame"`, ...), used as the HTTP error `"code"` string.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::InvalidToken => "invalid_token",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnexpectedFrame => "unexpected_frame",
            ErrorCode::NotMember => "not_member",
            ErrorCode::EmptyText => "empty_text",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::UnknownChat => "unknown_chat",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::HeartbeatTimeout => "heartbeat_timeout",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::MissingClientMsgId => "missing_client_msg_id",
            ErrorCode::ClientMsgIdReused => "client_msg_id_reused",
            ErrorCode::NotSender => "not_sender",
            ErrorCode::WindowClosed => "window_closed",
            ErrorCode::MessageDeleted => "message_deleted",
            ErrorCode::UnknownTarget => "unknown_target",
            ErrorCode::TooManyEdits => "too_many_edits",
            ErrorCode::StorageFull => "storage_full",
        }
    }

    /// The code with this [`name`](Self::name), or `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.name() == name)
    }

    /// Whether natterd closes the connection after sending an `Error` with this code. Codes that
    /// answer a single request (`NotMember`, `EmptyText`, `RateLimited`, ...) leave it open.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::BadFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::NotAuthenticated
                | ErrorCode::InvalidToken
                | ErrorCode::UnsupportedVersion
                | ErrorCode::UnexpectedFrame
                | ErrorCode::TokenRevoked
                | ErrorCode::ShuttingDown
                | ErrorCode::HeartbeatTimeout
                | ErrorCode::TooManyConnections
                | ErrorCode::SlowConsumer
                | ErrorCode::TooManySessions
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> u16 {
        code.as_u16()
    }
}

/// Why bytes received from a peer could not be read as a frame. In every case the peer is at fault
/// (it sent a frame this side must refuse); [`WireError::code`] gives the [`ErrorCode`] to answer with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Limit hit: the length prefix announces a frame of `len` bytes (prefix included) and the limit
    /// is `max`. Detected from the 4-byte prefix alone, before the rest of the frame arrives.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// The whole frame's length as announced by the prefix, prefix included.
        len: usize,
        /// The configured limit ([`crate::Limits::max_frame`]).
        max: usize,
    },
    /// The length prefix is smaller than a minimal FlatBuffer (8 bytes), or a buffer given to
    /// [`crate::view`] cannot even hold the 4-byte prefix.
    #[error("frame length {len} is smaller than a minimal frame")]
    TooShort {
        /// The announced length after the prefix (or the buffer's length when it has no full prefix).
        len: usize,
    },
    /// A string field is not valid UTF-8 (the verifier's `Utf8Error`).
    #[error("a string field is not valid UTF-8")]
    InvalidUtf8,
    /// Any other verification failure: out-of-bounds offsets, misalignment, an inconsistent union,
    /// a prefix that disagrees with the buffer's length, or the depth/table/size limits of
    /// [`crate::Limits`]. The text describes the failure for logs.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The frame is a valid FlatBuffer but its body union is `NONE` or a type this protocol version
    /// does not know.
    #[error("frame has no body, or a body type this protocol version does not know")]
    MissingBody,
}

impl WireError {
    /// The error code to answer the peer with: `FrameTooLarge` for an oversize prefix, `InvalidUtf8`
    /// for a bad string, `BadFrame` for everything else.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            WireError::InvalidUtf8 => ErrorCode::InvalidUtf8,
            WireError::TooShort { .. } | WireError::Malformed(_) | WireError::MissingBody => {
                ErrorCode::BadFrame
            }
        }
    }
}

impl From<InvalidFlatbuffer> for WireError {
    fn from(err: InvalidFlatbuffer) -> Self {
        match err {
            InvalidFlatbuffer::Utf8Error { .. } => WireError::InvalidUtf8,
            other => WireError::Malformed(other.to_string().trim_end().to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_errors_map_to_wire_errors() {
        let bytes = vec![0xFF_u8];
        let utf8 = std::str::from_utf8(&bytes).unwrap_err();
        let err = InvalidFlatbuffer::Utf8Error {
            error: utf8,
            range: 0..1,
            error_trace: Default::default(),
        };
        assert_eq!(WireError::from(err), WireError::InvalidUtf8);
        let err = WireError::from(InvalidFlatbuffer::TooManyTables);
        assert!(matches!(&err, WireError::Malformed(m) if !m.ends_with('\n')));
        assert_eq!(err.code(), ErrorCode::BadFrame);
    }
}
