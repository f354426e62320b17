//! Ctrl-C and SIGTERM: the first one asks the run to stop at the next loop turn, so
//! that the spawned natterd is stopped and its temporary directory removed; a second
//! one exits at once (status 130).

use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::error::BenchError;

/// Set by the signal handler.
static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Exit status of a run stopped by a second signal (128 + SIGINT).
const SECOND_SIGNAL_EXIT: i32 = 130;

/// Installs the handlers for SIGINT and SIGTERM.
///
/// # Errors
/// [`BenchError::Io`] if a handler cannot be installed.
pub(crate) fn install() -> Result<(), BenchError> {
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as it was *before* this signal:
        // it exits only on the second one.
        signal_hook::flag::register_conditional_shutdown(signal, SECOND_SIGNAL_EXIT, &REQUESTED)?;
        signal_hook::flag::register(signal, &REQUESTED)?;
    }
    Ok(())
}

/// Whether a stop was asked for.
pub(crate) fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

/// `Err(BenchError::Interrupted)` once a stop was asked for.
///
/// # Errors
/// [`BenchError::Interrupted`] after SIGINT or SIGTERM.
pub(crate) fn check() -> Result<(), BenchError> {
    if requested() {
        Err(BenchError::Interrupted)
    } else {
        Ok(())
    }
}
