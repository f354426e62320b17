"""Size-prefixed FlatBuffers frames: encoding requests, decoding server frames, and
splitting a byte stream into frames under a ``max_frame`` bound.

Built on the flatc-generated ``natter.wire`` package (vendored from
``clients/bindings/python`` by ``scripts/gen-wire.sh``; never edit it by hand) and the
``flatbuffers`` runtime. A frame on a byte stream is a u32 little-endian length, then that
many bytes of a FlatBuffer whose root is ``Frame`` (docs/PROTOCOL.md, "Framing"). The
Python runtime has no verifier, so :func:`decode` turns any exception while reading a
frame into :class:`~natter.errors.ProtocolError` and the connection treats it as broken.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple, Union

import flatbuffers

from natter.errors import FrameTooLarge, InvalidText, ProtocolError
from natter.wire import Ack as AckT
from natter.wire import Frame as FrameT
from natter.wire import Hello as HelloT
from natter.wire import History as HistoryT
from natter.wire import Ping as PingT
from natter.wire import Pong as PongT
from natter.wire import Send as SendT
from natter.wire import Sync as SyncT
from natter.wire.Body import Body
from natter.wire.Cursor import CreateCursor
from natter.wire.Error import Error as ErrorTable
from natter.wire.HistoryPage import HistoryPage as HistoryPageTable
from natter.wire.Message import Message as MessageTable
from natter.wire.Ping import Ping as PingTable
from natter.wire.Pong import Pong as PongTable
from natter.wire.Presence import Presence as PresenceTable
from natter.wire.SendOk import SendOk as SendOkTable
from natter.wire.SyncDone import SyncDone as SyncDoneTable
from natter.wire.Welcome import Welcome as WelcomeTable

#: The protocol version this client speaks (``Hello.protocol_version``).
PROTOCOL_VERSION = 1
#: The frame bound before ``Welcome`` tells the real one: 512 KiB covers every answer to
#: ``Hello`` (docs/PROTOCOL.md, "Framing").
DEFAULT_MAX_FRAME = 512 * 1024
#: Most Unicode scalar values in one message text (``Send.text``).
MAX_TEXT_CHARS = 100_000
#: Most bytes of ``Hello.device`` the server accepts.
MAX_DEVICE_BYTES = 128
#: The smallest valid length prefix (a Frame table with a body cannot be shorter).
MIN_FRAME_LEN = 8

_PREFIX = struct.Struct("<I")


# --- what the server sends -------------------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    """The answer to ``Hello``: the session is authenticated."""

    user_id: int
    device_id: int
    heartbeat_interval_ms: int
    server_time_ms: int
    protocol_version: int
    #: The largest frame either side may send on this connection, prefix included (bytes).
    max_frame: int


@dataclass(frozen=True)
class SendOk:
    """A ``Send`` is durably stored as ``(chat_id, seq)``."""

    client_msg_id: int
    chat_id: int
    seq: int
    server_ts_ms: int


@dataclass(frozen=True)
class Message:
    """One stored message; ``seq`` is gapless and strictly increasing per chat from 1."""

    chat_id: int
    seq: int
    sender: int
    server_ts_ms: int
    client_msg_id: int
    text: str


@dataclass(frozen=True)
class SyncDone:
    """The end of a sync: ``heads`` maps each of the user's chats to its last ``seq``."""

    heads: Dict[int, int]


@dataclass(frozen=True)
class HistoryPage:
    """The answer to ``History``: ``messages`` newest first."""

    chat_id: int
    messages: List[Message]
    has_more: bool


@dataclass(frozen=True)
class Presence:
    """A friend is now online, or offline since ``last_seen_ms`` (0: never seen)."""

    user_id: int
    online: bool
    last_seen_ms: int


@dataclass(frozen=True)
class Ping:
    """A keep-alive from the server: answer with ``Pong`` carrying ``nonce``."""

    nonce: int


@dataclass(frozen=True)
class Pong:
    """The answer to a ``Ping``."""

    nonce: int


@dataclass(frozen=True)
class Error:
    """An ``Error`` frame: ``code`` from the catalogue in :mod:`natter.errors`."""

    code: int
    message: str
    request_id: int


@dataclass(frozen=True)
class Resync:
    """Live pushes to this session stopped (it fell behind): send ``Sync`` to catch up."""


#: Any decoded server frame body.
Body_ = Union[Welcome, SendOk, Message, SyncDone, HistoryPage, Presence, Ping, Pong, Error, Resync]


@dataclass(frozen=True)
class Frame:
    """A decoded frame: the ``request_id`` it answers (0 on pushes) and its body."""

    request_id: int
    body: Body_ = field()


# --- encoding ----------------------------------------------------------------------------


def check_text(text: str) -> bytes:
    """Validates a message text the way natterd does and returns its UTF-8 bytes.

    Raises :class:`InvalidText` for an empty text, one of more than
    :data:`MAX_TEXT_CHARS` Unicode scalar values, or one with lone surrogates (not
    encodable as UTF-8), so the client never sends what the server must refuse.
    """
    if not isinstance(text, str):
        raise InvalidText("invalid_utf8", f"text must be str, not {type(text).__name__}")
    if not text:
        raise InvalidText("empty_text", "a message needs at least one character")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidText("text_too_long", f"{len(text)} characters, at most {MAX_TEXT_CHARS}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidText("invalid_utf8", f"not encodable as UTF-8: {e.reason}") from None


def _finish(builder: flatbuffers.Builder, request_id: int, body_type: int, body: int) -> bytes:
    FrameT.Start(builder)
    FrameT.AddRequestId(builder, request_id)
    FrameT.AddBodyType(builder, body_type)
    FrameT.AddBody(builder, body)
    builder.FinishSizePrefixed(FrameT.End(builder))
    return bytes(builder.Output())


def encode_hello(request_id: int, token: str, device: str, sync_first: bool) -> bytes:
    """A ``Hello`` frame (the first frame of every connection)."""
    b = flatbuffers.Builder(256)
    tok = b.CreateString(token)
    dev = b.CreateString(device.encode("utf-8")[:MAX_DEVICE_BYTES].decode("utf-8", "ignore"))
    HelloT.Start(b)
    HelloT.AddToken(b, tok)
    HelloT.AddDevice(b, dev)
    HelloT.AddProtocolVersion(b, PROTOCOL_VERSION)
    HelloT.AddSyncFirst(b, sync_first)
    return _finish(b, request_id, Body.Hello, HelloT.End(b))


def encode_send(request_id: int, chat_id: int, client_msg_id: int, text: str) -> bytes:
    """A ``Send`` frame; the text is checked first (:func:`check_text`)."""
    data = check_text(text)
    b = flatbuffers.Builder(len(data) + 128)
    t = b.CreateString(data)
    SendT.Start(b)
    SendT.AddChatId(b, chat_id)
    SendT.AddClientMsgId(b, client_msg_id)
    SendT.AddText(b, t)
    return _finish(b, request_id, Body.Send, SendT.End(b))


def encode_sync(request_id: int, cursors: Iterable[Tuple[int, int]]) -> bytes:
    """A ``Sync`` frame with ``(chat_id, seq held)`` cursors (empty: the server's stored ones)."""
    cursors = list(cursors)
    b = flatbuffers.Builder(64 + 16 * len(cursors))
    SyncT.StartCursorsVector(b, len(cursors))
    for chat_id, seq in reversed(cursors):
        CreateCursor(b, chat_id, seq)
    vec = b.EndVector()
    SyncT.Start(b)
    SyncT.AddCursors(b, vec)
    return _finish(b, request_id, Body.Sync, SyncT.End(b))


def encode_history(request_id: int, chat_id: int, before_seq: int, limit: int) -> bytes:
    """A ``History`` frame: messages with ``seq < before_seq`` (0: from the newest)."""
    b = flatbuffers.Builder(64)
    HistoryT.Start(b)
    HistoryT.AddChatId(b, chat_id)
    HistoryT.AddBeforeSeq(b, before_seq)
    HistoryT.AddLimit(b, limit)
    return _finish(b, request_id, Body.History, HistoryT.End(b))


def encode_ack(chat_id: int, seq: int) -> bytes:
    """An ``Ack`` frame (no answer): this device holds ``chat_id`` up to ``seq``."""
    b = flatbuffers.Builder(64)
    AckT.Start(b)
    AckT.AddChatId(b, chat_id)
    AckT.AddSeq(b, seq)
    return _finish(b, 0, Body.Ack, AckT.End(b))


def encode_ping(request_id: int, nonce: int) -> bytes:
    """A ``Ping`` frame."""
    b = flatbuffers.Builder(64)
    PingT.Start(b)
    PingT.AddNonce(b, nonce)
    return _finish(b, request_id, Body.Ping, PingT.End(b))


def encode_pong(request_id: int, nonce: int) -> bytes:
    """A ``Pong`` frame (the answer to a server ``Ping``)."""
    b = flatbuffers.Builder(64)
    PongT.Start(b)
    PongT.AddNonce(b, nonce)
    return _finish(b, request_id, Body.Pong, PongT.End(b))


# --- decoding ----------------------------------------------------------------------------


def _text(raw: Optional[bytes]) -> str:
    return (raw or b"").decode("utf-8")


def _message(t: MessageTable) -> Message:
    return Message(
        chat_id=t.ChatId(),
        seq=t.Seq(),
        sender=t.Sender(),
        server_ts_ms=t.ServerTsMs(),
        client_msg_id=t.ClientMsgId(),
        text=_text(t.Text()),
    )


def _as(table_cls, union):
    t = table_cls()
    t.Init(union.Bytes, union.Pos)
    return t


def _body(body_type: int, union) -> Body_:
    if body_type == Body.Welcome:
        w = _as(WelcomeTable, union)
        return Welcome(
            user_id=w.UserId(),
            device_id=w.DeviceId(),
            heartbeat_interval_ms=w.HeartbeatIntervalMs(),
            server_time_ms=w.ServerTimeMs(),
            protocol_version=w.ProtocolVersion(),
            max_frame=w.MaxFrame(),
        )
    if body_type == Body.SendOk:
        s = _as(SendOkTable, union)
        return SendOk(s.ClientMsgId(), s.ChatId(), s.Seq(), s.ServerTsMs())
    if body_type == Body.Message:
        return _message(_as(MessageTable, union))
    if body_type == Body.SyncDone:
        d = _as(SyncDoneTable, union)
        heads = {}
        for i in range(d.HeadsLength()):
            c = d.Heads(i)
            heads[c.ChatId()] = c.Seq()
        return SyncDone(heads)
    if body_type == Body.HistoryPage:
        p = _as(HistoryPageTable, union)
        msgs = [_message(p.Messages(i)) for i in range(p.MessagesLength())]
        return HistoryPage(p.ChatId(), msgs, bool(p.HasMore()))
    if body_type == Body.Presence:
        p = _as(PresenceTable, union)
        return Presence(p.UserId(), bool(p.Online()), p.LastSeenMs())
    if body_type == Body.Ping:
        return Ping(_as(PingTable, union).Nonce())
    if body_type == Body.Pong:
        return Pong(_as(PongTable, union).Nonce())
    if body_type == Body.Error:
        e = _as(ErrorTable, union)
        return Error(e.Code(), _text(e.Message()), e.RequestId())
    if body_type == Body.Resync:
        return Resync()
    raise ProtocolError(f"unexpected body type {body_type} from the server")


def decode(frame: bytes) -> Frame:
    """Decodes one whole size-prefixed frame (prefix included).

    Raises :class:`ProtocolError` when the bytes are not a server frame this client
    understands (the runtime has no verifier: any failure while reading counts).
    """
    if len(frame) < 4 + MIN_FRAME_LEN:
        raise ProtocolError(f"frame of {len(frame)} bytes is too short")
    (length,) = _PREFIX.unpack_from(frame, 0)
    if length != len(frame) - 4:
        raise ProtocolError(f"length prefix {length} does not match {len(frame) - 4} bytes")
    try:
        # flatc's Python output has no size-prefixed reader: the root starts after the prefix.
        f = FrameT.Frame.GetRootAs(frame, 4)
        union = f.Body()
        if union is None:
            raise ProtocolError("frame without a body")
        return Frame(f.RequestId(), _body(f.BodyType(), union))
    except ProtocolError:
        raise
    except Exception as e:  # noqa: BLE001 -- unverified input: any failure is a bad frame
        raise ProtocolError(f"malformed frame: {type(e).__name__}: {e}") from None


class FrameReader:
    """Splits a byte stream into whole frames, refusing any over ``max_frame``.

    Feed it bytes as they arrive with :meth:`feed`; :meth:`next_frame` returns the next
    whole frame's bytes (prefix included) or ``None`` when more bytes are needed. A length
    prefix over the bound raises :class:`FrameTooLarge` as soon as it is read, before its
    bytes are buffered, so a hostile peer cannot grow this buffer past ``max_frame``.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        #: The largest frame accepted, prefix included (bytes); set from ``Welcome``.
        self.max_frame = max_frame
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        """Appends received bytes."""
        self._buf += data

    def buffered(self) -> int:
        """Bytes received and not yet returned as a frame."""
        return len(self._buf)

    def next_frame(self) -> Optional[bytes]:
        """The next whole frame, or ``None`` when it has not fully arrived."""
        if len(self._buf) < 4:
            return None
        (length,) = _PREFIX.unpack_from(self._buf, 0)
        if 4 + length > self.max_frame:
            raise FrameTooLarge(4 + length, self.max_frame, "received")
        if length < MIN_FRAME_LEN:
            raise ProtocolError(f"length prefix {length} is below {MIN_FRAME_LEN}")
        if len(self._buf) < 4 + length:
            return None
        frame = bytes(self._buf[: 4 + length])
        del self._buf[: 4 + length]
        return frame
