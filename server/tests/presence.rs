//! End-to-end: presence against a real natterd with small `--heartbeat-timeout`
//! and `--presence-grace` — a friend sees online → offline with `last_seen`, a
//! non-friend sees nothing, a reconnect within the grace period pushes no
//! offline, a silent client is timed out, friendship changes start and stop the
//! flow, `last_seen` survives a restart, and `GET /v1/presence` is for friends
//! only. Real sockets; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natter_client::{Connection, Login};
use natter_wire::{Body, ErrorCode, Frame, Presence};
use support::{TestServer, start_with};

const DEADLINE: Duration = Duration::from_secs(20);
/// Clients here ping at least this often (the server's timeout is 2 s).
const PING_EVERY: Duration = Duration::from_millis(400);
const GRACE_MS: u64 = 600;

fn server() -> TestServer {
    start_with(&["--heartbeat-timeout", "2s", "--presence-grace", "600ms"])
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// One live device: its connection and when it last pinged.
struct Device {
    conn: Connection,
    pinged: Instant,
}

impl Device {
    fn connect(server: &TestServer, login: &Login) -> Self {
        let (conn, _welcome) = Connection::connect(server.tcp, &login.token, "test").unwrap();
        Self {
            conn,
            pinged: Instant::now(),
        }
    }

    /// Pings if due (a ping keeps other frames queued for `recv`).
    fn keep_alive(&mut self) {
        if self.pinged.elapsed() >= PING_EVERY {
            self.conn.ping().unwrap();
            self.pinged = Instant::now();
        }
    }

    /// The Presence frames that arrive within `wait` (other frames are skipped), keeping
    /// this device and `others` alive meanwhile.
    fn presence_for(&mut self, wait: Duration, others: &mut [&mut Device]) -> Vec<Presence> {
        let end = Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            for other in others.iter_mut() {
                other.keep_alive();
            }
            self.keep_alive();
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return got;
            }
            if let Some(Frame {
                body: Body::Presence(p),
                ..
            }) = self
                .conn
                .recv_timeout(left.min(Duration::from_millis(100)))
                .unwrap()
            {
                got.push(p);
            }
        }
    }

    /// Waits for the next Presence about `user` (others about other users are skipped).
    fn next_presence_of(&mut self, user: u64, others: &mut [&mut Device]) -> Presence {
        let end = Instant::now() + DEADLINE;
        loop {
            for other in others.iter_mut() {
                other.keep_alive();
            }
            self.keep_alive();
            assert!(
                Instant::now() < end,
                "no presence of user {user} within {DEADLINE:?}"
            );
            if let Some(Frame {
                body: Body::Presence(p),
                ..
            }) = self.conn.recv_timeout(Duration::from_millis(100)).unwrap()
                && p.user_id == user
            {
                return p;
            }
        }
    }
}

impl Device {
    /// Waits for a Presence saying `user` is `online` (repeats of the other state —
    /// presence frames are state and may repeat — are skipped).
    fn wait_state(&mut self, user: u64, online: bool, others: &mut [&mut Device]) -> Presence {
        loop {
            let p = self.next_presence_of(user, others);
            if p.online == online {
                return p;
            }
        }
    }
}

fn befriend(server: &TestServer, a: &Login, b: &Login, b_name: &str) {
    let http = server.client();
    http.friend_request(&a.token, b_name).unwrap();
    http.accept_friend(&b.token, a.user_id).unwrap();
}

#[test]
fn a_friend_sees_online_then_offline_with_last_seen_and_a_non_friend_sees_nothing() {
    let server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    let eve = server.user("eve");
    befriend(&server, &alice, &bob, "bob");

    let mut b = Device::connect(&server, &bob);
    let mut e = Device::connect(&server, &eve);
    let snapshot = b.next_presence_of(alice.user_id, &mut [&mut e]);
    assert_eq!((snapshot.online, snapshot.last_seen_ms), (false, 0), "never seen");

    let before = now_ms();
    let mut a = Device::connect(&server, &alice);
    // (A repeat of "offline" may come first: the friendship's own update can reach
    // bob's home core after bob connected.)
    b.wait_state(alice.user_id, true, &mut [&mut e, &mut a]);
    let snapshot = a.presence_for(Duration::from_millis(300), &mut [&mut b, &mut e]);
    assert!(
        !snapshot.is_empty()
            && snapshot
                .iter()
                .all(|p| (p.user_id, p.online) == (bob.user_id, true)),
        "alice's snapshot should say bob is online, and nothing else: {snapshot:?}"
    );

    a.conn.ping().unwrap();
    let last_frame = now_ms();
    drop(a);
    let closed = Instant::now();
    let gone = b.next_presence_of(alice.user_id, &mut [&mut e]);
    assert!(!gone.online, "{gone:?}");
    assert!(
        closed.elapsed() >= Duration::from_millis(GRACE_MS - 100),
        "offline pushed {:?} after the close, before the grace period ended",
        closed.elapsed()
    );
    assert!(
        (before..=last_frame + 50).contains(&gone.last_seen_ms),
        "last seen {} not within [{before}, {last_frame}]",
        gone.last_seen_ms
    );
    // Everything for eve would have been pushed by now, in the same turns.
    let leaked: Vec<Presence> = e
        .presence_for(Duration::from_millis(300), &mut [&mut b])
        .into_iter()
        .filter(|p| p.user_id == alice.user_id || p.user_id == bob.user_id)
        .collect();
    assert!(leaked.is_empty(), "eve, not a friend, saw {leaked:?}");
}

#[test]
fn a_reconnect_within_the_grace_period_pushes_no_offline() {
    let server = start_with(&["--heartbeat-timeout", "2s", "--presence-grace", "3s"]);
    let alice = server.user("alice");
    let bob = server.user("bob");
    befriend(&server, &alice, &bob, "bob");
    let mut b = Device::connect(&server, &bob);
    assert!(!b.next_presence_of(alice.user_id, &mut []).online, "the snapshot");
    let mut a = Device::connect(&server, &alice);
    b.wait_state(alice.user_id, true, &mut [&mut a]);

    // Five drops, each back at once (a shaky connection).
    for _ in 0..5 {
        drop(a);
        a = Device::connect(&server, &alice);
    }
    // Past the grace period of every drop: nothing about alice reached bob.
    let pushed = b.presence_for(Duration::from_millis(3600), &mut [&mut a]);
    assert!(
        pushed.iter().all(|p| p.user_id != alice.user_id),
        "bob saw alice flap: {pushed:?}"
    );
    // The flow still works: a real departure is pushed once the grace period ends.
    drop(a);
    assert!(!b.next_presence_of(alice.user_id, &mut []).online);
}

#[test]
fn a_silent_client_is_timed_out_and_shown_offline() {
    let server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    befriend(&server, &alice, &bob, "bob");
    let mut b = Device::connect(&server, &bob);
    assert!(!b.next_presence_of(alice.user_id, &mut []).online, "the snapshot");
    let connected = now_ms();
    let (mut silent, _) = Connection::connect(server.tcp, &alice.token, "silent").unwrap();
    b.wait_state(alice.user_id, true, &mut []);
    // Alice never pings: after 2 s the server closes her session with heartbeat_timeout.
    let mut codes = Vec::new();
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        b.keep_alive();
        match silent.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(Frame {
                body: Body::Error(e), ..
            })) => codes.push(e.code),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(codes, vec![ErrorCode::HeartbeatTimeout.as_u16()]);
    let gone = b.next_presence_of(alice.user_id, &mut []);
    assert!(!gone.online);
    assert!(
        gone.last_seen_ms.abs_diff(connected) < 1000,
        "last seen {} should be when alice connected ({connected})",
        gone.last_seen_ms
    );
}

#[test]
fn becoming_and_ceasing_to_be_friends_starts_and_stops_the_flow() {
    let server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    let mut a = Device::connect(&server, &alice);
    let mut b = Device::connect(&server, &bob);

    befriend(&server, &alice, &bob, "bob");
    assert!(b.next_presence_of(alice.user_id, &mut [&mut a]).online);
    assert!(a.next_presence_of(bob.user_id, &mut [&mut b]).online);

    server.client().remove_friend(&bob.token, alice.user_id).unwrap();
    drop(a);
    let pushed = b.presence_for(Duration::from_millis(GRACE_MS + 900), &mut []);
    assert!(
        pushed.iter().all(|p| p.user_id != alice.user_id),
        "unfriended, yet bob saw {pushed:?}"
    );
    let mut a = Device::connect(&server, &alice);
    let snapshot = a.presence_for(Duration::from_millis(300), &mut [&mut b]);
    assert!(snapshot.iter().all(|p| p.user_id != bob.user_id), "{snapshot:?}");
}

#[test]
fn last_seen_survives_a_restart_and_presence_over_http_is_for_friends_only() {
    let mut server = server();
    let alice = server.user("alice");
    let bob = server.user("bob");
    let eve = server.user("eve");
    befriend(&server, &alice, &bob, "bob");
    let http = server.client();

    let mut a = Device::connect(&server, &alice);
    let online = http.presence(&bob.token, alice.user_id).unwrap();
    assert!(online.online);
    assert!(online.last_seen_ms.abs_diff(now_ms()) < 5_000);
    let refused = http.presence(&eve.token, alice.user_id).unwrap_err();
    assert_eq!(
        (refused.http_status(), refused.http_code()),
        (Some(403), Some("not_friends"))
    );
    // A user id that does not exist answers like a non-friend: ids reveal nothing.
    let missing = http.presence(&bob.token, 9_999).unwrap_err();
    assert_eq!(
        (missing.http_status(), missing.http_code()),
        (Some(403), Some("not_friends"))
    );
    assert!(
        http.presence(&alice.token, alice.user_id).unwrap().online,
        "oneself"
    );

    a.conn.ping().unwrap();
    drop(a);
    let mut b = Device::connect(&server, &bob);
    let gone = b.wait_state(alice.user_id, false, &mut []);
    assert_eq!(
        http.presence(&bob.token, alice.user_id).unwrap(),
        natter_client::UserPresence {
            user_id: alice.user_id,
            online: false,
            last_seen_ms: gone.last_seen_ms,
        }
    );
    drop(b);

    server.restart();
    let http = server.client();
    let mut b = Device::connect(&server, &bob);
    let after = b.next_presence_of(alice.user_id, &mut []);
    assert_eq!((after.online, after.last_seen_ms), (false, gone.last_seen_ms));
    assert_eq!(
        http.presence(&bob.token, alice.user_id).unwrap().last_seen_ms,
        gone.last_seen_ms
    );
}
