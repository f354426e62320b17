//! End-to-end: messaging — 1:1 and group chats, gapless per-chat order under
//! concurrent senders, durability across kill -9, idempotent resends, and the
//! refusals (non-members, text limits, invalid UTF-8, non-friends).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use natter_client::{ClientError, Connection, Login};
use natter_server::ids::{ChatId, Seq};
use natter_server::store::Store;
use natter_wire::{Body, ErrorCode, Frame, MAX_TEXT_CHARS, Message, Send, SendOk};
use support::{TestServer, start};

const DEADLINE: Duration = Duration::from_secs(20);

fn connect(server: &TestServer, login: &Login) -> Connection {
    Connection::connect(server.tcp, &login.token, "test").unwrap().0
}

/// Makes `a` and `b` friends.
fn befriend(server: &TestServer, a: &Login, b: &Login, b_name: &str) {
    let http = server.client();
    http.friend_request(&a.token, b_name).unwrap();
    http.accept_friend(&b.token, a.user_id).unwrap();
}

fn send(conn: &mut Connection, chat: u64, cmid: u64, text: &str) -> Result<SendOk, ClientError> {
    let frame = conn.request(Body::Send(Send {
        chat_id: chat,
        client_msg_id: cmid,
        text: text.into(),
    }))?;
    match frame.body {
        Body::SendOk(ok) => Ok(ok),
        other => panic!("expected SendOk, got {other:?}"),
    }
}

fn refusal(result: Result<SendOk, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e
            .server_code()
            .and_then(|c| c.known())
            .unwrap_or_else(|| panic!("{e}")),
        Ok(ok) => panic!("expected a refusal, got {ok:?}"),
    }
}

/// The next frame that is not a `Presence` (friends' presence is tests/presence.rs's business).
fn recv_skipping_presence(conn: &mut Connection) -> Option<Frame> {
    loop {
        match conn.recv_timeout(DEADLINE).unwrap() {
            Some(Frame {
                body: Body::Presence(_),
                ..
            }) => continue,
            other => return other,
        }
    }
}

/// Receives pushed messages until `n` have arrived (other frames are skipped).
fn receive(conn: &mut Connection, n: usize) -> Vec<Message> {
    let start = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match conn.recv_timeout(left).unwrap() {
            Some(Frame {
                body: Body::Message(m),
                ..
            }) => got.push(m),
            Some(_) => {}
            None => panic!(
                "only {} of {n} messages arrived within {DEADLINE:?}: {:?}",
                got.len(),
                got.iter().map(|m| (m.seq, m.text.clone())).collect::<Vec<_>>()
            ),
        }
    }
    got
}

/// Asserts that nothing is pushed to `conn` for a short while.
fn receives_nothing(conn: &mut Connection) {
    let quiet = Duration::from_millis(300);
    match conn.recv_timeout(quiet) {
        Ok(None) => {}
        other => panic!("expected silence, got {other:?}"),
    }
}

#[test]
fn a_hundred_member_group_with_concurrent_senders_sees_one_gapless_order() {
    const MEMBERS: usize = 100;
    const SENDERS: usize = 10;
    const PER_SENDER: usize = 30;
    let server = start();
    let logins: Vec<Login> = (0..MEMBERS).map(|i| server.user(&format!("member{i}"))).collect();
    for (i, login) in logins.iter().enumerate().skip(1) {
        befriend(&server, &logins[0], login, &format!("member{i}"));
    }
    let others: Vec<u64> = logins.iter().skip(1).map(|l| l.user_id).collect();
    let http = server.client();
    let chat = http.create_group(&logins[0].token, "everyone", &others).unwrap();
    assert_eq!(http.group(&logins[0].token, chat).unwrap().members.len(), MEMBERS);

    // A 101st member is refused.
    let extra = server.user("member100");
    befriend(&server, &logins[0], &extra, "member100");
    let err = http
        .add_member(&logins[0].token, chat, extra.user_id)
        .unwrap_err();
    assert_eq!(err.http_code(), Some("too_many_members"), "{err}");

    let mut readers: Vec<Connection> = logins.iter().skip(SENDERS).map(|l| connect(&server, l)).collect();
    // Every member is online before the first send.
    let sender_conns: Vec<Connection> = logins.iter().take(SENDERS).map(|l| connect(&server, l)).collect();
    let senders: Vec<_> = sender_conns
        .into_iter()
        .enumerate()
        .map(|(s, mut conn)| {
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..PER_SENDER {
                    let ok = send(&mut conn, chat, i as u64 + 1, &format!("sender {s} message {i}")).unwrap();
                    acked.push(ok.seq);
                }
                // Everything the others sent is pushed to this device too.
                let pushed = receive(&mut conn, (SENDERS - 1) * PER_SENDER);
                (acked, pushed)
            })
        })
        .collect();
    let total = SENDERS * PER_SENDER;
    let mut texts: HashMap<u64, String> = HashMap::new();
    for reader in &mut readers {
        let got = receive(reader, total);
        let seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=total as u64).collect::<Vec<_>>(),
            "a reader saw a gap or reordering"
        );
        for m in got {
            assert_eq!(m.chat_id, chat);
            let previous = texts.insert(m.seq, m.text.clone());
            assert!(
                previous.is_none_or(|t| t == m.text),
                "readers disagree on seq {}",
                m.seq
            );
        }
    }
    for sender in senders {
        let (acked, pushed) = sender.join().unwrap();
        let mut all: Vec<u64> = acked
            .iter()
            .copied()
            .chain(pushed.iter().map(|m| m.seq))
            .collect();
        assert!(
            pushed.windows(2).all(|w| w[0].seq < w[1].seq),
            "pushes out of order"
        );
        assert!(acked.windows(2).all(|w| w[0] < w[1]), "acks out of order");
        all.sort_unstable();
        assert_eq!(all, (1..=total as u64).collect::<Vec<_>>());
    }
    assert_eq!(texts.len(), total);
    let chats = http.chats(&logins[0].token).unwrap();
    assert_eq!(
        chats.iter().find(|c| c.chat_id == chat).map(|c| c.last_seq),
        Some(total as u64)
    );
}

#[test]
fn acknowledged_messages_survive_kill_9_and_nothing_is_half_written() {
    let mut server = start();
    let ann = server.user("ann");
    let bob = server.user("bob");
    befriend(&server, &ann, &bob, "bob");
    let chat = server.client().direct_chat(&ann.token, bob.user_id).unwrap();
    let mut conn = connect(&server, &ann);

    // Pipeline many sends, then kill natterd while acks are still coming in.
    const SENT: u64 = 400;
    let text_of = |cmid: u64| format!("message {cmid} {}", "x".repeat((cmid % 50) as usize));
    for cmid in 1..=SENT {
        let frame = Frame::new(
            cmid,
            Body::Send(Send {
                chat_id: chat,
                client_msg_id: cmid,
                text: text_of(cmid),
            }),
        );
        conn.send(&frame).unwrap();
    }
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new(); // cmid -> seq
    while acked.len() < 50 {
        match recv_skipping_presence(&mut conn) {
            Some(Frame {
                body: Body::SendOk(ok),
                ..
            }) => {
                acked.insert(ok.client_msg_id, ok.seq);
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => panic!("no acks"),
        }
    }
    server.kill9();
    // Acks already on the wire when natterd died count too.
    while let Ok(Some(Frame {
        body: Body::SendOk(ok),
        ..
    })) = conn.recv_timeout(Duration::from_millis(100))
    {
        acked.insert(ok.client_msg_id, ok.seq);
    }

    {
        let store = Store::open(&server.data_dir()).unwrap();
        let stored = store.messages(ChatId(chat), Seq(0), 10_000).unwrap();
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq.0).collect();
        assert_eq!(
            seqs,
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "stored seqs have a gap"
        );
        assert!(
            stored.len() >= acked.len(),
            "{} stored < {} acked",
            stored.len(),
            acked.len()
        );
        let by_seq: HashMap<u64, _> = stored.iter().map(|m| (m.seq.0, m)).collect();
        for (cmid, seq) in &acked {
            let m = by_seq.get(seq).unwrap_or_else(|| panic!("acked seq {seq} lost"));
            assert_eq!(m.client_msg_id.0, *cmid);
        }
        for m in &stored {
            assert_eq!(
                m.text,
                text_of(m.client_msg_id.0),
                "seq {} is not what was sent",
                m.seq.0
            );
            assert_eq!(m.sender.0, ann.user_id);
        }
    }

    server.start_again();
    let mut conn = connect(&server, &ann);
    let (cmid, seq) = acked.iter().next_back().map(|(c, s)| (*c, *s)).unwrap();
    let again = send(&mut conn, chat, cmid, &text_of(cmid)).unwrap();
    assert_eq!(again.seq, seq, "a resend after restart must get the original seq");
    let last = server.client().chats(&ann.token).unwrap()[0].last_seq;
    let fresh = send(&mut conn, chat, SENT + 1, "after the crash").unwrap();
    assert_eq!(fresh.seq, last + 1, "seq continues from the store, without a gap");
}

#[test]
fn a_resent_client_msg_id_gets_the_original_seq_and_is_stored_once() {
    let mut server = start();
    let ann = server.user("ann");
    let bob = server.user("bob");
    befriend(&server, &ann, &bob, "bob");
    let chat = server.client().direct_chat(&ann.token, bob.user_id).unwrap();
    assert_eq!(
        server.client().direct_chat(&bob.token, ann.user_id).unwrap(),
        chat,
        "one chat per pair"
    );
    let mut phone = connect(&server, &ann);
    let mut bobs = connect(&server, &bob);
    let first = send(&mut phone, chat, 42, "only once").unwrap();
    let retry = send(&mut phone, chat, 42, "only once").unwrap();
    assert_eq!((retry.seq, retry.server_ts_ms), (first.seq, first.server_ts_ms));
    // A retry from another connection (after a reconnect) too.
    drop(phone);
    let mut phone = connect(&server, &ann);
    assert_eq!(send(&mut phone, chat, 42, "only once").unwrap().seq, first.seq);
    assert_eq!(send(&mut phone, chat, 43, "next").unwrap().seq, first.seq + 1);
    let got = receive(&mut bobs, 2);
    assert_eq!(
        got.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2],
        "bob got the message once"
    );

    server.restart();
    let mut phone = connect(&server, &ann);
    assert_eq!(send(&mut phone, chat, 42, "only once").unwrap().seq, first.seq);
    server.stop();
    let store = Store::open(&server.data_dir()).unwrap();
    assert_eq!(store.messages(ChatId(chat), Seq(0), 100).unwrap().len(), 2);
}

#[test]
fn non_members_neither_send_nor_receive_and_removed_members_stop_receiving() {
    let server = start();
    let ann = server.user("ann");
    let bob = server.user("bob");
    let cat = server.user("cat");
    let eve = server.user("eve");
    befriend(&server, &ann, &bob, "bob");
    befriend(&server, &ann, &cat, "cat");
    let http = server.client();
    let chat = http
        .create_group(&ann.token, "trio", &[bob.user_id, cat.user_id])
        .unwrap();
    let (mut a, mut b, mut c, mut e) = (
        connect(&server, &ann),
        connect(&server, &bob),
        connect(&server, &cat),
        connect(&server, &eve),
    );

    // A non-member is told what a missing chat's sender is told (no existence oracle).
    assert_eq!(
        refusal(send(&mut e, chat, 1, "let me in")),
        ErrorCode::UnknownChat
    );
    send(&mut a, chat, 1, "hello trio").unwrap();
    assert_eq!(receive(&mut b, 1)[0].text, "hello trio");
    assert_eq!(receive(&mut c, 1)[0].text, "hello trio");
    receives_nothing(&mut e);
    assert_eq!(http.group(&eve.token, chat).unwrap_err().http_status(), Some(404));

    // Only the owner removes others; then bob receives nothing more and cannot send.
    let err = http.remove_member(&cat.token, chat, bob.user_id).unwrap_err();
    assert_eq!(err.http_status(), Some(403), "{err}");
    http.remove_member(&ann.token, chat, bob.user_id).unwrap();
    send(&mut a, chat, 2, "bob has left").unwrap();
    assert_eq!(receive(&mut c, 1)[0].seq, 2);
    receives_nothing(&mut b);
    assert_eq!(refusal(send(&mut b, chat, 2, "wait")), ErrorCode::UnknownChat);
    // A member may leave by itself.
    http.remove_member(&cat.token, chat, cat.user_id).unwrap();
    assert_eq!(http.group(&ann.token, chat).unwrap().members.len(), 1);
    e.ping().unwrap();
}

#[test]
fn text_limits_invalid_utf8_and_unknown_chats_are_refused_and_the_session_stays_open() {
    let server = start();
    let ann = server.user("ann");
    let bob = server.user("bob");
    let eve = server.user("eve");
    befriend(&server, &ann, &bob, "bob");
    let http = server.client();
    let err = http.direct_chat(&ann.token, eve.user_id).unwrap_err();
    assert_eq!(
        (err.http_status(), err.http_code()),
        (Some(403), Some("not_friends")),
        "{err}"
    );
    let chat = http.direct_chat(&ann.token, bob.user_id).unwrap();
    let mut a = connect(&server, &ann);
    let mut b = connect(&server, &bob);

    let longest = "é".repeat(MAX_TEXT_CHARS);
    let ok = send(&mut a, chat, 1, &longest).unwrap();
    let got = receive(&mut b, 1);
    assert_eq!(
        (got[0].seq, got[0].text.chars().count()),
        (ok.seq, MAX_TEXT_CHARS)
    );
    assert_eq!(got[0].text, longest);
    assert_eq!(
        refusal(send(&mut a, chat, 2, &"é".repeat(MAX_TEXT_CHARS + 1))),
        ErrorCode::TextTooLong
    );
    assert_eq!(
        refusal(send(&mut a, chat, 3, &"a".repeat(MAX_TEXT_CHARS + 1))),
        ErrorCode::TextTooLong
    );
    assert_eq!(refusal(send(&mut a, chat, 4, "")), ErrorCode::EmptyText);
    assert_eq!(
        refusal(send(&mut a, 987_654, 5, "hello?")),
        ErrorCode::UnknownChat
    );

    // Invalid UTF-8: a well-formed frame whose text has a 0xFF byte.
    let frame = Frame::new(
        77,
        Body::Send(Send {
            chat_id: chat,
            client_msg_id: 6,
            text: "broken text".into(),
        }),
    );
    let mut bytes = frame.encode().to_vec();
    let at = bytes.windows(11).position(|w| w == b"broken text").unwrap();
    bytes[at] = 0xff;
    a.send_raw(&bytes).unwrap();
    match recv_skipping_presence(&mut a) {
        Some(Frame {
            request_id: 77,
            body: Body::Error(e),
        }) => assert_eq!(e.code, ErrorCode::InvalidUtf8.as_u16()),
        other => panic!("expected InvalidUtf8, got {other:?}"),
    }
    a.ping().unwrap();
    assert_eq!(send(&mut a, chat, 7, "still here").unwrap().seq, ok.seq + 1);
    assert_eq!(receive(&mut b, 1)[0].text, "still here");
}
