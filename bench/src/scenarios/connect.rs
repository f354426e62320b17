//! The `connect` scenario: how fast natterd accepts and authenticates connections and
//! how little memory an idle authenticated connection costs it.
//!
//! 1. Sign up (or reuse) and log in N users `bench_c_{i}` over HTTP.
//! 2. Read natterd's RSS (and its store write buffer, `natter_store_write_buffer_bytes`
//!    of `/metrics`), then open N TCP connections from one mio thread, each from
//!    its own explicit source address spread over 127.0.0.2–127.0.0.250 (socket2:
//!    `SO_REUSEADDR`, `bind(127.0.0.x:port)`, non-blocking `connect`; a busy
//!    address is skipped) — `bind(ip, 0)` manages only ~830 connects/s on these
//!    machines. At most `--in-flight` handshakes (TCP + `Hello` → `Welcome`) run
//!    at once. `connect_per_sec` = connections established / (first `connect` → last
//!    `Welcome`).
//! 3. Read natterd's RSS and write buffer again, then hold every connection idle for `--duration`,
//!    sending `Ping` every half heartbeat interval (from `Welcome`) and reading the
//!    `Pong`s. A connection lost at any point, and every failed signup, login or
//!    handshake, counts in `errors`.
//!
//! `rss_per_connection_bytes` is the raw RSS growth per connection;
//! `rss_per_connection_net_bytes` takes off the write buffer's growth (the device
//! and presence rows written at connect wait in memtables, which `--journal-limit`
//! bounds whatever the connection count), so it counts what the connections
//! themselves hold. Over QUIC the connections are opened in two halves, natterd's
//! RSS read after each (once idle), and `rss_per_connection_marginal_bytes` is the
//! second half's growth per connection: what one more connection costs once the
//! memory the account phase left free (which the first connections may or may
//! not reuse, depending on which threads share a malloc arena) is out of play.

use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use clap::Args;
use indicatif::ProgressBar;
use mio::event::Event;
use mio::{Events, Interest, Poll, Token};
use natter_wire::{Body, Encoder, ErrorCode, Frame, FrameDecoder, Hello, Limits, PROTOCOL_VERSION, Ping};

use crate::accounts::{self, DEVICE};
use crate::error::BenchError;
use crate::interrupt;
use crate::progress;
use crate::report::Report;
use crate::scenarios::Options;
use crate::scenarios::connect_quic::{CONNECTIONS_PER_SOCKET, QuicFleet, check_per_socket};
use crate::sockets::{Sources, connect_from};
use crate::target::Target;
use crate::transport::{ClientStream, Dial, Kind};

/// The flags of the `connect` scenario.
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "connect options")]
pub(crate) struct ConnectArgs {
    /// Connections to open and hold, one user (`bench_c_{i}`) each.
    #[arg(long, default_value_t = 1000)]
    pub(crate) connections: usize,
    /// Most handshakes (TCP connect + Hello → Welcome) in flight at once (connect and
    /// the presence storm).
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub(crate) in_flight: usize,
    /// `--transport quic`: connections sharing one UDP socket (and quinn-proto
    /// endpoint), 1 to 4096; the fleet opens a new socket, from the next
    /// 127.0.0.x source address, every N connections.
    #[arg(long, default_value_t = CONNECTIONS_PER_SOCKET, value_name = "N")]
    pub(crate) quic_connections_per_socket: usize,
}

/// The user names of this scenario are `{USER_PREFIX}{i}`.
const USER_PREFIX: &str = "bench_c_";

/// Files the benchmark needs besides its connections: standard streams, the epoll
/// instance, the HTTP connection pool, natterd's pipes and log.
const FD_MARGIN: u64 = 100;

/// New connections started per loop turn, so that answers to earlier handshakes are
/// read between batches instead of piling up in socket buffers.
const CONNECTS_PER_TURN: usize = 64;
/// Pings sent per loop turn; the rest wait for the next turn (poll with zero timeout).
const PINGS_PER_TURN: usize = 4096;
/// Readiness events handled per `poll` call.
const EVENTS_CAPACITY: usize = 1024;
/// Longest sleep in `poll`, so timers are checked at least this often.
const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// A handshake that takes longer than this is given up and counted as an error.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often handshakes are checked against [`HANDSHAKE_TIMEOUT`].
const TIMEOUT_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest ping interval, whatever the server's heartbeat says.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 4096;
/// Failure reasons shown in the summary.
const REASONS_SHOWN: usize = 5;

/// Checks the flags against this process's open-file limit before anything starts.
///
/// # Errors
/// [`BenchError::Usage`] for zero connections or more than the limit allows.
/// QUIC connections (`quic`) share UDP sockets, so only TCP-based ones count
/// against the limit.
pub(crate) fn check_args(args: &ConnectArgs, open_files: u64, quic: bool) -> Result<(), BenchError> {
    if args.connections == 0 {
        return Err(BenchError::Usage("--connections must be at least 1".into()));
    }
    if args.in_flight == 0 {
        return Err(BenchError::Usage("--in-flight must be at least 1".into()));
    }
    let sockets = if quic {
        check_per_socket(args.quic_connections_per_socket)?;
        args.connections.div_ceil(args.quic_connections_per_socket)
    } else {
        args.connections
    };
    let needed = (sockets as u64).saturating_add(FD_MARGIN);
    if needed > open_files {
        return Err(BenchError::Usage(format!(
            "--connections {} needs about {needed} open files, but this process may open at most \
             {open_files} (RLIMIT_NOFILE hard limit), so one natter-bench holds at most {} \
             connections; run several natter-bench processes for more",
            args.connections,
            open_files.saturating_sub(FD_MARGIN)
        )));
    }
    Ok(())
}

/// Runs the scenario against `target`.
///
/// # Errors
/// [`BenchError::Setup`] if natterd rate-limits the accounts or no account could be
/// prepared; [`BenchError::Io`] if the event loop itself fails.
pub(crate) fn run(target: &Target, options: &Options, args: &ConnectArgs) -> Result<Report, BenchError> {
    let n = args.connections;
    println!("connect: preparing {n} accounts ({USER_PREFIX}0 …)");
    let started = Instant::now();
    let bar = progress::bar(n as u64, "accounts");
    let accounts = accounts::prepare(&target.http, USER_PREFIX, n, &bar)?;
    let ready = n as u64 - accounts.errors;
    println!(
        "connect: {ready} accounts ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    if let Some(first) = &accounts.first_error {
        eprintln!("connect: {} accounts failed; first: {first}", accounts.errors);
    }
    if ready == 0 {
        return Err(BenchError::Setup(
            "no account could be signed up and logged in".into(),
        ));
    }

    let before = Memory::read(target);
    let hellos: Vec<Option<String>> = accounts
        .logins
        .into_iter()
        .map(|login| login.map(|login| login.token))
        .collect();
    if target.dial.kind() == Kind::Quic {
        return run_quic(target, options, args, &hellos, ready, before, accounts.errors);
    }
    let mut driver = Driver::new(target.dial.clone(), args.in_flight, options.rate)?;
    println!(
        "connect: opening {ready} connections (at most {} handshakes in flight)",
        args.in_flight
    );
    let bar = progress::bar(ready, "connected");
    let connected = driver.connect_all(&hellos, &bar)?;
    bar.finish_and_clear();
    let after = Memory::read(target);
    let rate = per_sec(connected.established, connected.elapsed);
    println!(
        "connect: {} connections established in {:.2}s ({rate:.0}/s), {} failed; holding them for {:?}",
        connected.established,
        connected.elapsed.as_secs_f64(),
        connected.failed,
        options.duration
    );
    let held = driver.hold(options.duration)?;
    let open = driver.open_connections();
    println!(
        "connect: {} pings sent, {} pongs received during the run",
        driver.pings_sent, driver.pongs
    );
    driver.print_reasons();

    let mut report = Report::new("connect", "tcp");
    report.connections = Some(open);
    report.connect_per_sec = Some(rate);
    report.server_rss_bytes = after.rss;
    before.per_connection(after, connected.established, &mut report);
    report.duration_s = Some(held.as_secs_f64());
    report.errors = Some(accounts.errors + driver.failed_handshakes + driver.lost);
    Ok(report)
}

/// The connect phase and the hold over QUIC ([`QuicFleet`]: many connections
/// per UDP socket, so no open-file bound). natterd's RSS is read after each
/// half of the connections, each time after [`QUIC_SETTLE`] of idleness, once
/// handshake state has been released.
fn run_quic(
    target: &Target,
    options: &Options,
    args: &ConnectArgs,
    hellos: &[Option<String>],
    ready: u64,
    before: Memory,
    account_errors: u64,
) -> Result<Report, BenchError> {
    let per_socket = args.quic_connections_per_socket;
    let mut fleet = QuicFleet::new(&target.dial, args.in_flight, options.rate, per_socket)?;
    println!(
        "connect: opening {ready} QUIC connections, {per_socket} per UDP socket (at most {} \
         handshakes in flight)",
        args.in_flight
    );
    // In two halves, each followed by QUIC_SETTLE of idleness and a reading:
    // the second half's growth is the marginal cost of a connection, which
    // memory left free by the account phase (reused by the first connections,
    // or not) does not blur.
    let bar = progress::bar(ready, "connected");
    let half = hellos.len() / 2;
    let first = fleet.connect_all(hellos, 0..half, &bar)?;
    let settle = QUIC_SETTLE.min(options.duration);
    let mut held = fleet.hold(settle)?;
    let middle = Memory::read(target);
    let second = fleet.connect_all(hellos, half..hellos.len(), &bar)?;
    bar.finish_and_clear();
    let connected = Connected {
        established: first.established + second.established,
        failed: first.failed + second.failed,
        elapsed: first.elapsed + second.elapsed,
    };
    let rate = per_sec(connected.established, connected.elapsed);
    println!(
        "connect: {} connections established in {:.2}s ({rate:.0}/s) on {} UDP sockets, {} failed",
        connected.established,
        connected.elapsed.as_secs_f64(),
        fleet.sockets(),
        connected.failed,
    );
    held += fleet.hold(settle)?;
    let after = Memory::read(target);
    println!(
        "connect: holding them for {:?} more",
        options.duration.saturating_sub(settle)
    );
    held += fleet.hold(options.duration.saturating_sub(settle))?;
    let open = fleet.open_connections();
    let counters = fleet.counters();
    println!(
        "connect: {} pings sent, {} pongs received during the run; {} datagrams not taken by the kernel",
        counters.pings_sent, counters.pongs, counters.send_dropped
    );
    print_reasons(fleet.reasons());

    let mut report = Report::new("connect", "quic");
    report.connections = Some(open);
    report.connect_per_sec = Some(rate);
    report.udp_sockets = Some(fleet.sockets() as u64);
    report.server_rss_bytes = after.rss;
    before.per_connection(after, connected.established, &mut report);
    report.rss_per_connection_marginal_bytes = match (middle.rss, after.rss) {
        (Some(middle), Some(after)) if second.established > 0 => {
            Some(after.saturating_sub(middle) / second.established)
        }
        _ => None,
    };
    report.duration_s = Some(held.as_secs_f64());
    report.errors = Some(account_errors + counters.failed_handshakes + counters.lost);
    Ok(report)
}

/// natterd's memory at one moment, as the per-connection figures need it.
#[derive(Clone, Copy, Debug)]
struct Memory {
    /// Resident memory, bytes.
    rss: Option<u64>,
    /// The store's write buffer (memtables), bytes.
    write_buffer: Option<u64>,
}

impl Memory {
    /// Reads both now (the write buffer is the storage writer's last measurement).
    fn read(target: &Target) -> Memory {
        Memory {
            rss: target.server_rss(),
            write_buffer: target.server_write_buffer(),
        }
    }

    /// Fills `report`'s per-connection figures from `self` (before connecting) to
    /// `after` over `connections` connections: the raw RSS growth, the write
    /// buffer's growth, and the RSS growth net of it (see
    /// `Report::rss_per_connection_net_bytes`).
    fn per_connection(self, after: Memory, connections: u64, report: &mut Report) {
        let (Some(before_rss), Some(after_rss)) = (self.rss, after.rss) else {
            return;
        };
        if connections == 0 {
            return;
        }
        let growth = after_rss.saturating_sub(before_rss);
        report.rss_per_connection_bytes = Some(growth / connections);
        let (Some(wb_before), Some(wb_after)) = (self.write_buffer, after.write_buffer) else {
            return;
        };
        let wb_growth = i64::try_from(wb_after)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(wb_before).unwrap_or(i64::MAX));
        report.write_buffer_growth_bytes = Some(wb_growth);
        let buffered = u64::try_from(wb_growth).unwrap_or(0);
        report.rss_per_connection_net_bytes = Some(growth.saturating_sub(buffered) / connections);
    }
}

/// Idle time after the last QUIC handshake before natterd's RSS is read: the
/// handshakes' acknowledgements and key discards settle within a few RTTs.
const QUIC_SETTLE: Duration = Duration::from_secs(2);

/// Prints the most frequent failure reasons to stderr.
fn print_reasons(reasons: &BTreeMap<String, u64>) {
    if reasons.is_empty() {
        return;
    }
    let mut reasons: Vec<(&String, &u64)> = reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    eprintln!("connect: failures by reason:");
    for (reason, count) in reasons.into_iter().take(REASONS_SHOWN) {
        eprintln!("  {count:>8}  {reason}");
    }
}

/// `count / elapsed`, 0 for an empty interval.
fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { count as f64 / secs } else { 0.0 }
}

/// What the connect phase achieved.
#[derive(Debug)]
pub(crate) struct Connected {
    /// Connections that got a `Welcome`.
    pub(crate) established: u64,
    /// Handshakes that failed.
    pub(crate) failed: u64,
    /// First `connect` → last `Welcome`.
    pub(crate) elapsed: Duration,
}

/// What the QUIC fleet counted while it ran.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct FleetCounters {
    /// Pings written.
    pub(crate) pings_sent: u64,
    /// Pongs received.
    pub(crate) pongs: u64,
    /// Handshakes that failed.
    pub(crate) failed_handshakes: u64,
    /// Established connections that died.
    pub(crate) lost: u64,
    /// Datagrams the kernel did not take (QUIC retransmits them).
    pub(crate) send_dropped: u64,
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// TCP handshake in progress.
    Connecting,
    /// `Hello` sent (or queued), no `Welcome` yet.
    AwaitingWelcome,
    /// Authenticated and idle.
    Established,
}

/// One benchmark connection.
#[derive(Debug)]
struct Conn {
    stream: ClientStream,
    state: State,
    /// When the current state began (for the handshake timeout).
    since: Instant,
    /// Bytes received and not yet a whole frame.
    inbuf: BytesMut,
    /// Bytes to send that the socket did not take yet.
    outbuf: BytesMut,
}

/// What one readiness event brought.
#[derive(Debug, Default)]
struct Progress {
    /// The `Welcome`'s heartbeat interval, if the handshake completed now.
    welcomed: Option<Duration>,
    /// `Pong`s received.
    pongs: u64,
}

impl Conn {
    /// Advances the connection on readiness: finishes the TCP connect, writes what is
    /// pending, reads and handles every whole frame.
    ///
    /// # Errors
    /// A description of why the connection is dead.
    fn on_ready(&mut self, decoder: &FrameDecoder, now: Instant) -> Result<Progress, String> {
        let mut progress = Progress::default();
        if self.state == State::Connecting {
            if let Some(e) = self
                .stream
                .tcp()
                .take_error()
                .map_err(|e| format!("connect: {e}"))?
            {
                return Err(format!("connect: {e}"));
            }
            match self.stream.tcp().peer_addr() {
                Ok(_) => {
                    self.state = State::AwaitingWelcome;
                    self.since = now;
                }
                // Not connected yet (a spurious event).
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(progress),
                Err(e) => return Err(format!("connect: {e}")),
            }
        }
        self.flush()?;
        let end_of_stream = self.fill()?;
        if !self.stream.is_raw() {
            // A TLS handshake or WebSocket upgrade the read finished lets the Hello leave.
            self.flush()?;
        }
        while let Some(bytes) = decoder
            .split(&mut self.inbuf)
            .map_err(|e| format!("bad frame: {e}"))?
        {
            let frame = Frame::decode(&bytes, decoder.limits()).map_err(|e| format!("bad frame: {e}"))?;
            match (self.state, frame.body) {
                (State::AwaitingWelcome, Body::Welcome(welcome)) => {
                    self.state = State::Established;
                    self.since = now;
                    progress.welcomed = Some(Duration::from_millis(u64::from(welcome.heartbeat_interval_ms)));
                }
                (_, Body::Error(error)) => {
                    let code = ErrorCode::from_u16(error.code)
                        .map_or_else(|| format!("code {}", error.code), |code| code.name().to_owned());
                    return Err(format!("server error {code}: {}", error.message));
                }
                (State::Established, Body::Pong(_)) => progress.pongs += 1,
                (State::Established, _) => {}
                (state, body) => {
                    return Err(format!(
                        "unexpected frame in state {state:?}: {}",
                        body_name(&body)
                    ));
                }
            }
        }
        if end_of_stream {
            return Err("closed by server".into());
        }
        Ok(progress)
    }

    /// Queues `bytes` and writes as much as the socket takes.
    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.outbuf.extend_from_slice(bytes);
        if self.state == State::Connecting {
            Ok(())
        } else {
            self.flush()
        }
    }

    /// Writes queued bytes until the socket would block.
    fn flush(&mut self) -> Result<(), String> {
        while !self.outbuf.is_empty() {
            match self.stream.write(&self.outbuf) {
                Ok(0) => return Err("write: socket closed".into()),
                Ok(n) => self.outbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        self.stream.flush_buffered().map_err(|e| format!("write: {e}"))
    }

    /// Reads until the socket would block; returns whether the stream ended.
    fn fill(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(true),
                Ok(n) => self.inbuf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// A frame body's name, for messages.
fn body_name(body: &Body) -> String {
    let debug = format!("{body:?}");
    debug.split(['(', ' ', '{']).next().unwrap_or_default().to_owned()
}

/// The event loop that owns every connection.
struct Driver {
    poll: Poll,
    events: Events,
    server: Dial,
    sources: Sources,
    decoder: FrameDecoder,
    encoder: Encoder,
    /// Slot `i` is user `i`'s connection, `None` before it opens and after it dies.
    conns: Vec<Option<Conn>>,
    /// Most handshakes at once.
    max_in_flight: usize,
    /// New connections per second, if paced.
    rate: Option<u64>,
    /// Handshakes running now.
    in_flight: usize,
    /// `(due, slot)` in due order: when each established connection pings next.
    pings: VecDeque<(Instant, usize)>,
    /// Half the server's heartbeat interval.
    ping_interval: Option<Duration>,
    /// Ping nonces (also used as request ids).
    next_nonce: u64,
    /// Pings sent.
    pings_sent: u64,
    /// Pongs received.
    pongs: u64,
    /// Handshakes that failed.
    failed_handshakes: u64,
    /// Established connections that died.
    lost: u64,
    /// Failure reasons and how often each happened.
    reasons: BTreeMap<String, u64>,
}

impl Driver {
    /// A driver for connections to `server`.
    ///
    /// # Errors
    /// [`BenchError::Io`] if the poll instance cannot be created.
    fn new(server: Dial, max_in_flight: usize, rate: Option<u64>) -> Result<Driver, BenchError> {
        Ok(Driver {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            sources: Sources::for_server(server.addr),
            server,
            decoder: FrameDecoder::new(Limits::default()),
            encoder: Encoder::new(),
            conns: Vec::new(),
            max_in_flight,
            rate: rate.filter(|&r| r > 0),
            in_flight: 0,
            pings: VecDeque::new(),
            ping_interval: None,
            next_nonce: 1,
            pings_sent: 0,
            pongs: 0,
            failed_handshakes: 0,
            lost: 0,
            reasons: BTreeMap::new(),
        })
    }

    /// Opens one connection per `Some` token and runs until every handshake has
    /// ended.
    ///
    /// # Errors
    /// [`BenchError::Io`] if polling fails; [`BenchError::Interrupted`] after Ctrl-C.
    fn connect_all(&mut self, tokens: &[Option<String>], bar: &ProgressBar) -> Result<Connected, BenchError> {
        self.conns = tokens.iter().map(|_| None).collect();
        let mut next_user = 0;
        let mut started: u64 = 0;
        let mut established: u64 = 0;
        let mut failed: u64 = 0;
        let phase_start = Instant::now();
        let mut first_connect: Option<Instant> = None;
        let mut last_welcome = phase_start;
        let mut next_scan = phase_start + TIMEOUT_SCAN_INTERVAL;
        loop {
            interrupt::check()?;
            let now = Instant::now();
            // Start new handshakes within the in-flight bound, the per-turn budget
            // and the --rate pacing.
            let mut budget = CONNECTS_PER_TURN;
            let mut paced_until = None;
            while budget > 0 && self.in_flight < self.max_in_flight && next_user < tokens.len() {
                if let Some(rate) = self.rate {
                    let due = phase_start + Duration::from_secs_f64(started as f64 / rate as f64);
                    if due > now {
                        paced_until = Some(due);
                        break;
                    }
                }
                let user = next_user;
                next_user += 1;
                let Some(token) = tokens.get(user).and_then(Option::as_deref) else {
                    continue;
                };
                budget -= 1;
                started += 1;
                first_connect.get_or_insert(now);
                if let Err(reason) = self.start(user, token, now) {
                    failed += 1;
                    self.fail_handshake(reason);
                    bar.inc(1);
                }
            }
            let more_to_start = next_user < tokens.len();
            if !more_to_start && self.in_flight == 0 {
                break;
            }
            let wait = if more_to_start && budget == 0 {
                Duration::ZERO
            } else {
                let mut wait = self.ping_wait(now);
                if let Some(due) = paced_until {
                    wait = wait.min(due.saturating_duration_since(now));
                }
                wait
            };
            let turn = self.turn(wait)?;
            established += turn.welcomed;
            failed += turn.failed;
            bar.inc(turn.welcomed + turn.failed);
            if turn.welcomed > 0 {
                last_welcome = Instant::now();
            }
            if now >= next_scan {
                let expired = self.expire_handshakes(now);
                failed += expired;
                bar.inc(expired);
                next_scan = now + TIMEOUT_SCAN_INTERVAL;
            }
        }
        let elapsed = last_welcome.saturating_duration_since(first_connect.unwrap_or(last_welcome));
        Ok(Connected {
            established,
            failed,
            elapsed,
        })
    }

    /// Keeps every connection alive with pings for `duration`; returns how long the
    /// hold lasted.
    ///
    /// # Errors
    /// [`BenchError::Io`] if polling fails; [`BenchError::Interrupted`] after Ctrl-C.
    fn hold(&mut self, duration: Duration) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let end = start + duration;
        loop {
            interrupt::check()?;
            let now = Instant::now();
            if now >= end {
                break;
            }
            let wait = self.ping_wait(now).min(end - now);
            self.turn(wait)?;
        }
        Ok(start.elapsed())
    }

    /// Established connections still open.
    fn open_connections(&self) -> u64 {
        self.conns
            .iter()
            .flatten()
            .filter(|conn| conn.state == State::Established)
            .count() as u64
    }

    /// Prints the most frequent failure reasons to stderr.
    fn print_reasons(&self) {
        print_reasons(&self.reasons);
    }

    /// Opens slot `user`'s socket (skipping busy source addresses) and queues its
    /// `Hello`.
    fn start(&mut self, user: usize, token: &str, now: Instant) -> Result<(), String> {
        let tcp = connect_from(&mut self.sources, self.server.addr)?;
        let mut stream = self.server.wrap(tcp).map_err(|e| format!("transport: {e}"))?;
        self.poll
            .registry()
            .register(stream.tcp(), Token(user), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("register: {e}"))?;
        let hello = Hello {
            token: token.to_owned(),
            device: DEVICE.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: false,
            conversation: false,
        };
        let bytes = self.encoder.encode(&Frame::new(1, Body::Hello(hello)));
        let mut conn = Conn {
            stream,
            state: State::Connecting,
            since: now,
            inbuf: BytesMut::new(),
            outbuf: BytesMut::new(),
        };
        conn.send(&bytes)?;
        if let Some(slot) = self.conns.get_mut(user) {
            *slot = Some(conn);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// One loop turn: send due pings, wait up to `wait` for readiness, handle it.
    fn turn(&mut self, wait: Duration) -> Result<TurnOutcome, BenchError> {
        let now = Instant::now();
        let pings_left = self.send_due_pings(now);
        let wait = if pings_left {
            Duration::ZERO
        } else {
            wait.min(MAX_POLL_WAIT)
        };
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(TurnOutcome::default()),
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        let ready: Vec<usize> = self.events.iter().map(|event: &Event| event.token().0).collect();
        let mut outcome = TurnOutcome::default();
        for slot in ready {
            let Some(Some(conn)) = self.conns.get_mut(slot) else {
                continue;
            };
            let before = conn.state;
            match conn.on_ready(&self.decoder, now) {
                Ok(progress) => {
                    self.pongs += progress.pongs;
                    if let Some(heartbeat) = progress.welcomed {
                        self.in_flight = self.in_flight.saturating_sub(1);
                        outcome.welcomed += 1;
                        let interval = (heartbeat / 2).max(MIN_PING_INTERVAL);
                        self.ping_interval.get_or_insert(interval);
                        self.pings.push_back((now + interval, slot));
                    }
                }
                Err(reason) => {
                    self.close(slot);
                    if before == State::Established {
                        self.lost += 1;
                        *self.reasons.entry(format!("lost: {reason}")).or_default() += 1;
                    } else {
                        self.in_flight = self.in_flight.saturating_sub(1);
                        outcome.failed += 1;
                        self.fail_handshake(reason);
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// Sends the pings that are due, up to [`PINGS_PER_TURN`]; returns whether more
    /// are due.
    fn send_due_pings(&mut self, now: Instant) -> bool {
        let Some(interval) = self.ping_interval else {
            return false;
        };
        for _ in 0..PINGS_PER_TURN {
            let Some(&(due, slot)) = self.pings.front() else {
                return false;
            };
            if due > now {
                return false;
            }
            self.pings.pop_front();
            let Some(Some(conn)) = self.conns.get_mut(slot) else {
                continue;
            };
            let nonce = self.next_nonce;
            self.next_nonce += 1;
            let bytes = self
                .encoder
                .encode(&Frame::new(nonce, Body::Ping(Ping { nonce })));
            match conn.send(&bytes) {
                Ok(()) => {
                    self.pings_sent += 1;
                    self.pings.push_back((now + interval, slot));
                }
                Err(reason) => {
                    self.close(slot);
                    self.lost += 1;
                    *self.reasons.entry(format!("lost: {reason}")).or_default() += 1;
                }
            }
        }
        self.pings.front().is_some_and(|&(due, _)| due <= now)
    }

    /// How long the loop may sleep before the next ping is due.
    fn ping_wait(&self, now: Instant) -> Duration {
        self.pings
            .front()
            .map_or(MAX_POLL_WAIT, |&(due, _)| due.saturating_duration_since(now))
    }

    /// Gives up handshakes older than [`HANDSHAKE_TIMEOUT`]; returns how many.
    fn expire_handshakes(&mut self, now: Instant) -> u64 {
        let expired: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(slot, conn)| {
                let conn = conn.as_ref()?;
                (conn.state != State::Established
                    && now.saturating_duration_since(conn.since) > HANDSHAKE_TIMEOUT)
                    .then_some(slot)
            })
            .collect();
        for &slot in &expired {
            self.close(slot);
            self.in_flight = self.in_flight.saturating_sub(1);
            self.fail_handshake(format!("handshake timed out after {HANDSHAKE_TIMEOUT:?}"));
        }
        expired.len() as u64
    }

    /// Counts a failed handshake under `reason`.
    fn fail_handshake(&mut self, reason: String) {
        self.failed_handshakes += 1;
        *self.reasons.entry(reason).or_default() += 1;
    }

    /// Deregisters and closes slot `slot`.
    fn close(&mut self, slot: usize) {
        if let Some(Some(mut conn)) = self.conns.get_mut(slot).map(Option::take) {
            // The socket is closed right after; a failed deregistration changes nothing.
            let _ = self.poll.registry().deregister(conn.stream.tcp());
        }
    }
}

/// What one loop turn achieved in the connect phase.
#[derive(Debug, Default)]
struct TurnOutcome {
    /// Handshakes that completed.
    welcomed: u64,
    /// Handshakes that failed.
    failed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::connect_quic::MAX_CONNECTIONS_PER_SOCKET;

    #[test]
    fn arguments_are_checked_against_the_file_limit() {
        let args = ConnectArgs {
            connections: 10_000,
            in_flight: 512,
            quic_connections_per_socket: CONNECTIONS_PER_SOCKET,
        };
        assert!(check_args(&args, 20_000, false).is_ok());
        let err = check_args(
            &ConnectArgs {
                connections: 19_950,
                in_flight: 512,
                quic_connections_per_socket: CONNECTIONS_PER_SOCKET,
            },
            20_000,
            false,
        )
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("19900"), "{err}");
        assert!(
            check_args(
                &ConnectArgs {
                    connections: 0,
                    in_flight: 512,
                    quic_connections_per_socket: CONNECTIONS_PER_SOCKET,
                },
                20_000,
                false
            )
            .is_err()
        );
        assert!(
            check_args(
                &ConnectArgs {
                    connections: 10,
                    in_flight: 0,
                    quic_connections_per_socket: CONNECTIONS_PER_SOCKET,
                },
                20_000,
                false
            )
            .is_err()
        );
    }

    #[test]
    fn quic_connections_share_sockets_so_the_file_limit_allows_100k() {
        let args = ConnectArgs {
            connections: 100_000,
            in_flight: 512,
            quic_connections_per_socket: CONNECTIONS_PER_SOCKET,
        };
        assert!(check_args(&args, 20_000, true).is_ok());
        assert!(check_args(&args, 20_000, false).is_err());
        // 100 sockets + the margin do not fit in 150 files.
        assert!(check_args(&args, 150, true).is_err());
    }

    #[test]
    fn the_per_socket_bound_is_checked_and_sets_the_socket_count() {
        let args = |per_socket| ConnectArgs {
            connections: 100_000,
            in_flight: 512,
            quic_connections_per_socket: per_socket,
        };
        for bad in [0, MAX_CONNECTIONS_PER_SOCKET + 1] {
            let err = check_args(&args(bad), 20_000, true).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.to_string().contains("--quic-connections-per-socket"), "{err}");
        }
        // The bound itself is allowed: 25 sockets + the margin fit in 130 files ...
        assert!(check_args(&args(MAX_CONNECTIONS_PER_SOCKET), 130, true).is_ok());
        // ... and 10 per socket need 10,000 sockets, more than 9,000 files.
        assert!(check_args(&args(10), 9_000, true).is_err());
        // TCP ignores it.
        assert!(
            check_args(
                &ConnectArgs {
                    connections: 10,
                    ..args(0)
                },
                20_000,
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn the_net_figure_takes_off_write_buffer_growth_and_never_adds_a_flush_back() {
        let at = |rss, write_buffer| Memory {
            rss: Some(rss),
            write_buffer: Some(write_buffer),
        };
        let mut report = Report::new("connect", "quic");
        at(100_000_000, 1_000_000).per_connection(at(280_000_000, 8_700_000), 10_000, &mut report);
        assert_eq!(report.rss_per_connection_bytes, Some(18_000));
        assert_eq!(report.write_buffer_growth_bytes, Some(7_700_000));
        assert_eq!(report.rss_per_connection_net_bytes, Some(17_230));

        // Memtables flushed meanwhile: the net figure is the raw one, not more.
        let mut report = Report::new("connect", "quic");
        at(100_000_000, 9_000_000).per_connection(at(280_000_000, 2_000_000), 10_000, &mut report);
        assert_eq!(report.write_buffer_growth_bytes, Some(-7_000_000));
        assert_eq!(report.rss_per_connection_net_bytes, Some(18_000));

        // Without the gauge (an older natterd) only the raw figure is reported ...
        let mut report = Report::new("connect", "quic");
        let no_gauge = Memory {
            write_buffer: None,
            ..at(100_000_000, 0)
        };
        no_gauge.per_connection(at(280_000_000, 0), 10_000, &mut report);
        assert_eq!(report.rss_per_connection_bytes, Some(18_000));
        assert_eq!(report.rss_per_connection_net_bytes, None);
        // ... and nothing for no connections or an unreadable RSS.
        let mut report = Report::new("connect", "quic");
        at(1, 1).per_connection(at(2, 2), 0, &mut report);
        let unreadable = Memory {
            rss: None,
            write_buffer: Some(1),
        };
        unreadable.per_connection(at(2, 2), 10, &mut report);
        assert_eq!(report, Report::new("connect", "quic"));
    }

    #[test]
    fn per_sec_handles_an_empty_interval() {
        assert_eq!(per_sec(10, Duration::ZERO), 0.0);
        assert_eq!(per_sec(10, Duration::from_secs(2)), 5.0);
    }
}
