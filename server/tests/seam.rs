//! End-to-end: the live/sync seam under load, reconnects and kill -9 restarts.
//!
//! PROTOCOL.md promises that a device which says `Hello{sync_first}` and then
//! syncs from its cursors sees each message of each chat exactly once and in
//! seq order, through any mix of sync pages and live pushes. Here senders send
//! into a group and two direct chats at a steady rate, retrying unacknowledged
//! sends with the same `client_msg_id` after every failure; six recipient
//! devices disconnect and reconnect at random (each reconnect pipelines Hello
//! and Sync in one write), and natterd is killed with SIGKILL and restarted
//! several times. Every device checks, per chat, that each message it receives
//! is exactly the one after the last (no duplicate, no gap, no disorder), and at
//! the end holds every acknowledged message with the text that was sent.
//!
//! The run is bounded: `NATTER_SEAM_SECS` (default 12) seconds of traffic and
//! `NATTER_SEAM_KILLS` (default 3) restarts, spread at seeded random instants.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use natter_client::{Connection, Login};
use natter_wire::{Body, Cursor, Frame, Hello, PROTOCOL_VERSION, Ping, Send, Sync};
use support::{TestServer, start_with, wait_until};

const PASSWORD: &str = "correct horse battery";
const DEADLINE: Duration = Duration::from_secs(90);

/// A tiny deterministic generator (xorshift64*), so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where natterd listens now (it gets new ports after each restart).
type Addr = Arc<Mutex<SocketAddr>>;

/// What one sender's acknowledged messages were: (chat, seq) → text.
type Acked = Arc<Mutex<BTreeMap<(u64, u64), String>>>;

/// What a device saw: per chat the contiguous cursor, the texts, and violations.
#[derive(Default)]
struct DeviceView {
    cursor: BTreeMap<u64, u64>,
    texts: BTreeMap<(u64, u64), String>,
    duplicates: u64,
    gaps: u64,
    received: u64,
    connections: u64,
}

impl DeviceView {
    fn apply(&mut self, chat: u64, seq: u64, text: String) {
        self.received += 1;
        let cursor = self.cursor.entry(chat).or_insert(0);
        if seq <= *cursor {
            self.duplicates += 1;
        } else if seq != *cursor + 1 {
            self.gaps += 1;
            eprintln!("chat {chat}: got seq {seq} after {}", *cursor);
            *cursor = seq;
        } else {
            *cursor = seq;
            self.texts.insert((chat, seq), text);
        }
    }

    fn sync_frame(&self, request_id: u64) -> Frame {
        let cursors = self
            .cursor
            .iter()
            .map(|(&chat_id, &seq)| Cursor { chat_id, seq })
            .collect();
        Frame::new(request_id, Body::Sync(Sync { cursors }))
    }
}

fn hello(token: &str) -> Frame {
    Frame::new(
        1,
        Body::Hello(Hello {
            token: token.to_owned(),
            device: "seam test".into(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: true,
            conversation: false,
        }),
    )
}

/// One connection of a device: Hello{sync_first} + Sync pipelined in one write,
/// then frames until `until` (or the connection ends). Returns when the
/// connection is gone or the time is up; `Some(true)` once a SyncDone arrived.
fn device_session(addr: SocketAddr, token: &str, view: &mut DeviceView, until: Instant) -> bool {
    let Ok(mut conn) = Connection::open(addr) else {
        return false;
    };
    let mut bytes = hello(token).encode().to_vec();
    bytes.extend_from_slice(&view.sync_frame(2).encode());
    if conn.send_raw(&bytes).is_err() {
        return false;
    }
    view.connections += 1;
    let mut synced = false;
    let mut last_frame = Instant::now();
    let mut next_rid = 10;
    while Instant::now() < until {
        match conn.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(frame)) => {
                last_frame = Instant::now();
                match frame.body {
                    Body::Message(m) => view.apply(m.chat_id, m.seq, m.text),
                    Body::SyncDone(_) => synced = true,
                    Body::Resync => {
                        next_rid += 1;
                        if conn.send(&view.sync_frame(next_rid)).is_err() {
                            return synced;
                        }
                    }
                    Body::Error(_) => return synced,
                    _ => {}
                }
            }
            Ok(None) => {
                if last_frame.elapsed() > Duration::from_secs(1) {
                    // An idle client pings, as PROTOCOL.md asks.
                    last_frame = Instant::now();
                    next_rid += 1;
                    let ping = Frame::new(next_rid, Body::Ping(Ping { nonce: 1 }));
                    if conn.send(&ping).is_err() {
                        return synced;
                    }
                }
            }
            Err(_) => return synced,
        }
    }
    synced
}

/// One sender: sends into `chats` round robin at about `rate` per second,
/// keeping unacknowledged sends in an outbox that is resent with the same
/// client_msg_id after every reconnect, until `stop` and the outbox is empty.
fn sender(
    addr: Addr,
    token: String,
    chats: Vec<u64>,
    cmid_base: u64,
    rate: u64,
    stop: Arc<AtomicBool>,
    acked: Acked,
) {
    let mut outbox: BTreeMap<u64, (u64, String)> = BTreeMap::new();
    let mut next = 0u64;
    let started = Instant::now();
    let give_up = Instant::now() + DEADLINE * 2;
    while Instant::now() < give_up {
        if stop.load(Ordering::Relaxed) && outbox.is_empty() {
            return;
        }
        let target = *addr.lock().unwrap();
        let Ok((mut conn, _)) = Connection::connect(target, &token, "seam sender") else {
            thread::park_timeout(Duration::from_millis(20));
            continue;
        };
        conn.set_timeout(Duration::from_secs(2));
        'connected: loop {
            if stop.load(Ordering::Relaxed) && outbox.is_empty() {
                return;
            }
            // New messages due by now (none once stopping).
            let due = started.elapsed().as_millis() as u64 * rate / 1000;
            while !stop.load(Ordering::Relaxed) && next < due && outbox.len() < 200 {
                next += 1;
                let chat = chats[(next % chats.len() as u64) as usize];
                outbox.insert(cmid_base + next, (chat, format!("m{}-{next}", cmid_base)));
            }
            // Send (or resend) everything unacknowledged, then collect answers.
            let mut by_rid = HashMap::new();
            for (&cmid, (chat, text)) in &outbox {
                let rid = conn.next_request_id();
                let frame = Frame::new(
                    rid,
                    Body::Send(Send {
                        chat_id: *chat,
                        client_msg_id: cmid,
                        text: text.clone(),
                    }),
                );
                if conn.send(&frame).is_err() {
                    break 'connected;
                }
                by_rid.insert(rid, cmid);
            }
            let window = Instant::now() + Duration::from_secs(2);
            while !by_rid.is_empty() && Instant::now() < window {
                match conn.recv_timeout(Duration::from_millis(100)) {
                    Ok(Some(frame)) => match frame.body {
                        Body::SendOk(ok) => {
                            if let Some(cmid) = by_rid.remove(&frame.request_id)
                                && let Some((chat, text)) = outbox.remove(&cmid)
                            {
                                assert_eq!(chat, ok.chat_id);
                                let previous = acked.lock().unwrap().insert((chat, ok.seq), text.clone());
                                assert!(
                                    previous.is_none_or(|p| p == text),
                                    "seq {} of chat {chat} acknowledged for two texts",
                                    ok.seq
                                );
                            }
                        }
                        // overloaded / rate_limited / unavailable: retried next round.
                        Body::Error(e) => {
                            by_rid.remove(&frame.request_id);
                            if e.request_id == 0 {
                                break 'connected;
                            }
                        }
                        _ => {}
                    },
                    Ok(None) => {}
                    Err(_) => break 'connected,
                }
            }
            thread::park_timeout(Duration::from_millis(10));
        }
    }
    panic!("sender {cmid_base} could not empty its outbox");
}

#[test]
fn reconnecting_devices_see_every_message_once_and_in_order_across_kill9_restarts() {
    let secs = env_u64("NATTER_SEAM_SECS", 12);
    let kills = env_u64("NATTER_SEAM_KILLS", 3);
    let mut rng = Rng(env_u64("NATTER_SEAM_SEED", 0x5eed_2026));
    let mut server: TestServer = start_with(&["--send-rate-limit", "1000000", "--presence-grace", "0s"]);
    let http = server.client();
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let users: Vec<Login> = names.iter().map(|n| server.user(n)).collect();
    for (i, a) in users.iter().enumerate() {
        for (j, b) in users.iter().enumerate().skip(i + 1) {
            http.friend_request(&a.token, names[j]).unwrap();
            http.accept_friend(&b.token, a.user_id).unwrap();
        }
    }
    let ids: Vec<u64> = users.iter().map(|u| u.user_id).collect();
    let group = http.create_group(&users[0].token, "seam", &ids[1..]).unwrap();
    let dm_ad = http.direct_chat(&users[0].token, ids[3]).unwrap();
    let dm_be = http.direct_chat(&users[1].token, ids[4]).unwrap();

    let addr: Addr = Arc::new(Mutex::new(server.tcp));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let plan = [
        (0usize, vec![group, dm_ad]),
        (1, vec![group, dm_be]),
        (2, vec![group]),
    ];
    let senders: Vec<_> = plan
        .into_iter()
        .map(|(u, chats)| {
            let (addr, stop, acked) = (addr.clone(), stop.clone(), acked.clone());
            let token = users[u].token.clone();
            thread::spawn(move || sender(addr, token, chats, (u as u64 + 1) << 32, 250, stop, acked))
        })
        .collect();

    // Six recipient devices: three of dave, three of erin.
    let devices_done = Arc::new(AtomicU64::new(0));
    let mut devices = Vec::new();
    for (u, name) in [(3usize, "dave"), (4, "erin")] {
        let chats = if u == 3 { [group, dm_ad] } else { [group, dm_be] };
        for d in 0..3 {
            let login = http.login(name, PASSWORD, &format!("{name}-{d}")).unwrap();
            let (addr, stop, done) = (addr.clone(), stop.clone(), devices_done.clone());
            let seed = rng.next();
            devices.push((
                u,
                thread::spawn(move || {
                    let mut rng = Rng(seed | 1);
                    let mut view = DeviceView::default();
                    // A device that wants all of a chat syncs it from `{chat, 0}`
                    // (no cursor at all would mean "the last 50").
                    for chat in chats {
                        view.cursor.insert(chat, 0);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        let target = *addr.lock().unwrap();
                        let until = Instant::now() + Duration::from_millis(100 + rng.below(900));
                        if !device_session(target, &login.token, &mut view, until) {
                            thread::park_timeout(Duration::from_millis(20));
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    (login, view)
                }),
            ));
        }
    }

    // Traffic for `secs`, with `kills` kill -9 + restarts at random instants.
    let start = Instant::now();
    let mut kill_at: Vec<u64> = (0..kills)
        .map(|_| 1_000 + rng.below(secs * 1000 - 1_000))
        .collect();
    kill_at.sort_unstable();
    let mut restarts = Vec::new();
    for at in kill_at {
        let due = start + Duration::from_millis(at);
        wait_until(Duration::from_secs(secs + 5), || Instant::now() >= due);
        server.kill9();
        let t = Instant::now();
        server.start_again();
        restarts.push(t.elapsed());
        *addr.lock().unwrap() = server.tcp;
    }
    let end = start + Duration::from_secs(secs);
    wait_until(Duration::from_secs(secs + 5), || Instant::now() >= end);
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().expect("a sender failed");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 100,
        "too little traffic to mean anything: {}",
        acked.len()
    );

    // Every stored seq of every chat is acknowledged (gapless 1..=head).
    let mut head: BTreeMap<u64, u64> = BTreeMap::new();
    for &(chat, seq) in acked.keys() {
        let h = head.entry(chat).or_insert(0);
        *h = (*h).max(seq);
    }
    for (&chat, &h) in &head {
        let n = acked.range((chat, 0)..=(chat, u64::MAX)).count() as u64;
        assert_eq!(n, h, "chat {chat}: acknowledged seqs are not 1..={h}");
    }

    // Each device catches up once more and must hold everything, in order, once.
    let mut total = (0, 0, 0);
    for (u, handle) in devices {
        let (login, mut view) = handle.join().expect("a device failed");
        let target = *addr.lock().unwrap();
        let chats: Vec<u64> = if u == 3 {
            vec![group, dm_ad]
        } else {
            vec![group, dm_be]
        };
        let complete = |v: &DeviceView| {
            chats
                .iter()
                .all(|c| v.cursor.get(c).copied().unwrap_or(0) >= head[c])
        };
        let deadline = Instant::now() + DEADLINE;
        while !complete(&view) && Instant::now() < deadline {
            device_session(
                target,
                &login.token,
                &mut view,
                Instant::now() + Duration::from_secs(2),
            );
        }
        for &chat in &chats {
            assert_eq!(
                view.cursor.get(&chat).copied().unwrap_or(0),
                head[&chat],
                "device of user {u}, chat {chat}"
            );
            for seq in 1..=head[&chat] {
                assert_eq!(
                    view.texts.get(&(chat, seq)),
                    acked.get(&(chat, seq)),
                    "device of user {u}: chat {chat} seq {seq}"
                );
            }
        }
        total.0 += view.received;
        total.1 += view.duplicates;
        total.2 += view.gaps;
        assert_eq!(
            (view.duplicates, view.gaps),
            (0, 0),
            "device of user {u} over {} connections",
            view.connections
        );
    }
    eprintln!(
        "seam: {} acknowledged, {} received by 6 devices, {} duplicated, {} out of order, restarts {:?}",
        acked.len(),
        total.0,
        total.1,
        total.2,
        restarts
    );
}
