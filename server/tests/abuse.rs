//! Abuse resistance, end to end: each attack of issue 13 item 3 run against a
//! real natterd over loopback sockets (127.0.0.x source addresses stand for
//! many machines), bounded in count and time, while an honest client keeps
//! working. Each test prints one `abuse <attack>: ...` line with the honest
//! client's outcome and latency during the attack (`--nocapture` shows them);
//! the assertions are what a user cares about: the honest client gets through.
//!
//! `NATTER_BASELINE_NATTERD=/path/to/old/natterd` runs the same attacks against
//! another build (flags it does not know are left out), to measure "before".

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use natter_wire::{Body, ErrorCode, Frame, Limits, Send};
use serde_json::{Value, json};
use support::{TestServer, start_under, start_with, wait_until};

/// How long one honest request may take before it counts as failed.
const HONEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection from `source` (a loopback address) to `to`.
fn connect_from(source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&to.into(), HONEST_TIMEOUT)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(HONEST_TIMEOUT))?;
    stream.set_write_timeout(Some(HONEST_TIMEOUT))?;
    Ok(stream)
}

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    json: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

/// One request on a new connection from `source`; `Err` when no answer came
/// within [`HONEST_TIMEOUT`] (refused, reset, timed out).
fn http(
    server: SocketAddr,
    source: Ipv4Addr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<Answer, String> {
    let mut stream = connect_from(source, server).map_err(|e| format!("connect: {e}"))?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no answer: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    let retry_after = head
        .lines()
        .find_map(|l| l.strip_prefix("Retry-After: "))
        .and_then(|v| v.trim().parse().ok());
    Ok(Answer {
        status,
        retry_after,
        json: serde_json::from_str(body).unwrap_or(Value::Null),
    })
}

const HONEST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// The honest client's latencies during one attack.
#[derive(Default)]
struct Honest {
    ok: Vec<Duration>,
    failed: Vec<String>,
}

impl Honest {
    /// Times `op`; a request that fails (or answers something else than expected) counts as failed.
    fn time(&mut self, what: &str, op: impl FnOnce() -> Result<(), String>) {
        let started = Instant::now();
        match op() {
            Ok(()) => self.ok.push(started.elapsed()),
            Err(e) => self.failed.push(format!("{what}: {e}")),
        }
    }

    /// Prints the figure line and returns whether every request succeeded.
    fn report(&mut self, attack: &str) -> bool {
        self.ok.sort_unstable();
        let at = |q: f64| {
            self.ok
                .get(((self.ok.len() as f64 - 1.0) * q).round() as usize)
                .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
        };
        let total = self.ok.len() + self.failed.len();
        println!(
            "abuse {attack}: honest {}/{total} ok, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
            self.ok.len(),
            at(0.5),
            at(0.99),
            at(1.0),
            self.failed
                .first()
                .map(|f| format!("; first failure: {f}"))
                .unwrap_or_default()
        );
        self.failed.is_empty()
    }
}

fn expect_status(answer: Result<Answer, String>, status: u16) -> Result<(), String> {
    match answer {
        Ok(a) if a.status == status => Ok(()),
        Ok(a) => Err(format!("status {} {}", a.status, a.json)),
        Err(e) => Err(e),
    }
}

/// Health, signup and login on new connections from the honest address.
fn honest_side_port_round(server: &TestServer, honest: &mut Honest, round: usize, tag: &str) {
    let http_addr = server.http;
    honest.time("healthz", || {
        expect_status(http(http_addr, HONEST, "GET", "/healthz", None, None), 200)
    });
    if round.is_multiple_of(10) {
        let name = format!("{tag}{round}");
        let credentials = json!({"username": name, "password": "correct horse"}).to_string();
        honest.time("signup", || {
            expect_status(
                http(http_addr, HONEST, "POST", "/v1/signup", None, Some(&credentials)),
                201,
            )
        });
        let login =
            json!({"username": name, "password": "correct horse", "device_name": "phone"}).to_string();
        honest.time("login", || {
            expect_status(
                http(http_addr, HONEST, "POST", "/v1/login", None, Some(&login)),
                200,
            )
        });
    }
}

/// Opens `count` idle connections to `to`, `per_source` from each of the
/// addresses 127.<net>.x.y; keeps those the server left open.
fn idle_flood(to: SocketAddr, net: u8, count: usize, per_source: usize) -> Vec<TcpStream> {
    (0..count)
        .filter_map(|i| {
            let n = i / per_source;
            let source = Ipv4Addr::new(127, net, (n / 250) as u8, (n % 250) as u8 + 1);
            connect_from(source, to).ok()
        })
        .collect()
}

#[test]
fn side_port_floods_of_idle_sockets_leave_room_for_honest_clients() {
    let server = start_with(&[]);
    // 2,000 idle sockets from one address (on main: 4 of 160 probes answered).
    let flood = idle_flood(server.http, 2, 2000, 2000);
    let mut honest = Honest::default();
    for round in 0..40 {
        honest_side_port_round(&server, &mut honest, round, "onesrc");
    }
    let one_address = honest.report("side-port, 2000 idle sockets from one address");
    drop(flood);

    // 1,100 idle sockets from 110 addresses: more than all the side-port's slots.
    let flood = idle_flood(server.http, 3, 1100, 10);
    let mut honest = Honest::default();
    for round in 0..40 {
        honest_side_port_round(&server, &mut honest, round, "manysrc");
    }
    let many_addresses = honest.report("side-port, 1100 idle sockets from 110 addresses");
    drop(flood);
    assert!(
        one_address && many_addresses,
        "honest requests failed during the flood"
    );
}

#[test]
fn a_filled_rate_limit_table_never_locks_out_a_new_address() {
    // The table is shrunk to 1,000 addresses so that 3,000 fill it three
    // times over (the attack on main used 100,000 addresses against 100,000).
    // `NATTER_ABUSE_TABLE_FILL=100000` runs the attack at full size against
    // the default table instead (~20 s; for measuring, not for CI).
    let full: Option<u32> = std::env::var("NATTER_ABUSE_TABLE_FILL")
        .ok()
        .and_then(|v| v.parse().ok());
    let (addresses, table) = match full {
        Some(n) => (n, None),
        None => (3000, Some("1000")),
    };
    let mut flags = vec!["--auth-rate-limit", "30"];
    if let Some(table) = table {
        flags.extend(["--auth-rate-limit-table", table]);
    }
    let server = start_with(&flags);
    server.client().signup("honest", "correct horse").unwrap();
    let started = Instant::now();
    let mut locked_out = 0;
    for i in 0..addresses {
        let source = Ipv4Addr::new(
            127,
            4 + (i / 62_500) as u8,
            (i / 250 % 250) as u8,
            (i % 250) as u8 + 1,
        );
        // Every address is new to the limiter: each must get its 400 (missing fields), never 429.
        let answer = http(server.http, source, "POST", "/v1/login", None, Some("{}")).unwrap();
        match answer.status {
            400 => {}
            429 => locked_out += 1,
            _ => panic!("{answer:?}"),
        }
    }
    let fill = started.elapsed();
    let mut honest = Honest::default();
    let login =
        json!({"username": "honest", "password": "correct horse", "device_name": "phone"}).to_string();
    for i in 0..20u8 {
        let unseen = Ipv4Addr::new(127, 8, 0, i + 1);
        honest.time("login from an unseen address", || {
            expect_status(
                http(server.http, unseen, "POST", "/v1/login", None, Some(&login)),
                200,
            )
        });
    }
    let all_ok = honest.report(&format!(
        "rate-limit table, {addresses} addresses filled a {}-entry table in {:.1} s ({locked_out} of them got 429 at their first request)",
        table.unwrap_or("100000"),
        fill.as_secs_f64()
    ));
    assert!(
        all_ok && locked_out == 0,
        "an address the limiter had not seen was refused"
    );
    // The limit itself still holds for an address that uses it up.
    let busy = Ipv4Addr::new(127, 9, 0, 1);
    for _ in 0..30 {
        http(server.http, busy, "POST", "/v1/login", None, Some("{}")).unwrap();
    }
    let limited = http(server.http, busy, "POST", "/v1/login", None, Some("{}")).unwrap();
    assert_eq!((limited.status, limited.code()), (429, "rate_limited"));
    assert!(limited.retry_after.is_some_and(|s| s >= 1), "{limited:?}");
}

/// A `Hello` for `token` as raw bytes.
fn hello(token: &str) -> Vec<u8> {
    Frame::new(
        1,
        Body::Hello(natter_wire::Hello {
            token: token.into(),
            device: "honest".into(),
            protocol_version: natter_wire::PROTOCOL_VERSION,
            sync_first: false,
            conversation: false,
        }),
    )
    .encode()
    .to_vec()
}

/// Connects from the honest address, sends Hello, waits for Welcome.
fn honest_hello(to: SocketAddr, token: &str) -> Result<(), String> {
    let mut stream = connect_from(HONEST, to).map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(&hello(token))
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() >= 4 {
            let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize + 4;
            if buf.len() >= len {
                let frame = Frame::decode(&buf[..len], &Limits::default()).map_err(|e| format!("{e}"))?;
                return match frame.body {
                    Body::Welcome(_) => Ok(()),
                    other => Err(format!("{other:?}")),
                };
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap()
}

#[test]
fn silent_connections_up_to_past_the_file_limit_leave_room_for_honest_hellos() {
    // natterd may hold 1,200 files; the attack opens 1,300 silent connections
    // to the raw TCP port from 13 addresses, and 150 to each of TLS and WebSocket.
    let server = start_under(&["prlimit", "--nofile=1200:1200", "--"], &[]);
    let login = server.user("honest");
    let tls = SocketAddr::from(([127, 0, 0, 1], port_of(&server.url("tls"))));
    let ws = SocketAddr::from(([127, 0, 0, 1], port_of(&server.url("ws"))));
    let mut flood = idle_flood(server.tcp, 7, 1300, 100);
    flood.extend(idle_flood(tls, 8, 150, 50));
    flood.extend(idle_flood(ws, 9, 150, 50));
    let mut honest = Honest::default();
    for round in 0..30 {
        honest.time("hello", || honest_hello(server.tcp, &login.token));
        honest.time("healthz", || {
            expect_status(http(server.http, HONEST, "GET", "/healthz", None, None), 200)
        });
        if round % 10 == 0 {
            for scheme in ["tls", "ws"] {
                honest.time(&format!("{scheme} hello"), || {
                    natter_client::Connection::connect_url(
                        &server.url(scheme),
                        Some(&server.trust()),
                        &login.token,
                        "honest",
                    )
                    .map(drop)
                    .map_err(|e| e.to_string())
                });
            }
        }
    }
    let all_ok = honest.report("pending connections, 1600 silent sockets under a 1200-file limit");
    drop(flood);
    assert!(all_ok, "honest Hellos failed during the flood");
    // The flood did reach the limits: anonymous connections were closed to make room.
    let evicted: f64 = ["0", "1"]
        .iter()
        .filter_map(|core| server.metric(&format!("natter_preauth_evicted_total{{core=\"{core}\"}}")))
        .sum();
    println!("abuse pending connections: {evicted} anonymous connections evicted");
    assert!(
        evicted > 0.0,
        "the flood never filled the pre-authentication table"
    );
}

/// Runs `threads` attackers from 127.<net>.0.<i>, each making `each` login
/// attempts with `body`; returns the answers' statuses and Retry-After values.
fn login_storm(
    server: &TestServer,
    net: u8,
    threads: u8,
    each: usize,
    body: String,
) -> Vec<(u16, Option<u64>)> {
    let addr = server.http;
    let body = Arc::new(body);
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let body = body.clone();
            std::thread::spawn(move || {
                let source = Ipv4Addr::new(127, net, 0, i + 1);
                (0..each)
                    .map(
                        |_| match http(addr, source, "POST", "/v1/login", None, Some(&body)) {
                            Ok(a) => (a.status, a.retry_after),
                            Err(_) => (0, None),
                        },
                    )
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
}

/// Probes health and an authenticated cheap route until `stop`.
fn probe_cheap_routes(
    server: &TestServer,
    token: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Honest> {
    let addr = server.http;
    std::thread::spawn(move || {
        let mut honest = Honest::default();
        while !stop.load(Ordering::Relaxed) {
            honest.time("healthz", || {
                expect_status(http(addr, HONEST, "GET", "/healthz", None, None), 200)
            });
            honest.time("friends", || {
                expect_status(http(addr, HONEST, "GET", "/v1/friends", Some(&token), None), 200)
            });
        }
        honest
    })
}

#[test]
fn password_guessing_from_many_addresses_is_throttled_per_account() {
    let server = start_with(&[
        "--auth-rate-limit",
        "30",
        "--login-backoff-base",
        "200ms",
        "--login-backoff-max",
        "400ms",
        "--login-lockout",
        "1s",
    ]);
    server.client().signup("victim", "the real password").unwrap();
    let bystander = server.user("bystander");
    let stop = Arc::new(AtomicBool::new(false));
    let probe = probe_cheap_routes(&server, bystander.token.clone(), stop.clone());
    // 40 addresses × 30 wrong passwords: each address stays inside its own limit.
    let wrong = json!({"username": "victim", "password": "guess guess", "device_name": "x"}).to_string();
    let started = Instant::now();
    let answers = login_storm(&server, 10, 40, 30, wrong);
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut honest = probe.join().unwrap();
    let evaluated = answers.iter().filter(|(s, _)| *s == 401).count();
    let throttled: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    let all_ok = honest.report(&format!(
        "password guessing, 40 addresses x 30 guesses at one account: {evaluated} of {} evaluated, {} throttled, in {:.1} s",
        answers.len(),
        throttled.len(),
        took.as_secs_f64()
    ));
    assert!(all_ok, "cheap requests failed during the guessing");
    assert_eq!(
        evaluated + throttled.len(),
        answers.len(),
        "every guess answered 401 or 429"
    );
    // 5 free failures, then at most one per backoff wait (≥ 200 ms) while it lasted.
    let bound = 5 + (took.as_millis() / 200) as usize + 1;
    assert!(
        evaluated <= bound,
        "{evaluated} guesses evaluated in {took:?} (bound {bound})"
    );
    assert!(
        throttled.iter().all(|(_, r)| r.is_some_and(|s| s >= 1)),
        "429 without Retry-After"
    );
    // The owner is not locked out for good: after the wait, the right password works.
    let right =
        json!({"username": "victim", "password": "the real password", "device_name": "x"}).to_string();
    let owner_in = wait_until(Duration::from_secs(10), || {
        http(server.http, HONEST, "POST", "/v1/login", None, Some(&right)).is_ok_and(|a| a.status == 200)
    });
    assert!(owner_in, "the owner could not log in after the attack");
}

#[test]
fn cheap_requests_do_not_wait_behind_password_hashing() {
    // Real argon2 cost (OWASP), 10 addresses logging in as fast as their limit allows.
    let server = start_with(&[
        "--argon2-memory-kib",
        "19456",
        "--argon2-iterations",
        "2",
        "--auth-rate-limit",
        "30",
    ]);
    let http_client = server.client();
    for i in 0..10 {
        http_client.signup(&format!("user{i}"), "correct horse").unwrap();
    }
    let bystander = server.user("bystander");
    let stop = Arc::new(AtomicBool::new(false));
    let probe = probe_cheap_routes(&server, bystander.token.clone(), stop.clone());
    let handles: Vec<_> = (0..10u8)
        .map(|i| {
            let addr = server.http;
            std::thread::spawn(move || {
                let body =
                    json!({"username": format!("user{i}"), "password": "correct horse", "device_name": "x"})
                        .to_string();
                let source = Ipv4Addr::new(127, 11, 0, i + 1);
                (0..29)
                    .map(|_| {
                        http(addr, source, "POST", "/v1/login", None, Some(&body)).map_or(0, |a| a.status)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let mut honest = probe.join().unwrap();
    let logged_in = statuses.iter().filter(|s| **s == 200).count();
    let all_ok = honest.report(&format!(
        "login load, 10 addresses x 29 logins at OWASP cost: {logged_in}/{} logged in, {} answered 503",
        statuses.len(),
        statuses.iter().filter(|s| **s == 503).count()
    ));
    assert!(all_ok, "health or friends failed while logins were hashing");
    assert_eq!(
        logged_in,
        statuses.len(),
        "allowed logins were refused: {statuses:?}"
    );
}

/// Sends one `Send` and returns the Error frame's (code, message).
fn send_refusal(conn: &mut natter_client::Connection, chat_id: u64) -> (natter_client::ServerCode, String) {
    let body = Body::Send(Send {
        chat_id,
        client_msg_id: 7,
        text: "probe".into(),
    });
    match conn.request(body) {
        Err(natter_client::ClientError::Refused { code, message }) => (code, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn existence_oracles_answer_alike_and_friend_probes_are_throttled() {
    let server = start_with(&["--friend-request-rate-limit", "20"]);
    let (ann, bob, eve) = (server.user("ann"), server.user("bob"), server.user("eve"));
    let http_client = server.client();
    http_client.friend_request(&ann.token, "bob").unwrap();
    http_client.accept_friend(&bob.token, ann.user_id).unwrap();
    let chat = http_client.direct_chat(&ann.token, bob.user_id).unwrap();
    let (mut eve_conn, _) = server.connect("tcp", &eve);
    let existing = send_refusal(&mut eve_conn, chat);
    let missing = send_refusal(&mut eve_conn, chat + 1000);
    assert_eq!(
        existing.0,
        natter_client::ServerCode::Known(ErrorCode::UnknownChat)
    );
    assert_eq!(
        existing, missing,
        "a chat one is not in answers like a missing one"
    );

    // One account probing usernames: 20 lookups a minute, then 429 with Retry-After.
    let mut answered = 0;
    let mut first_limited = None;
    for i in 0..100 {
        let body = json!({"username": format!("probe{i}")}).to_string();
        let a = http(
            server.http,
            HONEST,
            "POST",
            "/v1/friends/requests",
            Some(&eve.token),
            Some(&body),
        )
        .unwrap();
        match a.status {
            429 => {
                first_limited.get_or_insert(i);
                assert!(a.retry_after.is_some_and(|s| s >= 1), "{a:?}");
            }
            _ => answered += 1,
        }
    }
    println!(
        "abuse friend-request probing: {answered} of 100 usernames looked up, first 429 at #{first_limited:?}"
    );
    assert_eq!(answered, 20, "the per-user friend-request limit");
}

#[test]
fn password_hashes_are_upgraded_at_login() {
    let mut server = start_with(&[]);
    server.client().signup("old", "correct horse").unwrap();
    // The server's cost is raised; the account still has its cheap hash.
    server.stop();
    server.set_args(&["--argon2-memory-kib", "64", "--argon2-iterations", "2"]);
    server.start_again();
    server.client().login("old", "correct horse", "phone").unwrap();
    server.stop();
    let store = natter_server::store::Store::open(&server.data_dir()).unwrap();
    let user = store.user_by_name("old").unwrap().unwrap();
    assert!(
        user.password_phc.starts_with("$argon2id$v=19$m=64,t=2,p=1$"),
        "not re-hashed: {}",
        user.password_phc
    );
    drop(store);
    server.start_again();
    server.client().login("old", "correct horse", "phone").unwrap();
}

#[test]
fn json_arrays_are_not_read_as_objects() {
    let server = start_with(&[]);
    for (path, body) in [
        ("/v1/signup", r#"["bob","correct horse"]"#),
        ("/v1/login", r#"["bob","correct horse","phone"]"#),
        ("/v1/signup", r#""bob""#),
        ("/v1/signup", "42"),
    ] {
        let a = http(server.http, HONEST, "POST", path, None, Some(body)).unwrap();
        assert_eq!(
            (a.status, a.code()),
            (400, "invalid_type"),
            "{path} {body}: {a:?}"
        );
        assert_eq!(a.json["error"]["message"], "the body must be a JSON object");
    }
    let login = server.client().login("bob", "correct horse", "phone");
    assert!(login.is_err(), "no account was created from an array");
}
