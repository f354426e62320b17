//! The seed corpora and dictionaries, generated from real frames, real operation sequences, real
//! requests and real store records — so a campaign starts from inputs that reach deep states.
//!
//! The output is checked in under `fuzz/corpus/<target>/seed-*` and `fuzz/dict/`. To regenerate
//! it after a protocol or input-format change:
//!
//! ```sh
//! NATTER_WRITE_FUZZ_SEEDS=1 cargo test -p natter-server --test fuzz_replay -- seeds
//! ```
//!
//! ([`write()`] replaces the `seed-*` files and keeps everything else — inputs a campaign added or
//! `cargo fuzz cmin` kept.) `tests/fuzz_replay.rs` also runs every generated seed through its
//! target on each `cargo test`, so the generator cannot rot.

use std::fmt::Write as _;
use std::io;
use std::path::Path;

use natter_wire::{
    Ack, Body, Cursor, ErrorBody, ErrorCode, Frame, Hello, History, HistoryPage, Message, PROTOCOL_VERSION,
    Ping, Pong, Presence, Send, SendOk, Sync, SyncDone, Welcome,
};

use super::session::{
    self, AuthChoice, Blob, Id, Input, Op, SessionInput, Text, Version, WireBody, WireCursor, WireFrame,
    WireMessage,
};
use crate::ids::UserId;
use crate::store::fuzz_hooks as hooks;
use crate::store::{DeviceRecord, UserRecord};

/// One seed input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    /// File name under `fuzz/corpus/<target>/` (starts with `seed-`).
    pub name: String,
    /// The input.
    pub data: Vec<u8>,
}

fn seed(name: &str, data: Vec<u8>) -> Seed {
    Seed {
        name: format!("seed-{name}"),
        data,
    }
}

/// The seeds of target `target` (none for an unknown name).
pub fn corpus(target: &str) -> Vec<Seed> {
    match target {
        "frame_decoder" => frame_decoder(),
        "frame_bodies" => frame_bodies(),
        "session" => session(),
        "http_request" => http_request(),
        "store_records" => store_records(),
        _ => Vec::new(),
    }
}

/// Writes every target's seeds to `<fuzz_dir>/corpus/<target>/` (replacing the `seed-*` files
/// there) and the dictionaries to `<fuzz_dir>/dict/`.
///
/// # Errors
///
/// Any file system error.
pub fn write(fuzz_dir: &Path) -> io::Result<()> {
    for target in super::TARGETS {
        let dir = fuzz_dir.join("corpus").join(target.name);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("seed-") {
                std::fs::remove_file(entry.path())?;
            }
        }
        for s in corpus(target.name) {
            std::fs::write(dir.join(&s.name), &s.data)?;
        }
    }
    let dict = fuzz_dir.join("dict");
    std::fs::create_dir_all(&dict)?;
    std::fs::write(dict.join("frame.dict"), frame_dict())?;
    std::fs::write(dict.join("http.dict"), http_dict())?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------------

/// One real frame of every body type, and a few edge cases of each.
pub fn sample_frames() -> Vec<(&'static str, Frame)> {
    let message = |seq: u64, text: &str| Message {
        chat_id: 7,
        seq,
        sender: 3,
        server_ts_ms: 1_700_000_000_123,
        client_msg_id: 0x00c0_ffee_0000 + seq,
        text: text.to_owned(),
        ..Message::default()
    };
    let token = "5f".repeat(32);
    vec![
        (
            "hello",
            Frame::new(
                1,
                Body::Hello(Hello {
                    token: token.clone(),
                    device: "phone/ios 18".into(),
                    protocol_version: PROTOCOL_VERSION,
                    sync_first: false,
                    conversation: false,
                }),
            ),
        ),
        ("hello_empty", Frame::new(0, Body::Hello(Hello::default()))),
        (
            "welcome",
            Frame::new(
                1,
                Body::Welcome(Welcome {
                    user_id: 1,
                    device_id: 2,
                    heartbeat_interval_ms: 30_000,
                    server_time_ms: 1_700_000_000_000,
                    protocol_version: PROTOCOL_VERSION,
                    max_frame: 0,
                }),
            ),
        ),
        (
            "send",
            Frame::new(
                2,
                Body::Send(Send {
                    chat_id: 7,
                    client_msg_id: 99,
                    text: "hello, world".into(),
                }),
            ),
        ),
        (
            "send_unicode",
            Frame::new(
                3,
                Body::Send(Send {
                    chat_id: 7,
                    client_msg_id: 100,
                    text: "zoë 👋 日本".into(),
                }),
            ),
        ),
        (
            "send_long",
            Frame::new(
                4,
                Body::Send(Send {
                    chat_id: 7,
                    client_msg_id: 101,
                    text: "x".repeat(2000),
                }),
            ),
        ),
        (
            "send_ok",
            Frame::new(
                2,
                Body::SendOk(SendOk {
                    client_msg_id: 99,
                    chat_id: 7,
                    seq: 41,
                    server_ts_ms: 1_700_000_000_500,
                }),
            ),
        ),
        ("message", Frame::new(0, Body::Message(message(41, "hi there")))),
        (
            "sync",
            Frame::new(
                5,
                Body::Sync(Sync {
                    cursors: vec![Cursor { chat_id: 7, seq: 40 }, Cursor { chat_id: 8, seq: 0 }],
                }),
            ),
        ),
        ("sync_empty", Frame::new(5, Body::Sync(Sync::default()))),
        (
            "sync_done",
            Frame::new(
                5,
                Body::SyncDone(SyncDone {
                    heads: vec![Cursor { chat_id: 7, seq: 41 }],
                }),
            ),
        ),
        (
            "history",
            Frame::new(
                6,
                Body::History(History {
                    chat_id: 7,
                    before_seq: 0,
                    limit: 50,
                }),
            ),
        ),
        (
            "history_page",
            Frame::new(
                6,
                Body::HistoryPage(HistoryPage {
                    chat_id: 7,
                    messages: vec![message(41, "newest"), message(40, ""), message(39, "oldest ✓")],
                    has_more: true,
                }),
            ),
        ),
        ("ack", Frame::new(0, Body::Ack(Ack { chat_id: 7, seq: 41 }))),
        (
            "presence",
            Frame::new(
                0,
                Body::Presence(Presence {
                    user_id: 3,
                    online: true,
                    last_seen_ms: 0,
                }),
            ),
        ),
        ("ping", Frame::new(8, Body::Ping(Ping { nonce: 0x1234_5678 }))),
        ("pong", Frame::new(8, Body::Pong(Pong { nonce: 0x1234_5678 }))),
        (
            "error",
            Frame::new(
                2,
                Body::Error(ErrorBody::new(
                    ErrorCode::NotMember,
                    "you are not a member of chat 7",
                    2,
                )),
            ),
        ),
        (
            "error_unknown_code",
            Frame::new(
                0,
                Body::Error(ErrorBody {
                    code: 999,
                    message: String::new(),
                    request_id: 0,
                }),
            ),
        ),
        ("resync", Frame::new(0, Body::Resync)),
    ]
}

fn frame_decoder() -> Vec<Seed> {
    let frames = sample_frames();
    let all: Vec<u8> = frames.iter().flat_map(|(_, f)| f.encode().to_vec()).collect();
    let with_chunks = |a: u8, b: u8, stream: &[u8]| {
        let mut data = vec![a, b];
        data.extend_from_slice(stream);
        data
    };
    let mut seeds: Vec<Seed> = frames
        .iter()
        .filter(|(name, _)| *name != "send_long")
        .map(|(name, f)| seed(&format!("one-{name}"), with_chunks(255, 255, &f.encode())))
        .collect();
    seeds.push(seed("all-bytewise", with_chunks(1, 1, &all)));
    seeds.push(seed("all-1-7", with_chunks(1, 7, &all)));
    seeds.push(seed("all-13-250", with_chunks(13, 250, &all)));
    let ping = frames
        .iter()
        .find(|(n, _)| *n == "ping")
        .map(|(_, f)| f.encode().to_vec())
        .unwrap_or_default();
    let hello = frames
        .iter()
        .find(|(n, _)| *n == "hello")
        .map(|(_, f)| f.encode().to_vec())
        .unwrap_or_default();
    let mut pipelined = hello.clone();
    for _ in 0..10 {
        pipelined.extend_from_slice(&ping);
    }
    seeds.push(seed("pipelined", with_chunks(64, 3, &pipelined)));
    let mut truncated = ping.clone();
    truncated.extend_from_slice(hello.get(..hello.len() / 2).unwrap_or_default());
    seeds.push(seed("truncated-tail", with_chunks(5, 9, &truncated)));
    seeds.push(seed(
        "prefix-too-large",
        with_chunks(2, 2, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
    ));
    seeds.push(seed(
        "prefix-at-limit",
        with_chunks(255, 255, &[0xfc, 0xff, 0, 0, 0, 0, 0, 0]),
    ));
    seeds.push(seed(
        "prefix-too-short",
        with_chunks(4, 4, &[3, 0, 0, 0, 1, 2, 3]),
    ));
    let mut garbage = ping;
    garbage.extend_from_slice(&[12, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8]);
    seeds.push(seed("garbage-after-frame", with_chunks(9, 1, &garbage)));
    seeds
}

fn frame_bodies() -> Vec<Seed> {
    sample_frames()
        .into_iter()
        .map(|(name, f)| {
            seed(
                name,
                f.encode()
                    .get(natter_wire::PREFIX_LEN..)
                    .unwrap_or_default()
                    .to_vec(),
            )
        })
        .collect()
}

/// The libFuzzer dictionary for the frame targets: whole small frames, length prefixes and the
/// field values the core branches on.
pub fn frame_dict() -> String {
    let mut out = String::from(
        "# natter frame format: size-prefixed FlatBuffers (u32 LE length, then the buffer).\n\
         # Generated by natter_server::fuzzing::seeds (see fuzz/README.md); do not edit by hand.\n\n",
    );
    let word = |out: &mut String, name: &str, bytes: &[u8]| {
        let _ = write!(out, "{name}=\"");
        for b in bytes {
            let _ = write!(out, "\\x{b:02x}");
        }
        out.push_str("\"\n");
    };
    out.push_str("# length prefixes\n");
    word(&mut out, "prefix_min", &8u32.to_le_bytes());
    word(&mut out, "prefix_64k", &(64 * 1024 - 4u32).to_le_bytes());
    word(&mut out, "prefix_512k", &(512 * 1024 - 4u32).to_le_bytes());
    word(&mut out, "prefix_max", &u32::MAX.to_le_bytes());
    out.push_str("# protocol version, error codes\n");
    word(&mut out, "protocol_version", &PROTOCOL_VERSION.to_le_bytes());
    word(&mut out, "u64_max", &u64::MAX.to_le_bytes());
    word(&mut out, "invalid_utf8", &[0xff, 0xfe]);
    out.push_str("# whole frames of every body type that fit a dictionary word (64 bytes)\n");
    for (name, frame) in sample_frames() {
        let bytes = frame.encode();
        if bytes.len() <= 64 {
            word(&mut out, &format!("frame_{name}"), &bytes);
            if let Some(body) = bytes.get(natter_wire::PREFIX_LEN..) {
                word(&mut out, &format!("body_{name}"), body);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Sessions
// ---------------------------------------------------------------------------------------------

/// The user byte of user `n` (`byte % USERS + 1 == n`).
fn user(n: u64) -> u8 {
    u8::try_from((n + session::USERS - 1) % session::USERS).unwrap_or(0)
}

/// User `n`'s home core among the session target's cores.
fn home(n: u64) -> u8 {
    u8::try_from(UserId(n).home_core(session::CORES).0).unwrap_or(0)
}

/// The other core.
fn away(n: u64) -> u8 {
    1 - home(n)
}

fn wire(request_id: u64, body: WireBody) -> WireFrame {
    WireFrame { request_id, body }
}

fn hello(token: &str) -> WireFrame {
    wire(
        7,
        WireBody::Hello {
            token: Text(token.into()),
            device: Text("seed".into()),
            version: Version::Current,
            sync_first: false,
            conversation: false,
        },
    )
}

/// A Hello that asks the server to hold live pushes until the session's first Sync.
fn hello_sync_first() -> WireFrame {
    wire(
        7,
        WireBody::Hello {
            token: Text("tok".into()),
            device: Text("seed".into()),
            version: Version::Current,
            sync_first: true,
            conversation: false,
        },
    )
}

/// `Sync` with these `(chat, seq)` cursors.
fn sync(request_id: u64, cursors: &[(u64, u64)]) -> WireFrame {
    wire(
        request_id,
        WireBody::Sync(
            cursors
                .iter()
                .map(|&(chat_id, seq)| WireCursor { chat_id, seq })
                .collect(),
        ),
    )
}

fn history(request_id: u64, chat_id: u64, before_seq: u64, limit: u32) -> WireFrame {
    wire(
        request_id,
        WireBody::History {
            chat_id,
            before_seq,
            limit,
        },
    )
}

/// A Send with any client message id (so that many sends are not retries of each other).
fn send_id(request_id: u64, chat: u8, cmid: u64, text: &str) -> WireFrame {
    wire(
        request_id,
        WireBody::Send {
            chat: Id::Small(chat),
            client_msg_id: Id::Any(cmid),
            text: Text(text.into()),
        },
    )
}

/// Client `conn` sends `count` messages to `chat` (texts `text`, client ids from `first`), ten
/// per write and a second apart so that the send rate allows them, and each write's messages are
/// committed and pushed before the next (the owner core commits a chat's queued sends as one
/// batch after the one in flight).
fn burst(conn: u8, chat: u8, first: u64, count: u64, text: &str) -> Vec<Op> {
    let mut ops = Vec::new();
    let ids: Vec<u64> = (first..first + count).collect();
    for chunk in ids.chunks(10) {
        let sends = chunk
            .iter()
            .map(|&id| send_id(100 + id, chat, id, text))
            .collect();
        ops.push(Op::Input {
            conn,
            input: frames(sends),
        });
        ops.extend(settle());
        ops.extend(settle());
        ops.push(Op::Advance { ms: 1000 });
    }
    ops
}

/// Client number `conn` connects to user `n`'s home core and sends `Hello{sync_first}` and
/// `Sync{cursors}` in one write, as docs/PROTOCOL.md's reconnect recipe says; the Sync is read
/// after the Welcome.
fn login_and_sync(conn: u8, n: u64, device: u8, request_id: u64, cursors: &[(u64, u64)]) -> Vec<Op> {
    vec![
        Op::Accept { core: home(n) },
        Op::Input {
            conn,
            input: frames(vec![hello_sync_first(), sync(request_id, cursors)]),
        },
        Op::Auth {
            pending: 0,
            result: AuthChoice::Valid {
                user: user(n),
                device,
            },
        },
        Op::Resume { conn },
    ]
}

fn ping(nonce: u64) -> WireFrame {
    wire(nonce, WireBody::Ping { nonce })
}

fn send(request_id: u64, chat: u8, cmid: u8, text: &str) -> WireFrame {
    wire(
        request_id,
        WireBody::Send {
            chat: Id::Small(chat),
            client_msg_id: Id::Small(cmid),
            text: Text(text.into()),
        },
    )
}

fn frames(f: Vec<WireFrame>) -> Input {
    Input::Frames(f)
}

/// Client number `conn` (counting the live connections in the order they were made) connects to
/// user `n`'s home core and logs in as device `device` of user `n`.
fn login(conn: u8, n: u64, device: u8) -> Vec<Op> {
    vec![
        Op::Accept { core: home(n) },
        Op::Input {
            conn,
            input: frames(vec![hello("tok")]),
        },
        Op::Auth {
            pending: 0,
            result: AuthChoice::Valid {
                user: user(n),
                device,
            },
        },
    ]
}

/// Commit every write and let each core take a few commands: a send's round trip (home core →
/// owner core → writer → owner core → home cores).
fn settle() -> Vec<Op> {
    let mut ops = vec![
        Op::Deliver { core: 0 },
        Op::Deliver { core: 1 },
        Op::Commit { count: u8::MAX },
    ];
    for _ in 0..3 {
        ops.extend([Op::Deliver { core: 0 }, Op::Deliver { core: 1 }]);
    }
    ops
}

/// Each core takes the answers of a few of its store reads (a sync's plan and pages, a
/// History), as a reader thread would hand them back.
fn answer_reads() -> Vec<Op> {
    let mut ops = Vec::new();
    for _ in 0..4 {
        ops.extend([Op::Deliver { core: 2 }, Op::Deliver { core: 3 }]);
    }
    ops
}

fn ops(name: &str, ops: Vec<Op>) -> Seed {
    seed(name, SessionInput { ops }.to_bytes())
}

fn cat(parts: Vec<Vec<Op>>) -> Vec<Op> {
    parts.into_iter().flatten().collect()
}

fn session() -> Vec<Seed> {
    let mut invalid_utf8 = send(11, 1, 1, "AAAA").encode();
    if let Some(at) = invalid_utf8.windows(4).position(|w| w == b"AAAA") {
        invalid_utf8.splice(at..at + 2, [0xff, 0xfe]);
    }
    let input = |conn: u8, f: Vec<WireFrame>| Op::Input {
        conn,
        input: frames(f),
    };
    vec![
        ops(
            "welcome-ping",
            cat(vec![
                login(0, 1, 0),
                vec![
                    input(0, vec![ping(1), wire(2, WireBody::Pong { nonce: 9 })]),
                    Op::Advance { ms: 1000 },
                    input(0, vec![ping(3)]),
                    Op::Advance { ms: 5000 },
                ],
            ]),
        ),
        ops(
            "migrate",
            vec![
                Op::Accept { core: away(2) },
                input(0, vec![hello("tok"), ping(1), ping(2)]),
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Valid {
                        user: user(2),
                        device: 1,
                    },
                },
                Op::Deliver { core: home(2) },
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Valid {
                        user: user(2),
                        device: 1,
                    },
                },
                Op::Resume { conn: 0 },
                input(0, vec![ping(3)]),
            ],
        ),
        ops(
            "migrate-revoked",
            vec![
                Op::Accept { core: away(3) },
                input(0, vec![hello("tok")]),
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Valid {
                        user: user(3),
                        device: 2,
                    },
                },
                Op::Deliver { core: home(3) },
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Invalid,
                },
                Op::Reap,
            ],
        ),
        ops(
            "migrate-in-flight-timeout",
            vec![
                Op::Accept { core: away(4) },
                input(0, vec![hello("tok")]),
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Valid {
                        user: user(4),
                        device: 3,
                    },
                },
                Op::Advance { ms: 2500 },
                Op::Deliver { core: home(4) },
                Op::Advance { ms: 1000 },
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Valid {
                        user: user(4),
                        device: 3,
                    },
                },
            ],
        ),
        ops(
            "invalid-token",
            vec![
                Op::Accept { core: 0 },
                input(0, vec![hello("nope")]),
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Invalid,
                },
            ],
        ),
        ops(
            "store-unavailable",
            vec![
                Op::Accept { core: 1 },
                input(0, vec![hello("tok")]),
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::StoreUnavailable,
                },
                Op::Reap,
            ],
        ),
        ops(
            "not-hello-first",
            vec![Op::Accept { core: 0 }, input(0, vec![ping(1)])],
        ),
        ops(
            "garbage",
            vec![
                Op::Accept { core: 0 },
                Op::Input {
                    conn: 0,
                    input: Input::Raw(Blob(vec![
                        12, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8,
                    ])),
                },
            ],
        ),
        ops(
            "oversized-prefix",
            vec![
                Op::Accept { core: 0 },
                Op::Input {
                    conn: 0,
                    input: Input::Raw(Blob(vec![0xff, 0xff, 0xff, 0xff, 1])),
                },
            ],
        ),
        ops(
            "bad-version",
            vec![
                Op::Accept { core: 0 },
                input(
                    0,
                    vec![wire(
                        1,
                        WireBody::Hello {
                            token: Text("t".into()),
                            device: Text("d".into()),
                            version: Version::Other(99),
                            sync_first: false,
                            conversation: false,
                        },
                    )],
                ),
            ],
        ),
        ops(
            "long-device",
            vec![
                Op::Accept { core: 0 },
                input(
                    0,
                    vec![wire(
                        1,
                        WireBody::Hello {
                            token: Text("t".into()),
                            device: Text("d".repeat(200)),
                            version: Version::Current,
                            sync_first: true,
                            conversation: false,
                        },
                    )],
                ),
            ],
        ),
        ops(
            "flood",
            cat(vec![
                login(0, 1, 0),
                vec![
                    Op::Input {
                        conn: 0,
                        input: Input::Repeat {
                            frame: ping(5),
                            count: 100,
                        },
                    },
                    Op::Resume { conn: 0 },
                ],
            ]),
        ),
        ops(
            "arrive-coalesced",
            cat(vec![
                login(0, 1, 0),
                vec![
                    Op::Arrive {
                        conn: 0,
                        input: frames(vec![ping(1), ping(2)]),
                    },
                    Op::Arrive {
                        conn: 0,
                        input: Input::Partial {
                            frame: ping(3),
                            keep: 5,
                        },
                    },
                    Op::Input {
                        conn: 0,
                        input: Input::Rest,
                    },
                ],
            ]),
        ),
        ops(
            "hello-timeout",
            vec![Op::Accept { core: 0 }, Op::Advance { ms: 4000 }, Op::Reap],
        ),
        ops(
            "heartbeat-timeout",
            cat(vec![
                login(0, 1, 1),
                vec![
                    Op::Advance { ms: 2000 },
                    input(0, vec![ping(1)]),
                    Op::Advance { ms: 2999 },
                    Op::Advance { ms: 2000 },
                ],
            ]),
        ),
        ops(
            "close-device",
            cat(vec![
                login(0, 1, 0),
                login(1, 1, 1),
                vec![
                    Op::CloseDevice {
                        user: user(1),
                        device: 0,
                    },
                    Op::Reap,
                ],
            ]),
        ),
        ops(
            "shutdown",
            cat(vec![
                login(0, 1, 2),
                vec![
                    Op::Accept { core: 0 },
                    Op::Accept { core: 1 },
                    Op::Shutdown { core: home(1) },
                ],
            ]),
        ),
        ops(
            "peer-closed-during-auth",
            vec![
                Op::Accept { core: 0 },
                input(0, vec![hello("tok")]),
                Op::PeerClosed { conn: 0 },
                Op::Accept { core: 0 },
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Valid {
                        user: user(1),
                        device: 0,
                    },
                },
            ],
        ),
        ops(
            "partial",
            vec![
                Op::Accept { core: home(1) },
                Op::Input {
                    conn: 0,
                    input: Input::Partial {
                        frame: hello("tok"),
                        keep: 10,
                    },
                },
                Op::Advance { ms: 100 },
                Op::Input {
                    conn: 0,
                    input: Input::Rest,
                },
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Valid {
                        user: user(1),
                        device: 0,
                    },
                },
            ],
        ),
        ops(
            "corrupt-after-welcome",
            cat(vec![
                login(0, 1, 0),
                vec![
                    Op::Input {
                        conn: 0,
                        input: Input::Corrupt {
                            frame: send(3, 1, 1, "hello"),
                            at: 20,
                            xor: 0x80,
                        },
                    },
                    input(0, vec![ping(1)]),
                ],
            ]),
        ),
        ops(
            "server-frame-from-client",
            cat(vec![
                login(0, 1, 0),
                vec![input(
                    0,
                    vec![wire(
                        3,
                        WireBody::Message(WireMessage {
                            chat_id: 1,
                            seq: 1,
                            sender: 1,
                            server_ts_ms: 0,
                            client_msg_id: 1,
                            text: Text("hi".into()),
                        }),
                    )],
                )],
            ]),
        ),
        ops(
            "unserved-requests",
            cat(vec![
                login(0, 1, 0),
                vec![input(
                    0,
                    vec![
                        wire(12, WireBody::Sync(vec![WireCursor { chat_id: 1, seq: 3 }])),
                        wire(
                            13,
                            WireBody::History {
                                chat_id: 1,
                                before_seq: 0,
                                limit: 50,
                            },
                        ),
                        wire(14, WireBody::Ack { chat_id: 1, seq: 3 }),
                        hello("again"),
                        ping(15),
                    ],
                )],
            ]),
        ),
        ops(
            "invalid-utf8-send",
            cat(vec![
                login(0, 1, 0),
                vec![Op::Input {
                    conn: 0,
                    input: Input::Raw(Blob(invalid_utf8)),
                }],
            ]),
        ),
        ops(
            "connection-limit",
            (0..10).map(|_| Op::Accept { core: 1 }).collect(),
        ),
        ops(
            "reap-and-reuse",
            vec![
                Op::Accept { core: home(1) },
                Op::Input {
                    conn: 0,
                    input: Input::Raw(Blob(vec![1, 0, 0, 0, 0])),
                },
                Op::Reap,
                Op::Accept { core: home(1) },
                input(0, vec![hello("tok")]),
                Op::Auth {
                    pending: 0,
                    result: AuthChoice::Valid {
                        user: user(1),
                        device: 0,
                    },
                },
            ],
        ),
        // ----- messaging -----
        ops(
            "direct-chat",
            cat(vec![
                login(0, 1, 0),
                login(1, 2, 0),
                vec![input(0, vec![send(20, 1, 1, "hi bob")])],
                settle(),
                vec![input(1, vec![send(21, 1, 1, "hi alice 👋")])],
                settle(),
            ]),
        ),
        ops(
            "group-chat",
            cat(vec![
                login(0, 1, 0),
                login(1, 2, 0),
                login(2, 3, 0),
                login(3, 2, 1),
                vec![input(2, vec![send(1, 2, 1, "first"), send(2, 2, 2, "second")])],
                settle(),
                vec![
                    input(1, vec![send(3, 2, 1, "third")]),
                    input(0, vec![send(4, 4, 1, "to everyone")]),
                ],
                settle(),
            ]),
        ),
        ops(
            "retry-dedupe",
            cat(vec![
                login(0, 1, 0),
                login(1, 2, 0),
                vec![input(0, vec![send(1, 1, 5, "once"), send(2, 1, 5, "once")])],
                vec![
                    Op::Deliver { core: 0 },
                    Op::Deliver { core: 1 },
                    input(0, vec![send(3, 1, 5, "once")]),
                ],
                settle(),
                vec![input(0, vec![send(4, 1, 5, "once")])],
                settle(),
            ]),
        ),
        ops(
            "send-refusals",
            cat(vec![
                login(0, 5, 0),
                vec![input(
                    0,
                    vec![
                        send(1, 2, 1, "not a member"),
                        send(2, 7, 1, "no such chat"),
                        send(3, 0, 1, "chat zero"),
                        send(4, 3, 1, ""),
                        wire(
                            5,
                            WireBody::Send {
                                chat: Id::Small(3),
                                client_msg_id: Id::Any(u64::MAX),
                                text: Text("x".repeat(100_001)),
                            },
                        ),
                        send(6, 3, 2, "fine"),
                    ],
                )],
                settle(),
            ]),
        ),
        ops(
            "send-rate-limit",
            cat(vec![
                login(0, 4, 0),
                vec![Op::Input {
                    conn: 0,
                    input: Input::Repeat {
                        frame: send(1, 3, 1, "spam"),
                        count: 30,
                    },
                }],
                settle(),
                vec![Op::Advance { ms: 1000 }, input(0, vec![send(2, 3, 2, "later")])],
                settle(),
            ]),
        ),
        ops(
            "membership",
            cat(vec![
                login(0, 1, 0),
                login(1, 4, 0),
                login(2, 2, 0),
                vec![
                    Op::Membership {
                        chat: 1,
                        actor: user(1),
                        user: user(4),
                        add: true,
                    },
                    Op::Membership {
                        chat: 1,
                        actor: user(2),
                        user: user(5),
                        add: true,
                    },
                    Op::Membership {
                        chat: 1,
                        actor: user(1),
                        user: user(6),
                        add: true,
                    },
                    Op::Membership {
                        chat: 0,
                        actor: user(1),
                        user: user(3),
                        add: true,
                    },
                    Op::Membership {
                        chat: 5,
                        actor: user(1),
                        user: user(3),
                        add: true,
                    },
                ],
                settle(),
                settle(),
                vec![input(1, vec![send(1, 2, 1, "hello group")])],
                settle(),
                vec![Op::Membership {
                    chat: 1,
                    actor: user(1),
                    user: user(2),
                    add: false,
                }],
                vec![Op::Membership {
                    chat: 1,
                    actor: user(4),
                    user: user(4),
                    add: false,
                }],
                settle(),
                vec![input(0, vec![send(2, 2, 2, "bye")])],
                settle(),
            ]),
        ),
        ops(
            "store-fault",
            cat(vec![
                login(0, 7, 0),
                login(1, 8, 0),
                vec![
                    Op::StoreFault { on: true },
                    input(0, vec![send(1, 4, 1, "lost?")]),
                ],
                settle(),
                vec![
                    Op::Membership {
                        chat: 4,
                        actor: user(7),
                        user: user(8),
                        add: true,
                    },
                    Op::StoreFault { on: false },
                ],
                vec![input(0, vec![send(2, 4, 1, "retry")])],
                settle(),
            ]),
        ),
        ops(
            "slow-consumer",
            cat(vec![
                login(0, 1, 0),
                login(1, 2, 0),
                vec![
                    Op::Overflow { conn: 1 },
                    input(0, vec![send(1, 1, 1, "are you there?")]),
                ],
                settle(),
                vec![Op::Reap, Op::Overflow { conn: 0 }],
            ]),
        ),
        ops(
            "sends-in-flight-at-close",
            cat(vec![
                login(0, 2, 0),
                login(1, 3, 0),
                vec![
                    input(0, vec![send(1, 2, 1, "a"), send(2, 2, 2, "b")]),
                    Op::Deliver { core: 0 },
                    Op::Deliver { core: 1 },
                ],
                vec![Op::PeerClosed { conn: 0 }, Op::Commit { count: 0 }],
                settle(),
                login(1, 2, 1),
                vec![input(1, vec![send(3, 2, 1, "a")])],
                settle(),
            ]),
        ),
        // ----- sync, history, cursors -----
        ops(
            "sync-first-reconnect",
            cat(vec![
                login(0, 1, 0),
                burst(0, 1, 1, 3, "while you were away"),
                login_and_sync(1, 2, 0, 40, &[(1, 1)]),
                vec![Op::Drained { conn: 1 }],
                burst(0, 1, 10, 2, "live now"),
            ]),
        ),
        ops(
            "sync-pages-and-the-seam",
            cat(vec![
                login(0, 1, 0),
                burst(0, 2, 1, 4, &"a".repeat(100_000)),
                burst(0, 2, 10, 3, "small"),
                login_and_sync(1, 3, 0, 41, &[(2, 0)]),
                // Sent while the sync is between pages: it comes in the sync's stream or as a
                // push, once.
                burst(0, 2, 20, 1, "during the sync"),
                vec![Op::Drained { conn: 1 }],
                burst(0, 2, 21, 1, "between pages"),
                vec![Op::Drained { conn: 1 }, Op::Drained { conn: 1 }],
                burst(0, 2, 22, 1, "after SyncDone"),
            ]),
        ),
        ops(
            "sync-backlog-and-stored-cursor",
            cat(vec![
                login(0, 1, 0),
                burst(0, 4, 1, 60, "backlog"),
                login(1, 5, 0),
                vec![Op::Input {
                    conn: 1,
                    input: frames(vec![
                        sync(42, &[]),
                        wire(3, WireBody::Ack { chat_id: 4, seq: 30 }),
                    ]),
                }],
                answer_reads(),
                vec![Op::Commit { count: u8::MAX }, Op::PeerClosed { conn: 1 }],
                login_and_sync(1, 5, 0, 43, &[]),
                login_and_sync(2, 5, 1, 44, &[(4, 999), (4, 55)]),
                settle(),
            ]),
        ),
        ops(
            "sync-replaced-and-rate-limited",
            cat(vec![
                login(0, 1, 0),
                burst(0, 2, 1, 3, &"b".repeat(100_000)),
                login(1, 2, 0),
                vec![
                    Op::Input {
                        conn: 1,
                        input: frames(vec![sync(50, &[(2, 0)]), sync(51, &[(2, 1)])]),
                    },
                    Op::Drained { conn: 1 },
                    Op::Input {
                        conn: 1,
                        input: Input::Repeat {
                            frame: sync(52, &[(2, 2)]),
                            count: 12,
                        },
                    },
                    Op::Drained { conn: 1 },
                    Op::Resume { conn: 1 },
                    Op::Advance { ms: 1000 },
                ],
                settle(),
                settle(),
                vec![
                    Op::Input {
                        conn: 1,
                        input: frames(vec![sync(53, &[(2, 1)])]),
                    },
                    Op::Drained { conn: 1 },
                ],
                burst(0, 2, 10, 1, "and on"),
            ]),
        ),
        ops(
            "sync-store-fault-and-resync",
            cat(vec![
                login(0, 1, 0),
                burst(0, 2, 1, 3, &"c".repeat(100_000)),
                login(1, 3, 0),
                vec![
                    Op::Input {
                        conn: 1,
                        input: frames(vec![sync(60, &[(2, 0)])]),
                    },
                    Op::StoreFault { on: true },
                    Op::Drained { conn: 1 },
                    Op::StoreFault { on: false },
                ],
                burst(0, 2, 10, 1, "held back"),
                vec![
                    Op::Input {
                        conn: 1,
                        input: frames(vec![sync(61, &[(2, 1)])]),
                    },
                    Op::Overflow { conn: 1 },
                ],
                burst(0, 2, 11, 1, "dropped: resync"),
                vec![
                    Op::Input {
                        conn: 1,
                        input: frames(vec![sync(62, &[(2, 3)])]),
                    },
                    Op::Drained { conn: 1 },
                ],
                burst(0, 2, 12, 1, "live again"),
            ]),
        ),
        ops(
            "history-pages",
            cat(vec![
                login(0, 1, 0),
                burst(0, 4, 1, 5, "history"),
                burst(0, 2, 10, 3, &"d".repeat(100_000)),
                vec![Op::Input {
                    conn: 0,
                    input: frames(vec![
                        history(70, 4, 0, 3),
                        history(71, 4, 3, 10),
                        history(72, 4, 1, 10),
                        history(73, 2, 0, 200),
                        history(74, 3, 0, 10),
                        history(75, 4, 0, 0),
                    ]),
                }],
                vec![Op::Input {
                    conn: 0,
                    input: frames(vec![history(76, 2, 3, 200), history(77, 9, 0, 5)]),
                }],
            ]),
        ),
        ops(
            "conversation-edit-delete-typing",
            cat(vec![
                // Users 1 and 2 (chat 1, their DM) in conversation sessions, user 3 in a plain one.
                login_conversation(0, 1, 0),
                login_conversation(1, 2, 0),
                login(2, 3, 0),
                answer_reads(),
                burst(0, 1, 1, 2, "hello"),
                burst(0, 2, 3, 1, "group"),
                vec![Op::Input {
                    conn: 1,
                    input: frames(vec![typing(40, 1, true), typing(41, 2, true)]),
                }],
                settle(),
                vec![Op::Input {
                    conn: 0,
                    input: frames(vec![
                        edit(42, 1, 1, 50, "hello, edited"),
                        delete(43, 1, 2, 51),
                        // Someone else's message, a missing one, a chat that does not exist.
                        edit(44, 1, 7, 52, "nope"),
                        delete(45, 6, 1, 53),
                    ]),
                }],
                settle(),
                vec![Op::Input {
                    conn: 1,
                    input: frames(vec![
                        edit(46, 1, 1, 54, "not mine"),
                        wire(47, WireBody::Ack { chat_id: 1, seq: 4 }),
                        // Server-to-client bodies from a client.
                        wire(
                            48,
                            WireBody::Receipt {
                                chat_id: 1,
                                user_id: 1,
                                delivered_seq: 1,
                                read_seq: 1,
                            },
                        ),
                        wire(49, WireBody::ChatStates(vec![WireCursor { chat_id: 1, seq: 9 }])),
                    ]),
                }],
                settle(),
                answer_reads(),
            ]),
        ),
    ]
}

/// [`login`] with `Hello{conversation}`: the session takes Receipt, Typing and ChatStates.
fn login_conversation(conn: u8, n: u64, device: u8) -> Vec<Op> {
    let mut ops = login(conn, n, device);
    if let Some(Op::Input {
        input: Input::Frames(f),
        ..
    }) = ops.get_mut(1)
    {
        *f = vec![wire(
            7,
            WireBody::Hello {
                token: Text("tok".into()),
                device: Text("seed".into()),
                version: Version::Current,
                sync_first: false,
                conversation: true,
            },
        )];
    }
    ops
}

/// `Typing` in chat `chat` (an [`Id::Small`]).
fn typing(request_id: u64, chat: u8, active: bool) -> WireFrame {
    wire(
        request_id,
        WireBody::Typing {
            chat: Id::Small(chat),
            active,
            user_id: 0,
        },
    )
}

/// `Edit` of `(chat, target)` under client message id `cmid`.
fn edit(request_id: u64, chat: u8, target: u8, cmid: u64, text: &str) -> WireFrame {
    wire(
        request_id,
        WireBody::Edit {
            chat: Id::Small(chat),
            target_seq: Id::Small(target),
            client_msg_id: Id::Any(cmid),
            text: Text(text.into()),
        },
    )
}

/// `Delete` of `(chat, target)` under client message id `cmid`.
fn delete(request_id: u64, chat: u8, target: u8, cmid: u64) -> WireFrame {
    wire(
        request_id,
        WireBody::Delete {
            chat: Id::Small(chat),
            target_seq: Id::Small(target),
            client_msg_id: Id::Any(cmid),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

fn http_request() -> Vec<Seed> {
    let signup = |name: &str| {
        format!("POST /v1/signup\n\n{{\"username\":\"{name}$N\",\"password\":\"correct horse\"}}")
    };
    let login = |name: &str| {
        format!(
            "POST /v1/login\n\n{{\"username\":\"{name}$N\",\"password\":\"correct horse\",\"device_name\":\"phone\"}}"
        )
    };
    let join = |parts: &[String]| parts.join("\n%%\n").into_bytes();
    let s = |t: &str| t.to_owned();
    vec![
        seed("healthz", b"GET /healthz\n".to_vec()),
        seed("metrics", b"GET /metrics\n".to_vec()),
        seed("endpoints", b"GET /v1/endpoints\n".to_vec()),
        seed(
            "signup-login",
            join(&[
                signup("alice"),
                login("alice"),
                s("GET /v1/friends\nauthorization: Bearer $T0\n"),
            ]),
        ),
        seed(
            "friends-flow",
            join(&[
                signup("alice"),
                signup("bob"),
                login("alice"),
                login("bob"),
                s("POST /v1/friends/requests\nauthorization: Bearer $T0\n\n{\"username\":\"bob$N\"}"),
                s("GET /v1/friends\nauthorization: Bearer $T1\n"),
                s("POST /v1/friends/requests/$U2/accept\nauthorization: Bearer $T1\n"),
                s("GET /v1/friends\nauthorization: bearer   $T0  \n"),
                s("DELETE /v1/friends/$U3\nauthorization: Bearer $T0\n"),
                s("DELETE /v1/friends/$U3\nauthorization: Bearer $T0\n"),
                s("POST /v1/logout\nauthorization: Bearer $T0\n"),
                s("GET /v1/friends\nauthorization: Bearer $T0\n"),
            ]),
        ),
        seed(
            "mutual-requests",
            join(&[
                signup("carol"),
                signup("dave"),
                login("carol"),
                login("dave"),
                s("POST /v1/friends/requests\nauthorization: Bearer $T0\n\n{\"username\":\"dave$N\"}"),
                s("POST /v1/friends/requests\nauthorization: Bearer $T1\n\n{\"username\":\"CAROL$N\"}"),
                s("POST /v1/friends/requests\nauthorization: Bearer $T1\n\n{\"username\":\"carol$N\"}"),
                s("POST /v1/friends/requests\nauthorization: Bearer $T0\n\n{\"username\":\"carol$N\"}"),
                s("POST /v1/friends/requests\nauthorization: Bearer $T0\n\n{\"username\":\"nobody$N\"}"),
            ]),
        ),
        seed(
            "bad-json",
            join(&[
                s("POST /v1/signup\n\n{\"username\":"),
                s(
                    "POST /v1/signup\n\n{\"username\":\"eve$N\",\"password\":\"correct horse\",\"admin\":true}",
                ),
                s("POST /v1/signup\n\n{\"username\":\"eve$N\"}"),
                s("POST /v1/signup\n\n{\"username\":7,\"password\":[]}"),
                s("POST /v1/signup\n\n\u{0}\u{1}\u{2}"),
                s("POST /v1/login\n\nnull"),
            ]),
        ),
        seed(
            "validation",
            join(&[
                s("POST /v1/signup\n\n{\"username\":\"ab\",\"password\":\"correct horse\"}"),
                s("POST /v1/signup\n\n{\"username\":\"zoë$N\",\"password\":\"correct horse\"}"),
                s("POST /v1/signup\n\n{\"username\":\"frank$N\",\"password\":\"short\"}"),
                signup("grace"),
                s(
                    "POST /v1/login\n\n{\"username\":\"grace$N\",\"password\":\"correct horse\",\"device_name\":\"\"}",
                ),
                s(
                    "POST /v1/login\n\n{\"username\":\"grace$N\",\"password\":\"correct horse\",\"device_name\":\"a\\u0007b\"}",
                ),
                s(
                    "POST /v1/login\n\n{\"username\":\"grace$N\",\"password\":\"wrong horse\",\"device_name\":\"x\"}",
                ),
                s(
                    "POST /v1/login\n\n{\"username\":\"nobody$N\",\"password\":\"correct horse\",\"device_name\":\"x\"}",
                ),
                s("POST /v1/signup\n\n{\"username\":\"GRACE$N\",\"password\":\"correct horse\"}"),
            ]),
        ),
        seed(
            "routing",
            join(&[
                s("PUT /v1/signup\n"),
                s("GET /v1/signup\n"),
                s("DELETE /healthz\n"),
                s("GET /nope\n"),
                s("GET /v1\n"),
                s("GET /v1/\n"),
                s("GET /v1/friends/requests\n"),
                s("GET /v1/friends?limit=5\nauthorization: Bearer nope\n"),
                s("get /healthz\n"),
                s("GET\n"),
                s("GET healthz\n"),
                s("POST /v1/friends/requests/1/accept/extra\n"),
            ]),
        ),
        seed(
            "bad-auth",
            join(&[
                signup("heidi"),
                login("heidi"),
                s("GET /v1/friends\n"),
                s("GET /v1/friends\nauthorization: $T0\n"),
                s("GET /v1/friends\nauthorization: Basic $T0\n"),
                s("GET /v1/friends\nauthorization: Bearer\n"),
                s("GET /v1/friends\nauthorization: Bearer 00\n"),
                s(
                    "POST /v1/logout\nauthorization: Bearer 0000000000000000000000000000000000000000000000000000000000000000\n",
                ),
                s("POST /v1/logout\n"),
            ]),
        ),
        seed(
            "bad-ids",
            join(&[
                signup("ivan"),
                login("ivan"),
                s("POST /v1/friends/requests/0/accept\nauthorization: Bearer $T0\n"),
                s("POST /v1/friends/requests/abc/accept\nauthorization: Bearer $T0\n"),
                s("POST /v1/friends/requests/99999999999999999999/accept\nauthorization: Bearer $T0\n"),
                s("POST /v1/friends/requests/$U0/accept\nauthorization: Bearer $T0\n"),
                s("DELETE /v1/friends/-1\nauthorization: Bearer $T0\n"),
                s("DELETE /v1/friends/18446744073709551615\nauthorization: Bearer $T0\n"),
                s("POST /v1/friends/requests\nauthorization: Bearer $T0\n\n{\"username\":\"ivan$N\"}"),
            ]),
        ),
        seed(
            "chats-flow",
            join(&[
                // $U0-$U2: alice, bob, carol (signups); $T0-$T2: their logins; $C2: the group (the DM
                // answers come first, $C0 and $C1).
                signup("alice"),
                signup("bob"),
                signup("carol"),
                login("alice"),
                login("bob"),
                login("carol"),
                s("POST /v1/friends/requests\nauthorization: Bearer $T0\n\n{\"username\":\"bob$N\"}"),
                s("POST /v1/friends/requests/$U0/accept\nauthorization: Bearer $T1\n"),
                s("POST /v1/friends/requests\nauthorization: Bearer $T0\n\n{\"username\":\"carol$N\"}"),
                s("POST /v1/friends/requests/$U0/accept\nauthorization: Bearer $T2\n"),
                s("POST /v1/dms\nauthorization: Bearer $T0\n\n{\"user_id\":$U1}"),
                s("POST /v1/dms\nauthorization: Bearer $T1\n\n{\"user_id\":$U0}"),
                s(
                    "POST /v1/groups\nauthorization: Bearer $T0\n\n{\"name\":\"hiking club\",\"members\":[$U1]}",
                ),
                s("GET /v1/groups/$C2\nauthorization: Bearer $T1\n"),
                s("POST /v1/groups/$C2/members\nauthorization: Bearer $T0\n\n{\"user_id\":$U2}"),
                s("POST /v1/groups/$C2/members\nauthorization: Bearer $T1\n\n{\"user_id\":$U2}"),
                s("DELETE /v1/groups/$C2/members/$U1\nauthorization: Bearer $T0\n"),
                s("DELETE /v1/groups/$C2/members/$U2\nauthorization: Bearer $T2\n"),
                s("GET /v1/chats\nauthorization: Bearer $T0\n"),
                s("GET /v1/presence?user_id=$U1\nauthorization: Bearer $T0\n"),
                s("GET /v1/presence?user_id=$U0\nauthorization: Bearer $T0\n"),
                s("POST /v1/logout\nauthorization: Bearer $T2\n"),
            ]),
        ),
        seed(
            "chat-refusals",
            join(&[
                signup("dan"),
                signup("erin"),
                login("dan"),
                s("POST /v1/dms\nauthorization: Bearer $T0\n\n{\"user_id\":$U1}"),
                s("POST /v1/dms\nauthorization: Bearer $T0\n\n{\"user_id\":$U0}"),
                s("POST /v1/dms\nauthorization: Bearer $T0\n\n{\"user_id\":0}"),
                s("POST /v1/groups\nauthorization: Bearer $T0\n\n{\"name\":\"\",\"members\":[]}"),
                s("POST /v1/groups\nauthorization: Bearer $T0\n\n{\"name\":\"solo\",\"members\":[$U1]}"),
                s("POST /v1/groups\nauthorization: Bearer $T0\n\n{\"name\":\"solo\",\"members\":[]}"),
                s("GET /v1/groups/999999\nauthorization: Bearer $T0\n"),
                s("GET /v1/groups/abc\nauthorization: Bearer $T0\n"),
                s("POST /v1/groups/$C0/members\nauthorization: Bearer $T0\n\n{\"user_id\":$U1}"),
                s("DELETE /v1/groups/$C0/members/$U0\nauthorization: Bearer $T0\n"),
                s("GET /v1/presence?user_id=$U1\nauthorization: Bearer $T0\n"),
                s("GET /v1/presence\nauthorization: Bearer $T0\n"),
                s("GET /v1/presence?user_id=x\nauthorization: Bearer $T0\n"),
            ]),
        ),
        seed(
            "remotes",
            join(&[
                s(
                    "POST /v1/signup\nx-remote: ::1\n\n{\"username\":\"judy$N\",\"password\":\"correct horse\"}",
                ),
                s(
                    "POST /v1/login\nx-remote: 2001:db8::1\n\n{\"username\":\"judy$N\",\"password\":\"correct horse\",\"device_name\":\"tablet\"}",
                ),
                s(
                    "POST /v1/login\nx-remote: ::ffff:10.0.0.1\n\n{\"username\":\"judy$N\",\"password\":\"correct horse\",\"device_name\":\"pc\"}",
                ),
                s(
                    "POST /v1/login\nx-remote: 10.0.0.1\r\n\r\n{\"username\":\"judy$N\",\"password\":\"correct horse\",\"device_name\":\"pc\"}",
                ),
            ]),
        ),
    ]
}

/// The libFuzzer dictionary for `http_request`.
pub fn http_dict() -> String {
    let words = [
        "GET",
        "POST",
        "DELETE",
        "PUT",
        "/healthz",
        "/metrics",
        "/v1/",
        "/v1/signup",
        "/v1/login",
        "/v1/logout",
        "/v1/endpoints",
        "/v1/friends",
        "/v1/friends/requests",
        "/accept",
        "?",
        "authorization: ",
        "x-remote: ",
        "Bearer ",
        "\\x0a%%\\x0a",
        "\\x0a\\x0a",
        "$N",
        "$T0",
        "$T1",
        "$U0",
        "$U1",
        "{\\\"username\\\":\\\"",
        "\\\"password\\\":\\\"",
        "\\\"device_name\\\":\\\"",
        "\\\"",
        "{",
        "}",
        ":",
        ",",
        "[]",
        "null",
        "true",
        "\\\\u0000",
        "\\\\ud800",
        "::1",
        "::ffff:",
        "correct horse",
        "/v1/dms",
        "/v1/groups",
        "/v1/groups/",
        "/members",
        "/members/",
        "/v1/chats",
        "/v1/presence",
        "?user_id=",
        "\\\"user_id\\\":",
        "\\\"name\\\":\\\"",
        "\\\"members\\\":[",
        "$C0",
        "$C1",
        "$U2",
    ];
    let mut out = String::from(
        "# natter HTTP side-port requests, in the http_request target's text format (see fuzz/README.md).\n\
         # Generated by natter_server::fuzzing::seeds; do not edit by hand.\n",
    );
    for w in words {
        let _ = writeln!(out, "\"{w}\"");
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Store records
// ---------------------------------------------------------------------------------------------

fn store_records() -> Vec<Seed> {
    let user = |name: &str, phc: &str, created_ms: u64| {
        hooks::encode_user(&UserRecord {
            id: UserId(7),
            username: name.to_owned(),
            password_phc: phc.to_owned(),
            created_ms,
        })
    };
    let device = |name: &str, created_ms: u64, hash: u8| {
        hooks::encode_device(&DeviceRecord {
            name: name.to_owned(),
            created_ms,
            token_hash: [hash; 32],
        })
    };
    let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
    let alice = user("alice", phc, 1_700_000_000_000);
    let mut truncated = alice.clone();
    truncated.truncate(alice.len() - 3);
    let mut wrong_version = alice.clone();
    if let Some(v) = wrong_version.first_mut() {
        *v = 2;
    }
    let mut trailing = alice.clone();
    trailing.push(0);
    vec![
        seed("id", hooks::encode_id(42)),
        seed("id-max", hooks::encode_id(u64::MAX)),
        seed("pair", hooks::encode_pair(1, 2)),
        seed("friend-friend", vec![1]),
        seed("friend-outgoing", vec![2]),
        seed("friend-incoming", vec![3]),
        seed("user", alice),
        seed(
            "user-unicode",
            user("zoë", "$argon2id$v=19$m=8,t=1,p=1$c2FsdA$aGFzaA", 5),
        ),
        seed("user-empty", user("", "", 0)),
        seed("user-truncated", truncated),
        seed("user-wrong-version", wrong_version),
        seed("user-trailing-byte", trailing),
        seed("device", device("phone", 1_700_000_000_001, 0xab)),
        seed("device-unicode", device("Zoë's 📱", 9, 0)),
        seed("device-empty", device("", 0, 0xff)),
        seed("counter", b"next_user_id".to_vec()),
        seed("chat-direct", hooks::encode_chat(false, 1, 1_700_000_000_002, "")),
        seed(
            "chat-group",
            hooks::encode_chat(true, 4, 1_700_000_000_003, "hiking club ⛰"),
        ),
        seed("member", hooks::encode_member(1_700_000_000_004)),
        seed(
            "message",
            hooks::encode_message(3, 1_700_000_000_005, 99, "hello, world"),
        ),
        seed("message-empty-text", hooks::encode_message(3, 0, 0, "")),
    ]
}
