//! [`SpawnedServer`]: the natterd that `--spawn` starts beside the benchmark — on
//! free ports, with a temporary data directory, benchmark-only password hashing and
//! no per-connection send rate limit —
//! and stops again (SIGTERM to its PID, then wait), also when the run fails.
//! Scenarios that test recovery kill it with SIGKILL ([`SpawnedServer::kill`]) or stop
//! it cleanly ([`SpawnedServer::stop_for_restart`]) and start it again on the same
//! data directory and ports ([`SpawnedServer::restart`]); [`natterd_accepts`] tells
//! whether this natterd build has a flag, so one bench runs against several builds.
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
    /// The natterd executable, for restarts.
    exe: PathBuf,
    /// Every flag natterd was started with except the two ports (restarts reuse
    /// them with the ports the first start chose).
    flags: Vec<String>,
    /// Event-loop threads asked for (`None`: natterd's default), for the message.
    cores: Option<usize>,
    log: PathBuf,
    // Dropped after `child` is stopped (see `Drop`), so natterd never sees its data
    // directory vanish while it runs.
    _dir: TempDir,
}

/// Starts of natterd tried before a restart gives up: after a `kill -9` the old
/// listeners' ports are normally free at once, but a start can race the kernel
/// releasing them.
const RESTART_ATTEMPTS: u32 = 5;

/// Pause between two restart attempts.
const RESTART_PAUSE: Duration = Duration::from_millis(200);

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
        let exe = natterd_path()?;
        let dir = tempfile::Builder::new().prefix("natter-bench-").tempdir()?;
        let data_dir = dir.path().join("data");
        let log = dir.path().join("natterd.log");
        let mut flags: Vec<String> = vec!["--data-dir".into(), data_dir.display().to_string()];
        for (flag, value) in [
            ("--argon2-memory-kib", BENCH_ARGON2_MEMORY_KIB.to_string()),
            ("--argon2-iterations", BENCH_ARGON2_ITERATIONS.to_string()),
            ("--auth-rate-limit", BENCH_AUTH_RATE_LIMIT.to_string()),
            ("--send-rate-limit", BENCH_SEND_RATE_LIMIT.to_string()),
        ] {
            flags.push(flag.into());
            flags.push(value);
        }
        // The per-user HTTP write limit (600 a minute) would throttle setups in which
        // one user creates many chats; lifted where natterd has it.
        if natterd_accepts("--user-write-rate-limit")? {
            flags.push("--user-write-rate-limit".into());
            flags.push(BENCH_AUTH_RATE_LIMIT.to_string());
        }
        // Likewise the per-user friend-request limit (30 a minute): setups befriend in bulk.
        if natterd_accepts("--friend-request-rate-limit")? {
            flags.push("--friend-request-rate-limit".into());
            flags.push(BENCH_AUTH_RATE_LIMIT.to_string());
        }
        if let Some(cores) = cores {
            flags.push("--cores".into());
            flags.push(cores.to_string());
        }
        flags.extend(extra.iter().cloned());
        let child = launch(&exe, &flags, &["0", "0"], &log)?;
        // From here on `server` owns the child: any early return stops it.
        let mut server = SpawnedServer {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 0)),
            exe,
            flags,
            cores,
            log,
            _dir: dir,
        };
        server.wait_ready()?;
        println!(
            "natterd started (pid {}, {} cores) with password hashing LOWERED for the benchmark \
             (argon2id {BENCH_ARGON2_MEMORY_KIB} KiB, {BENCH_ARGON2_ITERATIONS} iteration; never use \
             this in production) and the per-connection send rate limit LIFTED \
             (--send-rate-limit {BENCH_SEND_RATE_LIMIT}); its log, deleted at the end: {}",
            server.pid(),
            server
                .cores
                .map_or_else(|| "default".to_owned(), |c| c.to_string()),
            server.log.display()
        );
        Ok(server)
    }

    /// Kills natterd with SIGKILL (what a crash or `kill -9` looks like: nothing is
    /// flushed, every connection resets) and waits for it to be gone.
    ///
    /// # Errors
    /// [`BenchError::Io`] if the signal cannot be sent or the exit not reaped.
    pub(crate) fn kill(&mut self) -> Result<(), BenchError> {
        if self.child.try_wait()?.is_none() {
            kill_process(Pid::from_child(&self.child), Signal::KILL).map_err(std::io::Error::from)?;
            self.child.wait()?;
        }
        Ok(())
    }

    /// Starts natterd again on the same data directory and the same ports, after
    /// [`SpawnedServer::kill`] or [`SpawnedServer::stop_for_restart`], and waits until
    /// it is ready (it replays its journal first).
    ///
    /// # Errors
    /// [`BenchError::Server`] if it does not come up within [`RESTART_ATTEMPTS`]
    /// starts; [`BenchError::Io`] for local failures.
    pub(crate) fn restart(&mut self) -> Result<(), BenchError> {
        self.kill()?;
        let ports = [self.http.port().to_string(), self.tcp.port().to_string()];
        let ports = [ports[0].as_str(), ports[1].as_str()];
        let mut last = None;
        for _ in 0..RESTART_ATTEMPTS {
            self.child = launch(&self.exe, &self.flags, &ports, &self.log)?;
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e @ BenchError::Interrupted) => return Err(e),
                Err(e) => last = Some(e),
            }
            let _ = self.kill();
            thread::sleep(RESTART_PAUSE);
        }
        Err(last.unwrap_or_else(|| self.failure("it could not be restarted".into())))
    }

    /// Stops natterd cleanly (SIGTERM: it syncs and closes its store) so that the
    /// next [`SpawnedServer::restart`] starts it with cold caches.
    ///
    /// # Errors
    /// [`BenchError::Server`] if it had died or did not exit cleanly.
    pub(crate) fn stop_for_restart(&mut self) -> Result<(), BenchError> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Err(self.failure(format!("it died during the run ({status})")));
        }
        match self.terminate() {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(self.failure(format!("it exited with {status} after SIGTERM"))),
            Err(e) => Err(self.failure(format!("it could not be stopped: {e}"))),
        }
    }

    /// Waits for the readiness line of the current child and takes its ports.
    fn wait_ready(&mut self) -> Result<(), BenchError> {
        let Some(stdout) = self.child.stdout.take() else {
            return Err(self.failure("its stdout could not be captured".into()));
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
                    return Err(self.failure(format!("no {READY_PREFIX}line within {READY_TIMEOUT:?}")));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    return Err(self.failure(format!("it exited ({status}) before it was ready")));
                }
            }
        };
        let json = line.get(READY_PREFIX.len()..).unwrap_or_default();
        let ready: ReadyLine = match serde_json::from_str(json) {
            Ok(ready) => ready,
            Err(e) => return Err(self.failure(format!("unreadable readiness line {line:?}: {e}"))),
        };
        self.http = ready.http;
        self.tcp = ready.tcp;
        Ok(())
    }

    /// natterd's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops natterd cleanly (SIGTERM, then wait) and then returns the bytes
    /// its data directory takes on disk (see [`crate::disk::usage`]), before the
    /// directory is deleted.
    ///
    /// # Errors
    /// [`BenchError::Server`] if natterd had already died, or did not exit cleanly on
    /// SIGTERM; [`BenchError::Io`] if the directory cannot be read.
    pub(crate) fn stop_with_disk_usage(mut self) -> Result<u64, BenchError> {
        self.stop_for_restart()?;
        Ok(crate::disk::usage(&self.data_dir())?)
    }

    /// natterd's data directory (`--data-dir`), inside the temporary directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
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

/// The natterd beside this executable.
///
/// # Errors
/// [`BenchError::NatterdMissing`] if there is none.
fn natterd_path() -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe()?.with_file_name("natterd");
    if !exe.is_file() {
        return Err(BenchError::NatterdMissing { path: exe });
    }
    Ok(exe)
}

/// Whether the natterd beside this executable takes `flag` (it appears in its
/// `--help`), so that one benchmark build runs against natterd builds with and
/// without a newer flag.
///
/// # Errors
/// [`BenchError::NatterdMissing`] / [`BenchError::Io`] if natterd cannot be run.
pub(crate) fn natterd_accepts(flag: &str) -> Result<bool, BenchError> {
    let output = Command::new(natterd_path()?)
        .arg("--help")
        .stdin(Stdio::null())
        .output()?;
    Ok(help_mentions(&String::from_utf8_lossy(&output.stdout), flag))
}

/// Whether `help` (natterd's `--help` text) lists `flag` as a whole word.
fn help_mentions(help: &str, flag: &str) -> bool {
    help.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == '[' || c == ']')
        .any(|word| word == flag)
}

/// Spawns natterd with `flags` and `--http-port ports[0] --tcp-port ports[1]`, its
/// stdout piped and its stderr appended to `log`.
fn launch(exe: &Path, flags: &[String], ports: &[&str; 2], log: &Path) -> Result<Child, BenchError> {
    let stderr = File::options().create(true).append(true).open(log)?;
    let child = Command::new(exe)
        .args(flags)
        .args(["--http-port", ports[0], "--tcp-port", ports[1]])
        // The other transports on free ports: a benchmark never collides with a natterd on their defaults.
        .args(["--tls-port", "0", "--ws-port", "0", "--quic-port", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    Ok(child)
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
    fn help_flags_are_found_as_whole_words() {
        let help = "Options:\n      --max-connections-per-core <N>  limit\n      --cores <N>\n";
        assert!(help_mentions(help, "--cores"));
        assert!(help_mentions(help, "--max-connections-per-core"));
        assert!(!help_mentions(help, "--max-connections"));
        assert!(!help_mentions(help, "--max-sessions-per-user"));
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
