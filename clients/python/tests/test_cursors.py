"""Unit tests of the connection's per-chat cursors: duplicates dropped, gaps detected,
this device's own sends (SendOk) absorbed in order. Pure logic: no socket is opened."""

from __future__ import annotations

from natter.connection import Connection
from natter.frames import Message, SendOk, SyncDone, Welcome


def message(chat, seq, text="x"):
    return Message(chat_id=chat, seq=seq, sender=2, server_ts_ms=0, client_msg_id=seq, text=text)


def conn():
    return Connection("127.0.0.1:1", "token")


def test_in_order_messages_advance_and_duplicates_are_dropped():
    c = conn()
    c.cursors[5] = 0
    assert c._apply(message(5, 1), from_sync=False)
    assert c._apply(message(5, 2), from_sync=False)
    assert not c._apply(message(5, 2), from_sync=False)
    assert not c._apply(message(5, 1), from_sync=True)
    assert c.cursors[5] == 2


def test_a_push_past_a_gap_is_a_gap_and_not_applied():
    c = conn()
    c.cursors[5] = 3
    assert c._gap(message(5, 5))
    assert not c._gap(message(5, 4))
    assert not c._apply(message(5, 5), from_sync=False)
    assert c.cursors[5] == 3
    # The sync that follows brings it (a sync stream is authoritative).
    assert c._apply(message(5, 4), from_sync=True)
    assert c._apply(message(5, 5), from_sync=True)
    assert c.cursors[5] == 5


def test_an_unknown_chat_takes_its_first_message():
    c = conn()
    assert not c._gap(message(9, 40))
    assert c._apply(message(9, 40), from_sync=False)
    assert c.cursors[9] == 40


def test_own_send_ahead_of_a_push_is_absorbed_once_the_push_comes():
    c = conn()
    c.cursors[5] = 3
    c._own(SendOk(client_msg_id=1, chat_id=5, seq=5, server_ts_ms=0))  # seq 4 not here yet
    assert c.cursors[5] == 3
    assert c._apply(message(5, 4), from_sync=False)
    assert c.cursors[5] == 5  # 4 arrived, 5 is ours
    assert not c._gap(message(5, 6))
    # A sync re-sending our own message does not hand it out as someone else's.
    c2 = conn()
    c2.cursors[5] = 3
    c2._own(SendOk(client_msg_id=1, chat_id=5, seq=5, server_ts_ms=0))
    assert not c2._gap(message(5, 5))
    assert c2._apply(message(5, 4), from_sync=True)
    assert c2.cursors[5] == 5


def test_sync_done_heads_move_cursors_forward_only():
    c = conn()
    c.cursors[1] = 10
    c._heads(SyncDone({1: 7, 2: 3, 4: 0}))
    assert c.cursors == {1: 10, 2: 3, 4: 0}
    assert c._gap(message(4, 2))  # seq 1 of the empty chat was missed


def welcome_of(user):
    return Welcome(
        user_id=user,
        device_id=1,
        heartbeat_interval_ms=0,
        server_time_ms=0,
        protocol_version=1,
        max_frame=1 << 20,
    )


def test_own_send_streamed_by_a_sync_before_its_sendok_is_not_handed_out():
    # A Sync pipelined with a Send: the sync can stream the stored message before the
    # SendOk arrives. It is this connection's own send (its sender, a client_msg_id still
    # in the outbox): absorbed, not handed out; the later SendOk changes nothing.
    c = conn()
    c.welcome = welcome_of(2)
    c.cursors[5] = 1
    c._outbox.add((5, 3))
    assert c._apply(message(5, 2), from_sync=True)  # someone's (cmid 2): handed out
    assert not c._apply(message(5, 3), from_sync=True)  # ours (cmid 3): absorbed
    assert c.cursors[5] == 3
    c._own(SendOk(client_msg_id=3, chat_id=5, seq=3, server_ts_ms=0))
    assert c.cursors[5] == 3
    # Without the outbox entry (another device's send of the same user) it is handed out.
    c2 = conn()
    c2.welcome = welcome_of(2)
    c2.cursors[5] = 2
    assert c2._apply(message(5, 3), from_sync=True)
