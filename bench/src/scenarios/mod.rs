//! The load scenarios, one module each, and the options every scenario shares.
//!
//! A scenario takes the [`crate::target::Target`], the shared [`Options`] and its own
//! flags (a clap `Args` struct flattened into the command line), runs, and returns a
//! [`crate::report::Report`] with the figures it measured. `messaging` is the
//! machinery `one2one` and `group` share.

pub(crate) mod connect;
pub(crate) mod connect_quic;
pub(crate) mod flood;
pub(crate) mod group;
pub(crate) mod messaging;
pub(crate) mod one2one;
pub(crate) mod presence;
pub(crate) mod push;
pub(crate) mod seam;
pub(crate) mod search;
pub(crate) mod sync;
pub(crate) mod syncstorm;

use std::time::Duration;

/// The options the command line gives every scenario.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// Length of the measured phase.
    pub(crate) duration: Duration,
    /// Open-loop rate (per second), or `None` for closed-loop / full speed.
    pub(crate) rate: Option<u64>,
    /// `--text-bytes`: bytes of text per message, `None` for the scenario's default.
    pub(crate) text_bytes: Option<usize>,
}
