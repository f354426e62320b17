//! Target `session`: structure-aware sequences of connection events against the sans-IO core —
//! two [`Core`]s of a two-core natterd, driven the way `runtime/worker.rs` drives them, under a
//! simulated clock, with no sockets.
//!
//! # Input
//!
//! The bytes decode (with [`arbitrary`]) into a [`SessionInput`]: up to [`MAX_OPS`] [`Op`]s —
//! accept a connection, feed it bytes (well-formed frames built from arbitrary owned
//! [`natter_wire::Frame`]s, a frame cut in two, a corrupted frame, a flood of one frame, or raw
//! garbage), answer a pending token lookup with `Valid` / `Invalid` / `StoreUnavailable`, let time
//! pass, close a connection from the peer's side, deliver a session migrating to its home core,
//! close a device's sessions (logout), shut a core down. [`SessionInput::to_bytes`] is the inverse,
//! so seeds are written as operations ([`crate::fuzzing::seeds`]).
//!
//! # Driving
//!
//! The harness is a model driver that keeps the core's contract: after every `handle_*` call it
//! drains [`Core::poll_action`] and carries each action out in order — a `Migrate` is detached at
//! once and queued for its home core (delivered by a later [`Op::Deliver`]), an `Authenticate` waits
//! for an [`Op::Auth`], a `Close` waits for [`Op::Reap`] or [`Op::PeerClosed`] (the contract allows
//! any delay before [`Core::handle_closed`]). At the end every migration is delivered and time runs
//! on until every connection must have timed out.
//!
//! # Invariants (a panic names the one that broke)
//!
//! * nothing panics inside the core;
//! * before its `Welcome` a connection is sent nothing but `Error`s, and every such `Error` is
//!   followed by a `Close` (as is every `Error` whose code closes the connection);
//! * a `Welcome` follows only a `Valid` answer to that connection's latest lookup, names that user
//!   and device, comes from the user's home core, and comes once;
//! * a `Migrate` follows only a `Valid` answer for a user homed on the target core;
//! * the server never sends a client-to-server frame, and every frame it sends decodes;
//! * no `Transmit`, `Authenticate` or second `Close` after a connection's `Close`;
//! * a call's actions concern only the connection the call was about;
//! * per [`Core::handle_input`] call at most [`FRAMES_PER_SESSION_PER_TURN`] frames are taken and
//!   answered; `Budget` means a frame is waiting, `Paused` means the session takes no frames now,
//!   and `Drained` leaves nothing the decoder could act on at once;
//! * a connection is refused only when its core is at [`MAX_CONNECTIONS`], and never gets the id of
//!   a live one;
//! * timeouts are never early: a hello timeout only after the hello deadline, a heartbeat timeout
//!   only after [`HEARTBEAT_TIMEOUT`] of silence — and at the end, every connection has timed out;
//! * after every operation each core's counts match the model (connections, authenticated
//!   sessions), [`Core::check_invariants`] holds, and [`Core::phase`] agrees with the model.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use natter_wire::{
    Ack, Body, Cursor, ErrorBody, ErrorCode, Frame, FrameDecoder, History, HistoryPage, Limits, Message,
    PROTOCOL_VERSION, Ping, Pong, Presence, Send, SendOk, Sync, SyncDone, Welcome,
};

use crate::core::fuzz_hooks::Phase;
use crate::core::{
    Action, AuthResult, ConnId, Core, CoreConfig, Detached, FRAMES_PER_SESSION_PER_TURN, HELLO_TIMEOUT,
    InputStatus,
};
use crate::ids::{CoreId, DeviceId, UserId};

/// Cores of the simulated natterd.
pub const CORES: usize = 2;
/// The cores' heartbeat timeout (the hello deadline is the smaller of this and [`HELLO_TIMEOUT`]).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections per core: small, so the limit is reached.
pub const MAX_CONNECTIONS: usize = 8;
/// The cores' frame limit (prefix included).
pub const MAX_FRAME: usize = 64 * 1024;
/// Most operations decoded from one input.
pub const MAX_OPS: usize = 256;
/// Users `1..=USERS` are the ones a `Valid` answer can name.
pub const USERS: u64 = 8;
/// Devices `1..=DEVICES` per user.
pub const DEVICES: u64 = 4;
/// Longest text a [`Text`] can stand for (the protocol's limit is 100,000 characters).
pub const MAX_TEXT: usize = 120_000;
/// The wall clock the cores start at (ms since the Unix epoch).
const UNIX_MS_AT_START: u64 = 1_700_000_000_000;

/// Feeds one input; panics when an invariant breaks.
pub fn run(data: &[u8]) {
    let input = SessionInput::from_bytes(data);
    let mut harness = Harness::new();
    for op in &input.ops {
        harness.apply(op);
        harness.check_all();
    }
    harness.finish();
}

// ---------------------------------------------------------------------------------------------
// The input
// ---------------------------------------------------------------------------------------------

/// One fuzz input: a sequence of operations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionInput {
    /// Applied in order.
    pub ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for SessionInput {
    /// Operations until the bytes run out (or [`MAX_OPS`]).
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Self { ops })
    }

    fn arbitrary_take_rest(mut u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::arbitrary(&mut u)
    }
}

impl SessionInput {
    /// Decodes fuzz bytes; operations that do not decode are dropped.
    pub fn from_bytes(data: &[u8]) -> Self {
        let mut u = Unstructured::new(data);
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            match Op::arbitrary(&mut u) {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        Self { ops }
    }

    /// The bytes that [`SessionInput::from_bytes`] decodes back into `self` (for seeds).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for op in &self.ops {
            op.emit(&mut out);
        }
        out
    }
}

/// One event the harness feeds the cores. A `conn` picks one of the connections currently on a
/// core (modulo their number; none: the operation does nothing).
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A connection is accepted by core `core % CORES`.
    Accept {
        /// The accepting core.
        core: u8,
    },
    /// Bytes arrive on a connection; the core is asked to handle them.
    Input {
        /// Which connection.
        conn: u8,
        /// What arrives.
        input: Input,
    },
    /// The driver calls `handle_input` again without new bytes (after a `Budget`, an adoption or
    /// a successful authentication).
    Resume {
        /// Which connection.
        conn: u8,
    },
    /// The driver answers one pending token lookup (modulo their number).
    Auth {
        /// Which pending lookup.
        pending: u8,
        /// The answer.
        result: AuthChoice,
    },
    /// Time passes; both cores get `handle_timeout`.
    Advance {
        /// Milliseconds.
        ms: u16,
    },
    /// The peer went away: the driver calls `handle_closed`.
    PeerClosed {
        /// Which connection.
        conn: u8,
    },
    /// The driver finishes every `Close` it was asked for (`handle_closed`).
    Reap,
    /// The oldest session migrating to core `core % CORES` (or, if none, the oldest of all)
    /// arrives there: `handle_adopt`.
    Deliver {
        /// The receiving core.
        core: u8,
    },
    /// A device logged out: its user's home core gets `handle_close_device`.
    CloseDevice {
        /// User `user % USERS + 1`.
        user: u8,
        /// Device `device % DEVICES + 1`.
        device: u8,
    },
    /// Core `core % CORES` shuts down: `handle_shutdown`.
    Shutdown {
        /// The core.
        core: u8,
    },
}

/// Bytes arriving on a connection.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Well-formed frames, back to back.
    Frames(Vec<WireFrame>),
    /// The first `keep` bytes of a frame (modulo its length + 1); the rest is kept for [`Input::Rest`].
    Partial {
        /// The frame.
        frame: WireFrame,
        /// How many of its bytes arrive now.
        keep: u16,
    },
    /// The rest of the connection's last [`Input::Partial`] frame.
    Rest,
    /// A frame with one byte (at `at` modulo its length) xored with `xor`.
    Corrupt {
        /// The frame.
        frame: WireFrame,
        /// Which byte.
        at: u16,
        /// What to xor it with.
        xor: u8,
    },
    /// One frame `count` times (floods past the per-turn budget).
    Repeat {
        /// The frame.
        frame: WireFrame,
        /// How often.
        count: u8,
    },
    /// Raw bytes.
    Raw(Blob),
}

/// The driver's answer to a token lookup.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthChoice {
    /// The token belongs to device `device % DEVICES + 1` of user `user % USERS + 1`.
    Valid {
        /// The user.
        user: u8,
        /// The device.
        device: u8,
    },
    /// Unknown or revoked token.
    Invalid,
    /// The store could not answer.
    StoreUnavailable,
}

impl AuthChoice {
    fn result(self) -> AuthResult {
        match self {
            AuthChoice::Valid { user, device } => AuthResult::Valid(user_id(user), device_id(device)),
            AuthChoice::Invalid => AuthResult::Invalid,
            AuthChoice::StoreUnavailable => AuthResult::StoreUnavailable,
        }
    }
}

fn user_id(user: u8) -> UserId {
    UserId(u64::from(user) % USERS + 1)
}

fn device_id(device: u8) -> DeviceId {
    DeviceId(u64::from(device) % DEVICES + 1)
}

/// An arbitrary owned frame: every body type of the schema, any field values.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct WireFrame {
    /// The frame's request id.
    pub request_id: u64,
    /// Its body.
    pub body: WireBody,
}

/// The body of a [`WireFrame`]: one variant per member of the schema's `Body` union.
#[allow(missing_docs)] // each variant and field is the schema's, documented on natter_wire's types
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum WireBody {
    Hello {
        token: Text,
        device: Text,
        version: Version,
    },
    Welcome {
        user_id: u64,
        device_id: u64,
        heartbeat_interval_ms: u32,
        server_time_ms: u64,
        protocol_version: u32,
    },
    Send {
        chat_id: u64,
        client_msg_id: u64,
        text: Text,
    },
    SendOk {
        client_msg_id: u64,
        chat_id: u64,
        seq: u64,
        server_ts_ms: u64,
    },
    Message(WireMessage),
    Sync(Vec<WireCursor>),
    SyncDone(Vec<WireCursor>),
    History {
        chat_id: u64,
        before_seq: u64,
        limit: u32,
    },
    HistoryPage {
        chat_id: u64,
        messages: Vec<WireMessage>,
        has_more: bool,
    },
    Ack {
        chat_id: u64,
        seq: u64,
    },
    Presence {
        user_id: u64,
        online: bool,
        last_seen_ms: u64,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Error {
        code: u16,
        message: Text,
        request_id: u64,
    },
    Resync,
}

/// A `Message` table.
#[allow(missing_docs)] // the fields of natter_wire::Message
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct WireMessage {
    pub chat_id: u64,
    pub seq: u64,
    pub sender: u64,
    pub server_ts_ms: u64,
    pub client_msg_id: u64,
    pub text: Text,
}

/// A `Cursor` struct.
#[allow(missing_docs)] // the fields of natter_wire::Cursor
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireCursor {
    pub chat_id: u64,
    pub seq: u64,
}

/// `Hello.protocol_version`: mostly the one natterd speaks, so Hellos get through.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// [`PROTOCOL_VERSION`].
    Current,
    /// Any number.
    Other(u32),
}

/// A string field. Encoded as one length byte `n < 255` and `n` bytes (invalid UTF-8 is replaced),
/// or `255`, a `u32` count and one byte `c`: the letter `'a' + c % 26` repeated `count` times (at
/// most [`MAX_TEXT`]) — long texts from short inputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(pub String);

impl<'a> Arbitrary<'a> for Text {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let n = u8::arbitrary(u)?;
        if n == u8::MAX {
            let count = u32::arbitrary(u)? as usize;
            let letter = char::from(b'a' + u8::arbitrary(u)? % 26);
            return Ok(Text(std::iter::repeat_n(letter, count.min(MAX_TEXT)).collect()));
        }
        let bytes = take(u, usize::from(n));
        Ok(Text(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// Raw bytes: a little-endian `u16` length and that many bytes (fewer if the input ends).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blob(pub Vec<u8>);

impl<'a> Arbitrary<'a> for Blob {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let n = u16::arbitrary(u)?;
        Ok(Blob(take(u, usize::from(n)).to_vec()))
    }
}

/// Up to `n` bytes off the front of `u`.
fn take<'a>(u: &mut Unstructured<'a>, n: usize) -> &'a [u8] {
    let n = n.min(u.len());
    u.bytes(n).unwrap_or_default()
}

impl From<&WireMessage> for Message {
    fn from(m: &WireMessage) -> Message {
        Message {
            chat_id: m.chat_id,
            seq: m.seq,
            sender: m.sender,
            server_ts_ms: m.server_ts_ms,
            client_msg_id: m.client_msg_id,
            text: m.text.0.clone(),
        }
    }
}

fn cursors(v: &[WireCursor]) -> Vec<Cursor> {
    v.iter()
        .map(|c| Cursor {
            chat_id: c.chat_id,
            seq: c.seq,
        })
        .collect()
}

impl WireFrame {
    /// The owned frame.
    pub fn frame(&self) -> Frame {
        let body = match &self.body {
            WireBody::Hello {
                token,
                device,
                version,
            } => Body::Hello(natter_wire::Hello {
                token: token.0.clone(),
                device: device.0.clone(),
                protocol_version: match version {
                    Version::Current => PROTOCOL_VERSION,
                    Version::Other(v) => *v,
                },
            }),
            WireBody::Welcome {
                user_id,
                device_id,
                heartbeat_interval_ms,
                server_time_ms,
                protocol_version,
            } => Body::Welcome(Welcome {
                user_id: *user_id,
                device_id: *device_id,
                heartbeat_interval_ms: *heartbeat_interval_ms,
                server_time_ms: *server_time_ms,
                protocol_version: *protocol_version,
            }),
            WireBody::Send {
                chat_id,
                client_msg_id,
                text,
            } => Body::Send(Send {
                chat_id: *chat_id,
                client_msg_id: *client_msg_id,
                text: text.0.clone(),
            }),
            WireBody::SendOk {
                client_msg_id,
                chat_id,
                seq,
                server_ts_ms,
            } => Body::SendOk(SendOk {
                client_msg_id: *client_msg_id,
                chat_id: *chat_id,
                seq: *seq,
                server_ts_ms: *server_ts_ms,
            }),
            WireBody::Message(m) => Body::Message(m.into()),
            WireBody::Sync(c) => Body::Sync(Sync { cursors: cursors(c) }),
            WireBody::SyncDone(c) => Body::SyncDone(SyncDone { heads: cursors(c) }),
            WireBody::History {
                chat_id,
                before_seq,
                limit,
            } => Body::History(History {
                chat_id: *chat_id,
                before_seq: *before_seq,
                limit: *limit,
            }),
            WireBody::HistoryPage {
                chat_id,
                messages,
                has_more,
            } => Body::HistoryPage(HistoryPage {
                chat_id: *chat_id,
                messages: messages.iter().map(Message::from).collect(),
                has_more: *has_more,
            }),
            WireBody::Ack { chat_id, seq } => Body::Ack(Ack {
                chat_id: *chat_id,
                seq: *seq,
            }),
            WireBody::Presence {
                user_id,
                online,
                last_seen_ms,
            } => Body::Presence(Presence {
                user_id: *user_id,
                online: *online,
                last_seen_ms: *last_seen_ms,
            }),
            WireBody::Ping { nonce } => Body::Ping(Ping { nonce: *nonce }),
            WireBody::Pong { nonce } => Body::Pong(Pong { nonce: *nonce }),
            WireBody::Error {
                code,
                message,
                request_id,
            } => Body::Error(ErrorBody {
                code: *code,
                message: message.0.clone(),
                request_id: *request_id,
            }),
            WireBody::Resync => Body::Resync,
        };
        Frame::new(self.request_id, body)
    }

    /// The encoded, size-prefixed frame.
    pub fn encode(&self) -> Vec<u8> {
        self.frame().encode().to_vec()
    }
}

impl Input {
    /// The bytes that arrive; `tail` is the connection's kept rest of a partial frame.
    fn bytes(&self, tail: &mut Vec<u8>) -> Vec<u8> {
        match self {
            Input::Frames(frames) => frames.iter().flat_map(WireFrame::encode).collect(),
            Input::Partial { frame, keep } => {
                let mut bytes = frame.encode();
                let keep = usize::from(*keep) % (bytes.len() + 1);
                *tail = bytes.split_off(keep);
                bytes
            }
            Input::Rest => std::mem::take(tail),
            Input::Corrupt { frame, at, xor } => {
                let mut bytes = frame.encode();
                let at = usize::from(*at) % bytes.len().max(1);
                if let Some(b) = bytes.get_mut(at) {
                    *b ^= xor;
                }
                bytes
            }
            Input::Repeat { frame, count } => frame.encode().repeat(usize::from(*count)),
            Input::Raw(blob) => blob.0.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The inverse of the decoding, for seeds
// ---------------------------------------------------------------------------------------------

/// Writes a value as the bytes its [`Arbitrary`] implementation decodes back into it (the layout
/// of `arbitrary` 1.x: integers little-endian, `bool` as one byte, a derived enum's variant as a
/// `u32` scaled onto the variant count, a `Vec` as a `1` byte before each element and a `0` after
/// the last). `tests/fuzz_replay.rs` checks the round trip for every variant.
pub trait Emit {
    /// Appends the encoding of `self` to `out`.
    fn emit(&self, out: &mut Vec<u8>);
}

macro_rules! emit_le {
    ($($t:ty),*) => {$(
        impl Emit for $t {
            fn emit(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
emit_le!(u8, u16, u32, u64);

impl Emit for bool {
    fn emit(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
}

impl<T: Emit> Emit for Vec<T> {
    fn emit(&self, out: &mut Vec<u8>) {
        for x in self {
            out.push(1);
            x.emit(out);
        }
        out.push(0);
    }
}

/// Appends the `u32` a derived enum decodes as variant `index` of `count`: the smallest `v` with
/// `(v * count) >> 32 == index`.
fn variant(out: &mut Vec<u8>, index: u64, count: u64) {
    let v = ((index << 32) + count - 1) / count;
    out.extend_from_slice(&u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes());
}

macro_rules! emit_fields {
    ($out:ident; $($field:expr),*) => {{ $( Emit::emit($field, $out); )* }};
}

impl Emit for Op {
    fn emit(&self, out: &mut Vec<u8>) {
        const N: u64 = 10;
        match self {
            Op::Accept { core } => {
                variant(out, 0, N);
                emit_fields!(out; core)
            }
            Op::Input { conn, input } => {
                variant(out, 1, N);
                emit_fields!(out; conn, input)
            }
            Op::Resume { conn } => {
                variant(out, 2, N);
                emit_fields!(out; conn)
            }
            Op::Auth { pending, result } => {
                variant(out, 3, N);
                emit_fields!(out; pending, result)
            }
            Op::Advance { ms } => {
                variant(out, 4, N);
                emit_fields!(out; ms)
            }
            Op::PeerClosed { conn } => {
                variant(out, 5, N);
                emit_fields!(out; conn)
            }
            Op::Reap => variant(out, 6, N),
            Op::Deliver { core } => {
                variant(out, 7, N);
                emit_fields!(out; core)
            }
            Op::CloseDevice { user, device } => {
                variant(out, 8, N);
                emit_fields!(out; user, device)
            }
            Op::Shutdown { core } => {
                variant(out, 9, N);
                emit_fields!(out; core)
            }
        }
    }
}

impl Emit for Input {
    fn emit(&self, out: &mut Vec<u8>) {
        const N: u64 = 6;
        match self {
            Input::Frames(frames) => {
                variant(out, 0, N);
                emit_fields!(out; frames)
            }
            Input::Partial { frame, keep } => {
                variant(out, 1, N);
                emit_fields!(out; frame, keep)
            }
            Input::Rest => variant(out, 2, N),
            Input::Corrupt { frame, at, xor } => {
                variant(out, 3, N);
                emit_fields!(out; frame, at, xor)
            }
            Input::Repeat { frame, count } => {
                variant(out, 4, N);
                emit_fields!(out; frame, count)
            }
            Input::Raw(blob) => {
                variant(out, 5, N);
                emit_fields!(out; blob)
            }
        }
    }
}

impl Emit for AuthChoice {
    fn emit(&self, out: &mut Vec<u8>) {
        const N: u64 = 3;
        match self {
            AuthChoice::Valid { user, device } => {
                variant(out, 0, N);
                emit_fields!(out; user, device)
            }
            AuthChoice::Invalid => variant(out, 1, N),
            AuthChoice::StoreUnavailable => variant(out, 2, N),
        }
    }
}

impl Emit for WireFrame {
    fn emit(&self, out: &mut Vec<u8>) {
        emit_fields!(out; &self.request_id, &self.body)
    }
}

impl Emit for WireBody {
    fn emit(&self, out: &mut Vec<u8>) {
        const N: u64 = 15;
        match self {
            WireBody::Hello {
                token,
                device,
                version,
            } => {
                variant(out, 0, N);
                emit_fields!(out; token, device, version)
            }
            WireBody::Welcome {
                user_id,
                device_id,
                heartbeat_interval_ms,
                server_time_ms,
                protocol_version,
            } => {
                variant(out, 1, N);
                emit_fields!(out; user_id, device_id, heartbeat_interval_ms, server_time_ms, protocol_version)
            }
            WireBody::Send {
                chat_id,
                client_msg_id,
                text,
            } => {
                variant(out, 2, N);
                emit_fields!(out; chat_id, client_msg_id, text)
            }
            WireBody::SendOk {
                client_msg_id,
                chat_id,
                seq,
                server_ts_ms,
            } => {
                variant(out, 3, N);
                emit_fields!(out; client_msg_id, chat_id, seq, server_ts_ms)
            }
            WireBody::Message(m) => {
                variant(out, 4, N);
                emit_fields!(out; m)
            }
            WireBody::Sync(c) => {
                variant(out, 5, N);
                emit_fields!(out; c)
            }
            WireBody::SyncDone(c) => {
                variant(out, 6, N);
                emit_fields!(out; c)
            }
            WireBody::History {
                chat_id,
                before_seq,
                limit,
            } => {
                variant(out, 7, N);
                emit_fields!(out; chat_id, before_seq, limit)
            }
            WireBody::HistoryPage {
                chat_id,
                messages,
                has_more,
            } => {
                variant(out, 8, N);
                emit_fields!(out; chat_id, messages, has_more)
            }
            WireBody::Ack { chat_id, seq } => {
                variant(out, 9, N);
                emit_fields!(out; chat_id, seq)
            }
            WireBody::Presence {
                user_id,
                online,
                last_seen_ms,
            } => {
                variant(out, 10, N);
                emit_fields!(out; user_id, online, last_seen_ms)
            }
            WireBody::Ping { nonce } => {
                variant(out, 11, N);
                emit_fields!(out; nonce)
            }
            WireBody::Pong { nonce } => {
                variant(out, 12, N);
                emit_fields!(out; nonce)
            }
            WireBody::Error {
                code,
                message,
                request_id,
            } => {
                variant(out, 13, N);
                emit_fields!(out; code, message, request_id)
            }
            WireBody::Resync => variant(out, 14, N),
        }
    }
}

impl Emit for WireMessage {
    fn emit(&self, out: &mut Vec<u8>) {
        emit_fields!(out; &self.chat_id, &self.seq, &self.sender, &self.server_ts_ms, &self.client_msg_id, &self.text)
    }
}

impl Emit for WireCursor {
    fn emit(&self, out: &mut Vec<u8>) {
        emit_fields!(out; &self.chat_id, &self.seq)
    }
}

impl Emit for Version {
    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Version::Current => variant(out, 0, 2),
            Version::Other(v) => {
                variant(out, 1, 2);
                v.emit(out);
            }
        }
    }
}

impl Emit for Text {
    /// # Panics
    ///
    /// For a string that has no encoding: 255 bytes or more that are not one repeated letter
    /// `a`–`z` (seeds never need one).
    fn emit(&self, out: &mut Vec<u8>) {
        let s = &self.0;
        if let Ok(n) = u8::try_from(s.len())
            && n < u8::MAX
        {
            out.push(n);
            out.extend_from_slice(s.as_bytes());
            return;
        }
        let letter = s.bytes().next().unwrap_or(b'a');
        assert!(
            letter.is_ascii_lowercase() && s.bytes().all(|b| b == letter) && s.len() <= MAX_TEXT,
            "a Text of {} bytes must be one repeated letter",
            s.len()
        );
        out.push(u8::MAX);
        u32::try_from(s.len()).unwrap_or(u32::MAX).emit(out);
        out.push(letter - b'a');
    }
}

impl Emit for Blob {
    /// # Panics
    ///
    /// For more than 65,535 bytes.
    fn emit(&self, out: &mut Vec<u8>) {
        let n = u16::try_from(self.0.len()).unwrap_or_else(|_| panic!("a Blob holds at most 65535 bytes"));
        n.emit(out);
        out.extend_from_slice(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------------------------

/// Where a client connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// On core `.0` as `.1`.
    On(usize, ConnId),
    /// Detached, travelling to its home core.
    InFlight,
    /// Closed (`handle_closed` was called).
    Gone,
}

/// The model of one client connection, across migrations.
#[derive(Debug)]
struct Client {
    place: Place,
    /// Bytes received and not yet taken by the core (they travel with the socket).
    buf: BytesMut,
    /// The rest of the last partial frame.
    tail: Vec<u8>,
    /// The answer to the latest token lookup, if `Valid`.
    valid: Option<(UserId, DeviceId)>,
    welcomed: bool,
    close_emitted: bool,
    accepted_at: Instant,
    /// When a frame from it was last taken (or it was welcomed).
    last_heard: Instant,
}

/// Which call produced the actions being drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// `handle_input` for this client.
    Input(usize),
    /// `handle_auth` for this client.
    Auth(usize),
    /// `handle_adopt` of this client.
    Adopt(usize),
    /// `handle_timeout`.
    Timeout,
    /// `handle_close_device` on the user's home core.
    CloseDevice(UserId, DeviceId),
    /// `handle_shutdown`.
    Shutdown,
    /// A call that must produce no action (`handle_accept`, `handle_closed`, `handle_close_device`
    /// on another core).
    Quiet,
}

struct Harness {
    t0: Instant,
    now: Instant,
    cores: Vec<Core>,
    clients: Vec<Client>,
    /// Per core: which client each live `ConnId` is.
    conns: Vec<HashMap<ConnId, usize>>,
    /// Outstanding `Authenticate` actions: (core, conn, client).
    pending: Vec<(usize, ConnId, usize)>,
    /// Detached sessions on their way: (target core, session, client).
    in_flight: VecDeque<(usize, Detached, usize)>,
    decoder: FrameDecoder,
}

impl Harness {
    fn new() -> Self {
        let t0 = Instant::now();
        let cores = (0..CORES)
            .map(|i| {
                let config = CoreConfig {
                    core: CoreId(i),
                    cores: CORES,
                    heartbeat_timeout: HEARTBEAT_TIMEOUT,
                    limits: Limits::with_max_frame(MAX_FRAME),
                    max_connections: MAX_CONNECTIONS,
                };
                Core::new(config, t0, UNIX_MS_AT_START)
            })
            .collect();
        Self {
            t0,
            now: t0,
            cores,
            clients: Vec::new(),
            conns: (0..CORES).map(|_| HashMap::new()).collect(),
            pending: Vec::new(),
            in_flight: VecDeque::new(),
            decoder: FrameDecoder::new(Limits::with_max_frame(MAX_FRAME)),
        }
    }

    fn core_mut(&mut self, core: usize) -> &mut Core {
        match self.cores.get_mut(core) {
            Some(c) => c,
            None => panic!("no core {core}"),
        }
    }

    fn client_mut(&mut self, k: usize) -> &mut Client {
        match self.clients.get_mut(k) {
            Some(c) => c,
            None => panic!("no client {k}"),
        }
    }

    /// The clients currently on a core, in the order they were created.
    fn live(&self) -> Vec<usize> {
        (0..self.clients.len())
            .filter(|&k| {
                self.clients
                    .get(k)
                    .is_some_and(|c| matches!(c.place, Place::On(..)))
            })
            .collect()
    }

    fn pick(&self, conn: u8) -> Option<usize> {
        let live = self.live();
        live.get(usize::from(conn) % live.len().max(1)).copied()
    }

    fn place(&self, k: usize) -> Option<(usize, ConnId)> {
        match self.clients.get(k)?.place {
            Place::On(core, conn) => Some((core, conn)),
            _ => None,
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Accept { core } => self.accept(usize::from(*core) % CORES),
            Op::Input { conn, input } => {
                if let Some(k) = self.pick(*conn) {
                    let client = self.client_mut(k);
                    let bytes = input.bytes(&mut client.tail);
                    client.buf.extend_from_slice(&bytes);
                    self.feed(k);
                }
            }
            Op::Resume { conn } => {
                if let Some(k) = self.pick(*conn) {
                    self.feed(k);
                }
            }
            Op::Auth { pending, result } => {
                if !self.pending.is_empty() {
                    let (core, conn, k) = self.pending.remove(usize::from(*pending) % self.pending.len());
                    let result = result.result();
                    if let AuthResult::Valid(user, device) = result {
                        self.client_mut(k).valid = Some((user, device));
                    }
                    let now = self.now;
                    self.core_mut(core).handle_auth(conn, result, now);
                    self.drain(core, Cause::Auth(k));
                }
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.timeouts();
            }
            Op::PeerClosed { conn } => {
                if let Some(k) = self.pick(*conn) {
                    self.closed(k);
                }
            }
            Op::Reap => {
                for k in self.live() {
                    if self.clients.get(k).is_some_and(|c| c.close_emitted) {
                        self.closed(k);
                    }
                }
            }
            Op::Deliver { core } => {
                let core = usize::from(*core) % CORES;
                let at = self
                    .in_flight
                    .iter()
                    .position(|(to, ..)| *to == core)
                    .unwrap_or(0);
                if let Some((to, detached, k)) = self.in_flight.remove(at) {
                    self.adopt(to, detached, k);
                }
            }
            Op::CloseDevice { user, device } => {
                let (user, device) = (user_id(*user), device_id(*device));
                let home = user.home_core(CORES).0;
                self.core_mut(home).handle_close_device(user, device);
                self.drain(home, Cause::CloseDevice(user, device));
                for k in self.live() {
                    let c = &self.clients[k];
                    if matches!(c.place, Place::On(core, _) if core == home)
                        && c.welcomed
                        && c.valid == Some((user, device))
                    {
                        assert!(
                            c.close_emitted,
                            "close_device left client {k} ({user}/{device}) open"
                        );
                    }
                }
                for other in (0..CORES).filter(|&c| c != home) {
                    self.core_mut(other).handle_close_device(user, device);
                    self.drain(other, Cause::Quiet);
                }
            }
            Op::Shutdown { core } => {
                let core = usize::from(*core) % CORES;
                self.core_mut(core).handle_shutdown();
                self.drain(core, Cause::Shutdown);
                for k in self.live() {
                    let c = &self.clients[k];
                    if matches!(c.place, Place::On(on, _) if on == core) {
                        assert!(c.close_emitted, "shutdown left client {k} open");
                    }
                }
            }
        }
    }

    fn accept(&mut self, core: usize) {
        let now = self.now;
        match self.core_mut(core).handle_accept(now) {
            Some(conn) => {
                let k = self.clients.len();
                let previous = self.conns[core].insert(conn, k);
                assert_eq!(
                    previous, None,
                    "core {core} accepted {conn:?}, the id of live client {previous:?}"
                );
                self.clients.push(Client {
                    place: Place::On(core, conn),
                    buf: BytesMut::new(),
                    tail: Vec::new(),
                    valid: None,
                    welcomed: false,
                    close_emitted: false,
                    accepted_at: now,
                    last_heard: now,
                });
                self.drain(core, Cause::Quiet);
            }
            None => {
                let held = self.conns[core].len();
                assert!(
                    held >= MAX_CONNECTIONS,
                    "core {core} refused a connection while holding {held}"
                );
                let refusal = self.core_mut(core).refusal();
                match Frame::decode(&refusal, &Limits::default()).map(|f| f.body) {
                    Ok(Body::Error(e)) => assert_eq!(e.code, ErrorCode::TooManyConnections.as_u16()),
                    other => panic!("the refusal is not a TooManyConnections error: {other:?}"),
                }
            }
        }
    }

    /// `handle_input` for client `k` with what its buffer holds.
    fn feed(&mut self, k: usize) {
        let Some((core, conn)) = self.place(k) else {
            return;
        };
        let now = self.now;
        let mut buf = std::mem::take(&mut self.client_mut(k).buf);
        let before = self.cores[core].stats().frames_in;
        let status = self.core_mut(core).handle_input(conn, &mut buf, now);
        let taken = self.cores[core].stats().frames_in - before;
        assert!(
            taken <= FRAMES_PER_SESSION_PER_TURN as u64,
            "handle_input took {taken} frames, the budget is {FRAMES_PER_SESSION_PER_TURN}"
        );
        if taken > 0 {
            self.client_mut(k).last_heard = now;
        }
        let sent = self.drain(core, Cause::Input(k));
        assert!(
            sent <= FRAMES_PER_SESSION_PER_TURN,
            "handle_input queued {sent} frames, the budget is {FRAMES_PER_SESSION_PER_TURN}"
        );
        let takes_frames = matches!(
            self.cores[core].phase(conn),
            Some(Phase::AwaitingHello | Phase::Active { .. })
        );
        let actionable = !matches!(self.decoder.split(&mut buf.clone()), Ok(None));
        match status {
            InputStatus::Budget => {
                assert_eq!(
                    taken, FRAMES_PER_SESSION_PER_TURN as u64,
                    "Budget before the budget was spent"
                );
                assert!(actionable, "Budget with no complete frame left");
            }
            InputStatus::Paused => {
                assert!(!takes_frames, "Paused while the session takes frames");
            }
            InputStatus::Drained => {
                assert!(
                    !(takes_frames && actionable),
                    "Drained, but the buffer starts with a frame the decoder acts on at once: {:?}",
                    buf.get(..buf.len().min(8))
                );
            }
        }
        // A migration during the call moved the socket; the bytes travel with the client.
        self.client_mut(k).buf = buf;
    }

    fn timeouts(&mut self) {
        let now = self.now;
        for core in 0..CORES {
            self.core_mut(core).handle_timeout(now);
            self.drain(core, Cause::Timeout);
        }
    }

    /// The driver calls `handle_closed` for client `k`.
    fn closed(&mut self, k: usize) {
        let Some((core, conn)) = self.place(k) else {
            return;
        };
        self.core_mut(core).handle_closed(conn);
        self.conns[core].remove(&conn);
        self.pending.retain(|&(c, id, _)| !(c == core && id == conn));
        self.client_mut(k).place = Place::Gone;
        self.drain(core, Cause::Quiet);
    }

    fn adopt(&mut self, core: usize, detached: Detached, k: usize) {
        let now = self.now;
        let conn = self.core_mut(core).handle_adopt(detached, now);
        let previous = self.conns[core].insert(conn, k);
        assert_eq!(
            previous, None,
            "core {core} adopted as {conn:?}, the id of live client {previous:?}"
        );
        self.client_mut(k).place = Place::On(core, conn);
        self.drain(core, Cause::Adopt(k));
    }

    fn client_of(&self, core: usize, conn: ConnId, action: &str) -> usize {
        match self.conns.get(core).and_then(|m| m.get(&conn)) {
            Some(&k) => k,
            None => panic!("core {core} emitted {action} for {conn:?}, which it does not hold"),
        }
    }

    fn check_cause(&self, cause: Cause, k: usize, action: &str) {
        let ok = match cause {
            Cause::Input(c) | Cause::Auth(c) | Cause::Adopt(c) => c == k,
            Cause::Timeout | Cause::Shutdown => true,
            Cause::CloseDevice(user, device) => self
                .clients
                .get(k)
                .is_some_and(|c| c.welcomed && c.valid == Some((user, device))),
            Cause::Quiet => false,
        };
        assert!(ok, "{cause:?} produced {action} for client {k}");
    }

    /// Drains core `core`'s actions, carrying them out and checking each; returns how many frames
    /// were transmitted.
    fn drain(&mut self, core: usize, cause: Cause) -> usize {
        let mut must_close: Vec<usize> = Vec::new();
        let mut sent = 0;
        while let Some(action) = self.core_mut(core).poll_action() {
            match action {
                Action::Transmit { conn, frame } => {
                    sent += 1;
                    let k = self.client_of(core, conn, "Transmit");
                    self.check_cause(cause, k, "Transmit");
                    let frame = match Frame::decode(&frame, &Limits::default()) {
                        Ok(frame) => frame,
                        Err(err) => panic!("core {core} sent client {k} a frame that does not decode: {err}"),
                    };
                    self.transmitted(core, k, frame, cause, &mut must_close);
                }
                Action::Authenticate { conn, token: _ } => {
                    let k = self.client_of(core, conn, "Authenticate");
                    self.check_cause(cause, k, "Authenticate");
                    let pending = self.pending.iter().any(|&(c, id, _)| c == core && id == conn);
                    assert!(
                        !pending,
                        "a second Authenticate for client {k} before the first was answered"
                    );
                    let c = self.client_mut(k);
                    assert!(!c.close_emitted, "Authenticate for client {k} after its Close");
                    assert!(
                        !c.welcomed,
                        "Authenticate for client {k}, which was already welcomed"
                    );
                    c.valid = None;
                    self.pending.push((core, conn, k));
                }
                Action::Migrate { conn, to } => {
                    let k = self.client_of(core, conn, "Migrate");
                    self.check_cause(cause, k, "Migrate");
                    let c = &self.clients[k];
                    let Some((user, _)) = c.valid else {
                        panic!("Migrate of client {k} without a Valid auth result");
                    };
                    assert!(
                        !c.close_emitted && !c.welcomed,
                        "Migrate of a closed or welcomed client {k}"
                    );
                    assert_eq!(
                        user.home_core(CORES),
                        to,
                        "client {k} migrates away from its user's home core"
                    );
                    assert_ne!(to, CoreId(core), "client {k} migrates to the core it is on");
                    let Some(detached) = self.core_mut(core).detach(conn) else {
                        panic!("Migrate of {conn:?}, which detach does not know");
                    };
                    self.conns[core].remove(&conn);
                    self.client_mut(k).place = Place::InFlight;
                    self.in_flight.push_back((to.0, detached, k));
                }
                Action::Close { conn } => {
                    let k = self.client_of(core, conn, "Close");
                    self.check_cause(cause, k, "Close");
                    let c = self.client_mut(k);
                    assert!(!c.close_emitted, "a second Close for client {k}");
                    c.close_emitted = true;
                    must_close.retain(|&x| x != k);
                }
            }
        }
        assert!(
            must_close.is_empty(),
            "Errors that close the connection without a Close: clients {must_close:?}"
        );
        sent
    }

    fn transmitted(
        &mut self,
        core: usize,
        k: usize,
        frame: Frame,
        cause: Cause,
        must_close: &mut Vec<usize>,
    ) {
        let (now, t0) = (self.now, self.t0);
        let hello_deadline = HELLO_TIMEOUT.min(HEARTBEAT_TIMEOUT);
        let c = self.client_mut(k);
        assert!(
            !c.close_emitted,
            "{} sent to client {k} after its Close",
            frame.body.name()
        );
        match frame.body {
            Body::Welcome(w) => {
                assert!(!c.welcomed, "a second Welcome for client {k}");
                let Some((user, device)) = c.valid else {
                    panic!("Welcome for client {k} without a Valid auth result");
                };
                assert_eq!(
                    (w.user_id, w.device_id),
                    (user.0, device.0),
                    "Welcome names another user/device"
                );
                assert_eq!(
                    user.home_core(CORES),
                    CoreId(core),
                    "Welcome from a core that is not the user's home"
                );
                assert_eq!(w.protocol_version, PROTOCOL_VERSION);
                assert_eq!(
                    u128::from(w.heartbeat_interval_ms),
                    HEARTBEAT_TIMEOUT.as_millis() / 3
                );
                let elapsed = now.duration_since(t0).as_millis() as u64;
                assert_eq!(
                    w.server_time_ms,
                    UNIX_MS_AT_START + elapsed,
                    "Welcome's server time is off"
                );
                c.welcomed = true;
                c.last_heard = now;
            }
            Body::Error(e) => {
                let Some(code) = ErrorCode::from_u16(e.code) else {
                    panic!("client {k} was sent an unknown error code {}", e.code);
                };
                if !c.welcomed || code.closes_connection() {
                    must_close.push(k);
                }
                if cause == Cause::Timeout {
                    match code {
                        ErrorCode::NotAuthenticated => assert!(
                            now >= c.accepted_at + hello_deadline,
                            "client {k} closed before its hello deadline"
                        ),
                        ErrorCode::HeartbeatTimeout => assert!(
                            now >= c.last_heard + HEARTBEAT_TIMEOUT,
                            "client {k} timed out after {:?} of silence",
                            now.duration_since(c.last_heard)
                        ),
                        other => panic!("handle_timeout sent client {k} {other:?}"),
                    }
                }
            }
            Body::Hello(_) | Body::Send(_) | Body::Sync(_) | Body::History(_) | Body::Ack(_) => {
                panic!(
                    "the server sent client {k} a client-to-server {}",
                    frame.body.name()
                )
            }
            other => assert!(
                c.welcomed,
                "{} sent to client {k} before its Welcome",
                other.name()
            ),
        }
    }

    /// Checks every core against the model.
    fn check_all(&self) {
        for (i, core) in self.cores.iter().enumerate() {
            if let Err(err) = core.check_invariants() {
                panic!("core {i}: {err}");
            }
            let on: Vec<(ConnId, &Client)> = self
                .conns
                .get(i)
                .into_iter()
                .flatten()
                .filter_map(|(&conn, &k)| self.clients.get(k).map(|c| (conn, c)))
                .collect();
            let stats = core.stats();
            assert_eq!(
                stats.connections,
                on.len() as u64,
                "core {i} counts its connections wrong"
            );
            let sessions = on.iter().filter(|(_, c)| c.welcomed && !c.close_emitted).count();
            assert_eq!(
                stats.sessions, sessions as u64,
                "core {i} counts its sessions wrong"
            );
            for (conn, c) in on {
                let phase = core.phase(conn);
                let ok = match phase {
                    Some(Phase::Closing) => c.close_emitted,
                    Some(Phase::Active { user, device }) => {
                        c.welcomed && !c.close_emitted && c.valid == Some((user, device))
                    }
                    Some(Phase::AwaitingHello | Phase::Authenticating | Phase::Migrating) => {
                        !c.welcomed && !c.close_emitted
                    }
                    None => false,
                };
                assert!(ok, "core {i}: {conn:?} is {phase:?}, the model says {c:?}");
            }
        }
    }

    /// Delivers every migration, then lets time run until every connection must have timed out.
    fn finish(&mut self) {
        while let Some((to, detached, k)) = self.in_flight.pop_front() {
            self.adopt(to, detached, k);
        }
        self.check_all();
        // Hello deadline or heartbeat timeout, plus the timer wheel's rounding, several times over.
        for _ in 0..8 {
            self.now += HEARTBEAT_TIMEOUT;
            self.timeouts();
        }
        self.check_all();
        for k in self.live() {
            let c = &self.clients[k];
            assert!(c.close_emitted, "client {k} never timed out: {c:?}");
            self.closed(k);
        }
        for (i, core) in self.cores.iter().enumerate() {
            let stats = core.stats();
            assert_eq!(
                (stats.connections, stats.sessions),
                (0, 0),
                "core {i} holds connections at the end"
            );
        }
        self.check_all();
    }
}
