//! Unit tests of [`Api::handle`] over a real store in a temporary directory:
//! every route, validation branch and error code, no sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde_json::{Value, json};

use super::*;
use crate::config::{Config, PasswordCost};
use crate::ids::{ClientMsgId, Seq};
use crate::runtime::Command;
use crate::store::StoredMessage;
use crate::store::writer::WriteOp;

pub(crate) struct Harness {
    pub(crate) api: Arc<Api>,
    queues: Vec<Receiver<Command>>,
    _polls: Vec<mio::Poll>,
    _dir: tempfile::TempDir,
}

const ALICE_IP: &str = "192.0.2.1";

pub(crate) fn harness(auth_rate_limit: u32) -> Harness {
    harness_with(Config {
        auth_rate_limit,
        ..Config::default()
    })
}

/// A harness over `config` (its `cores` and `password_cost` are set for tests).
pub(crate) fn harness_with(config: Config) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let mut polls = Vec::new();
    let mut queues = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..2 {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (tx, rx) = Mesh::queue();
        handles.push((tx, waker));
        queues.push(rx);
        polls.push(poll);
    }
    let config = Config {
        cores: 2,
        password_cost: PasswordCost {
            memory_kib: 8,
            iterations: 1,
        },
        ..config
    };
    let api = Arc::new(Api::new(
        &config,
        store,
        Mesh::new(handles),
        Arc::new(Metrics::new(2)),
        endpoints(),
    ));
    Harness {
        api,
        queues,
        _polls: polls,
        _dir: dir,
    }
}

fn endpoints() -> Endpoints {
    Endpoints::new(
        SocketAddr::from(([127, 0, 0, 1], 7180)),
        SocketAddr::from(([127, 0, 0, 1], 7100)),
        Some(SocketAddr::from(([127, 0, 0, 1], 7101))),
        Some(SocketAddr::from(([127, 0, 0, 1], 7102))),
        false,
        Some("ab".repeat(32)),
    )
}

/// What `endpoints()` serialises to.
fn endpoints_json() -> Value {
    json!({
        "http": "127.0.0.1:7180",
        "tcp": "127.0.0.1:7100",
        "tls": "127.0.0.1:7101",
        "ws": "127.0.0.1:7102",
        "urls": ["tcp://127.0.0.1:7100", "tls://127.0.0.1:7101", "ws://127.0.0.1:7102/"],
        "cert_sha256": "ab".repeat(32),
    })
}

impl Harness {
    fn raw(&self, method: &str, path: &str, auth: Option<&str>, body: &[u8], ip: &str) -> Response {
        let remote: IpAddr = ip.parse().unwrap();
        self.api.handle(&Request {
            method,
            path,
            authorization: auth,
            body,
            remote,
        })
    }

    /// Calls the API; returns the status and the parsed JSON body (Null when empty).
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let auth = token.map(|t| format!("Bearer {t}"));
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.call_raw(method, path, auth.as_deref(), &body)
    }

    fn call_raw(&self, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> (u16, Value) {
        let r = self.raw(method, path, auth, body, ALICE_IP);
        let value = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&r.body).unwrap()
        };
        if r.status >= 400 {
            assert!(
                value["error"]["code"].is_string() && value["error"]["message"].is_string(),
                "{value}"
            );
        }
        (r.status, value)
    }

    fn signup(&self, name: &str) -> u64 {
        let (status, v) = self.call(
            "POST",
            "/v1/signup",
            None,
            json!({"username": name, "password": "password1"}),
        );
        assert_eq!(status, 201, "{v}");
        v["user_id"].as_u64().unwrap()
    }

    fn login(&self, name: &str) -> (u64, u64, String) {
        let (status, v) = self.call(
            "POST",
            "/v1/login",
            None,
            json!({"username": name, "password": "password1", "device_name": "phone"}),
        );
        assert_eq!(status, 200, "{v}");
        (
            v["user_id"].as_u64().unwrap(),
            v["device_id"].as_u64().unwrap(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

#[test]
fn health_metrics_and_endpoints() {
    let h = harness(30);
    assert_eq!(
        h.call("GET", "/healthz", None, Value::Null),
        (200, json!({"status": "ok"}))
    );
    assert_eq!(h.call("GET", "/healthz?probe=1", None, Value::Null).0, 200);
    let r = h.raw("GET", "/metrics", None, b"", ALICE_IP);
    assert_eq!((r.status, r.content_type), (200, "text/plain; version=0.0.4"));
    assert!(r.body.contains("natter_connections{core=\"1\"}"), "{}", r.body);
    assert!(r.body.contains("natter_http_requests_total{status=\"200\"}"));
    assert_eq!(
        h.call("GET", "/v1/endpoints", None, Value::Null),
        (200, endpoints_json())
    );
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_405() {
    let h = harness(30);
    // `/` is the web page (http/web.rs), not an API route: HTML, GET only.
    let page = h.raw("GET", "/", None, b"", ALICE_IP);
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    let post = h.raw("POST", "/", None, b"", ALICE_IP);
    assert_eq!((post.status, post.allow), (405, Some("GET")));
    for path in [
        "",
        "//",
        "/index.htm",
        "/v1",
        "/v1/",
        "/v2/signup",
        "/v1/signup/",
        "/v1/signupx",
        "/healthz/",
        "/v1/friends/requests/5",
        "/v1/friends/requests/5/accept/x",
        "/v1/friends/requests/5/decline",
        "/v1/friends/5/x",
        "v1/signup",
        "/v1/dms/1",
        "/v1/groups/1/x",
        "/v1/groups/1/members/2/x",
        "/v1/chats/1",
    ] {
        let (status, v) = h.call("GET", path, None, Value::Null);
        assert_eq!((status, code(&v)), (404, "not_found"), "{path:?}");
    }
    for (method, path, allow) in [
        ("GET", "/v1/signup", "POST"),
        ("PUT", "/v1/login", "POST"),
        ("GET", "/v1/logout", "POST"),
        ("POST", "/healthz", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("POST", "/v1/endpoints", "GET"),
        ("POST", "/v1/friends", "GET"),
        ("GET", "/v1/friends/requests", "POST"),
        ("GET", "/v1/friends/requests/2/accept", "POST"),
        ("GET", "/v1/friends/2", "DELETE"),
        ("get", "/healthz", "GET"),
        ("GET", "/v1/dms", "POST"),
        ("GET", "/v1/groups", "POST"),
        ("DELETE", "/v1/groups/1", "GET"),
        ("GET", "/v1/groups/1/members", "POST"),
        ("POST", "/v1/groups/1/members/2", "DELETE"),
        ("POST", "/v1/chats", "GET"),
    ] {
        let r = h.raw(method, path, None, b"", ALICE_IP);
        assert_eq!((r.status, r.allow), (405, Some(allow)), "{method} {path}");
        assert!(r.body.contains("method_not_allowed"));
    }
}

#[test]
fn signup_validates_and_names_are_case_insensitive() {
    let h = harness(1000);
    let signup = |name: &str, password: &str| {
        let (status, v) = h.call(
            "POST",
            "/v1/signup",
            None,
            json!({"username": name, "password": password}),
        );
        (status, code(&v).to_owned(), v)
    };
    let (status, _, v) = signup("Alice", "password1");
    assert_eq!((status, v), (201, json!({"user_id": 1})));
    assert_eq!(signup("alice", "password1").1, "username_taken");
    assert_eq!(signup("ALICE", "password1").0, 409);
    assert_eq!(signup("abc", "password1").0, 201, "3 characters is the minimum");
    assert_eq!(signup(&"x".repeat(32), "password1").0, 201, "32 is the maximum");
    assert_eq!(signup("a.b_c-9", "password1").0, 201);
    for bad in [
        "ab",
        &"y".repeat(33),
        "bad name",
        "émile",
        "a/b",
        "a+b",
        "",
        "tab\tx",
        "\u{212a}elvin",
    ] {
        assert_eq!(signup(bad, "password1").1, "invalid_username", "{bad:?}");
    }
    assert_eq!(signup("shortpw", "1234567").1, "invalid_password");
    assert_eq!(signup("okpw8", "12345678").0, 201);
    assert_eq!(signup("multibyte", "éééé").0, 201, "8 bytes in 4 characters");
    assert_eq!(signup("maxpw", &"p".repeat(1024)).0, 201);
    assert_eq!(signup("longpw", &"p".repeat(1025)).1, "invalid_password");
    // The stored name is the lowercase one.
    let (_, _, token) = h.login("alice");
    assert!(!token.is_empty());
}

#[test]
fn malformed_bodies_get_specific_codes() {
    let h = harness(1000);
    for (body, expected) in [
        (&b""[..], "malformed_json"),
        (b"{", "malformed_json"),
        (b"{\"username\": \"abc\", ", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (
            b"{\"username\": \"abc\", \"password\": \"password1\"} trailing",
            "malformed_json",
        ),
        (b"[]", "invalid_type"),
        (b"null", "invalid_type"),
        (b"\"text\"", "invalid_type"),
        (b"{\"username\": 1, \"password\": \"password1\"}", "invalid_type"),
        (b"{\"username\": \"abc\"}", "missing_field"),
        (
            b"{\"username\": \"abc\", \"password\": \"password1\", \"admin\": true}",
            "unknown_field",
        ),
    ] {
        let (status, v) = h.call_raw("POST", "/v1/signup", None, body);
        assert_eq!(
            (status, code(&v)),
            (400, expected),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    let (_, v) = h.call_raw("POST", "/v1/signup", None, b"{\"username\": \"abc\", \"x\": 1}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("`x`"),
        "the message names the field: {v}"
    );
}

#[test]
fn login_gives_tokens_and_hides_which_part_was_wrong() {
    let h = harness(1000);
    let alice = h.signup("alice");
    let (user, device, token) = h.login("ALICE");
    assert_eq!(user, alice);
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    let (_, v) = h.call(
        "POST",
        "/v1/login",
        None,
        json!({"username": "alice", "password": "password1", "device_name": "laptop"}),
    );
    assert_eq!(v["endpoints"], endpoints_json());
    assert_ne!(
        v["device_id"].as_u64().unwrap(),
        device,
        "each login is a new device"
    );

    let login = |name: &str, password: &str, device: &str| {
        h.call(
            "POST",
            "/v1/login",
            None,
            json!({"username": name, "password": password, "device_name": device}),
        )
    };
    let wrong_password = login("alice", "password2", "d");
    let unknown_user = login("nobody", "password1", "d");
    let impossible_name = login("no such name!", "password1", "d");
    assert_eq!(wrong_password.0, 401);
    assert_eq!(code(&wrong_password.1), "invalid_credentials");
    assert_eq!(wrong_password, unknown_user, "same answer for an unknown user");
    assert_eq!(wrong_password, impossible_name);
    assert_eq!(login("alice", &"p".repeat(2000), "d").0, 401);

    for bad in ["", &"d".repeat(65), "line\nbreak", "nul\0"] {
        let (status, v) = login("alice", "password1", bad);
        assert_eq!((status, code(&v)), (400, "invalid_device_name"), "{bad:?}");
    }
    assert_eq!(
        login("alice", "password1", &"ü".repeat(64)).0,
        200,
        "64 characters, 128 bytes"
    );
    let (status, v) = h.call(
        "POST",
        "/v1/login",
        None,
        json!({"username": "alice", "password": "password1"}),
    );
    assert_eq!((status, code(&v)), (400, "missing_field"));
}

#[test]
fn tokens_are_required_and_checked() {
    let h = harness(1000);
    h.signup("alice");
    let (_, _, token) = h.login("alice");
    let ok = format!("Bearer {token}");
    let lower = format!("bearer {token}");
    let spaced = format!("  Bearer   {token} ");
    for auth in [Some(ok.as_str()), Some(lower.as_str()), Some(spaced.as_str())] {
        assert_eq!(h.call_raw("GET", "/v1/friends", auth, b"").0, 200, "{auth:?}");
    }
    let basic = format!("Basic {token}");
    let wrong = format!("Bearer {}", "0".repeat(64));
    for auth in [
        None,
        Some("Bearer"),
        Some("Bearer "),
        Some(basic.as_str()),
        Some(wrong.as_str()),
        Some(&token),
    ] {
        let (status, v) = h.call_raw("GET", "/v1/friends", auth, b"");
        assert_eq!((status, code(&v)), (401, "invalid_token"), "{auth:?}");
    }
    for (method, path) in [
        ("POST", "/v1/logout"),
        ("POST", "/v1/friends/requests"),
        ("POST", "/v1/friends/requests/1/accept"),
        ("DELETE", "/v1/friends/1"),
    ] {
        assert_eq!(h.call_raw(method, path, None, b"{}").0, 401, "{method} {path}");
    }
}

#[test]
fn logout_revokes_the_token_and_closes_the_device_on_its_home_core() {
    let h = harness(1000);
    h.signup("alice");
    let (user, device, token) = h.login("alice");
    let (_, _, other_token) = h.login("alice");
    assert_eq!(
        h.call("POST", "/v1/logout", Some(&token), Value::Null),
        (204, Value::Null)
    );
    let home = UserId(user).home_core(2).0;
    match h.queues[home].try_recv() {
        Ok(Command::CloseDevice { user: u, device: d }) => {
            assert_eq!((u, d), (UserId(user), DeviceId(device)))
        }
        other => panic!("expected CloseDevice on core {home}, got {other:?}"),
    }
    assert!(
        h.queues[1 - home].try_recv().is_err(),
        "only the home core is told"
    );
    let (status, v) = h.call("GET", "/v1/friends", Some(&token), Value::Null);
    assert_eq!((status, code(&v)), (401, "invalid_token"));
    assert_eq!(h.call("POST", "/v1/logout", Some(&token), Value::Null).0, 401);
    assert_eq!(
        h.call("GET", "/v1/friends", Some(&other_token), Value::Null).0,
        200,
        "other devices stay"
    );
}

#[test]
fn friendship_lifecycle() {
    let h = harness(1000);
    let alice = h.signup("alice");
    let bob = h.signup("bob");
    let carol = h.signup("carol");
    let (_, _, ta) = h.login("alice");
    let (_, _, tb) = h.login("bob");
    let (_, _, tc) = h.login("carol");
    let ask = |token: &str, name: &str| {
        h.call(
            "POST",
            "/v1/friends/requests",
            Some(token),
            json!({"username": name}),
        )
    };
    let list = |token: &str| h.call("GET", "/v1/friends", Some(token), Value::Null).1;
    let entry = |id: u64, name: &str| json!({"user_id": id, "username": name});

    assert_eq!(code(&ask(&ta, "alice").1), "cannot_befriend_self");
    assert_eq!(code(&ask(&ta, "ALICE").1), "cannot_befriend_self");
    assert_eq!(ask(&ta, "nobody").0, 404);
    assert_eq!(code(&ask(&ta, "nobody").1), "user_not_found");
    assert_eq!(code(&ask(&ta, "no body").1), "invalid_username");
    let (status, v) = h.call("POST", "/v1/friends/requests", Some(&ta), json!({"user": "bob"}));
    assert_eq!((status, code(&v)), (400, "unknown_field"));

    assert_eq!(
        ask(&ta, "Bob"),
        (200, json!({"status": "requested", "user_id": bob}))
    );
    assert_eq!(
        ask(&ta, "bob").1["status"],
        "requested",
        "asking twice is harmless"
    );
    assert_eq!(
        list(&ta),
        json!({"friends": [], "incoming": [], "outgoing": [entry(bob, "bob")]})
    );
    assert_eq!(
        list(&tb),
        json!({"friends": [], "incoming": [entry(alice, "alice")], "outgoing": []})
    );

    let accept = |token: &str, id: &str| {
        h.call(
            "POST",
            &format!("/v1/friends/requests/{id}/accept"),
            Some(token),
            Value::Null,
        )
    };
    let (status, v) = accept(&ta, &bob.to_string());
    assert_eq!(
        (status, code(&v)),
        (404, "no_friend_request"),
        "only the asked side accepts"
    );
    assert_eq!(
        accept(&tb, &alice.to_string()),
        (200, json!({"status": "friends", "user_id": alice}))
    );
    assert_eq!(
        accept(&tb, &alice.to_string()).0,
        200,
        "a retried accept succeeds"
    );
    assert_eq!(code(&accept(&tb, &carol.to_string()).1), "no_friend_request");
    assert_eq!(code(&accept(&tb, "999").1), "no_friend_request");
    for bad in ["abc", "0", "-1", "+1", "1.5", "99999999999999999999999"] {
        assert_eq!(code(&accept(&tb, bad).1), "invalid_user_id", "{bad:?}");
    }
    assert_eq!(list(&ta)["friends"], json!([entry(bob, "bob")]));
    assert_eq!(list(&tb)["friends"], json!([entry(alice, "alice")]));
    assert_eq!(ask(&tb, "alice").1["status"], "friends", "already friends");

    // Crossing requests: the second one makes them friends.
    assert_eq!(ask(&tc, "alice").1["status"], "requested");
    assert_eq!(ask(&ta, "carol").1["status"], "friends");
    assert_eq!(
        list(&ta)["friends"],
        json!([entry(bob, "bob"), entry(carol, "carol")])
    );

    let remove =
        |token: &str, id: &str| h.call("DELETE", &format!("/v1/friends/{id}"), Some(token), Value::Null);
    assert_eq!(remove(&tb, &alice.to_string()), (204, Value::Null));
    let (status, v) = remove(&tb, &alice.to_string());
    assert_eq!((status, code(&v)), (404, "not_friends"));
    assert_eq!(code(&remove(&tb, "x").1), "invalid_user_id");
    assert_eq!(list(&ta)["friends"], json!([entry(carol, "carol")]));
    // Declining a request is a removal too.
    assert_eq!(ask(&tb, "carol").1["status"], "requested");
    assert_eq!(remove(&tc, &bob.to_string()).0, 204);
    assert_eq!(list(&tb), json!({"friends": [], "incoming": [], "outgoing": []}));
}

#[test]
fn signups_and_logins_are_rate_limited_per_address() {
    let h = harness(3);
    let body = json!({"username": "alice", "password": "password1"}).to_string();
    assert_eq!(
        h.raw("POST", "/v1/signup", None, body.as_bytes(), "10.1.1.1")
            .status,
        201
    );
    assert_eq!(
        h.raw("POST", "/v1/signup", None, body.as_bytes(), "10.1.1.1")
            .status,
        409
    );
    // Invalid attempts count too.
    assert_eq!(h.raw("POST", "/v1/login", None, b"{", "10.1.1.1").status, 400);
    let r = h.raw("POST", "/v1/login", None, body.as_bytes(), "10.1.1.1");
    assert_eq!(r.status, 429);
    assert!(r.body.contains("rate_limited"));
    assert_eq!(
        h.raw("POST", "/v1/signup", None, body.as_bytes(), "10.1.1.1")
            .status,
        429
    );
    // Other addresses and other endpoints are unaffected.
    assert_eq!(
        h.raw("POST", "/v1/signup", None, body.as_bytes(), "10.1.1.2")
            .status,
        409
    );
    assert_eq!(h.raw("GET", "/healthz", None, b"", "10.1.1.1").status, 200);
}

#[test]
fn store_errors_map_to_status_codes() {
    let status = |e: StoreError| store_error(e).status;
    assert_eq!(status(StoreError::UsernameTaken), 409);
    assert_eq!(status(StoreError::UnknownUser(UserId(3))), 404);
    assert_eq!(status(StoreError::SelfFriendship), 400);
    assert_eq!(status(StoreError::SelfChat), 400);
    assert_eq!(status(StoreError::TooManyMembers { count: 101 }), 409);
    assert_eq!(status(StoreError::TooManyFriends { user: UserId(3) }), 409);
    assert_eq!(status(StoreError::TooManyOutgoingRequests), 409);
    assert_eq!(status(StoreError::TooManyIncomingRequests), 409);
    assert_eq!(
        status(StoreError::Corrupt {
            what: "users[1]".into()
        }),
        500
    );
    assert_eq!(status(StoreError::Io(fjall::Error::Poisoned)), 503);
}

#[test]
fn error_codes_are_unique() {
    let all = HttpError::ALL;
    // One code per variant, except `not_friends` (one meaning, two statuses, see
    // error.rs) and `rate_limited` (one meaning, "too many, retry after
    // Retry-After": by address, by account's writes, by account's failed logins, by
    // account's searches).
    let mut codes: Vec<_> = all.iter().map(|e| e.code()).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), all.len() - 4);
    assert_eq!(HttpError::RateLimited.code(), HttpError::UserRateLimited.code());
    assert_eq!(HttpError::RateLimited.code(), HttpError::SearchRateLimited.code());
    assert_eq!(HttpError::RateLimited.code(), HttpError::AccountThrottled.code());
    assert_eq!(HttpError::FriendshipRequired.code(), HttpError::NotFriends.code());
    assert_eq!(
        (
            HttpError::FriendshipRequired.status(),
            HttpError::NotFriends.status()
        ),
        (403, 404)
    );
    assert!(
        HttpError::TooManyMembers
            .message()
            .contains(&MAX_GROUP_MEMBERS.to_string())
    );
    // The messages state the limits the store enforces.
    use crate::store::{MAX_INCOMING_REQUESTS, MAX_OUTGOING_REQUESTS};
    for (e, limit) in [
        (HttpError::TooManyFriends, MAX_FRIENDS),
        (HttpError::TooManyOutgoingRequests, MAX_OUTGOING_REQUESTS),
        (HttpError::TooManyIncomingRequests, MAX_INCOMING_REQUESTS),
    ] {
        assert!(e.message().contains(&limit.to_string()), "{e:?}");
    }
    for e in all {
        let v: Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], e.code());
        assert!((400..600).contains(&e.status()));
    }
}

#[test]
fn friend_limits_answer_409_with_their_own_codes() {
    use crate::store::{MAX_FRIENDS, MAX_INCOMING_REQUESTS, MAX_OUTGOING_REQUESTS, TestRelation};
    let h = harness(1_000);
    let (alice, ta) = h.account("alice");
    let (bob, tb) = h.account("bob");
    let (carol, tc) = h.account("carol");
    let (_dave, td) = h.account("dave");
    let ask = |token: &str, name: &str| {
        h.call(
            "POST",
            "/v1/friends/requests",
            Some(token),
            json!({"username": name}),
        )
    };
    let accept = |token: &str, from: u64| {
        h.call(
            "POST",
            &format!("/v1/friends/requests/{from}/accept"),
            Some(token),
            Value::Null,
        )
    };
    let store = &h.api.store;

    // Outgoing: alice has the most pending requests one user may have.
    store.seed_relations_for_test(
        UserId(alice),
        1_000_000,
        MAX_OUTGOING_REQUESTS,
        TestRelation::Outgoing,
    );
    let (status, v) = ask(&ta, "bob");
    assert_eq!((status, code(&v)), (409, "too_many_outgoing_requests"), "{v}");
    assert!(
        h.api.store.friends(UserId(bob)).unwrap().incoming.is_empty(),
        "nothing written"
    );

    // Incoming: carol's inbox is full; nobody may ask her, she may still ask.
    store.seed_relations_for_test(
        UserId(carol),
        2_000_000,
        MAX_INCOMING_REQUESTS,
        TestRelation::Incoming,
    );
    let (status, v) = ask(&tb, "carol");
    assert_eq!((status, code(&v)), (409, "too_many_incoming_requests"), "{v}");
    assert_eq!(ask(&tc, "bob").0, 200);

    // Friends: dave has the most friends a user may have.
    let dave_id = h.api.store.user_by_name("dave").unwrap().unwrap().id;
    store.seed_relations_for_test(dave_id, 3_000_000, MAX_FRIENDS, TestRelation::Friend);
    let (status, v) = ask(&td, "bob");
    assert_eq!((status, code(&v)), (409, "too_many_friends"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&dave_id.to_string())
    );
    assert_eq!(ask(&tb, "dave").0, 200, "a request to dave still fits his inbox");
    let (status, v) = accept(&td, bob);
    assert_eq!((status, code(&v)), (409, "too_many_friends"), "{v}");
    assert!(!h.api.store.are_friends(dave_id, UserId(bob)).unwrap());
}

#[test]
fn writes_are_rate_limited_per_user_with_retry_after() {
    let h = harness_with(Config {
        user_write_rate_limit: 3,
        ..Config::default()
    });
    let (_alice, ta) = h.account("alice");
    let (_bob, tb) = h.account("bob");
    h.account("carol");
    let write = |token: &str, body: &[u8]| {
        h.raw(
            "POST",
            "/v1/friends/requests",
            Some(&format!("Bearer {token}")),
            body,
            ALICE_IP,
        )
    };
    assert_eq!(write(&ta, br#"{"username":"bob"}"#).status, 200);
    assert_eq!(write(&ta, b"{").status, 400, "a refused write counts too");
    let r = h.raw(
        "DELETE",
        "/v1/friends/2",
        Some(&format!("Bearer {ta}")),
        b"",
        ALICE_IP,
    );
    assert_eq!(r.status, 204);
    // The burst (3) is used up: the fourth write of any kind is refused.
    let r = write(&ta, br#"{"username":"carol"}"#);
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("\"rate_limited\""), "{}", r.body);
    assert_eq!(r.retry_after, Some(20), "3 a minute: one token every 20 s");
    for (method, path, body) in [
        ("POST", "/v1/dms", &br#"{"user_id":2}"#[..]),
        ("POST", "/v1/groups", br#"{"name":"g","members":[]}"#),
        ("POST", "/v1/groups/1/members", br#"{"user_id":2}"#),
        ("DELETE", "/v1/groups/1/members/2", b""),
        ("POST", "/v1/chats/1/read", br#"{"seq":1}"#),
        ("POST", "/v1/friends/requests/2/accept", b""),
    ] {
        let r = h.raw(method, path, Some(&format!("Bearer {ta}")), body, ALICE_IP);
        assert_eq!((r.status, r.retry_after), (429, Some(20)), "{method} {path}");
    }
    // Reads, other users, and logout are not limited by alice's bucket.
    let r = h.raw("GET", "/v1/friends", Some(&format!("Bearer {ta}")), b"", ALICE_IP);
    assert_eq!(r.status, 200);
    assert_eq!(write(&tb, br#"{"username":"carol"}"#).status, 200);
    let r = h.raw("POST", "/v1/logout", Some(&format!("Bearer {ta}")), b"", ALICE_IP);
    assert_eq!(r.status, 204);
    // An unauthenticated write is refused as such, not counted against anyone.
    assert_eq!(write("bogus", br#"{"username":"bob"}"#).status, 401);
}

/// A test password hash for accounts made directly in the store.
const PHC: &str = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";

impl Harness {
    /// Makes `a` and `b` friends directly in the store.
    fn befriend(&self, a: u64, b: u64) {
        self.api.store.request_friend(UserId(a), UserId(b)).unwrap();
        assert!(self.api.store.accept_friend(UserId(b), UserId(a)).unwrap());
    }

    /// Signs `name` up and logs it in: `(user_id, token)`.
    fn account(&self, name: &str) -> (u64, String) {
        self.signup(name);
        let (id, _, token) = self.login(name);
        (id, token)
    }
}

fn entry(id: u64, name: &str) -> Value {
    json!({"user_id": id, "username": name})
}

#[test]
fn direct_chats_need_friendship_and_are_one_per_pair() {
    let h = harness(1000);
    let (alice, ta) = h.account("alice");
    let (bob, tb) = h.account("bob");
    let (carol, tc) = h.account("carol");
    h.befriend(alice, bob);
    let dm = |token: &str, body: Value| h.call("POST", "/v1/dms", Some(token), body);

    let (status, v) = dm(&ta, json!({"user_id": bob}));
    assert_eq!(status, 201, "{v}");
    let chat = v["chat_id"].as_u64().unwrap();
    assert_eq!(dm(&ta, json!({"user_id": bob})), (200, json!({"chat_id": chat})));
    assert_eq!(
        dm(&tb, json!({"user_id": alice})),
        (200, json!({"chat_id": chat})),
        "either side gets the same chat"
    );

    let (status, v) = dm(&ta, json!({"user_id": carol}));
    assert_eq!((status, code(&v)), (403, "not_friends"));
    let (status, v) = dm(&tc, json!({"user_id": alice}));
    assert_eq!((status, code(&v)), (403, "not_friends"));
    let (status, v) = dm(&ta, json!({"user_id": alice}));
    assert_eq!((status, code(&v)), (400, "cannot_chat_with_self"));
    // A missing user answers like a non-friend: user ids reveal nothing.
    let (status, v) = dm(&ta, json!({"user_id": 999}));
    assert_eq!((status, v), dm(&ta, json!({"user_id": carol})));
    assert_eq!(code(&dm(&ta, json!({"user_id": 0})).1), "invalid_user_id");
    assert_eq!(code(&dm(&ta, json!({"user_id": -1})).1), "invalid_type");
    assert_eq!(code(&dm(&ta, json!({"user_id": "2"})).1), "invalid_type");
    assert_eq!(code(&dm(&ta, json!({})).1), "missing_field");
    assert_eq!(code(&dm(&ta, json!({"user_id": bob, "x": 1})).1), "unknown_field");
    assert_eq!(h.call("POST", "/v1/dms", None, json!({"user_id": bob})).0, 401);

    let chats = |token: &str| h.call("GET", "/v1/chats", Some(token), Value::Null);
    assert_eq!(
        chats(&ta),
        (
            200,
            json!({"chats": [{"chat_id": chat, "kind": "direct", "name": "bob", "last_seq": 0, "read_seq": 0, "unread": 0}]})
        )
    );
    assert_eq!(
        chats(&tb).1["chats"][0]["name"],
        "alice",
        "named after the other side"
    );
    assert_eq!(chats(&tc), (200, json!({"chats": []})));
    assert_eq!(chats("nope").0, 401);

    // A DM is not a group, even to its members.
    let (status, v) = h.call("GET", &format!("/v1/groups/{chat}"), Some(&ta), Value::Null);
    assert_eq!((status, code(&v)), (404, "unknown_chat"));

    // The chat outlives the friendship, but a new one cannot be opened without it.
    h.api.store.remove_friend(UserId(alice), UserId(bob)).unwrap();
    assert_eq!(code(&dm(&ta, json!({"user_id": bob})).1), "not_friends");
    assert_eq!(chats(&ta).1["chats"][0]["chat_id"], chat);
}

#[test]
fn groups_are_made_of_the_owners_friends_and_shown_only_to_members() {
    let h = harness(1000);
    let (alice, ta) = h.account("alice");
    let (bob, tb) = h.account("bob");
    let (carol, _) = h.account("carol");
    let (dave, td) = h.account("dave");
    h.befriend(alice, bob);
    h.befriend(alice, carol);
    h.befriend(bob, dave);
    let create = |token: &str, body: Value| h.call("POST", "/v1/groups", Some(token), body);

    let (status, v) = create(
        &ta,
        json!({"name": "the crew", "members": [bob, carol, bob, alice, carol]}),
    );
    assert_eq!(status, 201, "{v}");
    let group = v["chat_id"].as_u64().unwrap();
    let expected = json!({
        "chat_id": group,
        "name": "the crew",
        "owner": alice,
        "members": [entry(alice, "alice"), entry(bob, "bob"), entry(carol, "carol")],
    });
    let get = |token: &str, id: &str| h.call("GET", &format!("/v1/groups/{id}"), Some(token), Value::Null);
    assert_eq!(get(&ta, &group.to_string()), (200, expected.clone()));
    assert_eq!(get(&tb, &group.to_string()), (200, expected));
    let (status, v) = get(&td, &group.to_string());
    assert_eq!(
        (status, code(&v)),
        (404, "unknown_chat"),
        "a non-member learns nothing"
    );
    assert_eq!(code(&get(&ta, "999").1), "unknown_chat");
    for bad in ["abc", "0", "-3", "1.0", "99999999999999999999999"] {
        assert_eq!(code(&get(&ta, bad).1), "invalid_chat_id", "{bad:?}");
    }
    assert_eq!(get("nope", &group.to_string()).0, 401);

    // Every member must be the owner's friend; the first offender is named.
    let (status, v) = create(&ta, json!({"name": "g", "members": [bob, dave, 999]}));
    assert_eq!((status, code(&v)), (403, "not_friends"));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("user {dave} ")),
        "{v}"
    );
    assert_eq!(
        code(&create(&tb, json!({"name": "g", "members": [carol]})).1),
        "not_friends"
    );
    assert_eq!(
        code(&create(&ta, json!({"name": "g", "members": [0]})).1),
        "invalid_user_id"
    );

    for bad in ["", "   ", "a\nb", "tab\there", &"x".repeat(GROUP_NAME_MAX + 1)] {
        let (status, v) = create(&ta, json!({"name": bad, "members": []}));
        assert_eq!((status, code(&v)), (400, "invalid_group_name"), "{bad:?}");
    }
    assert_eq!(code(&create(&ta, json!({"name": "g"})).1), "missing_field");
    assert_eq!(
        code(&create(&ta, json!({"name": "g", "members": 5})).1),
        "invalid_type"
    );
    assert_eq!(
        code(&create(&ta, json!({"name": "g", "members": [], "owner": 1})).1),
        "unknown_field"
    );

    // Names up to 64 characters (not bytes); a group of one is fine.
    let long = "é".repeat(GROUP_NAME_MAX);
    let (status, v) = create(&tb, json!({"name": long, "members": []}));
    assert_eq!(status, 201, "{v}");
    let solo = v["chat_id"].as_u64().unwrap();
    assert_eq!(
        get(&tb, &solo.to_string()).1["members"],
        json!([entry(bob, "bob")])
    );
    assert_eq!(get(&tb, &solo.to_string()).1["name"], long.as_str());

    let (_, v) = h.call("GET", "/v1/chats", Some(&tb), Value::Null);
    assert_eq!(
        v,
        json!({"chats": [
            {"chat_id": group, "kind": "group", "name": "the crew", "last_seq": 0, "read_seq": 0, "unread": 0},
            {"chat_id": solo, "kind": "group", "name": long, "last_seq": 0, "read_seq": 0, "unread": 0},
        ]})
    );
}

#[test]
fn a_group_holds_at_most_100_members_owner_included() {
    let h = harness(1000);
    let (owner, token) = h.account("owner");
    let friends: Vec<u64> = (0..MAX_GROUP_MEMBERS)
        .map(|i| {
            let id = h.api.store.create_user(&format!("friend{i}"), PHC).unwrap().0;
            h.befriend(owner, id);
            id
        })
        .collect();
    let create = |members: &[u64]| {
        h.call(
            "POST",
            "/v1/groups",
            Some(&token),
            json!({"name": "big", "members": members}),
        )
    };
    // 100 friends + the owner = 101: refused, whatever the order.
    let (status, v) = create(&friends);
    assert_eq!((status, code(&v)), (409, "too_many_members"));
    assert!(v["error"]["message"].as_str().unwrap().contains("100"), "{v}");
    // 99 friends (+ duplicates and the owner, which collapse) = 100: accepted.
    let mut members = friends[..MAX_GROUP_MEMBERS - 1].to_vec();
    members.extend_from_slice(&friends[..10]);
    members.push(owner);
    let (status, v) = create(&members);
    assert_eq!(status, 201, "{v}");
    let chat = ChatId(v["chat_id"].as_u64().unwrap());
    assert_eq!(
        h.api.store.chat(chat).unwrap().unwrap().members.len(),
        MAX_GROUP_MEMBERS
    );
}

/// What the test, playing the chat's owner core, expects and answers.
struct Script {
    add: bool,
    user: u64,
    answer: Option<Result<(), MembershipError>>,
}

/// Plays the owner core of `chat` on `queue`: takes one `Command::Membership`
/// per script entry, checks it, and answers (or drops it unanswered).
fn owner_core(queue: &Receiver<Command>, chat: u64, actor: u64, script: Vec<Script>) {
    for step in script {
        // Friendship changes made while setting up go to the same queues.
        let command = loop {
            match queue.recv_timeout(Duration::from_secs(30)) {
                Ok(Command::FriendsChanged { .. }) => continue,
                other => break other,
            }
        };
        match command {
            Ok(Command::Membership { change, reply }) => {
                assert_eq!(
                    (change.chat, change.actor, change.user, change.add),
                    (ChatId(chat), UserId(actor), UserId(step.user), step.add)
                );
                if let Some(answer) = step.answer {
                    reply.send(answer).unwrap();
                }
            }
            Ok(other) => panic!("unexpected command {other:?}"),
            Err(e) => panic!("no membership command: {e}"),
        }
    }
}

#[test]
fn membership_changes_go_to_the_owner_core_and_its_answers_map_to_codes() {
    let h = harness(1000);
    let (alice, ta) = h.account("alice");
    let (bob, _) = h.account("bob");
    let (carol, _) = h.account("carol");
    let (dave, td) = h.account("dave");
    h.befriend(alice, bob);
    h.befriend(alice, carol);
    let group = h
        .api
        .store
        .create_group(UserId(alice), "g", &[UserId(bob)])
        .unwrap();
    let (dm, _) = h.api.store.create_dm(UserId(alice), UserId(bob)).unwrap();
    let owner = group.owner_core(2).0;
    let add = |token: &str, chat: &str, user: u64| {
        h.call(
            "POST",
            &format!("/v1/groups/{chat}/members"),
            Some(token),
            json!({"user_id": user}),
        )
    };
    let remove = |token: &str, chat: &str, user: &str| {
        h.call(
            "DELETE",
            &format!("/v1/groups/{chat}/members/{user}"),
            Some(token),
            Value::Null,
        )
    };
    let g = group.0.to_string();

    // Refused by the side-port alone: nothing reaches a core.
    assert_eq!(code(&add(&td, &g, carol).1), "unknown_chat", "dave is no member");
    assert_eq!(code(&remove(&td, &g, &bob.to_string()).1), "unknown_chat");
    assert_eq!(
        code(&add(&ta, &dm.0.to_string(), carol).1),
        "unknown_chat",
        "a DM"
    );
    assert_eq!(code(&add(&ta, "999", carol).1), "unknown_chat");
    assert_eq!(code(&add(&ta, "x", carol).1), "invalid_chat_id");
    assert_eq!(code(&add(&ta, &g, 0).1), "invalid_user_id");
    // A missing user is refused like a non-friend of the owner.
    assert_eq!(add(&ta, &g, 999).0, 403);
    assert_eq!(code(&add(&ta, &g, 999).1), "not_friends");
    assert_eq!(code(&remove(&ta, &g, "0").1), "invalid_user_id");
    assert_eq!(code(&remove(&ta, "0", "2").1), "invalid_chat_id");
    assert_eq!(add("nope", &g, carol).0, 401);
    assert!(h.queues.iter().all(|q| q.is_empty()));

    // Each call below takes one step of the script, in order.
    let step =
        |add: bool, user: u64, answer: Option<Result<(), MembershipError>>| Script { add, user, answer };
    let script = vec![
        step(true, carol, Some(Ok(()))),
        step(true, dave, Some(Err(MembershipError::NotFriends))),
        step(true, carol, Some(Err(MembershipError::AlreadyMember))),
        step(true, dave, Some(Err(MembershipError::TooManyMembers))),
        step(true, dave, Some(Err(MembershipError::NotOwner))),
        step(false, carol, Some(Ok(()))),
        step(false, carol, Some(Err(MembershipError::NotMember))),
        step(false, bob, Some(Err(MembershipError::UnknownChat))),
        step(false, bob, Some(Err(MembershipError::NotAGroup))),
        step(
            false,
            bob,
            Some(Err(MembershipError::Store(crate::core::ReadError::Unavailable(
                "disk".into(),
            )))),
        ),
        step(false, bob, None),
    ];
    let other_core = h.queues[1 - owner].clone();
    std::thread::scope(|s| {
        let queue = h.queues[owner].clone();
        let core = s.spawn(move || owner_core(&queue, group.0, alice, script));
        let b = bob.to_string();
        let c = carol.to_string();
        assert_eq!(
            add(&ta, &g, carol),
            (201, json!({"chat_id": group.0, "user_id": carol}))
        );
        let expect =
            |(status, v): (u16, Value), want: (u16, &str)| assert_eq!((status, code(&v)), want, "{v}");
        expect(add(&ta, &g, dave), (403, "not_friends"));
        expect(add(&ta, &g, carol), (409, "already_member"));
        expect(add(&ta, &g, dave), (409, "too_many_members"));
        expect(add(&ta, &g, dave), (403, "not_owner"));
        assert_eq!(remove(&ta, &g, &c), (204, Value::Null));
        expect(remove(&ta, &g, &c), (404, "not_member"));
        expect(remove(&ta, &g, &b), (404, "unknown_chat"));
        expect(remove(&ta, &g, &b), (404, "unknown_chat"));
        expect(remove(&ta, &g, &b), (503, "unavailable"));
        // The core dropped the change without answering (it is stopping).
        expect(remove(&ta, &g, &b), (503, "unavailable"));
        core.join().unwrap();
    });
    assert!(other_core.is_empty(), "only the owner core is asked");
}

#[test]
fn a_stopped_core_makes_membership_changes_unavailable() {
    let h = harness(1000);
    let (alice, ta) = h.account("alice");
    let (bob, _) = h.account("bob");
    h.befriend(alice, bob);
    let group = h.api.store.create_group(UserId(alice), "g", &[]).unwrap();
    // Every receiver of the core queues is gone: the send itself fails.
    let Harness { api, queues, .. } = h;
    drop(queues);
    let (status, v) = {
        let auth = format!("Bearer {ta}");
        let body = json!({"user_id": bob}).to_string();
        let r = api.handle(&Request {
            method: "POST",
            path: &format!("/v1/groups/{}/members", group.0),
            authorization: Some(&auth),
            body: body.as_bytes(),
            remote: ALICE_IP.parse().unwrap(),
        });
        (r.status, serde_json::from_str::<Value>(&r.body).unwrap())
    };
    assert_eq!((status, code(&v)), (503, "unavailable"));
}

#[test]
fn the_chat_list_shows_the_last_committed_seq() {
    let h = harness(1000);
    let (alice, ta) = h.account("alice");
    let (bob, tb) = h.account("bob");
    h.befriend(alice, bob);
    let (dm, _) = h.api.store.create_dm(UserId(alice), UserId(bob)).unwrap();
    let group = h
        .api
        .store
        .create_group(UserId(bob), "g", &[UserId(alice)])
        .unwrap();
    let ops: Vec<WriteOp> = (1..=3)
        .map(|seq| WriteOp::Message {
            origin: dm.owner_core(2),
            msg: StoredMessage {
                chat: dm,
                seq: Seq(seq),
                sender: UserId(alice),
                server_ts_ms: 1,
                client_msg_id: ClientMsgId(seq),
                text: "hi".into(),
                meta: Default::default(),
            },
        })
        .collect();
    h.api.store.commit_writes(&ops);
    let expected = json!({"chats": [
        // Alice sent all three: her own messages are never unread for her (issue 15).
        {"chat_id": dm.0, "kind": "direct", "name": "bob", "last_seq": 3, "read_seq": 0, "unread": 0},
        {"chat_id": group.0, "kind": "group", "name": "g", "last_seq": 0, "read_seq": 0, "unread": 0},
    ]});
    assert_eq!(
        h.call("GET", "/v1/chats", Some(&ta), Value::Null),
        (200, expected)
    );
    assert_eq!(
        h.call("GET", "/v1/chats", Some(&tb), Value::Null).1["chats"][0]["last_seq"],
        3
    );
    assert_eq!(
        h.call("GET", "/v1/chats", Some(&tb), Value::Null).1["chats"][0]["unread"],
        3
    );
    // Read markers: per user, capped at the last seq, never moved back.
    let read = format!("/v1/chats/{}/read", dm.0);
    assert_eq!(
        h.call("POST", &read, Some(&tb), json!({"seq": 2})),
        (200, json!({"chat_id": dm.0, "read_seq": 2, "unread": 1}))
    );
    assert_eq!(
        h.call("POST", &read, Some(&tb), json!({"seq": 1})).1["read_seq"],
        2
    );
    assert_eq!(
        h.call("POST", &read, Some(&tb), json!({"seq": 99})).1["read_seq"],
        3
    );
    assert_eq!(h.call("POST", &read, Some(&tb), json!({})).0, 400);
    assert_eq!(h.call("GET", &read, Some(&tb), Value::Null).0, 405);
    let listed = h.call("GET", "/v1/chats", Some(&tb), Value::Null).1;
    assert_eq!(
        (
            listed["chats"][0]["read_seq"].clone(),
            listed["chats"][0]["unread"].clone()
        ),
        (json!(3), json!(0))
    );
    assert_eq!(
        h.call("GET", "/v1/chats", Some(&ta), Value::Null).1["chats"][0]["unread"],
        0
    );
    let group_read = format!("/v1/chats/{}/read", group.0 + 1000);
    assert_eq!(h.call("POST", &group_read, Some(&tb), json!({"seq": 1})).0, 404);
}

/// Every `FriendsChanged` waiting in the core queues, as `(core, a, b)`.
fn friends_changed_commands(h: &Harness) -> Vec<(usize, u64, u64)> {
    let mut seen = Vec::new();
    for (core, queue) in h.queues.iter().enumerate() {
        while let Ok(command) = queue.try_recv() {
            match command {
                Command::FriendsChanged { a, b } => seen.push((core, a.0, b.0)),
                other => panic!("unexpected command {other:?}"),
            }
        }
    }
    seen
}

#[test]
fn friendship_changes_are_announced_to_both_home_cores() {
    let h = harness(1000);
    let (alice, ta) = h.account("alice");
    let (bob, tb) = h.account("bob");
    let homes = |a: u64, b: u64| {
        let mut homes = vec![UserId(a).home_core(2).0, UserId(b).home_core(2).0];
        homes.sort_unstable();
        homes.dedup();
        homes
    };
    let cores = |commands: Vec<(usize, u64, u64)>| commands.into_iter().map(|c| c.0).collect::<Vec<_>>();

    // A request alone changes no friendship.
    let ask = h.call(
        "POST",
        "/v1/friends/requests",
        Some(&ta),
        json!({"username": "bob"}),
    );
    assert_eq!(ask.0, 200);
    assert_eq!(friends_changed_commands(&h), vec![]);
    let path = format!("/v1/friends/requests/{alice}/accept");
    assert_eq!(h.call("POST", &path, Some(&tb), Value::Null).0, 200);
    let commands = friends_changed_commands(&h);
    assert!(
        commands.iter().all(|&(_, a, b)| (a, b) == (bob, alice)),
        "{commands:?}"
    );
    assert_eq!(cores(commands), homes(alice, bob));

    let path = format!("/v1/friends/{bob}");
    assert_eq!(h.call("DELETE", &path, Some(&ta), Value::Null).0, 204);
    assert_eq!(cores(friends_changed_commands(&h)), homes(alice, bob));

    // Crossing requests befriend at once: announced too.
    h.call(
        "POST",
        "/v1/friends/requests",
        Some(&ta),
        json!({"username": "bob"}),
    );
    assert_eq!(friends_changed_commands(&h), vec![]);
    h.call(
        "POST",
        "/v1/friends/requests",
        Some(&tb),
        json!({"username": "alice"}),
    );
    assert_eq!(cores(friends_changed_commands(&h)), homes(alice, bob));
}

/// Plays `user`'s home core for one `PresenceQuery`, answering `answer`.
fn answer_presence_query(queue: &Receiver<Command>, user: u64, answer: Result<(bool, u64), String>) {
    match queue.recv_timeout(Duration::from_secs(30)) {
        Ok(Command::PresenceQuery { user: u, reply }) => {
            assert_eq!(u, UserId(user));
            let answer = answer.map(|(online, last_seen_ms)| crate::core::UserPresence {
                user: u,
                online,
                last_seen_ms,
            });
            reply
                .send(answer.map_err(crate::core::ReadError::Unavailable))
                .unwrap();
        }
        other => panic!("expected a PresenceQuery, got {other:?}"),
    }
}

#[test]
fn presence_is_answered_by_the_home_core_for_friends_only() {
    let h = harness(1000);
    let (alice, ta) = h.account("alice");
    let (bob, _) = h.account("bob");
    let (carol, _) = h.account("carol");
    h.befriend(alice, bob);
    let get =
        |token: Option<&str>, query: &str| h.call("GET", &format!("/v1/presence{query}"), token, Value::Null);

    assert_eq!(get(None, &format!("?user_id={bob}")).0, 401);
    let (status, v) = get(Some(&ta), "");
    assert_eq!((status, code(&v)), (400, "missing_field"));
    for bad in ["?user_id=", "?user_id=x", "?user_id=0", "?user=2"] {
        let (status, v) = get(Some(&ta), bad);
        assert_eq!(status, 400, "{bad}: {v}");
    }
    // A missing user answers like a non-friend: user ids reveal nothing.
    let missing = get(Some(&ta), "?user_id=999");
    let (status, v) = get(Some(&ta), &format!("?user_id={carol}"));
    assert_eq!((status, code(&v)), (403, "not_friends"));
    assert_eq!(missing, (status, v));
    assert!(
        h.queues.iter().all(|q| q.is_empty()),
        "refusals never reach a core"
    );

    let home = UserId(bob).home_core(2).0;
    std::thread::scope(|s| {
        s.spawn(|| answer_presence_query(&h.queues[home], bob, Ok((false, 1_700_000_000_123))));
        let (status, v) = get(Some(&ta), &format!("?user_id={bob}&x=1"));
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v,
            json!({"user_id": bob, "online": false, "last_seen_ms": 1_700_000_000_123u64})
        );
    });
    // One's own presence is always visible.
    let home = UserId(alice).home_core(2).0;
    std::thread::scope(|s| {
        s.spawn(|| answer_presence_query(&h.queues[home], alice, Ok((true, 5))));
        let (status, v) = get(Some(&ta), &format!("?user_id={alice}"));
        assert_eq!((status, v["online"].clone()), (200, json!(true)));
    });
    // A store failure on the core is a 503.
    let home = UserId(bob).home_core(2).0;
    std::thread::scope(|s| {
        s.spawn(|| answer_presence_query(&h.queues[home], bob, Err("disk on fire".into())));
        let (status, v) = get(Some(&ta), &format!("?user_id={bob}"));
        assert_eq!((status, code(&v)), (503, "unavailable"));
    });
}

/// The side-port can answer any route with 503 when it is overloaded (every worker busy, or the
/// address over its connection cap), and the writes that grow the store with 507 below the disk
/// reserve (server/tests/disk_reserve.rs makes each of them refuse): openapi.json must say so, or
/// a client generated from it treats a documented refusal as a protocol error.
#[test]
fn openapi_documents_the_overload_and_storage_full_answers() {
    let spec: Value = serde_json::from_str(OPENAPI).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    let grows_the_store = [
        ("/v1/signup", "post"),
        ("/v1/friends/requests", "post"),
        ("/v1/friends/requests/{user_id}/accept", "post"),
        ("/v1/dms", "post"),
        ("/v1/groups", "post"),
        ("/v1/groups/{chat_id}/members", "post"),
        ("/v1/devices/{device_id}/pusher", "post"),
    ];
    let mut operations = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                continue;
            };
            operations += 1;
            assert!(
                responses["503"]["headers"]["Retry-After"].is_object(),
                "{method} {path}: no 503 with Retry-After"
            );
            let writes = grows_the_store.contains(&(path.as_str(), method.as_str()));
            assert_eq!(
                responses.contains_key("507"),
                writes,
                "{method} {path}: 507 storage_full listed {} but the route {} the store",
                responses.contains_key("507"),
                if writes { "grows" } else { "does not grow" }
            );
        }
    }
    assert!(operations >= 29, "only {operations} operations found");
}
