//! `natterd`: parses flags (and `--config`), sets up logging, runs the server.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use natter_server::config::{Config, Flags};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("NATTER_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,fjall=warn,lsm_tree=warn")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let config = match Config::from_flags(Flags::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("natterd: {e}");
            return ExitCode::from(2);
        }
    };
    match natter_server::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "natterd failed");
            eprintln!("natterd: {e}");
            ExitCode::FAILURE
        }
    }
}
