//! `memcap`: natterd in a memory cgroup capped at 256 MiB (cgroup v1
//! `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` so it cannot
//! swap its way out; with only cgroup v2 it would be `memory.max` — this
//! machine has v1) holding 2,000 client connections, of which 10 % never read
//! their sockets while their chat gets large messages, and 90 % read. natterd
//! must not be OOM-killed: its outbound buffers for the stalled readers are
//! bounded (past 8 MiB a session is switched to `Resync`). Reported: peak
//! RSS and the cgroup's peak usage, the cgroup's OOM-kill count, an honest
//! reader's ping latency, and I1–I3 over the senders' messages.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use natter_client::{Connection, HttpClient};
use natter_wire::{Body, Frame, Hello, PROTOCOL_VERSION};

use super::{Error, Outcome, ms, quantile};
use crate::history::Recorder;
use crate::load::{self, Account, Control, PHASE_DRAIN, PHASE_STOP, SenderPlan, account, befriend, retry};
use crate::spawn::{Natterd, Options};

/// The cap.
const LIMIT_BYTES: u64 = 256 << 20;
/// Connections in all.
const CONNECTIONS: usize = 2_000;
/// Connections per user (natterd allows 16 live sessions per user).
const PER_USER: usize = 10;
/// Users whose connections never read (10 % of the connections).
const STALLED_USERS: usize = CONNECTIONS / PER_USER / 10;
/// Members of a reading group besides the sender (groups hold at most 100).
const GROUP_READERS: usize = 90;

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Seed of every random choice.
    pub seed: u64,
    /// The long version (longer load).
    pub full: bool,
}

/// A child memory cgroup of our own, removed on drop.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(limit: u64) -> Result<Cgroup, Error> {
        let own = fs::read_to_string("/proc/self/cgroup")?;
        let path = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                controllers
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| path.to_owned())
            })
            .ok_or("no cgroup v1 memory controller (with only v2 this scenario would use memory.max)")?;
        let base = PathBuf::from("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
        let dir = base.join(format!("natter-chaos-{}", std::process::id()));
        fs::create_dir(&dir)
            .map_err(|e| format!("cannot create the cgroup {} (needs root): {e}", dir.display()))?;
        let cg = Cgroup { dir };
        fs::write(cg.dir.join("memory.limit_in_bytes"), limit.to_string())?;
        // Without swap this file may refuse; the RAM limit alone then suffices.
        let _ = fs::write(cg.dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
        Ok(cg)
    }

    fn read(&self, file: &str) -> String {
        fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    fn oom_kills(&self) -> u64 {
        self.read("memory.oom_control")
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Opens `n` connections with `token` and sends each its `Hello` (answers unread).
fn open_many(addr: SocketAddr, token: &str, n: usize) -> std::io::Result<Vec<TcpStream>> {
    let hello = Frame::new(
        1,
        Body::Hello(Hello {
            token: token.into(),
            device: "bulk".into(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: false,
            conversation: false,
        }),
    )
    .encode();
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(&hello)?;
            Ok(s)
        })
        .collect()
}

/// Reads every socket of `socks` until `stop`, counting bytes.
fn read_all(socks: Vec<TcpStream>, stop: Arc<AtomicBool>, bytes: Arc<AtomicU64>) {
    for s in &socks {
        let _ = s.set_nonblocking(true);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut socks = socks;
    while !stop.load(Ordering::Relaxed) {
        let mut any = false;
        for s in socks.iter_mut() {
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                any = true;
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        if !any {
            thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Runs the scenario.
///
/// # Errors
/// No memory cgroup could be made, or natterd could not be started.
pub fn run(p: &Params) -> Result<Outcome, Error> {
    let mut out = Outcome::new("memcap");
    let cg = Cgroup::new(LIMIT_BYTES)?;
    let script = r#"echo $$ > "$0/cgroup.procs" && exec "$@""#;
    let mut natterd = Natterd::start(Options {
        wrapper: vec![
            "sh".into(),
            "-c".into(),
            script.into(),
            cg.dir.display().to_string(),
        ],
        ..Options::default()
    })?;
    let pid = natterd.pid().ok_or("natterd is not running")?;
    let in_cgroup = cg
        .read("cgroup.procs")
        .lines()
        .any(|l| l.trim() == pid.to_string());
    out.expect(in_cgroup, || {
        format!("natterd (pid {pid}) is not in {}", cg.dir.display())
    });
    out.figure("limit_mib", LIMIT_BYTES >> 20);
    let addr = natterd.tcp;
    let http = HttpClient::new(&natterd.http_url());
    let mk = |name: String| retry(Duration::from_secs(30), || account(&http, &name));

    // Accounts: one sender, the stalled users, the readers; three groups.
    let sender = mk("mem_sender".into())?;
    let users = CONNECTIONS / PER_USER;
    let mut all: Vec<Account> = Vec::with_capacity(users);
    for i in 0..users {
        let a = mk(format!("mem_u{i}"))?;
        befriend(&http, &sender, &a)?;
        all.push(a);
    }
    let (stalled, readers) = all.split_at(STALLED_USERS);
    let rec = Recorder::new();
    let mut chats = Vec::new();
    for (name, members) in [
        ("stalled", stalled),
        ("readers-a", readers.get(..GROUP_READERS).unwrap_or_default()),
        ("readers-b", readers.get(GROUP_READERS..).unwrap_or_default()),
    ] {
        let ids: Vec<u64> = members.iter().map(|a| a.user).collect();
        let chat = http.create_group(&sender.token, name, &ids)?;
        rec.member(chat, sender.user);
        for id in ids {
            rec.member(chat, id);
        }
        chats.push(chat);
    }

    // 2,000 connections: the stalled ones never read.
    let opened = Instant::now();
    let mut stalled_socks = Vec::new();
    for a in stalled {
        stalled_socks.extend(open_many(addr, &a.token, PER_USER)?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let read_bytes = Arc::new(AtomicU64::new(0));
    let mut reader_threads = Vec::new();
    let mut reading = Vec::new();
    for a in readers {
        reading.extend(open_many(addr, &a.token, PER_USER)?);
    }
    let total = stalled_socks.len() + reading.len();
    let half = reading.len() / 2;
    let second = reading.split_off(half);
    for socks in [reading, second] {
        let (stop, bytes) = (stop.clone(), read_bytes.clone());
        reader_threads.push(thread::spawn(move || read_all(socks, stop, bytes)));
    }
    let authenticated = Instant::now();
    let mut sessions = 0.0;
    while authenticated.elapsed() < Duration::from_secs(60) {
        sessions = natterd_metric(&http, "natter_sessions{").unwrap_or(0.0);
        if sessions >= total as f64 {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    out.expect(sessions >= total as f64, || {
        format!("only {sessions} of {total} connections were authenticated")
    });
    out.figure("connections", total);
    out.figure("sessions", sessions);
    out.figure("connect_s", format!("{:.1}", opened.elapsed().as_secs_f64()));

    // Load: large messages to the stalled group, small ones to the readers.
    let ctl = Control::new();
    let duration = Duration::from_secs(if p.full { 120 } else { 25 });
    let mut senders = Vec::new();
    let stalled_chat = *chats.first().ok_or("no chats")?;
    for (chat, rate, size) in [
        (stalled_chat, 25.0, 32_000),
        (*chats.get(1).ok_or("no chat")?, 10.0, 200),
        (*chats.get(2).ok_or("no chat")?, 10.0, 200),
    ] {
        let plan = SenderPlan {
            account: sender.clone(),
            addr,
            chats: vec![chat],
            rate,
            max_in_flight: 64,
            limit: None,
            text_bytes: size,
        };
        let (rec, ctl) = (rec.clone(), ctl.clone());
        let seed = p.seed ^ chat;
        senders.push(thread::spawn(move || load::run_sender(plan, rec, ctl, seed)));
    }
    // An honest client's ping latency throughout, and the peak memory.
    let (mut pinger, _) = Connection::connect(addr, &sender.token, "pinger")?;
    pinger.set_timeout(Duration::from_secs(5));
    let mut pings = Vec::new();
    let mut ping_failures = 0u64;
    let mut peak_rss = 0u64;
    let started = Instant::now();
    while started.elapsed() < duration && natterd.exited().is_none() {
        match pinger.ping() {
            Ok(rtt) => pings.push(rtt),
            Err(_) => ping_failures += 1,
        }
        if let Some((rss, hwm)) = natterd.rss() {
            peak_rss = peak_rss.max(rss).max(hwm);
        }
        thread::sleep(Duration::from_millis(200));
    }
    let died = natterd.exited();
    out.expect(died.is_none(), || {
        format!(
            "natterd died under the memory cap: {died:?}\n{}",
            natterd.log_tail(6)
        )
    });
    let oom = cg.oom_kills();
    out.expect(oom == 0, || format!("the cgroup OOM-killed {oom} times"));
    out.expect(ping_failures == 0, || {
        format!("{ping_failures} pings of an honest client failed")
    });
    ctl.set_phase(PHASE_DRAIN);
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end && !senders.iter().all(|h| h.is_finished()) {
        thread::sleep(Duration::from_millis(20));
    }
    ctl.set_phase(PHASE_STOP);
    let unacked: u64 = senders.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    out.expect(unacked == 0, || format!("{unacked} sends never acknowledged"));
    let cg_peak: u64 = cg.read("memory.max_usage_in_bytes").trim().parse().unwrap_or(0);
    let failcnt = cg.read("memory.failcnt").trim().to_owned();
    let resyncs = natterd_metric(&http, "natter_slow_consumers_total");
    stop.store(true, Ordering::Relaxed);
    for t in reader_threads {
        let _ = t.join();
    }
    drop(stalled_socks);
    if died.is_none() {
        for chat in &chats {
            load::read_back(addr, &sender, *chat, &rec)?;
        }
    }
    let scenario = std::mem::take(&mut out.verdict);
    out.verdict = rec.check();
    out.verdict.passed += scenario.passed;
    out.verdict.failed += scenario.failed;
    out.verdict.failures.extend(scenario.failures);
    let status = natterd.stop();
    out.expect(died.is_some() || status.is_some_and(|s| s.success()), || {
        format!("natterd did not stop cleanly: {status:?}")
    });
    out.figure("duration_s", duration.as_secs());
    out.figure("peak_rss_mib", format!("{:.1}", peak_rss as f64 / 1048576.0));
    out.figure("cgroup_peak_mib", format!("{:.1}", cg_peak as f64 / 1048576.0));
    out.figure("cgroup_failcnt", failcnt);
    out.figure("oom_kills", oom);
    out.figure("honest_ping_p50", ms(quantile(&mut pings, 0.5)));
    out.figure("honest_ping_p99", ms(quantile(&mut pings, 0.99)));
    out.figure("honest_ping_max", ms(quantile(&mut pings, 1.0)));
    out.figure(
        "bytes_read_by_readers_mib",
        read_bytes.load(Ordering::Relaxed) >> 20,
    );
    out.figure(
        "slow_consumers",
        resyncs.map_or_else(|| "n/a".into(), |v| v.to_string()),
    );
    out.figure("errors", ctl.errors_summary());
    drop(natterd);
    drop(cg);
    Ok(out)
}

/// The sum over all label sets of the `/metrics` samples named `name`.
fn natterd_metric(http: &HttpClient, name: &str) -> Option<f64> {
    let text = http.metrics().ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
