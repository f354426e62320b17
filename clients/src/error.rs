//! The one error type of natter-client, [`ClientError`], and [`ServerCode`], the
//! numeric error code a server puts in an `Error` frame.
//!
//! Each variant says who is at fault: the server refused (`Http`, `Refused`), the
//! server misbehaved or speaks another protocol (`UnexpectedResponse`, `Wire`,
//! `UnexpectedFrame`), the network or the OS failed (`Transport`, `Io`, `Closed`,
//! `Timeout`), or the caller misused the API (`InvalidArgument`).

use std::fmt;
use std::time::Duration;

use natter_wire::{ErrorCode, WireError};

/// Everything that can go wrong talking to natterd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The HTTP side-port answered with a status other than 2xx. `code` and
    /// `message` come from the server's `{"error": {"code", "message"}}` body; when
    /// the body is not in that shape, `code` is `"http_<status>"` and `message` is
    /// the start of the body.
    #[error("HTTP {status} {code}: {message}")]
    Http {
        /// The HTTP status code (4xx: the request was refused; 5xx: the server failed).
        status: u16,
        /// The stable snake_case error code, e.g. `username_taken`.
        code: String,
        /// The human-readable explanation.
        message: String,
    },
    /// The HTTP request did not complete: connection refused, timed out, or the
    /// response was not HTTP.
    #[error("HTTP transport failed: {0}")]
    Transport(#[from] ureq::Error),
    /// A 2xx HTTP response whose body is not what the API promises: the server is
    /// broken or speaks another version of the API.
    #[error("unexpected response from {endpoint}: {message}")]
    UnexpectedResponse {
        /// The route that answered, e.g. `POST /v1/login`.
        endpoint: &'static str,
        /// What did not fit.
        message: String,
    },
    /// A socket operation on the TCP connection failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent bytes that are not a valid frame (the connection is unusable
    /// afterwards).
    #[error("invalid frame from server: {0}")]
    Wire(#[from] WireError),
    /// The TLS handshake or the WebSocket upgrade failed: a certificate that
    /// does not match the pin or the CA, an upgrade refused with an HTTP status.
    #[error("{transport} handshake failed: {message}")]
    Handshake {
        /// `TLS` or `WebSocket`.
        transport: &'static str,
        /// What went wrong (for an upgrade: the HTTP status).
        message: String,
    },
    /// The server closed the TCP connection (end of stream or connection reset).
    #[error("connection closed by the server")]
    Closed,
    /// The server answered with an `Error` frame: during the handshake (wrong or
    /// revoked token, unsupported version, too many connections) or to a request.
    /// During the handshake the server closes the connection right after it.
    #[error("refused by server: {code}: {message}")]
    Refused {
        /// The numeric code from the `Error` frame.
        code: ServerCode,
        /// The human-readable explanation from the `Error` frame.
        message: String,
    },
    /// The server sent a frame that does not fit the exchange, e.g. something other
    /// than `Welcome` in answer to `Hello`.
    #[error("unexpected frame while waiting for {expected}: {got}")]
    UnexpectedFrame {
        /// What the client was waiting for.
        expected: &'static str,
        /// A short description of what came instead.
        got: String,
    },
    /// No answer arrived in time.
    #[error("timed out after {waited:?} waiting for {expected}")]
    Timeout {
        /// How long the client waited.
        waited: Duration,
        /// What the client was waiting for.
        expected: &'static str,
    },
    /// The caller passed something the client cannot use (API misuse), e.g. an
    /// endpoint URL that is not `http://`.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl ClientError {
    /// The HTTP status of an [`ClientError::Http`] error, `None` for every other variant.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The snake_case code of an [`ClientError::Http`] error (e.g. `username_taken`),
    /// `None` for every other variant.
    pub fn http_code(&self) -> Option<&str> {
        match self {
            ClientError::Http { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The code of a [`ClientError::Refused`] error, `None` for every other variant.
    pub fn server_code(&self) -> Option<ServerCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The numeric code of an `Error` frame: one this client knows as an [`ErrorCode`],
/// or a newer one it does not (kept as the raw number).
///
/// Compares equal to an [`ErrorCode`], so a test can write
/// `assert_eq!(code, ErrorCode::InvalidToken)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerCode {
    /// A code from this version's catalogue.
    Known(ErrorCode),
    /// A code this version of the client does not know.
    Unknown(u16),
}

impl ServerCode {
    /// Interprets a code as sent on the wire.
    pub fn from_u16(code: u16) -> Self {
        match ErrorCode::from_u16(code) {
            Some(known) => ServerCode::Known(known),
            None => ServerCode::Unknown(code),
        }
    }

    /// The number as sent on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            ServerCode::Known(code) => code.as_u16(),
            ServerCode::Unknown(code) => code,
        }
    }

    /// The catalogued code, `None` if this client does not know the number.
    pub fn known(self) -> Option<ErrorCode> {
        match self {
            ServerCode::Known(code) => Some(code),
            ServerCode::Unknown(_) => None,
        }
    }
}

impl From<u16> for ServerCode {
    fn from(code: u16) -> Self {
        ServerCode::from_u16(code)
    }
}

impl From<ErrorCode> for ServerCode {
    fn from(code: ErrorCode) -> Self {
        ServerCode::Known(code)
    }
}

impl PartialEq<ErrorCode> for ServerCode {
    fn eq(&self, other: &ErrorCode) -> bool {
        *self == ServerCode::Known(*other)
    }
}

impl fmt::Display for ServerCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerCode::Known(code) => write!(f, "{} ({})", code.name(), code.as_u16()),
            ServerCode::Unknown(code) => write!(f, "unknown code {code}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_code_round_trips_known_and_unknown_numbers() {
        let known = ServerCode::from_u16(ErrorCode::InvalidToken.as_u16());
        assert_eq!(known, ErrorCode::InvalidToken);
        assert_eq!(known.known(), Some(ErrorCode::InvalidToken));
        assert_eq!(known.as_u16(), ErrorCode::InvalidToken.as_u16());

        let unknown = ServerCode::from_u16(60_000);
        assert_eq!(unknown, ServerCode::Unknown(60_000));
        assert_eq!(unknown.known(), None);
        assert_eq!(unknown.as_u16(), 60_000);
        assert_ne!(unknown, ErrorCode::InvalidToken);
    }

    #[test]
    fn display_names_the_code() {
        let text = ServerCode::Known(ErrorCode::InvalidToken).to_string();
        assert!(text.contains("invalid_token"), "{text}");
        assert!(ServerCode::Unknown(999).to_string().contains("999"));
    }

    #[test]
    fn accessors_pick_the_right_variant() {
        let http = ClientError::Http {
            status: 409,
            code: "username_taken".into(),
            message: "taken".into(),
        };
        assert_eq!(http.http_status(), Some(409));
        assert_eq!(http.http_code(), Some("username_taken"));
        assert_eq!(http.server_code(), None);

        let refused = ClientError::Refused {
            code: ServerCode::Known(ErrorCode::TokenRevoked),
            message: "revoked".into(),
        };
        assert_eq!(refused.http_status(), None);
        assert_eq!(
            refused.server_code(),
            Some(ServerCode::Known(ErrorCode::TokenRevoked))
        );
    }
}
