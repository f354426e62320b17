//! [`Natterd`]: a natterd child process that a scenario starts, kills, restarts
//! and stops — on free loopback ports (the same ones again after a restart),
//! with a data directory the scenario chooses (a temporary one by default, or
//! one on a small tmpfs), cheap password hashing and lifted client rate limits,
//! optionally under a wrapper command (`fiu-run …`, a cgroup entry script).
//!
//! A scenario only ever signals the process it started (by its pid, through
//! [`std::process::Child`]); dropping a [`Natterd`] kills it if it still runs.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// How long natterd may take from exec to its `NATTERD_READY` line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The prefix of natterd's readiness line on stdout.
const READY_PREFIX: &str = "NATTERD_READY ";
/// Starts tried by [`Natterd::restart`]: a start can race the kernel releasing the old ports.
const RESTART_ATTEMPTS: u32 = 10;
/// Pause between two restart attempts.
const RESTART_PAUSE: Duration = Duration::from_millis(100);
/// How long a clean stop (SIGTERM) may take before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll interval while waiting for an exit (not a synchronisation sleep).
const EXIT_POLL: Duration = Duration::from_millis(5);

/// The flags every scenario's natterd gets: cheap argon2 (thousands of logins
/// in seconds), no per-address auth limit and no per-connection send limit
/// (every client is on 127.0.0.1 and sends as fast as the scenario wants).
const BASE_FLAGS: &[&str] = &[
    "--argon2-memory-kib",
    "8",
    "--argon2-iterations",
    "1",
    "--auth-rate-limit",
    "100000000",
    "--send-rate-limit",
    "10000000",
    "--user-write-rate-limit",
    "100000000",
    "--friend-request-rate-limit",
    "100000000",
    "--tls-port",
    "off",
    "--ws-port",
    "off",
    "--quic-port",
    "off",
];

/// How to start natterd.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The data directory; `None`: a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// Event-loop threads (`--cores`); `None`: 2.
    pub cores: Option<usize>,
    /// Flags after the base ones (later flags win).
    pub extra: Vec<String>,
    /// A command natterd is run under, e.g. `["fiu-run", "-x", "-c", "…"]`
    /// (natterd's path and flags are appended).
    pub wrapper: Vec<String>,
    /// `NATTER_LOG` for natterd (default `warn`).
    pub log_level: Option<String>,
}

/// A running (or stopped, between a kill and a restart) natterd.
#[derive(Debug)]
pub struct Natterd {
    child: Option<Child>,
    /// The HTTP side-port.
    pub http: SocketAddr,
    /// The raw TCP frame port.
    pub tcp: SocketAddr,
    options: Options,
    data_dir: PathBuf,
    log: PathBuf,
    // Dropped last: natterd never sees its directory vanish while it runs.
    _tmp: tempfile::TempDir,
}

/// Why natterd could not be started or stopped.
#[derive(Debug)]
pub struct SpawnError(pub String);

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpawnError {}

impl From<std::io::Error> for SpawnError {
    fn from(e: std::io::Error) -> Self {
        SpawnError(e.to_string())
    }
}

/// The natterd to run: `$NATTERD`, else the one beside this executable.
///
/// # Errors
/// Neither exists.
pub fn natterd_path() -> Result<PathBuf, SpawnError> {
    if let Some(path) = std::env::var_os("NATTERD") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // Beside this binary (target/<profile>/), or one up from a test binary (target/<profile>/deps/).
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("natterd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(SpawnError(format!(
        "no natterd beside {} (set NATTERD)",
        exe.display()
    )))
}

impl Natterd {
    /// Starts natterd with `options` and waits until it is ready.
    ///
    /// # Errors
    /// natterd is missing, exits, or prints no ready line in time.
    pub fn start(options: Options) -> Result<Natterd, SpawnError> {
        let tmp = tempfile::Builder::new().prefix("natter-chaos-").tempdir()?;
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let log = tmp.path().join("natterd.log");
        let mut server = Natterd {
            child: None,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 0)),
            options,
            data_dir,
            log,
            _tmp: tmp,
        };
        server.launch(0, 0)?;
        Ok(server)
    }

    /// Spawns natterd on these ports (0: any) and waits for its ready line.
    fn launch(&mut self, http: u16, tcp: u16) -> Result<Duration, SpawnError> {
        let exe = natterd_path()?;
        let stderr = File::options().create(true).append(true).open(&self.log)?;
        let mut cmd = match self.options.wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(&exe);
                cmd
            }
            None => Command::new(&exe),
        };
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .args(BASE_FLAGS)
            .args(["--cores", &self.options.cores.unwrap_or(2).to_string()])
            .args(["--http-port", &http.to_string(), "--tcp-port", &tcp.to_string()])
            .args(&self.options.extra)
            .env(
                "NATTER_LOG",
                self.options.log_level.clone().unwrap_or_else(|| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let started = Instant::now();
        let mut child = cmd.spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| SpawnError("natterd's stdout was not captured".into()))?;
        let (tx, rx) = mpsc::channel();
        // Reads stdout until natterd exits, so it never blocks on a full pipe.
        thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && let Some(json) = line.strip_prefix(READY_PREFIX) {
                    sent = tx.send(json.to_owned()).is_ok();
                }
            }
        });
        self.child = Some(child);
        let json = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(json) => json,
            Err(_) => {
                let status = self.kill9();
                return Err(SpawnError(format!(
                    "natterd was not ready within {READY_TIMEOUT:?} ({status:?}); log tail:\n{}",
                    self.log_tail(15)
                )));
            }
        };
        let ready = started.elapsed();
        let v: serde_json::Value =
            serde_json::from_str(&json).map_err(|e| SpawnError(format!("bad ready line {json:?}: {e}")))?;
        let addr = |key: &str| -> Result<SocketAddr, SpawnError> {
            v[key]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| SpawnError(format!("ready line without {key}: {json}")))
        };
        self.http = addr("http")?;
        self.tcp = addr("tcp")?;
        Ok(ready)
    }

    /// natterd's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The data directory (kept across restarts).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The side-port's base URL.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// SIGKILL (nothing is flushed, every connection resets); returns how it ended.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = kill_process(Pid::from_child(&child), Signal::KILL);
        child.wait().ok()
    }

    /// Sends SIGSTOP or SIGCONT to natterd (a stall, not a crash).
    pub fn signal(&self, signal: Signal) {
        if let Some(child) = &self.child {
            let _ = kill_process(Pid::from_child(child), signal);
        }
    }

    /// Starts natterd again on the same data directory and ports (after a kill
    /// or an exit) and returns the time from exec to its ready line.
    ///
    /// # Errors
    /// It did not come up within [`RESTART_ATTEMPTS`] starts.
    pub fn restart(&mut self) -> Result<Duration, SpawnError> {
        self.kill9();
        let (http, tcp) = (self.http.port(), self.tcp.port());
        let mut last = SpawnError("no attempt".into());
        for _ in 0..RESTART_ATTEMPTS {
            match self.launch(http, tcp) {
                Ok(ready) => return Ok(ready),
                Err(e) => last = e,
            }
            self.kill9();
            thread::sleep(RESTART_PAUSE);
        }
        Err(last)
    }

    /// Replaces the wrapper and extra flags used by the next [`Natterd::restart`]
    /// (e.g. the same natterd without a fault injector).
    pub fn set_launch(&mut self, wrapper: Vec<String>, extra: Vec<String>) {
        self.options.wrapper = wrapper;
        self.options.extra = extra;
    }

    /// If natterd has exited, how.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// Waits up to `deadline` for natterd to exit on its own.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if self.child.is_none() || Instant::now() >= end {
                return None;
            }
            thread::sleep(EXIT_POLL);
        }
    }

    /// SIGTERM, then wait (SIGKILL after [`STOP_TIMEOUT`]); returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let pid = Pid::from_child(self.child.as_ref()?);
        let _ = kill_process(pid, Signal::TERM);
        self.wait_exit(STOP_TIMEOUT).or_else(|| self.kill9())
    }

    /// The last `lines` lines of natterd's stderr.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all.get(all.len().saturating_sub(lines)..)
            .unwrap_or_default()
            .join("\n")
    }

    /// natterd's whole stderr so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// natterd's resident set (`VmRSS`) and its peak (`VmHWM`), in bytes.
    pub fn rss(&self) -> Option<(u64, u64)> {
        let pid = self.pid()?;
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Natterd {
    fn drop(&mut self) {
        self.kill9();
    }
}
