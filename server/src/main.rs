//! `natterd`: parses flags (and `--config`), sets up logging, runs the server.
//! `natterd reindex --data-dir DIR` instead rebuilds the message search index
//! from the store (natterd stopped) and exits.
//!
//! Exit codes: 0 after a clean stop, 2 for a bad flag or config file,
//! [`POISON_EXIT_CODE`] (70) when a durable write failed (on any path,
//! shutdown included), 1 for any other failure (a thread that died included).
//! Messages on the way out are written without `eprintln!`, which would panic
//! on an unwritable stderr.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use natter_server::config::{Config, Flags};
use natter_server::logging;
use natter_server::store::POISON_EXIT_CODE;

/// `natterd reindex`: the operator's rebuild of the search index.
#[derive(Parser, Debug)]
#[command(
    name = "natterd reindex",
    about = "Rebuild the message search index from the store (stop natterd first)"
)]
struct ReindexArgs {
    /// The data directory natterd runs with.
    #[arg(long, default_value = "./natter-data")]
    data_dir: PathBuf,
}

fn reindex() -> ExitCode {
    let args = ReindexArgs::parse_from(std::env::args_os().skip(1));
    match natter_server::search::reindex(&args.data_dir) {
        Ok(docs) => {
            logging::stderr_line(&format!(
                "natterd reindex: {docs} messages indexed in {}",
                args.data_dir.join(natter_server::search::INDEX_DIR).display()
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            logging::stderr_line(&format!("natterd reindex: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    logging::init();
    if std::env::args_os().nth(1).is_some_and(|a| a == "reindex") {
        return reindex();
    }
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
