//! [`BenchError`]: why a benchmark run could not start or finish, and the exit code
//! each reason maps to.

use std::path::PathBuf;

use natter_client::ClientError;

/// Why a run stopped. Errors counted *during* a run (a refused connection, a lost
/// session) are figures in the report, not this type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum BenchError {
    /// The command line asks for something impossible (user error; exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The scenario or transport exists in the design but not in this build yet
    /// (exit code 2).
    #[error("{0} is not implemented yet (every scenario runs over `tcp` only)")]
    NotImplemented(String),
    /// `--spawn` found no natterd beside this binary.
    #[error(
        "--spawn needs natterd beside natter-bench, but {} does not exist; build both with \
         `cargo build --release --bin natterd --bin natter-bench`",
        path.display()
    )]
    NatterdMissing {
        /// Where natterd was looked for.
        path: PathBuf,
    },
    /// The spawned natterd did not start, or died.
    #[error("natterd failed: {message}{}", log_tail_text(log_tail))]
    Server {
        /// What went wrong.
        message: String,
        /// The last lines natterd logged, if any.
        log_tail: String,
    },
    /// The server refused the benchmark's setup (e.g. rate-limited signups) or
    /// answered in a way the benchmark cannot use.
    #[error("{0}")]
    Setup(String),
    /// A client call failed where the run cannot go on without it.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// SIGINT or SIGTERM stopped the run (exit code 130).
    #[error("interrupted")]
    Interrupted,
    /// A local OS operation failed (sockets, files, limits).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl BenchError {
    /// The process exit code for this error: 2 for usage, 130 when interrupted, 1
    /// otherwise.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            BenchError::Usage(_) | BenchError::NotImplemented(_) => 2,
            BenchError::Interrupted => 130,
            _ => 1,
        }
    }
}

/// Formats natterd's last log lines for an error message.
fn log_tail_text(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\nlast lines of natterd's log:\n{tail}")
    }
}
