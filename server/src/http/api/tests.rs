//! Unit tests of [`Api::handle`] over a real store in a temporary directory:
//! every route, validation branch and error code, no sockets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use serde_json::{Value, json};

use super::*;
use crate::config::{Config, PasswordCost};
use crate::runtime::Command;

pub(crate) struct Harness {
    pub(crate) api: Arc<Api>,
    queues: Vec<Receiver<Command>>,
    _polls: Vec<mio::Poll>,
    _dir: tempfile::TempDir,
}

const ALICE_IP: &str = "192.0.2.1";

pub(crate) fn harness(auth_rate_limit: u32) -> Harness {
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
        auth_rate_limit,
        ..Config::default()
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
    Endpoints {
        http: SocketAddr::from(([127, 0, 0, 1], 7180)),
        tcp: SocketAddr::from(([127, 0, 0, 1], 7100)),
    }
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
        (200, json!({"http": "127.0.0.1:7180", "tcp": "127.0.0.1:7100"}))
    );
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_405() {
    let h = harness(30);
    for path in [
        "",
        "/",
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
    assert_eq!(
        v["endpoints"],
        json!({"http": "127.0.0.1:7180", "tcp": "127.0.0.1:7100"})
    );
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
    let all = [
        HttpError::BadRequest,
        HttpError::MalformedJson,
        HttpError::UnknownField,
        HttpError::MissingField,
        HttpError::InvalidType,
        HttpError::InvalidUsername,
        HttpError::InvalidPassword,
        HttpError::InvalidDeviceName,
        HttpError::InvalidUserId,
        HttpError::CannotBefriendSelf,
        HttpError::InvalidToken,
        HttpError::InvalidCredentials,
        HttpError::NotFound,
        HttpError::UserNotFound,
        HttpError::NoFriendRequest,
        HttpError::NotFriends,
        HttpError::MethodNotAllowed,
        HttpError::UsernameTaken,
        HttpError::LengthRequired,
        HttpError::BodyTooLarge,
        HttpError::RateLimited,
        HttpError::HeadersTooLarge,
        HttpError::Internal,
        HttpError::Unavailable,
    ];
    let mut codes: Vec<_> = all.iter().map(|e| e.code()).collect();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), all.len());
    for e in all {
        let v: Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], e.code());
        assert!((400..600).contains(&e.status()));
    }
}
