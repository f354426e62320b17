//! [`Proxy`]: a TCP fault proxy for loopback tests (this kernel has no netem).
//! It listens on 127.0.0.1, opens one upstream connection per client
//! connection, and forwards bytes both ways while injecting the faults of its
//! [`Faults`] (changeable while it runs):
//!
//! * **delay and jitter** — every chunk waits `delay ± jitter` before it is
//!   forwarded (per direction, in order: TCP never reorders bytes);
//! * **cut after N bytes** — a connection is closed (both sides) once it has
//!   carried a random number of server-to-client bytes in a range;
//! * **cut after a `SendOk`** — the server-to-client stream is parsed into
//!   size-prefixed frames; after a `SendOk`, with a probability, the proxy
//!   drops that frame and closes the connection, so the client never sees the
//!   acknowledgement and must retry the send (the I2 test);
//! * **blackholes** — with a probability per connection, it goes silent after a
//!   random delay: bytes are swallowed both ways, the sockets stay open (the
//!   client has to notice by its own timeouts).
//!
//! Each connection costs two threads; the proxy is for a few dozen connections.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use natter_wire::{Limits, fb, view};

use crate::rng::Rng;

/// Bytes read from a socket per call.
const CHUNK: usize = 16 * 1024;
/// How long an idle read waits before the pump checks whether to stop.
const POLL: Duration = Duration::from_millis(50);

/// The faults a [`Proxy`] injects; each connection reads them as it goes.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Added to every forwarded chunk.
    pub delay: Duration,
    /// Uniform jitter: each chunk waits `delay + [0, jitter)`.
    pub jitter: Duration,
    /// Close a connection after a random number of server→client bytes in this range.
    pub cut_after_bytes: Option<(u64, u64)>,
    /// Probability (0–1) of dropping a `SendOk` and closing the connection right after it.
    pub cut_after_send_ok: f64,
    /// Probability (0–1) that a connection is blackholed, and the range of its
    /// delay after connect before it goes silent.
    pub blackhole: Option<(f64, Duration, Duration)>,
}

/// What the proxy did, for the scenario's figures.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// Connections cut after N bytes.
    pub cut_bytes: AtomicU64,
    /// `SendOk`s swallowed (each with its connection cut).
    pub cut_send_ok: AtomicU64,
    /// Connections blackholed.
    pub blackholed: AtomicU64,
    /// Bytes forwarded server→client.
    pub down_bytes: AtomicU64,
}

/// A running fault proxy; dropping it stops accepting (open connections end
/// when either side closes).
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    /// Counters.
    pub stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy on 127.0.0.1 (a free port) to `upstream`.
    ///
    /// # Errors
    /// The listener could not be bound.
    pub fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let faults = Arc::new(Mutex::new(faults));
        let stats = Arc::new(ProxyStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s, st) = (faults.clone(), stats.clone(), stop.clone());
        thread::Builder::new()
            .name("chaos-proxy".into())
            .spawn(move || accept_loop(listener, upstream, f, s, st, seed))?;
        Ok(Proxy {
            addr,
            faults,
            stats,
            stop,
        })
    }

    /// Replaces the faults (new connections and chunks see them at once).
    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(PoisonError::into_inner) = faults;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                let conn_seed = rng.next_u64();
                let (f, s, st) = (faults.clone(), stats.clone(), stop.clone());
                let _ = thread::Builder::new()
                    .name("chaos-proxy-conn".into())
                    .spawn(move || connection(client, upstream, f, s, st, conn_seed));
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// What one connection's two pumps share.
struct Link {
    client: TcpStream,
    server: TcpStream,
    closed: AtomicBool,
    /// When set, the connection swallows everything from this instant on.
    blackhole_at: Option<Instant>,
    faults: Arc<Mutex<Faults>>,
    stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
}

impl Link {
    fn faults(&self) -> Faults {
        self.faults.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }

    fn open(&self) -> bool {
        !self.closed.load(Ordering::Relaxed) && !self.stop.load(Ordering::Relaxed)
    }

    fn silent(&self) -> bool {
        self.blackhole_at.is_some_and(|at| Instant::now() >= at)
    }

    fn wait(&self, rng: &mut Rng) {
        let f = self.faults();
        let jitter = f.jitter.as_micros() as u64;
        let pause = f.delay + Duration::from_micros(rng.range(0, jitter));
        if !pause.is_zero() {
            thread::sleep(pause);
        }
    }
}

fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    faults: Arc<Mutex<Faults>>,
    stats: Arc<ProxyStats>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let mut rng = Rng::new(seed);
    let f = faults.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let blackhole_at = f.blackhole.and_then(|(p, lo, hi)| {
        rng.chance(p).then(|| {
            stats.blackholed.fetch_add(1, Ordering::Relaxed);
            let ms = rng.range(lo.as_millis() as u64, hi.as_millis() as u64 + 1);
            Instant::now() + Duration::from_millis(ms)
        })
    });
    let cut_at = f.cut_after_bytes.map(|(lo, hi)| rng.range(lo, hi + 1));
    let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let link = Arc::new(Link {
        client,
        server,
        closed: AtomicBool::new(false),
        blackhole_at,
        faults,
        stats,
        stop,
    });
    let up = link.clone();
    let up_seed = rng.next_u64();
    let _ = thread::Builder::new()
        .name("chaos-proxy-up".into())
        .spawn(move || pump_up(&up, c2, up_seed));
    pump_down(&link, s2, cut_at, rng);
}

/// Client → server: raw bytes.
fn pump_up(link: &Link, mut from: TcpStream, seed: u64) {
    let mut rng = Rng::new(seed);
    let _ = from.set_read_timeout(Some(POLL));
    let mut to = &link.server;
    let mut buf = vec![0u8; CHUNK];
    while link.open() {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if link.silent() {
                    continue;
                }
                link.wait(&mut rng);
                if to.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    link.close();
}

/// Server → client: whole frames, so a `SendOk` can be recognised and dropped.
fn pump_down(link: &Link, mut from: TcpStream, cut_at: Option<u64>, mut rng: Rng) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut to = &link.client;
    let mut buf = vec![0u8; CHUNK];
    let mut pending: Vec<u8> = Vec::new();
    let mut forwarded = 0u64;
    let limits = Limits::default();
    'outer: while link.open() {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => break,
        }
        if link.silent() {
            pending.clear();
            continue;
        }
        let faults = link.faults();
        let mut out: Vec<u8> = Vec::new();
        let mut cut = false;
        // Split off whole frames (u32 little-endian length prefix, then the body).
        while let Some(len) = pending
            .get(..4)
            .and_then(|p| p.try_into().ok())
            .map(|p: [u8; 4]| u32::from_le_bytes(p) as usize)
        {
            let total = 4 + len;
            if pending.len() < total {
                break;
            }
            let frame: Vec<u8> = pending.drain(..total).collect();
            let is_send_ok = view(&frame, &limits).is_ok_and(|f| f.body_type() == fb::Body::SendOk);
            if is_send_ok && faults.cut_after_send_ok > 0.0 && rng.chance(faults.cut_after_send_ok) {
                link.stats.cut_send_ok.fetch_add(1, Ordering::Relaxed);
                cut = true;
                break;
            }
            out.extend_from_slice(&frame);
        }
        if let Some(limit) = cut_at
            && forwarded + out.len() as u64 >= limit
        {
            let keep = limit.saturating_sub(forwarded) as usize;
            out.truncate(keep);
            link.stats.cut_bytes.fetch_add(1, Ordering::Relaxed);
            cut = true;
        }
        if !out.is_empty() {
            link.wait(&mut rng);
            if to.write_all(&out).is_err() {
                break 'outer;
            }
            forwarded += out.len() as u64;
            link.stats
                .down_bytes
                .fetch_add(out.len() as u64, Ordering::Relaxed);
        }
        if cut {
            break;
        }
    }
    link.close();
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use natter_wire::{Body, Frame, Pong, SendOk};

    /// An upstream that answers every connection with `frames`, then holds it open.
    fn upstream(frames: Vec<Frame>) -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let frames = frames.clone();
                thread::spawn(move || {
                    for f in &frames {
                        stream.write_all(&f.encode()).unwrap();
                    }
                    let mut sink = [0u8; 64];
                    while stream.read(&mut sink).is_ok_and(|n| n > 0) {}
                });
            }
        });
        addr
    }

    fn read_all(addr: SocketAddr) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    fn pong(n: u64) -> Frame {
        Frame::new(n, Body::Pong(Pong { nonce: n }))
    }

    fn send_ok() -> Frame {
        Frame::new(
            9,
            Body::SendOk(SendOk {
                client_msg_id: 1,
                chat_id: 2,
                seq: 3,
                server_ts_ms: 4,
            }),
        )
    }

    #[test]
    fn a_send_ok_is_swallowed_and_the_connection_cut_right_after() {
        let frames = vec![pong(1), send_ok(), pong(2)];
        let up = upstream(frames);
        let faults = Faults {
            cut_after_send_ok: 1.0,
            ..Faults::default()
        };
        let proxy = Proxy::start(up, faults, 1).unwrap();
        let got = read_all(proxy.addr);
        // Only the first Pong arrives; the connection ends where the SendOk was.
        assert_eq!(got, pong(1).encode().to_vec());
        assert_eq!(proxy.stats.cut_send_ok.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn without_faults_everything_passes_and_a_byte_cut_truncates() {
        let frames = vec![pong(1), send_ok(), pong(2)];
        let all: Vec<u8> = frames.iter().flat_map(|f| f.encode().to_vec()).collect();
        let up = upstream(frames);
        let proxy = Proxy::start(up, Faults::default(), 1).unwrap();
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut got = vec![0u8; all.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, all);
        proxy.set_faults(Faults {
            cut_after_bytes: Some((10, 10)),
            ..Faults::default()
        });
        let got = read_all(proxy.addr);
        assert_eq!(got, all[..10].to_vec());
    }

    #[test]
    fn a_blackholed_connection_stays_open_and_silent() {
        let up = upstream(vec![pong(1)]);
        let faults = Faults {
            blackhole: Some((1.0, Duration::ZERO, Duration::ZERO)),
            ..Faults::default()
        };
        let proxy = Proxy::start(up, faults, 1).unwrap();
        let mut s = TcpStream::connect(proxy.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 16];
        let err = s.read(&mut buf).unwrap_err();
        assert!(matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ));
    }
}
