//! End to end: the free-space reserve (`--disk-reserve`, `disk_reserve` in
//! the TOML file). natterd started with a reserve larger than its disk's free
//! space refuses new messages (`storage_full`, retryable) and account writes
//! (507 `storage_full` with `Retry-After`) and stays up, while login, sync,
//! history and presence keep working and a retry of a stored message is still
//! acknowledged; with the reserve lifted the refused send goes through under
//! its `client_msg_id`. (The real thing — a small tmpfs filling up and freed
//! again without a restart — is `natter-chaos diskfull`, which needs root.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use natter_client::{ClientError, Connection};
use natter_wire::{Body, Cursor, ErrorCode, Frame, History, Send, Sync};

/// A reserve no test machine's disk has free.
const HUGE: &str = "1000000GiB";

fn write_reserve(path: &std::path::Path, reserve: &str) {
    std::fs::write(path, format!("disk_reserve = \"{reserve}\"\n")).unwrap();
}

fn send(conn: &mut Connection, chat: u64, cmid: u64, text: &str) -> Result<u64, ClientError> {
    match conn.request(Body::Send(Send {
        chat_id: chat,
        client_msg_id: cmid,
        text: text.into(),
    }))? {
        Frame {
            body: Body::SendOk(ok),
            ..
        } => Ok(ok.seq),
        other => panic!("expected SendOk, got {other:?}"),
    }
}

#[test]
fn below_the_reserve_writes_are_refused_retryably_and_reads_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("natter.toml");
    write_reserve(&config, "0");
    // A gateway nothing listens on: registering a pusher is a store write, never a delivery.
    let mut server = support::start_with(&[
        "--config",
        config.to_str().unwrap(),
        "--push-gateway",
        "http://127.0.0.1:9/_matrix/push/v1/notify",
    ]);
    let ann = server.user("ann");
    let bob = server.user("bob");
    let http = server.client();
    http.friend_request(&ann.token, "bob").unwrap();
    http.accept_friend(&bob.token, ann.user_id).unwrap();
    let chat = http.direct_chat(&ann.token, bob.user_id).unwrap();
    // For each account write that grows the store, what it needs from before the disk filled:
    // cat is ann's friend without a chat yet, dan's request to ann waits, eve is a stranger, and
    // ann's group has room for cat.
    let cat = server.user("cat");
    let dan = server.user("dan");
    let eve = server.user("eve");
    http.friend_request(&ann.token, "cat").unwrap();
    http.accept_friend(&cat.token, ann.user_id).unwrap();
    http.friend_request(&dan.token, "ann").unwrap();
    let group = http.create_group(&ann.token, "before", &[bob.user_id]).unwrap();
    let (mut conn, _) = Connection::connect(server.tcp, &ann.token, "phone").unwrap();
    assert_eq!(send(&mut conn, chat, 1, "before the disk filled").unwrap(), 1);
    drop(conn);

    // The same data on a "full" disk.
    write_reserve(&config, HUGE);
    server.restart();
    let http = server.client();
    let (mut conn, _) = Connection::connect(server.tcp, &ann.token, "phone").unwrap();
    match send(&mut conn, chat, 2, "while full") {
        Err(ClientError::Refused { code, .. }) => assert_eq!(code, ErrorCode::StorageFull),
        other => panic!("expected storage_full, got {other:?}"),
    }
    // A retry of the stored message is still acknowledged with its seq.
    assert_eq!(send(&mut conn, chat, 1, "before the disk filled").unwrap(), 1);
    // Account writes: 507 storage_full with Retry-After; nothing written.
    let signup = http
        .raw_request(
            "POST",
            "/v1/signup",
            None,
            Some(br#"{"username":"carol","password":"correct horse battery"}"#),
        )
        .unwrap();
    assert_eq!(signup.status, 507, "{}", signup.text());
    assert_eq!(signup.json().unwrap()["error"]["code"], "storage_full");
    let err = http.create_group(&ann.token, "crew", &[bob.user_id]).unwrap_err();
    assert_eq!(
        (err.http_status(), err.http_code()),
        (Some(507), Some("storage_full"))
    );
    let full = |what: &str, err: ClientError| {
        assert_eq!(
            (err.http_status(), err.http_code()),
            (Some(507), Some("storage_full")),
            "{what}: {err}"
        );
    };
    full(
        "friend request",
        http.friend_request(&ann.token, "eve").unwrap_err(),
    );
    full("accept", http.accept_friend(&ann.token, dan.user_id).unwrap_err());
    full("new dm", http.direct_chat(&ann.token, cat.user_id).unwrap_err());
    full(
        "add member",
        http.add_member(&ann.token, group, cat.user_id).unwrap_err(),
    );
    let pusher = http
        .raw_request(
            "POST",
            &format!("/v1/devices/{}/pusher", ann.device_id),
            Some(&ann.token),
            Some(br#"{"app_id":"com.example.natter","pushkey":"K"}"#),
        )
        .unwrap();
    assert_eq!(pusher.status, 507, "pusher: {}", pusher.text());
    // Nothing of them was written.
    assert!(http.friends(&eve.token).unwrap().incoming.is_empty());
    let dans = http.friends(&dan.token).unwrap();
    assert!(dans.friends.is_empty() && dans.outgoing.len() == 1, "{dans:?}");
    assert_eq!(
        http.login("carol", "correct horse battery", "x")
            .unwrap_err()
            .http_status(),
        Some(401)
    );
    // Reads keep working: login, history, sync, presence.
    let bob2 = http.login("bob", "correct horse battery", "tablet").unwrap();
    let (mut tablet, _) = Connection::connect(server.tcp, &bob2.token, "tablet").unwrap();
    let page = tablet
        .request(Body::History(History {
            chat_id: chat,
            before_seq: 0,
            limit: 50,
        }))
        .unwrap();
    let Body::HistoryPage(page) = page.body else {
        panic!("{page:?}")
    };
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1]);
    let rid = tablet
        .send_body(Body::Sync(Sync {
            cursors: vec![Cursor {
                chat_id: chat,
                seq: 0,
            }],
        }))
        .unwrap();
    let mut synced = Vec::new();
    loop {
        let f = tablet.recv().unwrap();
        match f.body {
            Body::Message(m) => synced.push(m.seq),
            Body::SyncDone(_) if f.request_id == rid => break,
            _ => {}
        }
    }
    assert_eq!(synced, vec![1]);
    assert!(support::wait_until(Duration::from_secs(10), || {
        http.presence(&ann.token, bob.user_id).is_ok_and(|p| p.online)
    }));
    assert!(conn.ping().is_ok(), "natterd stays up and the session too");

    // Reserve lifted: the refused send goes through under the same id.
    drop((conn, tablet));
    write_reserve(&config, "0");
    server.restart();
    let (mut conn, _) = Connection::connect(server.tcp, &ann.token, "phone").unwrap();
    assert_eq!(send(&mut conn, chat, 2, "while full").unwrap(), 2);
    assert!(server.client().signup("carol", "correct horse battery").is_ok());
}
