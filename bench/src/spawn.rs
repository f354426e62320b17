//! [`SpawnedServer`]: the natterd that `--spawn` starts beside the benchmark — on
//! free ports, with a temporary data directory, benchmark-only password hashing and
//! no per-connection send rate limit —
//! and stops again (SIGTERM to its PID, then wait), also when the run fails.
//!
//! natterd announces itself with one stdout line,
//! `NATTERD_READY {"http":"127.0.0.1:PORT","tcp":"127.0.0.1:PORT"}`, once every
//! listener is bound; its log (stderr) goes to a file in the temporary directory and
//! its last lines are shown when it fails.

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde::Deserialize;
use tempfile::TempDir;

use crate::error::BenchError;
use crate::interrupt;

/// How long natterd may take from exec to `NATTERD_READY` (it opens its store first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the wait for readiness checks for Ctrl-C.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long natterd may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the exit of a stopping natterd is checked.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The prefix of natterd's readiness line on stdout.
const READY_PREFIX: &str = "NATTERD_READY ";

/// Lines of natterd's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;

/// The benchmark's argon2id cost: the smallest argon2 allows. Thousands of signups
/// and logins would otherwise take minutes (OWASP cost: ~26 ms per hash, one hash at
/// a time per core).
const BENCH_ARGON2_MEMORY_KIB: u32 = 8;
/// See [`BENCH_ARGON2_MEMORY_KIB`].
const BENCH_ARGON2_ITERATIONS: u32 = 1;
/// Signups plus logins per source address per minute: all benchmark users sign up
/// from 127.0.0.1, so the limit is lifted.
const BENCH_AUTH_RATE_LIMIT: u32 = 100_000_000;

/// Sends per second per connection: natterd's default (1,000) would throttle the
/// messaging scenarios' closed loops, so the limit is lifted.
const BENCH_SEND_RATE_LIMIT: u32 = 10_000_000;

/// The addresses natterd prints in its readiness line.
#[derive(Debug, Deserialize)]
struct ReadyLine {
    http: SocketAddr,
    tcp: SocketAddr,
}

/// A running natterd started by the benchmark. Dropping it stops natterd.
#[derive(Debug)]
pub(crate) struct SpawnedServer {
    child: Child,
    /// The HTTP side-port.
    pub(crate) http: SocketAddr,
    /// The raw TCP frame port.
    pub(crate) tcp: SocketAddr,
    log: PathBuf,
    // Dropped after `child` is stopped (see `Drop`), so natterd never sees its data
    // directory vanish while it runs.
    _dir: TempDir,
}

impl SpawnedServer {
    /// Starts `natterd` from the directory of this executable with `--cores cores`
    /// (natterd's default if `None`) and `extra` flags after the benchmark's own (a
    /// scenario's server settings, e.g. `--presence-grace 1000ms`), and waits until it
    /// is ready.
    ///
    /// # Errors
    /// [`BenchError::NatterdMissing`] if there is no natterd beside this binary;
    /// [`BenchError::Server`] if it exits or stays silent past the deadline;
    /// [`BenchError::Io`] for local failures.
    pub(crate) fn start(cores: Option<usize>, extra: &[String]) -> Result<SpawnedServer, BenchError> {
        let exe = std::env::current_exe()?.with_file_name("natterd");
        if !exe.is_file() {
            return Err(BenchError::NatterdMissing { path: exe });
        }
        let dir = tempfile::Builder::new().prefix("natter-bench-").tempdir()?;
        let data_dir = dir.path().join("data");
        let log = dir.path().join("natterd.log");
        let mut command = Command::new(&exe);
        command
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--http-port", "0", "--tcp-port", "0"])
            .args(["--argon2-memory-kib", &BENCH_ARGON2_MEMORY_KIB.to_string()])
            .args(["--argon2-iterations", &BENCH_ARGON2_ITERATIONS.to_string()])
            .args(["--auth-rate-limit", &BENCH_AUTH_RATE_LIMIT.to_string()])
            .args(["--send-rate-limit", &BENCH_SEND_RATE_LIMIT.to_string()]);
        if let Some(cores) = cores {
            command.args(["--cores", &cores.to_string()]);
        }
        command.args(extra);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log)?);
        let mut child = command.spawn()?;
        let stdout = child.stdout.take();

        // From here on `server` owns the child: any early return stops it.
        let mut server = SpawnedServer {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
            _dir: dir,
        };
        let Some(stdout) = stdout else {
            return Err(server.failure("its stdout could not be captured".into()));
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        // Reads stdout for the whole run so natterd never blocks on a full pipe; ends
        // at natterd's exit (end of the pipe).
        thread::Builder::new()
            .name("natterd-stdout".into())
            .spawn(move || {
                let mut sent = false;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if !sent && line.starts_with(READY_PREFIX) {
                        sent = ready_tx.send(line).is_ok();
                    }
                }
            })?;

        let deadline = Instant::now() + READY_TIMEOUT;
        let line = loop {
            interrupt::check()?;
            match ready_rx.recv_timeout(READY_POLL_INTERVAL) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(server.failure(format!("no {READY_PREFIX}line within {READY_TIMEOUT:?}")));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = server.child.wait()?;
                    return Err(server.failure(format!("it exited ({status}) before it was ready")));
                }
            }
        };
        let json = line.get(READY_PREFIX.len()..).unwrap_or_default();
        let ready: ReadyLine = match serde_json::from_str(json) {
            Ok(ready) => ready,
            Err(e) => return Err(server.failure(format!("unreadable readiness line {line:?}: {e}"))),
        };
        server.http = ready.http;
        server.tcp = ready.tcp;
        println!(
            "natterd started (pid {}, {} cores) with password hashing LOWERED for the benchmark \
             (argon2id {BENCH_ARGON2_MEMORY_KIB} KiB, {BENCH_ARGON2_ITERATIONS} iteration; never use \
             this in production) and the per-connection send rate limit LIFTED \
             (--send-rate-limit {BENCH_SEND_RATE_LIMIT}); its log, deleted at the end: {}",
            server.pid(),
            cores.map_or_else(|| "default".to_owned(), |c| c.to_string()),
            server.log.display()
        );
        Ok(server)
    }

    /// natterd's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops natterd and reports how it exited.
    ///
    /// # Errors
    /// [`BenchError::Server`] if natterd had already died, or did not exit cleanly
    /// on SIGTERM.
    pub(crate) fn stop(mut self) -> Result<(), BenchError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(self.failure(format!("it died during the run ({status})")));
        }
        match self.terminate() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(self.failure(format!("it exited with {status} after SIGTERM"))),
            Err(e) => Err(self.failure(format!("it could not be stopped: {e}"))),
        }
    }

    /// SIGTERM to natterd's PID, then wait; SIGKILL if it outlives [`STOP_TIMEOUT`].
    fn terminate(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        kill_process(Pid::from_child(&self.child), Signal::TERM)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            thread::sleep(EXIT_POLL_INTERVAL);
        }
        eprintln!("natterd did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it");
        self.child.kill()?;
        self.child.wait()
    }

    /// A [`BenchError::Server`] with `message` and the tail of natterd's log.
    fn failure(&self, message: String) -> BenchError {
        BenchError::Server {
            message,
            log_tail: log_tail(&self.log, LOG_TAIL_LINES),
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("natter-bench: could not stop natterd (pid {}): {e}", self.pid());
        }
    }
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all.get(all.len().saturating_sub(lines)..)
        .unwrap_or_default()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_line_parses() {
        let line = r#"NATTERD_READY {"http":"127.0.0.1:7180","tcp":"127.0.0.1:7100"}"#;
        let ready: ReadyLine = serde_json::from_str(line.get(READY_PREFIX.len()..).unwrap()).unwrap();
        assert_eq!(ready.http, "127.0.0.1:7180".parse().unwrap());
        assert_eq!(ready.tcp, "127.0.0.1:7100".parse().unwrap());
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "1\n2\n3\n4\n").unwrap();
        assert_eq!(log_tail(&path, 2), "3\n4");
        assert_eq!(log_tail(&path, 10), "1\n2\n3\n4");
        assert_eq!(log_tail(&dir.path().join("missing"), 2), "");
    }
}
