//! The push gateway client: the Matrix Push Gateway API request
//! (`POST /_matrix/push/v1/notify`), sent by a small pool of blocking sender
//! threads (never an event loop), with connect and response timeouts, and the
//! classification of each answer into sent / rejected / retry / refused.
//!
//! The body follows the spec's `notification` object: `event_id`, `room_id`
//! (our chat id), `type`, `sender`, `prio`, `counts.unread` (the user's total
//! unread count: the badge), and one entry in `devices` (`app_id`, `pushkey`,
//! `pushkey_ts`, `data`). natter's own fields go in the device's `data`, which
//! gateways hand to the app untouched: `chat_id`, `seq`, `chat_unread`,
//! `format`. The message text goes in `content.body` only for a `with_text`
//! pusher, cut to `--push-text-max` characters. A gateway answers
//! `{"rejected": [pushkey, …]}`: a pushkey listed there is dead and its
//! pusher is removed.

use std::time::Duration;

use serde::Serialize;

use crate::ids::{ChatId, DeviceId, Seq, UserId};
use crate::store::PushFormat;

/// The path every gateway URL must have (the Matrix Push Gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// One notification to send, built by the push thread.
#[derive(Clone, Debug)]
pub struct Job {
    /// The device's user.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// The chat.
    pub chat: ChatId,
    /// The newest message announced.
    pub seq: Seq,
    /// Where to post.
    pub gateway_url: String,
    /// The pushkey (only ever in the request body, never in a log).
    pub pushkey: String,
    /// The JSON body.
    pub body: String,
    /// A counts-only update (no message).
    pub badge_only: bool,
}

/// What one attempt came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The gateway took it (2xx) and did not reject the pushkey.
    Sent,
    /// The gateway took it and listed the pushkey in `rejected`.
    Rejected,
    /// Worth retrying: timeout, connection failure, 5xx, 408 or 429.
    Retry(FailureClass),
    /// The gateway refused the request itself (another 4xx): retrying the same
    /// request cannot help, so it is dropped.
    Refused,
}

/// Failure classes, one log line (and one metric label) each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// No TCP connection (refused, unreachable, DNS).
    Connect,
    /// No answer within the timeout.
    Timeout,
    /// A 5xx (or 408 / 429) answer.
    Status,
    /// The TLS handshake with an `https://` gateway failed (most often its
    /// certificate does not chain to the trusted roots: `--push-gateway-ca`).
    /// Retried with backoff, as the operator may fix the certificate.
    Tls,
    /// Another transport error (reset, malformed answer).
    Io,
    /// A 4xx other than 408 / 429: the request was refused (not retried).
    Refused,
}

impl FailureClass {
    /// The name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Status => "status",
            Self::Tls => "tls",
            Self::Io => "io",
            Self::Refused => "refused",
        }
    }
}

/// The content of one notification.
#[derive(Clone, Debug)]
pub struct Notification<'a> {
    /// The chat.
    pub chat: ChatId,
    /// The newest message's seq.
    pub seq: Seq,
    /// Its sender.
    pub sender: UserId,
    /// The sender's username, if known.
    pub sender_name: Option<&'a str>,
    /// The newest message's text (used only by `with_text`).
    pub text: Option<&'a str>,
    /// Unread in this chat.
    pub chat_unread: u64,
    /// Unread in all of the user's chats (the badge).
    pub total_unread: u64,
}

/// The JSON body of a notify request for one device.
///
/// Serialized from borrowed, typed fields straight into one `String` (no
/// `serde_json::Value` tree: building one per notification was a fifth of the
/// push thread's time). The text is cut to `text_max` characters.
pub fn body(
    n: &Notification<'_>,
    app_id: &str,
    pushkey: &str,
    pushkey_ts_s: u64,
    format: PushFormat,
    text_max: usize,
) -> String {
    let with_text = format == PushFormat::WithText;
    let content = n.text.filter(|_| with_text).map(|text| Content {
        msgtype: "m.text",
        body: cut_chars(text, text_max),
    });
    let notification = MessageNote {
        event_id: Shown(EventId(n.chat, n.seq)),
        room_id: Shown(n.chat.0),
        kind: "natter.message",
        sender: Shown(n.sender.0),
        prio: "high",
        counts: Counts {
            unread: n.total_unread,
        },
        devices: [Device {
            app_id,
            pushkey,
            pushkey_ts: pushkey_ts_s,
            data: Data {
                format: format.as_str(),
                chat_id: n.chat.0,
                seq: Some(n.seq.0),
                chat_unread: n.chat_unread,
                badge_only: None,
            },
        }],
        sender_display_name: n.sender_name.filter(|_| with_text),
        content,
    };
    to_json(&Envelope { notification })
}

/// The JSON body of a counts-only notification: the chat was read after a
/// notification was shown, so the badge (`counts.unread`) goes down. No
/// `event_id`, as the spec has it for badge updates; `data.badge_only` says so.
pub fn badge_body(
    chat: ChatId,
    chat_unread: u64,
    total_unread: u64,
    app_id: &str,
    pushkey: &str,
    pushkey_ts_s: u64,
    format: PushFormat,
) -> String {
    let notification = BadgeNote {
        prio: "low",
        counts: Counts { unread: total_unread },
        devices: [Device {
            app_id,
            pushkey,
            pushkey_ts: pushkey_ts_s,
            data: Data {
                format: format.as_str(),
                chat_id: chat.0,
                seq: None,
                chat_unread,
                badge_only: Some(true),
            },
        }],
    };
    to_json(&Envelope { notification })
}

/// Serializes a body; these types cannot fail to serialize, and an empty body
/// would only be refused by the gateway (a 4xx: dropped, logged), never panic.
fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `text` cut to at most `max` characters (on a character boundary).
fn cut_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => text.get(..end).unwrap_or(text),
        None => text,
    }
}

#[derive(Serialize)]
struct Envelope<N> {
    notification: N,
}

#[derive(Serialize)]
struct MessageNote<'a> {
    event_id: Shown<EventId>,
    room_id: Shown<u64>,
    #[serde(rename = "type")]
    kind: &'static str,
    sender: Shown<u64>,
    prio: &'static str,
    counts: Counts,
    devices: [Device<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    sender_display_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Content<'a>>,
}

#[derive(Serialize)]
struct BadgeNote<'a> {
    prio: &'static str,
    counts: Counts,
    devices: [Device<'a>; 1],
}

#[derive(Serialize)]
struct Counts {
    unread: u64,
}

#[derive(Serialize)]
struct Device<'a> {
    app_id: &'a str,
    pushkey: &'a str,
    pushkey_ts: u64,
    data: Data,
}

#[derive(Serialize)]
struct Data {
    format: &'static str,
    chat_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    chat_unread: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge_only: Option<bool>,
}

#[derive(Serialize)]
struct Content<'a> {
    msgtype: &'static str,
    body: &'a str,
}

/// The spec's `event_id` for a message: `"{chat}:{seq}"`.
struct EventId(ChatId, Seq);

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.0.0, self.1.0)
    }
}

/// Serializes its value as a JSON string through `Display` (ids the spec
/// types as strings), without an intermediate `String`.
struct Shown<T>(T);

impl<T: std::fmt::Display> Serialize for Shown<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// The blocking HTTP client shared by the sender threads (keep-alive pool).
#[derive(Clone, Debug)]
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// A client that gives up connecting after `connect` and waiting for a whole
    /// answer after `timeout`; no redirects (a gateway that redirects is
    /// misconfigured, and following one would leave the allow-list). It keeps
    /// up to `idle` connections open for reuse, per gateway host and in all:
    /// at least one per sender thread, or each request past the pool pays a
    /// new connection (ureq's default pool is 10 in all, which made 8 to 32
    /// senders reconnect constantly: a quarter of natterd's CPU in the bench).
    ///
    /// `https://` gateways are reached over rustls with the ring provider;
    /// their certificates must chain to `ca` (DER certificates, from
    /// `--push-gateway-ca`) or, when `ca` is empty, to the built-in Mozilla
    /// roots (webpki-roots), so natterd needs no system certificate store.
    pub fn new(connect: Duration, timeout: Duration, idle: usize, ca: &[Vec<u8>]) -> Self {
        let roots = if ca.is_empty() {
            ureq::tls::RootCerts::WebPki
        } else {
            let certs: Vec<ureq::tls::Certificate<'static>> = ca
                .iter()
                .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
                .collect();
            ureq::tls::RootCerts::new_with_certs(&certs)
        };
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .root_certs(roots)
            .build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(connect))
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .max_idle_connections(idle)
            .max_idle_connections_per_host(idle)
            .user_agent("natterd-push")
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            ureq::unversioned::transport::DefaultConnector::default(),
            BlockingResolver,
        );
        Self { agent }
    }

    /// Posts `job` and classifies the answer.
    pub fn send(&self, job: &Job) -> Outcome {
        let result = self
            .agent
            .post(&job.gateway_url)
            .header("Content-Type", "application/json")
            .send(job.body.as_bytes());
        let mut response = match result {
            Ok(r) => r,
            Err(e) => return Outcome::Retry(classify_error(&e)),
        };
        let status = response.status().as_u16();
        match status {
            200..=299 => {
                // A gateway that answers 2xx without a readable body took it.
                let text = response
                    .body_mut()
                    .with_config()
                    .limit(64 * 1024)
                    .read_to_string()
                    .unwrap_or_default();
                let rejected = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v.get("rejected")?
                            .as_array()
                            .map(|keys| keys.iter().any(|k| k.as_str() == Some(job.pushkey.as_str())))
                    })
                    .unwrap_or(false);
                if rejected {
                    Outcome::Rejected
                } else {
                    Outcome::Sent
                }
            }
            408 | 429 | 500..=599 => Outcome::Retry(FailureClass::Status),
            _ => Outcome::Refused,
        }
    }
}

/// Resolves gateway hosts on the sender thread itself. ureq's default resolver,
/// when a timeout is set, spawns a thread per request to bound the lookup, and
/// it resolves before it looks in its connection pool: a thread per
/// notification (a sixth of the senders' CPU in the bench). A gateway is
/// usually an IP address or a name in the local resolver's cache, and a slow
/// lookup only holds up one sender thread, never an event loop.
#[derive(Debug)]
struct BlockingResolver;

impl ureq::unversioned::resolver::Resolver for BlockingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        use std::net::ToSocketAddrs as _;
        let host = uri.host().ok_or(ureq::Error::HostNotFound)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let mut out = self.empty();
        for addr in (host, port).to_socket_addrs()?.take(16) {
            out.push(addr);
        }
        if out.is_empty() {
            Err(ureq::Error::HostNotFound)
        } else {
            Ok(out)
        }
    }
}

fn classify_error(error: &ureq::Error) -> FailureClass {
    match error {
        ureq::Error::Timeout(_) => FailureClass::Timeout,
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => FailureClass::Connect,
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => FailureClass::Connect,
        ureq::Error::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => FailureClass::Timeout,
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) | ureq::Error::TlsRequired => FailureClass::Tls,
        // rustls reports a refused certificate as an io::Error wrapping its own.
        ureq::Error::Io(e) if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => {
            FailureClass::Tls
        }
        _ => FailureClass::Io,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_content_free_unless_asked_and_cut_text() {
        let n = Notification {
            chat: ChatId(5),
            seq: Seq(9),
            sender: UserId(2),
            sender_name: Some("alice"),
            text: Some("héllo world"),
            chat_unread: 3,
            total_unread: 7,
        };
        let free: serde_json::Value =
            serde_json::from_str(&body(&n, "app", "KEY", 1, PushFormat::ContentFree, 4)).unwrap();
        let note = &free["notification"];
        assert_eq!(note["counts"]["unread"], 7);
        assert_eq!(note["devices"][0]["pushkey"], "KEY");
        assert_eq!(note["devices"][0]["data"]["chat_unread"], 3);
        assert_eq!(note["devices"][0]["data"]["seq"], 9);
        assert!(note.get("content").is_none() && note.get("sender_display_name").is_none());
        let text: serde_json::Value =
            serde_json::from_str(&body(&n, "app", "KEY", 1, PushFormat::WithText, 4)).unwrap();
        assert_eq!(text["notification"]["content"]["body"], "héll");
        assert_eq!(text["notification"]["sender_display_name"], "alice");
    }

    #[test]
    fn bodies_have_the_spec_shape_field_for_field() {
        let n = Notification {
            chat: ChatId(5),
            seq: Seq(9),
            sender: UserId(2),
            sender_name: Some("alice \"a\""),
            text: Some("héllo"),
            chat_unread: 3,
            total_unread: 7,
        };
        let parse = |s: String| serde_json::from_str::<serde_json::Value>(&s).unwrap();
        let device = |data: serde_json::Value| serde_json::json!([{"app_id": "app", "pushkey": "KEY", "pushkey_ts": 1, "data": data}]);
        let free = serde_json::json!({"notification": {
            "event_id": "5:9", "room_id": "5", "type": "natter.message", "sender": "2",
            "prio": "high", "counts": {"unread": 7},
            "devices": device(serde_json::json!({"format": "content_free", "chat_id": 5, "seq": 9, "chat_unread": 3})),
        }});
        assert_eq!(
            parse(body(&n, "app", "KEY", 1, PushFormat::ContentFree, 200)),
            free
        );
        let mut text = free.clone();
        text["notification"]["devices"][0]["data"]["format"] = "with_text".into();
        text["notification"]["sender_display_name"] = "alice \"a\"".into();
        text["notification"]["content"] = serde_json::json!({"msgtype": "m.text", "body": "héllo"});
        assert_eq!(parse(body(&n, "app", "KEY", 1, PushFormat::WithText, 5)), text);
        let badge = serde_json::json!({"notification": {
            "prio": "low", "counts": {"unread": 7},
            "devices": device(serde_json::json!({"format": "content_free", "chat_id": 5, "chat_unread": 3, "badge_only": true})),
        }});
        assert_eq!(
            parse(badge_body(
                ChatId(5),
                3,
                7,
                "app",
                "KEY",
                1,
                PushFormat::ContentFree
            )),
            badge
        );
        assert_eq!(cut_chars("héllo", 0), "");
        assert_eq!(cut_chars("héllo", 2), "hé");
        assert_eq!(cut_chars("héllo", 99), "héllo");
    }
}
