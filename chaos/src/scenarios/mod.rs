//! The fault scenarios and what they share: the [`World`] of accounts and
//! chats a scenario loads natterd with, its client threads, the drain and the
//! final read-back, and the [`Outcome`] each scenario prints.

pub mod diskfull;
pub mod fiu;
pub mod flap;
pub mod kill9;
pub mod memcap;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use natter_client::HttpClient;

use crate::history::{Recorder, Verdict};
use crate::load::{
    self, Account, Control, DevicePlan, PHASE_DRAIN, PHASE_STOP, SenderPlan, account, befriend, retry,
};

/// A scenario's error: setup or infrastructure failed (not a checked invariant).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How long the side-port may take to answer setup calls (natterd restarting).
const SETUP_RETRY: Duration = Duration::from_secs(30);

/// What a scenario found: its verdict and figures, printed by [`Outcome::print`].
#[derive(Debug, Default)]
pub struct Outcome {
    /// The scenario's name.
    pub name: String,
    /// The history checker's verdict plus the scenario's own checks.
    pub verdict: Verdict,
    /// Figures, in print order.
    pub figures: Vec<(String, String)>,
}

impl Outcome {
    /// A new outcome for `name`.
    pub fn new(name: &str) -> Self {
        Outcome {
            name: name.into(),
            ..Outcome::default()
        }
    }

    /// Adds a figure.
    pub fn figure(&mut self, key: &str, value: impl ToString) {
        self.figures.push((key.into(), value.to_string()));
    }

    /// A scenario check beside the history checker's (counted in the same line).
    pub fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            self.verdict.passed += 1;
        } else {
            self.verdict.failed += 1;
            *self.verdict.failed_by.entry("scenario").or_default() += 1;
            self.verdict.failures.push(format!("scenario: {}", what()));
        }
    }

    /// Prints the `N passed, N failed` line, the figures and the first failures.
    pub fn print(&self) {
        println!("[{}] {}", self.name, self.verdict);
        let v = &self.verdict;
        println!(
            "[{}]   acked={} verified={} lost={} duplicated={} reordered={} stored={} delivered={}",
            self.name, v.acked, v.verified, v.lost, v.duplicated, v.reordered, v.stored, v.delivered
        );
        for (k, val) in &self.figures {
            println!("[{}]   {k}={val}", self.name);
        }
        for f in &v.failures {
            println!("[{}]   FAILED {f}", self.name);
        }
    }
}

/// Accounts and chats: `pairs` senders each with a DM to its own recipient,
/// one group of all of them, and an outsider who is in no chat.
#[derive(Debug)]
pub struct World {
    /// Users that send.
    pub senders: Vec<Account>,
    /// Users that receive (one device each), paired with the senders.
    pub recipients: Vec<Account>,
    /// A user who is in no chat (probes I5).
    pub outsider: Account,
    /// The direct chats, one per pair.
    pub dms: Vec<u64>,
    /// The group of everyone.
    pub group: u64,
    /// The record the checker reads.
    pub rec: Recorder,
    /// The run's phase and counters.
    pub ctl: Arc<Control>,
}

impl World {
    /// Signs everyone up and creates the chats (names start with `prefix`).
    ///
    /// # Errors
    /// The side-port refused.
    pub fn build(http: &HttpClient, prefix: &str, pairs: usize) -> Result<World, Error> {
        let rec = Recorder::new();
        let mk = |name: String| retry(SETUP_RETRY, || account(http, &name));
        let mut senders = Vec::new();
        let mut recipients = Vec::new();
        let mut dms = Vec::new();
        for i in 0..pairs {
            let s = mk(format!("{prefix}s{i}"))?;
            let r = mk(format!("{prefix}r{i}"))?;
            befriend(http, &s, &r)?;
            let dm = http.direct_chat(&s.token, r.user)?;
            rec.member(dm, s.user);
            rec.member(dm, r.user);
            dms.push(dm);
            senders.push(s);
            recipients.push(r);
        }
        let owner = senders.first().ok_or("a world needs at least one pair")?;
        for other in senders.iter().skip(1).chain(&recipients) {
            befriend(http, owner, other)?;
        }
        let members: Vec<u64> = senders
            .iter()
            .skip(1)
            .chain(&recipients)
            .map(|a| a.user)
            .collect();
        let group = http.create_group(&owner.token, &format!("{prefix}group"), &members)?;
        rec.member(group, owner.user);
        for m in &members {
            rec.member(group, *m);
        }
        let outsider = mk(format!("{prefix}outsider"))?;
        Ok(World {
            senders,
            recipients,
            outsider,
            dms,
            group,
            rec,
            ctl: Control::new(),
        })
    }

    /// Every chat.
    pub fn chats(&self) -> Vec<u64> {
        let mut all = self.dms.clone();
        all.push(self.group);
        all
    }

    /// Starts one sender thread per sender: `rate` new messages per second in
    /// all, over its DM and the group.
    pub fn start_senders(
        &self,
        addr: SocketAddr,
        rate: f64,
        text_bytes: usize,
        seed: u64,
    ) -> Vec<JoinHandle<u64>> {
        let per = rate / self.senders.len().max(1) as f64;
        self.senders
            .iter()
            .zip(&self.dms)
            .enumerate()
            .map(|(i, (s, dm))| {
                let plan = SenderPlan {
                    account: s.clone(),
                    addr,
                    chats: vec![*dm, self.group],
                    rate: per,
                    max_in_flight: 256,
                    limit: None,
                    text_bytes,
                };
                let (rec, ctl) = (self.rec.clone(), self.ctl.clone());
                let seed = seed ^ (i as u64).wrapping_mul(0x9E37_79B9);
                thread::spawn(move || load::run_sender(plan, rec, ctl, seed))
            })
            .collect()
    }

    /// Starts one device thread per recipient (connecting to `addr`, making
    /// its final sync at `final_addr`).
    pub fn start_devices(
        &self,
        addr: SocketAddr,
        final_addr: SocketAddr,
        hold: Option<(Duration, Duration)>,
        ping_every: Duration,
        seed: u64,
    ) -> Vec<JoinHandle<u64>> {
        self.recipients
            .iter()
            .zip(&self.dms)
            .enumerate()
            .map(|(i, (r, dm))| {
                let plan = DevicePlan {
                    account: r.clone(),
                    name: format!("phone{i}"),
                    addr,
                    chats: vec![*dm, self.group],
                    hold,
                    ping_every,
                };
                let (rec, ctl) = (self.rec.clone(), self.ctl.clone());
                let seed = seed ^ (i as u64 + 101).wrapping_mul(0x9E37_79B9);
                thread::spawn(move || load::run_device(plan, final_addr, rec, ctl, seed))
            })
            .collect()
    }

    /// Ends a run: senders drain (every send acknowledged, retrying) within
    /// `drain`, then devices make their final sync at `addr`; then every chat
    /// is read back with `History` and the outsider probes the group. Returns
    /// the sends left unacknowledged.
    ///
    /// # Errors
    /// A read-back or probe failed.
    pub fn finish(
        &self,
        senders: Vec<JoinHandle<u64>>,
        devices: Vec<JoinHandle<u64>>,
        addr: SocketAddr,
        drain: Duration,
    ) -> Result<u64, Error> {
        self.ctl.set_phase(PHASE_DRAIN);
        let end = Instant::now() + drain;
        while Instant::now() < end && !senders.iter().all(JoinHandle::is_finished) {
            thread::sleep(Duration::from_millis(20));
        }
        self.ctl.set_phase(PHASE_STOP);
        let unacked: u64 = senders.into_iter().map(|h| h.join().unwrap_or(0)).sum();
        for d in devices {
            let _ = d.join();
        }
        self.read_back(addr)?;
        Ok(unacked)
    }

    /// Reads every chat back (as a member) and probes the group as the outsider.
    ///
    /// # Errors
    /// natterd did not answer.
    pub fn read_back(&self, addr: SocketAddr) -> Result<(), Error> {
        for (dm, r) in self.dms.iter().zip(&self.recipients) {
            load::read_back(addr, r, *dm, &self.rec)?;
        }
        let reader = self.recipients.first().ok_or("no recipients")?;
        load::read_back(addr, reader, self.group, &self.rec)?;
        load::probe_non_member(addr, &self.outsider, self.group, &self.rec)?;
        if let Some(dm) = self.dms.first() {
            load::probe_non_member(addr, &self.outsider, *dm, &self.rec)?;
        }
        Ok(())
    }
}

/// The `q`-quantile (0–1) of `values` (sorted in place); zero when empty.
pub fn quantile(values: &mut [Duration], q: f64) -> Duration {
    values.sort_unstable();
    if values.is_empty() {
        return Duration::ZERO;
    }
    let i = ((values.len() - 1) as f64 * q).round() as usize;
    values.get(i).copied().unwrap_or_default()
}

/// Milliseconds with one decimal, for figures.
pub fn ms(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// Waits until `natterd` serves an authenticated session again: a fresh
/// connection with `who`'s token answers a `Ping`. Returns how long that took.
pub fn wait_serving(addr: SocketAddr, who: &Account, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if let Ok((mut c, _)) = natter_client::Connection::connect(addr, &who.token, "probe")
            && c.ping().is_ok()
        {
            return Some(started.elapsed());
        }
        thread::sleep(Duration::from_millis(2));
    }
    None
}
