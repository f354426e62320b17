//! The authorization matrix (issue 13 item 4), end to end: every operation
//! that takes a chat or user id — binary `Send`, `History`, `Sync` with
//! others' cursors, `Ack`, and every HTTP route — is tried by every kind of
//! caller: the rightful user, a non-member (another user), a removed member,
//! no token, a malformed token and a revoked token. One table drives it:
//!
//! * only the rightful caller succeeds;
//! * a forbidden id answers exactly as a missing id does (status and body, or
//!   the Error frame's code and message): ids reveal nothing;
//! * no, malformed and revoked tokens answer `invalid_token` alike;
//! * a removed member's live session stops receiving at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use natter_client::{ClientError, Connection, ServerCode};
use natter_wire::{Ack, Body, Cursor, ErrorCode, History, Ping, Send, Sync};
use serde_json::{Value, json};
use support::{TestServer, start_with};

/// A chat id and a user id no one has.
const MISSING: u64 = 987_654;

/// One HTTP exchange; returns the status and the JSON body (Null when empty).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// The user the resource belongs to (a member, the owner, the device's user).
    Rightful,
    /// Another user with a valid token: not a member, not the owner.
    Other,
    /// A former member of the group.
    Removed,
    NoToken,
    Malformed,
    Revoked,
}

const CALLERS: [Caller; 6] = [
    Caller::Rightful,
    Caller::Other,
    Caller::Removed,
    Caller::NoToken,
    Caller::Malformed,
    Caller::Revoked,
];

/// The cast: `ann` owns group `group` with `bob`; `rem` was in it and was
/// removed; `eve` is a stranger; `cat` asked `bob` for friendship.
struct World {
    server: TestServer,
    ann: natter_client::Login,
    bob: natter_client::Login,
    rem: natter_client::Login,
    eve: natter_client::Login,
    cat: natter_client::Login,
    revoked: String,
    group: u64,
}

fn world() -> World {
    let server = start_with(&["--push-gateway-allow", "127.0.0.1"]);
    let (ann, bob, rem, eve, cat) = (
        server.user("ann"),
        server.user("bob"),
        server.user("rem"),
        server.user("eve"),
        server.user("cat"),
    );
    let http = server.client();
    for (name, other) in [("bob", &bob), ("rem", &rem)] {
        http.friend_request(&ann.token, name).unwrap();
        http.accept_friend(&other.token, ann.user_id).unwrap();
    }
    let group = http
        .create_group(&ann.token, "inner", &[bob.user_id, rem.user_id])
        .unwrap();
    http.remove_member(&ann.token, group, rem.user_id).unwrap();
    http.friend_request(&cat.token, "bob").unwrap();
    let revoked = http
        .login("bob", "correct horse battery", "old phone")
        .unwrap()
        .token;
    http.logout(&revoked).unwrap();
    World {
        server,
        ann,
        bob,
        rem,
        eve,
        cat,
        revoked,
        group,
    }
}

impl World {
    /// The `Authorization` header `caller` sends when `rightful` is the rightful user.
    fn auth(&self, caller: Caller, rightful: &natter_client::Login) -> Option<String> {
        let bearer = |t: &str| Some(format!("Bearer {t}"));
        match caller {
            Caller::Rightful => bearer(&rightful.token),
            Caller::Other => bearer(&self.eve.token),
            Caller::Removed => bearer(&self.rem.token),
            Caller::NoToken => None,
            Caller::Malformed => Some("Bearer not/a token!".into()),
            Caller::Revoked => bearer(&self.revoked),
        }
    }
}

/// A request path for the real id (`true`) or a missing one (`false`).
type PathFn = Box<dyn Fn(&World, bool) -> String>;
/// A request body for the real id (`true`) or a missing one (`false`).
type BodyFn = Box<dyn Fn(&World, bool) -> Option<Value>>;

/// One HTTP operation that takes an id: `path(id)`, its method and body, who
/// may do it, and what success looks like.
struct Op {
    name: &'static str,
    method: &'static str,
    path: PathFn,
    body: BodyFn,
    rightful: fn(&World) -> &natter_client::Login,
    /// The removed member is the rightful caller's equal here (e.g. a route
    /// about one's own account): then it is not checked as forbidden.
    removed_is_forbidden: bool,
    success: u16,
}

fn ops() -> Vec<Op> {
    let no_body = || Box::new(|_: &World, _: bool| None) as BodyFn;
    let group = |w: &World, real: bool| if real { w.group } else { MISSING };
    vec![
        Op {
            name: "GET /v1/groups/{id}",
            method: "GET",
            path: Box::new(move |w, real| format!("/v1/groups/{}", group(w, real))),
            body: no_body(),
            rightful: |w| &w.bob,
            removed_is_forbidden: true,
            success: 200,
        },
        Op {
            name: "POST /v1/chats/{id}/read",
            method: "POST",
            path: Box::new(move |w, real| format!("/v1/chats/{}/read", group(w, real))),
            body: Box::new(|_, _| Some(json!({"seq": 1}))),
            rightful: |w| &w.bob,
            removed_is_forbidden: true,
            success: 200,
        },
        Op {
            name: "DELETE /v1/groups/{id}/members/{user} (leave)",
            method: "DELETE",
            // Each caller tries to remove bob; only the owner may.
            path: Box::new(move |w, real| format!("/v1/groups/{}/members/{}", group(w, real), w.bob.user_id)),
            body: no_body(),
            rightful: |w| &w.ann,
            removed_is_forbidden: true,
            success: 204,
        },
        Op {
            name: "POST /v1/groups/{id}/members",
            method: "POST",
            path: Box::new(move |w, real| format!("/v1/groups/{}/members", group(w, real))),
            body: Box::new(|w, _| Some(json!({"user_id": w.bob.user_id}))),
            rightful: |w| &w.ann,
            removed_is_forbidden: true,
            success: 201,
        },
        Op {
            name: "GET /v1/presence?user_id={id}",
            method: "GET",
            path: Box::new(|w, real| {
                format!(
                    "/v1/presence?user_id={}",
                    if real { w.ann.user_id } else { MISSING }
                )
            }),
            body: no_body(),
            rightful: |w| &w.bob,
            // rem is still ann's friend: presence is about friendship, not the group.
            removed_is_forbidden: false,
            success: 200,
        },
        Op {
            name: "POST /v1/dms {user_id}",
            method: "POST",
            path: Box::new(|_, _| "/v1/dms".into()),
            body: Box::new(|w, real| Some(json!({"user_id": if real { w.ann.user_id } else { MISSING }}))),
            rightful: |w| &w.bob,
            removed_is_forbidden: false,
            success: 201,
        },
        Op {
            name: "POST /v1/friends/requests/{id}/accept",
            method: "POST",
            path: Box::new(|w, real| {
                format!(
                    "/v1/friends/requests/{}/accept",
                    if real { w.cat.user_id } else { MISSING }
                )
            }),
            body: no_body(),
            rightful: |w| &w.bob,
            removed_is_forbidden: true,
            success: 200,
        },
        Op {
            name: "GET /v1/devices/{id}/pusher",
            method: "GET",
            path: Box::new(|w, real| {
                format!(
                    "/v1/devices/{}/pusher",
                    if real { w.bob.device_id } else { MISSING }
                )
            }),
            body: no_body(),
            rightful: |w| &w.bob,
            removed_is_forbidden: true,
            success: 200,
        },
        Op {
            name: "DELETE /v1/devices/{id}/pusher",
            method: "DELETE",
            path: Box::new(|w, real| {
                format!(
                    "/v1/devices/{}/pusher",
                    if real { w.bob.device_id } else { MISSING }
                )
            }),
            body: no_body(),
            rightful: |w| &w.bob,
            removed_is_forbidden: true,
            success: 204,
        },
        Op {
            name: "DELETE /v1/friends/{id}",
            method: "DELETE",
            path: Box::new(|w, real| format!("/v1/friends/{}", if real { w.ann.user_id } else { MISSING })),
            body: no_body(),
            rightful: |w| &w.bob,
            // rem is ann's friend too: unfriending her is rem's right.
            removed_is_forbidden: false,
            success: 204,
        },
    ]
}

/// Every HTTP route that needs a token but takes no id: the token rows only.
const TOKEN_ONLY: [(&str, &str, Option<&str>); 6] = [
    ("GET", "/v1/friends", None),
    ("GET", "/v1/chats", None),
    ("POST", "/v1/friends/requests", Some(r#"{"username":"ann"}"#)),
    ("POST", "/v1/groups", Some(r#"{"name":"g","members":[]}"#)),
    ("POST", "/v1/dms", Some(r#"{"user_id":1}"#)),
    ("POST", "/v1/logout", None),
];

#[test]
fn every_http_route_answers_only_its_rightful_user_and_forbidden_like_missing() {
    let w = world();
    let addr = w.server.http;
    // bob's device has a pusher, so GET and DELETE of it can succeed.
    let pusher =
        json!({"app_id": "a", "pushkey": "k", "gateway_url": "http://127.0.0.1:9/_matrix/push/v1/notify"});
    let (status, v) = call(
        addr,
        "POST",
        &format!("/v1/devices/{}/pusher", w.bob.device_id),
        Some(&format!("Bearer {}", w.bob.token)),
        Some(&pusher),
    );
    assert_eq!(status, 201, "{v}");
    let unauthenticated = (401, "invalid_token");
    let mut checked = 0;
    for op in ops() {
        let rightful = (op.rightful)(&w);
        for caller in CALLERS {
            if caller == Caller::Rightful || (caller == Caller::Removed && !op.removed_is_forbidden) {
                continue;
            }
            let auth = w.auth(caller, rightful);
            let attempt = |real: bool| {
                call(
                    addr,
                    op.method,
                    &(op.path)(&w, real),
                    auth.as_deref(),
                    (op.body)(&w, real).as_ref(),
                )
            };
            let real = attempt(true);
            match caller {
                Caller::NoToken | Caller::Malformed | Caller::Revoked => {
                    assert_eq!(
                        (real.0, real.1["error"]["code"].as_str().unwrap_or("")),
                        unauthenticated,
                        "{} by {caller:?}: {}",
                        op.name,
                        real.1
                    );
                }
                _ => {
                    assert!(
                        !(200..300).contains(&real.0),
                        "{} by {caller:?} succeeded: {}",
                        op.name,
                        real.1
                    );
                    let missing = attempt(false);
                    assert_eq!(
                        real, missing,
                        "{} by {caller:?}: forbidden and missing differ",
                        op.name
                    );
                }
            }
            checked += 1;
        }
        // Last, the rightful user succeeds (some operations change the world,
        // so after every refusal was checked).
        let auth = w.auth(Caller::Rightful, rightful);
        let (status, v) = call(
            addr,
            op.method,
            &(op.path)(&w, true),
            auth.as_deref(),
            (op.body)(&w, true).as_ref(),
        );
        assert_eq!(status, op.success, "{} by its rightful user: {v}", op.name);
        checked += 1;
    }
    for (method, path, body) in TOKEN_ONLY {
        let body: Option<Value> = body.map(|b| serde_json::from_str(b).unwrap());
        let answers: Vec<_> = [Caller::NoToken, Caller::Malformed, Caller::Revoked]
            .into_iter()
            .map(|caller| {
                call(
                    addr,
                    method,
                    path,
                    w.auth(caller, &w.bob).as_deref(),
                    body.as_ref(),
                )
            })
            .collect();
        for (status, v) in &answers {
            assert_eq!(
                (*status, v["error"]["code"].as_str().unwrap_or("")),
                unauthenticated,
                "{method} {path}"
            );
        }
        assert!(
            answers.windows(2).all(|p| p[0] == p[1]),
            "{method} {path}: bad tokens answer alike"
        );
        checked += answers.len();
    }
    println!("authz: {checked} HTTP cases checked");
}

/// Sends `body` and returns every frame up to the answer to it (its request id).
fn exchange(conn: &mut Connection, body: Body) -> Vec<natter_wire::Frame> {
    let id = conn.send_body(body).unwrap();
    let mut frames = Vec::new();
    loop {
        let frame = conn
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("an answer");
        let done = frame.request_id == id
            && matches!(
                frame.body,
                Body::Error(_) | Body::SendOk(_) | Body::HistoryPage(_) | Body::SyncDone(_)
            );
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// A Ping answered by its Pong, and the frames that came before it.
fn until_pong(conn: &mut Connection, nonce: u64) -> Vec<natter_wire::Frame> {
    conn.send_body(Body::Ping(Ping { nonce })).unwrap();
    let mut before = Vec::new();
    loop {
        let frame = conn
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("a Pong");
        if matches!(&frame.body, Body::Pong(p) if p.nonce == nonce) {
            return before;
        }
        before.push(frame);
    }
}

fn send(chat_id: u64, client_msg_id: u64, text: &str) -> Body {
    Body::Send(Send {
        chat_id,
        client_msg_id,
        text: text.into(),
    })
}

/// `frames` without what echoes the request (request ids, a HistoryPage's
/// chat id), so that the answers to two requests can be compared; presence
/// pushes (timing, not answers) are left out.
fn answers(frames: Vec<natter_wire::Frame>) -> Vec<natter_wire::Frame> {
    frames
        .into_iter()
        .filter(|f| !matches!(f.body, Body::Presence(_)))
        .map(|mut f| {
            f.request_id = 0;
            match &mut f.body {
                Body::HistoryPage(page) => page.chat_id = 0,
                Body::Error(e) => e.request_id = 0,
                _ => {}
            }
            f
        })
        .collect()
}

/// Whether a Message with `text` reaches `conn` within 10 s (other frames skipped).
fn receives(conn: &mut Connection, text: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match conn.recv_timeout(left) {
            Ok(Some(f)) if matches!(&f.body, Body::Message(m) if m.text == text) => return true,
            Ok(Some(_)) => {}
            _ => return false,
        }
    }
    false
}

/// No Message and no Error among `frames`.
fn quiet(frames: &[natter_wire::Frame]) -> bool {
    frames
        .iter()
        .all(|f| !matches!(f.body, Body::Message(_) | Body::Error(_)))
}

#[test]
fn binary_operations_answer_only_members_and_forbidden_like_missing() {
    let w = world();
    let url = w.server.url("tcp");
    // Bad tokens: the Hello is refused alike, so no operation is reachable.
    let refusals: Vec<_> = ["", "not/a token!", w.revoked.as_str()]
        .into_iter()
        .map(|token| match Connection::connect_url(&url, None, token, "x") {
            Err(ClientError::Refused { code, message }) => (code, message),
            other => panic!("Hello with {token:?}: {:?}", other.map(|_| ())),
        })
        .collect();
    assert_eq!(refusals[0].0, ServerCode::Known(ErrorCode::InvalidToken));
    assert!(refusals.windows(2).all(|p| p[0] == p[1]), "{refusals:?}");

    let (mut bob, _) = w.server.connect("tcp", &w.bob);
    let (mut ann, _) = w.server.connect("tcp", &w.ann);
    // The rightful member: Send, History, Sync and Ack work.
    assert!(matches!(
        exchange(&mut bob, send(w.group, 1, "hello")).last().unwrap().body,
        Body::SendOk(_)
    ));
    let page = exchange(
        &mut bob,
        Body::History(History {
            chat_id: w.group,
            before_seq: 0,
            limit: 10,
        }),
    );
    assert!(matches!(&page.last().unwrap().body, Body::HistoryPage(p) if p.messages.len() == 1));
    let synced = exchange(
        &mut bob,
        Body::Sync(Sync {
            cursors: vec![Cursor {
                chat_id: w.group,
                seq: 0,
            }],
        }),
    );
    assert!(
        synced
            .iter()
            .any(|f| matches!(&f.body, Body::Message(m) if m.text == "hello"))
    );
    bob.send_body(Body::Ack(Ack {
        chat_id: w.group,
        seq: 1,
    }))
    .unwrap();
    assert!(
        until_pong(&mut bob, 1)
            .iter()
            .all(|f| !matches!(f.body, Body::Error(_)))
    );

    for (who, login) in [("a stranger", &w.eve), ("a removed member", &w.rem)] {
        let (mut conn, _) = w.server.connect("tcp", login);
        let real = answers(exchange(&mut conn, send(w.group, 2, "let me in")));
        assert!(
            matches!(&real.last().unwrap().body, Body::Error(e) if e.code == ErrorCode::UnknownChat.as_u16())
        );
        assert_eq!(
            real,
            answers(exchange(&mut conn, send(MISSING, 2, "let me in"))),
            "Send by {who}"
        );
        let history = |chat_id| {
            Body::History(History {
                chat_id,
                before_seq: 0,
                limit: 10,
            })
        };
        let real = answers(exchange(&mut conn, history(w.group)));
        assert!(
            matches!(&real.last().unwrap().body, Body::HistoryPage(p) if p.messages.is_empty()),
            "{real:?}"
        );
        assert_eq!(
            real,
            answers(exchange(&mut conn, history(MISSING))),
            "History by {who}"
        );
        // Sync with the members' cursors: nothing of the chat, like a missing chat.
        let sync = |chat_id| {
            Body::Sync(Sync {
                cursors: vec![Cursor { chat_id, seq: 0 }],
            })
        };
        let real = answers(exchange(&mut conn, sync(w.group)));
        assert!(
            real.iter().all(|f| !matches!(f.body, Body::Message(_))),
            "Sync by {who}: {real:?}"
        );
        assert_eq!(real, answers(exchange(&mut conn, sync(MISSING))), "Sync by {who}");
        // Ack of someone else's chat: no answer, no error, and it moves nothing.
        conn.send_body(Body::Ack(Ack {
            chat_id: w.group,
            seq: 1,
        }))
        .unwrap();
        conn.send_body(Body::Ack(Ack {
            chat_id: MISSING,
            seq: 1,
        }))
        .unwrap();
        assert!(quiet(&until_pong(&mut conn, 2)), "Ack by {who}");
    }

    // A removed member's live session stops receiving at once: cat joins,
    // is removed while connected, and the next message reaches bob, not cat.
    let http = w.server.client();
    http.friend_request(&w.ann.token, "cat").unwrap();
    http.accept_friend(&w.cat.token, w.ann.user_id).unwrap();
    http.add_member(&w.ann.token, w.group, w.cat.user_id).unwrap();
    let (mut cat, _) = w.server.connect("tcp", &w.cat);
    assert!(matches!(
        exchange(&mut ann, send(w.group, 3, "welcome cat"))
            .last()
            .unwrap()
            .body,
        Body::SendOk(_)
    ));
    assert!(receives(&mut cat, "welcome cat") && receives(&mut bob, "welcome cat"));
    http.remove_member(&w.ann.token, w.group, w.cat.user_id).unwrap();
    assert!(matches!(
        exchange(&mut ann, send(w.group, 4, "after cat"))
            .last()
            .unwrap()
            .body,
        Body::SendOk(_)
    ));
    assert!(receives(&mut bob, "after cat"), "a member still receives");
    let to_cat = until_pong(&mut cat, 3);
    assert!(
        to_cat.iter().all(|f| !matches!(&f.body, Body::Message(_))),
        "the removed member received {to_cat:?}"
    );
    let refused = exchange(&mut cat, send(w.group, 5, "still here?"));
    assert!(
        matches!(&refused.last().unwrap().body, Body::Error(e) if e.code == ErrorCode::UnknownChat.as_u16())
    );
}
