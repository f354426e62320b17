//! Fuzz target `http_request`: HTTP side-port requests (method, path, authorization, JSON body) through
//! `Api::handle` over a real store; never a 5xx, always valid JSON.
//!
//! The logic and its invariants live in `natter_server::fuzzing::http_request`, which
//! `server/tests/fuzz_replay.rs` also runs on every corpus and regression file.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::http_request::run(data));
