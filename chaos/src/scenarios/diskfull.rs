//! `diskfull`: natterd's data directory on a small tmpfs (mounting needs root;
//! without it the scenario cannot run and says so). A ballast file leaves a
//! little room above natterd's `--disk-reserve`; senders then fill it with
//! large messages until natterd refuses them with `storage_full`. While it
//! refuses: natterd stays up; signup gets 507 `storage_full`; login, `History`,
//! `Sync` and presence work; a `kill -9` and restart on the full disk comes
//! back up (no crash loop) and still refuses. Then the ballast is deleted and
//! sends must succeed again without a restart, within a second or two; the
//! senders drain (every refused send retried under its `client_msg_id`) and
//! the history checker verifies everything acknowledged.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use natter_client::{Connection, HttpClient};
use natter_wire::{Body, Cursor, ErrorCode, Frame, Send, Sync};

use super::{Error, Outcome, World, ms, wait_serving};
use crate::load::{self, PASSWORD, PING_EVERY};
use crate::spawn::{Natterd, Options};

/// The tmpfs size.
const TMPFS_MIB: u64 = 96;
/// natterd's reserve on it.
const RESERVE_MIB: u64 = 16;
/// Room the ballast leaves above the reserve for messages to fill.
const ROOM_MIB: u64 = 12;
/// How long the senders may take to fill the room.
const FILL_TIMEOUT: Duration = Duration::from_secs(60);
/// How soon sends must succeed after space is freed (the writer re-checks every 100 ms).
const RECOVER_WITHIN: Duration = Duration::from_secs(2);

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Seed of every random choice.
    pub seed: u64,
    /// The long version (the same; the fill takes what it takes).
    pub full: bool,
}

/// A tmpfs mounted for the run; unmounted on drop.
struct Mount {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Mount {
    fn new() -> Result<Mount, Error> {
        let tmp = tempfile::Builder::new().prefix("natter-chaos-disk-").tempdir()?;
        let dir = tmp.path().join("mnt");
        fs::create_dir(&dir)?;
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={TMPFS_MIB}m"),
                "natter-chaos",
                dir.to_str().unwrap_or_default(),
            ])
            .status()?;
        if !status.success() {
            return Err("cannot mount a tmpfs (needs root): the disk-full scenario cannot run here".into());
        }
        Ok(Mount { dir, _tmp: tmp })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    rustix::fs::statvfs(dir).map_or(0, |s| s.f_bavail * s.f_frsize)
}

/// Writes a file of `bytes` (tmpfs allocates written pages only).
fn ballast(path: &Path, bytes: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = fs::File::create(path)?;
    let chunk = vec![0x5Au8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(chunk.get(..n).unwrap_or_default())?;
        left -= n as u64;
    }
    f.sync_all()
}

/// One send on `conn`; `Ok(seq)` or the refusal's code.
fn try_send(conn: &mut Connection, chat: u64, cmid: u64, text: &str) -> Result<u64, Option<ErrorCode>> {
    match conn.request(Body::Send(Send {
        chat_id: chat,
        client_msg_id: cmid,
        text: text.into(),
    })) {
        Ok(Frame {
            body: Body::SendOk(ok),
            ..
        }) => Ok(ok.seq),
        Err(e) => Err(e.server_code().and_then(|c| c.known())),
        Ok(_) => Err(None),
    }
}

/// Runs the scenario.
///
/// # Errors
/// No tmpfs could be mounted, or natterd could not be started.
pub fn run(p: &Params) -> Result<Outcome, Error> {
    let mut out = Outcome::new("diskfull");
    let mount = Mount::new()?;
    let data = mount.dir.join("data");
    let mut natterd = Natterd::start(Options {
        data_dir: Some(data.clone()),
        extra: vec!["--disk-reserve".into(), format!("{RESERVE_MIB}MiB")],
        ..Options::default()
    })?;
    let http = HttpClient::new(&natterd.http_url());
    let world = World::build(&http, "disk_", 2)?;
    let ballast_path = mount.dir.join("ballast");
    let free = free_bytes(&mount.dir);
    let fill = free.saturating_sub((RESERVE_MIB + ROOM_MIB) << 20);
    ballast(&ballast_path, fill)?;
    out.figure("tmpfs_mib", TMPFS_MIB);
    out.figure("reserve_mib", RESERVE_MIB);
    out.figure(
        "free_mib_before_fill",
        format!("{:.1}", free_bytes(&mount.dir) as f64 / 1048576.0),
    );

    // Fill the room with messages until natterd refuses.
    let addr = natterd.tcp;
    let senders = world.start_senders(addr, 400.0, 16_000, p.seed);
    let devices = world.start_devices(addr, addr, None, PING_EVERY, p.seed);
    let started = Instant::now();
    let full_at = loop {
        let refused = world
            .ctl
            .errors
            .lock()
            .map(|e| e.get("storage_full").copied().unwrap_or(0))
            .unwrap_or(0);
        if refused > 0 {
            break Some(started.elapsed());
        }
        if started.elapsed() > FILL_TIMEOUT || natterd.exited().is_some() {
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    out.expect(full_at.is_some(), || {
        format!(
            "natterd never refused with storage_full within {FILL_TIMEOUT:?}\n{}",
            natterd.log_tail(8)
        )
    });
    out.figure("time_to_storage_full", full_at.map_or_else(|| "never".into(), ms));
    out.figure("acked_before_full", world.rec.acked_count());
    out.figure(
        "free_mib_when_full",
        format!("{:.1}", free_bytes(&mount.dir) as f64 / 1048576.0),
    );
    let alive = natterd.exited().is_none();
    out.expect(alive, || {
        format!("natterd exited while the disk filled\n{}", natterd.log_tail(8))
    });

    // Below the reserve: what must keep working, and what must be refused.
    let s0 = world.senders.first().ok_or("no senders")?.clone();
    let r0 = world.recipients.first().ok_or("no recipients")?.clone();
    let dm0 = *world.dms.first().ok_or("no dms")?;
    let signup = http.signup("disk_latecomer", PASSWORD);
    out.expect(
        signup.as_ref().err().and_then(|e| e.http_status()) == Some(507)
            && signup.as_ref().err().and_then(|e| e.http_code()) == Some("storage_full"),
        || format!("signup below the reserve: {signup:?} (expected 507 storage_full)"),
    );
    let login = http.login(&r0.name, PASSWORD, "tablet");
    out.expect(login.is_ok(), || {
        format!("login below the reserve failed: {login:?}")
    });
    let hist = load::history(addr, &r0, dm0);
    out.expect(hist.as_ref().is_ok_and(|h| !h.is_empty()), || {
        format!(
            "History below the reserve failed: {:?}",
            hist.as_ref().map(Vec::len)
        )
    });
    let synced = login
        .as_ref()
        .ok()
        .map(|l| sync_count(addr, &l.token, dm0))
        .unwrap_or(Err("no login".into()));
    out.expect(synced.as_ref().is_ok_and(|n| *n > 0), || {
        format!("Sync below the reserve failed: {synced:?}")
    });
    let presence = http.presence(&s0.token, r0.user);
    out.expect(presence.as_ref().is_ok_and(|p| p.online), || {
        format!("presence below the reserve: {presence:?} (r0's device is connected)")
    });
    let (mut probe, _) = Connection::connect(addr, &s0.token, "probe")?;
    world.rec.sent(s0.user, dm0, 0xF0_0001, "while full");
    let refused = try_send(&mut probe, dm0, 0xF0_0001, "while full");
    if let Ok(seq) = refused {
        world.rec.acked(s0.user, dm0, 0xF0_0001, seq);
    }
    out.expect(refused == Err(Some(ErrorCode::StorageFull)), || {
        format!("a send below the reserve answered {refused:?}, not storage_full")
    });
    drop(probe);

    // No crash loop: a crash and restart on the full disk comes back and still refuses.
    natterd.kill9();
    let restart = natterd.restart();
    out.expect(restart.is_ok(), || {
        format!("natterd did not restart on the full disk: {restart:?}")
    });
    if let Ok(ready) = &restart {
        out.figure("restart_on_full_disk", ms(*ready));
    }
    let serving = wait_serving(addr, &s0, Duration::from_secs(30));
    out.expect(serving.is_some(), || {
        "natterd did not serve after the restart on the full disk".into()
    });
    // Recovery may free journal space and lift the disk back over the reserve (a send is then
    // rightly taken): top the ballast up so the disk is below the reserve again, and give the
    // writer's 100 ms re-check a deadline to see it.
    let top_up_path = mount.dir.join("ballast-after-restart");
    let free = free_bytes(&mount.dir);
    if free >= RESERVE_MIB << 20 {
        ballast(&top_up_path, free - (RESERVE_MIB << 20) + (1 << 20))?;
    }
    let (mut probe, _) = Connection::connect(addr, &s0.token, "probe")?;
    let deadline = Instant::now() + Duration::from_secs(2);
    // Each probe send gets its own client_msg_id and is recorded: one taken before the writer's
    // re-check sees the top-up is a message like any other and must be in the history.
    let mut cmid = 0xF0_0001;
    let refused = loop {
        world.rec.sent(s0.user, dm0, cmid, "while full");
        let answer = try_send(&mut probe, dm0, cmid, "while full");
        if let Ok(seq) = answer {
            world.rec.acked(s0.user, dm0, cmid, seq);
        }
        if answer == Err(Some(ErrorCode::StorageFull)) || Instant::now() > deadline {
            break answer;
        }
        cmid += 1;
        thread::sleep(Duration::from_millis(20));
    };
    out.expect(refused == Err(Some(ErrorCode::StorageFull)), || {
        format!("after the restart a send below the reserve answered {refused:?}")
    });

    // Free the space: sends succeed again, without a restart.
    fs::remove_file(&ballast_path)?;
    if top_up_path.exists() {
        fs::remove_file(&top_up_path)?;
    }
    // A client_msg_id never used before: a retry of an earlier one would be answered from the
    // dedupe record without a write and prove nothing about recovery.
    let fresh = cmid + 1;
    world.rec.sent(s0.user, dm0, fresh, "after freeing");
    let freed = Instant::now();
    let recovered = loop {
        match try_send(&mut probe, dm0, fresh, "after freeing") {
            Ok(seq) => {
                world.rec.acked(s0.user, dm0, fresh, seq);
                break Some(freed.elapsed());
            }
            Err(_) if freed.elapsed() < Duration::from_secs(10) => thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    out.expect(recovered.is_some_and(|d| d <= RECOVER_WITHIN), || {
        format!("sends did not resume within {RECOVER_WITHIN:?} of freeing space: {recovered:?}")
    });
    out.figure(
        "send_ok_after_freeing",
        recovered.map_or_else(|| "never".into(), ms),
    );
    // Signup sees the same reserve flag, lifted by the same re-check: it must work again
    // within the same bound, counted from the freeing.
    let signup = loop {
        let answer = http.signup("disk_latecomer", PASSWORD);
        if answer.is_ok() || freed.elapsed() > RECOVER_WITHIN {
            break answer;
        }
        thread::sleep(Duration::from_millis(20));
    };
    out.expect(signup.is_ok(), || {
        format!("signup did not work again within {RECOVER_WITHIN:?} of freeing space: {signup:?}")
    });
    drop(probe);

    let unacked = world.finish(senders, devices, addr, Duration::from_secs(60))?;
    out.expect(unacked == 0, || {
        format!("{unacked} sends never acknowledged after space was freed")
    });
    let retries = world.ctl.retries.load(Ordering::Relaxed);
    let errors = world.ctl.errors_summary();
    let stop = natterd.stop();
    out.expect(stop.is_some_and(|s| s.success()), || {
        format!("natterd did not stop cleanly: {stop:?}")
    });
    let scenario = std::mem::take(&mut out.verdict);
    out.verdict = world.rec.check();
    out.verdict.passed += scenario.passed;
    out.verdict.failed += scenario.failed;
    out.verdict.failures.extend(scenario.failures);
    out.figure("retries_after_refusal", retries);
    out.figure("errors", errors);
    drop(natterd);
    drop(mount);
    Ok(out)
}

/// Syncs `chat` from the start on a fresh connection; returns the messages received.
fn sync_count(addr: std::net::SocketAddr, token: &str, chat: u64) -> Result<usize, String> {
    let (mut conn, _) = Connection::connect(addr, token, "tablet").map_err(|e| e.to_string())?;
    let rid = conn
        .send_body(Body::Sync(Sync {
            cursors: vec![Cursor {
                chat_id: chat,
                seq: 0,
            }],
        }))
        .map_err(|e| e.to_string())?;
    let mut n = 0;
    loop {
        let f = conn.recv().map_err(|e| e.to_string())?;
        match f.body {
            Body::Message(_) => n += 1,
            Body::SyncDone(_) if f.request_id == rid => return Ok(n),
            Body::Error(e) => return Err(e.message),
            _ => {}
        }
    }
}
