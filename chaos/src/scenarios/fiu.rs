//! `fiu`: I/O errors injected with libfiu (`fiu-run -x`, armed at a chosen
//! instant with `fiu-ctrl`) into `fdatasync`, `fsync` and `write` of a loaded
//! natterd. For each failure point: natterd must stop by itself within a
//! second with exit code 70 (the poison rule), acknowledge nothing whose
//! commit could only have happened after the fault was armed, and — restarted
//! without the fault — hold every message it ever acknowledged (I1, and the
//! rest of the history checks, after a drain).
//!
//! `fsync` is not on the message path (journal commits use `fdatasync`); when
//! the load does not reach it, the scenario stops natterd with SIGTERM, whose
//! final `SyncAll` of the store does, and expects the same fail-stop.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use natter_client::HttpClient;

use super::{Error, Outcome, World, ms};
use crate::load::PING_EVERY;
use crate::spawn::{Natterd, Options};

/// natterd's exit code when its store is poisoned.
const POISON_EXIT_CODE: i32 = 70;
/// How long natterd may take to stop after the fault is armed (the bound).
const FAIL_STOP_WITHIN: Duration = Duration::from_secs(1);
/// How long the scenario waits for an exit before it tries SIGTERM.
const EXIT_WAIT: Duration = Duration::from_secs(3);

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Seed of every random choice.
    pub seed: u64,
    /// The long version (longer load before each fault).
    pub full: bool,
}

/// The libfiu failure points tried, in order.
const POINTS: [&str; 3] = [
    "posix/io/sync/fdatasync",
    "posix/io/sync/fsync",
    "posix/io/rw/write",
];

/// Runs the scenario.
///
/// # Errors
/// fiu-run is missing, or natterd could not be started.
pub fn run(p: &Params) -> Result<Outcome, Error> {
    let mut out = Outcome::new("fiu");
    if Command::new("fiu-run").arg("-h").output().is_err() {
        return Err("fiu-run is not installed (scripts/chaos-setup.sh installs fiu-utils)".into());
    }
    let mut total = crate::history::Verdict::default();
    for (i, point) in POINTS.iter().enumerate() {
        let short = point.rsplit('/').next().unwrap_or(point);
        let mut natterd = Natterd::start(Options {
            wrapper: vec!["fiu-run".into(), "-x".into()],
            ..Options::default()
        })?;
        let http = HttpClient::new(&natterd.http_url());
        let world = World::build(&http, &format!("fiu{i}_"), 2)?;
        let addr = natterd.tcp;
        let senders = world.start_senders(addr, 300.0, 32, p.seed + i as u64);
        let devices = world.start_devices(addr, addr, None, PING_EVERY, p.seed + i as u64);
        thread::sleep(Duration::from_secs(if p.full { 20 } else { 3 }));
        let pid = natterd.pid().ok_or("natterd is not running")?;
        let acked_before = world.ctl.acks.load(Ordering::Relaxed);
        let armed = Instant::now();
        // fiu-ctrl returns once natterd's libfiu has enabled the point: every
        // message first sent after this can only be in a failing commit.
        let ctrl = Command::new("timeout")
            .args([
                "5",
                "fiu-ctrl",
                "-c",
                &format!("enable name={point}"),
                &pid.to_string(),
            ])
            .status();
        world.ctl.arm_fault();
        let armed_ok = ctrl.as_ref().is_ok_and(|s| s.success());
        out.expect(armed_ok, || format!("fiu-ctrl could not arm {point}: {ctrl:?}"));
        let mut how = "under load";
        let mut status = natterd.wait_exit(EXIT_WAIT);
        let mut stopped_after = armed.elapsed();
        let under_load = status.is_some();
        if status.is_none() {
            // Not reached under load: a clean stop syncs the whole store. The
            // commits before it succeeded (their acks are right): only the stop fails.
            world.ctl.disarm_fault();
            how = "at SIGTERM (not reached under load)";
            let term = Instant::now();
            natterd.signal(rustix::process::Signal::TERM);
            status = natterd.wait_exit(EXIT_WAIT);
            stopped_after = term.elapsed();
        }
        world.ctl.disarm_fault();
        let acked_after_arm = world.ctl.acks.load(Ordering::Relaxed) - acked_before;
        let code = status.and_then(|s| s.code());
        out.expect(code == Some(POISON_EXIT_CODE), || {
            format!(
                "{point}: natterd ended with {status:?}, not exit code {POISON_EXIT_CODE}\n{}",
                natterd.log_tail(8)
            )
        });
        out.expect(stopped_after <= FAIL_STOP_WITHIN, || {
            format!("{point}: natterd took {stopped_after:?} to fail-stop (bound {FAIL_STOP_WITHIN:?})")
        });
        // With write() failing natterd cannot log at all (stderr is written
        // with write(2)); the exit code is its only report, as with a full stderr.
        let log = natterd.log();
        let logged = log.contains("durable write failed") || log.contains("store failed at shutdown");
        out.expect(logged || *point == "posix/io/rw/write", || {
            format!(
                "{point}: natterd's log does not say the store write failed:\n{}",
                natterd.log_tail(8)
            )
        });
        if status.is_none() {
            natterd.kill9();
        }
        // Restart without the fault; drain; read back.
        natterd.set_launch(Vec::new(), Vec::new());
        natterd.restart()?;
        let unacked = world.finish(senders, devices, addr, Duration::from_secs(60))?;
        let v = world.rec.check();
        let bad_acks = world.ctl.acks_after_fault.load(Ordering::Relaxed);
        out.expect(bad_acks == 0 || !under_load, || {
            format!("{point}: {bad_acks} messages first sent after the fault was armed were acknowledged")
        });
        out.expect(unacked == 0, || {
            format!("{point}: {unacked} sends never acknowledged after the restart")
        });
        let stop = natterd.stop();
        out.expect(stop.is_some_and(|s| s.success()), || {
            format!("{point}: no clean stop: {stop:?}")
        });
        out.figure(
            &format!("{short}_failstop"),
            format!(
                "exit {code:?} {how} {} after {}; {acked_after_arm} acks after arming, {bad_acks} for messages sent after it{}; after restart {}",
                ms(stopped_after),
                if under_load { "arming" } else { "SIGTERM" },
                if under_load { "" } else { " (not checked: the load's commits do not call it)" },
                v
            ),
        );
        merge(&mut total, v);
    }
    let scenario_checks = std::mem::take(&mut out.verdict);
    merge(&mut total, scenario_checks);
    out.verdict = total;
    Ok(out)
}

/// Adds `v`'s counts and failures to `into`.
fn merge(into: &mut crate::history::Verdict, v: crate::history::Verdict) {
    into.passed += v.passed;
    into.failed += v.failed;
    for (k, n) in v.failed_by {
        *into.failed_by.entry(k).or_default() += n;
    }
    into.failures.extend(v.failures);
    into.acked += v.acked;
    into.verified += v.verified;
    into.lost += v.lost;
    into.duplicated += v.duplicated;
    into.reordered += v.reordered;
    into.stored += v.stored;
    into.delivered += v.delivered;
}
