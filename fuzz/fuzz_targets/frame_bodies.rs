//! Fuzz target `frame_bodies`: one FlatBuffer through the verifier, every body type's zero-copy accessors
//! and the owned round trip.
//!
//! The logic and its invariants live in `natter_server::fuzzing::frame_bodies`, which
//! `server/tests/fuzz_replay.rs` also runs on every corpus and regression file.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::frame_bodies::run(data));
