//! Regression replay of the fuzz targets without a fuzzer: every file of every
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` folder goes through the same
//! function the fuzzer calls ([`natter_server::fuzzing::TARGETS`]), so a plain `cargo test`
//! fails on any input that ever crashed a target. Also checks that the seed generator still
//! produces the checked-in seeds and that the session target's input encoding round-trips.
//!
//! `NATTER_WRITE_FUZZ_SEEDS=1 cargo test -p natter-server --test fuzz_replay -- seeds` rewrites
//! the seeds and dictionaries instead of comparing them (after a protocol or format change).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use natter_server::fuzzing::session::{
    AuthChoice, Blob, Id, Input, Op, SessionInput, Text, Version, WireBody, WireCursor, WireFrame,
    WireMessage,
};
use natter_server::fuzzing::{TARGETS, seeds, target};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("fuzz")
}

/// The input files of `dir`, sorted (none if it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    // Dot files (`.gitkeep`) are not inputs.
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every corpus and regression file of `name`; fails listing each input that panicked.
fn replay(name: &str) {
    let target = target(name).unwrap();
    let corpus = files(&fuzz_dir().join("corpus").join(name));
    assert!(
        !corpus.is_empty(),
        "no corpus for {name} in {}",
        fuzz_dir().display()
    );
    let regressions = files(&fuzz_dir().join("regressions").join(name));
    let mut failed = Vec::new();
    for file in corpus.iter().chain(&regressions) {
        // A relative path is relative to the workspace root (tests run in server/).
        let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file)).unwrap();
        if panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{name}: these inputs fail (see the panics above):\n{}",
        failed.join("\n")
    );
}

#[test]
fn frame_decoder_corpus_and_regressions() {
    replay("frame_decoder");
}

#[test]
fn frame_bodies_corpus_and_regressions() {
    replay("frame_bodies");
}

#[test]
fn session_corpus_and_regressions() {
    replay("session");
}

#[test]
fn http_request_corpus_and_regressions() {
    replay("http_request");
}

#[test]
fn store_records_corpus_and_regressions() {
    replay("store_records");
}

#[test]
fn every_target_has_a_corpus_folder_and_a_regressions_folder() {
    for t in TARGETS {
        assert!(
            fuzz_dir().join("corpus").join(t.name).is_dir(),
            "fuzz/corpus/{} is missing",
            t.name
        );
        assert!(
            fuzz_dir().join("regressions").join(t.name).is_dir(),
            "fuzz/regressions/{} is missing",
            t.name
        );
    }
}

#[test]
fn seeds_are_the_generators_output() {
    if std::env::var_os("NATTER_WRITE_FUZZ_SEEDS").is_some() {
        seeds::write(&fuzz_dir()).unwrap();
    }
    for t in TARGETS {
        let generated = seeds::corpus(t.name);
        assert!(
            generated.len() >= 10,
            "{}: only {} seeds",
            t.name,
            generated.len()
        );
        for s in generated {
            (t.run)(&s.data);
            assert!(
                s.data.len() <= 16 * 1024,
                "{}/{} is {} bytes",
                t.name,
                s.name,
                s.data.len()
            );
            let path = fuzz_dir().join("corpus").join(t.name).join(&s.name);
            let on_disk = std::fs::read(&path).unwrap_or_default();
            assert!(
                on_disk == s.data,
                "{} differs from the generator; regenerate with NATTER_WRITE_FUZZ_SEEDS=1 (fuzz/README.md)",
                path.display()
            );
        }
    }
    for (file, text) in [
        ("frame.dict", seeds::frame_dict()),
        ("http.dict", seeds::http_dict()),
    ] {
        let on_disk = std::fs::read_to_string(fuzz_dir().join("dict").join(file)).unwrap_or_default();
        assert!(
            on_disk == text,
            "fuzz/dict/{file} differs from the generator; regenerate it"
        );
    }
}

fn frame(body: WireBody) -> WireFrame {
    WireFrame {
        request_id: u64::MAX - 3,
        body,
    }
}

#[test]
fn session_inputs_round_trip_through_their_encoding() {
    let text = || Text("zoë".into());
    let message = WireMessage {
        chat_id: 1,
        seq: 2,
        sender: 3,
        server_ts_ms: 4,
        client_msg_id: 5,
        text: text(),
    };
    let bodies = vec![
        WireBody::Hello {
            token: text(),
            device: Text(String::new()),
            version: Version::Current,
            sync_first: false,
            conversation: false,
        },
        WireBody::Hello {
            token: Text("a".repeat(254)),
            device: Text("q".repeat(5000)),
            version: Version::Other(7),
            sync_first: true,
            conversation: false,
        },
        WireBody::Welcome {
            user_id: 1,
            device_id: 2,
            heartbeat_interval_ms: 3,
            server_time_ms: 4,
            protocol_version: 5,
        },
        WireBody::Send {
            chat: Id::Small(1),
            client_msg_id: Id::Any(u64::MAX),
            text: text(),
        },
        WireBody::SendOk {
            client_msg_id: 1,
            chat_id: 2,
            seq: 3,
            server_ts_ms: 4,
        },
        WireBody::Message(message.clone()),
        WireBody::Sync(vec![
            WireCursor { chat_id: 1, seq: 2 },
            WireCursor { chat_id: 3, seq: 4 },
        ]),
        WireBody::SyncDone(Vec::new()),
        WireBody::History {
            chat_id: 1,
            before_seq: 2,
            limit: 3,
        },
        WireBody::HistoryPage {
            chat_id: 1,
            messages: vec![message.clone(), message],
            has_more: true,
        },
        WireBody::Ack { chat_id: 1, seq: 2 },
        WireBody::Presence {
            user_id: 1,
            online: true,
            last_seen_ms: 3,
        },
        WireBody::Ping { nonce: 1 },
        WireBody::Pong { nonce: 2 },
        WireBody::Error {
            code: 3,
            message: text(),
            request_id: 4,
        },
        WireBody::Resync,
        // The bodies added since the derive (upper halves of old tag ranges).
        WireBody::Hello {
            token: text(),
            device: text(),
            version: Version::Current,
            sync_first: true,
            conversation: true,
        },
        WireBody::Edit {
            chat: Id::Small(1),
            target_seq: Id::Small(2),
            client_msg_id: Id::Any(3),
            text: text(),
        },
        WireBody::Delete {
            chat: Id::Any(1),
            target_seq: Id::Small(2),
            client_msg_id: Id::Small(3),
        },
        WireBody::Typing {
            chat: Id::Small(1),
            active: true,
            user_id: 2,
        },
        WireBody::Receipt {
            chat_id: 1,
            user_id: 2,
            delivered_seq: 3,
            read_seq: 4,
        },
        WireBody::ChatStates(vec![WireCursor { chat_id: 1, seq: 2 }]),
    ];
    let mut ops = vec![Op::Input {
        conn: 1,
        input: Input::Frames(bodies.into_iter().map(frame).collect()),
    }];
    ops.extend([
        Op::Accept { core: 1 },
        Op::Input {
            conn: 2,
            input: Input::Partial {
                frame: frame(WireBody::Resync),
                keep: 3,
            },
        },
        Op::Input {
            conn: 2,
            input: Input::Rest,
        },
        Op::Input {
            conn: 2,
            input: Input::Corrupt {
                frame: frame(WireBody::Ping { nonce: 0 }),
                at: 9,
                xor: 255,
            },
        },
        Op::Input {
            conn: 2,
            input: Input::Repeat {
                frame: frame(WireBody::Pong { nonce: 0 }),
                count: 200,
            },
        },
        Op::Input {
            conn: 2,
            input: Input::Raw(Blob(vec![0, 1, 2, 255])),
        },
        Op::Input {
            conn: 2,
            input: Input::Frames(Vec::new()),
        },
        Op::Resume { conn: 3 },
        Op::Auth {
            pending: 1,
            result: AuthChoice::Valid { user: 2, device: 3 },
        },
        Op::Auth {
            pending: 1,
            result: AuthChoice::Invalid,
        },
        Op::Auth {
            pending: 1,
            result: AuthChoice::StoreUnavailable,
        },
        Op::Advance { ms: 65535 },
        Op::PeerClosed { conn: 4 },
        Op::Reap,
        Op::Deliver { core: 0 },
        Op::CloseDevice { user: 5, device: 6 },
        Op::Shutdown { core: 7 },
        Op::Arrive {
            conn: 8,
            input: Input::Rest,
        },
        Op::Commit { count: 255 },
        Op::Membership {
            chat: 1,
            actor: 2,
            user: 3,
            add: true,
        },
        Op::StoreFault { on: true },
        Op::Overflow { conn: 9 },
        Op::Drained { conn: 10 },
    ]);
    let input = SessionInput { ops };
    assert_eq!(SessionInput::from_bytes(&input.to_bytes()), input);
    for s in seeds::corpus("session") {
        let decoded = SessionInput::from_bytes(&s.data);
        assert_eq!(decoded.to_bytes(), s.data, "{} does not round-trip", s.name);
    }
}

/// These session regressions were found before Edit, Delete, Typing, Receipt, ChatStates and
/// `Hello.conversation` could be generated: they must still decode to the old bodies only, or a
/// regression would silently stop reproducing what it was kept for.
#[test]
fn session_regressions_keep_their_meaning() {
    const BEFORE: [&str; 10] = [
        "budget-after-a-sync-page-fills-the-reply-bytes",
        "drained-with-oversized-prefix-after-budget",
        "history-answer-after-close",
        "own-send-after-sync-comes-as-sendok",
        "plan-read-after-a-commit-cursor-past-the-head",
        "push-before-the-first-page-of-a-sync",
        "sync-backlog-for-a-new-member",
        "sync-page-to-a-removed-member",
        "sync-pages-and-syncdone-within-the-frame-budget",
        "sync-with-request-id-0-pages-at-end-of-turn",
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/session");
    let mut checked = 0;
    for name in BEFORE {
        let path = dir.join(name);
        let shown = format!("{:?}", SessionInput::from_bytes(&std::fs::read(&path).unwrap()));
        for new in [
            "Edit {",
            "Delete {",
            "Typing {",
            "Receipt {",
            "ChatStates(",
            "conversation: true",
        ] {
            assert!(!shown.contains(new), "{} now decodes to a {new}", path.display());
        }
        checked += 1;
    }
    assert_eq!(checked, BEFORE.len());
}

/// `NATTER_FUZZ_SHOW=<target>:<file> cargo test -p natter-server --test fuzz_replay -- show --nocapture`
/// prints what an input means to its target (a session input's operations, an HTTP input's text)
/// and runs it; without the variable it does nothing. A relative `<file>` is relative to the
/// workspace root.
#[test]
fn show_an_input() {
    let Ok(spec) = std::env::var("NATTER_FUZZ_SHOW") else {
        return;
    };
    let (name, file) = spec.split_once(':').unwrap();
    // A relative path is relative to the workspace root (tests run in server/).
    let data = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file)).unwrap();
    match name {
        "session" => println!("{:#?}", SessionInput::from_bytes(&data)),
        "http_request" => println!("{}", String::from_utf8_lossy(&data)),
        _ => println!("{data:02x?}"),
    }
    (target(name).unwrap().run)(&data);
}
