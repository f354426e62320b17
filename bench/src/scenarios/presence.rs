//! The `presence` scenario: many users with friend graphs connecting all at once,
//! idling with heartbeats, and leaving and coming back, while every friend's view of
//! every user is checked and timed.
//!
//! 1. Sign up (or reuse) and log in `--users` users `bench_p_{i}`, and make each the
//!    friend of the `--friends` users nearest to it on a ring (`i ± 1 … i ± F/2`), so
//!    every user has exactly F friends spread over every core.
//! 2. **Storm.** Connect every user at once (at most `--in-flight` handshakes in
//!    flight, from one mio thread, explicit loopback source addresses) to a natterd
//!    on which nobody is online — what a server restart looks like. Each device's view
//!    of its friends is built from the snapshot after `Welcome` and the pushes that
//!    follow. `storm_settle_s`: first connect → the moment every device sees every
//!    one of its friends online.
//! 3. **Churn** for `--duration`: `--rate` presence changes per second (default 100),
//!    half of them a user leaving (its socket closed), half the same user coming
//!    back after twice the grace period; everybody else idles with a `Ping` every half
//!    heartbeat interval. Each pushed `Presence` is matched to the change it reports:
//!    `presence_p50/p99/p999_us` time "came online" changes from the returning
//!    client's `Hello` leaving the bench to each friend's `Presence{online}`;
//!    `presence_offline_p99_us` times "went offline" from the close plus
//!    `--presence-grace` (so it includes the grace timer's resolution, grace / 64).
//!    `presence_pushes_per_sec`: pushes (snapshots not counted) received per second.
//! 4. **Check.** After the last return, wait until every device's view equals the
//!    truth (every friend online); views still wrong at the deadline count in `lost`.
//!
//! Every connection uses `--transport` (`transport.rs`'s `ClientStream`; QUIC
//! timers bound the loop's poll wait).
//!
//! With `--spawn`, natterd gets `--presence-grace` and `--heartbeat-timeout`; against
//! `--server`, pass the values that natterd runs with.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};
use natter_client::Login;
use natter_wire::{Body, Encoder, ErrorCode, Frame, FrameDecoder, Hello, Limits, PROTOCOL_VERSION, Ping};

use crate::accounts::{self, DEVICE};
use crate::error::BenchError;
use crate::interrupt;
use crate::progress;
use crate::report::Report;
use crate::scenarios::Options;
use crate::scenarios::messaging::setup::{befriend, in_parallel};
use crate::sockets::Sources;
use crate::target::Target;
use crate::transport::{ClientStream, Dial};

/// The flags of the `presence` scenario (it also takes `--users` and `--in-flight`).
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "presence options")]
pub(crate) struct PresenceArgs {
    /// Friends per user (even, fewer than --users), on a ring.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub(crate) friends: usize,
    /// natterd's --presence-grace: given to a spawned natterd; with --server, say what
    /// it runs with (offline latencies are measured from the close plus this).
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    pub(crate) presence_grace: Duration,
    /// natterd's --heartbeat-timeout, given to a spawned natterd.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub(crate) heartbeat_timeout: Duration,
    /// Longest wait for the storm to settle, and for the views to be right at the end.
    #[arg(long, default_value = "60s", value_parser = crate::parse_duration)]
    pub(crate) settle_timeout: Duration,
}

/// The user names of this scenario are `{USER_PREFIX}{i}`.
const USER_PREFIX: &str = "bench_p_";
/// Presence changes per second during the churn phase when `--rate` is not given.
const DEFAULT_RATE: u64 = 100;
/// Files the benchmark needs besides its connections.
const FD_MARGIN: u64 = 100;
/// New connections started per loop turn.
const CONNECTS_PER_TURN: usize = 256;
/// Pings sent per loop turn; the rest wait for the next turn.
const PINGS_PER_TURN: usize = 4096;
/// Readiness events handled per `poll` call.
const EVENTS_CAPACITY: usize = 4096;
/// Longest sleep in `poll`, so timers are checked at least this often.
const MAX_POLL_WAIT: Duration = Duration::from_millis(5);
/// A handshake that takes longer than this is given up and counted as an error.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest ping interval, whatever the server's heartbeat says.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// Latencies above this (µs) are recorded as this: one hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Failure reasons shown in the summary.
const REASONS_SHOWN: usize = 5;
/// How often the views are checked while waiting for them to settle: each check
/// reads every device's view of every friend.
const CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// Checks the flags before anything starts.
///
/// # Errors
/// [`BenchError::Usage`] for a friend count that does not fit the users, or more
/// users than this process may hold connections.
pub(crate) fn check_args(
    args: &PresenceArgs,
    users: usize,
    in_flight: usize,
    open_files: u64,
) -> Result<(), BenchError> {
    if args.friends == 0 || !args.friends.is_multiple_of(2) || args.friends >= users {
        return Err(BenchError::Usage(format!(
            "--friends must be even, at least 2 and below --users ({users}), not {}",
            args.friends
        )));
    }
    if in_flight == 0 {
        return Err(BenchError::Usage("--in-flight must be at least 1".into()));
    }
    let needed = (users as u64).saturating_add(FD_MARGIN);
    if needed > open_files {
        return Err(BenchError::Usage(format!(
            "--users {users} needs about {needed} open files, but this process may open at most \
             {open_files}; one natter-bench holds at most {} connections",
            open_files.saturating_sub(FD_MARGIN)
        )));
    }
    Ok(())
}

/// The flags a spawned natterd gets for this scenario.
pub(crate) fn natterd_flags(args: &PresenceArgs) -> Vec<String> {
    vec![
        "--presence-grace".into(),
        format!("{}ms", args.presence_grace.as_millis()),
        "--heartbeat-timeout".into(),
        format!("{}ms", args.heartbeat_timeout.as_millis()),
    ]
}

/// The friend graph: user `i`'s friends are `i ± 1 … i ± F/2` (mod N).
#[derive(Clone, Copy, Debug)]
struct Ring {
    users: usize,
    friends: usize,
}

impl Ring {
    /// Friend `k` (0 ≤ k < F) of user `i`.
    fn friend(self, i: usize, k: usize) -> usize {
        let half = self.friends / 2;
        if k < half {
            (i + k + 1) % self.users
        } else {
            (i + self.users - (k - half + 1)) % self.users
        }
    }

    /// Which friend of `i` user `j` is, if it is one.
    fn index_of(self, i: usize, j: usize) -> Option<usize> {
        let half = self.friends / 2;
        let delta = (j + self.users - i) % self.users;
        if (1..=half).contains(&delta) {
            Some(delta - 1)
        } else if delta >= self.users - half && delta < self.users {
            Some(half + (self.users - delta) - 1)
        } else {
            None
        }
    }

    /// Every friendship once: `(i, i + d)` for d in 1..=F/2.
    fn pairs(self) -> Vec<(usize, usize)> {
        let half = self.friends / 2;
        (0..self.users)
            .flat_map(|i| (1..=half).map(move |d| (i, (i + d) % self.users)))
            .collect()
    }
}

/// Runs the scenario against `target`.
///
/// # Errors
/// [`BenchError::Setup`] if the accounts or friendships cannot be prepared;
/// [`BenchError::Io`] if the event loop itself fails; [`BenchError::Interrupted`].
pub(crate) fn run(
    target: &Target,
    options: &Options,
    args: &PresenceArgs,
    users: usize,
    in_flight: usize,
) -> Result<Report, BenchError> {
    let ring = Ring {
        users,
        friends: args.friends,
    };
    println!("presence: preparing {users} accounts ({USER_PREFIX}0 …)");
    let started = Instant::now();
    let bar = progress::bar(users as u64, "accounts");
    let accounts = accounts::prepare(&target.http, USER_PREFIX, users, &bar)?;
    if let Some(first) = &accounts.first_error {
        return Err(BenchError::Setup(format!(
            "{} accounts failed; first: {first}",
            accounts.errors
        )));
    }
    let logins: Vec<Login> = accounts.logins.into_iter().flatten().collect();
    println!(
        "presence: {} accounts ready in {:.1}s; making {} friendships ({} friends each)",
        logins.len(),
        started.elapsed().as_secs_f64(),
        users * args.friends / 2,
        args.friends
    );
    let started = Instant::now();
    let pairs = ring.pairs();
    let bar = progress::bar(pairs.len() as u64, "friends");
    let results = in_parallel(&pairs, &bar, |&(i, j)| match (logins.get(i), logins.get(j)) {
        (Some(a), Some(b)) => {
            befriend(&target.http, a, b, &format!("{USER_PREFIX}{j}")).map_err(|e| e.to_string())
        }
        _ => Err("no such user".to_owned()),
    })?;
    if let Some(Err(first)) = results.iter().find(|r| r.is_err()) {
        let failed = results.iter().filter(|r| r.is_err()).count();
        return Err(BenchError::Setup(format!(
            "{failed} friendships failed; first: {first}"
        )));
    }
    println!(
        "presence: {} friendships ready in {:.1}s",
        pairs.len(),
        started.elapsed().as_secs_f64()
    );

    let mut driver = Driver::new(target.dial.clone(), ring, &logins, in_flight, args)?;
    println!(
        "presence: storm — connecting all {users} users at once (at most {in_flight} handshakes in flight)"
    );
    let settle = driver.storm(args.settle_timeout)?;
    match settle {
        Some(settle) => println!(
            "presence: storm settled in {:.3}s: every device sees all {} friends online",
            settle.as_secs_f64(),
            args.friends
        ),
        None => println!(
            "presence: the storm did not settle within {:?} ({} devices still miss a friend)",
            args.settle_timeout,
            driver.unsettled()
        ),
    }
    let rss = target.server_rss();
    let rate = options.rate.unwrap_or(DEFAULT_RATE).max(2);
    println!(
        "presence: churn for {:?} at {rate} changes/s (users leave and return after {:?})",
        options.duration,
        args.presence_grace * 2
    );
    let churn = driver.churn(options.duration, rate)?;
    let wrong = driver.check(args.settle_timeout)?;
    driver.print_reasons();

    let mut report = Report::new("presence", "tcp");
    report.connections = Some(driver.established());
    report.duration_s = Some(churn.as_secs_f64());
    report.server_rss_bytes = rss;
    report.storm_settle_s = settle.map(|d| d.as_secs_f64());
    report.presence_pushes_per_sec = Some(per_sec(driver.measured_pushes, churn));
    // An empty histogram (a churn phase shorter than one absence) measured nothing.
    let quantile = |h: &Histogram<u64>, q| (!h.is_empty()).then(|| h.value_at_quantile(q));
    report.presence_p50_us = quantile(&driver.online_latency, 0.50);
    report.presence_p99_us = quantile(&driver.online_latency, 0.99);
    report.presence_p999_us = quantile(&driver.online_latency, 0.999);
    report.presence_offline_p99_us = quantile(&driver.offline_latency, 0.99);
    report.lost = Some(wrong);
    report.errors = Some(driver.errors + u64::from(settle.is_none()));
    println!(
        "presence: {} online and {} offline changes timed; {} pushes matched no change",
        driver.online_latency.len(),
        driver.offline_latency.len(),
        driver.unmatched
    );
    Ok(report)
}

/// `count / elapsed`, 0 for an empty interval.
fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// A histogram of microseconds from 1 µs to an hour, 3 significant digits.
#[allow(clippy::expect_used)] // constant bounds that hdrhistogram documents as valid
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("1 µs .. 1 h at 3 digits is a valid histogram")
}

/// Where a user's connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// TCP handshake in progress (`Hello` queued).
    Connecting,
    /// `Hello` sent, no `Welcome` yet.
    AwaitingWelcome,
    /// Authenticated.
    Established,
}

/// One user's connection and its view of its friends.
#[derive(Debug)]
struct Conn {
    /// Over `--transport` (one socket per connection, QUIC included).
    stream: ClientStream,
    state: State,
    since: Instant,
    inbuf: BytesMut,
    outbuf: BytesMut,
    /// Snapshot frames still to come after `Welcome`.
    snapshot_left: usize,
    /// Friend `k` is online, as far as this device knows.
    view: Box<[bool]>,
    /// How many entries of `view` are true.
    online_seen: usize,
}

/// One user: its connection (if any) and the truth about it.
#[derive(Debug)]
struct User {
    user_id: u64,
    token: String,
    conn: Option<Conn>,
    /// Bumped whenever the connection is replaced (stale ping entries are skipped).
    generation: u32,
    /// Whether the user is connected (or connecting): what its friends must see
    /// once the change has propagated.
    online: bool,
    /// The latest change: (online, when it happened).
    change: Option<(bool, Instant)>,
    /// Away (its return is scheduled).
    away: bool,
}

/// The single-threaded event loop holding every connection.
struct Driver {
    poll: Poll,
    events: Events,
    server: Dial,
    sources: Sources,
    ring: Ring,
    users: Vec<User>,
    index: HashMap<u64, usize>,
    encoder: Encoder,
    decoder: FrameDecoder,
    max_in_flight: usize,
    in_flight: usize,
    /// (due, user, generation) of each established connection's next ping.
    pings: VecDeque<(Instant, usize, u32)>,
    ping_interval: Option<Duration>,
    grace: Duration,
    /// Users away, in the order they return: (when, user).
    returns: VecDeque<(Instant, usize)>,
    /// The churn phase is on: pushes are counted and timed.
    measuring: bool,
    online_latency: Histogram<u64>,
    offline_latency: Histogram<u64>,
    pushes: u64,
    measured_pushes: u64,
    unmatched: u64,
    errors: u64,
    reasons: HashMap<String, u64>,
    scratch: Box<[u8]>,
    next_expiry_scan: Instant,
}

impl Driver {
    fn new(
        server: Dial,
        ring: Ring,
        logins: &[Login],
        max_in_flight: usize,
        args: &PresenceArgs,
    ) -> Result<Driver, BenchError> {
        let users: Vec<User> = logins
            .iter()
            .map(|login| User {
                user_id: login.user_id,
                token: login.token.clone(),
                conn: None,
                generation: 0,
                online: false,
                change: None,
                away: false,
            })
            .collect();
        let index = users.iter().enumerate().map(|(i, u)| (u.user_id, i)).collect();
        Ok(Driver {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            sources: Sources::for_server(server.addr),
            server,
            ring,
            users,
            index,
            encoder: Encoder::new(),
            decoder: FrameDecoder::new(Limits::default()),
            max_in_flight,
            in_flight: 0,
            pings: VecDeque::new(),
            ping_interval: None,
            grace: args.presence_grace,
            returns: VecDeque::new(),
            measuring: false,
            online_latency: latency_histogram(),
            offline_latency: latency_histogram(),
            pushes: 0,
            measured_pushes: 0,
            unmatched: 0,
            errors: 0,
            reasons: HashMap::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            next_expiry_scan: Instant::now(),
        })
    }

    /// Connects every user; returns how long until every device saw all its friends
    /// online, or `None` if that did not happen within `timeout`.
    fn storm(&mut self, timeout: Duration) -> Result<Option<Duration>, BenchError> {
        let start = Instant::now();
        let mut next = 0;
        let mut next_check = start;
        let bar = progress::bar(self.users.len() as u64, "settled");
        loop {
            interrupt::check()?;
            let now = Instant::now();
            let mut budget = CONNECTS_PER_TURN;
            while budget > 0 && self.in_flight < self.max_in_flight && next < self.users.len() {
                self.connect(next, now);
                next += 1;
                budget -= 1;
            }
            self.turn()?;
            let now = Instant::now();
            self.housekeeping(now);
            if now < next_check {
                continue;
            }
            next_check = now + CHECK_INTERVAL;
            let unsettled = self.unsettled();
            bar.set_position((self.users.len() - unsettled) as u64);
            if next == self.users.len() && unsettled == 0 {
                bar.finish_and_clear();
                return Ok(Some(now.duration_since(start)));
            }
            if now.duration_since(start) > timeout {
                bar.finish_and_clear();
                return Ok(None);
            }
        }
    }

    /// Gives up stale handshakes, at most once per [`CHECK_INTERVAL`].
    fn housekeeping(&mut self, now: Instant) {
        if now >= self.next_expiry_scan {
            self.expire_handshakes(now);
            self.next_expiry_scan = now + Duration::from_secs(1);
        }
    }

    /// Devices that do not see all their friends online (or are not connected).
    fn unsettled(&self) -> usize {
        self.users
            .iter()
            .filter(|u| {
                u.conn
                    .as_ref()
                    .is_none_or(|c| c.state != State::Established || c.online_seen < self.ring.friends)
            })
            .count()
    }

    /// Established connections.
    fn established(&self) -> u64 {
        self.users
            .iter()
            .filter(|u| u.conn.as_ref().is_some_and(|c| c.state == State::Established))
            .count() as u64
    }

    /// `rate` changes per second for `duration`: users leave and return.
    fn churn(&mut self, duration: Duration, rate: u64) -> Result<Duration, BenchError> {
        let leave_every = Duration::from_secs_f64(2.0 / rate as f64);
        let away = self.grace * 2;
        let start = Instant::now();
        let end = start + duration;
        let mut next_leave = start;
        let mut victim: u64 = 0x9E37_79B9_7F4A_7C15;
        self.measuring = true;
        self.measured_pushes = 0;
        loop {
            interrupt::check()?;
            let now = Instant::now();
            if now >= end {
                break;
            }
            while next_leave <= now {
                next_leave += leave_every;
                // xorshift over the users: a spread, repeatable choice.
                victim ^= victim << 13;
                victim ^= victim >> 7;
                victim ^= victim << 17;
                let i = (victim % self.users.len() as u64) as usize;
                // A user who just came back stays until its friends have surely
                // heard of it: every push is then matched to the change it reports.
                let settled = |u: &User| u.change.is_none_or(|(_, at)| now.duration_since(at) > self.grace);
                if self.users.get(i).is_some_and(|u| {
                    !u.away && settled(u) && u.conn.as_ref().is_some_and(|c| c.state == State::Established)
                }) {
                    self.leave(i, now, away);
                }
            }
            self.return_due(now);
            self.turn()?;
            self.housekeeping(Instant::now());
        }
        let measured = start.elapsed();
        self.measuring = false;
        Ok(measured)
    }

    /// Waits for the absent users to return and for every device's view to equal the
    /// truth; returns how many (device, friend) views were still wrong at `timeout`.
    fn check(&mut self, timeout: Duration) -> Result<u64, BenchError> {
        let start = Instant::now();
        let mut next_check = start;
        loop {
            interrupt::check()?;
            let now = Instant::now();
            self.return_due(now);
            self.turn()?;
            let now = Instant::now();
            self.housekeeping(now);
            if now < next_check {
                continue;
            }
            next_check = now + CHECK_INTERVAL;
            let wrong = self.wrong_views();
            if wrong == 0 && self.returns.is_empty() {
                return Ok(0);
            }
            if now.duration_since(start) > timeout {
                return Ok(wrong);
            }
        }
    }

    /// (device, friend) pairs whose view differs from the friend's state.
    fn wrong_views(&self) -> u64 {
        let mut wrong = 0;
        for (i, user) in self.users.iter().enumerate() {
            let Some(conn) = user.conn.as_ref().filter(|c| c.state == State::Established) else {
                continue;
            };
            for (k, seen) in conn.view.iter().enumerate() {
                let friend = self.ring.friend(i, k);
                if self.users.get(friend).is_some_and(|f| f.online != *seen) {
                    wrong += 1;
                }
            }
        }
        wrong
    }

    /// User `i` leaves: its socket is closed; it returns after `away`.
    fn leave(&mut self, i: usize, now: Instant, away: Duration) {
        self.close(i);
        if let Some(user) = self.users.get_mut(i) {
            user.online = false;
            user.change = Some((false, now));
            user.away = true;
        }
        self.returns.push_back((now + away, i));
    }

    /// Reconnects the users whose absence is over.
    fn return_due(&mut self, now: Instant) {
        while let Some(&(at, i)) = self.returns.front() {
            if at > now {
                return;
            }
            self.returns.pop_front();
            if let Some(user) = self.users.get_mut(i) {
                user.away = false;
            }
            self.connect(i, now);
        }
    }

    /// Opens user `i`'s connection and queues its `Hello`.
    fn connect(&mut self, i: usize, now: Instant) {
        let Some(token) = self.users.get(i).map(|u| u.token.clone()) else {
            return;
        };
        let mut stream = match self.server.open(&mut self.sources) {
            Ok(stream) => stream,
            Err(reason) => return self.fail(reason),
        };
        if let Err(e) =
            self.poll
                .registry()
                .register(stream.source(), Token(i), Interest::READABLE | Interest::WRITABLE)
        {
            return self.fail(format!("register: {e}"));
        }
        let hello = Hello {
            token,
            device: DEVICE.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: false,
            conversation: false,
        };
        let mut outbuf = BytesMut::new();
        outbuf.extend_from_slice(&self.encoder.encode(&Frame::new(1, Body::Hello(hello))));
        let friends = self.ring.friends;
        if let Some(user) = self.users.get_mut(i) {
            user.generation = user.generation.wrapping_add(1);
            user.online = true;
            user.conn = Some(Conn {
                stream,
                state: State::Connecting,
                since: now,
                inbuf: BytesMut::new(),
                outbuf,
                snapshot_left: 0,
                view: vec![false; friends].into_boxed_slice(),
                online_seen: 0,
            });
        }
        self.in_flight += 1;
    }

    /// Closes user `i`'s connection, if any.
    fn close(&mut self, i: usize) {
        let Some(user) = self.users.get_mut(i) else {
            return;
        };
        if let Some(mut conn) = user.conn.take() {
            if conn.state != State::Established {
                self.in_flight = self.in_flight.saturating_sub(1);
            }
            // The socket is closed right after; a failed deregistration changes nothing.
            let _ = self.poll.registry().deregister(conn.stream.source());
        }
    }

    /// One loop turn: due pings, then readiness.
    fn turn(&mut self) -> Result<(), BenchError> {
        let now = Instant::now();
        let more_pings = self.send_due_pings(now);
        let mut wait = if more_pings { Duration::ZERO } else { MAX_POLL_WAIT };
        // QUIC connections have timers of their own (acknowledgements, loss
        // detection): wake for the earliest and serve those that are due.
        let quic_due = self
            .users
            .iter_mut()
            .filter_map(|u| u.conn.as_mut().and_then(|c| c.stream.next_timeout()))
            .min();
        if let Some(due) = quic_due {
            wait = wait.min(due.saturating_duration_since(now));
        }
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let mut ready: Vec<usize> = self.events.iter().map(|e| e.token().0).collect();
        if quic_due.is_some() {
            let now = Instant::now();
            for (i, user) in self.users.iter_mut().enumerate() {
                if user
                    .conn
                    .as_mut()
                    .and_then(|c| c.stream.next_timeout())
                    .is_some_and(|t| t <= now)
                {
                    ready.push(i);
                }
            }
            ready.sort_unstable();
            ready.dedup();
        }
        for i in ready {
            let now = Instant::now();
            if let Err(reason) = self.on_ready(i, now) {
                self.close(i);
                if let Some(user) = self.users.get_mut(i) {
                    // Friends will see it leave: that is the truth now.
                    user.online = false;
                    user.change = Some((false, now));
                }
                self.fail(reason);
            }
        }
        Ok(())
    }

    /// Advances user `i`'s connection on readiness.
    fn on_ready(&mut self, i: usize, now: Instant) -> Result<(), String> {
        let Some(conn) = self.users.get_mut(i).and_then(|u| u.conn.as_mut()) else {
            return Ok(());
        };
        if conn.state == State::Connecting {
            if !conn.stream.connected().map_err(|e| format!("connect: {e}"))? {
                return Ok(());
            }
            conn.state = State::AwaitingWelcome;
            conn.since = now;
            flush(conn)?;
            // The change "came online" starts when the Hello leaves.
            if let Some(user) = self.users.get_mut(i) {
                user.change = Some((true, now));
            }
        }
        let Some(conn) = self.users.get_mut(i).and_then(|u| u.conn.as_mut()) else {
            return Ok(());
        };
        flush(conn)?;
        let end_of_stream = fill(conn, &mut self.scratch)?;
        // A read may have opened the transport (the WebSocket upgrade answer):
        // what waited for it goes now, not at a readiness edge that never comes.
        if !conn.outbuf.is_empty() {
            flush(conn)?;
        }
        let mut frames = Vec::new();
        while let Some(bytes) = self
            .decoder
            .split(&mut conn.inbuf)
            .map_err(|e| format!("bad frame: {e}"))?
        {
            frames.push(Frame::decode(&bytes, self.decoder.limits()).map_err(|e| format!("bad frame: {e}"))?);
        }
        for frame in frames {
            self.on_frame(i, frame, now)?;
        }
        if end_of_stream {
            return Err("closed by server".into());
        }
        Ok(())
    }

    fn on_frame(&mut self, i: usize, frame: Frame, now: Instant) -> Result<(), String> {
        let ring = self.ring;
        match frame.body {
            Body::Welcome(welcome) => {
                let friends = ring.friends;
                let generation = {
                    let Some(user) = self.users.get_mut(i) else {
                        return Ok(());
                    };
                    let Some(conn) = user.conn.as_mut() else {
                        return Ok(());
                    };
                    conn.state = State::Established;
                    conn.snapshot_left = friends;
                    user.generation
                };
                self.in_flight = self.in_flight.saturating_sub(1);
                let heartbeat = Duration::from_millis(u64::from(welcome.heartbeat_interval_ms));
                let interval = *self
                    .ping_interval
                    .get_or_insert((heartbeat / 2).max(MIN_PING_INTERVAL));
                self.pings.push_back((now + interval, i, generation));
            }
            Body::Presence(p) => {
                let Some(j) = self.index.get(&p.user_id).copied() else {
                    return Err(format!("presence of user {}, who is not a bench user", p.user_id));
                };
                let Some(k) = ring.index_of(i, j) else {
                    return Err(format!("presence of user {}, who is not a friend", p.user_id));
                };
                let Some(conn) = self.users.get_mut(i).and_then(|u| u.conn.as_mut()) else {
                    return Ok(());
                };
                let snapshot = conn.snapshot_left > 0;
                conn.snapshot_left = conn.snapshot_left.saturating_sub(1);
                if let Some(seen) = conn.view.get_mut(k)
                    && *seen != p.online
                {
                    *seen = p.online;
                    if p.online {
                        conn.online_seen += 1;
                    } else {
                        conn.online_seen -= 1;
                    }
                }
                if snapshot {
                    return Ok(());
                }
                self.pushes += 1;
                if !self.measuring {
                    return Ok(());
                }
                self.measured_pushes += 1;
                match self.users.get(j).and_then(|u| u.change) {
                    Some((online, at)) if online == p.online => {
                        let mut waited = now.saturating_duration_since(at);
                        if !online {
                            waited = waited.saturating_sub(self.grace);
                        }
                        let us = (waited.as_micros() as u64).max(1);
                        let histogram = if online {
                            &mut self.online_latency
                        } else {
                            &mut self.offline_latency
                        };
                        histogram.saturating_record(us);
                    }
                    _ => self.unmatched += 1,
                }
            }
            Body::Error(error) => {
                let code = ErrorCode::from_u16(error.code)
                    .map_or_else(|| format!("code {}", error.code), |code| code.name().to_owned());
                return Err(format!("server error {code}: {}", error.message));
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends the pings that are due, up to [`PINGS_PER_TURN`]; returns whether more are due.
    fn send_due_pings(&mut self, now: Instant) -> bool {
        let Some(interval) = self.ping_interval else {
            return false;
        };
        for _ in 0..PINGS_PER_TURN {
            let Some(&(due, i, generation)) = self.pings.front() else {
                return false;
            };
            if due > now {
                return false;
            }
            self.pings.pop_front();
            let bytes = self.encoder.encode(&Frame::new(2, Body::Ping(Ping { nonce: 2 })));
            let Some(user) = self.users.get_mut(i) else {
                continue;
            };
            if user.generation != generation {
                continue;
            }
            let Some(conn) = user.conn.as_mut() else {
                continue;
            };
            conn.outbuf.extend_from_slice(&bytes);
            match flush(conn) {
                Ok(()) => self.pings.push_back((now + interval, i, generation)),
                Err(reason) => {
                    self.close(i);
                    self.fail(format!("lost: {reason}"));
                }
            }
        }
        self.pings.front().is_some_and(|&(due, ..)| due <= now)
    }

    /// Gives up handshakes older than [`HANDSHAKE_TIMEOUT`].
    fn expire_handshakes(&mut self, now: Instant) {
        let expired: Vec<usize> = self
            .users
            .iter()
            .enumerate()
            .filter(|(_, u)| {
                u.conn.as_ref().is_some_and(|c| {
                    c.state != State::Established
                        && now.saturating_duration_since(c.since) > HANDSHAKE_TIMEOUT
                })
            })
            .map(|(i, _)| i)
            .collect();
        for i in expired {
            self.close(i);
            self.fail(format!("handshake timed out after {HANDSHAKE_TIMEOUT:?}"));
        }
    }

    /// Counts a failure under `reason`.
    fn fail(&mut self, reason: String) {
        self.errors += 1;
        *self.reasons.entry(reason).or_default() += 1;
    }

    /// Prints the most frequent failure reasons to stderr.
    fn print_reasons(&self) {
        if self.reasons.is_empty() {
            return;
        }
        let mut reasons: Vec<(&String, &u64)> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        eprintln!("presence: failures by reason:");
        for (reason, count) in reasons.into_iter().take(REASONS_SHOWN) {
            eprintln!("  {count:>8}  {reason}");
        }
    }
}

/// Writes queued bytes until the socket would block.
fn flush(conn: &mut Conn) -> Result<(), String> {
    if conn.state == State::Connecting {
        return Ok(());
    }
    while !conn.outbuf.is_empty() {
        match conn.stream.write(&conn.outbuf) {
            Ok(0) => return Err("write: socket closed".into()),
            Ok(n) => conn.outbuf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    conn.stream.flush_buffered().map_err(|e| format!("write: {e}"))
}

/// Reads until the socket would block; returns whether the stream ended.
fn fill(conn: &mut Conn, scratch: &mut [u8]) -> Result<bool, String> {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return Ok(true),
            Ok(n) => conn.inbuf.extend_from_slice(scratch.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_gives_everyone_f_distinct_friends_both_ways() {
        let ring = Ring {
            users: 11,
            friends: 4,
        };
        for i in 0..ring.users {
            let friends: Vec<usize> = (0..ring.friends).map(|k| ring.friend(i, k)).collect();
            let mut distinct = friends.clone();
            distinct.sort_unstable();
            distinct.dedup();
            assert_eq!(distinct.len(), ring.friends, "{friends:?}");
            assert!(!friends.contains(&i));
            for (k, &j) in friends.iter().enumerate() {
                assert_eq!(ring.index_of(i, j), Some(k));
                assert!(ring.index_of(j, i).is_some(), "friendship is mutual");
            }
        }
        assert_eq!(ring.index_of(0, 5), None);
        assert_eq!(ring.pairs().len(), ring.users * ring.friends / 2);
    }

    #[test]
    fn friend_counts_are_checked() {
        let args = |friends| PresenceArgs {
            friends,
            presence_grace: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(30),
            settle_timeout: Duration::from_secs(60),
        };
        assert!(check_args(&args(50), 10_000, 4096, 20_000).is_ok());
        assert!(check_args(&args(49), 10_000, 4096, 20_000).is_err());
        assert!(check_args(&args(0), 10_000, 4096, 20_000).is_err());
        assert!(check_args(&args(10), 10, 4096, 20_000).is_err());
        assert!(check_args(&args(10), 100, 0, 20_000).is_err());
        assert!(check_args(&args(10), 19_950, 4096, 20_000).is_err());
        assert_eq!(
            natterd_flags(&args(2)),
            ["--presence-grace", "1000ms", "--heartbeat-timeout", "30000ms"]
        );
    }
}
