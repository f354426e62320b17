//! End-to-end: connecting over TCP — the Hello/Welcome handshake, refused and
//! revoked tokens, malformed and oversized input, spreading sessions over the
//! cores, heartbeats, restarts and clean shutdown. Real natterd, real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use natter_client::{ClientError, Connection};
use natter_server::ids::{CoreId, UserId};
use natter_wire::{Body, ErrorCode, Frame, Hello, PROTOCOL_VERSION, Ping};
use support::{start, start_with, wait_until};

const DEADLINE: Duration = Duration::from_secs(10);

/// Reads frames until the server closes; returns the error codes it sent first.
fn error_codes_until_closed(conn: &mut Connection) -> Vec<u16> {
    let mut codes = Vec::new();
    loop {
        match conn.recv_timeout(DEADLINE) {
            Ok(Some(Frame {
                body: Body::Error(e), ..
            })) => codes.push(e.code),
            Ok(Some(other)) => panic!("unexpected frame {other:?}"),
            Ok(None) => panic!("the server neither answered nor closed within {DEADLINE:?}"),
            Err(ClientError::Closed) => return codes,
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return codes,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}

#[test]
fn signup_login_connect_is_welcomed_and_pings_are_answered() {
    let server = start();
    let login = server.user("alice");
    assert_eq!(login.endpoints.tcp, server.tcp);
    let (mut conn, welcome) = Connection::connect(login.endpoints.tcp, &login.token, "phone").unwrap();
    assert_eq!(welcome.user_id, login.user_id);
    assert_eq!(welcome.device_id, login.device_id);
    assert_eq!(welcome.protocol_version, PROTOCOL_VERSION);
    assert!(welcome.heartbeat_interval_ms > 0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(welcome.server_time_ms.abs_diff(now_ms) < 60_000);
    conn.ping().unwrap();
    conn.ping().unwrap();
}

#[test]
fn wrong_and_revoked_tokens_are_refused_and_logout_closes_live_sessions() {
    let server = start();
    let login = server.user("bob");

    let err = Connection::connect(server.tcp, &"0".repeat(64), "phone").unwrap_err();
    assert_eq!(
        err.server_code().and_then(|c| c.known()),
        Some(ErrorCode::InvalidToken),
        "{err}"
    );
    let err = Connection::connect(server.tcp, "not even hex", "phone").unwrap_err();
    assert_eq!(
        err.server_code().and_then(|c| c.known()),
        Some(ErrorCode::InvalidToken),
        "{err}"
    );

    // A second device of the same user must survive the first one's logout.
    let other = server
        .client()
        .login("bob", "correct horse battery", "laptop")
        .unwrap();
    let (mut laptop, _) = Connection::connect(server.tcp, &other.token, "laptop").unwrap();
    let (mut live, _) = Connection::connect(server.tcp, &login.token, "phone").unwrap();
    server.client().logout(&login.token).unwrap();
    assert_eq!(
        error_codes_until_closed(&mut live),
        vec![ErrorCode::TokenRevoked.as_u16()]
    );

    let err = Connection::connect(server.tcp, &login.token, "phone").unwrap_err();
    assert_eq!(
        err.server_code().and_then(|c| c.known()),
        Some(ErrorCode::InvalidToken),
        "{err}"
    );
    laptop.ping().unwrap();
}

#[test]
fn a_first_frame_other_than_hello_and_a_wrong_version_are_refused() {
    let server = start();
    let login = server.user("carol");
    let mut conn = Connection::open(server.tcp).unwrap();
    conn.send(&Frame::new(1, Body::Ping(Ping { nonce: 1 }))).unwrap();
    assert_eq!(
        error_codes_until_closed(&mut conn),
        vec![ErrorCode::NotAuthenticated.as_u16()]
    );

    let mut conn = Connection::open(server.tcp).unwrap();
    let hello = Hello {
        token: login.token.clone(),
        device: "old app".into(),
        protocol_version: 0,
        sync_first: false,
        conversation: false,
    };
    conn.send(&Frame::new(1, Body::Hello(hello))).unwrap();
    assert_eq!(
        error_codes_until_closed(&mut conn),
        vec![ErrorCode::UnsupportedVersion.as_u16()]
    );
}

#[test]
fn garbage_huge_prefixes_and_oversized_frames_are_refused_while_others_keep_working() {
    let server = start_with(&["--max-frame", "65536"]);
    let login = server.user("dave");
    let (mut bystander, _) = Connection::connect(server.tcp, &login.token, "bystander").unwrap();

    // Garbage before authentication.
    let mut conn = Connection::open(server.tcp).unwrap();
    conn.send_raw(&[24, 0, 0, 0]).unwrap();
    conn.send_raw(b"this is not a flatbuffer!").unwrap();
    assert_eq!(
        error_codes_until_closed(&mut conn),
        vec![ErrorCode::BadFrame.as_u16()]
    );

    // A 4 GiB length prefix, refused from the prefix alone.
    let mut conn = Connection::open(server.tcp).unwrap();
    conn.send_raw(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).unwrap();
    assert_eq!(
        error_codes_until_closed(&mut conn),
        vec![ErrorCode::FrameTooLarge.as_u16()]
    );

    // A well-formed frame over the limit, from an authenticated session.
    let (mut conn, _) = Connection::connect(server.tcp, &login.token, "big").unwrap();
    let big = Frame::new(
        9,
        Body::Hello(Hello {
            token: "x".repeat(70_000),
            device: "d".into(),
            protocol_version: 1,
            sync_first: false,
            conversation: false,
        }),
    );
    conn.send(&big).unwrap();
    assert_eq!(
        error_codes_until_closed(&mut conn),
        vec![ErrorCode::FrameTooLarge.as_u16()]
    );

    // Garbage after authentication.
    let (mut conn, _) = Connection::connect(server.tcp, &login.token, "garbage").unwrap();
    conn.send_raw(&[16, 0, 0, 0]).unwrap();
    conn.send_raw(&[0xAB; 16]).unwrap();
    assert_eq!(
        error_codes_until_closed(&mut conn),
        vec![ErrorCode::BadFrame.as_u16()]
    );

    bystander.ping().unwrap();
    let fresh = server
        .client()
        .login("dave", "correct horse battery", "fresh")
        .unwrap();
    let (mut fresh, _) = Connection::connect(server.tcp, &fresh.token, "fresh").unwrap();
    fresh.ping().unwrap();
    assert!(
        server.metric("natter_protocol_errors_total{core=\"0\"}").unwrap()
            + server.metric("natter_protocol_errors_total{core=\"1\"}").unwrap()
            >= 3.0
    );
}

#[test]
fn sessions_live_on_their_users_home_cores_and_both_cores_get_some() {
    let server = start();
    let mut expected = [0u32; 2];
    let mut conns = Vec::new();
    for i in 0..16 {
        let login = server.user(&format!("user{i}"));
        let home = UserId(login.user_id).home_core(2);
        expected[home.0] += 1;
        let (conn, _) = Connection::connect(server.tcp, &login.token, "phone").unwrap();
        conns.push(conn);
    }
    assert!(
        expected.iter().all(|n| *n > 0),
        "16 users all homed on one core: {expected:?}"
    );
    let per_core = |core: CoreId| server.metric(&format!("natter_sessions{{core=\"{}\"}}", core.0));
    let settled = wait_until(DEADLINE, || {
        per_core(CoreId(0)) == Some(f64::from(expected[0]))
            && per_core(CoreId(1)) == Some(f64::from(expected[1]))
    });
    assert!(
        settled,
        "sessions per core {:?}/{:?}, expected {expected:?}",
        per_core(CoreId(0)),
        per_core(CoreId(1))
    );
    for conn in &mut conns {
        conn.ping().unwrap();
    }
    // The kernel spread the accepts too: both listeners took connections.
    let accepted = |c: usize| {
        server
            .metric(&format!("natter_accepted_total{{core=\"{c}\"}}"))
            .unwrap()
    };
    assert!(accepted(0) + accepted(1) >= 16.0);
}

#[test]
fn silent_sessions_are_closed_after_the_heartbeat_timeout_and_pinging_ones_stay() {
    let server = start_with(&["--heartbeat-timeout", "600ms"]);
    let login = server.user("erin");
    // The silent session's last frame is its Hello: natterd's timeout runs
    // from when it read it, which is after this instant (taken after the
    // Welcome, it would be later than natterd's reference point, and a close
    // exactly on time would look early).
    let hello_sent = std::time::Instant::now();
    let (mut silent, welcome) = Connection::connect(server.tcp, &login.token, "silent").unwrap();
    assert_eq!(welcome.heartbeat_interval_ms, 200);
    let (mut chatty, _) = Connection::connect(server.tcp, &login.token, "chatty").unwrap();
    let mut code = None;
    let closed = wait_until(DEADLINE, || {
        chatty.ping().unwrap();
        match silent.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(Frame {
                body: Body::Error(e), ..
            })) => {
                code = Some(e.code);
                true
            }
            Ok(None) => false,
            other => panic!("unexpected {other:?}"),
        }
    });
    assert!(closed, "the silent session was not closed");
    assert!(
        hello_sent.elapsed() >= Duration::from_millis(600),
        "closed early: {:?} after the Hello was sent",
        hello_sent.elapsed()
    );
    assert_eq!(code, Some(ErrorCode::HeartbeatTimeout.as_u16()));
    assert_eq!(error_codes_until_closed(&mut silent), Vec::<u16>::new());
    chatty.ping().unwrap();
}

#[test]
fn tokens_survive_a_restart_and_shutdown_tells_sessions_why() {
    let mut server = start();
    let login = server.user("frank");
    let (mut conn, _) = Connection::connect(server.tcp, &login.token, "phone").unwrap();
    let status = server.stop();
    assert!(status.success(), "natterd exited with {status}");
    assert_eq!(
        error_codes_until_closed(&mut conn),
        vec![ErrorCode::ShuttingDown.as_u16()]
    );

    server.start_again();
    let (mut conn, welcome) = Connection::connect(server.tcp, &login.token, "phone").unwrap();
    assert_eq!(welcome.user_id, login.user_id);
    conn.ping().unwrap();

    // And after a kill -9: the account was durable before login answered.
    let login2 = server.user("grace");
    server.kill9();
    server.start_again();
    let (_, welcome) = Connection::connect(server.tcp, &login2.token, "phone").unwrap();
    assert_eq!(welcome.user_id, login2.user_id);
}
