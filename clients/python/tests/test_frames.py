"""Unit tests of the Python client's framing, text checks and error catalogue (no server:
the interop test in server/tests/python_interop.rs drives a real natterd)."""

from __future__ import annotations

import pathlib
import re
import struct

import flatbuffers
import pytest

from natter import errors, frames
from natter.wire import Error as ErrorT
from natter.wire import Frame as FrameT
from natter.wire import HistoryPage as HistoryPageT
from natter.wire import Message as MessageT
from natter.wire import Welcome as WelcomeT
from natter.wire.Body import Body
from natter.wire.Frame import Frame as FrameTable
from natter.wire.Send import Send as SendTable
from natter.wire.Sync import Sync as SyncTable

ROOT = pathlib.Path(__file__).resolve().parents[3]


def server_frame(request_id, body_type, build):
    """A size-prefixed frame as natterd would send it (built with the generated code)."""
    b = flatbuffers.Builder(256)
    body = build(b)
    FrameT.Start(b)
    FrameT.AddRequestId(b, request_id)
    FrameT.AddBodyType(b, body_type)
    FrameT.AddBody(b, body)
    b.FinishSizePrefixed(FrameT.End(b))
    return bytes(b.Output())


def message(b, chat, seq, sender, text):
    t = b.CreateString(text)
    MessageT.Start(b)
    MessageT.AddChatId(b, chat)
    MessageT.AddSeq(b, seq)
    MessageT.AddSender(b, sender)
    MessageT.AddServerTsMs(b, 1000 + seq)
    MessageT.AddClientMsgId(b, 77)
    MessageT.AddText(b, t)
    return MessageT.End(b)


def test_send_frame_is_size_prefixed_and_reads_back():
    raw = frames.encode_send(9, 5, 123, "héllo ✓")
    (length,) = struct.unpack_from("<I", raw)
    assert length == len(raw) - 4
    f = FrameTable.GetRootAs(raw, 4)
    assert (f.RequestId(), f.BodyType()) == (9, Body.Send)
    s = SendTable()
    s.Init(f.Body().Bytes, f.Body().Pos)
    assert (s.ChatId(), s.ClientMsgId(), s.Text().decode()) == (5, 123, "héllo ✓")


def test_sync_frame_carries_cursors_in_order():
    raw = frames.encode_sync(4, [(1, 10), (3, 0), (7, 2)])
    f = FrameTable.GetRootAs(raw, 4)
    s = SyncTable()
    s.Init(f.Body().Bytes, f.Body().Pos)
    got = [(s.Cursors(i).ChatId(), s.Cursors(i).Seq()) for i in range(s.CursorsLength())]
    assert got == [(1, 10), (3, 0), (7, 2)]


def test_decodes_welcome_message_history_and_error():
    def welcome(b):
        WelcomeT.Start(b)
        WelcomeT.AddUserId(b, 3)
        WelcomeT.AddDeviceId(b, 4)
        WelcomeT.AddHeartbeatIntervalMs(b, 60000)
        WelcomeT.AddMaxFrame(b, 4096)
        WelcomeT.AddProtocolVersion(b, 1)
        return WelcomeT.End(b)

    w = frames.decode(server_frame(1, Body.Welcome, welcome))
    assert w.request_id == 1
    assert (w.body.user_id, w.body.device_id, w.body.max_frame) == (3, 4, 4096)

    m = frames.decode(server_frame(0, Body.Message, lambda b: message(b, 2, 8, 3, "hi ✓")))
    assert m.body == frames.Message(2, 8, 3, 1008, 77, "hi ✓")

    def page(b):
        ms = [message(b, 2, s, 1, f"m{s}") for s in (5, 4)]
        HistoryPageT.StartMessagesVector(b, len(ms))
        for off in reversed(ms):
            b.PrependUOffsetTRelative(off)
        vec = b.EndVector()
        HistoryPageT.Start(b)
        HistoryPageT.AddChatId(b, 2)
        HistoryPageT.AddMessages(b, vec)
        HistoryPageT.AddHasMore(b, True)
        return HistoryPageT.End(b)

    h = frames.decode(server_frame(6, Body.HistoryPage, page)).body
    assert [x.seq for x in h.messages] == [5, 4] and h.has_more

    def error(b):
        text = b.CreateString("you are not a member")
        ErrorT.Start(b)
        ErrorT.AddCode(b, 7)
        ErrorT.AddMessage(b, text)
        ErrorT.AddRequestId(b, 6)
        return ErrorT.End(b)

    e = frames.decode(server_frame(6, Body.Error, error)).body
    err = errors.ServerError(e.code, e.message, e.request_id)
    assert (err.name, err.request_id, err.retryable) == ("not_member", 6, False)
    assert "not_member" in str(err)


def test_reader_reassembles_frames_split_anywhere():
    a = server_frame(0, Body.Message, lambda b: message(b, 1, 1, 2, "first"))
    b = server_frame(0, Body.Message, lambda b: message(b, 1, 2, 2, "second"))
    stream = a + b
    for cut in range(len(stream) + 1):
        reader = frames.FrameReader()
        got = []
        for chunk in (stream[:cut], stream[cut:]):
            reader.feed(chunk)
            while (f := reader.next_frame()) is not None:
                got.append(frames.decode(f).body.text)
        assert got == ["first", "second"], cut
        assert reader.buffered() == 0


def test_reader_refuses_a_frame_over_max_frame_from_its_prefix():
    reader = frames.FrameReader(max_frame=4096)
    reader.feed(struct.pack("<I", 4093))  # 4 + 4093 = 4097 bytes: one over
    with pytest.raises(errors.FrameTooLarge) as e:
        reader.next_frame()
    assert (e.value.size, e.value.limit) == (4097, 4096)
    ok = frames.FrameReader(max_frame=4096)
    ok.feed(struct.pack("<I", 4092))
    assert ok.next_frame() is None  # exactly the limit: waits for its bytes


def test_reader_refuses_a_length_below_the_minimum():
    reader = frames.FrameReader()
    reader.feed(struct.pack("<I", 3) + b"abc")
    with pytest.raises(errors.ProtocolError):
        reader.next_frame()


@pytest.mark.parametrize(
    "raw",
    [
        struct.pack("<I", 12) + b"\xff" * 12,  # offsets out of bounds
        struct.pack("<I", 8) + struct.pack("<II", 4, 0),  # a table without a vtable
        struct.pack("<I", 10) + b"\x00" * 10,  # no body
    ],
)
def test_garbage_is_a_protocol_error_never_a_crash(raw):
    with pytest.raises(errors.ProtocolError):
        frames.decode(raw)


def test_a_wrong_length_prefix_is_a_protocol_error():
    raw = frames.encode_ping(1, 1)
    with pytest.raises(errors.ProtocolError):
        frames.decode(raw + b"\x00")


def test_texts_are_checked_before_sending():
    with pytest.raises(errors.InvalidText) as e:
        frames.encode_send(1, 1, 1, "")
    assert e.value.reason == "empty_text"
    with pytest.raises(errors.InvalidText) as e:
        frames.encode_send(1, 1, 1, "x" * (frames.MAX_TEXT_CHARS + 1))
    assert e.value.reason == "text_too_long"
    with pytest.raises(errors.InvalidText) as e:
        frames.encode_send(1, 1, 1, "bad \ud800 surrogate")
    assert e.value.reason == "invalid_utf8"
    # 100,000 scalar values of 4 bytes each still fit the default 512 KiB frame.
    longest = frames.encode_send(1, 1, 1, "😀" * frames.MAX_TEXT_CHARS)
    assert len(longest) <= frames.DEFAULT_MAX_FRAME


def test_error_catalogue_matches_protocol_md():
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    table = dict(
        (int(n), name) for n, name in re.findall(r"^\|\s*(\d+)\s*\|\s*`([a-z_0-9]+)`\s*\|", doc, re.M)
    )
    assert table == errors.ERROR_CODES
    assert errors.code_name(999) == "unknown_999"
