//! natterd, the natter chat server: configuration, the sans-IO chat core, the
//! per-core mio runtime, the embedded store and the HTTP side-port.
//!
//! `docs/ARCHITECTURE.md` describes how the parts fit; `main.rs` only parses
//! flags and calls [`run`].

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod core;
pub mod fdreserve;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod priority;
pub mod push;
pub mod runtime;
pub mod search;
mod server;
pub mod store;
pub mod transport;

pub use server::{Server, ServerError, run};
