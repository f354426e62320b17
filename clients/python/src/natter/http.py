"""The HTTP side-port client (docs/HTTP.md): sign up, log in, endpoints, friends, chats.

Stdlib only (``urllib.request``). JSON in and out; every non-2xx answer raises
:class:`~natter.errors.HttpError` carrying the server's stable ``error.code``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from natter.errors import HttpError

#: Seconds to wait for one HTTP answer (the side-port answers writes after an fsync).
DEFAULT_HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class Login:
    """One logged-in device: its token authenticates both the side-port and ``Hello``."""

    user_id: int
    device_id: int
    #: 64 hex characters, valid until :meth:`HttpClient.logout`.
    token: str
    #: The real-time listeners, ``{"tcp": "127.0.0.1:7100", ...}``.
    endpoints: Dict[str, str]


class HttpClient:
    """A client of one natterd's side-port, e.g. ``HttpClient("http://127.0.0.1:7180")``."""

    def __init__(self, base_url: str, timeout: float = DEFAULT_HTTP_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(
        self, method: str, path: str, body: Any = None, token: Optional[str] = None
    ) -> Any:
        """One JSON request; returns the decoded answer (``None`` for 204).

        Raises :class:`HttpError` for a non-2xx answer, with ``status`` 0 and code
        ``"unreachable"`` when the side-port cannot be reached.
        """
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            code, message = None, raw.decode("utf-8", "replace")
            try:
                err = json.loads(raw)["error"]
                code, message = err["code"], err.get("message", "")
            except (ValueError, KeyError, TypeError):
                pass
            raise HttpError(e.code, code, message) from None
        except (urllib.error.URLError, OSError) as e:
            raise HttpError(0, "unreachable", f"{self.base_url}: {e}") from None
        return json.loads(raw) if raw else None

    def signup(self, username: str, password: str) -> int:
        """Creates an account; returns its ``user_id`` (409 ``username_taken`` if it exists)."""
        return self.request("POST", "/v1/signup", {"username": username, "password": password})[
            "user_id"
        ]

    def login(self, username: str, password: str, device_name: str) -> Login:
        """Logs one new device in (each login is a new device with its own token)."""
        r = self.request(
            "POST",
            "/v1/login",
            {"username": username, "password": password, "device_name": device_name},
        )
        return Login(r["user_id"], r["device_id"], r["token"], r.get("endpoints", {}))

    def logout(self, token: str) -> None:
        """Revokes the token and closes that device's live sessions."""
        self.request("POST", "/v1/logout", token=token)

    def endpoints(self) -> Dict[str, str]:
        """``GET /v1/endpoints``: the addresses of the real-time listeners actually bound."""
        return self.request("GET", "/v1/endpoints")

    def friend_request(self, token: str, username: str) -> str:
        """Asks ``username`` to be friends; ``"requested"`` or ``"friends"``."""
        return self.request("POST", "/v1/friends/requests", {"username": username}, token)[
            "status"
        ]

    def accept_friend(self, token: str, user_id: int) -> None:
        """Accepts the friend request of ``user_id``."""
        self.request("POST", f"/v1/friends/requests/{int(user_id)}/accept", {}, token)

    def friends(self, token: str) -> Dict[str, List[Dict[str, Any]]]:
        """Friends and pending requests: ``{"friends", "incoming", "outgoing"}``."""
        return self.request("GET", "/v1/friends", token=token)

    def direct_chat(self, token: str, user_id: int) -> int:
        """Opens (or returns) the direct chat with a friend; its ``chat_id``."""
        return self.request("POST", "/v1/dms", {"user_id": int(user_id)}, token)["chat_id"]

    def create_group(self, token: str, name: str, members: Sequence[int]) -> int:
        """Creates a group owned by the caller with friends ``members``; its ``chat_id``."""
        body = {"name": name, "members": [int(m) for m in members]}
        return self.request("POST", "/v1/groups", body, token)["chat_id"]

    def chats(self, token: str) -> List[Dict[str, Any]]:
        """The caller's chats with ``last_seq``, ``read_seq`` and ``unread``."""
        return self.request("GET", "/v1/chats", token=token)["chats"]
