//! `flap`: clients behind the TCP fault proxy. Senders go through one proxy
//! that delays and jitters their bytes and, now and then, swallows a `SendOk`
//! and cuts the connection right after it (the sender never sees the ack and
//! must retry: I2). Recipient devices go through another that delays and
//! jitters, cuts connections after a random number of bytes and blackholes
//! some, and they reconnect on their own every few seconds as well (a
//! flapping phone). At the end every device syncs directly and every chat is
//! read back: every message exactly once and in order (I1, I2, I3, I5).

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use natter_client::HttpClient;

use super::{Error, Outcome, World};
use crate::proxy::{Faults, Proxy};
use crate::spawn::{Natterd, Options};

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Params {
    /// Seed of every random choice.
    pub seed: u64,
    /// How long the load runs.
    pub duration: Duration,
    /// New messages per second, all senders together.
    pub rate: f64,
    /// Sender/recipient pairs.
    pub pairs: usize,
}

/// Runs the scenario.
///
/// # Errors
/// natterd or a proxy could not be started, or setup failed.
pub fn run(p: &Params) -> Result<Outcome, Error> {
    let mut out = Outcome::new("flap");
    let mut natterd = Natterd::start(Options::default())?;
    let http = HttpClient::new(&natterd.http_url());
    let world = World::build(&http, "flap_", p.pairs)?;
    let sender_faults = Faults {
        delay: Duration::from_millis(1),
        jitter: Duration::from_millis(3),
        cut_after_send_ok: 0.02,
        ..Faults::default()
    };
    let device_faults = Faults {
        delay: Duration::from_millis(2),
        jitter: Duration::from_millis(8),
        cut_after_bytes: Some((2_000, 200_000)),
        blackhole: Some((0.15, Duration::from_millis(200), Duration::from_millis(2_000))),
        ..Faults::default()
    };
    let send_proxy = Proxy::start(natterd.tcp, sender_faults, p.seed)?;
    let device_proxy = Proxy::start(natterd.tcp, device_faults, p.seed.rotate_left(17))?;
    let senders = world.start_senders(send_proxy.addr, p.rate, 40, p.seed);
    let devices = world.start_devices(
        device_proxy.addr,
        natterd.tcp,
        Some((Duration::from_millis(1_000), Duration::from_millis(5_000))),
        Duration::from_millis(500),
        p.seed,
    );
    thread::sleep(p.duration);
    let unacked = world.finish(senders, devices, natterd.tcp, Duration::from_secs(60))?;
    out.verdict = world.rec.check();
    out.expect(unacked == 0, || {
        format!("{unacked} sends were never acknowledged")
    });
    out.expect(send_proxy.stats.cut_send_ok.load(Ordering::Relaxed) > 0, || {
        "the proxy never cut a connection after a SendOk (the I2 retry path was not exercised)".into()
    });
    let status = natterd.stop();
    out.expect(status.is_some_and(|s| s.success()), || {
        format!("natterd did not stop cleanly: {status:?}")
    });
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    out.figure("duration_s", p.duration.as_secs());
    out.figure("rate_per_s", p.rate);
    out.figure("send_ok_swallowed_and_cut", load(&send_proxy.stats.cut_send_ok));
    out.figure("sender_connections", load(&send_proxy.stats.connections));
    out.figure("device_connections", load(&device_proxy.stats.connections));
    out.figure("device_cuts_after_bytes", load(&device_proxy.stats.cut_bytes));
    out.figure("device_blackholes", load(&device_proxy.stats.blackholed));
    out.figure("send_attempts", load(&world.ctl.attempts));
    out.figure("reconnects", load(&world.ctl.reconnects));
    out.figure("unacked_at_end", unacked);
    out.figure("errors", world.ctl.errors_summary());
    Ok(out)
}
