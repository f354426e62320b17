//! End-to-end: the Python client (`clients/python`) against a real natterd, beside Rust
//! clients. `scripts/python-env.sh` sets up `./.venv` (once per test run); the Python side
//! is `clients/python/tests/interop_peer.py`, a child process driven by JSON lines. Covers:
//! Python and Rust clients chatting in one group and seeing the same `(seq, sender, text)`
//! list in the same order; a Python device catching up by Sync after being offline (from its
//! own cursors and from the cursor it stored with Ack); the Python client refusing bad texts
//! and oversized frames before sending, retries keeping the `client_msg_id`, and server
//! refusals by code name; and the Python unit tests (pytest) of the client's framing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use natter_client::{Connection, Login};
use natter_wire::{Body, Frame, Send};
use serde_json::{Value, json};
use support::{TestServer, start_with};

const DEADLINE: Duration = Duration::from_secs(60);
const PASSWORD: &str = "correct horse battery";

/// The Rust senders' `client_msg_id`s: unique across every send of the test process.
static NEXT_CMID: AtomicU64 = AtomicU64::new(1);

/// One chat entry as both languages compare it: `(seq, sender, text)`.
type Entry = (u64, u64, String);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `scripts/python-env.sh` once per test process; its venv's python.
fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new(repo_root().join("scripts/python-env.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/python-env.sh");
        assert!(
            out.status.success(),
            "scripts/python-env.sh failed ({}): see its message above",
            out.status
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// The Python peer process: one JSON command in, one JSON answer out.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn start(server: &TestServer) -> Peer {
        let mut child = Command::new(python())
            .arg(repo_root().join("clients/python/tests/interop_peer.py"))
            .arg(server.http_url())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the Python peer");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Peer { child, stdin, lines }
    }

    /// Writes a command without waiting for its answer (see [`Peer::answer`]).
    fn post(&mut self, cmd: Value) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next answer: `Ok(value)` or `Err(error object)`.
    fn answer(&mut self) -> Result<Value, Value> {
        let line = self
            .lines
            .recv_timeout(DEADLINE)
            .expect("the Python peer answered within the deadline");
        let mut v: Value = serde_json::from_str(&line).unwrap();
        match v.get_mut("ok") {
            Some(ok) => Ok(ok.take()),
            None => Err(v["error"].take()),
        }
    }

    fn try_cmd(&mut self, cmd: Value) -> Result<Value, Value> {
        self.post(cmd);
        self.answer()
    }

    fn cmd(&mut self, cmd: Value) -> Value {
        let shown = cmd.to_string().chars().take(200).collect::<String>();
        self.try_cmd(cmd)
            .unwrap_or_else(|e| panic!("Python peer failed {shown}: {e}"))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({"cmd": "quit"}));
        let _ = self.stdin.flush();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::park_timeout(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[[chat, seq, sender, text], ...]` from the peer as entries of `chat`.
fn entries(v: &Value, chat: u64) -> Vec<Entry> {
    v.as_array()
        .unwrap()
        .iter()
        .filter(|m| m[0].as_u64() == Some(chat))
        .map(|m| {
            (
                m[1].as_u64().unwrap(),
                m[2].as_u64().unwrap(),
                m[3].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The Python peer signs up and logs in `name` itself; returns its user id.
fn python_user(peer: &mut Peer, name: &str) -> u64 {
    let r = peer.cmd(json!({"cmd": "signup_login", "username": name, "password": PASSWORD}));
    r["user_id"].as_u64().unwrap()
}

/// A Rust user befriends the Python peer's user (the peer accepts over its own HTTP client).
fn befriend_python(server: &TestServer, rust: &Login, peer: &mut Peer, name: &str) {
    server.client().friend_request(&rust.token, name).unwrap();
    peer.cmd(json!({"cmd": "accept_friend", "user_id": rust.user_id}));
}

/// Sends `texts` into `chat` from a Rust connection, one at a time (the next once the
/// last one's SendOk came, so they interleave with another sender's), and collects, until
/// `want` entries of the chat are known, its own sends (from SendOk) and the pushes it
/// receives, in arrival order; pushes must come in increasing seq.
fn rust_side(conn: &mut Connection, me: u64, chat: u64, texts: &[String], want: usize) -> Vec<Entry> {
    let mut to_send = texts.iter();
    let mut in_flight: Option<(u64, String)> = None;
    let mut got = Vec::new();
    let mut last_push = 0;
    let start = Instant::now();
    while got.len() < want || in_flight.is_some() {
        if in_flight.is_none()
            && let Some(text) = to_send.next()
        {
            let cmid = NEXT_CMID.fetch_add(1, Ordering::Relaxed);
            conn.send_body(Body::Send(Send {
                chat_id: chat,
                client_msg_id: cmid,
                text: text.clone(),
            }))
            .unwrap();
            in_flight = Some((cmid, text.clone()));
        }
        let left = DEADLINE.saturating_sub(start.elapsed());
        match conn.recv_timeout(left).unwrap() {
            Some(Frame {
                body: Body::SendOk(ok),
                ..
            }) => {
                let (cmid, text) = in_flight.take().expect("a send in flight");
                assert_eq!(ok.client_msg_id, cmid);
                got.push((ok.seq, me, text));
            }
            Some(Frame {
                body: Body::Message(m),
                ..
            }) if m.chat_id == chat => {
                assert!(m.seq > last_push, "push {} after {last_push}", m.seq);
                last_push = m.seq;
                got.push((m.seq, m.sender, m.text));
            }
            Some(Frame {
                body: Body::Error(e), ..
            }) => panic!("refused: {e:?}"),
            Some(_) => {}
            None => panic!("{} of {want} messages within {DEADLINE:?}", got.len()),
        }
    }
    got
}

/// Sorted by seq, and checks the list is exactly seqs 1..=n once each.
fn complete(mut list: Vec<Entry>, n: usize) -> Vec<Entry> {
    list.sort();
    let seqs: Vec<u64> = list.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "every seq once: {list:?}"
    );
    list
}

#[test]
fn python_unit_tests_pass() {
    let out = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(repo_root().join("clients/python/tests"))
        .output()
        .expect("run pytest");
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    assert!(
        out.status.success(),
        "pytest failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(" passed"), "pytest ran no test:\n{text}");
}

#[test]
fn python_and_rust_clients_see_one_group_in_the_same_order() {
    const EACH: usize = 25;
    let server = start_with(&["--send-rate-limit", "1000000"]);
    let http = server.client();
    let alice = server.user("alice");
    let carol = server.user("carol");
    let mut bob = Peer::start(&server);
    let bob_id = python_user(&mut bob, "bob");
    befriend_python(&server, &alice, &mut bob, "bob");
    http.friend_request(&alice.token, "carol").unwrap();
    http.accept_friend(&carol.token, alice.user_id).unwrap();
    let chat = http
        .create_group(&alice.token, "mixed", &[bob_id, carol.user_id])
        .unwrap();

    // Everyone is connected before the first message: carol and alice (Rust) get pushes
    // from their Welcome on; bob (Python) says sync_first and syncs the empty chat.
    let (mut alice_conn, _) = Connection::connect(server.tcp, &alice.token, "rust").unwrap();
    let (mut carol_conn, _) = Connection::connect(server.tcp, &carol.token, "rust").unwrap();
    // The Python client's best transport: TLS, the certificate pinned from the endpoints.
    let connected = bob.cmd(json!({"cmd": "connect", "sync_first": true}));
    assert_eq!(connected["transport"], server.url("tls"), "{connected}");
    let synced = bob.cmd(json!({"cmd": "sync"}));
    assert!(entries(&synced["messages"], chat).is_empty());
    assert_eq!(synced["heads"][chat.to_string()], 0);

    // Both send at once, each waiting for its SendOk before the next, so that Python's
    // sends (retried on failure with the same client_msg_id) interleave with Rust's.
    bob.post(json!({"cmd": "send_many", "chat_id": chat, "prefix": "from python ✓ ", "count": EACH}));
    let texts: Vec<String> = (0..EACH).map(|i| format!("from rust {i}")).collect();
    let alice_got = rust_side(&mut alice_conn, alice.user_id, chat, &texts, 2 * EACH);
    let sent = bob.answer().expect("send_many");
    let carol_got = rust_side(&mut carol_conn, carol.user_id, chat, &[], 2 * EACH);

    let received = bob.cmd(json!({"cmd": "recv_until", "chat_id": chat, "seq": 2 * EACH}));
    let pushed = entries(&received["messages"], chat);
    let seqs: Vec<u64> = pushed.iter().map(|e| e.0).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "Python pushes in order: {seqs:?}"
    );
    assert!(
        pushed.iter().all(|e| e.1 != bob_id),
        "no own message pushed back to Python"
    );
    let mut bob_got = pushed;
    for s in sent["sent"].as_array().unwrap() {
        bob_got.push((s[1].as_u64().unwrap(), bob_id, s[2].as_str().unwrap().to_owned()));
    }

    // carol saw every message as a push, so her arrival order is the chat's order.
    let order: Vec<Entry> = carol_got.clone();
    assert_eq!(
        complete(carol_got, 2 * EACH),
        order,
        "carol's pushes arrived in seq order"
    );
    let alice_list = complete(alice_got, 2 * EACH);
    let bob_list = complete(bob_got, 2 * EACH);
    assert_eq!(bob_list, alice_list, "Python and Rust see the same messages");
    assert_eq!(bob_list, order);
    let python_texts = order.iter().filter(|e| e.1 == bob_id).count();
    assert_eq!(python_texts, EACH);
    let switches = order.windows(2).filter(|w| w[0].1 != w[1].1).count();
    println!("senders alternate {switches} times in {} messages", order.len());

    // The Python client's History: the same list, newest first.
    let page = bob.cmd(json!({"cmd": "history", "chat_id": chat, "limit": 200}));
    let mut history = entries(&page["messages"], chat);
    history.reverse();
    assert_eq!(history, order);
    assert_eq!(page["has_more"], false);
}

#[test]
fn a_python_device_catches_up_by_sync_after_being_offline() {
    let server = start_with(&["--send-rate-limit", "1000000"]);
    let http = server.client();
    let alice = server.user("alice");
    let mut bob = Peer::start(&server);
    let bob_id = python_user(&mut bob, "bob");
    befriend_python(&server, &alice, &mut bob, "bob");
    let chat = http.create_group(&alice.token, "away", &[bob_id]).unwrap();
    let (mut alice_conn, _) = Connection::connect(server.tcp, &alice.token, "rust").unwrap();
    let texts = |from: usize, to: usize| (from..to).map(|i| format!("m{i}")).collect::<Vec<_>>();

    // Online: three messages arrive live; the device acks them and goes away.
    bob.cmd(json!({"cmd": "connect"}));
    bob.cmd(json!({"cmd": "sync"}));
    rust_side(&mut alice_conn, alice.user_id, chat, &texts(0, 3), 3);
    let live = bob.cmd(json!({"cmd": "recv_until", "chat_id": chat, "seq": 3}));
    assert_eq!(entries(&live["messages"], chat).len(), 3);
    bob.cmd(json!({"cmd": "ack", "chat_id": chat}));
    // A History round trip after the Ack: the server has handled the Ack before the disconnect.
    bob.cmd(json!({"cmd": "history", "chat_id": chat, "limit": 1}));
    bob.cmd(json!({"cmd": "disconnect"}));

    // Offline: 40 more.
    rust_side(&mut alice_conn, alice.user_id, chat, &texts(3, 43), 40);

    // Back, with the cursors the client holds: each missed message once, in order.
    bob.cmd(json!({"cmd": "connect", "sync_first": true}));
    let caught = bob.cmd(json!({"cmd": "sync"}));
    let got = entries(&caught["messages"], chat);
    let want: Vec<Entry> = (3..43)
        .map(|i| (i as u64 + 1, alice.user_id, format!("m{i}")))
        .collect();
    assert_eq!(got, want);
    assert_eq!(caught["heads"][chat.to_string()], 43);

    // Then live again: the next message comes once as a push, nothing repeated.
    rust_side(&mut alice_conn, alice.user_id, chat, &texts(43, 44), 1);
    let next = bob.cmd(json!({"cmd": "recv_until", "chat_id": chat, "seq": 44}));
    assert_eq!(
        entries(&next["messages"], chat),
        vec![(44, alice.user_id, "m43".to_owned())]
    );
    let quiet = bob.cmd(json!({"cmd": "recv_for", "timeout": 0.3}));
    assert!(
        entries(&quiet["messages"], chat).is_empty(),
        "nothing twice: {quiet}"
    );

    // A device that forgot its cursors syncs from the one it stored with Ack (seq 3).
    bob.cmd(json!({"cmd": "disconnect"}));
    bob.cmd(json!({"cmd": "connect", "sync_first": true}));
    let stored = bob.cmd(json!({"cmd": "sync", "cursors": "stored"}));
    let got = entries(&stored["messages"], chat);
    assert_eq!(got.first().map(|e| e.0), Some(4), "starts after the acked seq 3");
    assert_eq!(got.len(), 41);
}

#[test]
fn the_python_client_refuses_bad_input_and_names_server_codes() {
    let server = start_with(&["--send-rate-limit", "1000000"]);
    let http = server.client();
    let alice = server.user("alice");
    let mut bob = Peer::start(&server);
    let bob_id = python_user(&mut bob, "bob");
    befriend_python(&server, &alice, &mut bob, "bob");
    let chat = http.create_group(&alice.token, "edges", &[bob_id]).unwrap();
    let others = http.create_group(&alice.token, "alone", &[]).unwrap();
    bob.cmd(json!({"cmd": "connect", "sync_first": false}));

    // Refused by the client before anything is sent.
    let empty = bob
        .try_cmd(json!({"cmd": "send", "chat_id": chat, "text": ""}))
        .unwrap_err();
    assert_eq!(
        (empty["type"].as_str(), empty["code"].as_str()),
        (Some("InvalidText"), Some("empty_text"))
    );
    let long = "é".repeat(100_001);
    let too_long = bob
        .try_cmd(json!({"cmd": "send", "chat_id": chat, "text": long}))
        .unwrap_err();
    assert_eq!(too_long["code"], "text_too_long");
    // The longest legal text goes through.
    let longest = bob.cmd(json!({"cmd": "send", "chat_id": chat, "text": "é".repeat(100_000)}));
    assert_eq!(longest["seq"], 1);

    // A retry with the same client_msg_id gets the original seq; reusing it for another
    // text is the server's `client_msg_id_reused`.
    let first = bob.cmd(json!({"cmd": "send", "chat_id": chat, "text": "once", "client_msg_id": 77}));
    let again = bob.cmd(json!({"cmd": "send", "chat_id": chat, "text": "once", "client_msg_id": 77}));
    assert_eq!(first["seq"], 2);
    assert_eq!(again["seq"], 2);
    let reused = bob
        .try_cmd(json!({"cmd": "send", "chat_id": chat, "text": "twice", "client_msg_id": 77}))
        .unwrap_err();
    assert_eq!(
        (reused["type"].as_str(), reused["code"].as_str()),
        (Some("ServerError"), Some("client_msg_id_reused"))
    );

    // Server refusals carry the code name; the connection stays usable.
    // A chat one is not a member of answers like a missing one (no existence oracle).
    let not_member = bob
        .try_cmd(json!({"cmd": "send", "chat_id": others, "text": "hi"}))
        .unwrap_err();
    assert_eq!(not_member["code"], "unknown_chat");
    let page = bob.cmd(json!({"cmd": "history", "chat_id": chat, "limit": 10}));
    assert_eq!(entries(&page["messages"], chat).len(), 2);
    let wrong = bob
        .try_cmd(json!({"cmd": "login", "username": "bob", "password": "wrong password"}))
        .unwrap_err();
    assert_eq!(
        (wrong["type"].as_str(), wrong["code"].as_str()),
        (Some("HttpError"), Some("invalid_credentials"))
    );

    // A server with a small max_frame: a text that fits the character limit but not the
    // frame is refused by the client (FrameTooLarge) before it is sent.
    let small = start_with(&["--max-frame", "4096"]);
    let dave = small.user("dave");
    let mut erin = Peer::start(&small);
    let erin_id = python_user(&mut erin, "erin");
    befriend_python(&small, &dave, &mut erin, "erin");
    let chat = small
        .client()
        .create_group(&dave.token, "small", &[erin_id])
        .unwrap();
    let welcome = erin.cmd(json!({"cmd": "connect", "sync_first": false}));
    assert_eq!(welcome["max_frame"], 4096);
    let big = erin
        .try_cmd(json!({"cmd": "send", "chat_id": chat, "text": "x".repeat(5000)}))
        .unwrap_err();
    assert_eq!(big["type"], "FrameTooLarge", "{big}");
    let fits = erin.cmd(json!({"cmd": "send", "chat_id": chat, "text": "x".repeat(3000)}));
    assert_eq!(fits["seq"], 1, "nothing was stored for the refused frame");
}

#[test]
fn the_python_client_pins_the_tls_certificate_and_falls_back_to_tcp() {
    // Another fingerprint than the server's: the handshake is refused by the client.
    let server = start_with(&[]);
    let mut peer = Peer::start(&server);
    python_user(&mut peer, "frank");
    let wrong = "00".repeat(32);
    let refused = peer.try_cmd(json!({"cmd": "connect", "pin": wrong})).unwrap_err();
    assert_eq!(refused["type"], "ConnectionClosed", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("not the pinned"),
        "{refused}"
    );
    // The right one: connected over TLS.
    let right = server.cert_sha256.clone().unwrap();
    let ok = peer.cmd(json!({"cmd": "connect", "pin": right}));
    assert_eq!(ok["transport"], server.url("tls"));

    // A natterd without TLS: the best transport is TCP.
    let plain = start_with(&["--tls-port", "off"]);
    let mut peer = Peer::start(&plain);
    python_user(&mut peer, "gina");
    let ok = peer.cmd(json!({"cmd": "connect"}));
    assert_eq!(ok["transport"], plain.url("tcp"));
}

/// A free loopback port (bound and released: another process could take it in between,
/// which only makes this test fail, never pass wrongly).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_python_send_is_retried_across_a_natterd_restart_and_stored_once() {
    // A fixed side-port, a new TCP port after the restart: the client finds it again
    // through GET /v1/endpoints.
    let port = free_port().to_string();
    let mut server = start_with(&["--send-rate-limit", "1000000", "--http-port", &port]);
    let http = server.client();
    let alice = server.user("alice");
    let mut bob = Peer::start(&server);
    let bob_id = python_user(&mut bob, "bob");
    befriend_python(&server, &alice, &mut bob, "bob");
    let chat = http.create_group(&alice.token, "restart", &[bob_id]).unwrap();
    bob.cmd(json!({"cmd": "connect", "sync_first": true}));
    bob.cmd(json!({"cmd": "sync"}));
    let (mut alice_conn, _) = Connection::connect(server.tcp, &alice.token, "rust").unwrap();
    rust_side(&mut alice_conn, alice.user_id, chat, &["before".to_owned()], 1);
    bob.cmd(json!({"cmd": "recv_until", "chat_id": chat, "seq": 1}));

    let old_tcp = server.tcp;
    server.restart();
    assert_ne!(server.tcp, old_tcp, "natterd came back on another TCP port");
    let (mut alice_conn, _) = Connection::connect(server.tcp, &alice.token, "rust").unwrap();
    rust_side(
        &mut alice_conn,
        alice.user_id,
        chat,
        &["while bob was away".to_owned()],
        1,
    );

    // Bob's connection died with the restart: the send reconnects (Hello sync_first + Sync
    // from its cursors) and goes out again with the same client_msg_id.
    let text = "sent across a restart";
    let ok = bob.cmd(json!({"cmd": "send", "chat_id": chat, "text": text, "client_msg_id": 4242}));
    assert_eq!(ok["seq"], 3);
    let missed = bob.cmd(json!({"cmd": "recv_until", "chat_id": chat, "seq": 3}));
    assert_eq!(
        entries(&missed["messages"], chat),
        vec![(2, alice.user_id, "while bob was away".to_owned())],
        "the reconnect's sync brought what was missed, once"
    );
    let again = bob.cmd(json!({"cmd": "send", "chat_id": chat, "text": text, "client_msg_id": 4242}));
    assert_eq!(again["seq"], 3, "a retry gets the original seq");
    let page = bob.cmd(json!({"cmd": "history", "chat_id": chat, "limit": 10}));
    let stored: Vec<String> = entries(&page["messages"], chat)
        .into_iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(stored, vec![text, "while bob was away", "before"]);
}
