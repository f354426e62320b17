//! `natterd`: parses flags (and `--config`), sets up logging, runs the server.
//!
//! Exit codes: 0 after a clean stop, 2 for a bad flag or config file,
//! [`POISON_EXIT_CODE`] (70) when a durable write failed (on any path,
//! shutdown included), 1 for any other failure (a thread that died included).
//! Messages on the way out are written without `eprintln!`, which would panic
//! on an unwritable stderr.

use std::process::ExitCode;

use clap::Parser;
use natter_server::config::{Config, Flags};
use natter_server::logging;
use natter_server::store::POISON_EXIT_CODE;

fn main() -> ExitCode {
    logging::init();
    let config = match Config::from_flags(Flags::parse()) {
        Ok(config) => config,
        Err(e) => {
            logging::stderr_line(&format!("natterd: {e}"));
            return ExitCode::from(2);
        }
    };
    match natter_server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "natterd failed");
            logging::stderr_line(&format!("natterd: {e}"));
            if e.is_storage_failure() {
                ExitCode::from(POISON_EXIT_CODE as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
