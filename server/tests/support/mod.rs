//! Shared helpers for natterd's end-to-end tests: start the real `natterd`
//! binary on free ports with a temporary data dir, restart or kill it, and wait
//! on conditions with deadlines.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

/// A push gateway stub (`tests/push.rs`).
pub mod gateway;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use natter_client::{HttpClient, Login};

/// How long natterd may take to print its ready line (a debug build on a busy 2-core machine).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A natterd child process with its own temporary data directory.
pub struct TestServer {
    child: Option<Child>,
    /// The HTTP side-port.
    pub http: SocketAddr,
    /// The raw TCP port.
    pub tcp: SocketAddr,
    /// Every enabled transport as a URL (`tcp://`, `tls://`, `ws://`), from the ready line.
    pub urls: Vec<String>,
    /// The TLS certificate's SHA-256 (hex), when TLS is on.
    pub cert_sha256: Option<String>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    /// A command natterd is run under, e.g. `prlimit --nofile=1200:1200 --`.
    wrapper: Vec<String>,
}

/// Starts natterd with `--cores 2`, free ports, a temp dir and cheap password hashing.
pub fn start() -> TestServer {
    start_with(&[])
}

/// Like [`start`], with extra flags (later flags override earlier ones).
pub fn start_with(extra: &[&str]) -> TestServer {
    start_under(&[], extra)
}

/// Like [`start_with`], with natterd run under `wrapper` (a command that
/// execs its arguments, e.g. `["prlimit", "--nofile=1200:1200", "--"]`).
pub fn start_under(wrapper: &[&str], extra: &[&str]) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let args = extra.iter().map(|s| s.to_string()).collect();
    let wrapper = wrapper.iter().map(|s| s.to_string()).collect();
    let mut server = TestServer {
        child: None,
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        tcp: SocketAddr::from(([127, 0, 0, 1], 0)),
        urls: Vec::new(),
        cert_sha256: None,
        dir,
        args,
        wrapper,
    };
    server.spawn();
    server
}

/// The natterd under test: the one built with the tests, or the binary named
/// by `NATTER_BASELINE_NATTERD` (to measure an older build, e.g. main's, with
/// the same tests; flags it does not know are left out).
fn natterd_binary() -> (PathBuf, bool) {
    match std::env::var_os("NATTER_BASELINE_NATTERD") {
        Some(path) => (PathBuf::from(path), true),
        None => (PathBuf::from(env!("CARGO_BIN_EXE_natterd")), false),
    }
}

/// Drops `--flag value` pairs whose flag `help` (natterd's `--help`) does not list.
fn known_flags(args: Vec<String>, help: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut skip_value = false;
    for arg in args {
        if skip_value {
            skip_value = false;
            if !arg.starts_with("--") {
                continue;
            }
        }
        if arg.starts_with("--") && !help.split_whitespace().any(|w| w.trim_end_matches(',') == arg) {
            eprintln!("baseline natterd does not know {arg}: left out");
            skip_value = true;
            continue;
        }
        out.push(arg);
    }
    out
}

impl TestServer {
    fn spawn(&mut self) {
        let (binary, baseline) = natterd_binary();
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&binary);
                cmd
            }
            None => Command::new(&binary),
        };
        let mut args: Vec<String> = [
            "--cores",
            "2",
            "--http-port",
            "0",
            "--tcp-port",
            "0",
            "--tls-port",
            "0",
            "--ws-port",
            "0",
            "--quic-port",
            "0",
            "--argon2-memory-kib",
            "8",
            "--argon2-iterations",
            "1",
            "--auth-rate-limit",
            "100000",
            "--friend-request-rate-limit",
            "100000",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.args.iter().cloned())
        .collect();
        if baseline {
            let help = Command::new(&binary)
                .arg("--help")
                .output()
                .expect("natterd --help");
            args = known_flags(args, &String::from_utf8_lossy(&help.stdout));
        }
        cmd.arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(&args)
            .env(
                "NATTER_LOG",
                std::env::var("NATTER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn natterd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(json) = line.strip_prefix("NATTERD_READY ") {
                    let _ = tx.send(json.to_owned());
                }
            }
        });
        let json = rx
            .recv_timeout(START_DEADLINE)
            .expect("natterd did not become ready");
        let v: serde_json::Value = serde_json::from_str(&json).expect("ready line is JSON");
        self.http = v["http"].as_str().unwrap().parse().unwrap();
        self.tcp = v["tcp"].as_str().unwrap().parse().unwrap();
        self.urls = v["urls"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        self.cert_sha256 = v["cert_sha256"].as_str().map(str::to_owned);
        self.child = Some(child);
    }

    /// The URL of the enabled transport `scheme` (`tcp`, `tls`, `ws`, `wss`).
    pub fn url(&self, scheme: &str) -> String {
        let prefix = format!("{scheme}://");
        self.urls
            .iter()
            .find(|u| u.starts_with(&prefix))
            .unwrap_or_else(|| panic!("natterd has no {scheme} endpoint: {:?}", self.urls))
            .clone()
    }

    /// The pin for the server's certificate.
    pub fn trust(&self) -> natter_client::Trust {
        natter_client::Trust::Fingerprint(self.cert_sha256.clone().expect("TLS is on"))
    }

    /// Opens and authenticates a connection over `scheme` (`tcp`, `tls`, `ws`).
    pub fn connect(&self, scheme: &str, login: &Login) -> (natter_client::Connection, natter_wire::Welcome) {
        let trust = self.cert_sha256.as_ref().map(|_| self.trust());
        natter_client::Connection::connect_url(&self.url(scheme), trust.as_ref(), &login.token, "test-device")
            .unwrap_or_else(|e| panic!("connect over {scheme}: {e}"))
    }

    /// The side-port's base URL.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// An HTTP client for the side-port.
    pub fn client(&self) -> HttpClient {
        HttpClient::new(&self.http_url())
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The process id of the running natterd.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        wait_exit(&mut child, Duration::from_secs(30))
    }

    /// SIGKILLs natterd (no shutdown path runs).
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops natterd cleanly and starts it again on the same data dir (new ports).
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "natterd exited with {status}");
        self.spawn();
    }

    /// Replaces the extra flags used by the next (re)start.
    pub fn set_args(&mut self, extra: &[&str]) {
        self.args = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Starts natterd again after [`TestServer::kill9`] or [`TestServer::stop`].
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// Signs up `name` and logs in one device.
    pub fn user(&self, name: &str) -> Login {
        let http = self.client();
        http.signup(name, "correct horse battery").expect("signup");
        http.login(name, "correct horse battery", "test-device")
            .expect("login")
    }

    /// The value of one `/metrics` sample, e.g. `natter_sessions{core="0"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.client().metrics().ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// A per-core metric (`name{core="N"}`) summed over the two cores the
    /// test server runs; a core without the sample counts 0.
    pub fn metric_sum(&self, name: &str) -> f64 {
        (0..2).map(|core| self.core_metric(name, core)).sum()
    }

    /// The largest value of a per-core metric over the two cores.
    pub fn metric_max(&self, name: &str) -> f64 {
        (0..2)
            .map(|core| self.core_metric(name, core))
            .fold(0.0, f64::max)
    }

    fn core_metric(&self, name: &str, core: usize) -> f64 {
        self.metric(&format!("{name}{{core=\"{core}\"}}")).unwrap_or(0.0)
    }

    /// natterd's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/PID/status")
            * 1024
    }
}

/// The slow-consumer tests (`sync.rs`, `transports.rs`): what a device that
/// reads nothing may cost while 80 MB of pushes are sent to it.
pub mod slow_consumer {
    /// Messages sent, of [`TEXT_BYTES`] each: 80 MB, ten times the queue limit.
    pub const COUNT: u64 = 8000;
    /// Bytes of text per message.
    pub const TEXT_BYTES: usize = 10_000;
    /// natterd's slow-consumer limit (`MAX_OUTBOUND_HARD`), plus the frame
    /// that crosses it and the Resync after it: the most one connection's
    /// queue may hold (`natter_outbound_peak_bytes`).
    pub const QUEUE_BOUND: u64 = 8 * 1024 * 1024 + 64 * 1024;
    /// Explicit budgets for the store, so that what natterd may hold while
    /// taking the sends does not depend on its defaults; search off, because
    /// its writer's heap (50 MB, filled as it indexes) is a fixed budget of
    /// its own and would hide a queue twice the limit.
    pub const FLAGS: [&str; 6] = [
        "--cache-size",
        "8MiB",
        "--journal-limit",
        "4MiB",
        "--search",
        "off",
    ];
    /// What natterd may grow by while taking the 80 MB, whoever reads them,
    /// with [`FLAGS`]: the block cache (8 MiB), the memtables (sealed at
    /// 4 MiB, up to five waiting for their flush), the stalled connection's
    /// queue ([`QUEUE_BOUND`]) and the allocator's slack. It grows 23–27 MB
    /// with nobody reading; a queue that kept the pushes, or a transport that
    /// buffered them, would cross it.
    pub const RSS_BOUND: u64 = 64 * 1024 * 1024;

    /// The stalled device's queue grew (it really stalled) and no
    /// connection's queue passed [`QUEUE_BOUND`] (`natter_outbound_peak_bytes`).
    pub fn assert_queue_bounded(server: &super::TestServer, scheme: &str) {
        let peak = server.metric_max("natter_outbound_peak_bytes");
        assert!(
            peak > 1_000_000.0,
            "{scheme}: the stalled device's queue never grew: {peak}"
        );
        assert!(
            (peak as u64) <= QUEUE_BOUND,
            "{scheme}: one connection had {peak} bytes queued (bound {QUEUE_BOUND})"
        );
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{name} {pid} failed");
}

fn wait_exit(child: &mut Child, deadline: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            panic!("natterd did not exit within {deadline:?}");
        }
        std::thread::yield_now();
        wait_a_moment();
    }
}

/// Polls `cond` until it holds or `deadline` passes; returns whether it held.
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > deadline {
            return false;
        }
        wait_a_moment();
    }
}

/// The pause between two polls of a condition (not a synchronisation sleep).
fn wait_a_moment() {
    std::thread::park_timeout(Duration::from_millis(10));
}

/// Files under `dir` (for restart tests that check the store is on disk).
pub fn has_files(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}
