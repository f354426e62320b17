//! The `push` scenario (issue 14): offline devices with pushers in 100-member
//! groups; the bench runs the push gateway itself.
//!
//! Setup: G·M users `bench_p_{i}` (default 100 groups of 100 = 10,000), group
//! `g` owned by its first user, who befriends the others. Each user also logs
//! in a second device, `phone`, which never connects: an offline device.
//!
//! The run alternates **push off** and **push on** phases of `--duration`
//! each, `--push-pairs` times (default 2): off, on, off, on, off.
//!
//! * **Push off**: the owner of each group (one live connection per group)
//!   sends closed-loop (`--push-window` sends in flight); no device has a
//!   pusher.
//! * Before each on phase every phone registers a pusher whose `gateway_url`
//!   is the bench's own gateway (a small HTTP/1.1 server on loopback that
//!   answers `{"rejected":[]}` and records what arrives); after it (and its
//!   drain: until natterd's `natter_push_queue_depth` is 0) every pusher is
//!   removed again.
//! * **Push on**: the same senders; each message now owes a notification to
//!   99 offline devices (coalesced per device and chat per natterd's
//!   `--push-coalesce`, which the bench passes as `--push-coalesce-window`).
//!
//! Figures: `push_throughput_ratios`, per on phase its acked sends per second
//! over the mean of the two off phases around it (the store grows and the
//! machine drifts over a run: each pair brackets its on phase), and their
//! median `push_throughput_ratio` (the issue asks for at least 0.9);
//! `msgs_per_sec` / `msgs_per_sec_push_off`, the medians of the on / off
//! phases' rates; `push_cpu_us_per_msg_on` / `_off`, natterd's CPU time per
//! acked send (all threads, from `/proc/<pid>/task/*/schedstat`; an on phase
//! counted until its drain ended) and their ratio `push_cpu_ratio`, which a
//! noisy machine changes far less than throughput; `push_threads_cpu_us_per_msg`,
//! the push threads' own share; each phase's per-thread CPU is printed.
//! `pushes` and `pushes_per_sec` (notifications received during the push-on
//! phases per second of them), `push_delay_p50_us` / `push_delay_p99_us`: from
//! the SendOk of the message a notification announces to its arrival at the
//! gateway.
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
use crate::cpu::ThreadCpu;
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
    /// Push-on phases (1 to 10), each between two push-off phases: the run is
    /// off, on, off, … (2·N + 1 phases of `--duration`).
    #[arg(long, default_value_t = 2)]
    pub(crate) push_pairs: usize,
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
    if !(1..=10).contains(&args.push_pairs) {
        return Err(BenchError::Usage("--push-pairs must be 1 to 10".into()));
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

    // Phases alternate off, on, off, …, off: each on phase is bracketed by
    // the off phases just before and after it, so the store's growth and the
    // machine's drift over the run cancel out of each pair's ratio.
    let pid = target.server_pid();
    let coalesce = crate::parse_duration(&args.push_coalesce_window).unwrap_or(Duration::from_secs(5));
    let url = gateway.url();
    let mut offs: Vec<Measured> = Vec::new();
    let mut ons: Vec<Measured> = Vec::new();
    let mut drained = true;
    let mut phase_no = 0u64;
    let mut measure = |push: bool, phase_no: &mut u64| -> Result<Measured, BenchError> {
        *phase_no += 1;
        println!(
            "push: phase {phase_no}, push {}: {} senders for {:?}",
            if push { "on" } else { "off" },
            senders.len(),
            options.duration
        );
        let cpu_start = pid.and_then(ThreadCpu::now);
        let own_start = ThreadCpu::now(std::process::id());
        let start = Instant::now();
        let phase = send_phase(
            target.tcp,
            &senders,
            options.duration,
            args.push_window,
            *phase_no * 1_000_000_000,
        )?;
        let end = Instant::now();
        if push {
            drained &= wait_drained(http, coalesce + DRAIN_SLACK);
        }
        let cpu = match (cpu_start, pid.and_then(ThreadCpu::now)) {
            (Some(a), Some(b)) => Some(a.until(&b)),
            _ => None,
        };
        let gateway_ns = match (own_start, ThreadCpu::now(std::process::id())) {
            (Some(a), Some(b)) => a.until(&b).by_group.get(GATEWAY_THREAD).copied(),
            _ => None,
        };
        let m = Measured {
            phase,
            start,
            end,
            cpu,
            gateway_ns,
        };
        println!("push:   {}", m.describe());
        Ok(m)
    };
    offs.push(measure(false, &mut phase_no)?);
    for _ in 0..args.push_pairs {
        set_pushers(http, &phones, Some(&url))?;
        ons.push(measure(true, &mut phase_no)?);
        set_pushers(http, &phones, None)?;
        offs.push(measure(false, &mut phase_no)?);
    }
    let ratios: Vec<f64> = ons
        .iter()
        .zip(offs.windows(2))
        .map(|(on, pair)| match pair {
            [before, after] => on.rate() / ((before.rate() + after.rate()) / 2.0).max(1e-9),
            _ => 0.0,
        })
        .collect();
    let text: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "push: acked sends/s on / mean of the off phases around it: {}",
        text.join(" · ")
    );

    let arrivals = gateway.arrivals();
    let in_phase = arrivals
        .iter()
        .filter(|a| ons.iter().any(|on| a.at >= on.start && a.at <= on.end))
        .count();
    let acks: HashMap<(u64, u64), Instant> = ons
        .iter()
        .flat_map(|on| on.phase.acks.iter().map(|a| ((a.0, a.1), a.2)))
        .collect();
    let mut delay = Histogram::<u64>::new(3).map_err(|e| BenchError::Setup(e.to_string()))?;
    for a in &arrivals {
        if let Some(acked) = acks.get(&(a.chat, a.seq)) {
            let us = a.at.saturating_duration_since(*acked).as_micros();
            let _ = delay.record(u64::try_from(us).unwrap_or(u64::MAX));
        }
    }
    let on_secs: f64 = ons.iter().map(|on| on.phase.elapsed.as_secs_f64()).sum();
    let on_acked: u64 = ons.iter().map(|on| on.phase.acked).sum();
    let mut report = Report::new("push", "tcp");
    report.duration_s = Some(on_secs);
    report.sent = Some(on_acked);
    report.acked = Some(on_acked);
    report.msgs_per_sec = median(ons.iter().map(Measured::rate).collect());
    report.msgs_per_sec_push_off = median(offs.iter().map(Measured::rate).collect());
    report.push_throughput_ratio = median(ratios.clone());
    report.push_throughput_ratios = Some(ratios);
    let cpu_off = median(offs.iter().filter_map(Measured::cpu_us_per_msg).collect());
    let cpu_on = median(ons.iter().filter_map(Measured::cpu_us_per_msg).collect());
    report.push_threads_cpu_us_per_msg =
        median(ons.iter().filter_map(Measured::push_threads_us_per_msg).collect());
    report.push_cpu_us_per_msg_off = cpu_off;
    report.push_cpu_us_per_msg_on = cpu_on;
    if let (Some(on), Some(off)) = (cpu_on, cpu_off) {
        report.push_cpu_ratio = Some(on / off.max(1e-9));
    }
    report.push_devices = Some(phones.len() as u64);
    report.pushes = Some(arrivals.len() as u64);
    report.pushes_per_sec = Some(in_phase as f64 / on_secs.max(1e-9));
    if !delay.is_empty() {
        report.push_delay_p50_us = Some(delay.value_at_quantile(0.5));
        report.push_delay_p99_us = Some(delay.value_at_quantile(0.99));
    }
    let errors: u64 = offs.iter().chain(&ons).map(|m| m.phase.errors).sum();
    report.errors = Some(errors + u64::from(!drained));
    report.server_rss_bytes = target.server_rss();
    Ok(report)
}

/// Registers a pusher at `gateway_url` for every phone, or (`None`) removes them all.
fn set_pushers(http: &HttpClient, phones: &[Login], gateway_url: Option<&str>) -> Result<(), BenchError> {
    let label = if gateway_url.is_some() {
        "pushers"
    } else {
        "removing pushers"
    };
    let bar = progress::bar(phones.len() as u64, label);
    let answers = in_parallel(phones, &bar, |phone| {
        let path = format!("/v1/devices/{}/pusher", phone.device_id);
        let answer = match gateway_url {
            Some(url) => {
                let body = serde_json::json!({
                    "app_id": "natter-bench", "pushkey": format!("key-{}", phone.device_id), "gateway_url": url,
                })
                .to_string();
                http.raw_request("POST", &path, Some(&phone.token), Some(body.as_bytes()))
            }
            None => http.raw_request("DELETE", &path, Some(&phone.token), None),
        };
        answer.map(|r| r.status).map_err(|e| e.to_string())
    })?;
    let ok = |status: &u16| match gateway_url {
        Some(_) => matches!(status, 200 | 201),
        None => *status == 204,
    };
    match answers.iter().find(|r| !r.as_ref().is_ok_and(ok)) {
        None => Ok(()),
        Some(bad) if gateway_url.is_some() => Err(BenchError::Setup(format!(
            "pusher registration failed: {bad:?} (with --server, start natterd with --push-gateway-allow 127.0.0.1)"
        ))),
        Some(bad) => Err(BenchError::Setup(format!("pusher removal failed: {bad:?}"))),
    }
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => values.get(n / 2).copied(),
        _ => Some((values.get(n / 2 - 1)? + values.get(n / 2)?) / 2.0),
    }
}

/// One phase with its span and natterd's CPU time over it (an on phase's
/// until its drain ended).
struct Measured {
    phase: Phase,
    start: Instant,
    end: Instant,
    cpu: Option<ThreadCpu>,
    /// CPU time of the bench's own gateway threads over the same span, ns.
    gateway_ns: Option<u64>,
}

impl Measured {
    /// Acked sends per second.
    fn rate(&self) -> f64 {
        self.phase.acked as f64 / self.phase.elapsed.as_secs_f64().max(1e-9)
    }

    /// natterd's CPU µs per acked send.
    fn cpu_us_per_msg(&self) -> Option<f64> {
        let cpu = self.cpu.as_ref()?;
        (self.phase.acked > 0).then(|| cpu.total() as f64 / 1000.0 / self.phase.acked as f64)
    }

    /// CPU µs per acked send of natterd's push threads alone (`natter-push`
    /// and its `natter-push-send-N` senders).
    fn push_threads_us_per_msg(&self) -> Option<f64> {
        let cpu = self.cpu.as_ref()?;
        let ns: u64 = cpu
            .by_group
            .iter()
            .filter(|(g, _)| g.starts_with("natter-push"))
            .map(|(_, ns)| *ns)
            .sum();
        (self.phase.acked > 0).then(|| ns as f64 / 1000.0 / self.phase.acked as f64)
    }

    /// `"61,234 acked/s · natterd 25.1 µs/msg (natter-core 12.0, …)"`.
    fn describe(&self) -> String {
        let mut text = format!("{:.0} acked sends/s", self.rate());
        if let (Some(cpu), Some(total)) = (&self.cpu, self.cpu_us_per_msg()) {
            let acked = self.phase.acked.max(1) as f64;
            let mut groups: Vec<(&String, &u64)> = cpu.by_group.iter().filter(|(_, ns)| **ns > 0).collect();
            groups.sort_by(|a, b| b.1.cmp(a.1));
            let parts: Vec<String> = groups
                .iter()
                .map(|(g, ns)| format!("{g} {:.2}", **ns as f64 / 1000.0 / acked))
                .collect();
            text.push_str(&format!(
                " · natterd CPU {total:.2} µs per acked send ({})",
                parts.join(", ")
            ));
        }
        if let Some(ns) = self.gateway_ns.filter(|ns| *ns > 0) {
            let acked = self.phase.acked.max(1) as f64;
            text.push_str(&format!(
                " · the bench's gateway {:.2} µs per acked send",
                ns as f64 / 1000.0 / acked
            ));
        }
        text
    }
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

/// The name of the bench's gateway threads (their CPU time is reported per phase).
const GATEWAY_THREAD: &str = "bench-gateway";

/// The part of a notify body the gateway records.
#[derive(serde::Deserialize)]
struct NotifyBody {
    notification: NotifyNote,
}

#[derive(serde::Deserialize)]
struct NotifyNote {
    #[serde(default)]
    devices: Vec<NotifyDevice>,
}

#[derive(serde::Deserialize)]
struct NotifyDevice {
    data: NotifyData,
}

#[derive(serde::Deserialize)]
struct NotifyData {
    chat_id: Option<u64>,
    seq: Option<u64>,
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
        thread::Builder::new()
            .name(GATEWAY_THREAD.into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        let a = a.clone();
                        let _ = thread::Builder::new()
                            .name(GATEWAY_THREAD.into())
                            .spawn(move || serve(stream, &a));
                    }
                }
            })?;
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
        // Only the fields recorded are parsed (typed, the rest skipped): the
        // gateway shares the machine with natterd, so it stays cheap.
        if let Ok(note) = serde_json::from_slice::<NotifyBody>(&body)
            && let Some(data) = note.notification.devices.first().map(|d| &d.data)
            && let (Some(chat), Some(seq)) = (data.chat_id, data.seq)
            && let Ok(mut a) = arrivals.lock()
        {
            a.push(Arrival { at, chat, seq });
        }
        let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"rejected\":[]}";
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
