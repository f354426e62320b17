//! The `push` scenario (issue 14): offline devices with pushers in 100-member
//! groups; the bench runs the push gateway itself.
//!
//! Setup: G·M users `bench_p_{i}` (default 100 groups of 100 = 10,000), group
//! `g` owned by its first user, who befriends the others. Each user also logs
//! in a second device, `phone`, which never connects: an offline device.
//!
//! 1. **Push off**: the owner of each group (one live connection per group)
//!    sends closed-loop (`--push-window` sends in flight) for `--duration`;
//!    nobody has a pusher yet. Acked sends per second = `msgs_per_sec_push_off`.
//! 2. Every phone registers a pusher whose `gateway_url` is the bench's own
//!    gateway (a small HTTP/1.1 server on loopback that answers
//!    `{"rejected":[]}` and records what arrives).
//! 3. **Push on**: the same senders for the same `--duration`; each message now
//!    owes a notification to 99 offline devices (coalesced per device and chat
//!    per natterd's `--push-coalesce`, which the bench passes as
//!    `--push-coalesce-window`). Then the drain: until natterd's
//!    `natter_push_queue_depth` is 0.
//!
//! 4. **Push off again**: every pusher removed, the same senders once more (the
//!    store has grown meanwhile; the two off phases bracket the on phase).
//!
//! Figures: `msgs_per_sec` (push on), `msgs_per_sec_push_off` (the mean of
//! the two off phases),
//! `push_throughput_ratio` (the issue asks for at least 0.9), `pushes` and
//! `pushes_per_sec` (notifications received during the push-on phase per
//! second of it), `push_delay_p50_us` / `push_delay_p99_us`: from the SendOk of
//! the message a notification announces to its arrival at the gateway.
//! With `--server`, natterd must allow the bench's gateway:
//! `--push-gateway-allow 127.0.0.1`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use natter_client::{Connection, HttpClient, Login};
use natter_wire::{Body, Frame, Send};

use crate::accounts::{self, PASSWORD};
use crate::error::BenchError;
use crate::progress;
use crate::report::Report;
use crate::scenarios::Options;
use crate::scenarios::messaging::setup::{befriend, in_parallel};
use crate::target::Target;

/// The user names of this scenario are `{USER_PREFIX}{i}`.
const USER_PREFIX: &str = "bench_p_";

/// How long the drain after the push-on phase may take beyond the coalescing
/// window before the run gives up waiting (and counts what arrived).
const DRAIN_SLACK: Duration = Duration::from_secs(15);

/// The flags of the `push` scenario.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "push options")]
pub(crate) struct PushArgs {
    /// Groups of the push scenario.
    #[arg(long, default_value_t = 100)]
    pub(crate) push_groups: usize,
    /// Members per group of the push scenario, owner included (2 to 100).
    #[arg(long, default_value_t = 100)]
    pub(crate) push_members: usize,
    /// Sends in flight per sender (one sender per group).
    #[arg(long, default_value_t = 32)]
    pub(crate) push_window: u64,
    /// The spawned natterd's `--push-coalesce`, e.g. "5s" (its default).
    #[arg(long, default_value = "5s")]
    pub(crate) push_coalesce_window: String,
}

/// Checks the flags before anything starts.
///
/// # Errors
/// [`BenchError::Usage`] for sizes out of range.
pub(crate) fn check_args(args: &PushArgs, open_files: u64) -> Result<(), BenchError> {
    if args.push_groups == 0 || !(2..=100).contains(&args.push_members) {
        return Err(BenchError::Usage(
            "--push-groups must be at least 1 and --push-members 2 to 100".into(),
        ));
    }
    if args.push_window == 0 {
        return Err(BenchError::Usage("--push-window must be at least 1".into()));
    }
    if args.push_groups as u64 + 100 > open_files {
        return Err(BenchError::Usage("more groups than open files allow".into()));
    }
    Ok(())
}

/// The spawned natterd's flags: the bench's gateway host is allowed, the
/// coalescing window as asked, per-user HTTP writes unthrottled.
pub(crate) fn natterd_flags(args: &PushArgs) -> Vec<String> {
    [
        "--push-gateway-allow",
        "127.0.0.1",
        "--push-coalesce",
        &args.push_coalesce_window,
        "--user-write-rate-limit",
        "100000000",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs the scenario against `target`.
///
/// # Errors
/// [`BenchError::Setup`] when natterd refuses the setup; I/O errors.
pub(crate) fn run(target: &Target, options: &Options, args: &PushArgs) -> Result<Report, BenchError> {
    let gateway = Gateway::start()?;
    let (groups, members) = (args.push_groups, args.push_members);
    let users = groups * members;
    println!("push: preparing {users} accounts ({USER_PREFIX}0 …), {groups} groups of {members}, phones");
    let http = &target.http;
    let bar = progress::bar(users as u64, "accounts");
    let accounts = accounts::prepare(http, USER_PREFIX, users, &bar)?;
    let logins: Vec<Login> = accounts
        .logins
        .into_iter()
        .collect::<Option<_>>()
        .ok_or_else(|| {
            BenchError::Setup(format!(
                "accounts failed: {}",
                accounts.first_error.unwrap_or_default()
            ))
        })?;
    let pairs: Vec<(usize, usize)> = (0..groups)
        .flat_map(|g| (g * members + 1..(g + 1) * members).map(move |i| (g * members, i)))
        .collect();
    let bar = progress::bar(pairs.len() as u64, "friends");
    let befriended = in_parallel(&pairs, &bar, |&(owner, member)| {
        match (logins.get(owner), logins.get(member)) {
            (Some(o), Some(m)) => {
                befriend(http, o, m, &format!("{USER_PREFIX}{member}")).map_err(|e| e.to_string())
            }
            _ => Err("no login".into()),
        }
    })?;
    if let Some(Err(e)) = befriended.iter().find(|r| r.is_err()) {
        return Err(BenchError::Setup(format!("friendship failed: {e}")));
    }
    let group_ids: Vec<usize> = (0..groups).collect();
    let bar = progress::bar(groups as u64, "groups");
    let chats = in_parallel(&group_ids, &bar, |&g| {
        let owner = logins.get(g * members).ok_or_else(|| "no owner".to_owned())?;
        let others: Vec<u64> = (g * members + 1..(g + 1) * members)
            .filter_map(|i| logins.get(i).map(|l| l.user_id))
            .collect();
        http.create_group(&owner.token, &format!("natter-bench push {g}"), &others)
            .map_err(|e| e.to_string())
    })?;
    let chats: Vec<u64> = chats
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Setup(format!("group failed: {e}")))?;
    let indices: Vec<usize> = (0..users).collect();
    let bar = progress::bar(users as u64, "phones");
    let phones = in_parallel(&indices, &bar, |&i| {
        http.login(&format!("{USER_PREFIX}{i}"), PASSWORD, "phone")
            .map_err(|e| e.to_string())
    })?;
    let phones: Vec<Login> = phones
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| BenchError::Setup(format!("phone login failed: {e}")))?;
    let senders: Vec<(String, u64)> = chats
        .iter()
        .enumerate()
        .filter_map(|(g, chat)| Some((logins.get(g * members)?.token.clone(), *chat)))
        .collect();

    println!(
        "push: phase 1, push off: {} senders for {:?}",
        senders.len(),
        options.duration
    );
    let off = send_phase(target.tcp, &senders, options.duration, args.push_window, 0)?;

    let bar = progress::bar(users as u64, "pushers");
    let url = gateway.url();
    let registered = in_parallel(&phones, &bar, |phone| {
        let body = serde_json::json!({
            "app_id": "natter-bench", "pushkey": format!("key-{}", phone.device_id), "gateway_url": url,
        })
        .to_string();
        http.raw_request(
            "POST",
            &format!("/v1/devices/{}/pusher", phone.device_id),
            Some(&phone.token),
            Some(body.as_bytes()),
        )
        .map(|r| r.status)
        .map_err(|e| e.to_string())
    })?;
    if let Some(bad) = registered.iter().find(|r| !matches!(r, Ok(201 | 200))) {
        return Err(BenchError::Setup(format!(
            "pusher registration failed: {bad:?} (with --server, start natterd with --push-gateway-allow 127.0.0.1)"
        )));
    }

    println!(
        "push: phase 2, push on: {} offline devices with pushers",
        phones.len()
    );
    let on_start = Instant::now();
    let on = send_phase(
        target.tcp,
        &senders,
        options.duration,
        args.push_window,
        1_000_000_000,
    )?;
    let on_end = Instant::now();
    let coalesce = crate::parse_duration(&args.push_coalesce_window).unwrap_or(Duration::from_secs(5));
    let drained = wait_drained(http, coalesce + DRAIN_SLACK);

    // Phase 3, push off again (pushers removed): the store has grown by two
    // phases of messages, so the two off phases bracket the on phase.
    let bar = progress::bar(users as u64, "removing pushers");
    let removed = in_parallel(&phones, &bar, |phone| {
        http.raw_request(
            "DELETE",
            &format!("/v1/devices/{}/pusher", phone.device_id),
            Some(&phone.token),
            None,
        )
        .map(|r| r.status)
        .map_err(|e| e.to_string())
    })?;
    if let Some(bad) = removed.iter().find(|r| !matches!(r, Ok(204))) {
        return Err(BenchError::Setup(format!("pusher removal failed: {bad:?}")));
    }
    println!("push: phase 3, push off again");
    let off_after = send_phase(
        target.tcp,
        &senders,
        options.duration,
        args.push_window,
        2_000_000_000,
    )?;
    let rate = |p: &Phase| p.acked as f64 / p.elapsed.as_secs_f64();
    println!(
        "push: acked sends/s: off {:.0} · on {:.0} · off again {:.0}",
        rate(&off),
        rate(&on),
        rate(&off_after)
    );

    let arrivals = gateway.arrivals();
    let in_phase = arrivals
        .iter()
        .filter(|a| a.at >= on_start && a.at <= on_end)
        .count();
    let acks: HashMap<(u64, u64), Instant> = on.acks.iter().map(|a| ((a.0, a.1), a.2)).collect();
    let mut delay = Histogram::<u64>::new(3).map_err(|e| BenchError::Setup(e.to_string()))?;
    for a in &arrivals {
        if let Some(acked) = acks.get(&(a.chat, a.seq)) {
            let us = a.at.saturating_duration_since(*acked).as_micros();
            let _ = delay.record(u64::try_from(us).unwrap_or(u64::MAX));
        }
    }
    let secs = options.duration.as_secs_f64();
    let mut report = Report::new("push", "tcp");
    report.duration_s = Some(on.elapsed.as_secs_f64());
    report.sent = Some(on.acked);
    report.acked = Some(on.acked);
    report.msgs_per_sec = Some(on.acked as f64 / on.elapsed.as_secs_f64());
    let off_rate = (rate(&off) + rate(&off_after)) / 2.0;
    report.msgs_per_sec_push_off = Some(off_rate);
    report.push_throughput_ratio = Some(rate(&on) / off_rate.max(1e-9));
    report.push_devices = Some(phones.len() as u64);
    report.pushes = Some(arrivals.len() as u64);
    report.pushes_per_sec = Some(in_phase as f64 / secs);
    if !delay.is_empty() {
        report.push_delay_p50_us = Some(delay.value_at_quantile(0.5));
        report.push_delay_p99_us = Some(delay.value_at_quantile(0.99));
    }
    report.errors = Some(off.errors + on.errors + off_after.errors + u64::from(!drained));
    report.server_rss_bytes = target.server_rss();
    Ok(report)
}

/// What one sending phase measured.
struct Phase {
    acked: u64,
    errors: u64,
    elapsed: Duration,
    /// `(chat, seq, when its SendOk arrived)`.
    acks: Vec<(u64, u64, Instant)>,
}

/// Each sender sends closed-loop (`window` in flight) for `duration`, then
/// waits for its outstanding SendOks. `cmid_base` keeps client message ids
/// of the two phases apart.
fn send_phase(
    tcp: SocketAddr,
    senders: &[(String, u64)],
    duration: Duration,
    window: u64,
    cmid_base: u64,
) -> Result<Phase, BenchError> {
    let barrier = Barrier::new(senders.len() + 1);
    let results = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for (token, chat) in senders {
            let (barrier, results) = (&barrier, &results);
            scope.spawn(move || {
                let outcome = sender(tcp, token, *chat, duration, window, cmid_base, barrier);
                if let Ok(mut r) = results.lock() {
                    r.push(outcome);
                }
            });
        }
        barrier.wait();
    });
    crate::interrupt::check()?;
    // Every sender stops sending after `duration` and then only collects the
    // SendOks of at most `window` sends: the phase's rate is per `duration`.
    let mut phase = Phase {
        acked: 0,
        errors: 0,
        elapsed: duration,
        acks: Vec::new(),
    };
    for (acks, errors) in results.into_inner().unwrap_or_default() {
        phase.acked += acks.len() as u64;
        phase.errors += errors;
        phase.acks.extend(acks);
    }
    Ok(phase)
}

/// One sender's closed loop; returns its acks and errors.
fn sender(
    tcp: SocketAddr,
    token: &str,
    chat: u64,
    duration: Duration,
    window: u64,
    cmid_base: u64,
    barrier: &Barrier,
) -> (Vec<(u64, u64, Instant)>, u64) {
    let mut acks = Vec::new();
    let conn = Connection::connect(tcp, token, "bench-sender");
    barrier.wait();
    let Ok((mut conn, _)) = conn else {
        return (acks, 1);
    };
    let began = Instant::now();
    let (mut sent, mut errors) = (0u64, 0u64);
    let text = "x".repeat(160);
    loop {
        let sending = began.elapsed() < duration;
        while sending && sent - acks.len() as u64 - errors < window {
            let body = Body::Send(Send {
                chat_id: chat,
                client_msg_id: cmid_base + sent + 1,
                text: text.clone(),
            });
            if conn.send_body(body).is_err() {
                return (acks, errors + 1);
            }
            sent += 1;
        }
        if sent == acks.len() as u64 + errors {
            return (acks, errors);
        }
        match conn.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Frame {
                body: Body::SendOk(ok),
                ..
            })) => acks.push((ok.chat_id, ok.seq, Instant::now())),
            Ok(Some(Frame {
                body: Body::Error(_), ..
            })) => errors += 1,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                let missing = sent - acks.len() as u64 - errors;
                return (acks, errors + missing);
            }
        }
    }
}

/// Waits until natterd's push table is empty (everything owed went out).
fn wait_drained(http: &HttpClient, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let depth = http.metrics().ok().and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("natter_push_queue_depth ")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        });
        if depth == Some(0) {
            return true;
        }
        thread::park_timeout(Duration::from_millis(100));
    }
    false
}

/// One notification as it arrived.
struct Arrival {
    at: Instant,
    chat: u64,
    seq: u64,
}

/// The bench's push gateway: records `(chat, seq)` and the arrival time of
/// every notification, answers `{"rejected":[]}`.
struct Gateway {
    addr: SocketAddr,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    stop: Arc<AtomicBool>,
}

impl Gateway {
    fn start() -> Result<Gateway, BenchError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (arrivals.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(stream) = stream {
                    let a = a.clone();
                    thread::spawn(move || serve(stream, &a));
                }
            }
        });
        Ok(Gateway { addr, arrivals, stop })
    }

    fn url(&self) -> String {
        format!("http://{}/_matrix/push/v1/notify", self.addr)
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.arrivals
            .lock()
            .map(|a| {
                a.iter()
                    .map(|x| Arrival {
                        at: x.at,
                        chat: x.chat,
                        seq: x.seq,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve(stream: TcpStream, arrivals: &Mutex<Vec<Arrival>>) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let at = Instant::now();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
            let data = &v["notification"]["devices"][0]["data"];
            if let (Some(chat), Some(seq)) = (data["chat_id"].as_u64(), data["seq"].as_u64())
                && let Ok(mut a) = arrivals.lock()
            {
                a.push(Arrival { at, chat, seq });
            }
        }
        let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"rejected\":[]}";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
