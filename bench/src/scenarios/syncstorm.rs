//! The `syncstorm` scenario: does a cold-cache sync storm stall the other sessions
//! of a core? (issue 9, item 12: "show by a benchmark that a cold-cache sync storm of
//! 1,000 devices does not raise other sessions' ping p99 on that core above 2 ms").
//!
//! 1. **Setup** (fresh names per run, `bench_ss_{run}_…`): `--storm-devices` users
//!    (one device each) and `--chats-per-user` owners. Each owner befriends every
//!    user and creates groups of 99 users (plus itself) covering all users, so every
//!    user is in exactly `--chats-per-user` groups. The owners fill every group with
//!    `--messages-per-chat` messages of `--text-bytes` bytes (default 200), pipelined.
//! 2. **Cold restart** (`--spawn`): natterd is stopped cleanly and started again on
//!    the same data directory, so fjall's block cache is empty. (The OS page cache is
//!    not dropped; against `--server` nothing is restarted and the run says so.)
//! 3. **Bystanders**: `--bystanders` users without chats connect and ping every
//!    `--ping-interval` (default 10 ms) open loop: each ping has an intended send
//!    instant and its latency runs from that instant to its `Pong`, so a stalled
//!    core cannot hide a ping it delayed. `--baseline` of quiet pinging first.
//! 4. **Storm**: every storm device connects at once, writes `Hello`, and right
//!    after its `Welcome` `Sync{cursor head - --storm-behind for each of its chats}`
//!    (`--storm-pipelined`: in the same write as the `Hello`), and reads until
//!    `SyncDone`. `storm_s`: first connect → last `SyncDone`. (Sync after the
//!    Welcome is the default because today's natterd leaves a Sync pipelined behind
//!    the Hello unanswered on about half the connections until the client sends
//!    again; see docs/PERFORMANCE.md, "Hardening (issue 9)".)
//!
//! Bystanders and storm devices connect over `--transport` (`transport.rs`'s
//! `ClientStream`: TCP, TLS, WebSocket or QUIC, one socket per connection;
//! QUIC timers bound the loops' poll waits).
//!
//! Figures: `ping_baseline_p50/p99/p999_us` (pings intended during the baseline),
//! `ping_p50/p99/p999_us` (intended during the storm), both also per home core of
//! the bystander (`ping_p99_us_by_core`, `ping_baseline_p99_us_by_core`: a user's
//! home core is natterd's `mix(user_id) % cores`, copied from `server/src/ids.rs`),
//! `storm_s`, `synced` (messages the storm received), `pings`, `connections`
//! (storm devices that finished), `server_peak_rss_bytes`, `errors`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use natter_client::Login;
use natter_wire::{Body, Cursor, Frame, FrameDecoder, Hello, Limits, PROTOCOL_VERSION, Ping, Sync, fb, view};

use crate::accounts;
use crate::error::BenchError;
use crate::interrupt;
use crate::progress;
use crate::report::Report;
use crate::scenarios::Options;
use crate::scenarios::messaging::setup::{befriend, in_parallel};
use crate::scenarios::sync;
use crate::sockets::Sources;
use crate::spawn::SpawnedServer;
use crate::target::{RssSampler, Target};
use crate::transport::{ClientStream, Dial};

/// Users per group besides its owner: groups hold at most 100 members.
const USERS_PER_GROUP: usize = 99;
/// Bytes of text per message unless `--text-bytes` says otherwise.
const DEFAULT_TEXT_BYTES: usize = 200;
/// Longest the bystanders may take to be welcomed before the baseline starts anyway.
const BYSTANDERS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the storm may take before the devices still syncing count as errors.
const STORM_TIMEOUT: Duration = Duration::from_secs(120);
/// Pinging goes on this long after the storm, so the storm's last pings get answers.
const TAIL: Duration = Duration::from_secs(1);
/// Connections started per loop turn.
const CONNECTS_PER_TURN: usize = 256;
/// Readiness events per `poll`.
const EVENTS_CAPACITY: usize = 4096;
/// Longest sleep in the bystanders' `poll`: well below the ping interval.
const PING_POLL_WAIT: Duration = Duration::from_millis(1);
/// Longest sleep in the storm's `poll`.
const STORM_POLL_WAIT: Duration = Duration::from_millis(10);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Latencies above this (µs) are recorded as this: ten minutes.
const MAX_LATENCY_US: u64 = 600_000_000;

/// The flags of the `syncstorm` scenario.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "syncstorm options")]
pub(crate) struct SyncstormArgs {
    /// syncstorm: devices (one user each) that connect and sync at once.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    pub(crate) storm_devices: usize,
    /// syncstorm: groups each storm user is in.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub(crate) chats_per_user: usize,
    /// syncstorm: messages stored in each group before the restart.
    #[arg(long, default_value_t = 2_000, value_name = "N")]
    pub(crate) messages_per_chat: u64,
    /// syncstorm: each device syncs this many messages per chat (cursor head - N).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub(crate) storm_behind: u64,
    /// syncstorm: sessions that only ping, whose latency is measured.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub(crate) bystanders: usize,
    /// syncstorm: interval between one bystander's pings.
    #[arg(long, default_value = "10ms", value_parser = crate::parse_duration)]
    pub(crate) ping_interval: Duration,
    /// syncstorm: storm devices write Sync in the same write as their Hello
    /// (default: Sync right after the Welcome).
    #[arg(long)]
    pub(crate) storm_pipelined: bool,
    /// syncstorm: quiet pinging measured before the storm.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub(crate) baseline: Duration,
}

/// Checks the flags before anything starts.
///
/// # Errors
/// [`BenchError::Usage`] for values out of range.
pub(crate) fn check_args(args: &SyncstormArgs, options: &Options, open_files: u64) -> Result<(), BenchError> {
    if args.storm_devices == 0 || args.chats_per_user == 0 || args.bystanders == 0 {
        return Err(BenchError::Usage(
            "--storm-devices, --chats-per-user and --bystanders must be at least 1".into(),
        ));
    }
    if args.messages_per_chat == 0 || args.storm_behind > args.messages_per_chat {
        return Err(BenchError::Usage(
            "--messages-per-chat must be at least 1 and at least --storm-behind".into(),
        ));
    }
    if args.ping_interval < Duration::from_millis(1) || args.baseline.is_zero() {
        return Err(BenchError::Usage(
            "--ping-interval must be at least 1ms and --baseline longer than 0".into(),
        ));
    }
    let bytes = options.text_bytes.unwrap_or(DEFAULT_TEXT_BYTES);
    if bytes == 0 || bytes > 4_096 {
        return Err(BenchError::Usage(
            "--text-bytes must be 1 to 4096 for syncstorm".into(),
        ));
    }
    let needed = (args.storm_devices + args.bystanders) as u64 + 100;
    if needed > open_files {
        return Err(BenchError::Usage(format!(
            "{needed} open files needed, at most {open_files} allowed"
        )));
    }
    Ok(())
}

/// natterd's home core of a user: `mix(user_id) % cores`, the SplitMix64 finaliser
/// of `server/src/ids.rs` (`UserId::home_core`), copied so the benchmark can tell
/// which core serves a session without asking natterd.
pub(crate) fn home_core(user_id: u64, cores: usize) -> usize {
    let mut x = user_id;
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x % cores.max(1) as u64) as usize
}

/// One answered (or, at the end, unanswered) ping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Intended send instant, ns since the run's origin.
    pub(crate) intended_ns: u64,
    /// Intended send → `Pong`, µs.
    pub(crate) latency_us: u64,
    /// Home core of the bystander.
    pub(crate) core: usize,
}

/// p50 / p99 / p99.9 of the samples intended within `[from_ns, to_ns)`, overall
/// and per core.
pub(crate) fn percentiles(
    samples: &[Sample],
    from_ns: u64,
    to_ns: u64,
) -> ([Option<u64>; 3], BTreeMap<String, u64>, u64) {
    let mut all = latency_histogram();
    let mut per_core: BTreeMap<usize, Histogram<u64>> = BTreeMap::new();
    let mut count = 0;
    for s in samples
        .iter()
        .filter(|s| (from_ns..to_ns).contains(&s.intended_ns))
    {
        let v = s.latency_us.clamp(1, MAX_LATENCY_US);
        // Clamped into the histogram's bounds, so recording cannot fail.
        let _ = all.record(v);
        let _ = per_core.entry(s.core).or_insert_with(latency_histogram).record(v);
        count += 1;
    }
    let q = |h: &Histogram<u64>, q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
    let overall = [q(&all, 0.5), q(&all, 0.99), q(&all, 0.999)];
    let by_core = per_core
        .iter()
        .filter_map(|(core, h)| Some((core.to_string(), q(h, 0.99)?)))
        .collect();
    (overall, by_core, count)
}

/// A histogram of µs from 1 µs to [`MAX_LATENCY_US`], 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds that hdrhistogram documents as valid
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("1 µs .. 10 min at 3 digits is a valid histogram")
}

/// The storm plan: users' tokens and ids, and per user its chats with their heads.
struct StormPlan {
    devices: Vec<(String, Vec<u64>)>,
    heads: HashMap<u64, u64>,
    bystanders: Vec<Login>,
}

/// Runs the scenario.
///
/// # Errors
/// [`BenchError::Setup`] / [`BenchError::Client`] for a refused setup,
/// [`BenchError::Server`] if the restart fails, [`BenchError::Interrupted`],
/// [`BenchError::Io`] if an event loop fails.
pub(crate) fn run(
    target: &Target,
    server: Option<&mut SpawnedServer>,
    cores: Option<usize>,
    options: &Options,
    args: &SyncstormArgs,
) -> Result<Report, BenchError> {
    let text_bytes = options.text_bytes.unwrap_or(DEFAULT_TEXT_BYTES);
    let plan = prepare(target, args, text_bytes)?;
    let target = match server {
        Some(server) => {
            println!("syncstorm: restarting natterd on the same data directory (cold block cache)");
            server.stop_for_restart()?;
            server.restart()?;
            let kind = target.dial.kind();
            let restarted = Target::spawned(server)?;
            // The restarted natterd's listeners are on new ports.
            if kind == crate::transport::Kind::Tcp {
                restarted
            } else {
                restarted.with_transport(kind)?
            }
        }
        None => {
            println!("syncstorm: against --server natterd is not restarted: its caches are NOT cold");
            target.clone()
        }
    };
    let cores = cores.unwrap_or(1);
    let origin = Instant::now();
    let stop = AtomicBool::new(false);
    let ready = AtomicUsize::new(0);
    let storm_start_ns = AtomicU64::new(u64::MAX);
    let storm_end_ns = AtomicU64::new(u64::MAX);
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let loop_before: Mutex<Option<LoopCounters>> = Mutex::new(None);
    let loop_after: Mutex<Option<LoopCounters>> = Mutex::new(None);
    let interval = args.ping_interval;
    let dial = target.dial.clone();

    let sampler = RssSampler::start(&target);
    let (samples, bystander_errors, storm) = thread::scope(|scope| {
        let pinger =
            scope.spawn(|| ping_loop(&dial, &plan.bystanders, cores, interval, origin, &stop, &ready));
        // The baseline starts once every bystander is welcomed (or failed to connect).
        let connected_by = Instant::now() + BYSTANDERS_CONNECT_TIMEOUT;
        while ready.load(Ordering::Acquire) < plan.bystanders.len() && Instant::now() < connected_by {
            thread::park_timeout(Duration::from_millis(5));
        }
        let baseline_start = nanos(origin.elapsed());
        println!(
            "syncstorm: baseline: {:?} of pings every {interval:?} from {} bystanders",
            args.baseline,
            plan.bystanders.len()
        );
        thread::sleep(args.baseline);
        *loop_before.lock().unwrap_or_else(PoisonError::into_inner) = loop_counters(&target);
        storm_start_ns.store(nanos(origin.elapsed()), Ordering::Release);
        println!(
            "syncstorm: storm: {} devices connect and Sync at once",
            plan.devices.len()
        );
        let storm = storm_loop(&dial, &plan, args.storm_behind, !args.storm_pipelined);
        storm_end_ns.store(nanos(origin.elapsed()), Ordering::Release);
        *loop_after.lock().unwrap_or_else(PoisonError::into_inner) = loop_counters(&target);
        if let Err(e) = &storm
            && let Ok(mut f) = failure.lock()
        {
            *f = Some(e.to_string());
        }
        thread::sleep(TAIL);
        stop.store(true, Ordering::Release);
        let (samples, errors) = pinger.join().unwrap_or_else(|_| (Vec::new(), 1));
        (samples, errors, (storm, baseline_start))
    });
    let rss = sampler.stop();
    interrupt::check()?;
    let (storm, baseline_start) = storm;
    let storm = storm?;
    let start = storm_start_ns.load(Ordering::Acquire);
    let end = storm_end_ns.load(Ordering::Acquire);

    let mut report = Report::new("syncstorm", "tcp");
    let (base, base_by_core, _) = percentiles(&samples, baseline_start, start);
    let (during, during_by_core, pings) = percentiles(&samples, start, end);
    [
        report.ping_baseline_p50_us,
        report.ping_baseline_p99_us,
        report.ping_baseline_p999_us,
    ] = base;
    [report.ping_p50_us, report.ping_p99_us, report.ping_p999_us] = during;
    report.ping_baseline_p99_us_by_core = Some(base_by_core);
    report.ping_p99_us_by_core = Some(during_by_core);
    report.pings = Some(pings);
    report.storm_s = Some(end.saturating_sub(start) as f64 / 1e9);
    report.duration_s = report.storm_s;
    report.synced = Some(storm.messages);
    report.connections = Some(storm.done);
    report.errors = Some(storm.errors + bystander_errors);
    if let Some(rss) = rss {
        report.server_rss_before_bytes = Some(rss.before);
        report.server_peak_rss_bytes = Some(rss.peak);
        report.server_rss_growth_bytes = Some(rss.growth());
    }
    report.server_rss_bytes = target.server_rss();
    let before = loop_before.into_inner().unwrap_or_else(PoisonError::into_inner);
    let after = loop_after.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let (Some(b), Some(a)) = (before, after) {
        report.loop_turns = Some(a.turns.saturating_sub(b.turns));
        report.loop_slow_turns = Some(a.slow.saturating_sub(b.slow));
        report.loop_turn_max_us = Some(a.max_us);
        report.loop_store_reads = a.reads.zip(b.reads).map(|(a, b)| a.saturating_sub(b));
    }
    Ok(report)
}

/// natterd's event-loop counters at one instant (both cores summed; the max over them).
struct LoopCounters {
    turns: u64,
    slow: u64,
    max_us: u64,
    /// Store reads the loops made themselves (`None`: natterd does not say).
    reads: Option<u64>,
}

/// Reads the loop counters from `/metrics`; `None` for a natterd without them.
fn loop_counters(target: &Target) -> Option<LoopCounters> {
    let text = target.http.metrics().ok()?;
    let max_us = text
        .lines()
        .filter_map(|l| l.strip_prefix("natter_loop_turn_max_microseconds{"))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .max()?;
    Some(LoopCounters {
        turns: crate::target::metric_sum(&text, "natter_loop_turns_total")? as u64,
        slow: crate::target::metric_sum(&text, "natter_loop_slow_turns_total")? as u64,
        max_us,
        reads: crate::target::metric_sum(&text, "natter_loop_store_reads_total").map(|r| r as u64),
    })
}

/// Nanoseconds in `d`, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Accounts, friendships, groups and the fill.
fn prepare(target: &Target, args: &SyncstormArgs, text_bytes: usize) -> Result<StormPlan, BenchError> {
    let http = &target.http;
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let prefix = format!("bench_ss_{run}_");
    println!(
        "syncstorm: {} users in {} groups each ({} owners), {} messages of {text_bytes} bytes per group, {} bystanders",
        args.storm_devices, args.chats_per_user, args.chats_per_user, args.messages_per_chat, args.bystanders
    );
    let bar = progress::bar(args.storm_devices as u64, "users");
    let users = accounts::prepare(http, &format!("{prefix}u"), args.storm_devices, &bar)?;
    let bar = progress::bar(args.chats_per_user as u64, "owners");
    let owners = accounts::prepare(http, &format!("{prefix}o"), args.chats_per_user, &bar)?;
    let bar = progress::bar(args.bystanders as u64, "bystanders");
    let bystanders = accounts::prepare(http, &format!("{prefix}b"), args.bystanders, &bar)?;
    let users: Vec<Login> = users.logins.into_iter().flatten().collect();
    let owners: Vec<Login> = owners.logins.into_iter().flatten().collect();
    let bystanders: Vec<Login> = bystanders.logins.into_iter().flatten().collect();
    if users.is_empty() || owners.is_empty() || bystanders.is_empty() {
        return Err(BenchError::Setup("no account could be prepared".into()));
    }
    let pairs: Vec<(usize, usize)> = (0..owners.len())
        .flat_map(|o| (0..users.len()).map(move |u| (o, u)))
        .collect();
    let bar = progress::bar(pairs.len() as u64, "friends");
    let befriended = in_parallel(&pairs, &bar, |&(o, u)| match (owners.get(o), users.get(u)) {
        (Some(owner), Some(user)) => befriend(http, owner, user, &format!("{prefix}u{u}")),
        _ => Ok(()),
    })?;
    if let Some(Err(e)) = befriended.into_iter().find(Result::is_err) {
        return Err(e.into());
    }
    // Groups: owner o, users [k·99, (k+1)·99).
    let blocks: Vec<(usize, usize)> = (0..owners.len())
        .flat_map(|o| (0..users.len().div_ceil(USERS_PER_GROUP)).map(move |k| (o, k)))
        .collect();
    let bar = progress::bar(blocks.len() as u64, "groups");
    let groups = in_parallel(&blocks, &bar, |&(o, k)| {
        let members: Vec<u64> = users
            .iter()
            .skip(k * USERS_PER_GROUP)
            .take(USERS_PER_GROUP)
            .map(|u| u.user_id)
            .collect();
        let owner = owners.get(o).map_or("", |l| l.token.as_str());
        http.create_group(owner, &format!("storm {o}.{k}"), &members)
    })?;
    let mut by_owner: Vec<Vec<u64>> = vec![Vec::new(); owners.len()];
    let mut chats_of: Vec<Vec<u64>> = vec![Vec::new(); users.len()];
    for (&(o, k), group) in blocks.iter().zip(groups) {
        let group = group?;
        if let Some(list) = by_owner.get_mut(o) {
            list.push(group);
        }
        for list in chats_of
            .iter_mut()
            .skip(k * USERS_PER_GROUP)
            .take(USERS_PER_GROUP)
        {
            list.push(group);
        }
    }
    println!("syncstorm: filling {} groups ...", blocks.len());
    let fill_started = Instant::now();
    let results: Vec<Result<(), BenchError>> = thread::scope(|scope| {
        let handles: Vec<_> = owners
            .iter()
            .zip(&by_owner)
            .map(|(owner, groups)| {
                let total = args.messages_per_chat * groups.len() as u64;
                scope.spawn(move || sync::fill(target, &owner.token, groups, total, text_bytes))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Setup("a fill thread panicked".into())))
            })
            .collect()
    });
    for result in results {
        result?;
    }
    let total = blocks.len() as u64 * args.messages_per_chat;
    println!(
        "syncstorm: filled {total} messages in {:.1}s",
        fill_started.elapsed().as_secs_f64()
    );
    let heads = by_owner
        .iter()
        .flatten()
        .map(|&g| (g, args.messages_per_chat))
        .collect();
    Ok(StormPlan {
        devices: users
            .iter()
            .zip(chats_of)
            .map(|(u, chats)| (u.token.clone(), chats))
            .collect(),
        heads,
        bystanders,
    })
}

/// One non-blocking connection of the bystander or storm loop, over any
/// `--transport`.
struct Link {
    stream: ClientStream,
    connected: bool,
    inbuf: BytesMut,
    outbuf: BytesMut,
    done: bool,
    /// Written once the `Welcome` came (the storm's `Sync`, unless `--storm-pipelined`).
    after_welcome: Option<Vec<u8>>,
}

impl Link {
    /// Writes queued bytes until the socket would block.
    fn flush(&mut self) -> io::Result<()> {
        while self.connected && !self.outbuf.is_empty() {
            match self.stream.write(&self.outbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.outbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.connected {
            self.stream.flush_buffered()?;
        }
        Ok(())
    }

    /// Reads until the socket would block; `Ok(true)` at end of stream.
    fn fill(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => return Ok(true),
                Ok(n) => self.inbuf.extend_from_slice(scratch.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Handles readiness and returns whether the stream ended (or failed) and the
    /// whole frames read.
    fn receive(&mut self, scratch: &mut [u8], decoder: &FrameDecoder) -> (bool, Vec<bytes::Bytes>) {
        let ended = self.on_ready(scratch).unwrap_or(true);
        let mut frames = Vec::new();
        while let Ok(Some(bytes)) = decoder.split(&mut self.inbuf) {
            frames.push(bytes);
        }
        (ended, frames)
    }

    /// Handles readiness: finishes the connect, writes, reads. `Ok(true)` at end
    /// of stream.
    fn on_ready(&mut self, scratch: &mut [u8]) -> io::Result<bool> {
        if !self.connected {
            if !self.stream.connected()? {
                return Ok(false);
            }
            self.connected = true;
        }
        self.flush()?;
        let ended = self.fill(scratch)?;
        // A read may have opened the transport (the WebSocket upgrade answer):
        // what waited for it goes now, not at a readiness edge that never comes.
        if !self.outbuf.is_empty() {
            self.flush()?;
        }
        Ok(ended)
    }
}

/// Opens a link from `sources` over `dial`'s transport and registers it under
/// `token`, with `first` queued.
fn open_link(
    poll: &Poll,
    sources: &mut Sources,
    dial: &Dial,
    token: usize,
    first: &[u8],
) -> Result<Link, String> {
    let mut stream = dial.open(sources)?;
    poll.registry()
        .register(
            stream.source(),
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )
        .map_err(|e| format!("register: {e}"))?;
    Ok(Link {
        stream,
        connected: false,
        inbuf: BytesMut::new(),
        outbuf: BytesMut::from(first),
        done: false,
        after_welcome: None,
    })
}

/// The `Hello` frame of `token`, request id 1.
fn hello(token: &str, device: &str) -> Vec<u8> {
    Frame::new(
        1,
        Body::Hello(Hello {
            token: token.to_owned(),
            device: device.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: false,
            conversation: false,
        }),
    )
    .encode()
    .to_vec()
}

/// The bystanders: connect, then ping each every `interval` (open loop, staggered)
/// until `stop`; returns every ping's sample and the failures.
fn ping_loop(
    dial: &Dial,
    bystanders: &[Login],
    cores: usize,
    interval: Duration,
    origin: Instant,
    stop: &AtomicBool,
    welcomed_count: &AtomicUsize,
) -> (Vec<Sample>, u64) {
    let mut samples = Vec::new();
    let mut errors = 0;
    let Ok(poll) = Poll::new() else {
        return (samples, 1);
    };
    let mut poll = poll;
    let mut events = Events::with_capacity(EVENTS_CAPACITY);
    let mut sources = Sources::for_server(dial.addr).share(0, 2);
    let decoder = FrameDecoder::new(Limits::default());
    let mut scratch = vec![0; READ_CHUNK];
    let mut links: Vec<Option<Link>> = Vec::new();
    for (i, b) in bystanders.iter().enumerate() {
        match open_link(
            &poll,
            &mut sources,
            dial,
            i,
            &hello(&b.token, "natter-bench bystander"),
        ) {
            Ok(link) => links.push(Some(link)),
            Err(_) => {
                errors += 1;
                links.push(None);
                welcomed_count.fetch_add(1, Ordering::Release);
            }
        }
    }
    let core_of: Vec<usize> = bystanders.iter().map(|b| home_core(b.user_id, cores)).collect();
    let n = bystanders.len().max(1) as u64;
    let step = nanos(interval);
    let start = nanos(origin.elapsed()) + step;
    // Per bystander: next ping number; outstanding nonce → intended instant.
    let mut next: Vec<u64> = vec![0; bystanders.len()];
    let mut welcomed = vec![false; bystanders.len()];
    let mut outstanding: Vec<HashMap<u64, u64>> = vec![HashMap::new(); bystanders.len()];
    let intended = |i: usize, k: u64| start + k * step + (i as u64 * step) / n;
    while !stop.load(Ordering::Acquire) && !interrupt::requested() {
        let now = nanos(origin.elapsed());
        for (i, slot) in links.iter_mut().enumerate() {
            let (Some(link), true) = (slot.as_mut(), welcomed.get(i).copied().unwrap_or(false)) else {
                continue;
            };
            let (Some(k), Some(out)) = (next.get_mut(i), outstanding.get_mut(i)) else {
                continue;
            };
            while intended(i, *k) <= now {
                let at = intended(i, *k);
                let frame = Frame::new(*k + 2, Body::Ping(Ping { nonce: *k }));
                link.outbuf.extend_from_slice(&frame.encode());
                out.insert(*k, at);
                *k += 1;
            }
            if link.flush().is_err() {
                errors += 1;
                *slot = None;
            }
        }
        if poll
            .poll(&mut events, Some(quic_wait(&mut links, PING_POLL_WAIT)))
            .is_err()
        {
            continue;
        }
        let mut ready: Vec<usize> = events.iter().map(|e| e.token().0).collect();
        quic_due(&mut links, &mut ready);
        let now = nanos(origin.elapsed());
        for i in ready {
            let Some(Some(link)) = links.get_mut(i) else {
                continue;
            };
            let (ended, frames) = link.receive(&mut scratch, &decoder);
            for bytes in frames {
                let Ok(frame) = view(&bytes, decoder.limits()) else {
                    break;
                };
                match frame.body_type() {
                    fb::Body::Welcome => {
                        if let Some(w) = welcomed.get_mut(i) {
                            if !*w {
                                welcomed_count.fetch_add(1, Ordering::Release);
                            }
                            *w = true;
                            // Pinging starts from now on, not from the run's start.
                            if let Some(k) = next.get_mut(i) {
                                while intended(i, *k) < now {
                                    *k += 1;
                                }
                            }
                        }
                    }
                    fb::Body::Pong => {
                        let nonce = frame.body_as_pong().map_or(u64::MAX, |p| p.nonce());
                        if let Some(at) = outstanding.get_mut(i).and_then(|o| o.remove(&nonce)) {
                            samples.push(Sample {
                                intended_ns: at,
                                latency_us: now.saturating_sub(at) / 1_000,
                                core: core_of.get(i).copied().unwrap_or(0),
                            });
                        }
                    }
                    _ => {}
                }
            }
            if ended && let Some(slot) = links.get_mut(i) {
                errors += 1;
                *slot = None;
            }
        }
    }
    // Pings never answered count with the time they waited.
    let now = nanos(origin.elapsed());
    for (i, out) in outstanding.iter().enumerate() {
        for &at in out.values() {
            samples.push(Sample {
                intended_ns: at,
                latency_us: now.saturating_sub(at) / 1_000,
                core: core_of.get(i).copied().unwrap_or(0),
            });
        }
    }
    (samples, errors)
}

/// `wait`, shortened to the earliest QUIC timer of `links` (acknowledgement
/// delay, loss detection; none on the other transports).
fn quic_wait(links: &mut [Option<Link>], wait: Duration) -> Duration {
    links
        .iter_mut()
        .flatten()
        .filter_map(|l| l.stream.next_timeout())
        .min()
        .map_or(wait, |t| wait.min(t.saturating_duration_since(Instant::now())))
}

/// Adds the links whose QUIC timer is due to `ready` (their next read or
/// write fires it).
fn quic_due(links: &mut [Option<Link>], ready: &mut Vec<usize>) {
    let now = Instant::now();
    for (i, link) in links.iter_mut().enumerate() {
        if let Some(link) = link
            && link.stream.next_timeout().is_some_and(|t| t <= now)
        {
            ready.push(i);
        }
    }
    ready.sort_unstable();
    ready.dedup();
}

/// What the storm did.
#[derive(Clone, Copy, Debug, Default)]
struct StormTally {
    done: u64,
    messages: u64,
    errors: u64,
}

/// Every storm device connects at once, writes `Hello` + `Sync`, and reads until
/// `SyncDone`.
fn storm_loop(
    dial: &Dial,
    plan: &StormPlan,
    behind: u64,
    after_welcome: bool,
) -> Result<StormTally, BenchError> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(EVENTS_CAPACITY);
    let mut sources = Sources::for_server(dial.addr).share(1, 2);
    let decoder = FrameDecoder::new(Limits::default());
    let mut scratch = vec![0; READ_CHUNK];
    let mut tally = StormTally::default();
    let mut links: Vec<Option<Link>> = Vec::with_capacity(plan.devices.len());
    let deadline = Instant::now() + STORM_TIMEOUT;
    let mut opened = 0;
    let mut finished = 0;
    while finished < plan.devices.len() {
        interrupt::check()?;
        if Instant::now() >= deadline {
            tally.errors += (plan.devices.len() - finished) as u64;
            break;
        }
        let end = (opened + CONNECTS_PER_TURN).min(plan.devices.len());
        for (token, chats) in plan.devices.get(opened..end).unwrap_or_default() {
            let cursors = chats
                .iter()
                .map(|&chat_id| Cursor {
                    chat_id,
                    seq: plan
                        .heads
                        .get(&chat_id)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(behind),
                })
                .collect();
            let mut first = hello(token, "natter-bench storm");
            let sync = Frame::new(2, Body::Sync(Sync { cursors })).encode();
            if !after_welcome {
                first.extend_from_slice(&sync);
            }
            match open_link(&poll, &mut sources, dial, links.len(), &first) {
                Ok(mut link) => {
                    if after_welcome {
                        link.after_welcome = Some(sync.to_vec());
                    }
                    links.push(Some(link));
                }
                Err(_) => {
                    links.push(None);
                    tally.errors += 1;
                    finished += 1;
                }
            }
        }
        opened = end;
        match poll.poll(&mut events, Some(quic_wait(&mut links, STORM_POLL_WAIT))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        let mut ready: Vec<usize> = events.iter().map(|e| e.token().0).collect();
        quic_due(&mut links, &mut ready);
        for i in ready {
            let Some(Some(link)) = links.get_mut(i) else {
                continue;
            };
            if link.done {
                continue;
            }
            let (ended, frames) = link.receive(&mut scratch, &decoder);
            for bytes in frames {
                let Ok(frame) = view(&bytes, decoder.limits()) else {
                    break;
                };
                match frame.body_type() {
                    fb::Body::Message => tally.messages += 1,
                    fb::Body::Welcome => {
                        if let Some(sync) = link.after_welcome.take() {
                            link.outbuf.extend_from_slice(&sync);
                            if link.flush().is_err() {
                                tally.errors += 1;
                            }
                        }
                    }
                    fb::Body::SyncDone => {
                        link.done = true;
                        tally.done += 1;
                        finished += 1;
                        break;
                    }
                    fb::Body::Error => tally.errors += 1,
                    _ => {}
                }
            }
            if link.done {
                // Done: drop the connection at once, as a phone would after syncing.
                if let Some(slot) = links.get_mut(i) {
                    *slot = None;
                }
            } else if ended {
                tally.errors += 1;
                finished += 1;
                if let Some(slot) = links.get_mut(i) {
                    *slot = None;
                }
            }
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_cores_match_natterd_and_spread() {
        // natterd's own test: ids 1..=1000 spread over two cores, > 400 each.
        let mut counts = [0usize; 2];
        for id in 1..=1000 {
            counts[home_core(id, 2)] += 1;
        }
        assert!(counts[0] > 400 && counts[1] > 400, "{counts:?}");
        assert_eq!(home_core(7, 1), 0);
        // SplitMix64's finaliser of 1 (known value) modulo 2.
        assert_eq!(
            home_core(1, 1 << 20),
            (0x5692_161d_100b_05e5_u64 % (1 << 20)) as usize
        );
        let first_ten: Vec<usize> = (1..=10).map(|id| home_core(id, 2)).collect();
        assert_eq!(first_ten, [1, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(home_core(12_345, 7), 6);
    }

    #[test]
    fn percentiles_split_by_window_and_core() {
        let samples: Vec<Sample> = (0..1000)
            .map(|i| Sample {
                intended_ns: i * 1_000_000,
                latency_us: if i < 500 { 100 } else { 5_000 },
                core: (i % 2) as usize,
            })
            .collect();
        let (base, base_core, n) = percentiles(&samples, 0, 500_000_000);
        assert_eq!(n, 500);
        assert_eq!(base[1], Some(100));
        assert_eq!(base_core.get("0"), Some(&100));
        let (storm, storm_core, n) = percentiles(&samples, 500_000_000, u64::MAX);
        assert_eq!(n, 500);
        assert!(storm[1].unwrap() >= 4_990, "{storm:?}");
        assert_eq!(storm_core.len(), 2);
        let (empty, none, n) = percentiles(&samples, 2_000_000_000, 3_000_000_000);
        assert_eq!((empty, none.len(), n), ([None; 3], 0, 0));
    }

    #[test]
    fn arguments_are_checked() {
        let args = SyncstormArgs {
            storm_devices: 1000,
            chats_per_user: 20,
            messages_per_chat: 2000,
            storm_behind: 10,
            bystanders: 50,
            ping_interval: Duration::from_millis(10),
            baseline: Duration::from_secs(5),
            storm_pipelined: false,
        };
        let options = Options {
            duration: Duration::from_secs(10),
            rate: None,
            text_bytes: None,
        };
        assert!(check_args(&args, &options, 20_000).is_ok());
        let bad = SyncstormArgs {
            storm_behind: 3000,
            ..args.clone()
        };
        assert!(check_args(&bad, &options, 20_000).is_err());
        assert!(check_args(&args, &options, 500).is_err());
        let no_pings = SyncstormArgs {
            ping_interval: Duration::ZERO,
            ..args
        };
        assert!(check_args(&no_pings, &options, 20_000).is_err());
    }
}
