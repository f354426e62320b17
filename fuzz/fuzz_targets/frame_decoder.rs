//! Fuzz target `frame_decoder`: a byte stream of size-prefixed frames in fuzzer-chosen chunks through the
//! incremental decoder, the verifier and the owned conversion.
//!
//! The logic and its invariants live in `natter_server::fuzzing::frame_decoder`, which
//! `server/tests/fuzz_replay.rs` also runs on every corpus and regression file.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| natter_server::fuzzing::frame_decoder::run(data));
