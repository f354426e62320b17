//! End-to-end: fail-stop does not depend on logging. natterd runs with its
//! stderr on `/dev/full` (every log write fails): it still starts, serves and
//! acknowledges a Send, and stops cleanly on SIGTERM; and when a durable write
//! fails (the journal write hits the file-size limit the test puts on the
//! process, the same trigger as the writer's poison test) it exits with code
//! 70 at once, acknowledging nothing of the failed write — where it used to
//! stay up, its writer thread killed by a panicking log write, accepting
//! Sends and acknowledging none.
//!
//! libfiu (`fiu-run`) would inject the `write` error more directly; it is not
//! needed here, so the suite does not depend on it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use natter_client::{Connection, HttpClient};
use natter_wire::{Body, Frame, Send};

/// How long natterd may take to print its ready line (a debug build on a busy machine).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a fail-stop may take to end the process, once the failure happened.
const EXIT_DEADLINE: Duration = Duration::from_secs(10);
/// The file-size limit put on natterd in the poison test, once it runs (fjall
/// preallocates its 64 MiB journal at start, so a limit cannot be set before):
/// writes below this offset succeed, the journal write of a 400 KB message
/// past it fails with `EFBIG`.
const FILE_SIZE_LIMIT: u64 = 256 << 10;

/// natterd started with stderr on `/dev/full`; with `ignore_xfsz`, through a
/// shell that ignores `SIGXFSZ` (inherited across exec), so a write past a
/// file-size limit fails with `EFBIG` instead of killing the process.
struct Natterd {
    child: Child,
    http: SocketAddr,
    tcp: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Natterd {
    fn start(ignore_xfsz: bool, log: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let natterd = env!("CARGO_BIN_EXE_natterd");
        let mut cmd = if ignore_xfsz {
            let mut cmd = Command::new("bash");
            cmd.arg("-c").arg("trap '' XFSZ; exec \"$0\" \"$@\"").arg(natterd);
            cmd
        } else {
            Command::new(natterd)
        };
        cmd.arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--cores", "2", "--http-port", "0", "--tcp-port", "0"])
            .args(["--tls-port", "0", "--ws-port", "0", "--quic-port", "0"])
            .args(["--argon2-memory-kib", "8", "--argon2-iterations", "1"])
            .args(["--auth-rate-limit", "100000"])
            .env("NATTER_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(OpenOptions::new().write(true).open("/dev/full").unwrap());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(json) = line.strip_prefix("NATTERD_READY ") {
                    let _ = tx.send(json.to_owned());
                }
            }
        });
        let json = match rx.recv_timeout(START_DEADLINE) {
            Ok(json) => json,
            Err(_) => {
                let status = child.try_wait().unwrap();
                let _ = child.kill();
                panic!("natterd with stderr on /dev/full did not become ready (exit: {status:?})");
            }
        };
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        Natterd {
            child,
            http: v["http"].as_str().unwrap().parse().unwrap(),
            tcp: v["tcp"].as_str().unwrap().parse().unwrap(),
            _dir: dir,
        }
    }

    fn http(&self) -> HttpClient {
        HttpClient::new(&format!("http://{}", self.http))
    }

    /// Waits up to `deadline` for the process to exit.
    fn exit_within(&mut self, deadline: Duration) -> Option<ExitStatus> {
        support::wait_until(deadline, || self.child.try_wait().unwrap().is_some());
        let status = self.child.try_wait().unwrap();
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }
}

impl Drop for Natterd {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `chars` pseudo-random 4-byte characters: fjall compresses large values,
/// so a repeated character would hardly grow the journal.
fn incompressible(chars: usize, mut seed: u64) -> String {
    (0..chars)
        .map(|_| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from_u32(0x1_0000 + ((seed >> 33) % 0xF000) as u32).unwrap()
        })
        .collect()
}

/// Signs `name` up, logs in and opens an authenticated connection.
fn session(natterd: &Natterd, name: &str) -> (Connection, u64) {
    let http = natterd.http();
    http.signup(name, "correct horse battery").unwrap();
    let login = http.login(name, "correct horse battery", "dev").unwrap();
    let conn = Connection::connect(natterd.tcp, &login.token, "dev").unwrap().0;
    // A chat of one's own: a group with no other member.
    let chat = http.create_group(&login.token, "notes", &[]).unwrap();
    (conn, chat)
}

fn send(conn: &mut Connection, chat: u64, cmid: u64, text: String) -> Option<u64> {
    let frame = conn
        .request(Body::Send(Send {
            chat_id: chat,
            client_msg_id: cmid,
            text,
        }))
        .ok()?;
    match frame {
        Frame {
            body: Body::SendOk(ok),
            ..
        } => Some(ok.seq),
        other => panic!("expected SendOk, got {other:?}"),
    }
}

#[test]
fn with_stderr_unwritable_natterd_serves_and_acknowledges_and_stops_cleanly() {
    // Log a lot, so every path writes to the unwritable stderr.
    let mut natterd = Natterd::start(false, "debug");
    let (mut conn, chat) = session(&natterd, "writer");
    for cmid in 1..=3 {
        assert_eq!(send(&mut conn, chat, cmid, format!("message {cmid}")), Some(cmid));
    }
    conn.ping().unwrap();
    let pid = natterd.child.id();
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let status = natterd.exit_within(Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{status:?}");
}

#[test]
fn a_failed_journal_write_exits_70_at_once_even_with_stderr_unwritable() {
    // Errors only: the first line natterd tries to log is the failure itself,
    // as with a stderr that filled up while natterd ran.
    let mut natterd = Natterd::start(true, "error");
    let (mut conn, chat) = session(&natterd, "filler");
    assert_eq!(send(&mut conn, chat, 1, "small and acknowledged".into()), Some(1));
    let pid = natterd.child.id() as i32;
    let (mut soft, mut hard) = (0, 0);
    rlimit::prlimit(pid, rlimit::Resource::FSIZE, None, Some((&mut soft, &mut hard))).unwrap();
    rlimit::prlimit(pid, rlimit::Resource::FSIZE, Some((FILE_SIZE_LIMIT, hard)), None).unwrap();
    // ~400 KB each: within a few, the journal passes the file-size limit.
    let mut acked = 1;
    let mut refused_at = None;
    for cmid in 2..40 {
        match send(&mut conn, chat, cmid, incompressible(100_000, cmid)) {
            Some(seq) => {
                assert_eq!(seq, cmid);
                acked = cmid;
            }
            None => {
                refused_at = Some(cmid);
                break;
            }
        }
    }
    let refused_at = refused_at.expect("no write failed: raise the message count or lower the limit");
    assert_eq!(
        refused_at,
        acked + 1,
        "a send after a failed one was acknowledged"
    );
    let status = natterd.exit_within(EXIT_DEADLINE);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(natter_server::store::POISON_EXIT_CODE),
        "natterd did not fail-stop with code 70: {status:?}"
    );
}
