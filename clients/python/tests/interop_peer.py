"""A scriptable Python chat peer for the interop test (server/tests/python_interop.rs).

Reads one JSON command per line on stdin, answers one JSON line on stdout, with the
natter package doing the work against a real natterd. Every answer is ``{"ok": ...}`` or
``{"error": {"type": <exception class>, "code": <server code name or reason>, "message"}}``.
Messages are ``[chat_id, seq, sender, text]`` lists.

Commands (``cmd`` field):
  signup_login {username, password, device}   -> {user_id, device_id}
  login {username, password, device}          -> {user_id, device_id}  (a new device)
  accept_friend {user_id}                     -> {}
  connect {sync_first}                        -> {user_id, device_id, max_frame} (address
                                                 from GET /v1/endpoints)
  sync {cursors: "held"|"stored"|{chat: seq}} -> {messages, heads}
  send {chat_id, text, client_msg_id?}        -> {chat_id, seq, client_msg_id}
  send_many {chat_id, prefix, count}          -> {sent: [[chat, seq, text], ...]}
  recv_until {chat_id, seq, timeout}          -> {messages} (pushes until the chat's cursor
                                                 reaches seq)
  recv_for {timeout}                          -> {messages} (whatever arrives in timeout s)
  history {chat_id, before_seq, limit}        -> {messages, has_more}
  ack {chat_id, seq?}                         -> {}
  disconnect                                  -> {}
  quit                                        -> {} and exit 0

Usage: interop_peer.py HTTP_URL
"""

from __future__ import annotations

import json
import sys
import time

import natter
from natter import Connection, HttpClient, Message, NatterError


def msg(m: Message) -> list:
    return [m.chat_id, m.seq, m.sender, m.text]


class Peer:
    def __init__(self, http_url: str):
        self.http = HttpClient(http_url)
        self.login = None
        self.conn: Connection | None = None

    def drain(self) -> list:
        """Messages already received (e.g. while waiting for a SendOk), without waiting."""
        got = []
        while (ev := self.conn.recv(timeout=0)) is not None:
            if isinstance(ev, Message):
                got.append(msg(ev))
        return got

    def do(self, c: dict):
        cmd = c["cmd"]
        if cmd in ("signup_login", "login"):
            if cmd == "signup_login":
                self.http.signup(c["username"], c["password"])
            self.login = self.http.login(c["username"], c["password"], c.get("device", "peer"))
            return {"user_id": self.login.user_id, "device_id": self.login.device_id}
        if cmd == "accept_friend":
            self.http.accept_friend(self.login.token, c["user_id"])
            return {}
        if cmd == "connect":
            if "pin" in c:
                # The best endpoint with another fingerprint to pin (a test of the pin check).
                url, _ = natter.best_endpoint(self.http.endpoints())
                self.conn = Connection.connect(
                    (url, c["pin"]), self.login.token, device="interop", sync_first=c.get("sync_first", True)
                )
            else:
                self.conn = natter.connect(
                    self.http, self.login.token, device="interop", sync_first=c.get("sync_first", True)
                )
            w = self.conn.welcome
            return {
                "user_id": w.user_id,
                "device_id": w.device_id,
                "max_frame": w.max_frame,
                "transport": self.conn.transport,
            }
        if cmd == "sync":
            cur = c.get("cursors", "held")
            cursors = None if cur == "held" else {} if cur == "stored" else {
                int(k): v for k, v in cur.items()
            }
            if cur == "stored":
                self.conn.cursors.clear()
            r = self.conn.sync(cursors, timeout=c.get("timeout", 30))
            return {"messages": [msg(m) for m in r.messages], "heads": r.heads}
        if cmd == "send":
            ok = self.conn.send(c["chat_id"], c["text"], client_msg_id=c.get("client_msg_id"))
            return {"chat_id": ok.chat_id, "seq": ok.seq, "client_msg_id": ok.client_msg_id}
        if cmd == "send_many":
            sent = []
            for i in range(c["count"]):
                text = f"{c['prefix']}{i}"
                ok = self.conn.send(c["chat_id"], text)
                sent.append([ok.chat_id, ok.seq, text])
            return {"sent": sent}
        if cmd == "recv_until":
            chat, seq = c["chat_id"], c["seq"]
            deadline = time.monotonic() + c.get("timeout", 30)
            got = self.drain()
            while self.conn.cursors.get(chat, 0) < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"chat {chat} at {self.conn.cursors.get(chat)} of {seq}")
                ev = self.conn.recv(timeout=left)
                if isinstance(ev, Message):
                    got.append(msg(ev))
            return {"messages": got + self.drain()}
        if cmd == "recv_for":
            deadline = time.monotonic() + c["timeout"]
            got = []
            while (left := deadline - time.monotonic()) > 0:
                ev = self.conn.recv(timeout=left)
                if isinstance(ev, Message):
                    got.append(msg(ev))
            return {"messages": got}
        if cmd == "history":
            p = self.conn.history(c["chat_id"], c.get("before_seq", 0), c.get("limit", 50))
            return {"messages": [msg(m) for m in p.messages], "has_more": p.has_more}
        if cmd == "ack":
            self.conn.ack(c["chat_id"], c.get("seq"))
            return {}
        if cmd == "disconnect":
            self.conn.close()
            return {}
        raise ValueError(f"unknown command {cmd!r}")


def main() -> int:
    peer = Peer(sys.argv[1])
    for line in sys.stdin:
        c = json.loads(line)
        if c["cmd"] == "quit":
            print(json.dumps({"ok": {}}), flush=True)
            return 0
        try:
            out = {"ok": peer.do(c)}
        except NatterError as e:
            code = getattr(e, "name", None) or getattr(e, "code", None) or getattr(e, "reason", None)
            out = {"error": {"type": type(e).__name__, "code": code, "message": str(e)}}
        except Exception as e:  # noqa: BLE001 -- reported to the test, which fails on it
            out = {"error": {"type": type(e).__name__, "code": None, "message": str(e)}}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
