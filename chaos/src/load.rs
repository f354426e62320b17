//! The scenarios' clients, built on `natter-client`: account setup, senders
//! that retry every unacknowledged send with the same `client_msg_id` until it
//! is acknowledged (across reconnects and restarts), devices that reconnect
//! and sync from their gapless cursors (following the reconnect recipe of
//! docs/PROTOCOL.md), the final read-back with `History`, and non-member
//! probes. Every send, ack, delivery and read-back goes to a [`Recorder`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use natter_client::{ClientError, Connection, HttpClient};
use natter_wire::{Body, Cursor, ErrorCode, Frame, History, Ping, Send, Sync};

use crate::backoff::Backoff;
use crate::history::{Device, Recorder, Seen};
use crate::rng::Rng;

/// Every scenario user's password.
pub const PASSWORD: &str = "correct horse battery";
/// Longest wait for one frame before a connection counts as dead.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause after a failed connect (natterd restarting); each further
/// failure doubles the ceiling, with full jitter ([`Backoff`]).
const RECONNECT_BASE: Duration = Duration::from_millis(20);
/// Longest pause between two connect attempts: short enough that a client is
/// back within a second of natterd's return, long enough not to storm it.
const RECONNECT_CAP: Duration = Duration::from_millis(500);
/// Seeds of [`retry`]'s backoffs: one per call, so concurrent callers spread out.
static RETRY_SEEDS: AtomicU64 = AtomicU64::new(1);
/// A session that lasted this long was healthy: its end starts a new backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(1);
/// How long a sender waits for frames per loop turn before it checks the clock.
const SENDER_POLL: Duration = Duration::from_millis(2);
/// A send still unanswered this long means the connection is dead: reconnect and resend (same id).
const RESEND_AFTER: Duration = Duration::from_secs(5);
/// Backoff before a send refused with a retryable error is sent again.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// A device pinging this often never hits natterd's heartbeat timeout (180 s).
pub const PING_EVERY: Duration = Duration::from_secs(20);
/// `History` page size (natterd's cap).
const HISTORY_PAGE: u32 = 200;
/// How long a final sync or read-back may take.
const FINAL_TIMEOUT: Duration = Duration::from_secs(120);

/// Phase: senders send new messages.
pub const PHASE_RUN: u8 = 0;
/// Phase: no new sends; senders retry until everything is acknowledged.
pub const PHASE_DRAIN: u8 = 1;
/// Phase: everyone stops (devices make their final sync first).
pub const PHASE_STOP: u8 = 2;

/// A signed-up, logged-in user.
#[derive(Debug, Clone)]
pub struct Account {
    /// The user id.
    pub user: u64,
    /// The username.
    pub name: String,
    /// A device token.
    pub token: String,
}

/// What all clients of a run share: the phase and the counters.
#[derive(Debug, Default)]
pub struct Control {
    phase: AtomicU8,
    /// Send attempts (first sends and retries).
    pub attempts: AtomicU64,
    /// Retries (an attempt after the first for one message).
    pub retries: AtomicU64,
    /// `SendOk`s received.
    pub acks: AtomicU64,
    /// Connections re-established after one was lost.
    pub reconnects: AtomicU64,
    /// Messages received by devices.
    pub deliveries: AtomicU64,
    /// Error codes received, by name.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// When a fault that fails every commit was armed ([`Control::arm_fault`]).
    fault_armed_at: Mutex<Option<Instant>>,
    /// `SendOk`s for messages first sent after the fault was armed: each one
    /// acknowledges a commit whose write or sync failed (must stay 0).
    pub acks_after_fault: AtomicU64,
}

impl Control {
    /// A control in [`PHASE_RUN`].
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The current phase.
    pub fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    /// Moves every client to `phase`.
    pub fn set_phase(&self, phase: u8) {
        self.phase.store(phase, Ordering::Relaxed);
    }

    /// Notes that from now on every commit fails (a fault injector was armed).
    pub fn arm_fault(&self) {
        *self.fault_armed_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }

    /// Clears [`Control::arm_fault`] (natterd restarted without the fault).
    pub fn disarm_fault(&self) {
        *self.fault_armed_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    fn fault_armed_at(&self) -> Option<Instant> {
        *self.fault_armed_at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one error answer.
    pub fn error(&self, name: &str) {
        *self
            .errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default() += 1;
    }

    /// Error counts as `name=count, …` (empty: none).
    pub fn errors_summary(&self) -> String {
        let errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        errors
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Retries `f` (an HTTP call) for up to `within` while it fails (natterd restarting).
///
/// # Errors
/// The last error once `within` has passed.
pub fn retry<T>(within: Duration, mut f: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let end = Instant::now() + within;
    let seed = RETRY_SEEDS.fetch_add(1, Ordering::Relaxed);
    let mut backoff = Backoff::new(RECONNECT_BASE * 5, RECONNECT_CAP, seed);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => backoff.wait(),
        }
    }
}

/// Signs `name` up and logs one device in.
///
/// # Errors
/// The side-port refused.
pub fn account(http: &HttpClient, name: &str) -> Result<Account, ClientError> {
    let user = http.signup(name, PASSWORD)?;
    let login = http.login(name, PASSWORD, "setup")?;
    Ok(Account {
        user,
        name: name.to_owned(),
        token: login.token,
    })
}

/// Makes `a` and `b` friends.
///
/// # Errors
/// The side-port refused.
pub fn befriend(http: &HttpClient, a: &Account, b: &Account) -> Result<(), ClientError> {
    http.friend_request(&a.token, &b.name)?;
    http.accept_friend(&b.token, a.user)
}

/// Whether natterd may change its answer later: retry the same send.
pub fn retryable(code: Option<ErrorCode>) -> bool {
    matches!(
        code,
        Some(
            ErrorCode::Overloaded
                | ErrorCode::Unavailable
                | ErrorCode::RateLimited
                | ErrorCode::Internal
                | ErrorCode::StorageFull
        )
    )
}

fn code_name(code: u16) -> String {
    ErrorCode::from_u16(code).map_or_else(|| format!("code_{code}"), |c| c.name().to_owned())
}

/// One message a sender has not seen acknowledged yet.
#[derive(Debug)]
struct Pending {
    chat: u64,
    text: String,
    /// When it was first sent.
    first_sent: Option<Instant>,
    /// When it was last sent on the current connection (`None`: not on it yet).
    sent_at: Option<Instant>,
    /// Not before this instant (after a retryable refusal).
    retry_at: Instant,
}

/// A sending user: `rate` new messages per second round-robin over `chats`,
/// at most `max_in_flight` unacknowledged.
#[derive(Debug, Clone)]
pub struct SenderPlan {
    /// The sender.
    pub account: Account,
    /// Where it connects.
    pub addr: SocketAddr,
    /// Its chats.
    pub chats: Vec<u64>,
    /// New messages per second.
    pub rate: f64,
    /// Most unacknowledged messages at once.
    pub max_in_flight: usize,
    /// Stop after this many new messages (`None`: until the phase changes).
    pub limit: Option<u64>,
    /// Bytes of filler in each text beyond its identifying prefix.
    pub text_bytes: usize,
}

/// Runs a sender until [`PHASE_STOP`], or until [`PHASE_DRAIN`] finds nothing
/// unacknowledged. Returns the messages it could not get acknowledged.
pub fn run_sender(plan: SenderPlan, rec: Recorder, ctl: Arc<Control>, seed: u64) -> u64 {
    let mut rng = Rng::new(seed);
    let user = plan.account.user;
    let mut outbox: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut by_request: HashMap<u64, u64> = HashMap::new();
    let mut next_cmid = 1 + (rng.next_u64() >> 40);
    let mut made = 0u64;
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(0.001));
    let mut next_new = Instant::now();
    let mut conn: Option<Connection> = None;
    let mut connected_once = false;
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_CAP, rng.next_u64());
    let mut turn = 0usize;
    loop {
        let phase = ctl.phase();
        if phase == PHASE_STOP || (phase == PHASE_DRAIN && outbox.is_empty()) {
            break;
        }
        let Some(c) = conn.as_mut() else {
            match Connection::connect(plan.addr, &plan.account.token, "sender") {
                Ok((mut c, _)) => {
                    backoff.reset();
                    c.set_timeout(IO_TIMEOUT);
                    if connected_once {
                        ctl.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    connected_once = true;
                    by_request.clear();
                    for p in outbox.values_mut() {
                        p.sent_at = None;
                    }
                    conn = Some(c);
                }
                Err(_) => backoff.wait(),
            }
            continue;
        };
        let now = Instant::now();
        let mut broken = false;
        // New messages, on schedule.
        if phase == PHASE_RUN && plan.limit.is_none_or(|l| made < l) {
            while next_new <= now && outbox.len() < plan.max_in_flight && plan.limit.is_none_or(|l| made < l)
            {
                let Some(&chat) = plan.chats.get(turn % plan.chats.len().max(1)) else {
                    break;
                };
                turn += 1;
                let cmid = next_cmid;
                next_cmid += 1;
                made += 1;
                let mut text = format!("u{user} c{chat} m{cmid} ");
                while text.len() < plan.text_bytes + 16 {
                    text.push(char::from(b'a' + (rng.next_u64() % 26) as u8));
                }
                outbox.insert(
                    cmid,
                    Pending {
                        chat,
                        text,
                        first_sent: None,
                        sent_at: None,
                        retry_at: now,
                    },
                );
                next_new += interval;
            }
            if next_new + interval * 50 < now {
                // Far behind (a restart): do not burst the backlog all at once.
                next_new = now;
            }
        }
        // First sends, retries after a refusal or a reconnect, and resends of the unanswered.
        for (cmid, p) in outbox.iter_mut() {
            let due = match p.sent_at {
                None => p.retry_at <= now,
                Some(at) if now.duration_since(at) > RESEND_AFTER => {
                    // No answer on this connection for that long: it is dead (a blackhole).
                    broken = true;
                    break;
                }
                Some(_) => false,
            };
            if !due {
                continue;
            }
            let send = Body::Send(Send {
                chat_id: p.chat,
                client_msg_id: *cmid,
                text: p.text.clone(),
            });
            ctl.attempts.fetch_add(1, Ordering::Relaxed);
            rec.sent(user, p.chat, *cmid, &p.text);
            match c.send_body(send) {
                Ok(rid) => {
                    by_request.insert(rid, *cmid);
                    p.sent_at = Some(now);
                    p.first_sent.get_or_insert(now);
                }
                Err(_) => {
                    broken = true;
                    break;
                }
            }
        }
        // Answers.
        if !broken {
            loop {
                match c.recv_timeout(SENDER_POLL) {
                    Ok(Some(frame)) => {
                        handle_sender_frame(frame, user, &rec, &ctl, &mut outbox, &mut by_request)
                    }
                    Ok(None) => break,
                    Err(_) => {
                        broken = true;
                        break;
                    }
                }
                if Instant::now().duration_since(now) > Duration::from_millis(20) {
                    break;
                }
            }
        }
        if broken {
            conn = None;
        }
    }
    outbox.len() as u64
}

fn handle_sender_frame(
    frame: Frame,
    user: u64,
    rec: &Recorder,
    ctl: &Control,
    outbox: &mut BTreeMap<u64, Pending>,
    by_request: &mut HashMap<u64, u64>,
) {
    match frame.body {
        Body::SendOk(ok) => {
            by_request.remove(&frame.request_id);
            rec.acked(user, ok.chat_id, ok.client_msg_id, ok.seq);
            ctl.acks.fetch_add(1, Ordering::Relaxed);
            if let (Some(armed), Some(p)) = (ctl.fault_armed_at(), outbox.get(&ok.client_msg_id))
                && p.first_sent.is_some_and(|first| first > armed)
            {
                ctl.acks_after_fault.fetch_add(1, Ordering::Relaxed);
            }
            outbox.remove(&ok.client_msg_id);
        }
        Body::Error(e) => {
            ctl.error(&code_name(e.code));
            let Some(cmid) = by_request.remove(&frame.request_id) else {
                return;
            };
            let code = ErrorCode::from_u16(e.code);
            if let Some(p) = outbox.get_mut(&cmid) {
                if retryable(code) {
                    p.sent_at = None;
                    p.retry_at = Instant::now() + RETRY_BACKOFF;
                    ctl.retries.fetch_add(1, Ordering::Relaxed);
                } else {
                    // A refusal that will not change: the message is given up (never acked).
                    outbox.remove(&cmid);
                }
            }
        }
        _ => {}
    }
}

/// A receiving device: connects, syncs from its gapless cursors, applies pushes;
/// with `hold` it disconnects after a random time in that range and reconnects.
#[derive(Debug, Clone)]
pub struct DevicePlan {
    /// The device's user.
    pub account: Account,
    /// The device's name.
    pub name: String,
    /// Where it connects.
    pub addr: SocketAddr,
    /// Its chats (cursors are sent for each).
    pub chats: Vec<u64>,
    /// Hold each connection for a random time in this range (`None`: until it breaks).
    pub hold: Option<(Duration, Duration)>,
    /// Ping this often; no frame for three times this after a ping means the
    /// connection is dead (a blackhole), and the device reconnects.
    pub ping_every: Duration,
}

/// Runs a device until [`PHASE_STOP`]; then it reconnects once more (through
/// `final_addr`, natterd itself), syncs to the end and is marked complete.
/// Returns its reconnects.
pub fn run_device(
    plan: DevicePlan,
    final_addr: SocketAddr,
    rec: Recorder,
    ctl: Arc<Control>,
    seed: u64,
) -> u64 {
    let mut rng = Rng::new(seed);
    let device = Device {
        user: plan.account.user,
        name: plan.name.clone(),
    };
    let mut cursors: BTreeMap<u64, u64> = plan.chats.iter().map(|&c| (c, 0)).collect();
    let mut connects = 0u64;
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_CAP, rng.next_u64());
    while ctl.phase() != PHASE_STOP {
        let hold = plan.hold.map(|(lo, hi)| {
            Duration::from_millis(rng.range(lo.as_millis() as u64, hi.as_millis() as u64 + 1))
        });
        // A broken connection is what this device is for: it simply reconnects.
        let started = Instant::now();
        let ended = session(&plan, plan.addr, &device, &mut cursors, &rec, &ctl, hold, false);
        connects += 1;
        if ended.is_ok() || started.elapsed() >= HEALTHY_SESSION {
            backoff.reset();
        }
        if ctl.phase() != PHASE_STOP {
            backoff.wait();
        }
    }
    let end = Instant::now() + FINAL_TIMEOUT;
    backoff.reset();
    while Instant::now() < end {
        if session(&plan, final_addr, &device, &mut cursors, &rec, &ctl, None, true).is_ok() {
            rec.complete(&device);
            break;
        }
        backoff.wait();
    }
    ctl.reconnects
        .fetch_add(connects.saturating_sub(1), Ordering::Relaxed);
    connects.saturating_sub(1)
}

/// One connection of a device: Hello{sync_first}, Sync{cursors}, then frames
/// until `hold` passes, the phase is [`PHASE_STOP`] (unless `final_sync`), the
/// connection breaks, or (with `final_sync`) the sync is done.
#[allow(clippy::too_many_arguments)]
fn session(
    plan: &DevicePlan,
    addr: SocketAddr,
    device: &Device,
    cursors: &mut BTreeMap<u64, u64>,
    rec: &Recorder,
    ctl: &Control,
    hold: Option<Duration>,
    final_sync: bool,
) -> Result<(), ClientError> {
    let mut conn = Connection::open(addr)?;
    conn.set_timeout(IO_TIMEOUT);
    conn.hello_sync_first(&plan.account.token, &plan.name)?;
    let cursor_list = cursors
        .iter()
        .map(|(&chat_id, &seq)| Cursor { chat_id, seq })
        .collect();
    let sync_rid = conn.send_body(Body::Sync(Sync { cursors: cursor_list }))?;
    let started = Instant::now();
    let mut last_ping = Instant::now();
    let mut last_frame = Instant::now();
    loop {
        if !final_sync && (ctl.phase() == PHASE_STOP || hold.is_some_and(|h| started.elapsed() >= h)) {
            return Ok(());
        }
        if final_sync && started.elapsed() > FINAL_TIMEOUT {
            return Err(ClientError::Closed);
        }
        if last_ping.elapsed() > plan.ping_every {
            conn.send_body(Body::Ping(Ping { nonce: 1 }))?;
            last_ping = Instant::now();
        }
        if last_frame.elapsed() > plan.ping_every * 3 {
            ctl.error("silent_connection");
            return Err(ClientError::Closed);
        }
        let Some(frame) = conn.recv_timeout(Duration::from_millis(50))? else {
            continue;
        };
        last_frame = Instant::now();
        match frame.body {
            Body::Message(m) => {
                ctl.deliveries.fetch_add(1, Ordering::Relaxed);
                let cursor = cursors.entry(m.chat_id).or_insert(0);
                if m.seq == *cursor + 1 {
                    *cursor = m.seq;
                }
                rec.delivered(device, Seen::from(&m));
            }
            Body::SyncDone(_) if frame.request_id == sync_rid && final_sync => return Ok(()),
            Body::Resync => {
                // Pushes stopped: sync again on this connection (never happens to a reading device).
                ctl.error("resync");
                return Ok(());
            }
            Body::Error(e) => {
                ctl.error(&code_name(e.code));
                if frame.request_id == sync_rid {
                    return Err(ClientError::Closed);
                }
            }
            _ => {}
        }
    }
}

/// Reads every message of `chat` back with `History` (newest first, paged)
/// as `reader` and records it.
///
/// # Errors
/// natterd did not answer within [`FINAL_TIMEOUT`].
pub fn read_back(
    addr: SocketAddr,
    reader: &Account,
    chat: u64,
    rec: &Recorder,
) -> Result<usize, ClientError> {
    let all = history(addr, reader, chat)?;
    let n = all.len();
    rec.read_back(reader.user, chat, all);
    Ok(n)
}

/// Every message of `chat` as `reader` gets it from `History`.
///
/// # Errors
/// natterd did not answer within [`FINAL_TIMEOUT`].
pub fn history(addr: SocketAddr, reader: &Account, chat: u64) -> Result<Vec<Seen>, ClientError> {
    let end = Instant::now() + FINAL_TIMEOUT;
    let (mut conn, _) = retry(FINAL_TIMEOUT, || {
        Connection::connect(addr, &reader.token, "reader")
    })?;
    conn.set_timeout(IO_TIMEOUT);
    let mut all = Vec::new();
    let mut before = 0u64;
    let mut backoff = Backoff::new(RETRY_BACKOFF, RECONNECT_CAP, chat);
    loop {
        let answer = conn.request(Body::History(History {
            chat_id: chat,
            before_seq: before,
            limit: HISTORY_PAGE,
        }));
        match answer {
            Ok(Frame {
                body: Body::HistoryPage(page),
                ..
            }) => {
                backoff.reset();
                let oldest = page.messages.iter().map(|m| m.seq).min();
                all.extend(page.messages.iter().map(Seen::from));
                match oldest {
                    Some(seq) if page.has_more => before = seq,
                    _ => return Ok(all),
                }
            }
            Err(ClientError::Refused { .. }) if Instant::now() < end => backoff.wait(),
            Err(e) => return Err(e),
            Ok(other) => {
                return Err(ClientError::InvalidArgument(format!(
                    "History answered with {:?}",
                    other.body
                )));
            }
        }
    }
}

/// A non-member `outsider` tries to send to and read `chat`; records whether
/// natterd allowed either.
///
/// # Errors
/// natterd did not answer.
pub fn probe_non_member(
    addr: SocketAddr,
    outsider: &Account,
    chat: u64,
    rec: &Recorder,
) -> Result<(), ClientError> {
    let (mut conn, _) = Connection::connect(addr, &outsider.token, "prober")?;
    conn.set_timeout(IO_TIMEOUT);
    let send = conn.request(Body::Send(Send {
        chat_id: chat,
        client_msg_id: 0xDEAD_BEEF,
        text: "let me in".into(),
    }));
    let allowed = matches!(
        &send,
        Ok(Frame {
            body: Body::SendOk(_),
            ..
        })
    );
    if let Ok(Frame {
        body: Body::SendOk(ok),
        ..
    }) = &send
    {
        rec.acked(outsider.user, chat, ok.client_msg_id, ok.seq);
    }
    rec.probe(outsider.user, chat, "send", allowed);
    let page = conn.request(Body::History(History {
        chat_id: chat,
        before_seq: 0,
        limit: HISTORY_PAGE,
    }))?;
    let leaked = matches!(&page.body, Body::HistoryPage(p) if !p.messages.is_empty());
    rec.probe(outsider.user, chat, "read history", leaked);
    Ok(())
}
