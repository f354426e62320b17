//! The `session` target's input: [`SessionInput`], a sequence of [`Op`]s decoded with
//! [`arbitrary`], and [`Emit`], its inverse, which turns operations back into fuzz bytes (for the
//! seeds in [`crate::fuzzing::seeds`]).

use arbitrary::{Arbitrary, Unstructured};
use natter_wire::{
    Ack, Body, ChatState, ChatStates, Cursor, Delete, Edit, ErrorBody, Frame, History, HistoryPage, Message,
    PROTOCOL_VERSION, Ping, Pong, Presence, Receipt, Send, SendOk, Sync, SyncDone, Typing, Welcome,
};

use super::{MAX_ARRIVAL, MAX_OPS, MAX_TEXT};

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
    /// Decodes fuzz bytes; an operation that does not decode ends the sequence.
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
/// core (modulo their number; with none, the operation does nothing).
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A connection is accepted by core `core % CORES`.
    Accept {
        /// The accepting core.
        core: u8,
    },
    /// Bytes arrive on a connection and the driver calls `handle_input`.
    Input {
        /// Which connection.
        conn: u8,
        /// What arrives.
        input: Input,
    },
    /// The driver calls `handle_input` again without new bytes (after a `Budget`, an adoption or a
    /// successful authentication).
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
    /// Core `core % CORES` takes the oldest command from its queue (a migrating session, work
    /// from the other core, commit completions, a membership change) or, when `core / CORES` is
    /// odd or its queue is empty, the answer of its oldest store read; if it has neither, the
    /// other core does.
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
    /// Bytes arrive on a connection but the driver reads them only with the next [`Op::Input`] or
    /// [`Op::Resume`] (one socket read returns several client writes).
    Arrive {
        /// Which connection.
        conn: u8,
        /// What arrives.
        input: Input,
    },
    /// The storage writer commits its oldest `count % pending + 1` writes (all when
    /// `count` is 255) and queues the completions for their cores.
    Commit {
        /// How many.
        count: u8,
    },
    /// The HTTP side-port asks chat `chat % CHAT_IDS + 1`'s owner core to add or remove a member.
    Membership {
        /// The chat.
        chat: u8,
        /// User `actor % USERS + 1` asks.
        actor: u8,
        /// User `user % USERS + 1` is added or removed.
        user: u8,
        /// Add (true) or remove (false).
        add: bool,
    },
    /// The store starts (true) or stops (false) failing every read.
    StoreFault {
        /// Failing from now on.
        on: bool,
    },
    /// The driver reports that a connection's outbound buffer overflowed.
    Overflow {
        /// Which connection.
        conn: u8,
    },
    /// The driver reports that a connection's outbound buffer drained (`Core::handle_drained`):
    /// a sync waiting for that writes its next page.
    Drained {
        /// Which connection.
        conn: u8,
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
    /// One frame `count` times (floods past the per-turn budget and the send rate).
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

/// An arbitrary owned frame: every body type of the schema, any field values.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct WireFrame {
    /// The frame's request id.
    pub request_id: u64,
    /// Its body.
    pub body: WireBody,
}

/// The body of a [`WireFrame`]: one variant per member of the schema's `Body` union, with the
/// fields of the `natter_wire` struct of the same name (documented there). A `Send`, `Edit`,
/// `Delete` or `Typing` names its chat (and target seq, client message id) with an [`Id`], so
/// that real chats, real targets and retries are likely.
///
/// Decoded by hand (see its [`Arbitrary`] impl) so that the bytes of inputs written before the
/// conversation frames existed keep their meaning.
#[allow(missing_docs)] // the fields are natter_wire's, documented on its types
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireBody {
    Hello {
        token: Text,
        device: Text,
        version: Version,
        sync_first: bool,
        /// Not a byte of its own: the upper half of the Hello tag bucket (see [`OLD_BODIES`]).
        conversation: bool,
    },
    Welcome {
        user_id: u64,
        device_id: u64,
        heartbeat_interval_ms: u32,
        server_time_ms: u64,
        protocol_version: u32,
    },
    Send {
        chat: Id,
        client_msg_id: Id,
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
    Edit {
        chat: Id,
        target_seq: Id,
        client_msg_id: Id,
        text: Text,
    },
    Delete {
        chat: Id,
        target_seq: Id,
        client_msg_id: Id,
    },
    Typing {
        chat: Id,
        active: bool,
        user_id: u64,
    },
    /// Server → client only: a client sending it must get an error.
    Receipt {
        chat_id: u64,
        user_id: u64,
        delivered_seq: u64,
        read_seq: u64,
    },
    /// Server → client only: `(chat_id, last_seq)` per entry, read marker and unread 0.
    ChatStates(Vec<WireCursor>),
}

/// The number of [`WireBody`] variants when its decoding was `#[derive(Arbitrary)]`: a `u32` tag
/// `t` picked variant `(t * 15) >> 32` of the first fifteen. It still does; the variants added
/// since take the upper half of an old variant's range of tags ([`NEW_IN_UPPER_HALF`]). Seeds
/// write each old variant's lowest tag, so every seed and corpus file written before decodes as
/// it did (a fuzzer-found input whose tag lies in such an upper half now means the new variant).
const OLD_BODIES: u64 = 15;

/// Which old variants' upper halves hold which new body: Hello → Hello with `conversation`,
/// Send → Edit, Message → Receipt, SyncDone → ChatStates, Ack → Delete, Ping → Typing.
const NEW_IN_UPPER_HALF: [u64; 6] = [0, 2, 4, 6, 9, 11];

/// The lowest tag of old variant `index`'s range.
fn bucket_start(index: u64) -> u64 {
    (index << 32).div_ceil(OLD_BODIES)
}

/// The lowest tag of the upper half of old variant `index`'s range.
fn bucket_split(index: u64) -> u64 {
    let (start, end) = (bucket_start(index), bucket_start(index + 1));
    start + (end - start) / 2
}

impl<'a> Arbitrary<'a> for WireBody {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let tag = u64::from(u32::arbitrary(u)?);
        let index = (tag * OLD_BODIES) >> 32;
        let upper = NEW_IN_UPPER_HALF.contains(&index) && tag >= bucket_split(index);
        Ok(match (index, upper) {
            (0, conversation) => WireBody::Hello {
                token: Text::arbitrary(u)?,
                device: Text::arbitrary(u)?,
                version: Version::arbitrary(u)?,
                sync_first: bool::arbitrary(u)?,
                conversation,
            },
            (1, _) => WireBody::Welcome {
                user_id: u64::arbitrary(u)?,
                device_id: u64::arbitrary(u)?,
                heartbeat_interval_ms: u32::arbitrary(u)?,
                server_time_ms: u64::arbitrary(u)?,
                protocol_version: u32::arbitrary(u)?,
            },
            (2, false) => WireBody::Send {
                chat: Id::arbitrary(u)?,
                client_msg_id: Id::arbitrary(u)?,
                text: Text::arbitrary(u)?,
            },
            (2, true) => WireBody::Edit {
                chat: Id::arbitrary(u)?,
                target_seq: Id::arbitrary(u)?,
                client_msg_id: Id::arbitrary(u)?,
                text: Text::arbitrary(u)?,
            },
            (3, _) => WireBody::SendOk {
                client_msg_id: u64::arbitrary(u)?,
                chat_id: u64::arbitrary(u)?,
                seq: u64::arbitrary(u)?,
                server_ts_ms: u64::arbitrary(u)?,
            },
            (4, false) => WireBody::Message(WireMessage::arbitrary(u)?),
            (4, true) => WireBody::Receipt {
                chat_id: u64::arbitrary(u)?,
                user_id: u64::arbitrary(u)?,
                delivered_seq: u64::arbitrary(u)?,
                read_seq: u64::arbitrary(u)?,
            },
            (5, _) => WireBody::Sync(Vec::arbitrary(u)?),
            (6, false) => WireBody::SyncDone(Vec::arbitrary(u)?),
            (6, true) => WireBody::ChatStates(Vec::arbitrary(u)?),
            (7, _) => WireBody::History {
                chat_id: u64::arbitrary(u)?,
                before_seq: u64::arbitrary(u)?,
                limit: u32::arbitrary(u)?,
            },
            (8, _) => WireBody::HistoryPage {
                chat_id: u64::arbitrary(u)?,
                messages: Vec::arbitrary(u)?,
                has_more: bool::arbitrary(u)?,
            },
            (9, false) => WireBody::Ack {
                chat_id: u64::arbitrary(u)?,
                seq: u64::arbitrary(u)?,
            },
            (9, true) => WireBody::Delete {
                chat: Id::arbitrary(u)?,
                target_seq: Id::arbitrary(u)?,
                client_msg_id: Id::arbitrary(u)?,
            },
            (10, _) => WireBody::Presence {
                user_id: u64::arbitrary(u)?,
                online: bool::arbitrary(u)?,
                last_seen_ms: u64::arbitrary(u)?,
            },
            (11, false) => WireBody::Ping {
                nonce: u64::arbitrary(u)?,
            },
            (11, true) => WireBody::Typing {
                chat: Id::arbitrary(u)?,
                active: bool::arbitrary(u)?,
                user_id: u64::arbitrary(u)?,
            },
            (12, _) => WireBody::Pong {
                nonce: u64::arbitrary(u)?,
            },
            (13, _) => WireBody::Error {
                code: u16::arbitrary(u)?,
                message: Text::arbitrary(u)?,
                request_id: u64::arbitrary(u)?,
            },
            _ => WireBody::Resync,
        })
    }
}

/// A `Message` table (the fields of `natter_wire::Message`).
#[allow(missing_docs)] // the fields are natter_wire's, documented on its types
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct WireMessage {
    pub chat_id: u64,
    pub seq: u64,
    pub sender: u64,
    pub server_ts_ms: u64,
    pub client_msg_id: u64,
    pub text: Text,
}

/// A `Cursor` struct (the fields of `natter_wire::Cursor`).
#[allow(missing_docs)] // the fields are natter_wire's, documented on its types
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

/// An id in a `Send`: usually a small one (so that sends name the harness's chats and retries
/// reuse a client message id), sometimes any.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id {
    /// `n % 8`: chat ids 1 to 5 exist in the harness's store, 0 and 6–7 do not.
    Small(u8),
    /// Any value.
    Any(u64),
}

impl Id {
    /// The id's value.
    pub fn value(self) -> u64 {
        match self {
            Id::Small(n) => u64::from(n % 8),
            Id::Any(v) => v,
        }
    }
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
            ..Message::default()
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
                sync_first,
                conversation,
            } => Body::Hello(natter_wire::Hello {
                token: token.0.clone(),
                device: device.0.clone(),
                protocol_version: match version {
                    Version::Current => PROTOCOL_VERSION,
                    Version::Other(v) => *v,
                },
                sync_first: *sync_first,
                conversation: *conversation,
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
                max_frame: 0,
            }),
            WireBody::Send {
                chat,
                client_msg_id,
                text,
            } => Body::Send(Send {
                chat_id: chat.value(),
                client_msg_id: client_msg_id.value(),
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
            WireBody::Edit {
                chat,
                target_seq,
                client_msg_id,
                text,
            } => Body::Edit(Edit {
                chat_id: chat.value(),
                target_seq: target_seq.value(),
                client_msg_id: client_msg_id.value(),
                text: text.0.clone(),
            }),
            WireBody::Delete {
                chat,
                target_seq,
                client_msg_id,
            } => Body::Delete(Delete {
                chat_id: chat.value(),
                target_seq: target_seq.value(),
                client_msg_id: client_msg_id.value(),
            }),
            WireBody::Typing {
                chat,
                active,
                user_id,
            } => Body::Typing(Typing {
                chat_id: chat.value(),
                active: *active,
                user_id: *user_id,
            }),
            WireBody::Receipt {
                chat_id,
                user_id,
                delivered_seq,
                read_seq,
            } => Body::Receipt(Receipt {
                chat_id: *chat_id,
                user_id: *user_id,
                delivered_seq: *delivered_seq,
                read_seq: *read_seq,
            }),
            WireBody::ChatStates(c) => Body::ChatStates(ChatStates {
                chats: c
                    .iter()
                    .map(|c| ChatState {
                        chat_id: c.chat_id,
                        last_seq: c.seq,
                        ..ChatState::default()
                    })
                    .collect(),
            }),
        };
        Frame::new(self.request_id, body)
    }

    /// The encoded, size-prefixed frame.
    pub fn encode(&self) -> Vec<u8> {
        self.frame().encode().to_vec()
    }
}

impl Input {
    /// The bytes that arrive (at most about [`MAX_ARRIVAL`]); `tail` is the connection's kept rest
    /// of a partial frame.
    pub(super) fn bytes(&self, tail: &mut Vec<u8>) -> Vec<u8> {
        match self {
            Input::Frames(frames) => {
                let mut bytes = Vec::new();
                for frame in frames {
                    if bytes.len() >= MAX_ARRIVAL {
                        break;
                    }
                    bytes.extend_from_slice(&frame.encode());
                }
                bytes
            }
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
            Input::Repeat { frame, count } => {
                let bytes = frame.encode();
                bytes.repeat(usize::from(*count).min(MAX_ARRIVAL / bytes.len().max(1)))
            }
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
    let v = (index << 32).div_ceil(count);
    out.extend_from_slice(&u32::try_from(v).unwrap_or(u32::MAX).to_le_bytes());
}

/// Emits a variant index, then each field.
macro_rules! emit_variant {
    ($out:ident, $index:expr, $count:expr $(; $($field:expr),*)?) => {{
        variant($out, $index, $count);
        $($( Emit::emit($field, $out); )*)?
    }};
}

impl Emit for Op {
    fn emit(&self, out: &mut Vec<u8>) {
        const N: u64 = 16;
        match self {
            Op::Accept { core } => emit_variant!(out, 0, N; core),
            Op::Input { conn, input } => emit_variant!(out, 1, N; conn, input),
            Op::Resume { conn } => emit_variant!(out, 2, N; conn),
            Op::Auth { pending, result } => emit_variant!(out, 3, N; pending, result),
            Op::Advance { ms } => emit_variant!(out, 4, N; ms),
            Op::PeerClosed { conn } => emit_variant!(out, 5, N; conn),
            Op::Reap => emit_variant!(out, 6, N),
            Op::Deliver { core } => emit_variant!(out, 7, N; core),
            Op::CloseDevice { user, device } => emit_variant!(out, 8, N; user, device),
            Op::Shutdown { core } => emit_variant!(out, 9, N; core),
            Op::Arrive { conn, input } => emit_variant!(out, 10, N; conn, input),
            Op::Commit { count } => emit_variant!(out, 11, N; count),
            Op::Membership {
                chat,
                actor,
                user,
                add,
            } => emit_variant!(out, 12, N; chat, actor, user, add),
            Op::StoreFault { on } => emit_variant!(out, 13, N; on),
            Op::Overflow { conn } => emit_variant!(out, 14, N; conn),
            Op::Drained { conn } => emit_variant!(out, 15, N; conn),
        }
    }
}

impl Emit for Input {
    fn emit(&self, out: &mut Vec<u8>) {
        const N: u64 = 6;
        match self {
            Input::Frames(frames) => emit_variant!(out, 0, N; frames),
            Input::Partial { frame, keep } => emit_variant!(out, 1, N; frame, keep),
            Input::Rest => emit_variant!(out, 2, N),
            Input::Corrupt { frame, at, xor } => emit_variant!(out, 3, N; frame, at, xor),
            Input::Repeat { frame, count } => emit_variant!(out, 4, N; frame, count),
            Input::Raw(blob) => emit_variant!(out, 5, N; blob),
        }
    }
}

impl Emit for AuthChoice {
    fn emit(&self, out: &mut Vec<u8>) {
        const N: u64 = 3;
        match self {
            AuthChoice::Valid { user, device } => emit_variant!(out, 0, N; user, device),
            AuthChoice::Invalid => emit_variant!(out, 1, N),
            AuthChoice::StoreUnavailable => emit_variant!(out, 2, N),
        }
    }
}

impl Emit for WireFrame {
    fn emit(&self, out: &mut Vec<u8>) {
        self.request_id.emit(out);
        self.body.emit(out);
    }
}

/// Appends the tag of a [`WireBody`] added since the derive: the lowest tag of the upper half of
/// old variant `index`'s range.
fn upper_half(out: &mut Vec<u8>, index: u64) {
    out.extend_from_slice(
        &u32::try_from(bucket_split(index))
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
}

/// Emits a new body's tag ([`upper_half`]), then each field.
macro_rules! emit_upper {
    ($out:ident, $index:expr; $($field:expr),*) => {{
        upper_half($out, $index);
        $( Emit::emit($field, $out); )*
    }};
}

impl Emit for WireBody {
    fn emit(&self, out: &mut Vec<u8>) {
        const N: u64 = OLD_BODIES;
        match self {
            WireBody::Hello {
                token,
                device,
                version,
                sync_first,
                conversation: false,
            } => emit_variant!(out, 0, N; token, device, version, sync_first),
            WireBody::Hello {
                token,
                device,
                version,
                sync_first,
                conversation: true,
            } => emit_upper!(out, 0; token, device, version, sync_first),
            WireBody::Welcome {
                user_id,
                device_id,
                heartbeat_interval_ms,
                server_time_ms,
                protocol_version,
            } => {
                emit_variant!(out, 1, N; user_id, device_id, heartbeat_interval_ms, server_time_ms, protocol_version)
            }
            WireBody::Send {
                chat,
                client_msg_id,
                text,
            } => emit_variant!(out, 2, N; chat, client_msg_id, text),
            WireBody::SendOk {
                client_msg_id,
                chat_id,
                seq,
                server_ts_ms,
            } => {
                emit_variant!(out, 3, N; client_msg_id, chat_id, seq, server_ts_ms)
            }
            WireBody::Message(m) => emit_variant!(out, 4, N; m),
            WireBody::Sync(c) => emit_variant!(out, 5, N; c),
            WireBody::SyncDone(c) => emit_variant!(out, 6, N; c),
            WireBody::History {
                chat_id,
                before_seq,
                limit,
            } => emit_variant!(out, 7, N; chat_id, before_seq, limit),
            WireBody::HistoryPage {
                chat_id,
                messages,
                has_more,
            } => {
                emit_variant!(out, 8, N; chat_id, messages, has_more)
            }
            WireBody::Ack { chat_id, seq } => emit_variant!(out, 9, N; chat_id, seq),
            WireBody::Presence {
                user_id,
                online,
                last_seen_ms,
            } => {
                emit_variant!(out, 10, N; user_id, online, last_seen_ms)
            }
            WireBody::Ping { nonce } => emit_variant!(out, 11, N; nonce),
            WireBody::Pong { nonce } => emit_variant!(out, 12, N; nonce),
            WireBody::Error {
                code,
                message,
                request_id,
            } => emit_variant!(out, 13, N; code, message, request_id),
            WireBody::Resync => emit_variant!(out, 14, N),
            WireBody::Edit {
                chat,
                target_seq,
                client_msg_id,
                text,
            } => emit_upper!(out, 2; chat, target_seq, client_msg_id, text),
            WireBody::Receipt {
                chat_id,
                user_id,
                delivered_seq,
                read_seq,
            } => emit_upper!(out, 4; chat_id, user_id, delivered_seq, read_seq),
            WireBody::ChatStates(c) => emit_upper!(out, 6; c),
            WireBody::Delete {
                chat,
                target_seq,
                client_msg_id,
            } => emit_upper!(out, 9; chat, target_seq, client_msg_id),
            WireBody::Typing {
                chat,
                active,
                user_id,
            } => emit_upper!(out, 11; chat, active, user_id),
        }
    }
}

impl Emit for WireMessage {
    fn emit(&self, out: &mut Vec<u8>) {
        for x in [
            self.chat_id,
            self.seq,
            self.sender,
            self.server_ts_ms,
            self.client_msg_id,
        ] {
            x.emit(out);
        }
        self.text.emit(out);
    }
}

impl Emit for WireCursor {
    fn emit(&self, out: &mut Vec<u8>) {
        self.chat_id.emit(out);
        self.seq.emit(out);
    }
}

impl Emit for Version {
    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Version::Current => emit_variant!(out, 0, 2),
            Version::Other(v) => emit_variant!(out, 1, 2; v),
        }
    }
}

impl Emit for Id {
    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Id::Small(n) => emit_variant!(out, 0, 2; n),
            Id::Any(v) => emit_variant!(out, 1, 2; v),
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
