//! The side-port's transport: HTTP/1.1 over TCP, one mio I/O thread plus a pool
//! of worker threads that run [`Api::handle`].
//!
//! Requests are parsed with `httparse`; this file only frames them. Everything is
//! bounded, because the port faces the same clients as the chat listeners:
//!
//! * at most [`MAX_CONNECTIONS`] connections, at most
//!   [`SidePortLimits::per_address`] from one address (IPv6: one /64); past
//!   the per-address cap a connection is answered 503 and closed; when every
//!   slot is taken, the idle connection heard from least recently is closed
//!   to make room, so that a flood of idle sockets cannot keep an honest
//!   client out (503 only when no connection is idle);
//! * under pressure (3/4 of the slots taken) idle and partial-request
//!   connections get [`SidePortLimits::pressure_timeout`] instead of
//!   [`IDLE_TIMEOUT`] and [`REQUEST_TIMEOUT`];
//! * `accept` never stalls for lack of a descriptor ([`crate::fdreserve`]);
//! * request head at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] headers (431);
//! * body at most [`MAX_BODY`] bytes, refused from `Content-Length` alone before
//!   any of it is read (413); bodies need a `Content-Length` (411 otherwise);
//! * a request must arrive within [`REQUEST_TIMEOUT`], an idle keep-alive
//!   connection is closed after [`IDLE_TIMEOUT`], a response must drain within
//!   [`WRITE_TIMEOUT`] — so slow clients cost a slot, never a thread;
//! * a connection closed by the server first sends its answer, shuts down its
//!   write side and drains unread input for a while ([`LINGER`]), so the client
//!   reads the answer instead of a reset;
//! * at most [`QUEUE_PER_WORKER`] × workers requests wait for a worker (503 beyond);
//!   signup and login (which hash a password) have their own workers and
//!   queue, so health checks, friends and chats never wait behind hashing.
//!
//! Only the worker threads block (argon2, fsync); the I/O thread never does.
//! A connection has at most one request in a worker at a time, and its next
//! (pipelined) request is parsed only after the previous answer was queued, so
//! answers go out in order.
//!
//! Shutdown ([`HttpServer::shutdown`]): stop accepting, close idle connections,
//! let requests already in a worker finish and be written for up to
//! [`SHUTDOWN_GRACE`], then stop the workers and join every thread.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::fdreserve::FdReserve;
use crate::http::api::{Api, Request, Response};
use crate::http::error::HttpError;

/// Most simultaneous side-port connections. The port serves signup, login and
/// friends, not real-time traffic; 1024 keep-alive clients is plenty and caps
/// memory at ~1024 × (80 KiB buffer worst case).
pub const MAX_CONNECTIONS: usize = 1024;
/// Largest request line plus headers, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 64;
/// Largest request body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;
/// Time from a request's first byte to its last.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Time for a response to be taken by the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests waiting for a worker, per worker, before new ones get 503: with
/// argon2 at ~26 ms a hash, 32 per worker is under a second of queue.
pub const QUEUE_PER_WORKER: usize = 32;
/// How long shutdown waits for requests already being handled.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a connection that is being closed drains unread input.
pub const LINGER: Duration = Duration::from_secs(2);
/// Most unread input drained from a closing connection.
pub const LINGER_MAX_BYTES: usize = 1 << 20;
/// Bytes read from a socket per `read` call.
const READ_CHUNK: usize = 8 * 1024;
/// Connections accepted per listener event before the loop turns to other work.
const ACCEPTS_PER_TURN: usize = 256;
/// How often deadlines are checked (and a failed `accept` retried).
const TICK: Duration = Duration::from_millis(250);

/// Slots taken (of [`MAX_CONNECTIONS`]) from which the side-port is under
/// pressure and idle connections get the short timeout: three quarters.
const PRESSURE_AT: usize = MAX_CONNECTIONS / 4 * 3;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// A running side-port; [`HttpServer::shutdown`] stops it.
#[derive(Debug)]
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    io: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

/// The side-port's limits against connection floods (`--http-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SidePortLimits {
    /// Most connections from one address (IPv6: one /64).
    pub per_address: usize,
    /// Idle and header timeout once [`PRESSURE_AT`] slots are taken.
    pub pressure_timeout: Duration,
}

impl SidePortLimits {
    /// natterd's defaults: 64 connections per address, 2 s under pressure.
    pub const DEFAULT: Self = Self {
        per_address: 64,
        pressure_timeout: Duration::from_secs(2),
    };
}

/// Serves `api` on `listener` (already bound) with `workers` handler threads
/// (plus as many again, at least 2, for signup and login), with the default
/// [`SidePortLimits`].
///
/// # Errors
/// Creating the poll, registering the listener or spawning a thread failed.
pub fn start(listener: std::net::TcpListener, api: Arc<Api>, workers: usize) -> io::Result<HttpServer> {
    start_limited(listener, api, workers, SidePortLimits::DEFAULT)
}

/// [`start`] with `limits`.
///
/// # Errors
/// Creating the poll, registering the listener or spawning a thread failed.
pub fn start_limited(
    listener: std::net::TcpListener,
    api: Arc<Api>,
    workers: usize,
    limits: SidePortLimits,
) -> io::Result<HttpServer> {
    start_with(listener, api, workers, Timeouts::DEFAULT, limits)
}

/// A connection's time limits: the consts in natterd; shorter in tests, so that
/// the limits can be attacked without waiting for them.
#[derive(Clone, Copy, Debug)]
struct Timeouts {
    /// [`REQUEST_TIMEOUT`].
    request: Duration,
    /// [`IDLE_TIMEOUT`].
    idle: Duration,
    /// [`WRITE_TIMEOUT`].
    write: Duration,
}

impl Timeouts {
    const DEFAULT: Self = Self {
        request: REQUEST_TIMEOUT,
        idle: IDLE_TIMEOUT,
        write: WRITE_TIMEOUT,
    };
}

fn start_with(
    listener: std::net::TcpListener,
    api: Arc<Api>,
    workers: usize,
    timeouts: Timeouts,
    limits: SidePortLimits,
) -> io::Result<HttpServer> {
    let workers = workers.max(1);
    let auth_workers = (workers / 2).max(2);
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let mut listener = TcpListener::from_std(listener);
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(workers * QUEUE_PER_WORKER);
    let (auth_tx, auth_rx) = crossbeam_channel::bounded::<Job>(auth_workers * QUEUE_PER_WORKER);
    // Unbounded, but each connection has at most one job in flight, so it never
    // holds more than MAX_CONNECTIONS answers.
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<Done>();

    let mut handles = Vec::with_capacity(workers + auth_workers);
    let pools = [
        ("natter-http", workers, &job_rx),
        ("natter-auth", auth_workers, &auth_rx),
    ];
    for (name, count, rx) in pools {
        for i in 0..count {
            let (api, jobs, done, waker) = (api.clone(), rx.clone(), done_tx.clone(), waker.clone());
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || worker(&api, &jobs, &done, &waker))?,
            );
        }
    }
    drop((job_rx, auth_rx, done_tx));

    let io_loop = IoLoop {
        poll,
        listener: Some(listener),
        conns: Slab::new(),
        done: done_rx,
        ctx: Ctx {
            timeouts,
            jobs: job_tx,
            auth_jobs: auth_tx,
            stop: stop.clone(),
            api,
            pressure: false,
            pressure_timeout: limits.pressure_timeout,
        },
        next_serial: 0,
        accept_paused: false,
        per_address: HashMap::new(),
        limits,
        reserve: FdReserve::new(),
    };
    let io = std::thread::Builder::new()
        .name("natter-http-io".into())
        .spawn(move || io_loop.run())?;
    tracing::info!(addr = %local_addr, workers, auth_workers, "HTTP side-port listening");
    Ok(HttpServer {
        local_addr,
        stop,
        waker,
        io: Some(io),
        workers: handles,
    })
}

impl HttpServer {
    /// The address the side-port listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, finishes requests in progress (up to [`SHUTDOWN_GRACE`]),
    /// and joins every thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// A parsed request on its way to a worker.
struct Job {
    conn: usize,
    serial: u64,
    method: String,
    path: String,
    authorization: Option<String>,
    body: Vec<u8>,
    remote: IpAddr,
    close: bool,
}

/// A worker's encoded answer on its way back to the I/O thread.
struct Done {
    conn: usize,
    serial: u64,
    bytes: Vec<u8>,
    close: bool,
}

fn worker(api: &Api, jobs: &Receiver<Job>, done: &Sender<Done>, waker: &Waker) {
    while let Ok(job) = jobs.recv() {
        let req = Request {
            method: &job.method,
            path: &job.path,
            authorization: job.authorization.as_deref(),
            body: &job.body,
            remote: job.remote,
        };
        // `handle` does not panic by design; if a bug makes it, answer 500 and keep the worker.
        let response = catch_unwind(AssertUnwindSafe(|| api.handle(&req))).unwrap_or_else(|_| {
            tracing::error!(method = %job.method, path = %job.path, "HTTP handler panicked");
            Response::error(HttpError::Internal)
        });
        api.metrics().http.record(response.status);
        let bytes = encode(&response, job.close);
        if done
            .send(Done {
                conn: job.conn,
                serial: job.serial,
                bytes,
                close: job.close,
            })
            .is_ok()
        {
            let _ = waker.wake();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading (or parsing buffered bytes of) the next request.
    Reading,
    /// A worker has the request; nothing is read meanwhile.
    Dispatched,
    /// The last answer is being written; then the connection lingers.
    Closing,
    /// The answer is out and our side is shut down; unread input is drained
    /// (at most [`LINGER_MAX_BYTES`], for at most [`LINGER`]) before closing, so
    /// that closing with unread data does not reset the connection and destroy
    /// the answer before the client reads it (e.g. a 413 sent before the body).
    Draining,
}

struct Conn {
    stream: TcpStream,
    /// Distinguishes this connection from a later one in the same slab slot.
    serial: u64,
    peer: IpAddr,
    /// The key `peer` is counted under for the per-address cap.
    group: IpAddr,
    /// Received bytes not yet consumed by a request.
    buf: Vec<u8>,
    /// Encoded answer being written, and how much of it is out.
    out: Vec<u8>,
    out_pos: usize,
    state: State,
    /// `100 Continue` already sent for the request being read.
    continued: bool,
    /// Bytes thrown away while draining.
    drained: usize,
    /// When the connection times out, if it can in its current state.
    deadline: Option<Instant>,
}

impl Conn {
    /// Waiting for a request that has not begun: nothing buffered, nothing
    /// being written, no request at a worker.
    fn is_idle(&self) -> bool {
        self.state == State::Reading && self.buf.is_empty() && self.out.is_empty()
    }
}

/// What the bytes in a connection's buffer amount to.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// More bytes are needed; `expect_continue` when the head is complete and
    /// asked for `100 Continue`.
    Partial { expect_continue: bool },
    /// A complete request occupying `consumed` bytes.
    Complete { head: Head, consumed: usize },
    /// The request is refused; the connection closes after the answer.
    Refused(HttpError),
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    path: String,
    authorization: Option<String>,
    body: std::ops::Range<usize>,
    close: bool,
}

/// Parses the request at the front of `buf`, enforcing the size limits.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(HttpError::HeadersTooLarge);
        }
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Parsed::Refused(HttpError::HeadersTooLarge);
        }
        Ok(httparse::Status::Partial) => {
            return Parsed::Partial {
                expect_continue: false,
            };
        }
        Err(_) => return Parsed::Refused(HttpError::BadRequest),
    };
    let mut content_length: Option<usize> = None;
    let mut close = req.version != Some(1);
    let mut expect_continue = false;
    let mut authorization = None;
    for h in req.headers.iter() {
        let value = h.value;
        if h.name.eq_ignore_ascii_case("content-length") {
            let Some(n) = parse_length(value) else {
                return Parsed::Refused(HttpError::BadRequest);
            };
            if content_length.is_some_and(|m| m != n) {
                return Parsed::Refused(HttpError::BadRequest);
            }
            content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Refused(HttpError::LengthRequired);
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if h.name.eq_ignore_ascii_case("authorization") && authorization.is_none() {
            // A non-UTF-8 value is treated as absent: it cannot be a valid token.
            authorization = std::str::from_utf8(value).ok().map(str::to_owned);
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY {
        return Parsed::Refused(HttpError::BodyTooLarge);
    }
    let end = head_len + body_len;
    if buf.len() < end {
        return Parsed::Partial { expect_continue };
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Refused(HttpError::BadRequest);
    };
    Parsed::Complete {
        head: Head {
            method: method.to_owned(),
            path: path.to_owned(),
            authorization,
            body: head_len..end,
            close,
        },
        consumed: end,
    }
}

/// A `Content-Length` value: decimal digits only (no sign, no spaces inside),
/// saturating so that an absurd length is still "too large", never an overflow.
fn parse_length(value: &[u8]) -> Option<usize> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0usize, |n, d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    }))
}

/// Headers of the web page (`text/html`): its scripts, styles and images come only from the
/// side-port itself (no inline script, no `eval`), it may talk to the side-port and to any
/// WebSocket endpoint (`/v1/endpoints` may name another host or port), and no other site may frame
/// it or learn its URL from a referrer. The page's favicon is a `data:` URL.
const PAGE_POLICY: &str = "Content-Security-Policy: default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; \
form-action 'self'; frame-ancestors 'none'\r\nReferrer-Policy: no-referrer\r\n";

/// Serialises a response as HTTP/1.1.
fn encode(response: &Response, close: bool) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    if response.status != 204 {
        let _ = write!(
            head,
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            response.content_type,
            response.body.len()
        );
    }
    if let Some(allow) = response.allow {
        let _ = write!(head, "Allow: {allow}\r\n");
    }
    if let Some(seconds) = response.retry_after {
        let _ = write!(head, "Retry-After: {seconds}\r\n");
    }
    head.push_str("Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n");
    if response.content_type.starts_with("text/html") {
        head.push_str(PAGE_POLICY);
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    if response.status != 204 {
        bytes.extend_from_slice(response.body.as_bytes());
    }
    bytes
}

/// The reason phrase of every status the side-port sends (RFC 9110, section 15).
/// A status missing here gets an empty phrase (which HTTP/1.1 allows), never a
/// made-up one; `every_status_sent_has_its_reason_phrase` checks the list is complete.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// What a connection step needs besides the connection itself.
struct Ctx {
    timeouts: Timeouts,
    jobs: Sender<Job>,
    /// Signup and login: their own workers, so hashing never delays the rest.
    auth_jobs: Sender<Job>,
    stop: Arc<AtomicBool>,
    api: Arc<Api>,
    /// At least [`PRESSURE_AT`] connections are open: idle and partial
    /// requests get `pressure_timeout`.
    pressure: bool,
    pressure_timeout: Duration,
}

impl Ctx {
    /// How long a connection may sit idle, shortened under pressure.
    fn idle(&self) -> Duration {
        if self.pressure {
            self.timeouts.idle.min(self.pressure_timeout)
        } else {
            self.timeouts.idle
        }
    }

    /// How long a request may take to arrive, shortened under pressure.
    fn request(&self) -> Duration {
        if self.pressure {
            self.timeouts.request.min(self.pressure_timeout)
        } else {
            self.timeouts.request
        }
    }
}

/// The I/O thread's state.
struct IoLoop {
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    done: Receiver<Done>,
    ctx: Ctx,
    next_serial: u64,
    /// `accept` failed (e.g. out of file descriptors): retried on the next tick.
    accept_paused: bool,
    /// Open connections by address group (`ratelimit::group`); no zero entries.
    per_address: HashMap<IpAddr, usize>,
    limits: SidePortLimits,
    /// The spare descriptor for accepting when out of them.
    reserve: FdReserve,
}

impl IoLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut stopping: Option<Instant> = None;
        let mut next_tick = Instant::now() + TICK;
        loop {
            if let Err(e) = self.poll.poll(&mut events, Some(TICK))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(error = %e, "HTTP poll failed; side-port stops");
                break;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(key) => self.drive(key),
                }
            }
            self.collect_done();

            let now = Instant::now();
            if stopping.is_none() && self.ctx.stop.load(Ordering::Acquire) {
                stopping = Some(now + SHUTDOWN_GRACE);
                self.begin_shutdown();
            }
            if let Some(deadline) = stopping {
                let busy = self
                    .conns
                    .iter()
                    .any(|(_, c)| c.state == State::Dispatched || !c.out.is_empty());
                if !busy || now >= deadline {
                    break;
                }
            }
            if now >= next_tick {
                next_tick = now + TICK;
                self.expire(now);
                if self.accept_paused {
                    self.accept();
                }
            }
        }
        // Dropping `jobs` (with `self`) lets the workers finish and exit.
        tracing::info!("HTTP side-port stopped");
    }

    fn accept(&mut self) {
        self.accept_paused = false;
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = &self.listener else { return };
            let (mut stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if FdReserve::is_out_of_fds(&e) => {
                    if self.reserve.shed(|| listener.accept()) {
                        continue;
                    }
                    self.accept_paused = true;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed; retrying shortly");
                    self.accept_paused = true;
                    return;
                }
            };
            let group = crate::http::ratelimit::group(peer.ip());
            let from_peer = self.per_address.get(&group).copied().unwrap_or(0);
            if from_peer >= self.limits.per_address
                || (self.conns.len() >= MAX_CONNECTIONS && !self.evict_idle())
            {
                // Best effort: a tiny answer fits the socket buffer; then close.
                let refusal = Response {
                    retry_after: Some(1),
                    ..Response::error(HttpError::Unavailable)
                };
                let _ = stream.write(&encode(&refusal, true));
                self.ctx
                    .api
                    .metrics()
                    .http
                    .record(HttpError::Unavailable.status());
                continue;
            }
            let _ = stream.set_nodelay(true);
            self.ctx.pressure = self.conns.len() + 1 >= PRESSURE_AT;
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(error = %e, "cannot register HTTP connection");
                continue;
            }
            self.next_serial += 1;
            *self.per_address.entry(group).or_insert(0) += 1;
            entry.insert(Conn {
                stream,
                serial: self.next_serial,
                peer: peer.ip(),
                group,
                buf: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                state: State::Reading,
                continued: false,
                drained: 0,
                deadline: Some(Instant::now() + self.ctx.idle()),
            });
        }
        // Budget used up with connections possibly left in the backlog: the
        // listener is edge-triggered, so look again on the next tick.
        self.accept_paused = true;
    }

    fn collect_done(&mut self) {
        while let Ok(done) = self.done.try_recv() {
            let Some(conn) = self.conns.get_mut(done.conn) else {
                continue;
            };
            if conn.serial != done.serial || conn.state != State::Dispatched {
                continue;
            }
            conn.out = done.bytes;
            conn.out_pos = 0;
            conn.state = if done.close {
                State::Closing
            } else {
                State::Reading
            };
            conn.deadline = Some(Instant::now() + self.ctx.timeouts.write);
            self.drive(done.conn);
        }
    }

    /// Moves connection `key` as far as it can go without blocking.
    fn drive(&mut self, key: usize) {
        let open = match self.conns.get_mut(key) {
            Some(conn) => self.ctx.step(conn, key),
            None => return,
        };
        if !open {
            self.close(key);
        }
    }

    fn close(&mut self, key: usize) {
        if let Some(mut conn) = self.conns.try_remove(key) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
            if let Some(n) = self.per_address.get_mut(&conn.group) {
                *n -= 1;
                if *n == 0 {
                    self.per_address.remove(&conn.group);
                }
            }
            self.ctx.pressure = self.conns.len() >= PRESSURE_AT;
        }
    }

    /// Closes the idle connection (no request in progress, nothing buffered
    /// or being written) whose deadline comes first — the one heard from
    /// least recently — to make room for a new one. False when none is idle.
    fn evict_idle(&mut self) -> bool {
        let oldest = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_idle())
            .min_by_key(|(_, c)| c.deadline)
            .map(|(key, _)| key);
        match oldest {
            Some(key) => {
                self.close(key);
                true
            }
            None => false,
        }
    }

    fn expire(&mut self, now: Instant) {
        if self.ctx.pressure {
            // Under pressure the short timeout applies to connections already
            // open too, not only to those accepted from now on.
            let cut = now + self.ctx.pressure_timeout;
            for (_, c) in self.conns.iter_mut() {
                if c.state == State::Reading && c.out.is_empty() && c.deadline.is_some_and(|d| d > cut) {
                    c.deadline = Some(cut);
                }
            }
        }
        let expired: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| now >= d))
            .map(|(key, _)| key)
            .collect();
        for key in expired {
            self.close(key);
        }
    }

    /// Stops accepting and closes every connection that has nothing in progress.
    fn begin_shutdown(&mut self) {
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.state != State::Dispatched && c.out.is_empty())
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.close(key);
        }
    }
}

/// Reads and discards input of a closing connection; false when it may close.
fn drain(conn: &mut Conn) -> bool {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                conn.drained += n;
                if conn.drained > LINGER_MAX_BYTES {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

impl Ctx {
    /// Moves one connection as far as it can go without blocking; returns false
    /// when the connection is finished.
    fn step(&self, conn: &mut Conn, key: usize) -> bool {
        loop {
            // 1. Write what is pending.
            while conn.out_pos < conn.out.len() {
                match conn
                    .stream
                    .write(conn.out.get(conn.out_pos..).unwrap_or_default())
                {
                    Ok(0) => return false,
                    Ok(n) => conn.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return false,
                }
            }
            if !conn.out.is_empty() {
                conn.out.clear();
                conn.out_pos = 0;
                conn.deadline = Some(Instant::now() + self.idle());
            }
            match conn.state {
                State::Closing => {
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                    conn.state = State::Draining;
                    conn.buf = Vec::new();
                    conn.deadline = Some(Instant::now() + LINGER);
                    continue;
                }
                State::Draining => return drain(conn),
                State::Dispatched => return true,
                State::Reading => {}
            }
            if self.stop.load(Ordering::Acquire) {
                return false;
            }
            // 2. Parse what is buffered.
            if !conn.buf.is_empty() {
                match parse(&conn.buf) {
                    Parsed::Complete { head, consumed } => {
                        self.dispatch(conn, key, head, consumed);
                        continue;
                    }
                    Parsed::Refused(error) => {
                        self.api.metrics().http.record(error.status());
                        conn.out = encode(&Response::error(error), true);
                        conn.state = State::Closing;
                        conn.deadline = Some(Instant::now() + self.timeouts.write);
                        continue;
                    }
                    Parsed::Partial { expect_continue } => {
                        if expect_continue && !conn.continued {
                            conn.continued = true;
                            conn.out = format!("HTTP/1.1 100 {}\r\n\r\n", reason(100)).into_bytes();
                            continue;
                        }
                    }
                }
            }
            // 3. Read more.
            let mut chunk = [0u8; READ_CHUNK];
            match conn.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    if conn.buf.is_empty() {
                        conn.deadline = Some(Instant::now() + self.request());
                    }
                    conn.buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    /// Hands a complete request to a worker (or answers 503 when they are all busy).
    fn dispatch(&self, conn: &mut Conn, key: usize, head: Head, consumed: usize) {
        let body = conn.buf.get(head.body.clone()).unwrap_or_default().to_vec();
        conn.buf.drain(..consumed.min(conn.buf.len()));
        if conn.buf.capacity() > MAX_HEAD {
            // Do not keep a large body's buffer for the life of a keep-alive connection.
            conn.buf.shrink_to(MAX_HEAD.min(conn.buf.len().max(READ_CHUNK)));
        }
        conn.continued = false;
        let job = Job {
            conn: key,
            serial: conn.serial,
            method: head.method,
            path: head.path,
            authorization: head.authorization,
            body,
            remote: conn.peer,
            close: head.close,
        };
        let queue = if crate::http::api::hashes_password(&job.path) {
            &self.auth_jobs
        } else {
            &self.jobs
        };
        match queue.try_send(job) {
            Ok(()) => {
                conn.state = State::Dispatched;
                conn.deadline = None;
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.api.metrics().http.record(HttpError::Unavailable.status());
                let busy = Response {
                    retry_after: Some(1),
                    ..Response::error(HttpError::Unavailable)
                };
                conn.out = encode(&busy, true);
                conn.state = State::Closing;
                conn.deadline = Some(Instant::now() + self.timeouts.write);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Head, usize) {
        match parse(buf) {
            Parsed::Complete { head, consumed } => (head, consumed),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_requests_with_and_without_bodies() {
        let (head, used) = complete(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /next");
        assert_eq!(
            (head.method.as_str(), head.path.as_str(), head.close),
            ("GET", "/healthz", false)
        );
        assert_eq!(used, 34);
        let req = b"POST /v1/signup HTTP/1.1\r\ncontent-length: 2\r\nAuthorization: Bearer t\r\n\r\n{}";
        let (head, used) = complete(req);
        assert_eq!(&req[head.body.clone()], b"{}");
        assert_eq!(used, req.len());
        assert_eq!(head.authorization.as_deref(), Some("Bearer t"));
        let (head, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(head.close, "HTTP/1.0 closes");
        let (head, _) = complete(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(head.close);
    }

    #[test]
    fn partial_input_waits_and_limits_refuse() {
        assert_eq!(
            parse(b"GET / HT"),
            Parsed::Partial {
                expect_continue: false
            }
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Parsed::Partial {
                expect_continue: false
            }
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"),
            Parsed::Partial {
                expect_continue: true
            }
        );
        let refused = |buf: &[u8]| match parse(buf) {
            Parsed::Refused(e) => e,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
            HttpError::BodyTooLarge
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999999\r\n\r\n"),
            HttpError::BodyTooLarge
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            HttpError::BadRequest
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            HttpError::BadRequest
        );
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HttpError::LengthRequired
        );
        assert_eq!(refused(b"\x00\x01garbage\r\n\r\n"), HttpError::BadRequest);
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(refused(&long), HttpError::HeadersTooLarge);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(refused(&many), HttpError::HeadersTooLarge);
    }

    /// Sends `request` on a new connection and reads until the server closes it.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(request).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn serves_over_tcp_and_shuts_down_with_idle_connections_open() {
        let h = crate::http::api::tests::harness(30);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = start(listener, h.api.clone(), 2).unwrap();
        let addr = server.local_addr();

        let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with(r#"{"status":"ok"}"#));

        // Expect: 100-continue gets its interim answer, then the real one.
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = br#"{"username":"alice","password":"password1"}"#;
        let head = format!(
            "POST /v1/signup HTTP/1.1\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut interim = [0u8; 25];
        stream.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        stream.write_all(body).unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).unwrap();
        assert!(rest.starts_with("HTTP/1.1 201 Created\r\n"), "{rest}");

        // An idle keep-alive connection does not hold up shutdown.
        let idle = std::net::TcpStream::connect(addr).unwrap();
        let answer = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n");
        assert!(
            answer.contains("natter_http_requests_total{status=\"201\"} 1"),
            "{answer}"
        );
        let started = Instant::now();
        server.shutdown();
        assert!(started.elapsed() < SHUTDOWN_GRACE + Duration::from_secs(1));
        drop(idle);
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "the listener is closed"
        );
    }

    /// Reads one `GET /healthz` answer from a keep-alive connection.
    fn read_healthz(stream: &mut std::net::TcpStream) -> String {
        let mut out = Vec::new();
        let mut chunk = [0u8; 512];
        while !out.ends_with(br#"{"status":"ok"}"#) {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
            out.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(out).unwrap()
    }

    /// `MAX_CONNECTIONS` connections from 16 loopback addresses, each proven open.
    fn fill(addr: SocketAddr) -> Vec<std::net::TcpStream> {
        (0..MAX_CONNECTIONS)
            .map(|i| {
                let source = SocketAddr::from(([127, 0, 1, (i % 16) as u8 + 1], 0));
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
                socket.bind(&source.into()).unwrap();
                socket.connect(&addr.into()).unwrap();
                let mut stream: std::net::TcpStream = socket.into();
                stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                stream.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
                assert!(read_healthz(&mut stream).starts_with("HTTP/1.1 200 OK\r\n"));
                stream
            })
            .collect()
    }

    #[test]
    fn when_full_the_least_recently_active_idle_connection_makes_room() {
        let h = crate::http::api::tests::harness(30);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // No pressure timeout during the test: only eviction may close a connection.
        let limits = SidePortLimits {
            per_address: MAX_CONNECTIONS,
            pressure_timeout: Duration::from_secs(600),
        };
        let server = start_limited(listener, h.api.clone(), 2, limits).unwrap();
        let addr = server.local_addr();
        let mut open = fill(addr);
        // Every slot is taken by an idle keep-alive connection; one more is
        // served, and the idle connection heard from least recently (the
        // first) is closed for it.
        let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        let mut rest = Vec::new();
        let first = open.first_mut().unwrap();
        assert_eq!(
            first.read_to_end(&mut rest).unwrap_or(0),
            0,
            "the oldest idle one was closed"
        );
        // A connection that was active more recently is still served.
        let held = open.last_mut().unwrap();
        held.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        assert!(read_healthz(held).starts_with("HTTP/1.1 200 OK\r\n"));
        drop(open);
        server.shutdown();
    }

    #[test]
    fn one_address_gets_at_most_its_cap_and_others_still_get_in() {
        let h = crate::http::api::tests::harness(30);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let limits = SidePortLimits {
            per_address: 8,
            ..SidePortLimits::DEFAULT
        };
        let server = start_limited(listener, h.api.clone(), 2, limits).unwrap();
        let addr = server.local_addr();
        let connect_from = |last: u8| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket
                .bind(&SocketAddr::from(([127, 0, 2, last], 0)).into())
                .unwrap();
            socket.connect(&addr.into()).unwrap();
            let stream: std::net::TcpStream = socket.into();
            stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            stream
        };
        let mut held: Vec<_> = (0..8)
            .map(|_| {
                let mut s = connect_from(1);
                s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
                assert!(read_healthz(&mut s).starts_with("HTTP/1.1 200 OK\r\n"));
                s
            })
            .collect();
        // The ninth from the same address is refused at once, with Retry-After.
        let mut ninth = connect_from(1);
        let mut answer = String::new();
        ninth.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Retry-After: 1\r\n"), "{answer}");
        // Another address is served.
        let mut other = connect_from(2);
        other.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        assert!(read_healthz(&mut other).starts_with("HTTP/1.1 200 OK\r\n"));
        // A slot freed is a slot for the same address again, once the close is seen.
        drop(held.pop());
        let served = (0..200).any(|_| {
            let mut s = connect_from(1);
            if s.write_all(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
                .is_err()
            {
                return false;
            }
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200 OK\r\n") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
            false
        });
        assert!(served, "the freed slot is counted back");
        drop(held);
        server.shutdown();
    }

    #[test]
    fn under_pressure_idle_connections_get_the_short_timeout() {
        let h = crate::http::api::tests::harness(30);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let limits = SidePortLimits {
            per_address: MAX_CONNECTIONS,
            pressure_timeout: Duration::from_millis(500),
        };
        let server = start_limited(listener, h.api.clone(), 2, limits).unwrap();
        let addr = server.local_addr();
        let started = Instant::now();
        let mut open = fill(addr);
        // Idle for 30 s normally; under pressure each is closed within ~0.5 s.
        let mut rest = Vec::new();
        let last = open.last_mut().unwrap();
        assert_eq!(last.read_to_end(&mut rest).unwrap_or(0), 0);
        assert!(started.elapsed() < IDLE_TIMEOUT, "{:?}", started.elapsed());
        drop(open);
        server.shutdown();
    }

    #[test]
    fn idle_connections_and_slow_requests_are_closed_at_their_deadlines() {
        let h = crate::http::api::tests::harness(30);
        let short = Duration::from_millis(300);
        let long = Duration::from_secs(600);
        let serve = |timeouts| {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            start_with(listener, h.api.clone(), 2, timeouts, SidePortLimits::DEFAULT).unwrap()
        };
        // Closed within the read timeout: only the short limit can have done it.
        let closed_by_server = |stream: &mut std::net::TcpStream| {
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let started = Instant::now();
            let mut rest = Vec::new();
            let result = stream.read_to_end(&mut rest);
            (result.is_ok() && rest.is_empty(), started.elapsed())
        };

        let idle = serve(Timeouts {
            request: long,
            idle: short,
            write: long,
        });
        let mut silent = std::net::TcpStream::connect(idle.local_addr()).unwrap();
        let (closed, after) = closed_by_server(&mut silent);
        assert!(closed && after >= Duration::from_millis(200), "{after:?}");
        let mut kept = std::net::TcpStream::connect(idle.local_addr()).unwrap();
        kept.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").unwrap();
        assert!(read_healthz(&mut kept).starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(closed_by_server(&mut kept).0, "idle after an answer: closed too");
        idle.shutdown();

        let slow = serve(Timeouts {
            request: short,
            idle: long,
            write: long,
        });
        let mut partial = std::net::TcpStream::connect(slow.local_addr()).unwrap();
        partial.write_all(b"GET /healthz HTTP/1.1\r\nHost: x").unwrap();
        assert!(closed_by_server(&mut partial).0, "a request that never completes");
        // A connection that sent nothing is idle, not slow: the long limit applies.
        let mut waiting = std::net::TcpStream::connect(slow.local_addr()).unwrap();
        waiting
            .set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        let mut byte = [0u8; 1];
        let err = waiting.read(&mut byte).unwrap_err();
        assert!(
            matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
            "{err}"
        );
        slow.shutdown();
    }

    #[test]
    fn encodes_responses() {
        let r = Response::error(HttpError::NotFound);
        let text = String::from_utf8(encode(&r, true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", r.body.len())));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with(&r.body));
        let no_content = Response {
            status: 204,
            body: String::new(),
            content_type: "x",
            allow: None,
            retry_after: None,
        };
        let text = String::from_utf8(encode(&no_content, false)).unwrap();
        assert!(!text.contains("Content-Length") && text.ends_with("\r\n\r\n"));
        let limited = Response {
            retry_after: Some(7),
            ..Response::error(HttpError::UserRateLimited)
        };
        let text = String::from_utf8(encode(&limited, false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{text}");
        assert!(text.contains("Retry-After: 7\r\n"), "{text}");
        assert!(text.contains("X-Content-Type-Options: nosniff\r\n"), "{text}");
        assert!(
            !text.contains("Content-Security-Policy"),
            "only the page has a policy: {text}"
        );
        let page = Response {
            status: 200,
            body: "<!doctype html>".into(),
            content_type: "text/html; charset=utf-8",
            allow: None,
            retry_after: None,
        };
        let text = String::from_utf8(encode(&page, false)).unwrap();
        let policy = text
            .lines()
            .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
            .unwrap_or_default();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(directive), "{directive} missing from {policy:?}");
        }
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(text.contains("Referrer-Policy: no-referrer\r\n"), "{text}");
    }

    /// Every status the side-port can send (each error of the catalogue, the
    /// successes, `100 Continue`) goes out with its RFC 9110 reason phrase.
    #[test]
    fn every_status_sent_has_its_reason_phrase() {
        const RFC_9110: &[(u16, &str)] = &[
            (100, "Continue"),
            (200, "OK"),
            (201, "Created"),
            (204, "No Content"),
            (400, "Bad Request"),
            (401, "Unauthorized"),
            (403, "Forbidden"),
            (404, "Not Found"),
            (405, "Method Not Allowed"),
            (409, "Conflict"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (429, "Too Many Requests"),
            (431, "Request Header Fields Too Large"),
            (500, "Internal Server Error"),
            (503, "Service Unavailable"),
            // RFC 4918 §11.5 (not in RFC 9110's table): the disk-reserve refusal.
            (507, "Insufficient Storage"),
        ];
        let expected = |status: u16| {
            RFC_9110
                .iter()
                .find(|(s, _)| *s == status)
                .map(|(_, phrase)| *phrase)
                .unwrap_or_else(|| panic!("status {status} is sent but not in the RFC table"))
        };
        let statuses = HttpError::ALL
            .iter()
            .map(|e| e.status())
            .chain([100, 200, 201, 204]);
        for status in statuses {
            assert_eq!(reason(status), expected(status), "status {status}");
            let response = Response {
                status,
                ..Response::error(HttpError::Internal)
            };
            let text = String::from_utf8(encode(&response, true)).unwrap();
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status} {}\r\n", expected(status))),
                "{text}"
            );
        }
        assert_eq!(reason(403), "Forbidden", "403 no longer says Unknown");
    }
}
