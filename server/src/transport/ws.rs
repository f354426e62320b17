//! WebSocket (RFC 6455) over the loop's non-blocking TCP or TLS streams.
//!
//! The HTTP upgrade is parsed here with httparse, bounded by the same 4 KiB
//! as any pre-authentication input ([`crate::core::MAX_PRE_AUTH_INPUT`]), and
//! answered with `101` or a clear status: `400` (not a WebSocket upgrade),
//! `403` (`Origin` not in `--ws-origin`), `405` (not `GET`), `426` (not
//! version 13), `431` (request head over 4 KiB). After it tungstenite's frame
//! codec ([`WebSocketContext`]) runs over the same stream, with its limits cut
//! to ours (a message or a frame at most `--max-frame`) and no extensions
//! (permessage-deflate is never negotiated).
//!
//! Each binary message carries exactly one size-prefixed frame, as the schema
//! says. Anything else ends the connection with a close code: a text message
//! `1003`, a binary message that is not exactly one frame `1007`, a message
//! (or a fragmented one, summed) over `--max-frame` `1009`, a protocol
//! violation `1002`, pings faster than their pongs can leave `1008`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
use tungstenite::Message;
use tungstenite::error::Error as WsError;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use crate::core::MAX_PRE_AUTH_INPUT;
use crate::transport::tls::TlsStream;

/// Largest upgrade request head: the pre-authentication budget.
pub const MAX_UPGRADE_REQUEST: usize = MAX_PRE_AUTH_INPUT;

/// Headers parsed in an upgrade request; a browser sends about 15.
const MAX_UPGRADE_HEADERS: usize = 32;

/// Bytes tungstenite reads per call and keeps allocated per connection:
/// small, so an idle WebSocket costs little. Its reads are served from
/// [`ReadAhead`], so this does not set the size of the read syscalls.
const WS_READ_BUFFER: usize = 4 * 1024;

/// Bytes read from the socket per syscall once the WebSocket is open, as on
/// raw TCP (the worker's `READ_CHUNK`): a burst of small messages costs one
/// `read`, not one per [`WS_READ_BUFFER`].
const READ_AHEAD: usize = 64 * 1024;

/// Bytes of encoded messages gathered before they are written out: a burst of
/// pushes leaves in one write, like TCP's vectored write.
const WS_WRITE_BUFFER: usize = 64 * 1024;

/// Bytes of frames taken from the outbound queue per `write_frames` call.
const WS_WRITE_BATCH: usize = 256 * 1024;

/// What the WebSocket listeners share.
#[derive(Debug)]
pub struct WsSettings {
    /// `--max-frame`: the largest message (one frame) accepted.
    pub max_frame: usize,
    /// `--ws-origin`: browser origins allowed (`None` = any). A request
    /// without `Origin` (not a browser) is always allowed.
    pub origins: Option<Vec<String>>,
}

/// The socket under a WebSocket: plain TCP or TLS (`--ws-tls`).
#[derive(Debug)]
pub enum ByteStream {
    /// `ws://`.
    Plain(TcpStream),
    /// `wss://`.
    Tls(Box<TlsStream>),
}

impl Read for ByteStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ByteStream::Plain(s) => s.read(buf),
            ByteStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ByteStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ByteStream::Plain(s) => s.write(buf),
            ByteStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            ByteStream::Plain(_) => Ok(()),
            ByteStream::Tls(s) => s.flush_buffered(),
        }
    }
}

/// The open WebSocket's reads: large reads from the socket, the bytes
/// tungstenite has not taken yet kept in `ahead` (allocated only while it
/// holds bytes, so an idle connection keeps nothing here).
#[derive(Debug)]
struct ReadAhead {
    stream: ByteStream,
    ahead: BytesMut,
}

impl Read for ReadAhead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ahead.is_empty() {
            if buf.len() >= READ_AHEAD {
                return self.stream.read(buf);
            }
            let mut chunk = [0u8; READ_AHEAD];
            let n = self.stream.read(&mut chunk)?;
            self.ahead.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        let n = self.ahead.len().min(buf.len());
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), self.ahead.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.ahead.advance(n);
        super::release_if_empty(&mut self.ahead);
        Ok(n)
    }
}

impl Write for ReadAhead {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

#[derive(Debug)]
enum State {
    /// Reading the HTTP upgrade request.
    Upgrading { head: Vec<u8> },
    /// Writing the HTTP answer; then open (101) or closed (an error status).
    Answering {
        answer: Bytes,
        open: bool,
        leftover: Vec<u8>,
    },
    /// Frames flow.
    Open,
    /// The upgrade was refused and the answer written.
    Refused,
}

/// One WebSocket connection: the upgrade, then one frame per binary message.
#[derive(Debug)]
pub struct WsStream {
    inner: ReadAhead,
    state: State,
    ctx: WebSocketContext,
    /// The rest of the current message not yet handed to the reader.
    pending: Bytes,
    settings: Arc<WsSettings>,
    closing: bool,
    /// An error met after a read had already gathered frames: returned by the
    /// next read, so the frames before it are not lost.
    deferred: Option<io::Error>,
}

impl WsStream {
    /// A connection whose upgrade request has not been read yet.
    pub fn new(inner: ByteStream, settings: Arc<WsSettings>) -> Self {
        let ctx = WebSocketContext::new(Role::Server, Some(ws_config(settings.max_frame)));
        Self {
            inner: ReadAhead {
                stream: inner,
                ahead: BytesMut::new(),
            },
            state: State::Upgrading { head: Vec::new() },
            ctx,
            pending: Bytes::new(),
            settings,
            closing: false,
            deferred: None,
        }
    }

    /// The socket underneath.
    pub fn tcp(&mut self) -> &mut TcpStream {
        match &mut self.inner.stream {
            ByteStream::Plain(s) => s,
            ByteStream::Tls(s) => s.tcp(),
        }
    }

    /// True once the upgrade was answered with 101 and written.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// True once a Close was sent or received.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Reads frame bytes: the upgrade first, then binary messages' payloads.
    /// See [`crate::transport::Stream::read`].
    ///
    /// # Errors
    /// `WouldBlock` when drained; `InvalidData` after a refused upgrade or a
    /// close code sent for bad input; other I/O errors.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.deferred.take() {
            // A close seen after earlier frames: now it is the end of the stream.
            return if e.kind() == io::ErrorKind::UnexpectedEof {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let mut filled = 0;
        loop {
            match &mut self.state {
                State::Upgrading { head } => {
                    let mut chunk = [0u8; 1024];
                    let room = MAX_UPGRADE_REQUEST.saturating_sub(head.len()).min(chunk.len());
                    let chunk = chunk.get_mut(..room.max(1)).unwrap_or_default();
                    // Straight from the stream: the upgrade's 4 KiB budget
                    // leaves nothing to read ahead.
                    let n = self.inner.stream.read(chunk)?;
                    if n == 0 {
                        return Ok(0);
                    }
                    head.extend_from_slice(chunk.get(..n).unwrap_or_default());
                    let head = std::mem::take(head);
                    self.upgrade(head);
                }
                State::Answering { .. } => self.write_answer()?,
                State::Refused => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "upgrade refused"));
                }
                State::Open => {
                    // As many messages as fit: the worker hands the core many
                    // frames per call, as on raw TCP.
                    if !self.pending.is_empty() {
                        let rest = buf.get_mut(filled..).unwrap_or_default();
                        let n = self.pending.len().min(rest.len());
                        if let (Some(dst), Some(src)) = (rest.get_mut(..n), self.pending.get(..n)) {
                            dst.copy_from_slice(src);
                        }
                        self.pending.advance(n);
                        filled += n;
                        if filled == buf.len() {
                            return Ok(filled);
                        }
                        continue;
                    }
                    if self.closing {
                        return Ok(filled);
                    }
                    let read = self.ctx.read(&mut self.inner);
                    if filled > 0 {
                        match read {
                            Ok(Message::Binary(message)) if is_one_frame(&message) => {
                                self.pending = message;
                                continue;
                            }
                            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Ok(filled);
                            }
                            // Anything else is dealt with on the next call, after these frames.
                            other => {
                                self.deferred = Some(match self.message_error(other) {
                                    Ok(()) => return Ok(filled),
                                    Err(e) => e,
                                });
                                return Ok(filled);
                            }
                        }
                    }
                    match self.message_error(read) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Takes what tungstenite read: a binary message becomes `pending`;
    /// anything that ends the connection is an error (`UnexpectedEof` for a
    /// close), with a close code queued where natterd owes one.
    fn message_error(&mut self, read: tungstenite::Result<Message>) -> io::Result<()> {
        match read {
            Ok(Message::Binary(message)) if is_one_frame(&message) => {
                self.pending = message;
                Ok(())
            }
            Ok(Message::Binary(_)) => Err(self.refuse(
                CloseCode::Invalid,
                "each binary message carries exactly one size-prefixed frame",
            )),
            Ok(Message::Text(_)) => {
                Err(self.refuse(CloseCode::Unsupported, "natter speaks binary messages only"))
            }
            // Pings are answered by tungstenite (flushed with our writes).
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => Ok(()),
            Ok(Message::Close(_)) => {
                self.closing = true;
                Err(io::ErrorKind::UnexpectedEof.into())
            }
            Err(WsError::Io(e)) => Err(e),
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                Err(io::ErrorKind::UnexpectedEof.into())
            }
            Err(WsError::Capacity(_)) => Err(self.refuse(CloseCode::Size, "message over the frame limit")),
            Err(WsError::WriteBufferFull(_)) => {
                Err(self.refuse(CloseCode::Policy, "pings faster than their pongs leave"))
            }
            Err(WsError::Utf8(_)) => Err(self.refuse(CloseCode::Invalid, "invalid UTF-8")),
            Err(e) => Err(self.refuse(CloseCode::Protocol, &e.to_string())),
        }
    }

    /// Writes whole frames, each as one binary message. See
    /// [`crate::transport::Stream::write_frames`].
    ///
    /// # Errors
    /// `WouldBlock` when nothing could be taken; other errors: closed.
    pub fn write_frames(&mut self, frames: &mut VecDeque<Bytes>) -> io::Result<usize> {
        if !self.is_open() || self.closing {
            // Frames wait in the worker's queue until the upgrade is done.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match self.ctx.flush(&mut self.inner) {
            Ok(()) => {}
            Err(WsError::Io(e)) => return Err(e),
            Err(e) => return Err(io::Error::other(e)),
        }
        let mut taken = 0;
        while taken < WS_WRITE_BATCH {
            let Some(front) = frames.front() else {
                break;
            };
            // One queued buffer may hold several frames back to back (a sync
            // page): each goes out as its own binary message, as PROTOCOL.md says.
            let len = first_frame_len(front);
            match self
                .ctx
                .write(&mut self.inner, Message::Binary(front.slice(..len)))
            {
                Ok(()) => {}
                Err(WsError::WriteBufferFull(_)) => break,
                // The message is in tungstenite's buffer; the socket is full.
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    consume_front(frames, len);
                    taken += len;
                    break;
                }
                Err(WsError::Io(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e)),
            }
            consume_front(frames, len);
            taken += len;
        }
        match self.ctx.flush(&mut self.inner) {
            Ok(()) => {}
            Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(WsError::Io(e)) => return Err(e),
            Err(e) => return Err(io::Error::other(e)),
        }
        if taken == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Writes the upgrade answer or buffered WebSocket frames.
    ///
    /// # Errors
    /// `WouldBlock` while some are left; others: closed.
    pub fn flush_buffered(&mut self) -> io::Result<()> {
        match self.state {
            State::Upgrading { .. } | State::Refused => self.inner.flush(),
            State::Answering { .. } => self.write_answer(),
            State::Open => match self.ctx.flush(&mut self.inner) {
                Ok(()) => Ok(()),
                Err(WsError::Io(e)) => Err(e),
                // Closed: the Close frames were written as far as they go.
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => self.inner.flush(),
                Err(e) => Err(io::Error::other(e)),
            },
        }
    }

    /// Sends Close 1000 if no close code was sent yet (the core ended the
    /// session; its Error frame, if any, went first).
    pub fn start_close(&mut self) {
        if self.is_open() && !self.closing {
            self.closing = true;
            let _ = self
                .ctx
                .close(&mut self.inner, Some(close_frame(CloseCode::Normal, "")));
        }
    }

    /// Queues a Close with `code` and returns the error that ends the connection.
    fn refuse(&mut self, code: CloseCode, reason: &str) -> io::Error {
        self.closing = true;
        let _ = self.ctx.close(&mut self.inner, Some(close_frame(code, reason)));
        io::Error::new(io::ErrorKind::InvalidData, reason.to_owned())
    }

    /// Parses the request head gathered so far; answers once it is complete
    /// (or over its budget).
    fn upgrade(&mut self, head: Vec<u8>) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_UPGRADE_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let verdict = match request.parse(&head) {
            Ok(httparse::Status::Partial) if head.len() >= MAX_UPGRADE_REQUEST => Err((
                431,
                "Request Header Fields Too Large",
                "the upgrade request is limited to 4 KiB",
            )),
            Ok(httparse::Status::Partial) => {
                self.state = State::Upgrading { head };
                return;
            }
            Ok(httparse::Status::Complete(len)) => {
                check_upgrade(&request, &self.settings).map(|key| (key, len))
            }
            Err(httparse::Error::TooManyHeaders) => {
                Err((431, "Request Header Fields Too Large", "too many header fields"))
            }
            Err(_) => Err((400, "Bad Request", "not an HTTP request")),
        };
        self.state = match verdict {
            Ok((key, len)) => State::Answering {
                answer: Bytes::from(format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Accept: {}\r\n\r\n",
                    tungstenite::handshake::derive_accept_key(key.as_bytes())
                )),
                open: true,
                leftover: head.get(len..).unwrap_or_default().to_vec(),
            },
            Err((status, reason, why)) => {
                let extra = if status == 426 {
                    "Sec-WebSocket-Version: 13\r\n"
                } else {
                    ""
                };
                State::Answering {
                    answer: Bytes::from(format!(
                        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                         Connection: close\r\n{extra}\r\n{why}\n",
                        why.len() + 1
                    )),
                    open: false,
                    leftover: Vec::new(),
                }
            }
        };
    }

    /// Writes the rest of the upgrade answer; once written, the connection is
    /// open (frames read after the request head are kept) or refused.
    fn write_answer(&mut self) -> io::Result<()> {
        let State::Answering {
            answer,
            open,
            leftover,
        } = &mut self.state
        else {
            return Ok(());
        };
        while !answer.is_empty() {
            match self.inner.write(answer) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => answer.advance(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.flush()?;
        if *open {
            let leftover = std::mem::take(leftover);
            self.ctx = WebSocketContext::from_partially_read(
                leftover,
                Role::Server,
                Some(ws_config(self.settings.max_frame)),
            );
            self.state = State::Open;
        } else {
            self.state = State::Refused;
        }
        Ok(())
    }
}

/// tungstenite's limits cut to ours.
fn ws_config(max_frame: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        // One more message of the largest size over the gathering target, plus headers.
        .max_write_buffer_size(WS_WRITE_BUFFER + max_frame + 64)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame))
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    // A close reason is at most 123 bytes (a control frame's payload is 125).
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    CloseFrame {
        code,
        reason: reason.get(..cut).unwrap_or_default().to_owned().into(),
    }
}

/// True when `message` is exactly one size-prefixed frame.
/// The length (prefix included) of the first size-prefixed frame in `buf`, or all
/// of `buf` when its prefix does not describe a frame that fits inside it (the
/// core only queues whole frames, so that is one frame or a bug to show as-is).
fn first_frame_len(buf: &[u8]) -> usize {
    let frame = buf
        .get(..4)
        .and_then(|p| <[u8; 4]>::try_from(p).ok())
        .map(|p| (u32::from_le_bytes(p) as usize).saturating_add(4));
    match frame {
        Some(n) if n >= 8 && n <= buf.len() => n,
        _ => buf.len(),
    }
}

/// Drops the first `len` bytes of the queue's front buffer (the whole buffer
/// when that is all of it).
fn consume_front(frames: &mut VecDeque<Bytes>, len: usize) {
    match frames.front_mut() {
        Some(front) if len < front.len() => drop(front.split_to(len)),
        _ => drop(frames.pop_front()),
    }
}

fn is_one_frame(message: &[u8]) -> bool {
    let Some(prefix) = message.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) else {
        return false;
    };
    u32::from_le_bytes(prefix) as usize == message.len() - 4
}

/// Checks an upgrade request; the `Sec-WebSocket-Key` when it is acceptable,
/// else the status, reason phrase and body of the refusal.
fn check_upgrade(
    request: &httparse::Request<'_, '_>,
    settings: &WsSettings,
) -> Result<String, (u16, &'static str, &'static str)> {
    if request.method != Some("GET") {
        return Err((405, "Method Not Allowed", "a WebSocket upgrade is a GET"));
    }
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") || !has_token("connection", "upgrade") {
        return Err((
            400,
            "Bad Request",
            "not a WebSocket upgrade (Upgrade: websocket, Connection: Upgrade)",
        ));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err((426, "Upgrade Required", "WebSocket version 13 only"));
    }
    let key = match header("sec-websocket-key") {
        Some(key) if key.len() == 24 => key.to_owned(),
        _ => return Err((400, "Bad Request", "missing or malformed Sec-WebSocket-Key")),
    };
    if let (Some(allowed), Some(origin)) = (&settings.origins, header("origin"))
        && !allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
    {
        return Err((403, "Forbidden", "origin not allowed"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, origins: Option<Vec<String>>) -> Result<String, u16> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_UPGRADE_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        assert!(request.parse(raw.as_bytes()).unwrap().is_complete());
        let settings = WsSettings {
            max_frame: 1024,
            origins,
        };
        check_upgrade(&request, &settings).map_err(|(status, ..)| status)
    }

    const GOOD: &str = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
                        Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

    #[test]
    fn upgrade_requests_are_checked_with_clear_statuses() {
        assert_eq!(
            check(&format!("{GOOD}\r\n"), None).unwrap(),
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(
            check(&format!("{}\r\n", GOOD.replacen("GET", "POST", 1)), None).unwrap_err(),
            405
        );
        assert_eq!(
            check(
                &format!("{}\r\n", GOOD.replace("Upgrade: websocket\r\n", "")),
                None
            )
            .unwrap_err(),
            400
        );
        assert_eq!(
            check(
                &format!("{}\r\n", GOOD.replace("Version: 13", "Version: 8")),
                None
            )
            .unwrap_err(),
            426
        );
        let allowed = Some(vec!["https://chat.example".to_owned()]);
        assert_eq!(
            check(
                &format!("{GOOD}Origin: https://evil.example\r\n\r\n"),
                allowed.clone()
            )
            .unwrap_err(),
            403
        );
        assert!(
            check(
                &format!("{GOOD}Origin: https://chat.example\r\n\r\n"),
                allowed.clone()
            )
            .is_ok()
        );
        assert!(
            check(&format!("{GOOD}\r\n"), allowed).is_ok(),
            "no Origin: not a browser"
        );
    }

    #[test]
    fn a_binary_message_must_be_exactly_one_frame() {
        assert!(is_one_frame(&[2, 0, 0, 0, 9, 9]));
        assert!(!is_one_frame(&[2, 0, 0, 0, 9]));
        assert!(!is_one_frame(&[1, 0, 0, 0, 9, 9]));
        assert!(!is_one_frame(&[0, 0]));
    }

    #[test]
    fn a_buffer_of_several_frames_is_split_into_one_message_per_frame() {
        let frame = |body: &[u8]| {
            let mut f = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
            f.extend_from_slice(body);
            f
        };
        let (a, b) = (frame(b"12345678"), frame(b"abcdefghij"));
        let mut frames = VecDeque::from([
            Bytes::from([a.clone(), b.clone()].concat()),
            Bytes::from(a.clone()),
        ]);
        let mut messages = Vec::new();
        while let Some(front) = frames.front() {
            let len = first_frame_len(front);
            messages.push(front.slice(..len).to_vec());
            consume_front(&mut frames, len);
        }
        assert_eq!(messages, [a.clone(), b, a]);
        // A prefix that does not fit is not split (shown whole, never out of bounds).
        assert_eq!(first_frame_len(&[200, 0, 0, 0, 1, 2, 3, 4]), 8);
        assert_eq!(first_frame_len(&[1, 2]), 2);
    }
}
