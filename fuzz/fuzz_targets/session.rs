//! Fuzz target `session`: structure-aware sequences of connection events (accept, bytes, auth results,
//! time, close, migration, logout, shutdown) against two sans-IO cores, with invariant checks.
//!
//! The logic and its invariants live in `natter_server::fuzzing::session`, which
//! `server/tests/fuzz_replay.rs` also runs on every corpus and regression file.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::session::run(data));
