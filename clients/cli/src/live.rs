//! [`Live`]: the long-lived frame connection behind `natter tail` and `natter chat`,
//! following the client's duties of `docs/PROTOCOL.md`:
//!
//! * connect to the best transport of `GET /v1/endpoints` ([`best_transport`]: TLS with
//!   the certificate pinned where offered, else TCP), send
//!   `Hello{sync_first: true}` and then `Sync` with the cursors held (the seam rules:
//!   every message exactly once, in `seq` order per chat);
//! * accept a message only when it is the next `seq` of its chat ([`Cursors`]): an old
//!   one is a duplicate and dropped, a gap triggers a new `Sync` from the cursors;
//! * keep sends in an outbox until their `SendOk` and resend them with the same
//!   `client_msg_id` after a reconnect or a retryable refusal;
//! * `Ping` when idle, reconnect (with exponential backoff and jitter) when the
//!   connection breaks or stays silent, `Ack` what was accepted about once a second.
//!
//! The caller drives it with [`Live::poll`], which returns [`Event`]s; the connection
//! itself is natter-client's blocking [`Connection`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_client::{ClientError, Connection, Endpoints, Trust};
use natter_wire::{Ack, Body, Cursor, ErrorCode, Frame, Message, Ping, Pong, Presence, Send, Sync, Welcome};

use crate::error::CliError;
use crate::resolve::Account;

/// First pause before a reconnect; doubled per failed attempt up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(200);

/// Longest pause between reconnect attempts: a restarted natterd is found within this.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How often accepted positions are acknowledged (`Ack`), as PROTOCOL.md asks ("every
/// second or so while messages arrive, not once per message").
const ACK_INTERVAL: Duration = Duration::from_secs(1);

/// A connection silent for this many heartbeat intervals is taken for dead. The server
/// answers our `Ping`s, so a healthy one is never silent that long.
const SILENT_INTERVALS: u32 = 3;

/// How long a retryable send refusal (`overloaded`, `rate_limited`, …) waits before the
/// same `client_msg_id` is sent again.
const SEND_RETRY_DELAY: Duration = Duration::from_millis(250);

/// The transport [`best_transport`] picked, with its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// TLS 1.3 to this `tls://` URL, the server's certificate pinned by the SHA-256 that
    /// the endpoints list (`cert_sha256`). The pin is only as trustworthy as the side-port
    /// answer it came from: it keeps the chat stream private on the wire, and an attacker
    /// who can rewrite the side-port's answers could rewrite the pin too (docs/PROTOCOL.md).
    Tls {
        /// `tls://host:port`.
        url: String,
        /// Lowercase hex SHA-256 of the certificate (DER).
        cert_sha256: String,
    },
    /// Raw TCP, when the server offers no TLS (or no fingerprint to pin).
    Tcp(SocketAddr),
}

impl Transport {
    /// The endpoint URL, for messages (`tls://…` or `tcp://…`).
    pub(crate) fn url(&self) -> String {
        match self {
            Transport::Tls { url, .. } => url.clone(),
            Transport::Tcp(addr) => format!("tcp://{addr}"),
        }
    }
}

/// Picks the best transport the server offers that this client speaks: TLS with the
/// certificate pinned when the endpoints list a `tls://` URL and its `cert_sha256`, else
/// raw TCP. (WebSocket is for browsers; QUIC is not in natter-client.)
pub(crate) fn best_transport(endpoints: &Endpoints) -> Transport {
    match (endpoints.url("tls"), endpoints.cert_sha256.as_deref()) {
        (Some(url), Some(pin)) if !pin.is_empty() => Transport::Tls {
            url: url.to_owned(),
            cert_sha256: pin.to_owned(),
        },
        _ => Transport::Tcp(endpoints.tcp),
    }
}

/// Opens an authenticated connection to the server of `account` over [`best_transport`];
/// returns the transport used too.
///
/// # Errors
/// The side-port or the connection failed ([`ClientError`] as it came; a certificate that
/// does not match the pin fails the TLS handshake).
pub(crate) fn open(
    account: &Account,
    device: &str,
    sync_first: bool,
) -> Result<(Connection, Welcome, Transport), ClientError> {
    let endpoints = account.http.endpoints()?;
    let transport = best_transport(&endpoints);
    let mut conn = match &transport {
        Transport::Tls { url, cert_sha256 } => {
            Connection::open_url(url, Some(&Trust::Fingerprint(cert_sha256.clone())), None)?
        }
        Transport::Tcp(addr) => Connection::open(*addr)?,
    };
    let welcome = if sync_first {
        conn.hello_sync_first(&account.session.token, device)?
    } else {
        conn.hello(&account.session.token, device)?
    };
    Ok((conn, welcome, transport))
}

/// Per-chat positions: the highest `seq` up to which every message was accepted.
#[derive(Debug, Default)]
pub(crate) struct Cursors {
    held: HashMap<u64, u64>,
    /// Own messages confirmed by `SendOk` ahead of the cursor (others' messages before
    /// them are still on their way): accepted when the cursor reaches them.
    own_ahead: BTreeMap<(u64, u64), Message>,
}

/// What [`Cursors::accept`] made of a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Accepted {
    /// New, in order: these messages (the one given, then any own ones it unblocked).
    New(Vec<Message>),
    /// Already accepted before: drop it.
    Duplicate,
    /// Messages before it are missing: sync from the cursors.
    Gap,
}

impl Cursors {
    /// Starts at these positions.
    pub(crate) fn with(start: impl IntoIterator<Item = (u64, u64)>) -> Cursors {
        Cursors {
            held: start.into_iter().collect(),
            own_ahead: BTreeMap::new(),
        }
    }

    /// The position in `chat`, `None` while unknown.
    pub(crate) fn position(&self, chat: u64) -> Option<u64> {
        self.held.get(&chat).copied()
    }

    /// Every known position, for a `Sync`.
    pub(crate) fn to_sync(&self) -> Vec<Cursor> {
        let mut cursors: Vec<Cursor> = self
            .held
            .iter()
            .map(|(&chat_id, &seq)| Cursor { chat_id, seq })
            .collect();
        cursors.sort_by_key(|c| c.chat_id);
        cursors
    }

    /// Takes a message from a push or a sync. A chat without a position yet (the first
    /// sync from the server's stored cursor) starts at whatever comes first.
    pub(crate) fn accept(&mut self, message: Message) -> Accepted {
        let next = self.held.get(&message.chat_id).map(|s| s.saturating_add(1));
        match next {
            Some(next) if message.seq < next => Accepted::Duplicate,
            Some(next) if message.seq > next => Accepted::Gap,
            _ => {
                let chat = message.chat_id;
                self.held.insert(chat, message.seq);
                let mut out = vec![message];
                self.release_own(chat, &mut out);
                Accepted::New(out)
            }
        }
    }

    /// Whether own messages wait for the cursor to reach them.
    pub(crate) fn has_own_ahead(&self) -> bool {
        !self.own_ahead.is_empty()
    }

    /// Takes one's own message confirmed by `SendOk`: accepted now if it is the next
    /// `seq`, else kept until the messages before it arrive. Returns what is now in order.
    pub(crate) fn accept_own(&mut self, message: Message) -> Vec<Message> {
        let chat = message.chat_id;
        match self.held.get(&chat).map(|s| s.saturating_add(1)) {
            Some(next) if message.seq < next => Vec::new(),
            Some(next) if message.seq > next => {
                self.own_ahead.insert((chat, message.seq), message);
                Vec::new()
            }
            _ => match self.accept(message) {
                Accepted::New(out) => out,
                Accepted::Duplicate | Accepted::Gap => Vec::new(),
            },
        }
    }

    /// A `SyncDone` head: a chat still without a position starts at its head. A known
    /// position never moves, even past the head: pushes of a chat the sync has finished
    /// may arrive before `SyncDone` and be newer than the head it reports
    /// (docs/PROTOCOL.md, the seam).
    pub(crate) fn head(&mut self, chat: u64, seq: u64) {
        self.held.entry(chat).or_insert(seq);
    }

    /// Moves own messages that follow the cursor of `chat` into `out`.
    fn release_own(&mut self, chat: u64, out: &mut Vec<Message>) {
        loop {
            let next = self.held.get(&chat).map_or(1, |s| s.saturating_add(1));
            // Own messages the sync already delivered are stale.
            let stale: Vec<(u64, u64)> = self
                .own_ahead
                .range((chat, 0)..(chat, next))
                .map(|(k, _)| *k)
                .collect();
            for k in stale {
                self.own_ahead.remove(&k);
            }
            match self.own_ahead.remove(&(chat, next)) {
                Some(own) => {
                    self.held.insert(chat, own.seq);
                    out.push(own);
                }
                None => return,
            }
        }
    }
}

/// What [`Live::poll`] reports.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message accepted in order (a push, a sync page, or one's own confirmed send).
    Message(Message),
    /// A friend's presence (the snapshot after each connect, then changes).
    Presence(Presence),
    /// A sync finished: everything up to the heads is here.
    Synced,
    /// The connection broke or could not be made; `retry_in` until the next attempt.
    Disconnected {
        /// Why.
        reason: String,
        /// The pause before the next attempt.
        retry_in: Duration,
    },
    /// A connection is up again after [`Event::Disconnected`].
    Reconnected,
    /// The server refused a send for good (the text stays unsent).
    SendRefused {
        /// The text.
        text: String,
        /// The server's explanation.
        reason: String,
    },
}

/// One message waiting for its `SendOk`.
#[derive(Debug)]
struct Outgoing {
    /// Random, nonzero, the same on every attempt (the server's dedupe key).
    client_msg_id: u64,
    chat_id: u64,
    text: String,
    /// The request id of the last attempt on the current connection (0: not sent on it).
    request_id: u64,
    /// Not before this instant (after a retryable refusal).
    not_before: Option<Instant>,
}

/// The live connection with its cursors, outbox and timers; see the module doc.
pub(crate) struct Live {
    account: Account,
    device: String,
    conn: Option<Connection>,
    cursors: Cursors,
    /// Which chats are acknowledged (`None`: all): `natter chat` acks only the chat it shows.
    ack_only: Option<u64>,
    acked: HashMap<u64, u64>,
    last_ack: Instant,
    /// Messages waiting for their `SendOk`, by the order they were queued (so a resend
    /// after a reconnect keeps the order they were typed in).
    outbox: BTreeMap<u64, Outgoing>,
    queued: u64,
    /// When a failed `Sync` is tried again.
    resync_at: Option<Instant>,
    sync_request: Option<u64>,
    heartbeat: Duration,
    last_sent: Instant,
    last_heard: Instant,
    backoff: Duration,
    next_attempt: Instant,
    was_disconnected: bool,
    /// The endpoint URL of the current (or last) connection.
    transport: Option<String>,
}

impl Live {
    /// A live session for `account` starting at `cursors`; `ack_only` limits `Ack`s to one
    /// chat. Nothing is connected until the first [`Live::poll`].
    pub(crate) fn new(account: Account, device: String, cursors: Cursors, ack_only: Option<u64>) -> Live {
        let now = Instant::now();
        Live {
            account,
            device,
            conn: None,
            cursors,
            ack_only,
            acked: HashMap::new(),
            last_ack: now,
            outbox: BTreeMap::new(),
            queued: 0,
            resync_at: None,
            sync_request: None,
            heartbeat: Duration::from_secs(60),
            last_sent: now,
            last_heard: now,
            backoff: BACKOFF_START,
            next_attempt: now,
            was_disconnected: false,
            transport: None,
        }
    }

    /// The endpoint URL (`tls://…` or `tcp://…`) of the current or last connection, once
    /// one was made.
    pub(crate) fn transport(&self) -> Option<&str> {
        self.transport.as_deref()
    }

    /// The position held in `chat`.
    pub(crate) fn position(&self, chat: u64) -> Option<u64> {
        self.cursors.position(chat)
    }

    /// Whether messages are still waiting for their `SendOk`, or were confirmed
    /// but not shown yet (their `seq` is ahead of what has arrived of the chat:
    /// the sync still streams what comes before them).
    pub(crate) fn sending(&self) -> bool {
        !self.outbox.is_empty() || self.cursors.has_own_ahead()
    }

    /// Queues `text` for `chat_id` under a fresh random `client_msg_id` and sends it if
    /// connected; it is resent with the same id until its `SendOk`.
    ///
    /// # Errors
    /// [`CliError::Input`] when the OS has no random source.
    pub(crate) fn send(&mut self, chat_id: u64, text: String) -> Result<(), CliError> {
        let client_msg_id = loop {
            let id = getrandom::u64().map_err(|e| CliError::Input(format!("no random source: {e}")))?;
            if id != 0 && !self.outbox.values().any(|out| out.client_msg_id == id) {
                break id;
            }
        };
        self.queued += 1;
        self.outbox.insert(
            self.queued,
            Outgoing {
                client_msg_id,
                chat_id,
                text,
                request_id: 0,
                not_before: None,
            },
        );
        self.flush_outbox();
        Ok(())
    }

    /// Waits up to `wait` for something to happen and returns what did. Connects and
    /// reconnects as needed; only a revoked session ends it.
    ///
    /// # Errors
    /// [`CliError::SessionRevoked`] when the server no longer takes the token.
    pub(crate) fn poll(&mut self, wait: Duration) -> Result<Vec<Event>, CliError> {
        let mut events = Vec::new();
        if self.conn.is_none() {
            let now = Instant::now();
            if now < self.next_attempt {
                std::thread::sleep(wait.min(self.next_attempt - now));
                return Ok(events);
            }
            match self.connect() {
                Ok(()) => {
                    if self.was_disconnected {
                        self.was_disconnected = false;
                        events.push(Event::Reconnected);
                    }
                }
                Err(e) => {
                    self.lost(&e, &mut events)?;
                    return Ok(events);
                }
            }
        }
        let result = self.read(wait, &mut events);
        if let Err(e) = result {
            self.lost(&e, &mut events)?;
            return Ok(events);
        }
        if let Err(e) = self.tick() {
            self.lost(&e, &mut events)?;
        }
        Ok(events)
    }

    /// Sends the pending `Ack`s now (before exiting).
    pub(crate) fn flush_acks(&mut self) {
        if self.send_acks().is_err() {
            // Best effort on the way out: the server keeps the last Ack it got.
            self.conn = None;
        }
    }

    /// Connects, sends `Hello{sync_first}`, the `Sync` and the outbox.
    fn connect(&mut self) -> Result<(), ClientError> {
        let (mut conn, welcome, transport) = open(&self.account, &self.device, true)?;
        self.transport = Some(transport.url());
        if welcome.heartbeat_interval_ms > 0 {
            self.heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms));
        }
        let now = Instant::now();
        self.last_heard = now;
        self.last_sent = now;
        let request_id = conn.send_body(Body::Sync(Sync {
            cursors: self.cursors.to_sync(),
        }))?;
        self.sync_request = Some(request_id);
        self.conn = Some(conn);
        for out in self.outbox.values_mut() {
            out.request_id = 0;
        }
        self.flush_outbox();
        Ok(())
    }

    /// The connection is gone: schedule the next attempt, or end on a revoked token.
    fn lost(&mut self, error: &ClientError, events: &mut Vec<Event>) -> Result<(), CliError> {
        self.conn = None;
        self.sync_request = None;
        self.resync_at = None;
        if CliError::is_revoked(error) {
            return Err(CliError::SessionRevoked {
                username: self.account.session.username.clone(),
            });
        }
        if !CliError::is_transient(error) {
            return Err(CliError::Connection(describe(error)));
        }
        let jitter = getrandom::u64().map_or(0, |r| r % 1000);
        // ±25% around the backoff, so restarted clients do not come back in step.
        let retry_in = self.backoff.mul_f64(0.75 + 0.5 * (jitter as f64 / 1000.0));
        self.next_attempt = Instant::now() + retry_in;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        self.was_disconnected = true;
        events.push(Event::Disconnected {
            reason: describe(error),
            retry_in,
        });
        Ok(())
    }

    /// Reads frames for up to `wait`, then whatever else is already buffered.
    fn read(&mut self, wait: Duration, events: &mut Vec<Event>) -> Result<(), ClientError> {
        let mut wait = wait;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(());
            };
            let Some(frame) = conn.recv_timeout(wait)? else {
                return Ok(());
            };
            wait = Duration::ZERO;
            self.last_heard = Instant::now();
            self.handle(frame, events)?;
        }
    }

    /// Applies one frame.
    fn handle(&mut self, frame: Frame, events: &mut Vec<Event>) -> Result<(), ClientError> {
        match frame.body {
            Body::Message(message) => match self.cursors.accept(message) {
                Accepted::New(messages) => events.extend(messages.into_iter().map(Event::Message)),
                Accepted::Duplicate => {}
                Accepted::Gap => {
                    if self.sync_request.is_none() {
                        self.resync()?;
                    }
                }
            },
            Body::SendOk(ok) => {
                let queued = self
                    .outbox
                    .iter()
                    .find(|(_, out)| out.client_msg_id == ok.client_msg_id)
                    .map(|(&k, _)| k);
                if let Some(out) = queued.and_then(|k| self.outbox.remove(&k)) {
                    let message = Message {
                        chat_id: ok.chat_id,
                        seq: ok.seq,
                        sender: self.account.session.user_id,
                        server_ts_ms: ok.server_ts_ms,
                        client_msg_id: ok.client_msg_id,
                        text: out.text,
                        ..Message::default()
                    };
                    events.extend(self.cursors.accept_own(message).into_iter().map(Event::Message));
                }
            }
            Body::SyncDone(done) if Some(frame.request_id) == self.sync_request => {
                self.sync_request = None;
                for head in done.heads {
                    self.cursors.head(head.chat_id, head.seq);
                }
                self.backoff = BACKOFF_START;
                events.push(Event::Synced);
                self.send_acks()?;
            }
            Body::Presence(presence) => events.push(Event::Presence(presence)),
            Body::Resync => self.resync()?,
            Body::Ping(ping) => {
                let pong = Frame::new(frame.request_id, Body::Pong(Pong { nonce: ping.nonce }));
                if let Some(conn) = self.conn.as_mut() {
                    conn.send(&pong)?;
                    self.last_sent = Instant::now();
                }
            }
            Body::Error(error) => self.refused(frame.request_id, error, events)?,
            _ => {}
        }
        Ok(())
    }

    /// An `Error` frame: a send's refusal, a failed sync, or the connection's end.
    fn refused(
        &mut self,
        request_id: u64,
        error: natter_wire::ErrorBody,
        events: &mut Vec<Event>,
    ) -> Result<(), ClientError> {
        let code = error.error_code();
        if request_id != 0 && Some(request_id) == self.sync_request {
            // The store failed mid-sync, or syncs came too fast: sync again from what we
            // hold, after a pause.
            self.sync_request = None;
            self.resync_at = Some(Instant::now() + SEND_RETRY_DELAY);
            return Ok(());
        }
        let sending = self
            .outbox
            .iter()
            .find(|(_, out)| request_id != 0 && out.request_id == request_id)
            .map(|(&id, _)| id);
        if let Some(queued) = sending {
            let retry = matches!(
                code,
                Some(
                    ErrorCode::Overloaded
                        | ErrorCode::Unavailable
                        | ErrorCode::RateLimited
                        | ErrorCode::Internal
                )
            );
            if retry {
                if let Some(out) = self.outbox.get_mut(&queued) {
                    out.request_id = 0;
                    out.not_before = Some(Instant::now() + SEND_RETRY_DELAY);
                }
            } else if let Some(out) = self.outbox.remove(&queued) {
                events.push(Event::SendRefused {
                    text: out.text,
                    reason: format!(
                        "{} ({})",
                        error.message,
                        code.map_or_else(|| error.code.to_string(), |c| c.name().to_owned())
                    ),
                });
            }
            return Ok(());
        }
        // About the connection as a whole: the server closes it next.
        Err(ClientError::Refused {
            code: natter_client::ServerCode::from_u16(error.code),
            message: error.message,
        })
    }

    /// Sends `Sync` from the cursors held (after a gap, a `Resync`, a failed sync).
    fn resync(&mut self) -> Result<(), ClientError> {
        self.resync_at = None;
        let cursors = self.cursors.to_sync();
        if let Some(conn) = self.conn.as_mut() {
            self.sync_request = Some(conn.send_body(Body::Sync(Sync { cursors }))?);
            self.last_sent = Instant::now();
        }
        Ok(())
    }

    /// Timers: resend retried sends, `Ack`, `Ping` when idle, give up on a silent peer.
    fn tick(&mut self) -> Result<(), ClientError> {
        self.flush_outbox();
        if self.resync_at.is_some_and(|at| at <= Instant::now()) && self.sync_request.is_none() {
            self.resync()?;
        }
        if self.last_ack.elapsed() >= ACK_INTERVAL {
            self.send_acks()?;
        }
        if self.last_heard.elapsed() > self.heartbeat * SILENT_INTERVALS {
            return Err(ClientError::Timeout {
                waited: self.heartbeat * SILENT_INTERVALS,
                expected: "any frame from the server",
            });
        }
        if self.last_sent.elapsed() >= self.heartbeat
            && let Some(conn) = self.conn.as_mut()
        {
            let nonce = getrandom::u64().unwrap_or(1);
            conn.send_body(Body::Ping(Ping { nonce }))?;
            self.last_sent = Instant::now();
        }
        Ok(())
    }

    /// Sends every queued message not sent on this connection yet (and not held back).
    fn flush_outbox(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let now = Instant::now();
        for out in self.outbox.values_mut() {
            if out.request_id != 0 || out.not_before.is_some_and(|t| t > now) {
                continue;
            }
            let send = Body::Send(Send {
                chat_id: out.chat_id,
                client_msg_id: out.client_msg_id,
                text: out.text.clone(),
            });
            match conn.send_body(send) {
                Ok(request_id) => {
                    out.request_id = request_id;
                    out.not_before = None;
                    self.last_sent = now;
                }
                // The read side notices the broken connection next.
                Err(_) => break,
            }
        }
    }

    /// `Ack`s every chat whose position moved since the last one.
    fn send_acks(&mut self) -> Result<(), ClientError> {
        self.last_ack = Instant::now();
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        for cursor in self.cursors.to_sync() {
            if self.ack_only.is_some_and(|only| only != cursor.chat_id) || cursor.seq == 0 {
                continue;
            }
            if self.acked.get(&cursor.chat_id) == Some(&cursor.seq) {
                continue;
            }
            conn.send_body(Body::Ack(Ack {
                chat_id: cursor.chat_id,
                seq: cursor.seq,
            }))?;
            self.acked.insert(cursor.chat_id, cursor.seq);
            self.last_sent = Instant::now();
        }
        Ok(())
    }
}

/// A short reason for a lost connection.
fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Transport(_) => "natterd's side-port does not answer".into(),
        ClientError::Closed => "natterd closed the connection".into(),
        ClientError::Io(e) => format!("natterd is not reachable ({e})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn msg(chat: u64, seq: u64) -> Message {
        Message {
            chat_id: chat,
            seq,
            sender: 2,
            server_ts_ms: 0,
            client_msg_id: seq,
            text: format!("m{seq}"),
            ..Message::default()
        }
    }

    fn seqs(accepted: Accepted) -> Vec<u64> {
        match accepted {
            Accepted::New(ms) => ms.iter().map(|m| m.seq).collect(),
            other => panic!("expected new, got {other:?}"),
        }
    }

    #[test]
    fn in_order_duplicate_and_gap() {
        let mut c = Cursors::with([(5, 2)]);
        assert_eq!(seqs(c.accept(msg(5, 3))), vec![3]);
        assert_eq!(c.accept(msg(5, 3)), Accepted::Duplicate);
        assert_eq!(c.accept(msg(5, 1)), Accepted::Duplicate);
        assert_eq!(c.accept(msg(5, 5)), Accepted::Gap);
        assert_eq!(c.position(5), Some(3));
    }

    #[test]
    fn an_unknown_chat_starts_at_its_first_message() {
        let mut c = Cursors::default();
        assert_eq!(seqs(c.accept(msg(7, 40))), vec![40]);
        assert_eq!(seqs(c.accept(msg(7, 41))), vec![41]);
        c.head(8, 12);
        assert_eq!(c.position(8), Some(12));
        c.head(7, 99);
        assert_eq!(
            c.position(7),
            Some(41),
            "a head ahead does not move a known position"
        );
        c.head(7, 3);
        assert_eq!(
            c.position(7),
            Some(41),
            "nor a head behind (pushes may pass SyncDone)"
        );
    }

    #[test]
    fn own_messages_wait_for_the_ones_before_them() {
        let mut c = Cursors::with([(5, 0)]);
        assert!(c.accept_own(msg(5, 2)).is_empty());
        assert_eq!(seqs(c.accept(msg(5, 1))), vec![1, 2]);
        assert_eq!(c.position(5), Some(2));
        // Own message already delivered by a sync: dropped.
        assert!(c.accept_own(msg(5, 2)).is_empty());
        assert_eq!(c.accept_own(msg(5, 3)).len(), 1);
    }

    #[test]
    fn an_own_message_a_sync_delivered_first_is_not_repeated() {
        let mut c = Cursors::with([(5, 0)]);
        assert!(c.accept_own(msg(5, 2)).is_empty());
        assert_eq!(seqs(c.accept(msg(5, 1))), vec![1, 2]);
        assert_eq!(c.accept(msg(5, 2)), Accepted::Duplicate);
    }

    #[test]
    fn tls_with_its_pin_is_preferred_and_tcp_is_the_fallback() {
        let tcp_only: Endpoints = serde_json::from_str(
            r#"{"http":"127.0.0.1:1","tcp":"127.0.0.1:2","urls":["tcp://127.0.0.1:2"]}"#,
        )
        .unwrap();
        assert_eq!(
            best_transport(&tcp_only),
            Transport::Tcp("127.0.0.1:2".parse().unwrap())
        );
        let both: Endpoints = serde_json::from_str(
            r#"{"http":"127.0.0.1:1","tcp":"127.0.0.1:2","tls":"127.0.0.1:3",
                "urls":["tcp://127.0.0.1:2","tls://127.0.0.1:3","ws://127.0.0.1:4/"],"cert_sha256":"ab12"}"#,
        )
        .unwrap();
        assert_eq!(
            best_transport(&both),
            Transport::Tls {
                url: "tls://127.0.0.1:3".into(),
                cert_sha256: "ab12".into()
            }
        );
        // TLS without a fingerprint to pin (nothing to trust it by): TCP.
        let unpinned: Endpoints = serde_json::from_str(
            r#"{"http":"127.0.0.1:1","tcp":"127.0.0.1:2","urls":["tcp://127.0.0.1:2","tls://127.0.0.1:3"]}"#,
        )
        .unwrap();
        assert_eq!(best_transport(&unpinned).url(), "tcp://127.0.0.1:2");
    }
}
