//! `memcap`: (being written).

use super::{Error, Outcome};

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Seed of every random choice.
    pub seed: u64,
    /// The long version.
    pub full: bool,
}

/// Runs the scenario.
///
/// # Errors
/// Not written yet.
pub fn run(_p: &Params) -> Result<Outcome, Error> {
    Err("not written yet".into())
}
