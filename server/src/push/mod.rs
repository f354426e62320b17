//! Push notifications through a push gateway (the Matrix Push Gateway API),
//! for devices that have a pusher and no live session.
//!
//! natterd holds no APNs / FCM credentials: it posts to the app vendor's
//! gateway (`POST …/_matrix/push/v1/notify`, e.g. Sygnal), which does.
//!
//! * `mod.rs` — [`PushConfig`], the [`PushHandle`] the writer thread and the
//!   side-port feed, gateway URL checks ([`check_gateway_url`]), and [`start`].
//! * `schedule.rs` — the sans-IO timing logic: coalescing, settle, backoff with
//!   jitter, per-user rate limit, bounded table (simulated-clock unit tests).
//! * `service.rs` — the push thread that drives it: facts in, liveness
//!   questions to the home cores, store reads, jobs to the sender pool,
//!   watermarks out.
//! * `gateway.rs` — the request body and the blocking HTTP client (sender
//!   threads with connect and response timeouts).
//! * `metrics.rs` — the `natter_push_*` series.
//!
//! # Where the facts come from (the seams)
//! * The storage writer shows the push thread every committed batch
//!   ([`crate::store::writer::CommitObserver`]): messages (chat, seq, sender),
//!   cursors (a device's Ack) and membership changes. Only after the
//!   `fdatasync`, so nothing uncommitted is ever announced.
//! * The side-port tells it about pushers set or removed, logouts and read
//!   markers, after they are durable.
//! * The home core answers whether a device has a live session heard from
//!   recently (`Command::PushLiveness`, [`crate::core::Core::devices_heard_within`]).
//!
//! What is owed is never only in memory: it is derived from the store (see
//! `store/push.rs`), so the in-memory table may be lost (kill -9) or overflow
//! (a full queue) without losing a notification: the push thread rebuilds it
//! from the store at start and after an overflow.

mod gateway;
mod metrics;
mod schedule;
mod service;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

pub use gateway::{Client, FailureClass, Job, NOTIFY_PATH, Notification, Outcome, badge_body, body};
pub use metrics::{LATENCY_SECONDS_BUCKETS, PushMetrics};
pub use schedule::{Due, MAX_RATE_BUCKETS, ScheduleConfig, Scheduler};
pub use service::{
    BUSY_RETRY, DUE_PER_TURN, EVENT_BATCH_WINDOW, EVENTS_PER_TURN, FAILURE_LOG_INTERVAL, JOBS_PER_SENDER,
    LIVENESS_DEADLINE, MARK_FLUSH_INTERVAL, MAX_CACHED_CHATS, MAX_CACHED_COUNTS, MAX_NOTIFIED,
    MAX_PENDING_MARKS, PUSH_NICE, PushService, start,
};

use crate::ids::{ChatId, DeviceId, Seq, UserId};
use crate::store::Pusher;
use crate::store::writer::WriteOp;

/// Events the push thread's queue holds. Each is small (a batch of facts from
/// one commit is one event); when the queue is full the event is dropped and
/// the overflow flag set instead, and the push thread rebuilds its table from
/// the store, so nothing owed is lost, only delayed.
pub const EVENT_QUEUE_CAPACITY: usize = 16_384;

/// Default `--push-coalesce`: at most one notification per device per chat
/// per 5 s (the default): a busy group buzzes a phone at most every
/// 5 s, each notification carrying the newest message and the counts.
pub const DEFAULT_COALESCE: Duration = Duration::from_secs(5);

/// How long a first owed message waits before its notification is sent: 200 ms
/// gathers a burst sent together into one notification and lets a device that
/// is reading the chat live Ack it first; short enough to be unnoticeable.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(200);

/// Default `--push-timeout`: the whole gateway exchange (connect, send, answer).
/// Sygnal answers within milliseconds, APNs round trips included; 10 s means
/// the gateway is stuck, and the attempt is retried with backoff.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default `--push-text-max`: characters of message text a `with_text`
/// notification carries (a lock screen shows two or three lines).
pub const DEFAULT_TEXT_MAX: usize = 200;

/// Default `--push-rate-limit`: notifications per user per minute (bursts of as
/// many). Coalescing already gives one per chat per 5 s; this bounds a user in
/// many busy chats at once.
pub const DEFAULT_RATE_LIMIT: u32 = 60;

/// The first retry's delay (then doubled per attempt, with jitter).
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The longest delay between two attempts: a gateway that is down for hours is
/// tried every 5 minutes, never given up on (what is owed is durable).
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// Most owed `(device, chat)` entries held in memory (~100 bytes each). Past
/// it, new ones wait in the store (derived, `store/push.rs`) until the push
/// thread rebuilds its table.
pub const MAX_OWED: usize = 1_000_000;

/// Push settings (from `--push-*` flags, `config.rs`).
#[derive(Clone, Debug)]
pub struct PushConfig {
    /// `--push-gateway`: the notify URL used when a pusher names none.
    pub gateway: Option<String>,
    /// `--push-gateway-allow`: hosts (`host` or `host:port`) a pusher's own
    /// `gateway_url` may name. The default gateway's host is always allowed.
    pub allow: Vec<String>,
    /// `--push-coalesce`.
    pub coalesce: Duration,
    /// The settle delay ([`DEFAULT_SETTLE`]).
    pub settle: Duration,
    /// `--push-silent-after`: a session silent for longer counts as offline.
    pub silent_after: Duration,
    /// `--push-timeout`: the whole gateway exchange.
    pub timeout: Duration,
    /// `--push-text-max`: characters of text in a `with_text` notification.
    pub text_max: usize,
    /// `--push-rate-limit`: notifications per user per minute.
    pub rate_per_minute: u32,
    /// Gateway sender threads (each blocks on one request at a time, on its
    /// own kept-alive connection): 16, as a gateway round trip is mostly
    /// waiting for the gateway.
    pub senders: usize,
    /// `--push-gateway-ca FILE`: the CA certificates (DER, read from a PEM
    /// file at start) that `https://` gateways must chain to, *instead of* the
    /// built-in Mozilla roots (webpki-roots). Empty: the built-in roots.
    pub gateway_ca: Arc<[Vec<u8>]>,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            gateway: None,
            allow: Vec::new(),
            coalesce: DEFAULT_COALESCE,
            settle: DEFAULT_SETTLE,
            silent_after: Duration::from_secs(90),
            timeout: DEFAULT_TIMEOUT,
            text_max: DEFAULT_TEXT_MAX,
            rate_per_minute: DEFAULT_RATE_LIMIT,
            senders: 16,
            gateway_ca: Arc::from(Vec::new()),
        }
    }
}

/// Why a gateway URL was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayUrlError {
    /// Caller error: not `http[s]://host[:port]/_matrix/push/v1/notify`.
    #[error("a gateway URL is https://host[:port]{NOTIFY_PATH} (or http://)")]
    Malformed,
    /// Refused by policy: the host is not on `--push-gateway-allow`.
    #[error("that gateway host is not allowed on this server")]
    NotAllowed,
    /// The pusher names no gateway and natterd has no `--push-gateway`.
    #[error("this server has no default push gateway: name one in gateway_url")]
    NoDefault,
}

/// The host and `host:port` of a well-formed notify URL.
fn url_host(url: &str) -> Result<(String, String), GatewayUrlError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or(GatewayUrlError::Malformed)?;
    let (authority, path) = rest.split_at(rest.find('/').ok_or(GatewayUrlError::Malformed)?);
    if path != NOTIFY_PATH
        || authority.is_empty()
        || authority.contains('@')
        || !authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return Err(GatewayUrlError::Malformed);
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(GatewayUrlError::Malformed)? + 1;
        let (h, rest) = authority.split_at(end);
        // Anything after `]` but a `:port` leaves an empty port: malformed.
        (h, rest.strip_prefix(':').or((!rest.is_empty()).then_some("")))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(GatewayUrlError::Malformed);
    }
    if host.is_empty() {
        return Err(GatewayUrlError::Malformed);
    }
    Ok((host.to_ascii_lowercase(), authority.to_ascii_lowercase()))
}

/// The gateway URL a new pusher will use: its own `requested` one (which must
/// be well-formed and on the allow-list, or the default gateway's host), else
/// the default `--push-gateway`.
///
/// # Errors
/// [`GatewayUrlError`]: malformed, not allowed, or no default.
pub fn check_gateway_url(config: &PushConfig, requested: Option<&str>) -> Result<String, GatewayUrlError> {
    let Some(url) = requested else {
        return config.gateway.clone().ok_or(GatewayUrlError::NoDefault);
    };
    if url.len() > 2048 {
        return Err(GatewayUrlError::Malformed);
    }
    let (host, authority) = url_host(url)?;
    let default = config.gateway.as_deref().and_then(|g| url_host(g).ok());
    let allowed = config
        .allow
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .chain(default.map(|(_, authority)| authority))
        .any(|a| a == host || a == authority);
    if allowed {
        Ok(url.to_owned())
    } else {
        Err(GatewayUrlError::NotAllowed)
    }
}

/// A committed fact the push thread learns from the writer.
#[derive(Clone, Copy, Debug)]
enum Fact {
    Message {
        chat: ChatId,
        seq: Seq,
        sender: UserId,
    },
    Cursor {
        device: DeviceId,
        chat: ChatId,
        seq: Seq,
    },
    Membership {
        chat: ChatId,
    },
}

/// What the push thread's queue carries.
#[derive(Debug)]
enum Event {
    /// Facts of one durable commit, in commit order.
    Committed(Vec<Fact>),
    /// A pusher was registered or replaced (durable).
    PusherSet(Pusher),
    /// A device's pusher is gone (removed, or the device logged out).
    PusherRemoved(UserId, DeviceId),
    /// `user` has read `chat` up to `seq` (a durable read marker).
    Read(UserId, ChatId, Seq),
}

/// The handle the writer thread and the side-port use to feed the push thread.
/// Cheap to clone; never blocks (a full queue sets the overflow flag instead).
#[derive(Clone, Debug)]
pub struct PushHandle {
    events: Sender<Event>,
    overflow: Arc<AtomicBool>,
    config: Arc<PushConfig>,
}

impl PushHandle {
    /// The push settings (the side-port checks gateway URLs against them).
    pub fn config(&self) -> &PushConfig {
        &self.config
    }

    /// The writer's [`crate::store::writer::CommitObserver`]: the facts of one
    /// committed batch (messages, cursors, membership changes).
    pub fn committed(&self, ops: &[WriteOp]) {
        let facts: Vec<Fact> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::Message { msg, .. } => Some(Fact::Message {
                    chat: msg.chat,
                    seq: msg.seq,
                    sender: msg.sender,
                }),
                WriteOp::Cursor {
                    device, chat, seq, ..
                } => Some(Fact::Cursor {
                    device: *device,
                    chat: *chat,
                    seq: *seq,
                }),
                WriteOp::Membership { chat, .. } => Some(Fact::Membership { chat: *chat }),
                // Edits and deletes notify nobody (the push thread still sees their seq through
                // the next message or cursor); receipts are no facts of push.
                WriteOp::LastSeen { .. } | WriteOp::Amend { .. } | WriteOp::Receipt { .. } => None,
            })
            .collect();
        if !facts.is_empty() {
            self.send(Event::Committed(facts));
        }
    }

    /// `pusher` is registered (durably).
    pub fn pusher_set(&self, pusher: Pusher) {
        self.send(Event::PusherSet(pusher));
    }

    /// `device`'s pusher is gone (removed or logged out).
    pub fn pusher_removed(&self, user: UserId, device: DeviceId) {
        self.send(Event::PusherRemoved(user, device));
    }

    /// `user`'s read marker in `chat` is now `seq` (durably).
    pub fn read(&self, user: UserId, chat: ChatId, seq: Seq) {
        self.send(Event::Read(user, chat, seq));
    }

    fn send(&self, event: Event) {
        match self.events.try_send(event) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => {}
            Err(TrySendError::Full(_)) => {
                if !self.overflow.swap(true, Ordering::Relaxed) {
                    tracing::warn!("push queue full: rebuilding what is owed from the store once it drains");
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_are_checked_against_the_allow_list() {
        let config = PushConfig {
            gateway: Some("http://push.example:8080/_matrix/push/v1/notify".into()),
            allow: vec!["sygnal.example".into(), "127.0.0.1:9000".into()],
            ..PushConfig::default()
        };
        let check = |u: &str| check_gateway_url(&config, Some(u));
        assert_eq!(
            check_gateway_url(&config, None).unwrap(),
            "http://push.example:8080/_matrix/push/v1/notify"
        );
        assert!(check("http://sygnal.example/_matrix/push/v1/notify").is_ok());
        assert!(check("http://SYGNAL.example:8443/_matrix/push/v1/notify").is_ok());
        assert!(
            check("http://[::1]:9000/_matrix/push/v1/notify").is_err(),
            "not on the list"
        );
        assert!(check("https://sygnal.example/_matrix/push/v1/notify").is_ok());
        assert!(check("https://sygnal.example:8443/_matrix/push/v1/notify").is_ok());
        assert_eq!(
            check("https://evil.example/_matrix/push/v1/notify"),
            Err(GatewayUrlError::NotAllowed)
        );
        assert!(check("http://127.0.0.1:9000/_matrix/push/v1/notify").is_ok());
        assert!(check("http://push.example:8080/_matrix/push/v1/notify").is_ok());
        assert_eq!(
            check("http://127.0.0.1:9001/_matrix/push/v1/notify"),
            Err(GatewayUrlError::NotAllowed)
        );
        assert_eq!(
            check("http://evil.example/_matrix/push/v1/notify"),
            Err(GatewayUrlError::NotAllowed)
        );
        for bad in [
            "ftp://sygnal.example/_matrix/push/v1/notify",
            "http://sygnal.example/other",
            "http://sygnal.example",
            "http://user@sygnal.example/_matrix/push/v1/notify",
            "http://sygnal.example:x/_matrix/push/v1/notify",
            "http:///_matrix/push/v1/notify",
            "http://sygnal.example/_matrix/push/v1/notify?x=1",
            "http://[::1]x/_matrix/push/v1/notify",
        ] {
            assert_eq!(check(bad), Err(GatewayUrlError::Malformed), "{bad}");
        }
        let none = PushConfig::default();
        assert_eq!(check_gateway_url(&none, None), Err(GatewayUrlError::NoDefault));
        assert_eq!(
            check_gateway_url(&none, Some("http://127.0.0.1:9000/_matrix/push/v1/notify")),
            Err(GatewayUrlError::NotAllowed)
        );
    }
}
