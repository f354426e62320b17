//! The `seam` scenario: exactly-once delivery across the live/sync seam, under
//! reconnects and (with `--spawn --kill-restarts N`) `kill -9` restarts of natterd
//! (issue 9, item 5).
//!
//! Setup (fresh users per run, `bench_seam_{run}_…`): [`SENDERS`] senders and one
//! recipient user per [`DEVICES_PER_USER`] recipient devices; two groups (owned by
//! the first two senders, everyone in both) and one DM per recipient user with "its"
//! sender. So each device has three chats.
//!
//! * **Senders** send `--rate` messages per second in total (default 2,000), open
//!   loop, round-robin over their chats. A send not yet acknowledged when its
//!   connection is lost (or refused with an `Error`) is sent again under the same
//!   `client_msg_id` once the sender is connected again (`retried`).
//! * **Devices** (`--devices`, default 40) connect, hold the connection for a random
//!   time up to `--hold`, disconnect, and do it again. Each (re)connect writes
//!   `Hello` + `Sync{cursors}` in **one** write (`--pipelined`, the default; on WebSocket
//!   two messages, one per frame, both before the `Welcome`) or sends
//!   `Sync` only after the `Welcome` (`--after-welcome`). A device's cursor in a
//!   chat is the highest seq up to which it has seen every seq (contiguously), so a
//!   well-behaved natterd never sends it anything at or below that again.
//! * Every `Message` a device receives (pushed or in a sync) is checked against what
//!   that device has seen: `duplicated` = a (chat, seq) seen before; `reordered` = a
//!   seq lower than the highest one it has seen in that chat.
//!   `anomalies_before_sync_done` counts those that came before the `SyncDone` of
//!   the connection's sync.
//! * `--kill-restarts N` (needs `--spawn`): N times, at seeded random instants in
//!   the middle 80 % of `--duration`, natterd is killed with SIGKILL and restarted on
//!   the same data directory and ports.
//! * At the end the senders drain (every send acknowledged, retrying as needed);
//!   then each device connects once more, syncs after its `Welcome` and must hold
//!   every seq 1..head of each of its chats (`lost` counts the missing ones, summed
//!   over devices; `committed` is the sum of the heads).
//!
//! Senders and devices connect over `--transport` (natter-client's blocking
//! connection: raw TCP, or the URL of TLS, WebSocket or QUIC, pinned to natterd's
//! fingerprint); `--kill-restarts` needs TCP (a restarted natterd keeps only its HTTP
//! and TCP ports).
//!
//! Randomness (hold times, kill instants) comes from `--seed` through SplitMix64,
//! so two runs with the same seed make the same choices.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use natter_client::{ClientError, Connection, HttpClient, Login, Trust};
use natter_wire::{Body, Cursor, ErrorCode, Frame, Hello, PROTOCOL_VERSION, Send, Sync};

use crate::accounts::PASSWORD;
use crate::error::BenchError;
use crate::interrupt;
use crate::report::Report;
use crate::scenarios::Options;
use crate::scenarios::messaging::setup::befriend;
use crate::spawn::SpawnedServer;
use crate::target::Target;
use crate::transport::Kind;

/// Sending users (the first two own the groups).
const SENDERS: usize = 4;
/// Devices per recipient user (the last user may have fewer).
const DEVICES_PER_USER: usize = 4;
/// Messages per second in total unless `--rate` says otherwise (the issue's load).
pub(crate) const DEFAULT_RATE: u64 = 2_000;
/// Longest wait for one frame or one connect before a connection counts as dead.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two failed connects (natterd restarting).
const RECONNECT_PAUSE: Duration = Duration::from_millis(50);
/// How long the senders may take after `--duration` to get every send acknowledged.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a device's final sync may take.
const FINAL_SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest wait of a sender for its next frame before it checks the clock again.
const SENDER_POLL: Duration = Duration::from_millis(2);
/// Unanswered sends older than this are sent again (same `client_msg_id`): a send
/// whose answer a restart swallowed.
const RESEND_AFTER: Duration = Duration::from_secs(3);
/// Phase: devices reconnect and senders send.
const PHASE_RUN: u8 = 0;
/// Phase: `--duration` is over; devices disconnect and wait, senders drain.
const PHASE_DRAIN: u8 = 1;
/// Phase: senders are done; devices make their final sync.
const PHASE_FINAL: u8 = 2;

/// The flags of the `seam` scenario (it also takes `--rate`, `--duration`).
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "seam options")]
pub(crate) struct SeamArgs {
    /// seam: recipient devices that keep reconnecting.
    #[arg(long, default_value_t = 40, value_name = "K")]
    pub(crate) devices: usize,
    /// seam: each reconnect writes Hello + Sync in one write (the default).
    #[arg(long, conflicts_with = "after_welcome")]
    pub(crate) pipelined: bool,
    /// seam: each reconnect sends Sync only after the Welcome.
    #[arg(long)]
    pub(crate) after_welcome: bool,
    /// seam: devices say `Hello{sync_first: true}`, so live pushes wait for their
    /// Sync (the reconnect recipe of docs/PROTOCOL.md; without it a device gets
    /// pushes from the Welcome and the seam cannot be exact).
    #[arg(long)]
    pub(crate) sync_first: bool,
    /// seam: kill natterd with SIGKILL this many times and restart it (needs --spawn).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub(crate) kill_restarts: u32,
    /// seam: longest time a device stays connected before it reconnects.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub(crate) hold: Duration,
    /// Seed of the run's random choices (seam: hold times and kill instants).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

/// Checks the flags before anything starts.
///
/// # Errors
/// [`BenchError::Usage`] for zero devices, a zero rate or hold, or kills without
/// `--spawn` or over another transport than TCP (`tcp`: `--transport tcp`).
pub(crate) fn check_args(
    args: &SeamArgs,
    options: &Options,
    spawn: bool,
    tcp: bool,
) -> Result<(), BenchError> {
    if args.devices == 0 || args.devices > 1_000 {
        return Err(BenchError::Usage("--devices must be 1 to 1000".into()));
    }
    if options.rate == Some(0) {
        return Err(BenchError::Usage("--rate must be at least 1".into()));
    }
    if args.hold.is_zero() || options.duration.is_zero() {
        return Err(BenchError::Usage(
            "--hold and --duration must be longer than 0".into(),
        ));
    }
    if args.kill_restarts > 0 && !spawn {
        return Err(BenchError::Usage(
            "--kill-restarts needs --spawn (the benchmark restarts the natterd it started)".into(),
        ));
    }
    if args.kill_restarts > 0 && !tcp {
        return Err(BenchError::Usage(
            "--kill-restarts needs --transport tcp: a restarted natterd keeps its HTTP and TCP ports, \
             not its TLS, WebSocket and QUIC ones"
                .into(),
        ));
    }
    Ok(())
}

/// How the senders and devices connect: raw TCP (`Connection::open`, as
/// before `--transport`) or natter-client's URL dialer for TLS, WebSocket and
/// QUIC, pinned to natterd's certificate fingerprint.
struct Dialer {
    tcp: std::net::SocketAddr,
    /// `None` for raw TCP.
    url: Option<String>,
    trust: Option<Trust>,
}

impl Dialer {
    fn new(target: &Target) -> Dialer {
        let url = (target.dial.kind() != Kind::Tcp).then(|| target.dial.url());
        Dialer {
            tcp: target.tcp,
            url,
            trust: target.cert_sha256.clone().map(Trust::Fingerprint),
        }
    }

    /// Whether each frame must be its own message (WebSocket), so that
    /// `Hello` + `Sync` cannot share one write.
    fn one_frame_per_message(&self) -> bool {
        self.url
            .as_deref()
            .is_some_and(|u| u.starts_with("ws://") || u.starts_with("wss://"))
    }

    /// A connection, nothing sent yet (TLS handshake / WebSocket upgrade / QUIC
    /// handshake done).
    fn open(&self) -> Result<Connection, ClientError> {
        match &self.url {
            None => Connection::open(self.tcp),
            Some(url) => Connection::open_url(url, self.trust.as_ref(), None),
        }
    }
}

/// SplitMix64: a small, seeded, good-enough generator for benchmark choices.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix(u64);

impl SplitMix {
    /// A generator for `seed` and stream `stream` (e.g. a device's index).
    pub(crate) fn new(seed: u64, stream: u64) -> SplitMix {
        let mut rng = SplitMix(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration uniformly in `[low, high]`.
    pub(crate) fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_nanos() as u64;
        low + Duration::from_nanos(if span == 0 {
            0
        } else {
            self.next_u64() % (span + 1)
        })
    }
}

/// The instants (offsets from the start) of `kills` kill -9s during `duration`:
/// seeded, sorted, in its middle 80 %.
pub(crate) fn kill_instants(seed: u64, kills: u32, duration: Duration) -> Vec<Duration> {
    let mut rng = SplitMix::new(seed, u64::MAX);
    let mut at: Vec<Duration> = (0..kills)
        .map(|_| rng.between(duration / 10, duration * 9 / 10))
        .collect();
    at.sort_unstable();
    at
}

/// What one device has seen of one chat.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ChatView {
    seen: HashSet<u64>,
    highest: u64,
    contiguous: u64,
}

/// How a received seq compares with what the device had seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// New and above everything seen.
    InOrder,
    /// Seen before.
    Duplicate,
    /// New but below the highest seen.
    Reordered,
}

impl ChatView {
    /// Records `seq` and says how it compares.
    pub(crate) fn observe(&mut self, seq: u64) -> Seen {
        if !self.seen.insert(seq) {
            return Seen::Duplicate;
        }
        let verdict = if seq < self.highest {
            Seen::Reordered
        } else {
            Seen::InOrder
        };
        self.highest = self.highest.max(seq);
        while self.seen.contains(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        verdict
    }

    /// The cursor to sync from: every seq up to it has been seen.
    pub(crate) fn cursor(&self) -> u64 {
        self.contiguous
    }

    /// Seqs in `1..=head` never seen.
    pub(crate) fn missing(&self, head: u64) -> u64 {
        head.saturating_sub(self.contiguous)
            - (self.contiguous + 1..=head)
                .filter(|s| self.seen.contains(s))
                .count() as u64
    }
}

/// One device's counts.
#[derive(Clone, Debug, Default)]
struct DeviceTally {
    received: u64,
    duplicated: u64,
    reordered: u64,
    before_sync_done: u64,
    reconnects: u64,
    lost: u64,
    heads: HashMap<u64, u64>,
    codes: BTreeMap<String, u64>,
    errors: u64,
    first_anomaly: Option<String>,
}

/// One sender's counts.
#[derive(Clone, Debug, Default)]
struct SenderTally {
    sent: u64,
    acked: u64,
    retried: u64,
    unacked: u64,
    codes: BTreeMap<String, u64>,
}

/// A recipient device of the plan.
#[derive(Clone, Debug)]
struct DevicePlan {
    token: String,
    chats: Vec<u64>,
}

/// A sender of the plan.
#[derive(Clone, Debug)]
struct SenderPlan {
    token: String,
    chats: Vec<u64>,
}

/// What the threads share.
struct Shared {
    phase: AtomicU8,
    kills: AtomicU64,
    /// Devices say `Hello{sync_first}` (live pushes held until their Sync).
    sync_first: bool,
}

/// Runs the scenario.
///
/// # Errors
/// [`BenchError::Client`] / [`BenchError::Setup`] when the setup is refused,
/// [`BenchError::Server`] when a restart fails, [`BenchError::Interrupted`].
pub(crate) fn run(
    target: &Target,
    server: Option<&mut SpawnedServer>,
    options: &Options,
    args: &SeamArgs,
) -> Result<Report, BenchError> {
    let rate = options.rate.unwrap_or(DEFAULT_RATE);
    let (senders, devices) = prepare(&target.http, args.devices)?;
    let chats: HashSet<u64> = senders.iter().flat_map(|s| s.chats.iter().copied()).collect();
    let pipelined = !args.after_welcome;
    println!(
        "seam: {} senders at {rate} msgs/s in total into {} chats; {} devices reconnecting \
         (hold ≤ {:?}, Sync {}{}); {} kill -9 restarts; seed {}",
        senders.len(),
        chats.len(),
        devices.len(),
        args.hold,
        if pipelined {
            "pipelined behind Hello"
        } else {
            "after Welcome"
        },
        if args.sync_first {
            ", Hello{sync_first}"
        } else {
            ""
        },
        args.kill_restarts,
        args.seed
    );
    let shared = Shared {
        phase: AtomicU8::new(PHASE_RUN),
        kills: AtomicU64::new(0),
        sync_first: args.sync_first,
    };
    let per_sender = (rate as f64 / senders.len() as f64).max(1e-3);
    let dialer = Dialer::new(target);
    let tcp = &dialer;
    let started = Instant::now();
    let kill_error: Mutex<Option<BenchError>> = Mutex::new(None);
    let (sender_tallies, device_tallies, server_rss) = thread::scope(|scope| {
        let sender_handles: Vec<_> = senders
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let shared = &shared;
                scope.spawn(move || send_loop(tcp, plan, per_sender, i as u64, started, shared))
            })
            .collect();
        let device_handles: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let shared = &shared;
                let mut rng = SplitMix::new(args.seed, i as u64);
                let hold = args.hold;
                scope.spawn(move || device_loop(tcp, plan, pipelined, hold, &mut rng, shared))
            })
            .collect();

        // The controller: kills at their instants, then the end of the run.
        let mut server = server;
        for at in kill_instants(args.seed, args.kill_restarts, options.duration) {
            if !wait_until(started + at) {
                break;
            }
            if let Some(server) = server.as_deref_mut() {
                let t = Instant::now();
                let result = server.restart();
                shared.kills.fetch_add(1, Ordering::Relaxed);
                println!(
                    "seam: {:.1}s: natterd killed with SIGKILL and restarted in {:.0} ms",
                    started.elapsed().as_secs_f64(),
                    t.elapsed().as_secs_f64() * 1e3
                );
                if let Err(e) = result {
                    if let Ok(mut slot) = kill_error.lock() {
                        *slot = Some(e);
                    }
                    break;
                }
            }
        }
        let _ = wait_until(started + options.duration);
        shared.phase.store(PHASE_DRAIN, Ordering::Release);
        println!("seam: sending stopped; draining the senders");
        let senders: Vec<SenderTally> = sender_handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        shared.phase.store(PHASE_FINAL, Ordering::Release);
        println!("seam: final sync of every device");
        let devices: Vec<DeviceTally> = device_handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        // After restarts natterd has a new process id.
        let rss = match server.as_deref() {
            Some(server) => target.clone().with_pid(server.pid()).server_rss(),
            None => target.server_rss(),
        };
        (senders, devices, rss)
    });
    interrupt::check()?;
    if let Some(e) = kill_error.into_inner().ok().flatten() {
        return Err(e);
    }

    let mut report = Report::new("seam", "tcp");
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut heads: HashMap<u64, u64> = HashMap::new();
    let (mut sent, mut acked, mut retried, mut unacked) = (0, 0, 0, 0);
    for s in &sender_tallies {
        sent += s.sent;
        acked += s.acked;
        retried += s.retried;
        unacked += s.unacked;
        for (code, n) in &s.codes {
            *codes.entry(code.clone()).or_default() += n;
        }
    }
    let (mut received, mut duplicated, mut reordered, mut before, mut reconnects, mut lost, mut errors) =
        (0, 0, 0, 0, 0, 0, 0);
    for d in &device_tallies {
        received += d.received;
        duplicated += d.duplicated;
        reordered += d.reordered;
        before += d.before_sync_done;
        reconnects += d.reconnects;
        lost += d.lost;
        errors += d.errors;
        for (code, n) in &d.codes {
            *codes.entry(code.clone()).or_default() += n;
        }
        for (&chat, &head) in &d.heads {
            let entry = heads.entry(chat).or_default();
            *entry = (*entry).max(head);
        }
    }
    if let Some(first) = device_tallies.iter().find_map(|d| d.first_anomaly.clone()) {
        println!("seam: first anomaly: {first}");
    }
    report.duration_s = Some(options.duration.as_secs_f64());
    report.sent = Some(sent);
    report.acked = Some(acked);
    report.retried = Some(retried);
    report.delivered = Some(received);
    report.msgs_per_sec = Some(acked as f64 / options.duration.as_secs_f64());
    report.devices = Some(devices.len() as u64);
    report.reconnects = Some(reconnects);
    report.kill_restarts = Some(shared.kills.load(Ordering::Relaxed));
    report.committed = Some(heads.values().sum());
    report.duplicated = Some(duplicated);
    report.reordered = Some(reordered);
    report.anomalies_before_sync_done = Some(before);
    report.lost = Some(lost);
    report.errors = Some(errors + unacked);
    report.errors_by_code = Some(codes);
    report.server_rss_bytes = server_rss;
    Ok(report)
}

/// Sleeps until `at` (in short steps, watching for Ctrl-C); false if interrupted.
fn wait_until(at: Instant) -> bool {
    while Instant::now() < at {
        if interrupt::requested() {
            return false;
        }
        thread::sleep(
            at.saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50)),
        );
    }
    true
}

/// Accounts, friendships and chats; fresh names per run so every chat starts at
/// seq 1.
fn prepare(http: &HttpClient, device_count: usize) -> Result<(Vec<SenderPlan>, Vec<DevicePlan>), BenchError> {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prefix = format!("bench_seam_{run}_");
    let users = device_count.div_ceil(DEVICES_PER_USER);
    let account = |name: &str, device: &str| -> Result<Login, ClientError> {
        match http.signup(name, PASSWORD) {
            Ok(_) => {}
            Err(e) if e.http_status() == Some(409) => {}
            Err(e) => return Err(e),
        }
        http.login(name, PASSWORD, device)
    };
    let sender_names: Vec<String> = (0..SENDERS).map(|i| format!("{prefix}s{i}")).collect();
    let recipient_names: Vec<String> = (0..users).map(|j| format!("{prefix}r{j}")).collect();
    let senders: Vec<Login> = sender_names
        .iter()
        .map(|n| account(n, "seam-sender"))
        .collect::<Result<_, _>>()?;
    let recipients: Vec<Login> = recipient_names
        .iter()
        .map(|n| account(n, "seam-setup"))
        .collect::<Result<_, _>>()?;
    // The group owners befriend everyone; each recipient befriends its DM's sender.
    for owner in senders.iter().take(2) {
        for (other, name) in senders.iter().zip(&sender_names) {
            if other.user_id != owner.user_id {
                befriend(http, owner, other, name)?;
            }
        }
        for (other, name) in recipients.iter().zip(&recipient_names) {
            befriend(http, owner, other, name)?;
        }
    }
    let mut groups = Vec::new();
    for (g, owner) in senders.iter().take(2).enumerate() {
        let members: Vec<u64> = senders
            .iter()
            .chain(&recipients)
            .map(|l| l.user_id)
            .filter(|&id| id != owner.user_id)
            .collect();
        groups.push(http.create_group(&owner.token, &format!("seam {g}"), &members)?);
    }
    let mut sender_plans: Vec<SenderPlan> = senders
        .iter()
        .map(|s| SenderPlan {
            token: s.token.clone(),
            chats: groups.clone(),
        })
        .collect();
    let mut device_plans = Vec::new();
    for (j, (recipient, name)) in recipients.iter().zip(&recipient_names).enumerate() {
        let s = j % SENDERS;
        let (Some(sender), Some(sender_plan)) = (senders.get(s), sender_plans.get_mut(s)) else {
            continue;
        };
        befriend(http, sender, recipient, name)?;
        let dm = http.direct_chat(&sender.token, recipient.user_id)?;
        sender_plan.chats.push(dm);
        let mut chats = groups.clone();
        chats.push(dm);
        for d in 0..DEVICES_PER_USER {
            if device_plans.len() == device_count {
                break;
            }
            let login = http.login(name, PASSWORD, &format!("seam-device-{d}"))?;
            device_plans.push(DevicePlan {
                token: login.token,
                chats: chats.clone(),
            });
        }
    }
    Ok((sender_plans, device_plans))
}

/// Frame name of an `Error` code for the per-code counts.
fn code_name(code: u16) -> String {
    ErrorCode::from_u16(code).map_or_else(|| format!("code {code}"), |c| c.name().to_owned())
}

/// Connects and authenticates, retrying while natterd is away (until `deadline`,
/// if any); `None` if the run ended first.
fn connect_retrying(
    tcp: &Dialer,
    token: &str,
    shared: &Shared,
    deadline: Option<Instant>,
) -> Option<Connection> {
    loop {
        let late = deadline.is_some_and(|d| Instant::now() >= d);
        if late || shared.phase.load(Ordering::Acquire) >= PHASE_FINAL || interrupt::requested() {
            return None;
        }
        if let Ok(mut conn) = tcp.open() {
            conn.set_timeout(IO_TIMEOUT);
            if conn.hello(token, "natter-bench seam sender").is_ok() {
                return Some(conn);
            }
        }
        thread::sleep(RECONNECT_PAUSE);
    }
}

/// One sender: open loop at `rate` per second, retrying unanswered sends under
/// their `client_msg_id`.
fn send_loop(
    tcp: &Dialer,
    plan: &SenderPlan,
    rate: f64,
    index: u64,
    started: Instant,
    shared: &Shared,
) -> SenderTally {
    let mut tally = SenderTally::default();
    // client_msg_id → (chat, last sent, request id)
    let mut pending: BTreeMap<u64, (u64, Instant, u64)> = BTreeMap::new();
    let mut by_request: HashMap<u64, u64> = HashMap::new();
    let mut next_id = (index << 48) | 1;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut due = started;
    let mut conn: Option<Connection> = None;
    let mut drain_until: Option<Instant> = None;
    loop {
        let phase = shared.phase.load(Ordering::Acquire);
        if phase >= PHASE_DRAIN {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + DRAIN_TIMEOUT);
            if pending.is_empty() || Instant::now() >= until || interrupt::requested() {
                break;
            }
        }
        if conn.is_none() {
            conn = connect_retrying(tcp, &plan.token, shared, drain_until);
            let Some(c) = conn.as_mut() else { break };
            // Everything unanswered goes again under its client_msg_id.
            by_request.clear();
            let now = Instant::now();
            for (&cmid, (chat, last, request)) in pending.iter_mut() {
                if let Ok(id) = send(c, *chat, cmid) {
                    *last = now;
                    *request = id;
                    by_request.insert(id, cmid);
                    tally.retried += 1;
                }
            }
        }
        let Some(c) = conn.as_mut() else { break };
        let now = Instant::now();
        let mut dead = false;
        if phase == PHASE_RUN {
            while due <= now {
                let chat = plan
                    .chats
                    .get((next_id as usize) % plan.chats.len().max(1))
                    .copied()
                    .unwrap_or(0);
                let cmid = next_id;
                next_id += 1;
                due += interval;
                tally.sent += 1;
                match send(c, chat, cmid) {
                    Ok(id) => {
                        pending.insert(cmid, (chat, now, id));
                        by_request.insert(id, cmid);
                    }
                    Err(_) => {
                        pending.insert(cmid, (chat, now, 0));
                        dead = true;
                        break;
                    }
                }
            }
        }
        // Answers lost by a restart: send again.
        if !dead {
            for (&cmid, (chat, last, request)) in pending.iter_mut() {
                if now.duration_since(*last) > RESEND_AFTER {
                    match send(c, *chat, cmid) {
                        Ok(id) => {
                            *last = now;
                            *request = id;
                            by_request.insert(id, cmid);
                            tally.retried += 1;
                        }
                        Err(_) => {
                            dead = true;
                            break;
                        }
                    }
                }
            }
        }
        if !dead {
            let wait = if phase == PHASE_RUN {
                due.saturating_duration_since(Instant::now()).min(SENDER_POLL)
            } else {
                SENDER_POLL
            };
            match c.recv_timeout(wait) {
                Ok(Some(frame)) => match frame.body {
                    Body::SendOk(ok) => {
                        if pending.remove(&ok.client_msg_id).is_some() {
                            tally.acked += 1;
                        }
                        by_request.remove(&frame.request_id);
                    }
                    Body::Error(e) => {
                        *tally.codes.entry(code_name(e.code)).or_default() += 1;
                        // Refused (e.g. overloaded): sent again after RESEND_AFTER.
                        let request = if e.request_id != 0 {
                            e.request_id
                        } else {
                            frame.request_id
                        };
                        if let Some(cmid) = by_request.remove(&request)
                            && let Some(entry) = pending.get_mut(&cmid)
                        {
                            entry.1 = Instant::now() - RESEND_AFTER + Duration::from_millis(100);
                        }
                    }
                    _ => {}
                },
                Ok(None) => {}
                Err(_) => dead = true,
            }
        }
        if dead {
            conn = None;
        }
    }
    tally.unacked = pending.len() as u64;
    tally
}

/// Sends one `Send` for `cmid` in `chat`; returns its request id.
fn send(conn: &mut Connection, chat: u64, cmid: u64) -> Result<u64, ClientError> {
    conn.send_body(Body::Send(Send {
        chat_id: chat,
        client_msg_id: cmid,
        text: format!("seam {cmid}"),
    }))
}

/// One device: reconnect, sync, receive for a random hold, disconnect, again; then
/// the final sync.
fn device_loop(
    tcp: &Dialer,
    plan: &DevicePlan,
    pipelined: bool,
    hold: Duration,
    rng: &mut SplitMix,
    shared: &Shared,
) -> DeviceTally {
    let mut tally = DeviceTally::default();
    let mut views: HashMap<u64, ChatView> = plan.chats.iter().map(|&c| (c, ChatView::default())).collect();
    while shared.phase.load(Ordering::Acquire) == PHASE_RUN && !interrupt::requested() {
        let until = Instant::now() + rng.between(hold / 10, hold);
        session(tcp, plan, pipelined, &mut views, &mut tally, until, shared, false);
        tally.reconnects += 1;
    }
    while shared.phase.load(Ordering::Acquire) < PHASE_FINAL && !interrupt::requested() {
        thread::sleep(Duration::from_millis(20));
    }
    // The final check: Sync after Welcome, until SyncDone.
    let deadline = Instant::now() + FINAL_SYNC_TIMEOUT;
    while Instant::now() < deadline && !interrupt::requested() {
        if session(tcp, plan, false, &mut views, &mut tally, deadline, shared, true) {
            for (chat, view) in &views {
                let head = tally.heads.get(chat).copied().unwrap_or(0);
                tally.lost += view.missing(head);
            }
            return tally;
        }
        thread::sleep(RECONNECT_PAUSE);
    }
    tally.errors += 1;
    tally
}

/// One connection of a device until `until` (or, `final_sync`, until `SyncDone`);
/// true when a `SyncDone` came.
#[allow(clippy::too_many_arguments)]
fn session(
    tcp: &Dialer,
    plan: &DevicePlan,
    pipelined: bool,
    views: &mut HashMap<u64, ChatView>,
    tally: &mut DeviceTally,
    until: Instant,
    shared: &Shared,
    final_sync: bool,
) -> bool {
    let Ok(mut conn) = tcp.open() else {
        thread::sleep(RECONNECT_PAUSE);
        return false;
    };
    conn.set_timeout(IO_TIMEOUT);
    let cursors: Vec<Cursor> = plan
        .chats
        .iter()
        .map(|&chat_id| Cursor {
            chat_id,
            seq: views.get(&chat_id).map_or(0, ChatView::cursor),
        })
        .collect();
    let hello = Frame::new(
        1,
        Body::Hello(Hello {
            token: plan.token.clone(),
            device: "natter-bench seam device".into(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: shared.sync_first,
            conversation: false,
        }),
    )
    .encode();
    let sent_cursors: Vec<(u64, u64)> = cursors.iter().map(|c| (c.chat_id, c.seq)).collect();
    let sync = Frame::new(2, Body::Sync(Sync { cursors })).encode();
    let mut in_session = 0u64;
    let mut welcomed = false;
    if pipelined && tcp.one_frame_per_message() {
        // Still both before the Welcome, but one WebSocket message per frame
        // (natterd closes a message holding two).
        if conn.send_raw(&hello).is_err() || conn.send_raw(&sync).is_err() {
            return false;
        }
    } else if pipelined {
        let mut both = hello.to_vec();
        both.extend_from_slice(&sync);
        if conn.send_raw(&both).is_err() {
            return false;
        }
    } else if conn.send_raw(&hello).is_err() {
        return false;
    }
    let mut sync_done = false;
    loop {
        if interrupt::requested() {
            return sync_done;
        }
        if !final_sync && shared.phase.load(Ordering::Acquire) != PHASE_RUN {
            return sync_done;
        }
        let now = Instant::now();
        if now >= until || (final_sync && sync_done) {
            return sync_done;
        }
        let frame = match conn.recv_timeout((until - now).min(IO_TIMEOUT)) {
            Ok(Some(frame)) => frame,
            Ok(None) if final_sync => continue,
            Ok(None) => return sync_done,
            Err(_) => return sync_done, // natterd went away (a kill -9) or closed
        };
        match frame.body {
            Body::Welcome(_) => {
                welcomed = true;
                if !pipelined && conn.send_raw(&sync).is_err() {
                    return false;
                }
            }
            Body::Message(m) => {
                let Some(view) = views.get_mut(&m.chat_id) else {
                    continue;
                };
                tally.received += 1;
                in_session += 1;
                let verdict = view.observe(m.seq);
                if verdict != Seen::InOrder {
                    match verdict {
                        Seen::Duplicate => tally.duplicated += 1,
                        _ => tally.reordered += 1,
                    }
                    if !sync_done {
                        tally.before_sync_done += 1;
                    }
                    if tally.first_anomaly.is_none() {
                        tally.first_anomaly = Some(format!(
                            "chat {} seq {} {:?} (highest seen {}, cursor {}){}; message {in_session} of \
                             the connection, {}, Sync cursors {sent_cursors:?}",
                            m.chat_id,
                            m.seq,
                            verdict,
                            view.highest,
                            view.cursor(),
                            if sync_done { "" } else { " before SyncDone" },
                            if welcomed {
                                "after the Welcome"
                            } else {
                                "before the Welcome"
                            },
                        ));
                    }
                }
            }
            Body::SyncDone(done) => {
                sync_done = true;
                for head in done.heads {
                    if views.contains_key(&head.chat_id) {
                        let entry = tally.heads.entry(head.chat_id).or_default();
                        *entry = (*entry).max(head.seq);
                    }
                }
            }
            Body::Error(e) => {
                *tally.codes.entry(code_name(e.code)).or_default() += 1;
                if !welcomed {
                    return false;
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_counts_duplicates_and_reorders_and_keeps_a_contiguous_cursor() {
        let mut view = ChatView::default();
        assert_eq!(view.observe(1), Seen::InOrder);
        assert_eq!(view.observe(2), Seen::InOrder);
        assert_eq!(view.observe(4), Seen::InOrder);
        assert_eq!(view.cursor(), 2);
        assert_eq!(view.observe(3), Seen::Reordered);
        assert_eq!(view.cursor(), 4);
        assert_eq!(view.observe(2), Seen::Duplicate);
        assert_eq!(view.missing(4), 0);
        assert_eq!(view.observe(7), Seen::InOrder);
        assert_eq!(view.missing(8), 3); // 5, 6, 8
        assert_eq!(ChatView::default().missing(3), 3);
    }

    #[test]
    fn the_issue_example_counts_as_reordered_and_duplicated() {
        // cursor 282: 289 290 291 283 … 291
        let mut view = ChatView::default();
        for seq in 1..=282 {
            view.observe(seq);
        }
        let mut verdicts = Vec::new();
        for seq in [289, 290, 291].into_iter().chain(283..=291) {
            verdicts.push(view.observe(seq));
        }
        let reordered = verdicts.iter().filter(|v| **v == Seen::Reordered).count();
        let duplicated = verdicts.iter().filter(|v| **v == Seen::Duplicate).count();
        assert_eq!((reordered, duplicated), (6, 3));
        assert_eq!(view.cursor(), 291);
    }

    #[test]
    fn randomness_is_seeded() {
        let a: Vec<u64> = (0..4).map(|_| SplitMix::new(7, 1).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(SplitMix::new(7, 1).next_u64(), SplitMix::new(7, 2).next_u64());
        let d = Duration::from_secs(20);
        let kills = kill_instants(3, 10, d);
        assert_eq!(kills, kill_instants(3, 10, d));
        assert_eq!(kills.len(), 10);
        assert!(kills.windows(2).all(|w| w[0] <= w[1]));
        assert!(kills.iter().all(|k| *k >= d / 10 && *k <= d * 9 / 10));
        let mut rng = SplitMix::new(1, 1);
        for _ in 0..100 {
            let x = rng.between(Duration::from_millis(10), Duration::from_millis(20));
            assert!(x >= Duration::from_millis(10) && x <= Duration::from_millis(20));
        }
    }

    #[test]
    fn arguments_are_checked() {
        let args = SeamArgs {
            devices: 40,
            pipelined: false,
            after_welcome: false,
            sync_first: false,
            kill_restarts: 0,
            hold: Duration::from_secs(1),
            seed: 1,
        };
        let options = Options {
            duration: Duration::from_secs(10),
            rate: None,
            text_bytes: None,
        };
        assert!(check_args(&args, &options, false, true).is_ok());
        let kills = SeamArgs {
            kill_restarts: 3,
            ..args.clone()
        };
        assert!(check_args(&kills, &options, false, true).is_err());
        assert!(check_args(&kills, &options, true, true).is_ok());
        // Restarts keep only the HTTP and TCP ports: refused over another transport.
        let err = check_args(&kills, &options, true, false).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--transport tcp"), "{err}");
        let none = SeamArgs {
            devices: 0,
            ..args.clone()
        };
        assert!(check_args(&none, &options, true, true).is_err());
    }
}
