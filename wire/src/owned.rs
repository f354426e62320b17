//! The owned, convenient representation of frames — [`Frame`], [`Body`] and one struct per schema
//! table — for clients, tests and cold paths, plus the [`Encoder`] that turns them (or, on hot paths,
//! borrowed parts) into size-prefixed FlatBuffers.
//!
//! Every struct has the schema table's fields under the same names. Strings are always written (an
//! empty `String` is an empty FlatBuffers string); on reading, an absent string is an empty `String`
//! and an absent vector an empty `Vec`, matching the FlatBuffers defaults of other languages.

use std::fmt;

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use crate::{ErrorCode, Limits, WireError, fb, view};

/// Client → server, first frame of every connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Hello {
    /// The device token from `POST /v1/login` (64 hex characters).
    pub token: String,
    /// Free-form description of the device/app, for logs (at most 128 bytes).
    pub device: String,
    /// The protocol version the client speaks ([`crate::PROTOCOL_VERSION`]).
    pub protocol_version: u32,
    /// The client will send `Sync`: hold live message pushes back until then, so the sync stream
    /// hands over to live pushes exactly once and in order (docs/PROTOCOL.md, "The seam").
    pub sync_first: bool,
    /// The client understands Receipt, Typing and ChatStates: only then does the server send them
    /// (a ChatStates right after the Welcome).
    pub conversation: bool,
}

/// Server → client, the answer to a valid [`Hello`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Welcome {
    /// The authenticated user.
    pub user_id: u64,
    /// The device the token belongs to.
    pub device_id: u64,
    /// Send a frame (Ping when idle) at least this often, in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// Server wall clock, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// The protocol version the server speaks on this connection.
    pub protocol_version: u32,
    /// The largest frame either side may send on this connection, prefix included, in bytes.
    pub max_frame: u32,
}

/// Client → server: store a message in a chat. Retry with the same `client_msg_id` after any failure.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Send {
    /// The chat to post in.
    pub chat_id: u64,
    /// Chosen by the client, unique per sending user; makes retries idempotent.
    pub client_msg_id: u64,
    /// 1 to 100,000 Unicode scalar values.
    pub text: String,
}

/// Server → client: the [`Send`] with this `client_msg_id` is durably stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SendOk {
    /// The `client_msg_id` of the acknowledged send.
    pub client_msg_id: u64,
    /// The chat the message was stored in.
    pub chat_id: u64,
    /// The message's sequence number in the chat.
    pub seq: u64,
    /// Server timestamp of the message, milliseconds since the Unix epoch.
    pub server_ts_ms: u64,
}

/// Server → client: one stored message (live push, sync or history).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Message {
    /// The chat the message belongs to.
    pub chat_id: u64,
    /// Gapless, strictly increasing from 1 within the chat.
    pub seq: u64,
    /// The sending user.
    pub sender: u64,
    /// Server timestamp, milliseconds since the Unix epoch.
    pub server_ts_ms: u64,
    /// The sender's `client_msg_id`.
    pub client_msg_id: u64,
    /// The message text: for a Text its current text (empty once deleted), for an Edit the new
    /// text (empty once its target is deleted), for a Delete empty.
    pub text: String,
    /// Text, Edit or Delete.
    pub kind: fb::MessageKind,
    /// For an Edit or Delete: the seq of the Text it changes (0 for a Text).
    pub target_seq: u64,
    /// For a Text: the seq of the latest Edit applied to it (0: never edited).
    pub edited_seq: u64,
    /// For a Text: the seq of the Delete that removed it (0: not deleted).
    pub deleted_seq: u64,
}

/// Client → server: replace the text of an earlier message of one's own; answered like [`Send`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Edit {
    /// The chat.
    pub chat_id: u64,
    /// The seq of the Text message to edit.
    pub target_seq: u64,
    /// Chosen by the client, unique per sending user; makes retries idempotent.
    pub client_msg_id: u64,
    /// The new text: 1 to 100,000 Unicode scalar values.
    pub text: String,
}

/// Client → server: delete an earlier message; answered like [`Send`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Delete {
    /// The chat.
    pub chat_id: u64,
    /// The seq of the Text message to delete.
    pub target_seq: u64,
    /// Chosen by the client, unique per sending user; makes retries idempotent.
    pub client_msg_id: u64,
}

/// Either direction: a typing indicator (never stored; expires 6 s after its last `active`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Typing {
    /// The chat.
    pub chat_id: u64,
    /// Typing (true) or stopped (false).
    pub active: bool,
    /// On pushes: who is typing (ignored from clients).
    pub user_id: u64,
}

/// Server → client: how far `user_id` has received and read `chat_id` (cumulative).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The chat.
    pub chat_id: u64,
    /// The member the receipt is about.
    pub user_id: u64,
    /// Highest seq any of the member's devices acknowledged.
    pub delivered_seq: u64,
    /// The member's read marker; 0 when either side turned read receipts off.
    pub read_seq: u64,
}

/// One chat's read state for [`ChatStates`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChatState {
    /// The chat.
    pub chat_id: u64,
    /// Its last seq.
    pub last_seq: u64,
    /// The user's read marker.
    pub read_seq: u64,
    /// Text messages of others after `read_seq` that are not deleted.
    pub unread: u64,
}

/// Server → client, after Welcome: the user's chats with read markers and unread counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ChatStates {
    /// One entry per chat.
    pub chats: Vec<ChatState>,
}

/// A position in one chat: "everything up to and including `seq`".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cursor {
    /// The chat.
    pub chat_id: u64,
    /// The last sequence number covered.
    pub seq: u64,
}

/// Client → server: send everything after these cursors, then [`SyncDone`]. An empty list means
/// "use the cursors the server stored for this device".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sync {
    /// The device's position in each chat it knows.
    pub cursors: Vec<Cursor>,
}

/// Server → client: the sync is complete.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyncDone {
    /// Each chat's last sequence number.
    pub heads: Vec<Cursor>,
}

/// Client → server: page back through a chat's history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct History {
    /// The chat.
    pub chat_id: u64,
    /// Return messages with `seq < before_seq`; 0 means "from the newest".
    pub before_seq: u64,
    /// At most this many messages (the server caps it at 200).
    pub limit: u32,
}

/// Server → client: the answer to [`History`], newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistoryPage {
    /// The chat.
    pub chat_id: u64,
    /// The messages, newest first.
    pub messages: Vec<Message>,
    /// True when older messages exist before the last one in `messages`.
    pub has_more: bool,
}

/// Client → server: this device has received everything up to `seq` in `chat_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ack {
    /// The chat.
    pub chat_id: u64,
    /// The last sequence number received.
    pub seq: u64,
}

/// Server → client: a friend's presence changed (or the snapshot after Welcome).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Presence {
    /// The friend.
    pub user_id: u64,
    /// Whether at least one of the friend's devices is connected.
    pub online: bool,
    /// Milliseconds since the Unix epoch; 0 when never seen.
    pub last_seen_ms: u64,
}

/// Either direction: keepalive; the peer answers with a [`Pong`] carrying `nonce`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ping {
    /// Echoed in the Pong.
    pub nonce: u64,
}

/// Either direction: the answer to a [`Ping`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pong {
    /// The Ping's nonce.
    pub nonce: u64,
}

/// Server → client: a request failed, or the connection is being closed (the schema's `Error` table).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ErrorBody {
    /// The numeric [`ErrorCode`] (kept as `u16` so codes from newer servers survive a round trip).
    pub code: u16,
    /// A human-readable explanation; never parse it.
    pub message: String,
    /// The `request_id` of the frame this error answers (0: none).
    pub request_id: u64,
}

impl ErrorBody {
    /// An error with `code`, `message`, answering the frame with `request_id`.
    pub fn new(code: ErrorCode, message: impl Into<String>, request_id: u64) -> Self {
        ErrorBody {
            code: code.as_u16(),
            message: message.into(),
            request_id,
        }
    }

    /// The [`ErrorCode`], or `None` for a code this version does not know.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

/// The body of a frame: one variant per member of the schema's `Body` union.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Send`].
    Send(Send),
    /// See [`SendOk`].
    SendOk(SendOk),
    /// See [`Message`].
    Message(Message),
    /// See [`Sync`].
    Sync(Sync),
    /// See [`SyncDone`].
    SyncDone(SyncDone),
    /// See [`History`].
    History(History),
    /// See [`HistoryPage`].
    HistoryPage(HistoryPage),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Presence`].
    Presence(Presence),
    /// See [`Ping`].
    Ping(Ping),
    /// See [`Pong`].
    Pong(Pong),
    /// See [`ErrorBody`].
    Error(ErrorBody),
    /// Server → client: live pushes to this session have stopped (it fell too far behind); send
    /// [`Sync`] with your cursors to catch up.
    Resync,
    /// See [`Edit`].
    Edit(Edit),
    /// See [`Delete`].
    Delete(Delete),
    /// See [`Typing`].
    Typing(Typing),
    /// See [`Receipt`].
    Receipt(Receipt),
    /// See [`ChatStates`].
    ChatStates(ChatStates),
}

impl Body {
    /// The union discriminant of this body.
    pub fn body_type(&self) -> fb::Body {
        match self {
            Body::Hello(_) => fb::Body::Hello,
            Body::Welcome(_) => fb::Body::Welcome,
            Body::Send(_) => fb::Body::Send,
            Body::SendOk(_) => fb::Body::SendOk,
            Body::Message(_) => fb::Body::Message,
            Body::Sync(_) => fb::Body::Sync,
            Body::SyncDone(_) => fb::Body::SyncDone,
            Body::History(_) => fb::Body::History,
            Body::HistoryPage(_) => fb::Body::HistoryPage,
            Body::Ack(_) => fb::Body::Ack,
            Body::Presence(_) => fb::Body::Presence,
            Body::Ping(_) => fb::Body::Ping,
            Body::Pong(_) => fb::Body::Pong,
            Body::Error(_) => fb::Body::Error,
            Body::Resync => fb::Body::Resync,
            Body::Edit(_) => fb::Body::Edit,
            Body::Delete(_) => fb::Body::Delete,
            Body::Typing(_) => fb::Body::Typing,
            Body::Receipt(_) => fb::Body::Receipt,
            Body::ChatStates(_) => fb::Body::ChatStates,
        }
    }

    /// The schema name of this body (`"Hello"`, `"SendOk"`, ...), for logs.
    pub fn name(&self) -> &'static str {
        self.body_type().variant_name().unwrap_or("?")
    }
}

macro_rules! body_from {
    ($($variant:ident => $ty:ty),* $(,)?) => {$(
        impl From<$ty> for Body {
            fn from(body: $ty) -> Body {
                Body::$variant(body)
            }
        }
    )*};
}

body_from! {
    Hello => Hello, Welcome => Welcome, Send => Send, SendOk => SendOk, Message => Message,
    Sync => Sync, SyncDone => SyncDone, History => History, HistoryPage => HistoryPage, Ack => Ack,
    Presence => Presence, Ping => Ping, Pong => Pong, Error => ErrorBody, Edit => Edit, Delete => Delete,
    Typing => Typing, Receipt => Receipt, ChatStates => ChatStates,
}

/// One frame: a request id and a body.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Frame {
    /// Chosen by the client for requests and echoed in the server's answer; 0 on pushes.
    pub request_id: u64,
    /// What the frame says.
    pub body: Body,
}

impl Frame {
    /// A frame with `request_id` and `body`.
    pub fn new(request_id: u64, body: Body) -> Self {
        Frame { request_id, body }
    }

    /// Encodes the frame as a size-prefixed FlatBuffer. For repeated encoding keep an [`Encoder`].
    ///
    /// # Panics
    ///
    /// Only if the frame exceeds the FlatBuffers maximum of 2 GiB.
    pub fn encode(&self) -> Bytes {
        Encoder::new().encode(self)
    }

    /// Verifies a size-prefixed frame (prefix included) against `limits` and converts it.
    ///
    /// # Errors
    ///
    /// As [`view`].
    pub fn decode(frame: &[u8], limits: &Limits) -> Result<Frame, WireError> {
        Frame::from_view(view(frame, limits)?)
    }

    /// Converts a verified view into the owned form.
    ///
    /// # Errors
    ///
    /// [`WireError::MissingBody`] when the body union is `NONE` or unknown.
    pub fn from_view(view: fb::Frame<'_>) -> Result<Frame, WireError> {
        let body = match view.body_type() {
            fb::Body::Hello => view.body_as_hello().map(|b| {
                Body::Hello(Hello {
                    token: string(b.token()),
                    device: string(b.device()),
                    protocol_version: b.protocol_version(),
                    sync_first: b.sync_first(),
                    conversation: b.conversation(),
                })
            }),
            fb::Body::Welcome => view.body_as_welcome().map(|b| {
                Body::Welcome(Welcome {
                    user_id: b.user_id(),
                    device_id: b.device_id(),
                    heartbeat_interval_ms: b.heartbeat_interval_ms(),
                    server_time_ms: b.server_time_ms(),
                    protocol_version: b.protocol_version(),
                    max_frame: b.max_frame(),
                })
            }),
            fb::Body::Send => view.body_as_send().map(|b| {
                Body::Send(Send {
                    chat_id: b.chat_id(),
                    client_msg_id: b.client_msg_id(),
                    text: string(b.text()),
                })
            }),
            fb::Body::SendOk => view.body_as_send_ok().map(|b| {
                Body::SendOk(SendOk {
                    client_msg_id: b.client_msg_id(),
                    chat_id: b.chat_id(),
                    seq: b.seq(),
                    server_ts_ms: b.server_ts_ms(),
                })
            }),
            fb::Body::Message => view.body_as_message().map(|b| Body::Message(message(b))),
            fb::Body::Sync => view.body_as_sync().map(|b| {
                Body::Sync(Sync {
                    cursors: cursors(b.cursors()),
                })
            }),
            fb::Body::SyncDone => view.body_as_sync_done().map(|b| {
                Body::SyncDone(SyncDone {
                    heads: cursors(b.heads()),
                })
            }),
            fb::Body::History => view.body_as_history().map(|b| {
                Body::History(History {
                    chat_id: b.chat_id(),
                    before_seq: b.before_seq(),
                    limit: b.limit(),
                })
            }),
            fb::Body::HistoryPage => view.body_as_history_page().map(|b| {
                Body::HistoryPage(HistoryPage {
                    chat_id: b.chat_id(),
                    messages: b
                        .messages()
                        .map(|v| v.iter().map(message).collect())
                        .unwrap_or_default(),
                    has_more: b.has_more(),
                })
            }),
            fb::Body::Ack => view.body_as_ack().map(|b| {
                Body::Ack(Ack {
                    chat_id: b.chat_id(),
                    seq: b.seq(),
                })
            }),
            fb::Body::Presence => view.body_as_presence().map(|b| {
                Body::Presence(Presence {
                    user_id: b.user_id(),
                    online: b.online(),
                    last_seen_ms: b.last_seen_ms(),
                })
            }),
            fb::Body::Ping => view.body_as_ping().map(|b| Body::Ping(Ping { nonce: b.nonce() })),
            fb::Body::Pong => view.body_as_pong().map(|b| Body::Pong(Pong { nonce: b.nonce() })),
            fb::Body::Error => view.body_as_error().map(|b| {
                Body::Error(ErrorBody {
                    code: b.code(),
                    message: string(b.message()),
                    request_id: b.request_id(),
                })
            }),
            fb::Body::Resync => view.body_as_resync().map(|_| Body::Resync),
            fb::Body::Edit => view.body_as_edit().map(|b| {
                Body::Edit(Edit {
                    chat_id: b.chat_id(),
                    target_seq: b.target_seq(),
                    client_msg_id: b.client_msg_id(),
                    text: string(b.text()),
                })
            }),
            fb::Body::Delete => view.body_as_delete().map(|b| {
                Body::Delete(Delete {
                    chat_id: b.chat_id(),
                    target_seq: b.target_seq(),
                    client_msg_id: b.client_msg_id(),
                })
            }),
            fb::Body::Typing => view.body_as_typing().map(|b| {
                Body::Typing(Typing {
                    chat_id: b.chat_id(),
                    active: b.active(),
                    user_id: b.user_id(),
                })
            }),
            fb::Body::Receipt => view.body_as_receipt().map(|b| {
                Body::Receipt(Receipt {
                    chat_id: b.chat_id(),
                    user_id: b.user_id(),
                    delivered_seq: b.delivered_seq(),
                    read_seq: b.read_seq(),
                })
            }),
            fb::Body::ChatStates => view.body_as_chat_states().map(|b| {
                Body::ChatStates(ChatStates {
                    chats: b
                        .chats()
                        .map(|v| {
                            v.iter()
                                .map(|c| ChatState {
                                    chat_id: c.chat_id(),
                                    last_seq: c.last_seq(),
                                    read_seq: c.read_seq(),
                                    unread: c.unread(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }),
            _ => None,
        };
        let body = body.ok_or(WireError::MissingBody)?;
        Ok(Frame {
            request_id: view.request_id(),
            body,
        })
    }
}

fn string(s: Option<&str>) -> String {
    s.unwrap_or_default().to_owned()
}

fn message(m: fb::Message<'_>) -> Message {
    Message {
        chat_id: m.chat_id(),
        seq: m.seq(),
        sender: m.sender(),
        server_ts_ms: m.server_ts_ms(),
        client_msg_id: m.client_msg_id(),
        text: string(m.text()),
        kind: m.kind(),
        target_seq: m.target_seq(),
        edited_seq: m.edited_seq(),
        deleted_seq: m.deleted_seq(),
    }
}

fn cursors(v: Option<flatbuffers::Vector<'_, fb::Cursor>>) -> Vec<Cursor> {
    v.map(|v| {
        v.iter()
            .map(|c| Cursor {
                chat_id: c.chat_id(),
                seq: c.seq(),
            })
            .collect()
    })
    .unwrap_or_default()
}

/// Capacity of a fresh builder: a Message frame with a 160-byte text needs ~250 bytes, so most frames
/// are built without growing.
const INITIAL_CAPACITY: usize = 1024;

/// Frames larger than this are handed out without a copy and the builder is replaced by a fresh one,
/// so one huge frame (a 400 KB text, a full HistoryPage) does not pin its buffer in the encoder for
/// the rest of the connection's life.
const RETAIN_LIMIT: usize = 64 * 1024;

/// Reusable encoder for hot paths: keeps one `FlatBufferBuilder`, so encoding a frame costs the
/// building plus one copy into the returned [`Bytes`], and no allocation beyond it.
pub struct Encoder {
    fbb: FlatBufferBuilder<'static>,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// A new encoder with a small builder.
    pub fn new() -> Self {
        Encoder {
            fbb: FlatBufferBuilder::with_capacity(INITIAL_CAPACITY),
        }
    }

    /// Encodes `frame` as a size-prefixed FlatBuffer.
    ///
    /// # Panics
    ///
    /// Only if the frame exceeds the FlatBuffers maximum of 2 GiB.
    pub fn encode(&mut self, frame: &Frame) -> Bytes {
        self.fbb.reset();
        let (body_type, body) = build_body(&mut self.fbb, &frame.body);
        self.finish(frame.request_id, body_type, body)
    }

    /// Encodes an `Error` frame answering `request_id` (set both as the frame's and the error's
    /// request id), without building an owned [`ErrorBody`].
    pub fn error(&mut self, code: ErrorCode, message: &str, request_id: u64) -> Bytes {
        self.fbb.reset();
        let body = build_error(&mut self.fbb, code.as_u16(), message, request_id);
        self.finish(request_id, fb::Body::Error, body)
    }

    /// Encodes a `Message` frame (a push when `request_id` is 0) without cloning `m`.
    ///
    /// # Panics
    ///
    /// Only if the frame exceeds the FlatBuffers maximum of 2 GiB.
    pub fn message(&mut self, request_id: u64, m: &Message) -> Bytes {
        self.fbb.reset();
        let body = build_message(&mut self.fbb, m).as_union_value();
        self.finish(request_id, fb::Body::Message, body)
    }

    fn finish(&mut self, request_id: u64, body_type: fb::Body, body: WIPOffset<UnionWIPOffset>) -> Bytes {
        let root = fb::Frame::create(
            &mut self.fbb,
            &fb::FrameArgs {
                request_id,
                body_type,
                body: Some(body),
            },
        );
        fb::finish_size_prefixed_frame_buffer(&mut self.fbb, root);
        if self.fbb.finished_data().len() > RETAIN_LIMIT {
            let fbb = std::mem::replace(&mut self.fbb, FlatBufferBuilder::with_capacity(INITIAL_CAPACITY));
            let (buf, head) = fbb.collapse();
            Bytes::from(buf).slice(head..)
        } else {
            Bytes::copy_from_slice(self.fbb.finished_data())
        }
    }
}

fn build_message<'b>(fbb: &mut FlatBufferBuilder<'b>, m: &Message) -> WIPOffset<fb::Message<'b>> {
    let text = fbb.create_string(&m.text);
    fb::Message::create(
        fbb,
        &fb::MessageArgs {
            chat_id: m.chat_id,
            seq: m.seq,
            sender: m.sender,
            server_ts_ms: m.server_ts_ms,
            client_msg_id: m.client_msg_id,
            text: Some(text),
            kind: m.kind,
            target_seq: m.target_seq,
            edited_seq: m.edited_seq,
            deleted_seq: m.deleted_seq,
        },
    )
}

fn build_error(
    fbb: &mut FlatBufferBuilder<'_>,
    code: u16,
    message: &str,
    request_id: u64,
) -> WIPOffset<UnionWIPOffset> {
    let message = fbb.create_string(message);
    fb::Error::create(
        fbb,
        &fb::ErrorArgs {
            code,
            message: Some(message),
            request_id,
        },
    )
    .as_union_value()
}

fn build_cursors<'b>(
    fbb: &mut FlatBufferBuilder<'b>,
    cursors: &[Cursor],
) -> WIPOffset<flatbuffers::Vector<'b, fb::Cursor>> {
    fbb.create_vector_from_iter(cursors.iter().map(|c| fb::Cursor::new(c.chat_id, c.seq)))
}

fn build_body(fbb: &mut FlatBufferBuilder<'_>, body: &Body) -> (fb::Body, WIPOffset<UnionWIPOffset>) {
    let offset = match body {
        Body::Hello(b) => {
            let token = fbb.create_string(&b.token);
            let device = fbb.create_string(&b.device);
            let args = fb::HelloArgs {
                token: Some(token),
                device: Some(device),
                protocol_version: b.protocol_version,
                sync_first: b.sync_first,
                conversation: b.conversation,
            };
            fb::Hello::create(fbb, &args).as_union_value()
        }
        Body::Welcome(b) => fb::Welcome::create(
            fbb,
            &fb::WelcomeArgs {
                user_id: b.user_id,
                device_id: b.device_id,
                heartbeat_interval_ms: b.heartbeat_interval_ms,
                server_time_ms: b.server_time_ms,
                protocol_version: b.protocol_version,
                max_frame: b.max_frame,
            },
        )
        .as_union_value(),
        Body::Send(b) => {
            let text = fbb.create_string(&b.text);
            let args = fb::SendArgs {
                chat_id: b.chat_id,
                client_msg_id: b.client_msg_id,
                text: Some(text),
            };
            fb::Send::create(fbb, &args).as_union_value()
        }
        Body::SendOk(b) => fb::SendOk::create(
            fbb,
            &fb::SendOkArgs {
                client_msg_id: b.client_msg_id,
                chat_id: b.chat_id,
                seq: b.seq,
                server_ts_ms: b.server_ts_ms,
            },
        )
        .as_union_value(),
        Body::Message(m) => build_message(fbb, m).as_union_value(),
        Body::Sync(b) => {
            let cursors = build_cursors(fbb, &b.cursors);
            fb::Sync::create(
                fbb,
                &fb::SyncArgs {
                    cursors: Some(cursors),
                },
            )
            .as_union_value()
        }
        Body::SyncDone(b) => {
            let heads = build_cursors(fbb, &b.heads);
            fb::SyncDone::create(fbb, &fb::SyncDoneArgs { heads: Some(heads) }).as_union_value()
        }
        Body::History(b) => fb::History::create(
            fbb,
            &fb::HistoryArgs {
                chat_id: b.chat_id,
                before_seq: b.before_seq,
                limit: b.limit,
            },
        )
        .as_union_value(),
        Body::HistoryPage(b) => {
            let offsets: Vec<_> = b.messages.iter().map(|m| build_message(fbb, m)).collect();
            let messages = fbb.create_vector(&offsets);
            let args = fb::HistoryPageArgs {
                chat_id: b.chat_id,
                messages: Some(messages),
                has_more: b.has_more,
            };
            fb::HistoryPage::create(fbb, &args).as_union_value()
        }
        Body::Ack(b) => fb::Ack::create(
            fbb,
            &fb::AckArgs {
                chat_id: b.chat_id,
                seq: b.seq,
            },
        )
        .as_union_value(),
        Body::Presence(b) => fb::Presence::create(
            fbb,
            &fb::PresenceArgs {
                user_id: b.user_id,
                online: b.online,
                last_seen_ms: b.last_seen_ms,
            },
        )
        .as_union_value(),
        Body::Ping(b) => fb::Ping::create(fbb, &fb::PingArgs { nonce: b.nonce }).as_union_value(),
        Body::Pong(b) => fb::Pong::create(fbb, &fb::PongArgs { nonce: b.nonce }).as_union_value(),
        Body::Error(b) => build_error(fbb, b.code, &b.message, b.request_id),
        Body::Resync => fb::Resync::create(fbb, &fb::ResyncArgs {}).as_union_value(),
        Body::Edit(b) => {
            let text = fbb.create_string(&b.text);
            let args = fb::EditArgs {
                chat_id: b.chat_id,
                target_seq: b.target_seq,
                client_msg_id: b.client_msg_id,
                text: Some(text),
            };
            fb::Edit::create(fbb, &args).as_union_value()
        }
        Body::Delete(b) => fb::Delete::create(
            fbb,
            &fb::DeleteArgs {
                chat_id: b.chat_id,
                target_seq: b.target_seq,
                client_msg_id: b.client_msg_id,
            },
        )
        .as_union_value(),
        Body::Typing(b) => fb::Typing::create(
            fbb,
            &fb::TypingArgs {
                chat_id: b.chat_id,
                active: b.active,
                user_id: b.user_id,
            },
        )
        .as_union_value(),
        Body::Receipt(b) => fb::Receipt::create(
            fbb,
            &fb::ReceiptArgs {
                chat_id: b.chat_id,
                user_id: b.user_id,
                delivered_seq: b.delivered_seq,
                read_seq: b.read_seq,
            },
        )
        .as_union_value(),
        Body::ChatStates(b) => {
            let chats = fbb.create_vector_from_iter(
                b.chats
                    .iter()
                    .map(|c| fb::ChatState::new(c.chat_id, c.last_seq, c.read_seq, c.unread)),
            );
            fb::ChatStates::create(fbb, &fb::ChatStatesArgs { chats: Some(chats) }).as_union_value()
        }
    };
    (body.body_type(), offset)
}
