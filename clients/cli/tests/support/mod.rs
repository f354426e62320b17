//! Helpers for the CLI's end-to-end tests: a real natterd (started from the same target
//! directory as the `natter` binary, on free ports with a temporary data dir, restartable
//! on the same ports), `natter` runs with their own profile directories, and `natter`
//! under a pseudo-terminal (rustix's pty calls; `setsid -c` from util-linux makes the pty
//! the controlling terminal, so Ctrl-C and `/dev/tty` prompts work as for a person).
//!
//! The server side follows `server/tests/support/` (not moved, not shared: that one is
//! natter-server's own test code).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

/// How long natterd may take to print its ready line (a debug build on a busy machine).
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long a condition on a CLI's output may take (debug builds, 2 shared cores).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The password every test user gets.
pub const PASSWORD: &str = "correct horse battery";

/// The `natter` binary under test.
pub fn natter_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_natter"))
}

/// natterd, built into the same directory as `natter` (`cargo build --workspace` or
/// `cargo test --workspace`, as scripts/test.sh runs, builds both).
pub fn natterd_exe() -> PathBuf {
    let exe = natter_exe().with_file_name("natterd");
    assert!(
        exe.exists(),
        "{} is missing: build it first (`cargo build -p natter-server`; scripts/test.sh does)",
        exe.display()
    );
    exe
}

/// A natterd child process with its own temporary directory.
pub struct Server {
    child: Option<Child>,
    /// The HTTP side-port.
    pub http: SocketAddr,
    /// The raw TCP port.
    pub tcp: SocketAddr,
    /// The TLS port (0 until the first start picked one; kept for restarts).
    pub tls_port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// Starts natterd on free ports, cheap password hashing, a 0 s presence grace.
pub fn start() -> Server {
    start_with(&[])
}

/// Like [`start`], with extra flags.
pub fn start_with(extra: &[&str]) -> Server {
    let mut server = Server {
        child: None,
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        tcp: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls_port: 0,
        dir: tempfile::tempdir().expect("temp dir"),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    server.spawn();
    server
}

impl Server {
    fn spawn(&mut self) {
        let mut cmd = Command::new(natterd_exe());
        cmd.arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--cores", "2"])
            .args(["--http-port", &self.http.port().to_string()])
            .args(["--tcp-port", &self.tcp.port().to_string()])
            // TLS on a free port (the CLI's best transport; `--tls-port off` in `extra`
            // for TCP); WebSocket (on by default at 7102) is for browsers: off.
            .args(["--tls-port", &self.tls_port.to_string(), "--ws-port", "off"])
            .args(["--quic-port", "off"])
            .args(["--argon2-memory-kib", "8", "--argon2-iterations", "1"])
            .args(["--auth-rate-limit", "100000", "--presence-grace", "0s"])
            .args(&self.extra)
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
        if let Some(tls) = v["tls"].as_str() {
            self.tls_port = tls.parse::<SocketAddr>().unwrap().port();
        }
        self.child = Some(child);
    }

    /// The side-port's URL, as `--server` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// SIGKILLs natterd (no shutdown path runs); [`Server::start_again`] brings it back.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts natterd again on the same data dir and the same ports.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One person at a terminal: a profile directory of their own.
pub struct User {
    /// The profile directory (`--profile`).
    pub profile: PathBuf,
    home: tempfile::TempDir,
}

impl User {
    /// A user with an empty profile.
    pub fn new() -> User {
        let home = tempfile::tempdir().expect("temp dir");
        User {
            profile: home.path().join("profile"),
            home,
        }
    }

    /// A `natter` command for this user: `--profile` set, a private `HOME`, no `NATTER_*`
    /// variables from the environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(natter_exe());
        cmd.arg("--profile")
            .arg(&self.profile)
            .args(args)
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("NATTER_SERVER")
            .env_remove("NATTER_PROFILE")
            .env_remove("NATTER_PASSWORD");
        cmd
    }

    /// Runs `natter ARGS` to the end with empty stdin.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run natter")
    }

    /// Runs `natter ARGS` with `input` on stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn natter");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            // natter may refuse before reading everything: a broken pipe is fine.
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output().expect("wait natter");
        writer.join().unwrap();
        output
    }

    /// Runs `natter ARGS` and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "natter {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("stdout is UTF-8")
    }

    /// Signs up `name` on `server` with [`PASSWORD`].
    pub fn signup(&self, server: &Server, name: &str) {
        self.ok(&["--server", &server.url(), "signup", name, "--password", PASSWORD]);
    }

    /// Runs `natter ARGS` under a pseudo-terminal (stdin, stdout and stderr), as the
    /// session leader with the pty as its controlling terminal.
    pub fn spawn_pty(&self, args: &[&str]) -> Pty {
        let mut cmd = Command::new("setsid");
        cmd.args(["-w", "-c"])
            .arg(natter_exe())
            .arg("--profile")
            .arg(&self.profile);
        cmd.args(args)
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("NATTER_SERVER")
            .env_remove("NATTER_PROFILE")
            .env_remove("NATTER_PASSWORD");
        Pty::spawn(cmd)
    }
}

/// Asserts a failed run: a non-zero exit and exactly one line on stderr, starting with
/// `natter: `; returns that line.
pub fn one_line_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected a failure, got {:?}; stderr {stderr:?}",
        out.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got {stderr:?}");
    assert!(lines[0].starts_with("natter: "), "{stderr:?}");
    lines[0].to_owned()
}

/// A process on a pseudo-terminal; everything it writes is collected.
pub struct Pty {
    child: Child,
    master: File,
    screen: Arc<Mutex<String>>,
    /// Set by the reader once the terminal is closed on the other side (the process and
    /// everything that held the pty exited): the screen is complete.
    drained: Arc<AtomicBool>,
}

impl Pty {
    /// Spawns `cmd` with the slave side of a new pty as stdin, stdout and stderr.
    pub fn spawn(mut cmd: Command) -> Pty {
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
        grantpt(&master).expect("grantpt");
        unlockpt(&master).expect("unlockpt");
        let name = ptsname(&master, Vec::new()).expect("ptsname");
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .open(Path::new(name.to_str().expect("pty name")))
            .expect("open pty slave");
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        let child = cmd
            .spawn()
            .expect("spawn under a pty (`setsid` from util-linux is needed)");
        // The parent's copies of the slave close with `cmd`: the reader sees EIO at exit.
        drop(cmd);
        let master = File::from(master);
        let screen = Arc::new(Mutex::new(String::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = Arc::clone(&screen);
        let drained = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&drained);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    // EIO once no process holds the slave side any more.
                    Ok(0) | Err(_) => {
                        done.store(true, Ordering::Release);
                        return;
                    }
                    Ok(n) => {
                        let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                        sink.lock().unwrap().push_str(&text);
                    }
                }
            }
        });
        Pty {
            child,
            master,
            screen,
            drained,
        }
    }

    /// Types `text` (a `\n` is Enter, `\x04` Ctrl-D, `\x03` Ctrl-C).
    pub fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("write to pty");
        self.master.flush().unwrap();
    }

    /// Everything written to the terminal so far (`\r` removed).
    pub fn screen(&self) -> String {
        self.screen.lock().unwrap().clone()
    }

    /// Waits until the screen shows `needle` at least `times` times; panics with the
    /// screen after [`DEADLINE`].
    pub fn expect_count(&self, needle: &str, times: usize) {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.matches(needle).count() >= times {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the terminal never showed {needle:?} {times} time(s); it shows:\n{screen}"
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }

    /// Waits until the screen shows `needle`.
    pub fn expect(&self, needle: &str) {
        self.expect_count(needle, 1);
    }

    /// Waits for the process to exit and for everything it wrote to be read (up to
    /// [`DEADLINE`]).
    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                let drained = wait_until(|| self.drained.load(Ordering::Acquire));
                assert!(drained, "the terminal stayed open after natter exited");
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "natter did not exit; the terminal shows:\n{}",
                self.screen()
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }

    /// Sends SIGINT to the process.
    pub fn interrupt(&self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        kill_process(pid, Signal::INT).expect("kill -INT");
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `cond` until it holds or [`DEADLINE`] passes; returns whether it held.
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > DEADLINE {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(20));
    }
}
