//! End-to-end: push notifications against a real natterd and a real HTTP
//! gateway stub (`support/gateway.rs`) — an offline device gets exactly one
//! coalesced notification for a burst, with the right counts; an online device
//! gets none; 500s and a hang are retried until delivered; a rejected pushkey
//! stops being used; kill -9 between the commit and the push still delivers
//! after the restart; a read marker cancels what is owed and lowers the badge
//! of a device already notified; pushers only for
//! the caller's own devices, gateways only from the allow-list.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use natter_client::{Connection, Login};
use natter_wire::{Body, Frame, Send};
use serde_json::{Value, json};
use support::gateway::{Answer, Gateway};
use support::{TestServer, start_with, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse battery";

/// natterd posting to `gateway`, with short push timings for tests.
fn server(gateway: &Gateway, extra: &[&str]) -> TestServer {
    let url = gateway.url();
    let mut args = vec![
        "--send-rate-limit",
        "1000000",
        "--push-gateway",
        &url,
        "--push-coalesce",
        "1s",
        "--push-timeout",
        "1s",
        "--push-settle",
        "300ms",
    ];
    args.extend_from_slice(extra);
    start_with(&args)
}

struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    fn new(server: &TestServer) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Self {
            agent,
            base: server.http_url(),
        }
    }

    fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {token}");
        let result = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send(b.to_string().as_bytes()),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            _ => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut resp = result.expect("HTTP exchange");
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn set_pusher(&self, login: &Login, key: &str, extra: Value) -> (u16, Value) {
        let mut body = json!({"app_id": "com.example.natter", "pushkey": key});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.call(
            "POST",
            &format!("/v1/devices/{}/pusher", login.device_id),
            &login.token,
            Some(body),
        )
    }
}

/// alice and bob, friends, with a direct chat; bob's `phone` has a pusher.
struct World {
    alice: Login,
    bob: Login,
    chat: u64,
}

fn world(server: &TestServer, http: &Http) -> World {
    let api = server.client();
    let alice = server.user("alice");
    let bob = server.user("bob");
    api.friend_request(&alice.token, "bob").unwrap();
    api.accept_friend(&bob.token, alice.user_id).unwrap();
    let chat = api.direct_chat(&alice.token, bob.user_id).unwrap();
    let phone = api.login("bob", PASSWORD, "phone").unwrap();
    let (status, body) = http.set_pusher(&phone, "PHONE-KEY", json!({}));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["format"], "content_free");
    World {
        alice,
        bob: phone,
        chat,
    }
}

/// Sends `count` messages pipelined and waits for every SendOk.
fn send(server: &TestServer, from: &Login, chat: u64, first_cmid: u64, count: u64) {
    let (mut conn, _) = Connection::connect(server.tcp, &from.token, "sender").unwrap();
    for i in 0..count {
        conn.send_body(Body::Send(Send {
            chat_id: chat,
            client_msg_id: first_cmid + i,
            text: format!("message {i}"),
        }))
        .unwrap();
    }
    let mut acked = 0;
    while acked < count {
        match conn.recv_timeout(DEADLINE).unwrap() {
            Some(Frame {
                body: Body::SendOk(_),
                ..
            }) => acked += 1,
            Some(Frame {
                body: Body::Error(e), ..
            }) => panic!("send refused: {e:?}"),
            Some(_) => {}
            None => panic!("{acked} of {count} sends acknowledged"),
        }
    }
}

fn metric(server: &TestServer, name: &str) -> f64 {
    server.metric(name).unwrap_or(-1.0)
}

#[test]
fn an_offline_device_gets_exactly_one_coalesced_notification_with_the_counts() {
    let gateway = Gateway::start();
    let server = server(&gateway, &[]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 5);
    assert!(wait_until(DEADLINE, || gateway.count() >= 1));
    // Everything owed was covered by that one: the table is empty, nothing more comes.
    assert!(wait_until(DEADLINE, || {
        metric(&server, "natter_push_sent_total") == 1.0 && metric(&server, "natter_push_queue_depth") == 0.0
    }));
    let got = gateway.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let n = &got[0].body["notification"];
    assert_eq!(got[0].path, "/_matrix/push/v1/notify");
    assert_eq!(got[0].pushkey(), "PHONE-KEY");
    assert_eq!(n["devices"][0]["app_id"], "com.example.natter");
    assert_eq!(got[0].seq(), 5, "the newest message");
    assert_eq!(n["devices"][0]["data"]["chat_id"], w.chat);
    assert_eq!(n["devices"][0]["data"]["chat_unread"], 5);
    assert_eq!(n["counts"]["unread"], 5, "the badge");
    assert_eq!(n["sender"], w.alice.user_id.to_string());
    assert!(n.get("content").is_none(), "content-free by default: {n}");
    assert_eq!(metric(&server, "natter_push_coalesced_total"), 4.0);
}

#[test]
fn with_text_carries_the_text_cut_and_the_senders_own_devices_get_nothing() {
    let gateway = Gateway::start();
    let server = server(&gateway, &["--push-text-max", "7"]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    let (status, _) = http.set_pusher(&w.bob, "PHONE-KEY", json!({"format": "with_text"}));
    assert_eq!(status, 200, "replacing a pusher");
    // alice's own second device has a pusher too; her own message owes it nothing.
    let alice_phone = server.client().login("alice", PASSWORD, "phone").unwrap();
    assert_eq!(http.set_pusher(&alice_phone, "ALICE-KEY", json!({})).0, 201);
    send(&server, &w.alice, w.chat, 1, 1);
    assert!(wait_until(DEADLINE, || gateway.count() >= 1));
    assert!(wait_until(DEADLINE, || metric(
        &server,
        "natter_push_queue_depth"
    ) == 0.0));
    let got = gateway.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].pushkey(), "PHONE-KEY");
    assert_eq!(got[0].body["notification"]["content"]["body"], "message");
    assert_eq!(got[0].body["notification"]["sender_display_name"], "alice");
}

#[test]
fn an_online_device_gets_none() {
    let gateway = Gateway::start();
    let server = server(&gateway, &[]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    let (mut phone, _) = Connection::connect(server.tcp, &w.bob.token, "phone").unwrap();
    send(&server, &w.alice, w.chat, 1, 3);
    assert!(wait_until(DEADLINE, || {
        metric(&server, "natter_push_skipped_live_total") >= 1.0
            && metric(&server, "natter_push_queue_depth") == 0.0
    }));
    assert_eq!(gateway.count(), 0, "{:?}", gateway.received());
    phone.ping().unwrap();
}

#[test]
fn gateway_500s_are_retried_and_delivered_once_it_recovers() {
    let gateway = Gateway::start();
    gateway.script(&[Answer::Status(500), Answer::Status(503)]);
    let server = server(&gateway, &[]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 1);
    assert!(wait_until(DEADLINE, || metric(&server, "natter_push_sent_total") == 1.0));
    let got = gateway.received();
    assert_eq!(got.len(), 3, "two failures, then the delivery: {got:?}");
    assert!(got.iter().all(|r| r.seq() == 1 && r.pushkey() == "PHONE-KEY"));
    // Backoff: the second retry waited longer than the first (equal jitter keeps
    // each delay in the upper half of its doubling window).
    let (d1, d2) = (got[1].at - got[0].at, got[2].at - got[1].at);
    assert!(d1 >= Duration::from_millis(400), "{d1:?}");
    assert!(d2 >= Duration::from_millis(900), "{d2:?}");
    assert_eq!(metric(&server, "natter_push_retried_total"), 2.0);
    assert_eq!(metric(&server, "natter_push_failed_total"), 2.0);
}

#[test]
fn a_hanging_gateway_times_out_and_is_retried() {
    let gateway = Gateway::start();
    gateway.script(&[Answer::Hang]);
    let server = server(&gateway, &[]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 1);
    assert!(wait_until(DEADLINE, || metric(&server, "natter_push_sent_total") == 1.0));
    let got = gateway.received();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[1].at - got[0].at >= Duration::from_secs(1),
        "the 1 s timeout passed first"
    );
    assert_eq!(metric(&server, "natter_push_failed_total"), 1.0);
}

#[test]
fn a_rejected_pushkey_stops_being_used() {
    let gateway = Gateway::start();
    gateway.script(&[Answer::Reject]);
    let server = server(&gateway, &[]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 1);
    assert!(wait_until(DEADLINE, || metric(
        &server,
        "natter_push_rejected_total"
    ) == 1.0));
    let (status, body) = http.call(
        "GET",
        &format!("/v1/devices/{}/pusher", w.bob.device_id),
        &w.bob.token,
        None,
    );
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("no_pusher")));
    // A witness: bob's tablet, with its own key, gets the next message; the
    // rejected key is not used for it.
    let tablet = server.client().login("bob", PASSWORD, "tablet").unwrap();
    assert_eq!(http.set_pusher(&tablet, "TABLET-KEY", json!({})).0, 201);
    send(&server, &w.alice, w.chat, 2, 1);
    assert!(wait_until(DEADLINE, || gateway.count() >= 2));
    assert!(wait_until(DEADLINE, || metric(
        &server,
        "natter_push_queue_depth"
    ) == 0.0));
    let keys: Vec<String> = gateway
        .received()
        .iter()
        .map(|r| r.pushkey().to_owned())
        .collect();
    assert_eq!(keys, ["PHONE-KEY", "TABLET-KEY"]);
}

#[test]
fn kill9_between_commit_and_push_still_delivers_after_restart() {
    let gateway = Gateway::start();
    // A long settle: the push is still owed (in memory only) when natterd dies.
    let mut server = server(&gateway, &["--push-settle", "3s"]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 2);
    server.kill9();
    assert_eq!(gateway.count(), 0, "nothing was pushed before the kill");
    server.start_again();
    assert!(wait_until(DEADLINE, || gateway.count() >= 1));
    assert!(wait_until(DEADLINE, || metric(
        &server,
        "natter_push_queue_depth"
    ) == 0.0));
    let got = gateway.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].seq(), 2);
    assert_eq!(got[0].body["notification"]["counts"]["unread"], 2);
    // Sent once: a second restart owes nothing (the watermark survived).
    server.kill9();
    server.start_again();
    send(&server, &w.alice, w.chat, 3, 1);
    assert!(wait_until(DEADLINE, || gateway.count() >= 2));
    let got = gateway.received();
    assert_eq!(got.iter().map(|r| r.seq()).collect::<Vec<_>>(), [2, 3]);
}

#[test]
fn a_read_marker_cancels_what_is_owed() {
    let gateway = Gateway::start();
    let server = server(&gateway, &["--push-settle", "2s"]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 2);
    // bob reads on another device before the notification is due.
    server.client().mark_read(&w.bob.token, w.chat, 2).unwrap();
    assert!(wait_until(DEADLINE, || metric(
        &server,
        "natter_push_queue_depth"
    ) == 0.0));
    // A witness message afterwards arrives alone, with the lowered counts.
    send(&server, &w.alice, w.chat, 3, 1);
    assert!(wait_until(DEADLINE, || gateway.count() >= 1));
    let got = gateway.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].seq(), 3);
    assert_eq!(got[0].body["notification"]["counts"]["unread"], 1);
}

#[test]
fn reading_after_a_notification_lowers_the_badge() {
    let gateway = Gateway::start();
    let server = server(&gateway, &[]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 2);
    assert!(wait_until(DEADLINE, || gateway.count() >= 1));
    assert_eq!(gateway.received()[0].body["notification"]["counts"]["unread"], 2);
    // bob reads on another device: the phone's badge goes down to 0.
    server.client().mark_read(&w.bob.token, w.chat, 2).unwrap();
    assert!(wait_until(DEADLINE, || gateway.count() >= 2));
    assert!(wait_until(DEADLINE, || metric(
        &server,
        "natter_push_queue_depth"
    ) == 0.0));
    let got = gateway.received();
    assert_eq!(got.len(), 2, "{got:?}");
    let badge = &got[1].body["notification"];
    assert_eq!(badge["counts"]["unread"], 0);
    assert_eq!(badge["devices"][0]["data"]["badge_only"], true);
    assert!(
        badge.get("event_id").is_none(),
        "no message in a badge update: {badge}"
    );
    // Reading again changes nothing more.
    server.client().mark_read(&w.bob.token, w.chat, 2).unwrap();
    send(&server, &w.alice, w.chat, 3, 1);
    assert!(wait_until(DEADLINE, || gateway.count() >= 3));
    let got = gateway.received();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2].seq(), 3);
}

#[test]
fn a_pusher_cannot_be_registered_for_another_users_device() {
    let gateway = Gateway::start();
    let server = server(&gateway, &[]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    let path = format!("/v1/devices/{}/pusher", w.bob.device_id);
    let body = json!({"app_id": "a", "pushkey": "MINE"});
    let (status, answer) = http.call("POST", &path, &w.alice.token, Some(body));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (404, Some("unknown_device"))
    );
    let (status, _) = http.call("GET", &path, &w.alice.token, None);
    assert_eq!(status, 404);
    let (status, _) = http.call("DELETE", &path, &w.alice.token, None);
    assert_eq!(status, 404);
    // bob's pusher is untouched; he may delete it himself.
    let (status, answer) = http.call("GET", &path, &w.bob.token, None);
    assert_eq!((status, answer["pushkey"].as_str()), (200, Some("PHONE-KEY")));
    assert_eq!(http.call("DELETE", &path, &w.bob.token, None).0, 204);
    assert_eq!(http.call("DELETE", &path, &w.bob.token, None).0, 404);
}

#[test]
fn a_gateway_url_outside_the_allow_list_is_refused() {
    let gateway = Gateway::start();
    let other = Gateway::start();
    let allowed = Gateway::start();
    let server = server(&gateway, &["--push-gateway-allow", &allowed.authority()]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    let (status, answer) = http.set_pusher(&w.bob, "K", json!({"gateway_url": other.url()}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("gateway_not_allowed"))
    );
    let (status, answer) = http.set_pusher(&w.bob, "K", json!({"gateway_url": "http://127.0.0.1/elsewhere"}));
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_gateway_url"))
    );
    let (status, answer) = http.set_pusher(&w.bob, "K", json!({"gateway_url": allowed.url()}));
    assert_eq!(status, 200, "{answer}");
    // Notifications go to the allowed gateway the pusher named, nowhere else.
    send(&server, &w.alice, w.chat, 1, 1);
    assert!(wait_until(DEADLINE, || allowed.count() >= 1));
    assert_eq!((gateway.count(), other.count()), (0, 0));
}

#[test]
fn an_https_gateway_is_reached_through_the_ca_given() {
    let gateway = Gateway::start_https();
    let ca = gateway.ca_file().unwrap();
    let server = server(&gateway, &["--push-gateway-ca", ca.to_str().unwrap()]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 2);
    assert!(wait_until(DEADLINE, || metric(&server, "natter_push_sent_total") == 1.0));
    let got = gateway.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].pushkey(), got[0].seq()), ("PHONE-KEY", 2));
    assert_eq!(got[0].body["notification"]["counts"]["unread"], 2);
    assert_eq!(metric(&server, "natter_push_failed_total"), 0.0);
}

#[test]
fn an_https_gateway_whose_certificate_does_not_chain_to_the_roots_gets_nothing() {
    // Without --push-gateway-ca natterd trusts only the built-in Mozilla roots,
    // which did not sign the stub's certificate: every attempt fails the handshake
    // (and is retried), and no request reaches the gateway.
    let gateway = Gateway::start_https();
    let server = server(&gateway, &[]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 1);
    assert!(wait_until(DEADLINE, || metric(
        &server,
        "natter_push_retried_total"
    ) >= 2.0));
    assert_eq!(gateway.count(), 0, "{:?}", gateway.received());
    assert_eq!(metric(&server, "natter_push_sent_total"), 0.0);
}

#[test]
fn a_bad_push_gateway_ca_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    for path in [not_pem, dir.path().join("missing.pem")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_natterd"))
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(["--push-gateway-ca", path.to_str().unwrap()])
            .args([
                "--http-port",
                "0",
                "--tcp-port",
                "0",
                "--tls-port",
                "off",
                "--ws-port",
                "off",
                "--quic-port",
                "off",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "natterd started with {path:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("push-gateway-ca"), "{stderr}");
    }
}

#[test]
fn the_badge_counts_every_chat_including_one_created_and_one_read_since_the_last_notification() {
    let gateway = Gateway::start();
    let server = server(&gateway, &[]);
    let http = Http::new(&server);
    let w = world(&server, &http);
    send(&server, &w.alice, w.chat, 1, 2);
    assert!(wait_until(DEADLINE, || gateway.count() >= 1));
    assert_eq!(gateway.received()[0].body["notification"]["counts"]["unread"], 2);
    // A group created after bob's chats were counted: its first messages count too.
    let group = server
        .client()
        .create_group(&w.alice.token, "later", &[w.bob.user_id])
        .unwrap();
    send(&server, &w.alice, group, 10, 3);
    assert!(wait_until(DEADLINE, || gateway.count() >= 2));
    let n = gateway.received()[1].body["notification"].clone();
    assert_eq!(n["devices"][0]["data"]["chat_id"], group, "{n}");
    assert_eq!(n["devices"][0]["data"]["chat_unread"], 3);
    assert_eq!(n["counts"]["unread"], 2 + 3, "both chats: {n}");
    // bob reads the direct chat up to 1: the badge update and the next
    // notification count the read marker as it is now.
    server.client().mark_read(&w.bob.token, w.chat, 1).unwrap();
    assert!(wait_until(DEADLINE, || gateway.count() >= 3));
    let badge = gateway.received()[2].body["notification"].clone();
    assert_eq!(badge["devices"][0]["data"]["badge_only"], true, "{badge}");
    assert_eq!(badge["counts"]["unread"], 1 + 3, "{badge}");
    send(&server, &w.alice, w.chat, 20, 1);
    assert!(wait_until(DEADLINE, || gateway.count() >= 4));
    let n = gateway.received()[3].body["notification"].clone();
    assert_eq!(n["devices"][0]["data"]["seq"], 3, "{n}");
    assert_eq!(n["devices"][0]["data"]["chat_unread"], 2);
    assert_eq!(n["counts"]["unread"], 2 + 3, "{n}");
}

/// `(thread name, nice value)` of every thread of `pid`, from `/proc/<pid>/task`.
fn thread_nice(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(entry.path().join("comm")),
            std::fs::read_to_string(entry.path().join("stat")),
        ) else {
            continue;
        };
        // Field 19 (nice) is the 17th after the command name's closing paren.
        let after = &stat[stat.rfind(')').unwrap() + 1..];
        let nice: i32 = after.split_whitespace().nth(16).unwrap().parse().unwrap();
        out.push((comm.trim().to_owned(), nice));
    }
    out
}

#[test]
fn the_push_threads_run_at_a_lower_priority_than_the_event_loops() {
    let gateway = Gateway::start();
    let server = server(&gateway, &[]);
    let senders = natter_server::push::PushConfig::default().senders;
    let is_push = |name: &str| name.starts_with("natter-push");
    let nice_of = |threads: &[(String, i32)], prefix: &str| -> Vec<i32> {
        threads
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .map(|(_, n)| *n)
            .collect()
    };
    // The push threads start beside the listeners, and each lowers its own priority as its
    // first step: wait until all are there and lowered (a thread that never lowers itself
    // times this out).
    let mut threads = Vec::new();
    let mut expected = None;
    let lowered = wait_until(DEADLINE, || {
        threads = thread_nice(server.pid());
        let Some(&base) = nice_of(&threads, "natter-core-").first() else {
            return false;
        };
        // Run under `nice -n 9` or more the +10 is clamped at 19, the lowest priority.
        let want = (base + natter_server::push::PUSH_NICE).min(19);
        expected = Some(want);
        let push = nice_of(&threads, "natter-push");
        push.len() == 1 + senders && push.iter().all(|n| *n == want)
    });
    assert!(
        lowered,
        "the push thread and its {senders} senders at {expected:?}: {threads:?}"
    );
    let cores = nice_of(&threads, "natter-core-");
    let writer = nice_of(&threads, "natter-store-wr");
    assert!(!cores.is_empty() && !writer.is_empty(), "{threads:?}");
    assert!(
        cores.iter().chain(&writer).all(|n| *n == cores[0]),
        "the cores and the writer keep natterd's priority: {threads:?}"
    );
    assert!(threads.iter().filter(|(name, _)| is_push(name)).count() == 1 + senders);
}
