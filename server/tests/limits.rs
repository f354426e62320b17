//! End-to-end: limits attacked as a stranger or an attacker would, against a
//! real natterd — pages and frames never larger than the frame limit the
//! client was told, the `client_msg_id` rules, the per-user session cap, and a
//! pipeline of requests from a client that never reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use natter_client::{Connection, Login};
use natter_wire::{Body, Cursor, ErrorCode, Frame, History, Send, Sync};
use support::{TestServer, start_with};

const DEADLINE: Duration = Duration::from_secs(60);

fn befriend(server: &TestServer, a: &Login, b: &Login, b_name: &str) {
    let http = server.client();
    http.friend_request(&a.token, b_name).unwrap();
    http.accept_friend(&b.token, a.user_id).unwrap();
}

/// Sends one message and waits for its answer: Ok(seq) or the error code.
fn send(conn: &mut Connection, chat: u64, cmid: u64, text: &str) -> Result<u64, u16> {
    let body = Body::Send(Send {
        chat_id: chat,
        client_msg_id: cmid,
        text: text.to_owned(),
    });
    match conn.request(body) {
        Ok(Frame {
            body: Body::SendOk(ok),
            ..
        }) => Ok(ok.seq),
        Err(e) => Err(e
            .server_code()
            .and_then(|c| c.known())
            .unwrap_or_else(|| panic!("{e}"))
            .as_u16()),
        Ok(other) => panic!("{other:?}"),
    }
}

/// natterd's resident memory in bytes.
fn rss(server: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

#[test]
fn history_and_sync_of_maximum_size_messages_stay_within_the_announced_frame_limit() {
    for max_frame in [None, Some(65_536usize)] {
        let mut flags = vec!["--send-rate-limit", "1000000"];
        let limit;
        if let Some(m) = max_frame {
            limit = m.to_string();
            flags.extend(["--max-frame", limit.as_str()]);
        }
        let server = start_with(&flags);
        let (alice, bob) = (server.user("alice"), server.user("bob"));
        befriend(&server, &alice, &bob, "bob");
        let chat = server.client().direct_chat(&alice.token, bob.user_id).unwrap();
        let (mut sender, welcome) = Connection::connect(server.tcp, &alice.token, "s").unwrap();
        let announced = welcome.max_frame as usize;
        assert_eq!(announced, max_frame.unwrap_or(natter_wire::DEFAULT_MAX_FRAME));
        // The largest text this server takes, in 4-byte characters (100,000 at the
        // default limit), mixed with short ones; one byte more is refused.
        let fits = natter_server::core::max_text_bytes(announced).min(4 * natter_wire::MAX_TEXT_CHARS);
        let big = "😀".repeat(fits / 4);
        let mut texts = Vec::new();
        for i in 0..7u64 {
            let text = if i % 3 == 2 {
                format!("short {i}")
            } else {
                big.clone()
            };
            assert_eq!(send(&mut sender, chat, i + 1, &text), Ok(i + 1));
            texts.push(text);
        }
        let over = "x".repeat(natter_server::core::max_text_bytes(announced) + 1);
        let refused = send(&mut sender, chat, 100, &over);
        assert!(
            refused == Err(ErrorCode::TextTooLong.as_u16())
                || refused == Err(ErrorCode::FrameTooLarge.as_u16()),
            "{refused:?}"
        );

        // History pages: the client decodes with the announced limit and would
        // drop the connection on a larger frame.
        let (mut reader, _) = Connection::connect(server.tcp, &bob.token, "r").unwrap();
        let mut before = 0;
        let mut seen = Vec::new();
        loop {
            let body = Body::History(History {
                chat_id: chat,
                before_seq: before,
                limit: 200,
            });
            let Body::HistoryPage(page) = reader.request(body).unwrap().body else {
                panic!("no page")
            };
            let size = Frame::new(1, Body::HistoryPage(page.clone())).encode().len();
            assert!(size <= announced, "a {size}-byte page > {announced}");
            for m in &page.messages {
                assert_eq!(m.text, texts[m.seq as usize - 1]);
                seen.push(m.seq);
            }
            before = page.messages.last().unwrap().seq;
            if !page.has_more {
                break;
            }
        }
        assert_eq!(seen, (1..=7).rev().collect::<Vec<_>>());
        // Sync streams every one of them, each in a frame of its own.
        let rid = reader
            .send_body(Body::Sync(Sync {
                cursors: vec![Cursor {
                    chat_id: chat,
                    seq: 0,
                }],
            }))
            .unwrap();
        let mut synced = Vec::new();
        loop {
            let frame = reader.recv_timeout(DEADLINE).unwrap().expect("sync stalled");
            match frame.body {
                Body::Message(m) => {
                    assert_eq!(frame.request_id, rid, "a sync page carries the Sync's request id");
                    assert_eq!(m.text, texts[m.seq as usize - 1]);
                    synced.push(m.seq);
                }
                Body::SyncDone(_) => break,
                _ => {}
            }
        }
        assert_eq!(synced, (1..=7).collect::<Vec<_>>());
    }
}

#[test]
fn client_msg_id_zero_and_a_reused_id_with_another_text_are_refused_and_nothing_is_stored_twice() {
    let server = start_with(&[]);
    let (alice, bob) = (server.user("alice"), server.user("bob"));
    befriend(&server, &alice, &bob, "bob");
    let chat = server.client().direct_chat(&alice.token, bob.user_id).unwrap();
    let (mut conn, _) = Connection::connect(server.tcp, &alice.token, "s").unwrap();
    assert_eq!(
        send(&mut conn, chat, 0, "an unset id"),
        Err(ErrorCode::MissingClientMsgId.as_u16())
    );
    assert_eq!(send(&mut conn, chat, 7, "first"), Ok(1));
    assert_eq!(
        send(&mut conn, chat, 7, "a different message"),
        Err(ErrorCode::ClientMsgIdReused.as_u16())
    );
    assert_eq!(send(&mut conn, chat, 7, "first"), Ok(1), "a true retry");
    assert_eq!(send(&mut conn, chat, 8, "second"), Ok(2));
    let chats = server.client().chats(&alice.token).unwrap();
    assert_eq!(chats.iter().find(|c| c.chat_id == chat).unwrap().last_seq, 2);
}

#[test]
fn a_users_seventeenth_session_closes_its_oldest() {
    let server = start_with(&[]);
    let alice = server.user("alice");
    let mut sessions = Vec::new();
    for i in 0..16 {
        sessions.push(
            Connection::connect(server.tcp, &alice.token, &format!("d{i}"))
                .unwrap()
                .0,
        );
    }
    let (mut newest, _) = Connection::connect(server.tcp, &alice.token, "d16").unwrap();
    newest.ping().unwrap();
    let oldest = &mut sessions[0];
    let frame = oldest
        .recv_timeout(DEADLINE)
        .unwrap()
        .expect("the oldest was told");
    assert!(
        matches!(&frame.body, Body::Error(e) if e.code == ErrorCode::TooManySessions.as_u16()),
        "{frame:?}"
    );
    assert!(oldest.recv_timeout(DEADLINE).is_err(), "then closed");
    for s in &mut sessions[1..] {
        s.ping().unwrap();
    }
    // With a raised cap there is room.
    let server = start_with(&["--max-sessions-per-user", "40"]);
    let alice = server.user("alice");
    let mut all = Vec::new();
    for i in 0..40 {
        all.push(
            Connection::connect(server.tcp, &alice.token, &format!("d{i}"))
                .unwrap()
                .0,
        );
    }
    for s in &mut all {
        s.ping().unwrap();
    }
}

#[test]
fn pipelined_history_requests_from_clients_that_never_read_cannot_grow_natterd() {
    let server = start_with(&["--send-rate-limit", "1000000"]);
    let (alice, bob) = (server.user("alice"), server.user("bob"));
    befriend(&server, &alice, &bob, "bob");
    let chat = server.client().direct_chat(&alice.token, bob.user_id).unwrap();
    let (mut sender, _) = Connection::connect(server.tcp, &alice.token, "s").unwrap();
    let big = "😀".repeat(natter_wire::MAX_TEXT_CHARS);
    for i in 1..=3 {
        assert_eq!(send(&mut sender, chat, i, &big), Ok(i));
    }
    let baseline = rss(&server);
    // 16 connections of one user (its session cap), each pipelining 400 History
    // requests for ~1.2 MB of replies each, never reading.
    let mut request = Vec::new();
    for rid in 1..=400u64 {
        let frame = Frame::new(
            rid,
            Body::History(History {
                chat_id: chat,
                before_seq: 0,
                limit: 200,
            }),
        );
        request.extend_from_slice(&frame.encode());
    }
    let mut attackers = Vec::new();
    for i in 0..16 {
        let (mut conn, _) = Connection::connect(server.tcp, &bob.token, &format!("b{i}")).unwrap();
        conn.send_raw(&request).unwrap();
        attackers.push(conn);
    }
    let mut peak = baseline;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        peak = peak.max(rss(&server));
        std::thread::park_timeout(Duration::from_millis(50));
    }
    let growth = peak.saturating_sub(baseline);
    eprintln!("natterd RSS {baseline} → peak {peak}: +{} MiB", growth >> 20);
    // Everyone else is still served.
    sender.ping().unwrap();
    assert!(growth < 64 << 20, "natterd grew by {} MiB", growth >> 20);
}
