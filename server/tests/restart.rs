//! End-to-end: restart — `kill -9` of natterd while several connections send
//! into several chats (direct chats and a group with two concurrent senders);
//! after the restart every acknowledged message is stored at its seq with its
//! text, no chat has a gap, a resend gets its original seq, and the next Send
//! in each chat gets exactly the next seq. Also: `--journal-limit` reaches the
//! storage writer (memtables sealed as the journal grows; off with 0), and a
//! clean stop leaves the journal with nothing to insert again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use natter_client::{Connection, Login};
use natter_server::ids::{ChatId, Seq};
use natter_server::store::Store;
use natter_wire::{Body, Frame, Send};
use support::{TestServer, has_files, start, start_with, wait_until};

const DEADLINE: Duration = Duration::from_secs(60);

/// Sends each connection keeps in flight (well under the default 1,000
/// sends/s rate limit's burst).
const WINDOW: u64 = 32;

fn connect(server: &TestServer, login: &Login) -> Connection {
    Connection::connect(server.tcp, &login.token, "test").unwrap().0
}

fn befriend(server: &TestServer, a: &Login, b: &Login, b_name: &str) {
    let http = server.client();
    http.friend_request(&a.token, b_name).unwrap();
    http.accept_friend(&b.token, a.user_id).unwrap();
}

/// The text of message `cmid` from `sender` in `chat`, so the read-back can
/// tell every message from every other.
fn text_of(chat: u64, sender: u64, cmid: u64) -> String {
    format!(
        "chat {chat} from {sender} #{cmid} {}",
        "z".repeat((cmid % 40) as usize)
    )
}

/// One acknowledgement seen by a sender: (chat, sender, client_msg_id, seq).
type Ack = (u64, u64, u64, u64);

/// Sends into `chat` as fast as the window allows until the connection dies
/// (natterd was killed) or `stop` is set, reporting every `SendOk`.
fn send_until_killed(
    mut conn: Connection,
    chat: u64,
    sender: u64,
    stop: Arc<AtomicBool>,
    acks: mpsc::Sender<Ack>,
) {
    let mut next = 1u64;
    let mut in_flight = 0u64;
    loop {
        while in_flight < WINDOW && !stop.load(Ordering::Relaxed) {
            let frame = Frame::new(
                next,
                Body::Send(Send {
                    chat_id: chat,
                    client_msg_id: next,
                    text: text_of(chat, sender, next),
                }),
            );
            if conn.send(&frame).is_err() {
                return;
            }
            next += 1;
            in_flight += 1;
        }
        match conn.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(Frame {
                body: Body::SendOk(ok),
                ..
            })) => {
                assert_eq!(ok.chat_id, chat);
                let _ = acks.send((chat, sender, ok.client_msg_id, ok.seq));
                in_flight -= 1;
            }
            // Pushes of the other sender's messages, presence, ...
            Ok(Some(_)) => {}
            Ok(None) if stop.load(Ordering::Relaxed) && in_flight == 0 => return,
            Ok(None) => {}
            Err(_) => return,
        }
    }
}

fn send_one(conn: &mut Connection, chat: u64, cmid: u64, text: &str) -> u64 {
    let frame = conn
        .request(Body::Send(Send {
            chat_id: chat,
            client_msg_id: cmid,
            text: text.into(),
        }))
        .unwrap();
    match frame.body {
        Body::SendOk(ok) => ok.seq,
        other => panic!("expected SendOk, got {other:?}"),
    }
}

#[test]
fn after_kill_9_under_load_in_several_chats_every_ack_is_kept_and_each_chat_continues_at_the_next_seq() {
    let mut server = start();
    let names = ["ann", "bob", "cat", "dan", "eve", "fay", "gus"];
    let users: Vec<Login> = names.iter().map(|n| server.user(n)).collect();
    let http = server.client();
    // Three direct chats (ann-bob, cat-dan, eve-fay) and a group of gus, ann,
    // cat, eve where gus and ann both send.
    let mut senders: Vec<(usize, u64)> = Vec::new();
    for pair in [(0, 1), (2, 3), (4, 5)] {
        befriend(&server, &users[pair.0], &users[pair.1], names[pair.1]);
        let chat = http
            .direct_chat(&users[pair.0].token, users[pair.1].user_id)
            .unwrap();
        senders.push((pair.0, chat));
    }
    for member in [0, 2, 4] {
        befriend(&server, &users[6], &users[member], names[member]);
    }
    let group = http
        .create_group(
            &users[6].token,
            "crash test",
            &[users[0].user_id, users[2].user_id, users[4].user_id],
        )
        .unwrap();
    senders.push((6, group));
    senders.push((0, group));
    let chats: Vec<u64> = {
        let mut c: Vec<u64> = senders.iter().map(|s| s.1).collect();
        c.dedup();
        c
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (ack_tx, ack_rx) = mpsc::channel();
    let threads: Vec<_> = senders
        .iter()
        .map(|&(user, chat)| {
            let conn = connect(&server, &users[user]);
            let (stop, acks, sender) = (stop.clone(), ack_tx.clone(), users[user].user_id);
            std::thread::spawn(move || send_until_killed(conn, chat, sender, stop, acks))
        })
        .collect();
    drop(ack_tx);

    // Kill natterd once every sender has had a good number of acks, while
    // their windows are still full.
    let mut acked: Vec<Ack> = Vec::new();
    let mut per_sender: HashMap<(u64, u64), usize> = HashMap::new();
    let enough = wait_until(DEADLINE, || {
        while let Ok(ack) = ack_rx.try_recv() {
            *per_sender.entry((ack.0, ack.1)).or_default() += 1;
            acked.push(ack);
        }
        per_sender.len() == senders.len() && per_sender.values().all(|n| *n >= 100)
    });
    assert!(enough, "senders got too few acks: {per_sender:?}");
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // Acks that were on the wire when natterd died count too.
    acked.extend(ack_rx.try_iter());

    // Read the store with natterd down: every ack is there, each chat 1..N.
    let mut last_seq: BTreeMap<u64, u64> = BTreeMap::new();
    {
        let store = Store::open(&server.data_dir()).unwrap();
        for &chat in &chats {
            let stored = store.messages(ChatId(chat), Seq(0), 1_000_000).unwrap();
            let seqs: Vec<u64> = stored.iter().map(|m| m.seq.0).collect();
            assert_eq!(
                seqs,
                (1..=stored.len() as u64).collect::<Vec<_>>(),
                "chat {chat}: stored seqs have a gap"
            );
            let mut seen = HashMap::new();
            for m in &stored {
                assert_eq!(
                    m.text,
                    text_of(chat, m.sender.0, m.client_msg_id.0),
                    "chat {chat} seq {} is not what was sent",
                    m.seq.0
                );
                assert!(
                    seen.insert((m.sender.0, m.client_msg_id.0), m.seq.0).is_none(),
                    "chat {chat}: ({}, {}) stored twice",
                    m.sender.0,
                    m.client_msg_id.0
                );
            }
            for &(c, sender, cmid, seq) in acked.iter().filter(|a| a.0 == chat) {
                assert_eq!(
                    seen.get(&(sender, cmid)),
                    Some(&seq),
                    "chat {c}: acked ({sender}, {cmid}) at seq {seq} is not stored there"
                );
            }
            last_seq.insert(chat, stored.len() as u64);
        }
    }
    let acked_total = acked.len();
    assert!(acked_total >= 100 * senders.len());

    server.start_again();
    // A resend of an acknowledged message gets its original seq, stores nothing...
    let &(chat, sender, cmid, seq) = acked.last().unwrap();
    let sender_login = users.iter().find(|u| u.user_id == sender).unwrap();
    let mut conn = connect(&server, sender_login);
    assert_eq!(
        send_one(&mut conn, chat, cmid, &text_of(chat, sender, cmid)),
        seq,
        "a resend after the restart must get the original seq"
    );
    // ...and a new message in each chat gets exactly the next seq.
    for &(user, chat) in &senders {
        let mut conn = connect(&server, &users[user]);
        let expected = last_seq[&chat] + 1;
        assert_eq!(
            send_one(&mut conn, chat, 1_000_000 + user as u64, "after the crash"),
            expected,
            "chat {chat}: the first send after the restart"
        );
        last_seq.insert(chat, expected);
    }
}

#[test]
fn the_journal_limit_seals_memtables_as_the_journal_grows_and_zero_turns_it_off() {
    // ~4.5 MB of journal (texts under fjall's 4 KiB journal compression threshold).
    let write = |server: &TestServer| {
        let ann = server.user("ann");
        let bob = server.user("bob");
        befriend(server, &ann, &bob, "bob");
        let chat = server.client().direct_chat(&ann.token, bob.user_id).unwrap();
        let mut conn = connect(server, &ann);
        let text = "j".repeat(3_000);
        for cmid in 1..=1_500u64 {
            // Paced by the round trip: well under the 1,000 sends/s limit's burst.
            send_one(&mut conn, chat, cmid, &text);
        }
    };
    let limited = start_with(&["--journal-limit", "1MiB"]);
    write(&limited);
    assert!(
        wait_until(DEADLINE, || limited
            .metric("natter_store_journal_seals_total")
            .is_some_and(|n| n >= 2.0)),
        "with --journal-limit 1MiB, 4.5 MB of journal sealed the memtables {:?} times",
        limited.metric("natter_store_journal_seals_total")
    );
    assert!(
        limited
            .metric("natter_store_journal_bytes")
            .is_some_and(|b| b > 0.0)
    );
    drop(limited);

    let off = start_with(&["--journal-limit", "0"]);
    write(&off);
    assert!(wait_until(DEADLINE, || off
        .metric("natter_store_journal_bytes")
        .is_some_and(|b| b > 4_000_000.0)));
    assert_eq!(off.metric("natter_store_journal_seals_total"), Some(0.0));
}

#[test]
fn a_clean_stop_flushes_every_memtable_so_the_next_start_inserts_nothing_again_and_kill_9_does() {
    let mut server = start();
    let ann = server.user("ann");
    let bob = server.user("bob");
    befriend(&server, &ann, &bob, "bob");
    let chat = server.client().direct_chat(&ann.token, bob.user_id).unwrap();
    // ~0.9 MB: far below the 16 MiB journal limit, so nothing is flushed
    // while natterd runs.
    let text = "c".repeat(3_000);
    let mut conn = connect(&server, &ann);
    for cmid in 1..=300u64 {
        send_one(&mut conn, chat, cmid, &text);
    }
    drop(conn);
    assert!(server.stop().success());
    server.start_again();
    assert_eq!(
        server.metric("natter_store_write_buffer_bytes"),
        Some(0.0),
        "a start after a clean stop put journal records into memtables again"
    );
    let mut conn = connect(&server, &ann);
    assert_eq!(send_one(&mut conn, chat, 301, &text), 301);
    for cmid in 302..=600u64 {
        send_one(&mut conn, chat, cmid, &text);
    }
    drop(conn);
    server.kill9();
    server.start_again();
    let replayed = server.metric("natter_store_write_buffer_bytes").unwrap_or(0.0);
    assert!(
        replayed > 500_000.0,
        "after kill -9 the unflushed sends are replayed into memtables: {replayed}"
    );
    let mut conn = connect(&server, &ann);
    assert_eq!(send_one(&mut conn, chat, 601, &text), 601);
}

#[test]
fn a_bad_store_setting_stops_natterd_at_start_naming_it() {
    let natterd = env!("CARGO_BIN_EXE_natterd");
    for (flag, value, named) in [
        ("--cache-size", "lots", "cache-size"),
        ("--cache-size", "4KiB", "cache-size"),
        ("--journal-limit", "1KB", "journal-limit"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = std::process::Command::new(natterd)
            .arg("--data-dir")
            .arg(&data)
            .args(["--http-port", "0", "--tcp-port", "0", "--tls-port", "off"])
            .args(["--ws-port", "off", "--quic-port", "off", flag, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {:?}", out.status);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{flag} {value}: {stderr}");
        assert!(!has_files(&data), "{flag} {value}: the store was opened anyway");
    }
}
