//! Tests of the sans-IO core under a simulated clock: no sockets, no sleeping.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use natter_wire::{Body, ErrorCode, Frame, Hello, Limits, Ping};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(3);

fn core(id: usize, cores: usize, now: Instant) -> Core {
    let config = CoreConfig {
        core: CoreId(id),
        cores,
        heartbeat_timeout: TIMEOUT,
        limits: Limits::default(),
        max_connections: 4,
    };
    Core::new(config, now, 1_700_000_000_000)
}

fn hello(token: &str) -> BytesMut {
    let frame = Frame::new(
        7,
        Body::Hello(Hello {
            token: token.into(),
            device: "test".into(),
            protocol_version: PROTOCOL_VERSION,
        }),
    );
    BytesMut::from(&frame.encode()[..])
}

fn ping(nonce: u64) -> BytesMut {
    BytesMut::from(&Frame::new(nonce, Body::Ping(Ping { nonce })).encode()[..])
}

fn drain(core: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

fn decode(frame: &[u8]) -> Frame {
    Frame::decode(frame, &Limits::default()).unwrap()
}

/// The error frames sent to `conn` in `actions`, and whether it was closed.
fn errors_and_close(actions: &[Action], conn: ConnId) -> (Vec<u16>, bool) {
    let mut codes = Vec::new();
    let mut closed = false;
    for a in actions {
        match a {
            Action::Transmit { conn: c, frame } if *c == conn => {
                if let Body::Error(e) = decode(frame).body {
                    codes.push(e.code);
                }
            }
            Action::Close { conn: c } if *c == conn => closed = true,
            _ => {}
        }
    }
    (codes, closed)
}

/// A user whose home core (of `cores`) is `core`.
fn user_homed_on(core: usize, cores: usize) -> UserId {
    (1..)
        .map(UserId)
        .find(|u| u.home_core(cores) == CoreId(core))
        .unwrap()
}

/// Accepts a connection and authenticates it as `user`, returning its id.
fn authenticate(c: &mut Core, user: UserId, device: u64, now: Instant) -> ConnId {
    let conn = c.handle_accept(now).unwrap();
    let mut buf = hello("tok");
    assert_eq!(c.handle_input(conn, &mut buf, now), InputStatus::Paused);
    let actions = drain(c);
    assert_eq!(
        actions,
        vec![Action::Authenticate {
            conn,
            token: "tok".into()
        }]
    );
    c.handle_auth(conn, AuthResult::Valid(user, DeviceId(device)), now);
    let actions = drain(c);
    let [Action::Transmit { frame, .. }] = &actions[..] else {
        panic!("expected a Welcome, got {actions:?}");
    };
    let welcome = decode(frame);
    assert_eq!(welcome.request_id, 7);
    let Body::Welcome(w) = welcome.body else {
        panic!("{welcome:?}")
    };
    assert_eq!((w.user_id, w.device_id), (user.0, device));
    assert_eq!(w.heartbeat_interval_ms, 1000);
    assert_eq!(
        w.server_time_ms,
        1_700_000_000_000 + (now - c.anchor.0).as_millis() as u64
    );
    conn
}

#[test]
fn hello_with_a_valid_token_is_welcomed_and_pings_are_answered() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = authenticate(&mut c, UserId(1), 9, t0);
    assert_eq!(c.stats().sessions, 1);
    let mut buf = ping(42);
    assert_eq!(c.handle_input(conn, &mut buf, t0), InputStatus::Drained);
    let actions = drain(&mut c);
    let [Action::Transmit { frame, .. }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert_eq!(
        decode(frame),
        Frame::new(42, Body::Pong(natter_wire::Pong { nonce: 42 }))
    );
}

#[test]
fn a_first_frame_other_than_hello_is_refused_and_closed() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = c.handle_accept(t0).unwrap();
    let mut buf = ping(1);
    c.handle_input(conn, &mut buf, t0);
    let (codes, closed) = errors_and_close(&drain(&mut c), conn);
    assert_eq!(codes, vec![ErrorCode::NotAuthenticated.as_u16()]);
    assert!(closed);
    c.handle_closed(conn);
    assert_eq!(c.stats().connections, 0);
}

#[test]
fn invalid_tokens_and_unavailable_stores_are_refused() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    for (result, code) in [
        (AuthResult::Invalid, ErrorCode::InvalidToken),
        (AuthResult::StoreUnavailable, ErrorCode::Unavailable),
    ] {
        let conn = c.handle_accept(t0).unwrap();
        c.handle_input(conn, &mut hello("bad"), t0);
        drain(&mut c);
        c.handle_auth(conn, result, t0);
        let (codes, closed) = errors_and_close(&drain(&mut c), conn);
        assert_eq!(codes, vec![code.as_u16()]);
        assert!(closed);
        c.handle_closed(conn);
    }
}

#[test]
fn wrong_protocol_version_and_garbage_and_oversize_frames_close_with_specific_codes() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let old = Frame::new(
        1,
        Body::Hello(Hello {
            token: "t".into(),
            device: "d".into(),
            protocol_version: 99,
        }),
    );
    let garbage = BytesMut::from(&[12u8, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8][..]);
    let huge = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
    for (mut buf, code) in [
        (BytesMut::from(&old.encode()[..]), ErrorCode::UnsupportedVersion),
        (garbage, ErrorCode::BadFrame),
        (huge, ErrorCode::FrameTooLarge),
    ] {
        let conn = c.handle_accept(t0).unwrap();
        c.handle_input(conn, &mut buf, t0);
        let (codes, closed) = errors_and_close(&drain(&mut c), conn);
        assert_eq!(codes, vec![code.as_u16()], "for {code:?}");
        assert!(closed);
        c.handle_closed(conn);
    }
    assert_eq!(c.stats().protocol_errors, 2);
}

#[test]
fn a_session_of_a_user_homed_elsewhere_migrates_and_is_rechecked_on_arrival() {
    let t0 = Instant::now();
    let mut a = core(0, 2, t0);
    let mut b = core(1, 2, t0);
    let user = user_homed_on(1, 2);
    let conn = a.handle_accept(t0).unwrap();
    let mut buf = hello("tok");
    buf.extend_from_slice(&ping(5)); // pipelined behind the Hello
    assert_eq!(a.handle_input(conn, &mut buf, t0), InputStatus::Paused);
    drain(&mut a);
    a.handle_auth(conn, AuthResult::Valid(user, DeviceId(3)), t0);
    assert_eq!(drain(&mut a), vec![Action::Migrate { conn, to: CoreId(1) }]);
    let detached = a.detach(conn).unwrap();
    assert_eq!(a.stats().connections, 0);

    let conn_b = b.handle_adopt(detached, t0);
    assert_eq!(
        drain(&mut b),
        vec![Action::Authenticate {
            conn: conn_b,
            token: "tok".into()
        }]
    );
    b.handle_auth(conn_b, AuthResult::Valid(user, DeviceId(3)), t0);
    let actions = drain(&mut b);
    assert!(matches!(&actions[..], [Action::Transmit { .. }]));
    assert_eq!(b.stats().sessions, 1);
    // The pipelined Ping is served by the home core.
    assert_eq!(b.handle_input(conn_b, &mut buf, t0), InputStatus::Drained);
    let actions = drain(&mut b);
    let [Action::Transmit { frame, .. }] = &actions[..] else {
        panic!("{actions:?}")
    };
    assert!(matches!(decode(frame).body, Body::Pong(_)));
}

#[test]
fn a_token_revoked_while_migrating_is_refused_at_the_home_core() {
    let t0 = Instant::now();
    let mut a = core(0, 2, t0);
    let mut b = core(1, 2, t0);
    let user = user_homed_on(1, 2);
    let conn = a.handle_accept(t0).unwrap();
    a.handle_input(conn, &mut hello("tok"), t0);
    drain(&mut a);
    a.handle_auth(conn, AuthResult::Valid(user, DeviceId(3)), t0);
    drain(&mut a);
    let conn_b = b.handle_adopt(a.detach(conn).unwrap(), t0);
    drain(&mut b);
    b.handle_auth(conn_b, AuthResult::Invalid, t0);
    let (codes, closed) = errors_and_close(&drain(&mut b), conn_b);
    assert_eq!(codes, vec![ErrorCode::InvalidToken.as_u16()]);
    assert!(closed);
}

#[test]
fn a_connection_without_hello_is_closed_at_the_hello_deadline() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = c.handle_accept(t0).unwrap();
    let deadline = t0 + HELLO_TIMEOUT.min(TIMEOUT);
    c.handle_timeout(deadline - Duration::from_millis(1));
    assert!(drain(&mut c).is_empty());
    let at = c.poll_timeout().unwrap();
    assert!(
        at >= deadline && at <= deadline + Duration::from_millis(400),
        "{at:?}"
    );
    c.handle_timeout(at);
    let (codes, closed) = errors_and_close(&drain(&mut c), conn);
    assert_eq!(codes, vec![ErrorCode::NotAuthenticated.as_u16()]);
    assert!(closed);
}

#[test]
fn heartbeats_keep_a_session_alive_and_silence_closes_it() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = authenticate(&mut c, UserId(1), 1, t0);
    // A ping every 2 s keeps the 3 s timeout from firing, for a long time.
    let mut now = t0;
    for i in 0..20 {
        now += Duration::from_secs(2);
        c.handle_timeout(now);
        c.handle_input(conn, &mut ping(i), now);
        let actions = drain(&mut c);
        assert!(
            errors_and_close(&actions, conn).0.is_empty(),
            "closed at {i}: {actions:?}"
        );
    }
    // Then silence: not closed before the timeout, closed after it.
    c.handle_timeout(now + TIMEOUT - Duration::from_millis(1));
    assert!(drain(&mut c).is_empty());
    let mut at = now + TIMEOUT;
    while let Some(next) = c.poll_timeout() {
        at = at.max(next);
        c.handle_timeout(at);
        if !c.actions.is_empty() {
            break;
        }
    }
    assert!(at <= now + TIMEOUT + Duration::from_millis(400));
    let (codes, closed) = errors_and_close(&drain(&mut c), conn);
    assert_eq!(codes, vec![ErrorCode::HeartbeatTimeout.as_u16()]);
    assert!(closed);
    c.handle_closed(conn);
    assert_eq!(c.stats().sessions, 0);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn logout_closes_only_that_devices_sessions() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let phone = authenticate(&mut c, UserId(1), 1, t0);
    let laptop = authenticate(&mut c, UserId(1), 2, t0);
    c.handle_close_device(UserId(1), DeviceId(1));
    let actions = drain(&mut c);
    let (codes, closed) = errors_and_close(&actions, phone);
    assert_eq!(codes, vec![ErrorCode::TokenRevoked.as_u16()]);
    assert!(closed);
    assert_eq!(errors_and_close(&actions, laptop), (vec![], false));
}

#[test]
fn a_flood_of_frames_is_served_within_the_per_turn_budget() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let conn = authenticate(&mut c, UserId(1), 1, t0);
    let mut buf = BytesMut::new();
    for i in 0..100 {
        buf.extend_from_slice(&ping(i));
    }
    assert_eq!(c.handle_input(conn, &mut buf, t0), InputStatus::Budget);
    assert_eq!(drain(&mut c).len(), FRAMES_PER_SESSION_PER_TURN);
    assert_eq!(c.handle_input(conn, &mut buf, t0), InputStatus::Drained);
    assert_eq!(drain(&mut c).len(), 100 - FRAMES_PER_SESSION_PER_TURN);
}

#[test]
fn the_connection_limit_refuses_with_a_clear_error() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    for _ in 0..4 {
        assert!(c.handle_accept(t0).is_some());
    }
    assert_eq!(c.handle_accept(t0), None);
    let refusal = decode(&c.refusal());
    let Body::Error(e) = refusal.body else { panic!() };
    assert_eq!(e.code, ErrorCode::TooManyConnections.as_u16());
}

#[test]
fn shutdown_closes_every_connection() {
    let t0 = Instant::now();
    let mut c = core(0, 1, t0);
    let a = authenticate(&mut c, UserId(1), 1, t0);
    let b = c.handle_accept(t0).unwrap();
    c.handle_shutdown();
    let actions = drain(&mut c);
    for conn in [a, b] {
        let (codes, closed) = errors_and_close(&actions, conn);
        assert_eq!(codes, vec![ErrorCode::ShuttingDown.as_u16()]);
        assert!(closed);
    }
}
