//! [`Connection`]: one blocking session with natterd — over raw TCP, TLS or
//! WebSocket (see `transport.rs`) — the `Hello`/`Welcome` handshake, typed
//! frames in and out, request ids, and `Ping`.
//!
//! Frames are read through [`natter_wire::FrameDecoder`] over a [`BytesMut`], so
//! partial reads and several frames per read are handled, and every frame is
//! verified against [`Limits`] before it is converted. Frames that arrive while
//! [`Connection::request`] waits for its answer (pushed messages, presence) are
//! queued and handed out by the next [`Connection::recv`], in arrival order.

use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use natter_wire::{Body, Frame, FrameDecoder, Hello, Limits, PROTOCOL_VERSION, Ping, Welcome};

use crate::error::{ClientError, ServerCode};
use crate::transport::{Endpoint, Got, Io, Trust};

/// How long [`Connection::open`] waits for the TCP handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Connection::recv`], [`Connection::request`] and the handshake wait for
/// a frame unless [`Connection::set_timeout`] says otherwise.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes read from the socket per `read` call.
const READ_CHUNK: usize = 16 * 1024;

/// Longest frame description kept in [`ClientError::UnexpectedFrame`].
const MAX_FRAME_DESCRIPTION: usize = 120;

/// A blocking, authenticated (after [`Connection::hello`]) session with natterd
/// over TCP, TLS or WebSocket; the API is the same on each.
///
/// Not thread-safe by design: one owner sends and receives. Dropping it closes the
/// socket.
#[derive(Debug)]
pub struct Connection {
    io: Io,
    /// The WebSocket close code the server sent, once it closed.
    close_code: Option<u16>,
    decoder: FrameDecoder,
    buf: BytesMut,
    pending: VecDeque<Frame>,
    next_request_id: u64,
    timeout: Duration,
    closed: bool,
}

impl Connection {
    /// Opens a TCP connection (with `TCP_NODELAY`) to natterd's frame port and
    /// authenticates: sends `Hello{token, device, PROTOCOL_VERSION}` and waits for
    /// `Welcome`.
    ///
    /// # Errors
    /// [`ClientError::Refused`] if the server answers with an `Error` frame (wrong or
    /// revoked token, unsupported version, too many connections);
    /// [`ClientError::Io`] if the TCP connection fails; [`ClientError::Closed`],
    /// [`ClientError::Timeout`] or [`ClientError::UnexpectedFrame`] if no `Welcome`
    /// comes.
    pub fn connect(
        addr: SocketAddr,
        token: &str,
        device: &str,
    ) -> Result<(Connection, Welcome), ClientError> {
        let mut connection = Connection::open(addr)?;
        let welcome = connection.hello(token, device)?;
        Ok((connection, welcome))
    }

    /// Opens a TCP connection without sending anything (for tests that send a bad
    /// `Hello` or raw bytes first). Call [`Connection::hello`] to authenticate.
    ///
    /// # Errors
    /// [`ClientError::Io`] if the TCP connection cannot be made.
    pub fn open(addr: SocketAddr) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, DEFAULT_CONNECT_TIMEOUT)?;
        stream.set_nodelay(true)?;
        Ok(Connection::over(Io::Tcp(stream)))
    }

    /// Opens a connection to an endpoint URL (`tcp://`, `tls://`, `ws://`,
    /// `wss://`, `quic://`, as `GET /v1/endpoints` lists them) and
    /// authenticates, like [`Connection::connect`]. TLS and QUIC need `trust`.
    ///
    /// # Errors
    /// As [`Connection::connect`]; [`ClientError::Handshake`] when the TLS
    /// handshake (e.g. a fingerprint that does not match) or the WebSocket
    /// upgrade fails; [`ClientError::InvalidArgument`] for a bad URL.
    pub fn connect_url(
        url: &str,
        trust: Option<&Trust>,
        token: &str,
        device: &str,
    ) -> Result<(Connection, Welcome), ClientError> {
        let mut connection = Connection::open_url(url, trust, None)?;
        let welcome = connection.hello(token, device)?;
        Ok((connection, welcome))
    }

    /// Opens a connection to an endpoint URL without sending anything (TLS
    /// handshake and WebSocket upgrade done); `origin` is sent as the
    /// WebSocket upgrade's `Origin` header (as a browser would).
    ///
    /// # Errors
    /// As [`Connection::connect_url`].
    pub fn open_url(
        url: &str,
        trust: Option<&Trust>,
        origin: Option<&str>,
    ) -> Result<Connection, ClientError> {
        let endpoint = Endpoint::parse(url)?;
        Ok(Connection::over(Io::open(
            &endpoint,
            trust,
            origin,
            DEFAULT_CONNECT_TIMEOUT,
        )?))
    }

    fn over(io: Io) -> Connection {
        Connection {
            io,
            close_code: None,
            decoder: FrameDecoder::new(Limits::default()),
            buf: BytesMut::with_capacity(READ_CHUNK),
            pending: VecDeque::new(),
            next_request_id: 1,
            timeout: DEFAULT_REPLY_TIMEOUT,
            closed: false,
        }
    }

    /// Sends `Hello` with this protocol version and waits for `Welcome`.
    ///
    /// # Errors
    /// As [`Connection::connect`], except for the TCP connection itself.
    pub fn hello(&mut self, token: &str, device: &str) -> Result<Welcome, ClientError> {
        self.hello_with_version(token, device, PROTOCOL_VERSION)
    }

    /// Sends `Hello` with any protocol version (tests of version negotiation) and
    /// waits for `Welcome`.
    ///
    /// # Errors
    /// As [`Connection::hello`].
    pub fn hello_with_version(
        &mut self,
        token: &str,
        device: &str,
        protocol_version: u32,
    ) -> Result<Welcome, ClientError> {
        self.hello_with(Hello {
            token: token.to_owned(),
            device: device.to_owned(),
            protocol_version,
            sync_first: false,
            conversation: false,
        })
    }

    /// Sends `Hello{conversation: true}` (with `sync_first` as given) and waits for `Welcome`:
    /// the server then sends this connection Receipt, Typing and, right after the Welcome,
    /// ChatStates frames (docs/PROTOCOL.md, "Conversation").
    ///
    /// # Errors
    /// As [`Connection::hello`].
    pub fn hello_conversation(
        &mut self,
        token: &str,
        device: &str,
        sync_first: bool,
    ) -> Result<Welcome, ClientError> {
        self.hello_with(Hello {
            token: token.to_owned(),
            device: device.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            sync_first,
            conversation: true,
        })
    }

    /// Sends `Hello{sync_first: true}` and waits for `Welcome`: the server holds live
    /// message pushes back until this connection's first `Sync`, so a reconnecting
    /// device that syncs next sees every message exactly once and in order. Send the
    /// `Sync` right after this returns (or pipeline it).
    ///
    /// # Errors
    /// As [`Connection::hello`].
    pub fn hello_sync_first(&mut self, token: &str, device: &str) -> Result<Welcome, ClientError> {
        self.hello_with(Hello {
            token: token.to_owned(),
            device: device.to_owned(),
            protocol_version: PROTOCOL_VERSION,
            sync_first: true,
            conversation: false,
        })
    }

    /// Sends this `Hello` and waits for `Welcome`.
    ///
    /// # Errors
    /// As [`Connection::hello`].
    pub fn hello_with(&mut self, hello: Hello) -> Result<Welcome, ClientError> {
        let request_id = self.send_body(Body::Hello(hello))?;
        let timeout = self.timeout;
        let frame = self.recv_timeout(timeout)?.ok_or(ClientError::Timeout {
            waited: timeout,
            expected: "Welcome",
        })?;
        match frame.body {
            Body::Welcome(welcome) => {
                // The server announces its frame limit: decode what it sends with it.
                if welcome.max_frame > 0 {
                    self.decoder = FrameDecoder::new(Limits::with_max_frame(welcome.max_frame as usize));
                }
                Ok(welcome)
            }
            Body::Error(error) => Err(ClientError::Refused {
                code: ServerCode::from_u16(error.code),
                message: error.message,
            }),
            _ => Err(unexpected("Welcome", &frame, request_id)),
        }
    }

    /// Returns a fresh request id (1, 2, 3, …; 0 means "not a request" on the wire).
    pub fn next_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        id
    }

    /// Sends one frame as given (its `request_id` included).
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the server has closed the connection;
    /// [`ClientError::Io`] for other socket errors.
    pub fn send(&mut self, frame: &Frame) -> Result<(), ClientError> {
        self.send_raw(&frame.encode())
    }

    /// Sends `body` under a fresh request id and returns that id.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_body(&mut self, body: Body) -> Result<u64, ClientError> {
        let request_id = self.next_request_id();
        self.send(&Frame::new(request_id, body))?;
        Ok(request_id)
    }

    /// Writes raw bytes (tests that send garbage, oversize length prefixes or
    /// partial frames): on TCP and TLS into the stream, on WebSocket as one
    /// binary message.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.io.write_all(bytes).map_err(closed_or_io)
    }

    /// Sends a WebSocket text message (natterd refuses them: tests).
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] when not on WebSocket; as [`Connection::send`].
    pub fn send_ws_text(&mut self, text: &str) -> Result<(), ClientError> {
        self.io.write_text(text)
    }

    /// The WebSocket close code the server ended the connection with, once
    /// [`ClientError::Closed`] has been seen (`None` on other transports, or
    /// when it sent none).
    pub fn close_code(&self) -> Option<u16> {
        self.close_code
    }

    /// Waits for the next frame, up to the connection's timeout (see
    /// [`Connection::set_timeout`]).
    ///
    /// # Errors
    /// [`ClientError::Closed`] when the server has closed the connection (all frames
    /// it sent before are returned first); [`ClientError::Timeout`];
    /// [`ClientError::Wire`] for bytes that are not a valid frame (the connection is
    /// closed afterwards); [`ClientError::Io`].
    pub fn recv(&mut self) -> Result<Frame, ClientError> {
        let timeout = self.timeout;
        self.recv_timeout(timeout)?.ok_or(ClientError::Timeout {
            waited: timeout,
            expected: "a frame",
        })
    }

    /// Waits up to `timeout` for the next frame; `Ok(None)` if none came in time.
    /// A zero timeout only returns frames already received.
    ///
    /// # Errors
    /// As [`Connection::recv`], except for the timeout.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Frame>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(Some(frame));
            }
            if let Some(frame) = self.decode_buffered()? {
                return Ok(Some(frame));
            }
            if self.closed {
                return Err(ClientError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.read_some(deadline - now)?;
        }
    }

    /// Sends `body` under a fresh request id and waits for the frame that answers it
    /// (same request id). Frames that arrive meanwhile are kept for
    /// [`Connection::recv`].
    ///
    /// # Errors
    /// [`ClientError::Refused`] if the answer is an `Error` frame;
    /// [`ClientError::Timeout`] if no answer comes within the connection's timeout;
    /// as [`Connection::recv`] otherwise.
    pub fn request(&mut self, body: Body) -> Result<Frame, ClientError> {
        let request_id = self.send_body(body)?;
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        let result = loop {
            // Frames queued before this request cannot answer it: look at new ones only.
            let frame = match self.read_frame_until(deadline) {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    break Err(ClientError::Timeout {
                        waited: timeout,
                        expected: "an answer",
                    });
                }
                Err(e) => break Err(e),
            };
            if frame.request_id != request_id {
                skipped.push(frame);
                continue;
            }
            break match frame.body {
                Body::Error(error) => Err(ClientError::Refused {
                    code: ServerCode::from_u16(error.code),
                    message: error.message,
                }),
                _ => Ok(frame),
            };
        };
        self.pending.extend(skipped);
        result
    }

    /// Sends `Ping` and waits for the matching `Pong`; returns the round-trip time.
    ///
    /// # Errors
    /// As [`Connection::request`]; [`ClientError::UnexpectedFrame`] if the answer is
    /// not a `Pong` with the same nonce.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        let nonce = self.next_request_id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let frame = self.request(Body::Ping(Ping { nonce }))?;
        match &frame.body {
            Body::Pong(pong) if pong.nonce == nonce => Ok(started.elapsed()),
            _ => Err(unexpected("Pong", &frame, frame.request_id)),
        }
    }

    /// How long blocking calls wait for a frame.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets how long [`Connection::recv`], [`Connection::request`] and
    /// [`Connection::hello`] wait.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The client's end of the connection (the UDP socket's address on QUIC).
    ///
    /// # Errors
    /// [`ClientError::Io`] if the socket is no longer connected.
    pub fn local_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.io.local_addr()?)
    }

    /// The server's end of the connection.
    ///
    /// # Errors
    /// [`ClientError::Io`] if the socket is no longer connected.
    pub fn peer_addr(&self) -> Result<SocketAddr, ClientError> {
        Ok(self.io.peer_addr()?)
    }

    /// QUIC only: moves the connection to a new local UDP socket bound to
    /// `local` (port 0: any free one), as a phone changing networks does; the
    /// server migrates the connection and the session goes on. Returns the
    /// new local address.
    ///
    /// # Errors
    /// [`ClientError::InvalidArgument`] on other transports;
    /// [`ClientError::Io`] when `local` cannot be bound.
    pub fn rebind(&mut self, local: SocketAddr) -> Result<SocketAddr, ClientError> {
        self.io.rebind(local)
    }

    /// Closes the sending half (the server sees end of stream); frames can still be
    /// received.
    ///
    /// # Errors
    /// [`ClientError::Io`] if the socket is no longer connected.
    pub fn shutdown_write(&mut self) -> Result<(), ClientError> {
        Ok(self.io.shutdown_write()?)
    }

    /// Reads the next frame *from the socket buffer or the socket*, bypassing the
    /// pending queue, until `deadline`.
    fn read_frame_until(&mut self, deadline: Instant) -> Result<Option<Frame>, ClientError> {
        loop {
            if let Some(frame) = self.decode_buffered()? {
                return Ok(Some(frame));
            }
            if self.closed {
                return Err(ClientError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.read_some(deadline - now)?;
        }
    }

    /// Splits and verifies one frame off the read buffer, if a whole one is there.
    fn decode_buffered(&mut self) -> Result<Option<Frame>, ClientError> {
        let split = match self.decoder.split(&mut self.buf) {
            Ok(split) => split,
            Err(e) => return Err(self.poisoned(e)),
        };
        match split {
            None => Ok(None),
            Some(bytes) => match Frame::decode(&bytes, self.decoder.limits()) {
                Ok(frame) => Ok(Some(frame)),
                Err(e) => Err(self.poisoned(e)),
            },
        }
    }

    /// After invalid bytes the stream cannot be re-synchronised: drop what is
    /// buffered and treat the connection as closed from now on.
    fn poisoned(&mut self, error: natter_wire::WireError) -> ClientError {
        self.closed = true;
        self.buf.clear();
        // Best effort: the socket is useless now and the caller gets the real error.
        self.io.shutdown_both();
        ClientError::Wire(error)
    }

    /// One `read` with at most `wait` of blocking; end of stream or a reset marks
    /// the connection closed. A timeout is not an error here.
    fn read_some(&mut self, wait: Duration) -> Result<(), ClientError> {
        let mut chunk = [0u8; READ_CHUNK];
        match self.io.read_some(&mut self.buf, &mut chunk, wait)? {
            Got::Data | Got::Nothing => {}
            Got::Closed(code) => {
                self.closed = true;
                self.close_code = self.close_code.or(code);
            }
        }
        Ok(())
    }
}

/// Maps a write error: a peer that went away is [`ClientError::Closed`].
fn closed_or_io(error: io::Error) -> ClientError {
    match error.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            ClientError::Closed
        }
        _ => ClientError::Io(error),
    }
}

/// [`ClientError::UnexpectedFrame`] with a short description of `frame`.
fn unexpected(expected: &'static str, frame: &Frame, request_id: u64) -> ClientError {
    let mut got = format!(
        "{:?} (request id {}, sent as {request_id})",
        frame.body, frame.request_id
    );
    if got.len() > MAX_FRAME_DESCRIPTION {
        let cut = (0..=MAX_FRAME_DESCRIPTION)
            .rev()
            .find(|&i| got.is_char_boundary(i))
            .unwrap_or(0);
        got.truncate(cut);
        got.push('…');
    }
    ClientError::UnexpectedFrame { expected, got }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::thread;

    use natter_wire::{ErrorBody, ErrorCode, Pong};

    use super::*;

    /// A one-connection fake peer: runs `script` on the accepted stream.
    fn peer(script: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            script(stream);
        });
        (addr, handle)
    }

    /// Reads one size-prefixed frame from a blocking stream.
    fn read_frame(stream: &mut TcpStream) -> Frame {
        let mut prefix = [0u8; 4];
        stream.read_exact(&mut prefix).unwrap();
        let len = u32::from_le_bytes(prefix) as usize;
        let mut frame = prefix.to_vec();
        frame.resize(4 + len, 0);
        stream.read_exact(&mut frame[4..]).unwrap();
        Frame::decode(&frame, &Limits::default()).unwrap()
    }

    fn welcome() -> Welcome {
        Welcome {
            user_id: 7,
            device_id: 9,
            heartbeat_interval_ms: 30_000,
            server_time_ms: 1,
            protocol_version: PROTOCOL_VERSION,
            max_frame: 1 << 20,
        }
    }

    #[test]
    fn handshake_sends_hello_and_returns_welcome() {
        let (addr, server) = peer(|mut stream| {
            let hello = read_frame(&mut stream);
            match hello.body {
                Body::Hello(h) => {
                    assert_eq!(h.token, "tok");
                    assert_eq!(h.device, "phone");
                    assert_eq!(h.protocol_version, PROTOCOL_VERSION);
                }
                other => panic!("expected Hello, got {other:?}"),
            }
            let reply = Frame::new(hello.request_id, Body::Welcome(welcome())).encode();
            // Byte by byte: the client must reassemble partial reads.
            for byte in reply.iter() {
                stream.write_all(&[*byte]).unwrap();
            }
        });
        let (_connection, got) = Connection::connect(addr, "tok", "phone").unwrap();
        assert_eq!(got, welcome());
        server.join().unwrap();
    }

    #[test]
    fn error_frame_during_handshake_is_refused() {
        let (addr, server) = peer(|mut stream| {
            let hello = read_frame(&mut stream);
            let error = ErrorBody::new(ErrorCode::InvalidToken, "no such token", hello.request_id);
            stream
                .write_all(&Frame::new(hello.request_id, Body::Error(error)).encode())
                .unwrap();
        });
        let err = Connection::connect(addr, "bad", "phone").unwrap_err();
        match err {
            ClientError::Refused { code, message } => {
                assert_eq!(code, ErrorCode::InvalidToken);
                assert_eq!(message, "no such token");
            }
            other => panic!("unexpected {other:?}"),
        }
        server.join().unwrap();
    }

    #[test]
    fn close_without_welcome_is_closed() {
        let (addr, server) = peer(|mut stream| {
            read_frame(&mut stream);
        });
        let err = Connection::connect(addr, "tok", "phone").unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{err:?}");
        server.join().unwrap();
    }

    #[test]
    fn ping_skips_pushed_frames_and_keeps_them_for_recv() {
        let (addr, server) = peer(|mut stream| {
            let hello = read_frame(&mut stream);
            stream
                .write_all(&Frame::new(hello.request_id, Body::Welcome(welcome())).encode())
                .unwrap();
            let ping = read_frame(&mut stream);
            let nonce = match ping.body {
                Body::Ping(p) => p.nonce,
                other => panic!("expected Ping, got {other:?}"),
            };
            // A push first, then the answer, in one write.
            let mut out = Frame::new(0, Body::Resync).encode().to_vec();
            out.extend_from_slice(&Frame::new(ping.request_id, Body::Pong(Pong { nonce })).encode());
            stream.write_all(&out).unwrap();
            // Then close: the client sees end of stream after the frames.
        });
        let (mut connection, _) = Connection::connect(addr, "tok", "phone").unwrap();
        connection.ping().unwrap();
        let pushed = connection.recv().unwrap();
        assert_eq!(pushed.body, Body::Resync);
        assert!(matches!(connection.recv(), Err(ClientError::Closed)));
        server.join().unwrap();
    }

    #[test]
    fn recv_timeout_returns_none_when_nothing_comes() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (addr, server) = peer(move |_stream| {
            // Keep the stream open until the client is done.
            let _ = rx.recv();
        });
        let mut connection = Connection::open(addr).unwrap();
        assert_eq!(connection.recv_timeout(Duration::from_millis(20)).unwrap(), None);
        assert_eq!(connection.recv_timeout(Duration::ZERO).unwrap(), None);
        tx.send(()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn garbage_from_the_server_is_a_wire_error_then_closed() {
        let (addr, server) = peer(|mut stream| {
            // A length prefix of 4 GiB - 1: over any limit.
            stream.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).unwrap();
        });
        let mut connection = Connection::open(addr).unwrap();
        let err = connection.recv().unwrap_err();
        assert!(matches!(err, ClientError::Wire(_)), "{err:?}");
        assert!(matches!(connection.recv(), Err(ClientError::Closed)));
        server.join().unwrap();
    }

    #[test]
    fn request_ids_start_at_one_and_increase() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (addr, server) = peer(move |_stream| {
            let _ = rx.recv();
        });
        let mut connection = Connection::open(addr).unwrap();
        assert_eq!(connection.next_request_id(), 1);
        assert_eq!(connection.next_request_id(), 2);
        tx.send(()).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn unexpected_frame_description_is_bounded() {
        let frame = Frame::new(3, Body::Ping(Ping { nonce: 1 }));
        let err = unexpected("Welcome", &frame, 1);
        match err {
            ClientError::UnexpectedFrame { expected, got } => {
                assert_eq!(expected, "Welcome");
                assert!(got.chars().count() <= MAX_FRAME_DESCRIPTION + 1, "{got}");
                assert!(got.contains("Ping"), "{got}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
