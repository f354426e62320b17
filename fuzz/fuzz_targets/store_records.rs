//! Fuzz target `store_records`: the store's key and record decoders on arbitrary bytes.
//!
//! The logic and its invariants live in `natter_server::fuzzing::store_records`, which
//! `server/tests/fuzz_replay.rs` also runs on every corpus and regression file.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::store_records::run(data));
