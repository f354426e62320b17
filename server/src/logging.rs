//! natterd's log set-up: `tracing` to stderr, in a way that can never take a
//! thread down. Logging is how natterd reports trouble, so it must not become
//! trouble itself: with stderr on a full disk, a closed pipe or `/dev/full`, a
//! log line is lost and natterd carries on (and the poison rule still exits
//! with code 70). The stock set-up does not: a failed write makes
//! tracing-subscriber report it with `eprintln!`, which panics when stderr
//! fails — killing whichever thread logged, the storage writer included.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// The filter used when `NATTER_LOG` is unset or invalid.
pub const DEFAULT_FILTER: &str = "info,fjall=warn,lsm_tree=warn";

/// A writer that reports every write as done: a failed write (or a short one
/// that then fails) drops the rest of the line instead of returning an error,
/// so nothing upstream panics or retries.
#[derive(Debug)]
pub struct Quiet<W>(pub W);

impl<W: Write> Write for Quiet<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(self.0.write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Makes a [`Quiet`] stderr per log line.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietStderr;

impl<'a> MakeWriter<'a> for QuietStderr {
    type Writer = Quiet<io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Quiet(io::stderr())
    }
}

/// Installs the global subscriber: `NATTER_LOG` (an `EnvFilter`, default
/// [`DEFAULT_FILTER`]) to stderr through [`QuietStderr`], ANSI colours only on
/// a terminal, and tracing-subscriber's own error reports (which use
/// `eprintln!`) off. Does nothing if a subscriber is already installed.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("NATTER_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER)),
        )
        .with_ansi(io::stderr().is_terminal())
        .with_writer(QuietStderr)
        .log_internal_errors(false)
        .try_init();
}

/// Writes `line` and a newline to stderr, ignoring any failure: for the
/// messages of failure paths (`eprintln!` panics when stderr cannot be written).
pub fn stderr_line(line: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.write_all(b"\n");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails every write, like stderr on `/dev/full` (`ENOSPC`).
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28))
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(28))
        }
    }

    #[test]
    fn a_failing_writer_is_reported_as_written() {
        let mut quiet = Quiet(Full);
        assert!(quiet.write_all(b"a log line that cannot be written\n").is_ok());
        assert!(quiet.flush().is_ok());
        let mut ok = Quiet(Vec::new());
        ok.write_all(b"kept").unwrap();
        assert_eq!(ok.0, b"kept");
    }

    #[test]
    fn a_subscriber_over_a_failing_writer_does_not_panic() {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| Quiet(Full))
            .log_internal_errors(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(what = "test", "this line goes nowhere");
        });
    }
}
