//! [`CliError`]: everything that ends a `natter` command, each variant worded as the one
//! line the user sees on stderr (`natter: <message>`), plus the map from
//! [`natter_client::ClientError`] to those lines.

use natter_client::ClientError;
use natter_wire::ErrorCode;

/// Why a command failed. `Display` is the whole user-facing line (without the
/// `natter: ` prefix); every variant makes `natter` exit with status 1.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum CliError {
    /// The user asked for something the CLI refuses before talking to the server
    /// (empty or over-long message, unknown chat name, bad arguments).
    #[error("{0}")]
    Usage(String),
    /// No token in the profile: the user has to log in first.
    #[error("not logged in (profile {profile}): run `natter login NAME`")]
    NotLoggedIn {
        /// The profile directory that has no session.
        profile: String,
    },
    /// The server no longer accepts the profile's token (logged out elsewhere, revoked).
    #[error(
        "the session of {username} is no longer valid (logged out or revoked): run `natter login {username}`"
    )]
    SessionRevoked {
        /// Who was logged in.
        username: String,
    },
    /// natterd could not be reached at all (down, wrong `--server`).
    #[error("cannot reach natterd at {server}: {detail}")]
    Unreachable {
        /// The side-port URL tried.
        server: String,
        /// What the OS or the HTTP client said.
        detail: String,
    },
    /// The server refused the request; `message` is its explanation, `code` its stable code.
    #[error("{message} ({code})")]
    Refused {
        /// The stable snake_case code (HTTP) or wire error name.
        code: String,
        /// The server's human-readable explanation.
        message: String,
    },
    /// The live connection failed in a way a retry did not fix.
    #[error("connection to natterd failed: {0}")]
    Connection(String),
    /// The profile directory or a file in it could not be read or written.
    #[error("profile {path}: {detail}")]
    Profile {
        /// The file or directory.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// Reading the terminal or stdin (or writing stdout) failed.
    #[error("{0}")]
    Input(String),
    /// The user pressed Ctrl-C in `tail` or `chat`: exit 130, as a shell expects, without
    /// a message.
    #[error("interrupted")]
    Interrupted,
    /// Whoever read stdout went away (`natter tail | head -1`): not an error to report.
    #[error("stdout closed")]
    OutputClosed,
}

impl CliError {
    /// Maps a natter-client error from a call to the side-port at `server`.
    pub(crate) fn from_client(error: ClientError, server: &str) -> CliError {
        match error {
            ClientError::Http {
                status: 401, code, ..
            } if code == "invalid_token" => CliError::Refused {
                code,
                message: "the server does not accept this session's token".into(),
            },
            ClientError::Http { code, message, .. } => CliError::Refused { code, message },
            ClientError::Transport(e) => CliError::Unreachable {
                server: server.to_owned(),
                detail: e.to_string(),
            },
            ClientError::Refused { code, message } => CliError::Refused {
                code: code
                    .known()
                    .map_or_else(|| code.to_string(), |c| c.name().to_owned()),
                message,
            },
            other => CliError::Connection(other.to_string()),
        }
    }

    /// Whether a failure of the live connection is worth a reconnect (the server was
    /// down, restarting, overloaded, or the network dropped) rather than the end.
    pub(crate) fn is_transient(error: &ClientError) -> bool {
        match error {
            ClientError::Refused { code, .. } => !matches!(
                code.known(),
                Some(
                    ErrorCode::InvalidToken
                        | ErrorCode::TokenRevoked
                        | ErrorCode::UnsupportedVersion
                        | ErrorCode::BadFrame
                        | ErrorCode::UnexpectedFrame
                        | ErrorCode::NotAuthenticated
                )
            ),
            ClientError::Http { status, .. } => *status >= 500 || *status == 429,
            ClientError::InvalidArgument(_) => false,
            _ => true,
        }
    }

    /// Whether this error means the token is gone (log in again).
    pub(crate) fn is_revoked(error: &ClientError) -> bool {
        match error {
            ClientError::Refused { code, .. } => {
                matches!(
                    code.known(),
                    Some(ErrorCode::InvalidToken | ErrorCode::TokenRevoked)
                )
            }
            ClientError::Http { status: 401, .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use natter_client::ServerCode;

    use super::*;

    #[test]
    fn http_refusal_is_message_and_code() {
        let e = CliError::from_client(
            ClientError::Http {
                status: 409,
                code: "username_taken".into(),
                message: "the username alice is taken".into(),
            },
            "http://x",
        );
        assert_eq!(e.to_string(), "the username alice is taken (username_taken)");
    }

    #[test]
    fn revoked_tokens_are_not_transient() {
        let revoked = ClientError::Refused {
            code: ServerCode::Known(ErrorCode::TokenRevoked),
            message: String::new(),
        };
        assert!(!CliError::is_transient(&revoked));
        assert!(CliError::is_revoked(&revoked));
        let shutting = ClientError::Refused {
            code: ServerCode::Known(ErrorCode::ShuttingDown),
            message: String::new(),
        };
        assert!(CliError::is_transient(&shutting));
        assert!(CliError::is_transient(&ClientError::Closed));
    }
}
