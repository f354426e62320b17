//! The logic of natter's fuzz targets, in one place for the fuzzer and for `cargo test`.
//!
//! Compiled only with the `fuzzing` cargo feature (which also pulls in `arbitrary`); a normal
//! build of natterd has none of it. A feature rather than cargo-fuzz's `--cfg fuzzing`
//! (CONTRIBUTING.md, convention 12 and "Where natter differs"), because `cargo test` must build
//! it too: natter-server's tests enable the feature through a dev-dependency on natter-server
//! itself, `fuzz/Cargo.toml` enables it for the targets. The hooks it needs live beside what they expose (`core/fuzz_hooks.rs`,
//! `store/fuzz_hooks.rs`). Each submodule owns one target and exposes a `run(&[u8])`
//! function that feeds the bytes to one input surface and **panics** when an invariant breaks —
//! a panic is what libFuzzer reports as a crash. The same functions are called by:
//!
//! * the cargo-fuzz targets in `fuzz/fuzz_targets/` (one line each: `run(data)`), and
//! * `server/tests/fuzz_replay.rs`, which replays every file of every `fuzz/corpus/<target>/`
//!   and `fuzz/regressions/<target>/` folder on a plain `cargo test`, so a past crash fails CI
//!   without a fuzzer.
//!
//! | target | surface | see |
//! |---|---|---|
//! | `frame_decoder` | a byte stream in arbitrary chunks through `FrameDecoder`, `view`, `Frame::decode` | [`frame_decoder`] |
//! | `frame_bodies` | one FlatBuffer through the verifier, every body's zero-copy accessors and the owned round trip | [`frame_bodies`] |
//! | `session` | structure-aware sequences of connection events against two sans-IO [`crate::core::Core`]s | [`session`] |
//! | `http_request` | requests (method, path, authorization, JSON body) through [`crate::http::Api::handle`] over a real store | [`http_request`] |
//! | `store_records` | the store's key and record decoders | [`store_records`] |
//!
//! [`seeds`] generates the checked-in seed corpora and dictionaries (`fuzz/README.md` says how
//! to regenerate them).

pub mod frame_bodies;
pub mod frame_decoder;
pub mod http_request;
pub mod seeds;
pub mod session;
pub mod store_records;

/// One fuzz target: the name of its cargo-fuzz binary (and of its corpus and regression
/// folders) and the function both the fuzzer and the replay test call.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    /// `frame_decoder`, `frame_bodies`, `session`, `http_request` or `store_records`.
    pub name: &'static str,
    /// Feeds one input; panics when an invariant breaks.
    pub run: fn(&[u8]),
}

/// Every target, in the order `scripts/fuzz-smoke.sh` runs them.
pub const TARGETS: [Target; 5] = [
    Target {
        name: "frame_decoder",
        run: frame_decoder::run,
    },
    Target {
        name: "frame_bodies",
        run: frame_bodies::run,
    },
    Target {
        name: "session",
        run: session::run,
    },
    Target {
        name: "http_request",
        run: http_request::run,
    },
    Target {
        name: "store_records",
        run: store_records::run,
    },
];

/// The target called `name`, if any.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.into_iter().find(|t| t.name == name)
}
