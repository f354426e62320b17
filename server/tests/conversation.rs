//! End-to-end: the conversation features of issue 15 against a real natterd —
//! receipts (to the sender's other devices, after a restart, through sync and
//! HTTP, hidden both ways by the read-receipts setting), typing (online members
//! only, throttled, never to or from a non-member), edits and deletes (live,
//! through sync and history on a device that was offline, each refusal with its
//! own code, the deleted text gone from the store on disk), and unread counts
//! that are the same on every device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use natter_client::{ClientError, Connection, Login};
use natter_wire::{
    Ack, Body, ChatStates, Delete, Edit, ErrorCode, Frame, History, Message, Ping, Receipt, Send, SendOk,
    Sync, Typing, fb,
};
use support::{TestServer, start_with};

const DEADLINE: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";

fn server(extra: &[&str]) -> TestServer {
    let mut args = vec!["--send-rate-limit", "1000000"];
    args.extend_from_slice(extra);
    start_with(&args)
}

fn befriend(server: &TestServer, a: &Login, b: &Login, b_name: &str) {
    let http = server.client();
    http.friend_request(&a.token, b_name).unwrap();
    http.accept_friend(&b.token, a.user_id).unwrap();
}

/// Another device (a new login) of an existing user.
fn device(server: &TestServer, name: &str, device: &str) -> Login {
    server.client().login(name, PASSWORD, device).unwrap()
}

/// A conversation session (Hello{conversation}); its ChatStates is returned with it.
fn connect(server: &TestServer, login: &Login) -> (Connection, ChatStates) {
    let mut conn = Connection::open(server.tcp).unwrap();
    conn.hello_conversation(&login.token, "test", false).unwrap();
    let states = until(&mut conn, |f| matches!(f.body, Body::ChatStates(_)));
    let Some(Frame {
        body: Body::ChatStates(states),
        ..
    }) = states.last().cloned()
    else {
        unreachable!()
    };
    (conn, states)
}

/// Frames up to and including the first one `pred` accepts (panics after [`DEADLINE`]).
fn until(conn: &mut Connection, mut pred: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
    let start = Instant::now();
    let mut got = Vec::new();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match conn.recv_timeout(left).unwrap() {
            Some(frame) => {
                let done = pred(&frame);
                got.push(frame);
                if done {
                    return got;
                }
            }
            None => panic!("no matching frame within {DEADLINE:?}; got {got:?}"),
        }
    }
}

/// Everything queued for `conn` before the answer to a Ping sent now (a barrier).
fn drain(conn: &mut Connection) -> Vec<Frame> {
    let rid = conn.send_body(Body::Ping(Ping { nonce: 7 })).unwrap();
    let mut got = until(conn, |f| f.request_id == rid && matches!(f.body, Body::Pong(_)));
    got.pop();
    got
}

fn send(conn: &mut Connection, chat: u64, cmid: u64, text: &str) -> SendOk {
    match conn
        .request(Body::Send(Send {
            chat_id: chat,
            client_msg_id: cmid,
            text: text.into(),
        }))
        .unwrap()
        .body
    {
        Body::SendOk(ok) => ok,
        other => panic!("expected SendOk, got {other:?}"),
    }
}

fn edit(conn: &mut Connection, chat: u64, target: u64, cmid: u64, text: &str) -> Result<SendOk, ClientError> {
    let frame = conn.request(Body::Edit(Edit {
        chat_id: chat,
        target_seq: target,
        client_msg_id: cmid,
        text: text.into(),
    }))?;
    match frame.body {
        Body::SendOk(ok) => Ok(ok),
        other => panic!("expected SendOk, got {other:?}"),
    }
}

fn delete(conn: &mut Connection, chat: u64, target: u64, cmid: u64) -> Result<SendOk, ClientError> {
    let frame = conn.request(Body::Delete(Delete {
        chat_id: chat,
        target_seq: target,
        client_msg_id: cmid,
    }))?;
    match frame.body {
        Body::SendOk(ok) => Ok(ok),
        other => panic!("expected SendOk, got {other:?}"),
    }
}

fn code(result: Result<SendOk, ClientError>) -> ErrorCode {
    match result {
        Err(e) => e
            .server_code()
            .and_then(|c| c.known())
            .expect("a known server code"),
        Ok(ok) => panic!("expected a refusal, got {ok:?}"),
    }
}

fn receipts_of(frames: &[Frame]) -> Vec<Receipt> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Receipt(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn messages_of(frames: &[Frame]) -> Vec<Message> {
    frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Message(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

struct Pair {
    server: TestServer,
    alice: Login,
    bob: Login,
    dm: u64,
}

fn pair(extra: &[&str]) -> Pair {
    let server = server(extra);
    let alice = server.user("alice");
    let bob = server.user("bob");
    befriend(&server, &alice, &bob, "bob");
    let dm = server.client().direct_chat(&alice.token, bob.user_id).unwrap();
    Pair {
        server,
        alice,
        bob,
        dm,
    }
}

#[test]
fn receipts_reach_the_senders_other_devices_and_survive_a_restart() {
    let mut p = pair(&[]);
    let laptop = device(&p.server, "alice", "laptop");
    let (mut phone, _) = connect(&p.server, &p.alice);
    let (mut alice_laptop, _) = connect(&p.server, &laptop);
    let (mut bob, _) = connect(&p.server, &p.bob);
    for i in 1..=3 {
        send(&mut phone, p.dm, i, &format!("message {i}"));
    }
    until(&mut bob, |f| matches!(&f.body, Body::Message(m) if m.seq == 3));
    bob.send_body(Body::Ack(Ack {
        chat_id: p.dm,
        seq: 3,
    }))
    .unwrap();
    // The laptop did not send anything and still learns that bob got all three.
    let frames = until(
        &mut alice_laptop,
        |f| matches!(&f.body, Body::Receipt(r) if r.delivered_seq == 3),
    );
    let receipt = receipts_of(&frames).pop().unwrap();
    assert_eq!(
        (receipt.chat_id, receipt.user_id, receipt.read_seq),
        (p.dm, p.bob.user_id, 0)
    );
    // Read: bob's read marker (HTTP) reaches both of alice's devices.
    p.server.client().mark_read(&p.bob.token, p.dm, 2).unwrap();
    for conn in [&mut phone, &mut alice_laptop] {
        until(
            conn,
            |f| matches!(&f.body, Body::Receipt(r) if r.read_seq == 2 && r.delivered_seq == 3),
        );
    }
    // Bob's own receipts are not pushed to bob.
    assert!(
        receipts_of(&drain(&mut bob))
            .iter()
            .all(|r| r.user_id != p.bob.user_id)
    );
    let listed = p.server.client().receipts(&p.alice.token, p.dm).unwrap();
    let of_bob = listed.iter().find(|r| r.user_id == p.bob.user_id).unwrap();
    assert_eq!((of_bob.delivered_seq, of_bob.read_seq), (3, 2));

    // They are stored: after a restart, HTTP and a syncing device see them.
    drop((phone, alice_laptop, bob));
    p.server.restart();
    let listed = p.server.client().receipts(&p.alice.token, p.dm).unwrap();
    let of_bob = listed.iter().find(|r| r.user_id == p.bob.user_id).unwrap();
    assert_eq!((of_bob.delivered_seq, of_bob.read_seq), (3, 2));
    let (mut tablet, _) = connect(&p.server, &device(&p.server, "alice", "tablet"));
    let rid = tablet.send_body(Body::Sync(Sync::default())).unwrap();
    let frames = until(
        &mut tablet,
        |f| matches!(&f.body, Body::Receipt(r) if r.user_id == p.bob.user_id),
    );
    assert!(
        frames
            .iter()
            .any(|f| f.request_id == rid && matches!(f.body, Body::SyncDone(_))),
        "the receipts follow SyncDone: {frames:?}"
    );
    let receipt = receipts_of(&frames).pop().unwrap();
    assert_eq!((receipt.delivered_seq, receipt.read_seq), (3, 2));
}

#[test]
fn the_read_receipts_setting_hides_both_directions() {
    let p = pair(&[]);
    let http = p.server.client();
    let (mut alice, _) = connect(&p.server, &p.alice);
    let (mut bob, _) = connect(&p.server, &p.bob);
    assert!(!http.set_read_receipts(&p.bob.token, false).unwrap());
    send(&mut alice, p.dm, 1, "from alice");
    send(&mut bob, p.dm, 1, "from bob");
    until(&mut bob, |f| matches!(&f.body, Body::Message(m) if m.seq == 1));
    bob.send_body(Body::Ack(Ack {
        chat_id: p.dm,
        seq: 2,
    }))
    .unwrap();
    http.mark_read(&p.bob.token, p.dm, 2).unwrap();
    http.mark_read(&p.alice.token, p.dm, 2).unwrap();
    // Alice sees bob's delivery, never his reading.
    let frames = until(
        &mut alice,
        |f| matches!(&f.body, Body::Receipt(r) if r.user_id == p.bob.user_id && r.delivered_seq == 2),
    );
    let mut all = receipts_of(&frames);
    all.extend(receipts_of(&drain(&mut alice)));
    assert!(all.iter().all(|r| r.read_seq == 0), "{all:?}");
    // Bob, who hides his, sees no one's: alice's read marker reaches him as 0.
    let frames = until(
        &mut bob,
        |f| matches!(&f.body, Body::Receipt(r) if r.user_id == p.alice.user_id),
    );
    let mut all = receipts_of(&frames);
    all.extend(receipts_of(&drain(&mut bob)));
    assert!(all.iter().all(|r| r.read_seq == 0), "{all:?}");
    let by = |token: &str, user: u64| {
        http.receipts(token, p.dm)
            .unwrap()
            .into_iter()
            .find(|r| r.user_id == user)
            .unwrap()
    };
    assert_eq!(by(&p.alice.token, p.bob.user_id).read_seq, 0);
    assert_eq!(by(&p.alice.token, p.bob.user_id).delivered_seq, 2);
    assert_eq!(by(&p.bob.token, p.alice.user_id).read_seq, 0);
    // Each still sees its own marker; turning it back on shows both again.
    assert_eq!(by(&p.bob.token, p.bob.user_id).read_seq, 2);
    assert!(http.set_read_receipts(&p.bob.token, true).unwrap());
    assert_eq!(by(&p.alice.token, p.bob.user_id).read_seq, 2);
    until(
        &mut alice,
        |f| matches!(&f.body, Body::Receipt(r) if r.user_id == p.bob.user_id && r.read_seq == 2),
    );
}

#[test]
fn typing_reaches_online_members_only_and_never_a_non_member() {
    let server = server(&[]);
    let alice = server.user("alice");
    let bob = server.user("bob");
    let carol = server.user("carol");
    let dave = server.user("dave");
    for (login, name) in [(&bob, "bob"), (&carol, "carol"), (&dave, "dave")] {
        befriend(&server, &alice, login, name);
    }
    let http = server.client();
    let group = http
        .create_group(&alice.token, "crew", &[bob.user_id, carol.user_id])
        .unwrap();
    let (mut a, _) = connect(&server, &alice);
    let (mut b, _) = connect(&server, &bob);
    let (mut d, _) = connect(&server, &dave);
    let typing = |active| {
        Body::Typing(Typing {
            chat_id: group,
            active,
            user_id: 0,
        })
    };
    // Dave is no member: his indicator goes nowhere. The UnknownChat answer to his Send (a
    // non-member is answered like a missing chat) comes from
    // the same owner core after it handled the Typing, so it is a barrier.
    d.send_body(typing(true)).unwrap();
    let refused = d.request(Body::Send(Send {
        chat_id: group,
        client_msg_id: 1,
        text: "let me in".into(),
    }));
    assert_eq!(
        refused.unwrap_err().server_code().unwrap(),
        ErrorCode::UnknownChat
    );
    // Alice types twice in a row (the second within 2 s is dropped), then sends (which ends it).
    a.send_body(typing(true)).unwrap();
    a.send_body(typing(true)).unwrap();
    send(&mut a, group, 1, "hi all");
    let frames = until(&mut b, |f| matches!(&f.body, Body::Message(m) if m.seq == 1));
    let seen: Vec<(u64, bool)> = frames
        .iter()
        .filter_map(|f| match &f.body {
            Body::Typing(t) => Some((t.user_id, t.active)),
            _ => None,
        })
        .collect();
    assert_eq!(
        seen,
        [(alice.user_id, true), (alice.user_id, false)],
        "{frames:?}"
    );
    // The sender's own sessions and the non-member got none of it.
    for conn in [&mut a, &mut d] {
        let frames = drain(conn);
        assert!(
            !frames.iter().any(|f| matches!(f.body, Body::Typing(_))),
            "{frames:?}"
        );
    }
    // Carol was offline: nothing was kept for her.
    let (mut c, _) = connect(&server, &carol);
    let frames = drain(&mut c);
    assert!(
        !frames.iter().any(|f| matches!(f.body, Body::Typing(_))),
        "{frames:?}"
    );
    // A session without `conversation` gets no Typing either (old clients are unaffected).
    let mut old = Connection::connect(server.tcp, &bob.token, "old").unwrap().0;
    let seen = type_until_seen(&mut a, &mut b, group, Instant::now());
    assert!(
        seen,
        "bob's conversation session sees alice type again once 2 s passed"
    );
    let frames = drain(&mut old);
    assert!(
        !frames.iter().any(|f| matches!(f.body, Body::Typing(_))),
        "{frames:?}"
    );
}

/// Alice types until bob sees it (the throttle lets one through once 2 s passed since the last).
fn type_until_seen(a: &mut Connection, b: &mut Connection, group: u64, since: Instant) -> bool {
    while since.elapsed() < DEADLINE {
        a.send_body(Body::Typing(Typing {
            chat_id: group,
            active: true,
            user_id: 0,
        }))
        .unwrap();
        let frames = drain_for(b, Duration::from_millis(300));
        if frames
            .iter()
            .any(|f| matches!(&f.body, Body::Typing(t) if t.active))
        {
            return true;
        }
    }
    false
}

/// Frames that arrive within `wait` (a poll step of a wait with a deadline).
fn drain_for(conn: &mut Connection, wait: Duration) -> Vec<Frame> {
    let mut got = Vec::new();
    let end = Instant::now() + wait;
    while let Some(frame) = conn
        .recv_timeout(end.saturating_duration_since(Instant::now()))
        .unwrap()
    {
        got.push(frame);
    }
    got
}

#[test]
fn edits_and_deletes_arrive_live_and_through_sync_and_history_on_a_device_that_was_offline() {
    let p = pair(&[]);
    let tablet = device(&p.server, "bob", "tablet");
    let (mut alice, _) = connect(&p.server, &p.alice);
    let (mut bob, _) = connect(&p.server, &p.bob);
    send(&mut alice, p.dm, 1, "helo");
    send(&mut alice, p.dm, 2, "oops, wrong chat");
    let edited = edit(&mut alice, p.dm, 1, 3, "hello").unwrap();
    assert_eq!(edited.seq, 3);
    // A retry is answered with the same seq and stored once.
    assert_eq!(edit(&mut alice, p.dm, 1, 3, "hello").unwrap().seq, 3);
    let deleted = delete(&mut alice, p.dm, 2, 4).unwrap();
    assert_eq!(deleted.seq, 4);
    // Live, in seq order: the records with their own seq and their target.
    let live = messages_of(&until(
        &mut bob,
        |f| matches!(&f.body, Body::Message(m) if m.seq == 4),
    ));
    let shape: Vec<_> = live
        .iter()
        .map(|m| (m.seq, m.kind, m.target_seq, m.text.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, fb::MessageKind::Text, 0, "helo"),
            (2, fb::MessageKind::Text, 0, "oops, wrong chat"),
            (3, fb::MessageKind::Edit, 1, "hello"),
            (4, fb::MessageKind::Delete, 2, ""),
        ]
    );
    // The tablet was offline: its sync gets each message's current state plus the records.
    let (mut tab, _) = connect(&p.server, &tablet);
    tab.send_body(Body::Sync(Sync::default())).unwrap();
    let synced = messages_of(&until(&mut tab, |f| matches!(f.body, Body::SyncDone(_))));
    let state: Vec<_> = synced
        .iter()
        .map(|m| {
            (
                m.seq,
                m.kind,
                m.text.as_str(),
                m.target_seq,
                m.edited_seq,
                m.deleted_seq,
            )
        })
        .collect();
    let expected = [
        (1, fb::MessageKind::Text, "hello", 0, 3, 0),
        (2, fb::MessageKind::Text, "", 0, 0, 4),
        (3, fb::MessageKind::Edit, "hello", 1, 0, 0),
        (4, fb::MessageKind::Delete, "", 2, 0, 0),
    ];
    assert_eq!(state, expected);
    let page = match tab
        .request(Body::History(History {
            chat_id: p.dm,
            before_seq: 0,
            limit: 10,
        }))
        .unwrap()
        .body
    {
        Body::HistoryPage(page) => page,
        other => panic!("{other:?}"),
    };
    let mut history: Vec<_> = page
        .messages
        .iter()
        .map(|m| {
            (
                m.seq,
                m.kind,
                m.text.as_str(),
                m.target_seq,
                m.edited_seq,
                m.deleted_seq,
            )
        })
        .collect();
    history.reverse();
    assert_eq!(history, expected);
}

#[test]
fn refused_edits_and_deletes_get_their_own_codes() {
    let server = server(&["--edit-window", "3s"]);
    let alice = server.user("alice");
    let bob = server.user("bob");
    let carol = server.user("carol");
    befriend(&server, &alice, &bob, "bob");
    befriend(&server, &alice, &carol, "carol");
    let group = server
        .client()
        .create_group(&alice.token, "g", &[bob.user_id, carol.user_id])
        .unwrap();
    let (mut a, _) = connect(&server, &alice);
    let (mut b, _) = connect(&server, &bob);
    let (mut c, _) = connect(&server, &carol);
    let of_bob = send(&mut b, group, 1, "bob's").seq;
    let of_alice = send(&mut a, group, 1, "alice's").seq;
    // Not the sender.
    assert_eq!(
        code(edit(&mut a, group, of_bob, 2, "mine now")),
        ErrorCode::NotSender
    );
    assert_eq!(code(delete(&mut c, group, of_bob, 1)), ErrorCode::NotSender);
    // A seq that does not exist, 0, and a record that is no text.
    assert_eq!(code(edit(&mut b, group, 999, 2, "x")), ErrorCode::UnknownTarget);
    assert_eq!(code(edit(&mut b, group, 0, 3, "x")), ErrorCode::UnknownTarget);
    let edit_seq = edit(&mut b, group, of_bob, 4, "bob's, edited").unwrap().seq;
    assert_eq!(
        code(edit(&mut b, group, edit_seq, 5, "x")),
        ErrorCode::UnknownTarget
    );
    // The group's owner may delete anyone's message; then it cannot be edited or deleted again.
    delete(&mut a, group, of_bob, 3).unwrap();
    assert_eq!(
        code(edit(&mut b, group, of_bob, 6, "back")),
        ErrorCode::MessageDeleted
    );
    assert_eq!(code(delete(&mut b, group, of_bob, 7)), ErrorCode::MessageDeleted);
    // After the (3 s) window: refused. Polled with a deadline, never a fixed sleep.
    let start = Instant::now();
    let mut cmid = 100;
    let last = loop {
        cmid += 1;
        let result = edit(&mut a, group, of_alice, cmid, &format!("alice's v{cmid}"));
        if result.is_err() {
            break result;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "edits still accepted after {DEADLINE:?}"
        );
        // One attempt per poll step (about a dozen edits in 3 s, under the 64-edit cap).
        drain_for(&mut c, Duration::from_millis(250));
    };
    assert_eq!(code(last), ErrorCode::WindowClosed);
    // The delete window (48 h) is still open for the sender.
    delete(&mut a, group, of_alice, 500).unwrap();
}

#[test]
fn deleted_text_is_gone_from_the_store() {
    let mut p = pair(&[]);
    let (mut alice, _) = connect(&p.server, &p.alice);
    let secret = send(&mut alice, p.dm, 1, "canary-secret-7f3a").seq;
    edit(&mut alice, p.dm, secret, 2, "canary-edited-9c1d").unwrap();
    send(&mut alice, p.dm, 3, "canary-kept-5e2b");
    delete(&mut alice, p.dm, secret, 4).unwrap();
    drop(alice);
    let status = p.server.stop();
    assert!(status.success(), "natterd exited with {status}");
    // Read the data directory with fjall itself, every record of the messages keyspace.
    let db = fjall::Database::builder(p.server.data_dir()).open().unwrap();
    let messages = db
        .keyspace("messages", fjall::KeyspaceCreateOptions::default)
        .unwrap();
    let mut values = Vec::new();
    for guard in messages.prefix(p.dm.to_be_bytes()) {
        let (_, value) = guard.into_inner().unwrap();
        values.push(value.to_vec());
    }
    let contains = |needle: &str| {
        values
            .iter()
            .any(|v| v.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    assert_eq!(values.len(), 4, "original, edit, kept, delete: still gapless");
    assert!(contains("canary-kept-5e2b"), "the scan sees stored texts");
    assert!(!contains("canary-secret-7f3a"), "the deleted text is gone");
    assert!(!contains("canary-edited-9c1d"), "so is the text of its edit");
    drop(messages);
    drop(db);
    p.server.start_again();
}

#[test]
fn unread_counts_are_the_same_on_every_device() {
    let p = pair(&[]);
    let laptop = device(&p.server, "bob", "laptop");
    let (mut alice, alice_states) = connect(&p.server, &p.alice);
    assert_eq!(alice_states.chats.len(), 1);
    assert_eq!(alice_states.chats[0].unread, 0);
    for i in 1..=3 {
        send(&mut alice, p.dm, i, &format!("m{i}"));
    }
    // An edit is no new unread message; the reader's own messages never are.
    edit(&mut alice, p.dm, 3, 4, "m3!").unwrap();
    let (_phone, phone_states) = connect(&p.server, &p.bob);
    let (_lap, laptop_states) = connect(&p.server, &laptop);
    for states in [&phone_states, &laptop_states] {
        let chat = states.chats[0];
        assert_eq!(
            (chat.chat_id, chat.last_seq, chat.read_seq, chat.unread),
            (p.dm, 4, 0, 3)
        );
    }
    let http = p.server.client();
    http.mark_read(&p.bob.token, p.dm, 1).unwrap();
    for token in [&p.bob.token, &laptop.token] {
        let chats = http.chats(token).unwrap();
        assert_eq!((chats[0].read_seq, chats[0].unread), (1, 2));
    }
    let (_again, states) = connect(&p.server, &laptop);
    assert_eq!(states.chats[0].unread, 2);
    assert_eq!(http.chats(&p.alice.token).unwrap()[0].unread, 0);
}
