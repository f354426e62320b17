//! `kill9`: natterd is killed with SIGKILL at seeded random instants (20 per
//! run) while senders load 1:1 chats and a group and retry every
//! unacknowledged send with the same `client_msg_id`, and devices stay
//! connected (reconnecting and syncing after each restart). After the last
//! restart everything is drained, killed once more, restarted and read back;
//! the history checker then checks I1, I2, I3 and I5. Restart-to-serving time
//! (exec → an authenticated `Ping` answered) is measured for every restart.

use std::thread;
use std::time::{Duration, Instant};

use natter_client::HttpClient;

use super::{Error, Outcome, World, ms, quantile, wait_serving};
use crate::load::PING_EVERY;
use crate::rng::Rng;
use crate::spawn::{Natterd, Options};

/// Bytes of fjall journal files (`*.jnl`) under `dir`: what a restart replays.
fn journal_bytes(dir: &std::path::Path) -> u64 {
    fn walk(dir: &std::path::Path, total: &mut u64) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, total);
            } else if path.extension().is_some_and(|x| x == "jnl") {
                *total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    let mut total = 0;
    walk(dir, &mut total);
    total
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Seed of every random choice.
    pub seed: u64,
    /// How long the load runs (the kills fall in its middle 90 %).
    pub duration: Duration,
    /// Kills per run.
    pub kills: usize,
    /// New messages per second, all senders together.
    pub rate: f64,
    /// Sender/recipient pairs (each pair has a DM; everyone is in one group).
    pub pairs: usize,
}

/// Runs the scenario.
///
/// # Errors
/// natterd could not be started or restarted, or setup failed.
pub fn run(p: &Params) -> Result<Outcome, Error> {
    let mut out = Outcome::new("kill9");
    let mut natterd = Natterd::start(Options::default())?;
    let http = HttpClient::new(&natterd.http_url());
    let world = World::build(&http, "k9_", p.pairs)?;
    let addr = natterd.tcp;
    let senders = world.start_senders(addr, p.rate, 24, p.seed);
    let devices = world.start_devices(addr, addr, None, PING_EVERY, p.seed);

    let mut rng = Rng::new(p.seed);
    let span = p.duration.as_millis() as u64;
    let mut instants: Vec<u64> = (0..p.kills)
        .map(|_| rng.range(span / 20, span - span / 20))
        .collect();
    instants.sort_unstable();
    let started = Instant::now();
    let mut ready_times = Vec::new();
    let mut serving_times = Vec::new();
    let mut acked_before_kill = Vec::new();
    let mut journal_mib = Vec::new();
    let probe_user = world.senders.first().ok_or("no senders")?.clone();
    for at in instants {
        let at = Duration::from_millis(at);
        if let Some(wait) = at.checked_sub(started.elapsed()) {
            thread::sleep(wait);
        }
        acked_before_kill.push(world.rec.acked_count());
        let status = natterd.kill9();
        journal_mib.push(journal_bytes(natterd.data_dir()) as f64 / 1048576.0);
        out.expect(status.is_some_and(|s| s.code().is_none()), || {
            format!(
                "natterd had exited before the kill: {status:?}\n{}",
                natterd.log_tail(10)
            )
        });
        let exec = Instant::now();
        let ready = natterd.restart()?;
        ready_times.push(ready);
        match wait_serving(addr, &probe_user, Duration::from_secs(30)) {
            Some(_) => serving_times.push(exec.elapsed()),
            None => out.expect(false, || "natterd did not serve within 30 s of a restart".into()),
        }
    }
    let remaining = p.duration.saturating_sub(started.elapsed());
    thread::sleep(remaining);
    // Drain on the running natterd, then one more crash and recovery before the read-back.
    world.ctl.set_phase(crate::load::PHASE_DRAIN);
    let drain_end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < drain_end && !senders.iter().all(|h| h.is_finished()) {
        thread::sleep(Duration::from_millis(20));
    }
    natterd.kill9();
    let exec = Instant::now();
    natterd.restart()?;
    if wait_serving(addr, &probe_user, Duration::from_secs(30)).is_some() {
        serving_times.push(exec.elapsed());
    }
    let unacked = world.finish(senders, devices, addr, Duration::from_secs(30))?;
    out.verdict = world.rec.check();
    out.expect(unacked == 0, || {
        format!("{unacked} sends were never acknowledged")
    });
    let stop = natterd.stop();
    out.expect(stop.is_some_and(|s| s.success()), || {
        format!("natterd did not stop cleanly: {stop:?}")
    });

    let mut r = ready_times.clone();
    let mut s = serving_times.clone();
    out.figure("kills", p.kills);
    out.figure("duration_s", p.duration.as_secs());
    out.figure("rate_per_s", p.rate);
    out.figure("restart_to_ready_p50", ms(quantile(&mut r, 0.5)));
    out.figure("restart_to_ready_max", ms(quantile(&mut r, 1.0)));
    out.figure("restart_to_serving_p50", ms(quantile(&mut s, 0.5)));
    out.figure("restart_to_serving_max", ms(quantile(&mut s, 1.0)));
    let per_kill: Vec<String> = ready_times
        .iter()
        .zip(&journal_mib)
        .map(|(t, mib)| format!("{:.0}ms@{mib:.0}MiB", t.as_secs_f64() * 1000.0))
        .collect();
    out.figure("restart_to_ready_by_journal_size", per_kill.join(" "));
    out.figure(
        "send_attempts",
        world.ctl.attempts.load(std::sync::atomic::Ordering::Relaxed),
    );
    out.figure(
        "retries_after_error",
        world.ctl.retries.load(std::sync::atomic::Ordering::Relaxed),
    );
    out.figure(
        "reconnects",
        world.ctl.reconnects.load(std::sync::atomic::Ordering::Relaxed),
    );
    out.figure("unacked_at_end", unacked);
    out.figure("errors", world.ctl.errors_summary());
    Ok(out)
}
