//! The `flood` scenario: clients that make natterd produce or hold data and never
//! read, to show whether natterd's memory stays bounded (issue 9, items 7 and 8).
//!
//! * `--kind history` / `--kind sync`: one user (`bench_f_flooder`, reused) owns a
//!   group holding three messages of 100,000 three-byte characters (300 KB of UTF-8
//!   each, created per run). `--connections` devices of that **one** user connect
//!   (one login each), each sends `Hello`, waits for its `Welcome`, then writes
//!   `--requests` pipelined `History{chat, before_seq 0, limit 200}` (or
//!   `Sync{[chat: 0]}`) requests in one go and never reads again.
//! * `--kind prehello`: `--connections` connections (from explicit 127.0.0.x source
//!   addresses) each write the length prefix of a 512 KiB frame and
//!   [`PREHELLO_BODY_BYTES`] of its body, and then stay silent: no `Hello` ever
//!   completes.
//!
//! Every connection uses `--transport` (`transport.rs`'s `ClientStream`). "Never
//! reads" means the stream is never read: a QUIC connection still takes its
//! datagrams and timers (ACKs, natterd's CONNECTION_CLOSE) on every readiness, so
//! natterd meets the client's flow-control window, as a TCP flood meets a full
//! receive buffer. `--kind prehello` over WebSocket is refused (a message leaves
//! whole or not at all, so a frame cannot stop short).
//!
//! For `--duration` from the first connect, natterd's RSS is sampled every 20 ms
//! (`/proc/PID/status` of a spawned natterd or of `--pid`, else `/metrics`), and every
//! connection natterd closes or resets is noticed (epoll's `RDHUP`/`HUP`, which fire
//! however much unread data the socket holds) and timed.
//!
//! Figures: `server_rss_before_bytes`, `server_peak_rss_bytes`,
//! `server_rss_growth_bytes`, `connections` (opened), `accepted_connections`
//! (history / sync: a `Welcome`; prehello: TCP connected), `requests` (written),
//! `server_closed_connections`, `server_close_first_s` / `server_close_last_s`
//! (since the first connect), `server_closed_max_per_s`, `errors_by_code` (`Error`
//! frames answering a `Hello`), `errors` (local failures).
//!
//! A natterd that caps sessions per user (`--max-sessions-per-user`) is spawned with
//! the cap raised to [`SPAWN_MAX_SESSIONS_PER_USER`] if it knows that flag, so the
//! same flood runs against natterd builds with and without the cap; the number of
//! accepted connections shows what the cap let through.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use clap::{Args, ValueEnum};
use mio::{Events, Interest, Poll, Token};
use natter_wire::{
    Body, Cursor, Encoder, ErrorCode, Frame, FrameDecoder, Hello, History, Limits, PROTOCOL_VERSION, Send,
    Sync,
};

use crate::accounts::PASSWORD;
use crate::error::BenchError;
use crate::interrupt;
use crate::progress;
use crate::report::Report;
use crate::scenarios::Options;
use crate::scenarios::messaging::setup::in_parallel;
use crate::sockets::Sources;
use crate::spawn;
use crate::target::{RssSampler, Target};
use crate::transport::{ClientStream, Dial, Kind};

/// The user every history / sync flood connection belongs to.
const USER: &str = "bench_f_flooder";
/// Characters per stored message: the protocol's maximum.
const TEXT_CHARS: usize = 100_000;
/// A three-byte character, so each message is 300,000 bytes of UTF-8.
const TEXT_CHAR: char = '€';
/// Messages stored in the flooded group (the attack used three).
const MESSAGES: u64 = 3;
/// `History.limit` of every flood request: the server's cap.
const HISTORY_LIMIT: u32 = 200;
/// The length prefix a pre-Hello connection announces: a frame of exactly 512 KiB
/// (the default `--max-frame`, prefix included), so natterd accepts the prefix and
/// waits for the rest.
const PREHELLO_FRAME_LEN: u32 = 512 * 1024 - 4;
/// Bytes of that frame's body each pre-Hello connection writes before it falls
/// silent: most of the frame, never all of it.
const PREHELLO_BODY_BYTES: usize = 500_000;
/// Default `--connections` for history / sync: the 100 connections of one
/// user.
const DEFAULT_CONNECTIONS: usize = 100;
/// Default `--connections` for prehello: enough to hold gigabytes if each may
/// keep half a megabyte.
const DEFAULT_PREHELLO_CONNECTIONS: usize = 5_000;
/// `--max-sessions-per-user` given to a spawned natterd that knows the flag: far
/// above any `--connections` used here, so the cap does not hide the flood.
pub(crate) const SPAWN_MAX_SESSIONS_PER_USER: u32 = 1_000;
/// Files the benchmark needs besides its connections.
const FD_MARGIN: u64 = 100;
/// Connections started per loop turn, so handshakes are served between batches.
const CONNECTS_PER_TURN: usize = 256;
/// Readiness events handled per `poll` call.
const EVENTS_CAPACITY: usize = 4096;
/// Longest sleep in `poll`, so the deadline is checked this often.
const MAX_POLL_WAIT: Duration = Duration::from_millis(10);
/// How long a `Welcome` may take before the connection counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read per `read` call while waiting for `Welcome`.
const READ_CHUNK: usize = 16 * 1024;

/// What the flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum FloodKind {
    /// Pipelined `History{limit 200}` requests for the group, never reading.
    History,
    /// Pipelined `Sync{[group: 0]}` requests, never reading.
    Sync,
    /// A partial 512 KiB frame before any `Hello`, then silence.
    Prehello,
}

impl FloodKind {
    /// The default `--connections` of this kind.
    fn default_connections(self) -> usize {
        match self {
            FloodKind::Prehello => DEFAULT_PREHELLO_CONNECTIONS,
            FloodKind::History | FloodKind::Sync => DEFAULT_CONNECTIONS,
        }
    }
}

/// The flags of the `flood` scenario (it also takes `--connections`).
#[derive(Clone, Debug, Args)]
#[command(next_help_heading = "flood options")]
pub(crate) struct FloodArgs {
    /// flood: what every connection sends.
    #[arg(long, value_enum, default_value_t = FloodKind::History)]
    pub(crate) kind: FloodKind,
    /// flood: pipelined requests per connection (history / sync).
    #[arg(long, default_value_t = 400, value_name = "M")]
    pub(crate) requests: usize,
    /// flood: stop the flood (close every connection) once natterd's RSS passes this
    /// many MiB, so an unbounded natterd cannot take the shared machine's memory.
    #[arg(long, default_value_t = DEFAULT_MAX_SERVER_RSS_MIB, value_name = "MIB")]
    pub(crate) max_server_rss_mib: u64,
}

/// Default `--max-server-rss-mib`: a sixth of the 24 GiB machines here, far above
/// what a bounded natterd needs for this flood, and clearly shown in the report
/// when reached.
const DEFAULT_MAX_SERVER_RSS_MIB: u64 = 4_096;

/// The flood's resolved settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FloodPlan {
    /// What is sent.
    pub(crate) kind: FloodKind,
    /// Connections opened.
    pub(crate) connections: usize,
    /// Requests per connection (0 for prehello).
    pub(crate) requests: usize,
    /// Stop once natterd's RSS passes this, bytes.
    pub(crate) max_server_rss: u64,
}

/// Resolves and checks the flags: `connections` is `--connections` if given on the
/// command line, else the kind's default.
///
/// # Errors
/// [`BenchError::Usage`] for zero connections or requests, or more connections than
/// this process may open.
pub(crate) fn check_args(
    args: &FloodArgs,
    connections: Option<usize>,
    open_files: u64,
) -> Result<FloodPlan, BenchError> {
    let connections = connections.unwrap_or_else(|| args.kind.default_connections());
    if connections == 0 {
        return Err(BenchError::Usage("--connections must be at least 1".into()));
    }
    if args.kind != FloodKind::Prehello && args.requests == 0 {
        return Err(BenchError::Usage("--requests must be at least 1".into()));
    }
    let needed = (connections as u64).saturating_add(FD_MARGIN);
    if needed > open_files {
        return Err(BenchError::Usage(format!(
            "--connections {connections} needs about {needed} open files, but this process may open \
             at most {open_files}"
        )));
    }
    Ok(FloodPlan {
        kind: args.kind,
        connections,
        requests: if args.kind == FloodKind::Prehello {
            0
        } else {
            args.requests
        },
        max_server_rss: args.max_server_rss_mib.saturating_mul(1024 * 1024),
    })
}

/// Flags for a spawned natterd: the session cap raised if natterd has one.
///
/// # Errors
/// [`BenchError::NatterdMissing`] / [`BenchError::Io`] if natterd's `--help`
/// cannot be run.
pub(crate) fn natterd_flags() -> Result<Vec<String>, BenchError> {
    if spawn::natterd_accepts("--max-sessions-per-user")? {
        println!(
            "flood: natterd has --max-sessions-per-user; spawning it with \
             --max-sessions-per-user {SPAWN_MAX_SESSIONS_PER_USER}"
        );
        Ok(vec![
            "--max-sessions-per-user".into(),
            SPAWN_MAX_SESSIONS_PER_USER.to_string(),
        ])
    } else {
        println!("flood: natterd has no --max-sessions-per-user (no per-user session cap)");
        Ok(Vec::new())
    }
}

/// Runs the scenario against `target`.
///
/// # Errors
/// [`BenchError::Setup`] / [`BenchError::Client`] when the setup is refused;
/// [`BenchError::Interrupted`] after Ctrl-C; [`BenchError::Io`] if the event loop fails.
pub(crate) fn run(target: &Target, options: &Options, plan: FloodPlan) -> Result<Report, BenchError> {
    if plan.kind == FloodKind::Prehello && target.dial.kind() == Kind::Ws {
        return Err(BenchError::Usage(
            "flood --kind prehello over ws: a WebSocket message leaves whole or not at all, so a \
             frame that stops short cannot be sent (tcp, tls and quic carry a byte stream)"
                .into(),
        ));
    }
    let (tokens, requests) = match plan.kind {
        FloodKind::Prehello => (Vec::new(), Vec::new()),
        kind => {
            let (tokens, chat) = prepare(target, plan.connections)?;
            (tokens, request_frames(kind, chat, plan.requests))
        }
    };
    println!(
        "flood: {:?}, {} connections{}, sampling natterd's RSS for {:?}",
        plan.kind,
        plan.connections,
        if requests.is_empty() {
            String::new()
        } else {
            format!(", {} requests each ({} bytes)", plan.requests, requests.len())
        },
        options.duration
    );
    let sampler = RssSampler::start(target);
    let mut flood = Flood::new(target.dial.clone(), plan, tokens, requests)?;
    flood.run(options.duration, &sampler)?;
    let server_rss = target.server_rss();
    let rss = sampler.stop();

    let mut report = Report::new("flood", "tcp");
    report.duration_s = Some(options.duration.as_secs_f64());
    report.connections = Some(plan.connections as u64);
    report.accepted_connections = Some(flood.accepted);
    report.requests = Some(flood.requests_written);
    report.server_closed_connections = Some(flood.closes.len() as u64);
    report.server_close_first_s = flood.closes.iter().copied().reduce(f64::min);
    report.server_close_last_s = flood.closes.iter().copied().reduce(f64::max);
    report.server_closed_max_per_s = Some(max_per_second(&flood.closes));
    report.errors_by_code = Some(flood.codes.clone());
    report.server_rss_cap_reached_s = flood.cap_reached;
    report.errors = Some(flood.errors);
    report.server_rss_bytes = server_rss;
    if let Some(rss) = rss {
        report.server_rss_before_bytes = Some(rss.before);
        report.server_peak_rss_bytes = Some(rss.peak);
        report.server_rss_growth_bytes = Some(rss.growth());
    }
    for (reason, count) in &flood.reasons {
        eprintln!("flood: {count} × {reason}");
    }
    Ok(report)
}

/// The flooding user's device tokens and a fresh group holding [`MESSAGES`] texts of
/// [`TEXT_CHARS`] characters.
fn prepare(target: &Target, devices: usize) -> Result<(Vec<String>, u64), BenchError> {
    let http = &target.http;
    match http.signup(USER, PASSWORD) {
        Ok(_) => {}
        Err(e) if e.http_status() == Some(409) => {}
        Err(e) => return Err(e.into()),
    }
    let owner = http.login(USER, PASSWORD, "bench-flood-setup")?;
    let chat = http.create_group(&owner.token, "flood", &[])?;
    let mut conn =
        natter_client::Connection::connect(target.tcp, &owner.token, "natter-bench flood setup")?.0;
    let text: String = std::iter::repeat_n(TEXT_CHAR, TEXT_CHARS).collect();
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    for i in 0..MESSAGES {
        conn.request(Body::Send(Send {
            chat_id: chat,
            client_msg_id: run_id.wrapping_add(i),
            text: text.clone(),
        }))?;
    }
    let indexes: Vec<usize> = (0..devices).collect();
    let bar = progress::bar(devices as u64, "logins");
    let logins = in_parallel(&indexes, &bar, |i| {
        http.login(USER, PASSWORD, &format!("bench-flood-{i}"))
    })?;
    let mut tokens = Vec::with_capacity(devices);
    for login in logins {
        tokens.push(login?.token);
    }
    Ok((tokens, chat))
}

/// `requests` pipelined request frames of `kind` for `chat`, request ids 2, 3, …
/// (1 is the `Hello`), as one buffer.
fn request_frames(kind: FloodKind, chat: u64, requests: usize) -> Vec<u8> {
    let mut encoder = Encoder::new();
    let mut out = Vec::new();
    for i in 0..requests {
        let body = match kind {
            FloodKind::Sync => Body::Sync(Sync {
                cursors: vec![Cursor {
                    chat_id: chat,
                    seq: 0,
                }],
            }),
            _ => Body::History(History {
                chat_id: chat,
                before_seq: 0,
                limit: HISTORY_LIMIT,
            }),
        };
        out.extend_from_slice(&encoder.encode(&Frame::new(i as u64 + 2, body)));
    }
    out
}

/// The most values of `times` (seconds) that fall into one whole second.
fn max_per_second(times: &[f64]) -> u64 {
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for &t in times {
        *buckets.entry(t.max(0.0) as u64).or_default() += 1;
    }
    buckets.values().copied().max().unwrap_or(0)
}

/// Where one connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not opened yet.
    Idle,
    /// TCP connect in progress.
    Connecting,
    /// `Hello` written; reading until `Welcome`.
    AwaitingWelcome,
    /// Writing the flood; never reading.
    Flooding,
    /// Everything written; silent, never reading.
    Silent,
    /// Closed by natterd, refused, or failed.
    Done,
}

/// One flooding connection.
struct Conn {
    stream: Option<ClientStream>,
    state: State,
    since: Instant,
    inbuf: BytesMut,
    outbuf: BytesMut,
    /// Prehello: body bytes still to write.
    body_left: usize,
}

/// The event loop holding every flooding connection.
struct Flood {
    poll: Poll,
    events: Events,
    dial: Dial,
    sources: Sources,
    plan: FloodPlan,
    tokens: Vec<String>,
    requests: Vec<u8>,
    conns: Vec<Conn>,
    decoder: FrameDecoder,
    scratch: Vec<u8>,
    zeros: Vec<u8>,
    started: Instant,
    accepted: u64,
    requests_written: u64,
    closes: Vec<f64>,
    codes: BTreeMap<String, u64>,
    errors: u64,
    reasons: BTreeMap<String, u64>,
    /// Seconds into the flood at which natterd's RSS passed the cap.
    cap_reached: Option<f64>,
}

impl Flood {
    fn new(dial: Dial, plan: FloodPlan, tokens: Vec<String>, requests: Vec<u8>) -> Result<Flood, BenchError> {
        let now = Instant::now();
        Ok(Flood {
            poll: Poll::new()?,
            events: Events::with_capacity(EVENTS_CAPACITY),
            sources: Sources::for_server(dial.addr),
            dial,
            plan,
            tokens,
            requests,
            conns: (0..plan.connections)
                .map(|_| Conn {
                    stream: None,
                    state: State::Idle,
                    since: now,
                    inbuf: BytesMut::new(),
                    outbuf: BytesMut::new(),
                    body_left: 0,
                })
                .collect(),
            decoder: FrameDecoder::new(Limits::default()),
            scratch: vec![0; READ_CHUNK],
            zeros: vec![0; PREHELLO_BODY_BYTES],
            started: now,
            accepted: 0,
            requests_written: 0,
            closes: Vec::new(),
            codes: BTreeMap::new(),
            errors: 0,
            reasons: BTreeMap::new(),
            cap_reached: None,
        })
    }

    /// Opens every connection and runs the loop until `duration` after the first
    /// connect.
    fn run(&mut self, duration: Duration, rss: &RssSampler) -> Result<(), BenchError> {
        self.started = Instant::now();
        let deadline = self.started + duration;
        let mut next = 0;
        let mut last_report = self.started;
        while Instant::now() < deadline {
            interrupt::check()?;
            let now = Instant::now();
            let end = (next + CONNECTS_PER_TURN).min(self.conns.len());
            for slot in next..end {
                self.open(slot, now);
            }
            next = end;
            self.turn()?;
            self.expire_handshakes(Instant::now());
            if rss.peak() > self.plan.max_server_rss {
                let at = self.started.elapsed().as_secs_f64();
                self.cap_reached = Some(at);
                println!(
                    "flood: {at:.1}s: natterd's RSS passed --max-server-rss-mib {}; closing every \
                     connection",
                    self.plan.max_server_rss / (1024 * 1024)
                );
                self.conns.clear();
                break;
            }
            if last_report.elapsed() >= Duration::from_secs(1) {
                last_report = Instant::now();
                println!(
                    "flood: {:.0}s: {} accepted, {} requests written, {} closed by natterd",
                    self.started.elapsed().as_secs_f64(),
                    self.accepted,
                    self.requests_written,
                    self.closes.len()
                );
            }
        }
        Ok(())
    }

    /// Starts connecting slot `slot`.
    fn open(&mut self, slot: usize, now: Instant) {
        let stream = match self.dial.open(&mut self.sources) {
            Ok(stream) => stream,
            Err(e) => return self.fail(slot, e),
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        conn.stream = Some(stream);
        conn.state = State::Connecting;
        conn.since = now;
        let registered = conn.stream.as_mut().map(|stream| {
            self.poll.registry().register(
                stream.source(),
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
        });
        if let Some(Err(e)) = registered {
            self.fail(slot, format!("register: {e}"));
        }
    }

    /// One `poll` and the handling of its events.
    fn turn(&mut self) -> Result<(), BenchError> {
        // QUIC connections have timers of their own (acknowledgements, loss
        // detection, idle): wake for the earliest and serve those that are due.
        let quic_due = self
            .conns
            .iter_mut()
            .filter_map(|c| c.stream.as_mut().and_then(ClientStream::next_timeout))
            .min();
        let wait = quic_due.map_or(MAX_POLL_WAIT, |due| {
            MAX_POLL_WAIT.min(due.saturating_duration_since(Instant::now()))
        });
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let mut ready: Vec<(usize, bool)> = self
            .events
            .iter()
            .map(|e| (e.token().0, e.is_read_closed() || e.is_error()))
            .collect();
        if quic_due.is_some() {
            let now = Instant::now();
            for (slot, conn) in self.conns.iter_mut().enumerate() {
                if conn
                    .stream
                    .as_mut()
                    .and_then(ClientStream::next_timeout)
                    .is_some_and(|t| t <= now)
                {
                    ready.push((slot, false));
                }
            }
            ready.sort_unstable();
            ready.dedup_by_key(|(slot, _)| *slot);
        }
        for (slot, closed) in ready {
            if let Err(reason) = self.on_ready(slot, closed) {
                self.fail(slot, reason);
            }
        }
        Ok(())
    }

    /// Handles readiness of slot `slot`; `closed` when natterd closed or reset it.
    fn on_ready(&mut self, slot: usize, closed: bool) -> Result<(), String> {
        let Some(state) = self.conns.get(slot).map(|c| c.state) else {
            return Ok(());
        };
        match state {
            State::Idle | State::Done => return Ok(()),
            State::Connecting => self.on_connected(slot)?,
            State::AwaitingWelcome => self.read_welcome(slot)?,
            State::Flooding | State::Silent => {}
        }
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        // QUIC: take the datagrams and timers (ACKs, natterd's CONNECTION_CLOSE)
        // without reading the stream; a TCP socket's close shows as an event.
        let mut closed = closed;
        if matches!(conn.state, State::Flooding | State::Silent)
            && let Some(stream) = conn.stream.as_mut()
        {
            stream.flush_buffered().map_err(|e| format!("write: {e}"))?;
            closed |= stream.closed();
        }
        let state = conn.state;
        if closed && matches!(state, State::Flooding | State::Silent) {
            self.closed_by_server(slot);
            return Ok(());
        }
        self.write_some(slot)
    }

    /// The TCP connect finished (or failed).
    fn on_connected(&mut self, slot: usize) -> Result<(), String> {
        let kind = self.plan.kind;
        let token = self.tokens.get(slot).cloned();
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        let Some(stream) = conn.stream.as_mut() else {
            return Ok(());
        };
        if !stream.connected().map_err(|e| format!("connect: {e}"))? {
            return Ok(());
        }
        if kind == FloodKind::Prehello {
            conn.outbuf.extend_from_slice(&PREHELLO_FRAME_LEN.to_le_bytes());
            conn.body_left = PREHELLO_BODY_BYTES;
            conn.state = State::Flooding;
            self.accepted += 1;
        } else {
            let hello = Frame::new(
                1,
                Body::Hello(Hello {
                    token: token.unwrap_or_default(),
                    device: "natter-bench flood".into(),
                    protocol_version: PROTOCOL_VERSION,
                    sync_first: false,
                    conversation: false,
                }),
            );
            conn.outbuf.extend_from_slice(&hello.encode());
            conn.state = State::AwaitingWelcome;
        }
        Ok(())
    }

    /// Reads until `Welcome` (then queues the flood) or an `Error` (then gives up).
    fn read_welcome(&mut self, slot: usize) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        let Some(stream) = conn.stream.as_mut() else {
            return Ok(());
        };
        let ended = loop {
            match stream.read(&mut self.scratch) {
                Ok(0) => break true,
                Ok(n) => conn
                    .inbuf
                    .extend_from_slice(self.scratch.get(..n).unwrap_or_default()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        };
        while let Some(bytes) = self
            .decoder
            .split(&mut conn.inbuf)
            .map_err(|e| format!("bad frame: {e}"))?
        {
            let frame =
                Frame::decode(&bytes, self.decoder.limits()).map_err(|e| format!("bad frame: {e}"))?;
            match frame.body {
                Body::Welcome(_) => {
                    self.accepted += 1;
                    conn.state = State::Flooding;
                    conn.outbuf.extend_from_slice(&self.requests);
                    self.requests_written += self.plan.requests as u64;
                    // Whatever follows the Welcome is never read.
                    conn.inbuf = BytesMut::new();
                    return Ok(());
                }
                Body::Error(e) => {
                    let name = ErrorCode::from_u16(e.code)
                        .map_or_else(|| format!("code {}", e.code), |c| c.name().to_owned());
                    *self.codes.entry(name).or_default() += 1;
                    conn.state = State::Done;
                    conn.stream = None;
                    return Ok(());
                }
                _ => {}
            }
        }
        if ended {
            return Err("closed before Welcome".into());
        }
        Ok(())
    }

    /// Writes queued bytes (and, prehello, the body) until the socket would block.
    fn write_some(&mut self, slot: usize) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        if !matches!(conn.state, State::AwaitingWelcome | State::Flooding) {
            return Ok(());
        }
        let Some(stream) = conn.stream.as_mut() else {
            return Ok(());
        };
        loop {
            let chunk: &[u8] = if !conn.outbuf.is_empty() {
                &conn.outbuf
            } else if conn.body_left > 0 {
                self.zeros.get(..conn.body_left).unwrap_or_default()
            } else {
                break;
            };
            match stream.write(chunk) {
                Ok(0) => return Err("write: socket closed".into()),
                Ok(n) if !conn.outbuf.is_empty() => conn.outbuf.advance(n),
                Ok(n) => conn.body_left = conn.body_left.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return stream.flush_buffered().map_err(|e| format!("write: {e}"));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_reset(&e) && conn.state == State::Flooding => {
                    self.closed_by_server(slot);
                    return Ok(());
                }
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        stream.flush_buffered().map_err(|e| format!("write: {e}"))?;
        if conn.state == State::Flooding {
            conn.state = State::Silent;
        }
        Ok(())
    }

    /// natterd closed or reset slot `slot`: count and time it, then drop the socket.
    fn closed_by_server(&mut self, slot: usize) {
        let at = self.started.elapsed().as_secs_f64();
        if let Some(conn) = self.conns.get_mut(slot)
            && conn.state != State::Done
        {
            conn.state = State::Done;
            conn.stream = None;
            conn.outbuf = BytesMut::new();
            self.closes.push(at);
        }
    }

    /// Handshakes older than [`HANDSHAKE_TIMEOUT`] fail.
    fn expire_handshakes(&mut self, now: Instant) {
        let late: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                matches!(c.state, State::Connecting | State::AwaitingWelcome)
                    && now.duration_since(c.since) > HANDSHAKE_TIMEOUT
            })
            .map(|(slot, _)| slot)
            .collect();
        for slot in late {
            self.fail(slot, format!("no Welcome within {HANDSHAKE_TIMEOUT:?}"));
        }
    }

    /// Slot `slot` failed locally (or before it was accepted).
    fn fail(&mut self, slot: usize, reason: String) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.state = State::Done;
            conn.stream = None;
        }
        self.errors += 1;
        *self.reasons.entry(reason).or_default() += 1;
    }
}

/// Whether a write failed because the peer reset or closed the connection.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: FloodKind) -> FloodArgs {
        FloodArgs {
            kind,
            requests: 400,
            max_server_rss_mib: 4096,
        }
    }

    #[test]
    fn connections_default_per_kind_and_are_checked() {
        let plan = check_args(&args(FloodKind::History), None, 20_000).unwrap();
        assert_eq!((plan.connections, plan.requests), (100, 400));
        let plan = check_args(&args(FloodKind::Prehello), None, 20_000).unwrap();
        assert_eq!((plan.connections, plan.requests), (5_000, 0));
        let plan = check_args(&args(FloodKind::Sync), Some(7), 20_000).unwrap();
        assert_eq!(plan.connections, 7);
        assert!(check_args(&args(FloodKind::Sync), Some(0), 20_000).is_err());
        assert!(check_args(&args(FloodKind::Prehello), Some(19_950), 20_000).is_err());
        let none = FloodArgs {
            requests: 0,
            ..args(FloodKind::History)
        };
        assert!(check_args(&none, None, 20_000).is_err());
    }

    #[test]
    fn request_frames_are_pipelined_valid_frames() {
        for kind in [FloodKind::History, FloodKind::Sync] {
            let bytes = request_frames(kind, 9, 5);
            let mut buf = BytesMut::from(&bytes[..]);
            let decoder = FrameDecoder::new(Limits::default());
            let mut ids = Vec::new();
            while let Some(frame) = decoder.split(&mut buf).unwrap() {
                let frame = Frame::decode(&frame, decoder.limits()).unwrap();
                match (&frame.body, kind) {
                    (Body::History(h), FloodKind::History) => {
                        assert_eq!((h.chat_id, h.before_seq, h.limit), (9, 0, HISTORY_LIMIT));
                    }
                    (Body::Sync(s), FloodKind::Sync) => {
                        assert_eq!(s.cursors, vec![Cursor { chat_id: 9, seq: 0 }])
                    }
                    other => panic!("unexpected {other:?}"),
                }
                ids.push(frame.request_id);
            }
            assert_eq!(ids, [2, 3, 4, 5, 6]);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn the_prehello_frame_is_legal_and_never_completed() {
        assert_eq!(PREHELLO_FRAME_LEN as usize + 4, Limits::default().max_frame);
        assert!(PREHELLO_BODY_BYTES < PREHELLO_FRAME_LEN as usize);
    }

    #[test]
    fn closes_are_bucketed_per_second() {
        assert_eq!(max_per_second(&[]), 0);
        assert_eq!(max_per_second(&[10.1, 10.2, 10.9, 11.0, 3.0]), 3);
    }

    #[test]
    fn the_stored_texts_are_the_largest_legal_ones() {
        let text: String = std::iter::repeat_n(TEXT_CHAR, TEXT_CHARS).collect();
        assert_eq!(text.chars().count(), 100_000);
        assert_eq!(text.len(), 300_000);
    }
}
