"""One blocking chat session with natterd over TCP: handshake, sends with retries,
pushed messages, sync, history, acks, heartbeats -- and the client's duties of
docs/PROTOCOL.md ("The client's duties") done for the caller.

A :class:`Connection` keeps, per chat, the highest ``seq`` up to which it holds every
message (its *cursor*). Every ``Message`` passes through it: one at or below the cursor is
a duplicate and dropped; the next one advances it; a live push past a gap is dropped and
the connection syncs from its cursors instead, so the caller sees each message of a chat
once and in ``seq`` order. ``Resync`` from the server, and every reconnect, start the same
internal sync. Its messages are handed out by :meth:`Connection.recv` like pushes.

Not thread-safe: one thread drives a connection. Nothing runs in the background; the
heartbeat ``Ping`` goes out from inside :meth:`Connection.recv` and the other blocking
calls when the connection has been idle for ``Welcome.heartbeat_interval_ms``.
"""

from __future__ import annotations

import collections
import hashlib
import random
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Mapping, Optional, Set, Tuple, Union

from natter import frames
from natter.errors import (
    ConnectionClosed,
    FrameTooLarge,
    NatterError,
    ProtocolError,
    ServerError,
)
from natter.frames import Frame, HistoryPage, Message, Presence, SendOk, SyncDone, Welcome

#: Seconds to wait for an answer (``Welcome``, ``SendOk``, ``SyncDone``, ...).
DEFAULT_TIMEOUT = 10.0
#: Attempts of one send (the first plus retries, all with the same ``client_msg_id``).
DEFAULT_SEND_ATTEMPTS = 5
#: The first retry's backoff in seconds; doubled per attempt, with jitter.
RETRY_BACKOFF = 0.05
#: Bytes asked of the socket per read.
READ_CHUNK = 64 * 1024
#: Closing codes after which reconnecting with the same token cannot help.
_FATAL_CODES = frozenset(
    {
        "invalid_token",
        "token_revoked",
        "unsupported_version",
        "bad_frame",
        "unexpected_frame",
        "not_authenticated",
        "frame_too_large",
    }
)

#: Codes with which natterd refuses or ends a session that a new connection may not meet
#: (after a backoff): a send goes on retrying through them.
_RECONNECTABLE_CODES = frozenset(
    {"shutting_down", "heartbeat_timeout", "too_many_connections", "too_many_sessions", "slow_consumer"}
)

#: What :meth:`Connection.recv` hands out.
Event = Union[Message, Presence]


@dataclass(frozen=True)
class SyncResult:
    """What one :meth:`Connection.sync` brought: new messages in order per chat (ascending
    chat id, then ``seq``), and every chat of the user with its last ``seq``."""

    messages: List[Message]
    heads: Dict[int, int]


def parse_address(address: str) -> tuple:
    """``"host:port"`` (or ``"[v6]:port"``) as ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    return host.strip("[]"), int(port)


def parse_endpoint(endpoint: str) -> Tuple[str, str, int]:
    """``"tcp://host:port"``, ``"tls://host:port"`` or a bare ``"host:port"`` (TCP) as
    ``(scheme, host, port)``. Raises ``ValueError`` for anything else (``ws://`` is for
    browsers: this client speaks TCP and TLS)."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep:
        scheme, rest = "tcp", endpoint
    if scheme not in ("tcp", "tls"):
        raise ValueError(f"this client speaks tcp:// and tls://, not {scheme}://")
    host, port = parse_address(rest.rstrip("/"))
    return scheme, host, port


def best_endpoint(endpoints: dict) -> Tuple[str, Optional[str]]:
    """The best transport a ``GET /v1/endpoints`` answer offers this client, as
    ``(url, cert_sha256)``: TLS with its certificate's fingerprint to pin where natterd
    lists a ``tls://`` URL and ``cert_sha256``, else raw TCP (``(url, None)``)."""
    pin = endpoints.get("cert_sha256")
    for url in endpoints.get("urls") or []:
        if isinstance(url, str) and url.startswith("tls://") and pin:
            return url, pin
    return "tcp://" + endpoints["tcp"], None


def pinned_context() -> ssl.SSLContext:
    """A TLS 1.3 client context that trusts no CA and checks no host name: the caller
    pins the certificate by its SHA-256 instead (:func:`check_pin`), as docs/PROTOCOL.md
    says for natterd's self-signed certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def check_pin(sock: ssl.SSLSocket, cert_sha256: str) -> None:
    """Raises ``ssl.SSLError`` unless the peer's leaf certificate (DER) hashes to
    ``cert_sha256`` (hex; colons and case ignored)."""
    der = sock.getpeercert(binary_form=True)
    want = cert_sha256.replace(":", "").lower()
    got = hashlib.sha256(der).hexdigest() if der else ""
    if got != want:
        raise ssl.SSLError(f"the server's certificate {got or '(none)'} is not the pinned {want}")


class Connection:
    """A session on natterd's frame port, authenticated with a device token.

    ``address`` is an endpoint: ``"tls://127.0.0.1:7101"``, ``"tcp://127.0.0.1:7100"`` or a
    bare ``"127.0.0.1:7100"`` (TCP), from ``GET /v1/endpoints``; or a function returning one
    (or a ``(url, cert_sha256)`` pair), called on every (re)connect -- :func:`natter.connect`
    passes one that asks the side-port again for :func:`best_endpoint`, so a restarted
    natterd on new ports is found. A ``tls://`` endpoint is TLS 1.3 with the certificate
    pinned by ``cert_sha256`` (from the endpoints), or verified by ``ssl_context`` when one
    is given (e.g. trusting a CA; a pin is checked on top when both are given). With
    ``sync_first`` (the default, what a reconnecting device should do) the server holds live
    pushes back until this connection's first :meth:`sync`.
    """

    def __init__(
        self,
        address: Union[str, Callable[[], str]],
        token: str,
        device: str = "natter-python",
        sync_first: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: Optional[ssl.SSLContext] = None,
        cert_sha256: Optional[str] = None,
    ):
        self.address = address
        self.cert_sha256 = cert_sha256
        #: The endpoint URL of the current (or last) connection, e.g. ``"tls://127.0.0.1:7101"``.
        self.transport: Optional[str] = None
        self.token = token
        self.device = device
        self.sync_first = sync_first
        self.timeout = timeout
        self.ssl_context = ssl_context
        #: The last ``Welcome`` (``None`` before the first handshake).
        self.welcome: Optional[Welcome] = None
        #: Per chat, the highest ``seq`` held with nothing missing before it.
        self.cursors: Dict[int, int] = {}
        self._ahead: Dict[int, Set[int]] = collections.defaultdict(set)
        # (chat_id, client_msg_id) of this connection's sends still waiting for their SendOk:
        # a Sync pipelined with a Send can stream the stored message before the SendOk comes.
        self._outbox: Set[Tuple[int, int]] = set()
        self._sock: Optional[socket.socket] = None
        self._reader = frames.FrameReader()
        self._pending: Deque[Event] = collections.deque()
        self._next_rid = 1
        self._internal_syncs: Set[int] = set()
        self._user_sync: Optional[int] = None
        self._resync_needed = False
        self._last_sent = time.monotonic()

    # --- lifecycle -----------------------------------------------------------------------

    @classmethod
    def connect(cls, address: Union[str, Callable[[], str]], token: str, **kwargs) -> "Connection":
        """Connects and completes the handshake; see the class for the arguments.

        Raises :class:`ServerError` when natterd refuses the ``Hello`` (``invalid_token``:
        log in again; ``too_many_connections``: later), :class:`ConnectionClosed` when it
        cannot be reached.
        """
        conn = cls(address, token, **kwargs)
        conn.open()
        return conn

    def open(self) -> Welcome:
        """Opens the socket, sends ``Hello`` and waits for ``Welcome``."""
        self.close()
        try:
            target = self.address() if callable(self.address) else self.address
            address, pin = target if isinstance(target, tuple) else (target, self.cert_sha256)
            scheme, host, port = parse_endpoint(address)
        except (NatterError, ValueError) as e:
            raise ConnectionClosed(f"cannot find the endpoint: {e}") from None
        if scheme == "tls" and pin is None and self.ssl_context is None:
            raise ConnectionClosed(f"{address}: no certificate fingerprint to pin and no ssl_context")
        sock = None
        try:
            sock = socket.create_connection((host, port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "tls" or self.ssl_context is not None:
                ctx = self.ssl_context or pinned_context()
                sock = ctx.wrap_socket(sock, server_hostname=host)
                if pin is not None:
                    check_pin(sock, pin)
        except OSError as e:  # ssl.SSLError is an OSError: a failed handshake or pin
            if sock is not None:
                sock.close()
            raise ConnectionClosed(f"cannot connect to {address}: {e}") from None
        self.transport = address if "://" in address else f"tcp://{address}"
        self._sock = sock
        self._reader = frames.FrameReader()
        self._internal_syncs.clear()
        self._user_sync = None
        rid = self._rid()
        self._write(frames.encode_hello(rid, self.token, self.device, self.sync_first))
        try:
            frame = self._wait_answer(rid, self.timeout)
        except ConnectionClosed as e:
            if e.error is not None:
                raise e.error from None  # the Hello was refused: invalid_token, ...
            raise
        if not isinstance(frame.body, Welcome):
            self.close()
            raise ProtocolError(f"expected Welcome, got {type(frame.body).__name__}")
        self.welcome = frame.body
        self._reader.max_frame = frame.body.max_frame or frames.DEFAULT_MAX_FRAME
        return frame.body

    def reconnect(self) -> Welcome:
        """Opens a new session with the same token and, with ``sync_first``, syncs from this
        connection's cursors (the sync's messages then come out of :meth:`recv`)."""
        welcome = self.open()
        if self.sync_first:
            self._start_internal_sync()
        return welcome

    def close(self) -> None:
        """Closes the socket (idempotent). Messages already received stay in :meth:`recv`."""
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    @property
    def connected(self) -> bool:
        """Whether a socket is open (it may still turn out to be dead on the next read)."""
        return self._sock is not None

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- requests ------------------------------------------------------------------------

    def send(
        self,
        chat_id: int,
        text: str,
        client_msg_id: Optional[int] = None,
        attempts: int = DEFAULT_SEND_ATTEMPTS,
    ) -> SendOk:
        """Sends one message and returns its ``SendOk`` once it is durably stored.

        The text is checked before anything is sent (:class:`~natter.errors.InvalidText`),
        and so is the frame's size against ``max_frame`` (:class:`FrameTooLarge`). After a
        retryable refusal (``overloaded``, ``rate_limited``, ``internal``, ``unavailable``)
        or a lost connection (then reconnecting) the same frame is sent again with the same
        ``client_msg_id`` -- random unless given -- up to ``attempts`` times in all, so the
        server stores it once. Other refusals raise :class:`ServerError` at once.
        """
        cmid = client_msg_id if client_msg_id is not None else (secrets.randbits(64) or 1)
        probe = frames.encode_send(0, chat_id, cmid, text)
        if len(probe) > self.max_frame:
            raise FrameTooLarge(len(probe), self.max_frame, "outgoing")
        try:
            return self._send_attempts(chat_id, text, cmid, attempts)
        finally:
            self._outbox.discard((chat_id, cmid))

    def _send_attempts(self, chat_id: int, text: str, cmid: int, attempts: int) -> SendOk:
        last: Optional[NatterError] = None
        for attempt in range(max(1, attempts)):
            if attempt:
                time.sleep(RETRY_BACKOFF * (2 ** (attempt - 1)) * (0.5 + random.random()))
            try:
                if self._sock is None:
                    self.reconnect()
                rid = self._rid()
                self._outbox.add((chat_id, cmid))
                self._write(frames.encode_send(rid, chat_id, cmid, text))
                ok = self._wait_answer(rid, self.timeout).body
                if not isinstance(ok, SendOk):
                    raise ProtocolError(f"expected SendOk, got {type(ok).__name__}")
                self._own(ok)
                return ok
            except ServerError as e:
                if not (e.retryable or e.name in _RECONNECTABLE_CODES):
                    raise
                if e.closes_connection:
                    self.close()
                last = e
            except ConnectionClosed as e:
                if e.error is not None and e.error.name in _FATAL_CODES:
                    raise
                self.close()
                last = e
        assert last is not None
        raise last

    def sync(
        self, cursors: Optional[Mapping[int, int]] = None, timeout: Optional[float] = None
    ) -> SyncResult:
        """Sends ``Sync`` and waits for its ``SyncDone``.

        ``cursors`` maps chat ids to the ``seq`` held (``{chat: 0}``: the whole chat);
        ``None`` uses this connection's own cursors, and when it has none, the cursors the
        server stored for this device from its acks (else each chat's last 50).
        Pushes that arrive meanwhile (chats the sync has finished) wait in :meth:`recv`:
        apply the result's messages first.
        """
        if cursors is None:
            cursors = dict(self.cursors)
        else:
            for chat, seq in cursors.items():
                self.cursors[chat] = seq
                self._ahead.pop(chat, None)
        rid = self._rid()
        self._user_sync = rid
        self._write(frames.encode_sync(rid, sorted(cursors.items())))
        got: List[Message] = []
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        try:
            while True:
                frame = self._read(deadline)
                if frame is None:
                    raise ConnectionClosed(f"no SyncDone within {timeout or self.timeout} s")
                body = frame.body
                if frame.request_id == rid and isinstance(body, Message):
                    if self._apply(body, from_sync=True):
                        got.append(body)
                    # A long sync is progress: each page moves the deadline.
                    deadline = time.monotonic() + (timeout or self.timeout)
                elif frame.request_id == rid and isinstance(body, SyncDone):
                    self._heads(body)
                    return SyncResult(got, dict(body.heads))
                elif frame.request_id == rid and isinstance(body, frames.Error):
                    raise ServerError(body.code, body.message, body.request_id)
                else:
                    self._handle(frame)
        finally:
            self._user_sync = None
            if self._resync_needed and self._sock is not None:
                self._start_internal_sync()

    def history(self, chat_id: int, before_seq: int = 0, limit: int = 50) -> HistoryPage:
        """One page of a chat's history, newest first: ``seq < before_seq`` (0: from the
        newest), at most ``min(limit, 200)`` messages. Does not move the cursors."""
        rid = self._rid()
        self._write(frames.encode_history(rid, chat_id, before_seq, limit))
        page = self._wait_answer(rid, self.timeout).body
        if not isinstance(page, HistoryPage):
            raise ProtocolError(f"expected HistoryPage, got {type(page).__name__}")
        return page

    def ack(self, chat_id: int, seq: Optional[int] = None) -> None:
        """Stores this device's cursor for ``chat_id`` on the server (default: the
        connection's own cursor). No answer; send it batched, not per message."""
        seq = self.cursors.get(chat_id, 0) if seq is None else seq
        self._write(frames.encode_ack(chat_id, seq))

    def ping(self) -> float:
        """One ``Ping`` round trip, in seconds."""
        start = time.monotonic()
        rid = self._rid()
        self._write(frames.encode_ping(rid, rid))
        self._wait_answer(rid, self.timeout)
        return time.monotonic() - start

    def recv(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next pushed ``Message`` (deduplicated, in ``seq`` order per chat) or
        ``Presence``; ``None`` when nothing came within ``timeout`` seconds (default: the
        connection's timeout).

        Raises :class:`ServerError` for an ``Error`` about the connection, and
        :class:`ConnectionClosed` when it ended (then :meth:`reconnect`).
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._pending:
            frame = self._read(deadline)
            if frame is None:
                return None
            self._handle(frame)
        return self._pending.popleft()

    @property
    def max_frame(self) -> int:
        """The largest frame either side may send, prefix included (bytes)."""
        return self._reader.max_frame

    # --- internals -----------------------------------------------------------------------

    def _rid(self) -> int:
        rid = self._next_rid
        self._next_rid += 1
        return rid

    def _write(self, data: bytes) -> None:
        if self._sock is None:
            raise ConnectionClosed("not connected")
        if len(data) > self._reader.max_frame:
            raise FrameTooLarge(len(data), self._reader.max_frame, "outgoing")
        try:
            self._sock.sendall(data)
        except OSError as e:
            self.close()
            raise ConnectionClosed(f"write failed: {e}") from None
        self._last_sent = time.monotonic()

    def _read(self, deadline: float) -> Optional[Frame]:
        """The next frame, or ``None`` at the deadline. Sends heartbeats while waiting."""
        while True:
            if self._sock is None:
                raise ConnectionClosed("not connected")
            try:
                raw = self._reader.next_frame()
            except NatterError:
                self.close()
                raise
            if raw is not None:
                try:
                    return frames.decode(raw)
                except ProtocolError:
                    self.close()
                    raise
            now = time.monotonic()
            if now >= deadline:
                return None
            wait = deadline - now
            if self.welcome is not None and self.welcome.heartbeat_interval_ms:
                interval = self.welcome.heartbeat_interval_ms / 1000.0
                due = self._last_sent + interval
                if now >= due:
                    self._write(frames.encode_ping(0, 0))
                    continue
                wait = min(wait, due - now)
            try:
                self._sock.settimeout(max(wait, 0.001))
                data = self._sock.recv(READ_CHUNK)
            except (socket.timeout, BlockingIOError):
                continue
            except OSError as e:
                self.close()
                raise ConnectionClosed(f"read failed: {e}") from None
            if not data:
                self.close()
                raise ConnectionClosed("natterd closed the connection")
            self._reader.feed(data)

    def _wait_answer(self, rid: int, timeout: float) -> Frame:
        """Reads until the answer to ``rid``; handles every other frame on the way."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._read(deadline)
            if frame is None:
                raise ConnectionClosed(f"no answer to request {rid} within {timeout} s")
            if frame.request_id == rid:
                if isinstance(frame.body, frames.Error):
                    err = ServerError(frame.body.code, frame.body.message, rid)
                    if err.closes_connection:
                        self.close()
                        raise ConnectionClosed("natterd refused", err)
                    raise err
                return frame
            self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        """A frame that answers nothing the caller waits for: pushes, internal syncs."""
        body, rid = frame.body, frame.request_id
        if isinstance(body, Message):
            if rid in self._internal_syncs:
                if self._apply(body, from_sync=True):
                    self._pending.append(body)
            elif rid == 0:
                if self._gap(body):
                    self._want_resync()
                elif self._apply(body, from_sync=False):
                    self._pending.append(body)
        elif isinstance(body, Presence):
            self._pending.append(body)
        elif isinstance(body, SyncDone) and rid in self._internal_syncs:
            self._internal_syncs.discard(rid)
            self._heads(body)
        elif isinstance(body, frames.Resync):
            self._want_resync()
        elif isinstance(body, frames.Ping):
            self._write(frames.encode_pong(rid, body.nonce))
        elif isinstance(body, frames.Error) and (rid == 0 or rid in self._internal_syncs):
            err = ServerError(body.code, body.message, rid)
            if err.closes_connection:
                self.close()
                raise ConnectionClosed("natterd closed the connection", err)
            raise err
        # Anything else answers a request nobody waits for any more (timed out): dropped.

    def _gap(self, msg: Message) -> bool:
        cur = self.cursors.get(msg.chat_id)
        if cur is None or msg.seq <= cur + 1:
            return False
        return msg.seq not in self._ahead.get(msg.chat_id, ())

    def _apply(self, msg: Message, from_sync: bool) -> bool:
        """Moves the chat's cursor; False for a duplicate (or, from a sync, one of this
        device's own sends it already has as a ``SendOk``)."""
        chat, seq = msg.chat_id, msg.seq
        cur = self.cursors.get(chat)
        ahead = self._ahead.get(chat)
        if cur is not None and seq <= cur:
            return False
        if ahead and seq in ahead:
            ahead.discard(seq)
            self._advance(chat, seq)
            return False
        if (
            from_sync
            and self.welcome is not None
            and msg.sender == self.welcome.user_id
            and (chat, msg.client_msg_id) in self._outbox
        ):
            # This connection's own send, stored, streamed by a sync before its SendOk
            # arrived: it comes back to this device as the SendOk only (docs/PROTOCOL.md).
            self._advance(chat, seq)
            return False
        if cur is None or seq == cur + 1 or from_sync:
            self._advance(chat, seq)
            return True
        return False

    def _advance(self, chat: int, seq: int) -> None:
        cur = max(self.cursors.get(chat, 0), seq)
        ahead = self._ahead.get(chat)
        while ahead and cur + 1 in ahead:
            cur += 1
            ahead.discard(cur)
        self.cursors[chat] = cur

    def _own(self, ok: SendOk) -> None:
        cur = self.cursors.get(ok.chat_id)
        if cur is None or ok.seq <= cur:
            return
        if ok.seq == cur + 1:
            self._advance(ok.chat_id, ok.seq)
        else:
            self._ahead[ok.chat_id].add(ok.seq)

    def _heads(self, done: SyncDone) -> None:
        for chat, seq in done.heads.items():
            # After a sync this device holds each chat up to its head (an empty chat: 0).
            cur = self.cursors.get(chat)
            if cur is None or seq > cur:
                self.cursors[chat] = seq
            ahead = self._ahead.get(chat)
            if ahead:
                self._ahead[chat] = {s for s in ahead if s > self.cursors[chat]}

    def _want_resync(self) -> None:
        if self._user_sync is not None:
            self._resync_needed = True
        else:
            self._start_internal_sync()

    def _start_internal_sync(self) -> None:
        self._resync_needed = False
        rid = self._rid()
        self._internal_syncs.add(rid)
        self._write(frames.encode_sync(rid, sorted(self.cursors.items())))

