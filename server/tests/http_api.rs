//! End-to-end tests of the HTTP side-port against a real `natterd` (port 0,
//! temporary data dir, `--cores 2`), over real HTTP: accounts, tokens,
//! friendships, direct chats, groups and their members (changed through the
//! chat's owner core), the chat list, limits, error codes, and durability
//! across a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::{Value, json};
use support::TestServer;

/// A blocking JSON client that returns every status instead of failing on 4xx/5xx.
struct Http {
    agent: ureq::Agent,
    base: String,
}

/// An account with one logged-in device.
#[derive(Debug, Clone)]
struct User {
    id: u64,
    name: String,
    token: String,
}

/// One answer: status, selected headers, and the body parsed as JSON (Null when empty).
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: Option<String>,
    allow: Option<String>,
    retry_after: Option<String>,
    text: String,
    json: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("<none>")
    }
}

impl Http {
    fn new(server: &TestServer) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Self {
            agent: config.into(),
            base: server.http_url(),
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        answer(req.call())
    }

    fn delete(&self, path: &str, token: Option<&str>) -> Answer {
        let mut req = self.agent.delete(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        answer(req.call())
    }

    fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        answer(match body {
            Some(body) => req.send_json(body),
            None => req.send_empty(),
        })
    }

    fn post_bytes(&self, path: &str, body: &[u8]) -> Answer {
        let req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json");
        answer(req.send(body))
    }

    fn signup(&self, name: &str) -> u64 {
        let a = self.post(
            "/v1/signup",
            None,
            Some(json!({"username": name, "password": "password1"})),
        );
        assert_eq!(a.status, 201, "{a:?}");
        a.json["user_id"].as_u64().unwrap()
    }

    fn login(&self, name: &str) -> (u64, String) {
        let body = json!({"username": name, "password": "password1", "device_name": "test"});
        let a = self.post("/v1/login", None, Some(body));
        assert_eq!(a.status, 200, "{a:?}");
        (
            a.json["user_id"].as_u64().unwrap(),
            a.json["token"].as_str().unwrap().to_owned(),
        )
    }

    /// Signs `name` up and logs one device in.
    fn account(&self, name: &str) -> User {
        self.signup(name);
        let (id, token) = self.login(name);
        User {
            id,
            name: name.to_owned(),
            token,
        }
    }

    /// Makes `a` and `b` friends (`a` asks, `b` accepts).
    fn befriend(&self, a: &User, b: &User) {
        let asked = self.post(
            "/v1/friends/requests",
            Some(&a.token),
            Some(json!({"username": b.name})),
        );
        assert_eq!(asked.status, 200, "{asked:?}");
        let accepted = self.post(
            &format!("/v1/friends/requests/{}/accept", a.id),
            Some(&b.token),
            None,
        );
        assert_eq!(accepted.json["status"], "friends", "{accepted:?}");
    }

    fn friends(&self, token: &str) -> Value {
        let a = self.get("/v1/friends", Some(token));
        assert_eq!(a.status, 200, "{a:?}");
        a.json
    }
}

fn answer(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
    let mut resp = result.expect("HTTP exchange failed");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (content_type, allow) = (header("content-type"), header("allow"));
    let retry_after = header("retry-after");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::Null)
    };
    if status >= 400 {
        assert!(
            json["error"]["code"].is_string(),
            "error bodies carry a code: {text}"
        );
    }
    Answer {
        status,
        content_type,
        allow,
        retry_after,
        text,
        json,
    }
}

/// Writes `request` on a fresh connection and reads until the server closes it.
fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    stream
        .read_to_end(&mut out)
        .expect("the server answers and closes");
    String::from_utf8_lossy(&out).into_owned()
}

fn entry(id: u64, name: &str) -> Value {
    json!({"user_id": id, "username": name})
}

#[test]
fn signup_login_logout_and_discovery() {
    let server = support::start();
    let http = Http::new(&server);

    let health = http.get("/healthz", None);
    assert_eq!((health.status, &health.json), (200, &json!({"status": "ok"})));
    let url = |scheme: &str| {
        server
            .urls
            .iter()
            .find(|u| u.starts_with(scheme))
            .unwrap()
            .clone()
    };
    let addr = |scheme: &str| {
        url(scheme)
            .split("://")
            .nth(1)
            .unwrap()
            .trim_end_matches('/')
            .to_owned()
    };
    let endpoints = json!({
        "http": server.http.to_string(),
        "tcp": server.tcp.to_string(),
        "tls": addr("tls://"),
        "ws": addr("ws://"),
        "quic": addr("quic://"),
        "urls": [format!("tcp://{}", server.tcp), url("tls://"), url("ws://"), url("quic://")],
        "cert_sha256": server.cert_sha256.clone().unwrap(),
    });
    assert_eq!(http.get("/v1/endpoints", None).json, endpoints);

    let alice = http.signup("Alice");
    let dup = http.post(
        "/v1/signup",
        None,
        Some(json!({"username": "alice", "password": "password1"})),
    );
    assert_eq!(
        (dup.status, dup.code()),
        (409, "username_taken"),
        "names are case-insensitive"
    );

    let login = http.post(
        "/v1/login",
        None,
        Some(json!({"username": "ALICE", "password": "password1", "device_name": "phone"})),
    );
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(login.json["user_id"], alice);
    assert_eq!(login.json["endpoints"], endpoints);
    let token = login.json["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 64);

    let wrong = http.post(
        "/v1/login",
        None,
        Some(json!({"username": "alice", "password": "password2", "device_name": "phone"})),
    );
    assert_eq!((wrong.status, wrong.code()), (401, "invalid_credentials"));

    assert_eq!(http.get("/v1/friends", Some(&token)).status, 200);
    assert_eq!(http.get("/v1/friends", None).code(), "invalid_token");
    let logout = http.post("/v1/logout", Some(&token), None);
    assert_eq!((logout.status, logout.text.as_str()), (204, ""));
    let after = http.get("/v1/friends", Some(&token));
    assert_eq!((after.status, after.code()), (401, "invalid_token"));

    let metrics = http.get("/metrics", None);
    assert_eq!(metrics.status, 200);
    assert_eq!(metrics.content_type.as_deref(), Some("text/plain; version=0.0.4"));
    assert!(
        metrics
            .text
            .contains("natter_http_requests_total{status=\"201\"} 1"),
        "{}",
        metrics.text
    );
    assert!(metrics.text.contains("natter_connections{core=\"1\"}"));
}

#[test]
fn limits_routes_and_malformed_requests() {
    let server = support::start();
    let http = Http::new(&server);

    let missing = http.get("/v1/nope", None);
    assert_eq!((missing.status, missing.code()), (404, "not_found"));
    let wrong_method = http.get("/v1/signup", None);
    assert_eq!(
        (wrong_method.status, wrong_method.code()),
        (405, "method_not_allowed")
    );
    assert_eq!(wrong_method.allow.as_deref(), Some("POST"));
    assert_eq!(http.delete("/v1/friends", None).allow.as_deref(), Some("GET"));
    assert_eq!(
        http.post_bytes("/v1/signup", b"{not json").code(),
        "malformed_json"
    );
    assert_eq!(
        http.post("/v1/signup", None, Some(json!({"username": "abc"})))
            .code(),
        "missing_field"
    );

    // A body of exactly 64 KiB is read (and judged on its content)...
    let mut body = br#"{"username": "padded", "password": "password1"}"#.to_vec();
    body.resize(64 * 1024, b' ');
    assert_eq!(http.post_bytes("/v1/signup", &body).status, 201);
    // ...one byte more is refused before it is read.
    body.push(b' ');
    let too_large = http.post_bytes("/v1/signup", &body);
    assert_eq!((too_large.status, too_large.code()), (413, "body_too_large"));

    // A huge declared length is refused at once from the header alone.
    let answer = raw_exchange(
        server.http,
        b"POST /v1/signup HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("body_too_large"));
    let answer = raw_exchange(
        server.http,
        b"POST /v1/signup HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 411 "), "{answer}");
    let answer = raw_exchange(server.http, b"\x16\x03\x01garbage\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let mut huge_head = b"GET /healthz HTTP/1.1\r\nX-Filler: ".to_vec();
    huge_head.resize(20 * 1024, b'a');
    huge_head.extend_from_slice(b"\r\n\r\n");
    let answer = raw_exchange(server.http, &huge_head);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // Keep-alive with pipelining: answers come back in order on one connection.
    let answer = raw_exchange(
        server.http,
        b"GET /healthz HTTP/1.1\r\n\r\nGET /v1/nope HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "404", "200"], "{answer}");

    // After all that abuse the port still serves.
    assert_eq!(http.get("/healthz", None).status, 200);
    let metrics = http.get("/metrics", None).text;
    assert!(
        metrics.contains("natter_http_requests_total{status=\"413\"} 2"),
        "{metrics}"
    );
}

#[test]
fn signups_and_logins_are_rate_limited() {
    let server = support::start_with(&["--auth-rate-limit", "3"]);
    let http = Http::new(&server);
    http.signup("alice");
    http.login("alice");
    let dup = http.post(
        "/v1/signup",
        None,
        Some(json!({"username": "alice", "password": "password1"})),
    );
    assert_eq!(dup.status, 409, "attempts that fail still count");
    let limited = http.post(
        "/v1/signup",
        None,
        Some(json!({"username": "bob", "password": "password1"})),
    );
    assert_eq!((limited.status, limited.code()), (429, "rate_limited"));
    let body = json!({"username": "alice", "password": "password1", "device_name": "x"});
    assert_eq!(http.post("/v1/login", None, Some(body)).status, 429);
    assert_eq!(
        http.get("/healthz", None).status,
        200,
        "other endpoints are not limited"
    );
}

#[test]
fn friendships_and_accounts_survive_a_restart() {
    let mut server = support::start();
    let http = Http::new(&server);
    let alice = http.signup("alice");
    let bob = http.signup("bob");
    let carol = http.signup("carol");
    let (_, ta) = http.login("alice");
    let (_, tb) = http.login("bob");
    let (_, tc) = http.login("carol");
    let ask = |token: &str, name: &str| {
        http.post(
            "/v1/friends/requests",
            Some(token),
            Some(json!({"username": name})),
        )
    };

    assert_eq!(ask(&ta, "alice").code(), "cannot_befriend_self");
    assert_eq!(ask(&ta, "nobody").code(), "user_not_found");
    let asked = ask(&ta, "bob");
    assert_eq!(
        (asked.status, asked.json["status"].as_str()),
        (200, Some("requested"))
    );
    assert_eq!(http.friends(&tb)["incoming"], json!([entry(alice, "alice")]));
    let accept = http.post(&format!("/v1/friends/requests/{alice}/accept"), Some(&tb), None);
    assert_eq!(
        (accept.status, accept.json["status"].as_str()),
        (200, Some("friends"))
    );
    let none = http.post(&format!("/v1/friends/requests/{carol}/accept"), Some(&tb), None);
    assert_eq!((none.status, none.code()), (404, "no_friend_request"));
    assert_eq!(ask(&tc, "alice").json["status"], "requested");
    assert_eq!(ask(&tb, "carol").json["status"], "requested");
    assert_eq!(
        ask(&tc, "bob").json["status"],
        "friends",
        "crossing requests make friends"
    );
    assert_eq!(
        http.delete(&format!("/v1/friends/{carol}"), Some(&tb)).status,
        204
    );
    assert_eq!(
        http.delete(&format!("/v1/friends/{carol}"), Some(&tb)).code(),
        "not_friends"
    );

    let before = (http.friends(&ta), http.friends(&tb), http.friends(&tc));
    assert_eq!(
        before.0,
        json!({"friends": [entry(bob, "bob")], "incoming": [entry(carol, "carol")], "outgoing": []})
    );

    server.restart();
    let http = Http::new(&server);
    // Tokens, accounts and friendships are all still there.
    assert_eq!((http.friends(&ta), http.friends(&tb), http.friends(&tc)), before);
    let (id, _) = http.login("alice");
    assert_eq!(id, alice, "the password hash survived");
    let dup = http.post(
        "/v1/signup",
        None,
        Some(json!({"username": "BOB", "password": "password1"})),
    );
    assert_eq!(dup.status, 409);
    assert_eq!(http.signup("dave"), carol + 1, "ids continue after a restart");
}

#[test]
fn direct_chats_and_groups_with_their_limits_and_the_chat_list() {
    let mut server = support::start();
    let http = Http::new(&server);
    let alice = http.account("alice");
    let bob = http.account("bob");
    let carol = http.account("carol");
    let dave = http.account("dave");
    http.befriend(&alice, &bob);
    http.befriend(&alice, &carol);

    // Direct chats: friends only, one per pair, either side.
    let dm = |from: &User, to: u64| http.post("/v1/dms", Some(&from.token), Some(json!({"user_id": to})));
    let first = dm(&alice, bob.id);
    assert_eq!(first.status, 201, "{first:?}");
    let chat = first.json["chat_id"].as_u64().unwrap();
    let again = dm(&bob, alice.id);
    assert_eq!((again.status, &again.json), (200, &json!({"chat_id": chat})));
    let refused = dm(&alice, dave.id);
    assert_eq!((refused.status, refused.code()), (403, "not_friends"));
    assert_eq!(dm(&alice, alice.id).code(), "cannot_chat_with_self");
    // A missing user answers like an existing non-friend: ids reveal nothing.
    let missing = dm(&alice, 9_999);
    assert_eq!((missing.status, &missing.json), (refused.status, &refused.json));
    assert_eq!(
        http.post("/v1/dms", None, Some(json!({"user_id": bob.id})))
            .status,
        401
    );

    // Groups: the owner's friends, duplicates collapse, members only may look.
    let created = http.post(
        "/v1/groups",
        Some(&alice.token),
        Some(json!({"name": "the crew", "members": [bob.id, carol.id, bob.id]})),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let group = created.json["chat_id"].as_u64().unwrap();
    let shown = http.get(&format!("/v1/groups/{group}"), Some(&bob.token));
    assert_eq!(shown.status, 200);
    assert_eq!(
        shown.json,
        json!({
            "chat_id": group,
            "name": "the crew",
            "owner": alice.id,
            "members": [entry(alice.id, "alice"), entry(bob.id, "bob"), entry(carol.id, "carol")],
        })
    );
    let hidden = http.get(&format!("/v1/groups/{group}"), Some(&dave.token));
    assert_eq!((hidden.status, hidden.code()), (404, "unknown_chat"));
    assert_eq!(
        http.get(&format!("/v1/groups/{chat}"), Some(&alice.token)).code(),
        "unknown_chat"
    );
    let stranger = http.post(
        "/v1/groups",
        Some(&alice.token),
        Some(json!({"name": "g", "members": [bob.id, dave.id]})),
    );
    assert_eq!((stranger.status, stranger.code()), (403, "not_friends"));
    assert!(
        stranger.json["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&dave.id.to_string())
    );
    let nameless = http.post(
        "/v1/groups",
        Some(&alice.token),
        Some(json!({"name": "", "members": []})),
    );
    assert_eq!((nameless.status, nameless.code()), (400, "invalid_group_name"));

    // At most 100 members, owner included: 100 friends are one too many.
    let owner = http.account("owner");
    let friends: Vec<User> = (0..100)
        .map(|i| {
            let friend = http.account(&format!("friend{i:03}"));
            http.befriend(&owner, &friend);
            friend
        })
        .collect();
    let ids: Vec<u64> = friends.iter().map(|f| f.id).collect();
    let create = |members: &[u64]| {
        http.post(
            "/v1/groups",
            Some(&owner.token),
            Some(json!({"name": "big", "members": members})),
        )
    };
    let too_many = create(&ids);
    assert_eq!((too_many.status, too_many.code()), (409, "too_many_members"));
    let full = create(&ids[..99]);
    assert_eq!(full.status, 201, "{full:?}");
    let big = full.json["chat_id"].as_u64().unwrap();
    let members = http.get(&format!("/v1/groups/{big}"), Some(&owner.token)).json["members"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(members, 100);

    // The chat list, named as each member sees it, with the last committed seq.
    let list = |user: &User| {
        let a = http.get("/v1/chats", Some(&user.token));
        assert_eq!(a.status, 200, "{a:?}");
        a.json
    };
    let expected_alice = json!({"chats": [
        {"chat_id": chat, "kind": "direct", "name": "bob", "last_seq": 0, "read_seq": 0, "unread": 0},
        {"chat_id": group, "kind": "group", "name": "the crew", "last_seq": 0, "read_seq": 0, "unread": 0},
    ]});
    assert_eq!(list(&alice), expected_alice);
    assert_eq!(list(&bob)["chats"][0]["name"], "alice");
    assert_eq!(list(&dave), json!({"chats": []}));
    assert_eq!(list(&friends[0])["chats"][0]["chat_id"], big);

    // Chats are durable: after a restart everything is still there, and a DM
    // is still the same chat.
    server.restart();
    let http = Http::new(&server);
    let list = |user: &User| http.get("/v1/chats", Some(&user.token)).json;
    assert_eq!(list(&alice), expected_alice);
    let again = http.post("/v1/dms", Some(&bob.token), Some(json!({"user_id": alice.id})));
    assert_eq!((again.status, &again.json), (200, &json!({"chat_id": chat})));
    let newer = http.post(
        "/v1/groups",
        Some(&bob.token),
        Some(json!({"name": "later", "members": []})),
    );
    assert!(
        newer.json["chat_id"].as_u64().unwrap() > big,
        "chat ids continue after a restart"
    );
}

#[test]
fn group_members_change_through_the_owner_core_durably() {
    let mut server = support::start();
    let http = Http::new(&server);
    let alice = http.account("alice");
    let bob = http.account("bob");
    let carol = http.account("carol");
    let dave = http.account("dave");
    http.befriend(&alice, &bob);
    http.befriend(&alice, &carol);
    http.befriend(&bob, &dave);
    let created = http.post(
        "/v1/groups",
        Some(&alice.token),
        Some(json!({"name": "g", "members": [bob.id]})),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let group = created.json["chat_id"].as_u64().unwrap();
    let add = |by: &User, user: u64| {
        http.post(
            &format!("/v1/groups/{group}/members"),
            Some(&by.token),
            Some(json!({"user_id": user})),
        )
    };
    let remove =
        |by: &User, user: u64| http.delete(&format!("/v1/groups/{group}/members/{user}"), Some(&by.token));
    let members = |by: &User| -> Vec<u64> {
        let a = http.get(&format!("/v1/groups/{group}"), Some(&by.token));
        assert_eq!(a.status, 200, "{a:?}");
        a.json["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_u64().unwrap())
            .collect()
    };

    let added = add(&alice, carol.id);
    assert_eq!(
        (added.status, &added.json),
        (201, &json!({"chat_id": group, "user_id": carol.id}))
    );
    assert_eq!(members(&carol), [alice.id, bob.id, carol.id]);
    let twice = add(&alice, carol.id);
    assert_eq!((twice.status, twice.code()), (409, "already_member"));
    let not_owner = add(&bob, dave.id);
    assert_eq!((not_owner.status, not_owner.code()), (403, "not_owner"));
    let stranger = add(&alice, dave.id);
    assert_eq!((stranger.status, stranger.code()), (403, "not_friends"));
    let outsider = add(&dave, dave.id);
    assert_eq!((outsider.status, outsider.code()), (404, "unknown_chat"));
    let missing = add(&alice, 9_999);
    assert_eq!(
        (missing.status, &missing.json),
        (stranger.status, &stranger.json),
        "ids reveal nothing"
    );
    let others = remove(&bob, carol.id);
    assert_eq!((others.status, others.code()), (403, "not_owner"));

    // Any member may leave; the owner removes others.
    assert_eq!(remove(&bob, bob.id).status, 204);
    assert_eq!(
        http.get(&format!("/v1/groups/{group}"), Some(&bob.token)).code(),
        "unknown_chat"
    );
    assert_eq!(remove(&alice, carol.id).status, 204);
    let gone = remove(&alice, carol.id);
    assert_eq!((gone.status, gone.code()), (404, "not_member"));
    assert_eq!(members(&alice), [alice.id]);
    let chats = http.get("/v1/chats", Some(&carol.token));
    assert_eq!(
        chats.json,
        json!({"chats": []}),
        "a removed member's list drops the group"
    );
    assert_eq!(
        add(&alice, bob.id).status,
        201,
        "a member who left can be added again"
    );

    server.restart();
    let http = Http::new(&server);
    let a = http.get(&format!("/v1/groups/{group}"), Some(&alice.token));
    let ids: Vec<u64> = a.json["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [alice.id, bob.id], "membership changes are durable");
    let removed_again = http.delete(
        &format!("/v1/groups/{group}/members/{}", carol.id),
        Some(&alice.token),
    );
    assert_eq!((removed_again.status, removed_again.code()), (404, "not_member"));
}

#[test]
fn an_owner_who_leaves_hands_the_group_to_the_longest_standing_member() {
    let mut server = support::start();
    let http = Http::new(&server);
    let alice = http.account("alice");
    let bob = http.account("bob");
    let carol = http.account("carol");
    let dave = http.account("dave");
    let erin = http.account("erin");
    for friend in [&bob, &carol, &dave] {
        http.befriend(&alice, friend);
    }
    http.befriend(&carol, &erin);
    // carol and dave join at creation (the same instant: the lower id, carol,
    // stands longer); bob joins later, though his id is lower than both.
    let created = http.post(
        "/v1/groups",
        Some(&alice.token),
        Some(json!({"name": "g", "members": [dave.id, carol.id]})),
    );
    assert_eq!(created.status, 201, "{created:?}");
    let group = created.json["chat_id"].as_u64().unwrap();
    let created_at = std::time::SystemTime::now();
    assert!(
        support::wait_until(Duration::from_secs(5), || created_at
            .elapsed()
            .is_ok_and(|e| e >= Duration::from_millis(5))),
        "the wall clock moves on"
    );
    let add = |by: &User, user: u64| {
        http.post(
            &format!("/v1/groups/{group}/members"),
            Some(&by.token),
            Some(json!({"user_id": user})),
        )
    };
    let remove =
        |by: &User, user: u64| http.delete(&format!("/v1/groups/{group}/members/{user}"), Some(&by.token));
    let show = |http: &Http, by: &User| http.get(&format!("/v1/groups/{group}"), Some(&by.token));
    let ids = |a: &Answer| -> Vec<u64> {
        a.json["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(add(&alice, bob.id).status, 201);

    // The owner leaves: carol owns the group now, durably, before the 204.
    assert_eq!(remove(&alice, alice.id).status, 204);
    let seen = show(&http, &bob);
    assert_eq!(seen.json["owner"], carol.id, "{seen:?}");
    assert_eq!(ids(&seen), [bob.id, carol.id, dave.id]);
    assert_eq!(show(&http, &alice).code(), "unknown_chat", "alice is gone");
    // carol adds her friends and removes others; nobody else does.
    assert_eq!(add(&carol, erin.id).status, 201);
    let by_bob = remove(&bob, dave.id);
    assert_eq!((by_bob.status, by_bob.code()), (403, "not_owner"));
    let by_alice = add(&alice, alice.id);
    assert_eq!((by_alice.status, by_alice.code()), (404, "unknown_chat"));
    assert_eq!(remove(&carol, dave.id).status, 204);

    // Ownership survives a restart.
    server.restart();
    let http = Http::new(&server);
    let seen = show(&http, &erin);
    assert_eq!(
        (seen.json["owner"].as_u64(), ids(&seen)),
        (Some(carol.id), vec![bob.id, carol.id, erin.id])
    );
    let by_bob = http.delete(
        &format!("/v1/groups/{group}/members/{}", erin.id),
        Some(&bob.token),
    );
    assert_eq!((by_bob.status, by_bob.code()), (403, "not_owner"));

    // Everyone leaves in turn; each hand-over goes to the longest-standing
    // (bob joined before erin); the last one leaves an empty group nobody reaches.
    let leave = |user: &User| {
        http.delete(
            &format!("/v1/groups/{group}/members/{}", user.id),
            Some(&user.token),
        )
        .status
    };
    assert_eq!(leave(&carol), 204);
    assert_eq!(show(&http, &erin).json["owner"], bob.id);
    assert_eq!(leave(&bob), 204);
    assert_eq!(show(&http, &erin).json["owner"], erin.id);
    assert_eq!(leave(&erin), 204);
    for user in [&alice, &bob, &carol, &dave, &erin] {
        assert_eq!(show(&http, user).code(), "unknown_chat");
        let chats = http.get("/v1/chats", Some(&user.token));
        assert_eq!(chats.json, json!({"chats": []}), "{}", user.name);
    }
}

#[test]
fn writes_are_rate_limited_per_user_with_retry_after() {
    let server = support::start_with(&["--user-write-rate-limit", "4"]);
    let http = Http::new(&server);
    let alice = http.account("alice");
    let bob = http.account("bob");
    http.account("carol");
    // Signup and login are not counted; befriending costs alice one write.
    http.befriend(&alice, &bob);
    let dm = http.post("/v1/dms", Some(&alice.token), Some(json!({"user_id": bob.id})));
    assert_eq!(dm.status, 201, "{dm:?}");
    let chat = dm.json["chat_id"].as_u64().unwrap();
    let read = http.post(
        &format!("/v1/chats/{chat}/read"),
        Some(&alice.token),
        Some(json!({"seq": 0})),
    );
    assert_eq!(read.status, 200, "{read:?}");
    let ask = http.post(
        "/v1/friends/requests",
        Some(&alice.token),
        Some(json!({"username": "carol"})),
    );
    assert_eq!(ask.status, 200, "{ask:?}");
    // The burst of 4 is spent: the fifth write is refused, with when to retry.
    let limited = http.post(
        "/v1/groups",
        Some(&alice.token),
        Some(json!({"name": "g", "members": []})),
    );
    assert_eq!(
        (limited.status, limited.code()),
        (429, "rate_limited"),
        "{limited:?}"
    );
    assert_eq!(
        limited.retry_after.as_deref(),
        Some("15"),
        "4 a minute: one every 15 s"
    );
    // Reads and other users go on; so does logout.
    assert_eq!(http.get("/v1/chats", Some(&alice.token)).status, 200);
    let other = http.post(
        "/v1/groups",
        Some(&bob.token),
        Some(json!({"name": "g", "members": []})),
    );
    assert_eq!(other.status, 201, "{other:?}");
    assert_eq!(http.post("/v1/logout", Some(&alice.token), None).status, 204);
}

#[test]
fn a_403_goes_out_as_forbidden() {
    let server = support::start();
    let http = Http::new(&server);
    let alice = http.account("alice");
    let bob = http.account("bob");
    let body = format!(r#"{{"user_id":{}}}"#, bob.id);
    let request = format!(
        "POST /v1/dms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        alice.token,
        body.len()
    );
    let answer = raw_exchange(server.http, request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert!(answer.contains(r#""code":"not_friends""#), "{answer}");
}
