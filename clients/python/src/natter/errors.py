"""The errors the natter client raises, and the server's stable error-code catalogue.

Every exception derives from :class:`NatterError`. Each says who is at fault:

* :class:`ServerError` -- natterd refused a request or closed the connection with an
  ``Error`` frame; ``code`` is the stable number, ``name`` its snake_case name
  (docs/PROTOCOL.md, "Error codes").
* :class:`HttpError` -- the HTTP side-port answered non-2xx; ``code`` is the server's
  snake_case ``error.code`` (docs/HTTP.md).
* :class:`InvalidText` -- this client refused a message text before sending it (the caller's
  fault: empty, over 100,000 characters, or not encodable as UTF-8).
* :class:`FrameTooLarge` -- a frame to send or a received length prefix exceeds ``max_frame``.
* :class:`ProtocolError` -- the server sent bytes that are not a valid frame (the connection is
  closed: reconnect).
* :class:`ConnectionClosed` -- the connection ended (socket closed, reset or timed out).
"""

from __future__ import annotations

from typing import Optional

#: The wire error codes, ``code -> name``, exactly as ``natter_wire::ErrorCode`` and
#: docs/PROTOCOL.md list them (a unit test compares this table with that document).
ERROR_CODES = {
    1: "bad_frame",
    2: "frame_too_large",
    3: "not_authenticated",
    4: "invalid_token",
    5: "unsupported_version",
    6: "unexpected_frame",
    7: "not_member",
    8: "empty_text",
    9: "text_too_long",
    10: "invalid_utf8",
    11: "unknown_chat",
    12: "rate_limited",
    13: "internal",
    14: "unavailable",
    15: "token_revoked",
    16: "shutting_down",
    17: "heartbeat_timeout",
    18: "already_authenticated",
    19: "too_many_connections",
    20: "slow_consumer",
    21: "overloaded",
    22: "too_many_sessions",
    23: "missing_client_msg_id",
    24: "client_msg_id_reused",
    25: "not_sender",
    26: "window_closed",
    27: "message_deleted",
    28: "unknown_target",
    29: "too_many_edits",
    30: "storage_full",
}

#: Codes after which the same ``Send`` (same ``client_msg_id``) may succeed when retried
#: (docs/PROTOCOL.md, "The client's duties").
RETRYABLE_CODES = frozenset({"rate_limited", "internal", "unavailable", "overloaded", "storage_full"})

#: Codes with which the server closes the connection (docs/PROTOCOL.md, the code table).
CLOSING_CODES = frozenset(
    {
        "bad_frame",
        "frame_too_large",
        "not_authenticated",
        "invalid_token",
        "unsupported_version",
        "unexpected_frame",
        "token_revoked",
        "shutting_down",
        "heartbeat_timeout",
        "too_many_connections",
        "slow_consumer",
        "too_many_sessions",
    }
)


def code_name(code: int) -> str:
    """The snake_case name of a wire error code; ``unknown_<n>`` for a code this client
    does not know (newer servers append codes)."""
    return ERROR_CODES.get(code, f"unknown_{code}")


class NatterError(Exception):
    """Base class of every error raised by this package."""


class ServerError(NatterError):
    """An ``Error`` frame from natterd.

    ``request_id`` is the request it answers (0: about the connection as a whole);
    ``message`` is for humans, never parse it.
    """

    def __init__(self, code: int, message: str, request_id: int = 0):
        self.code = code
        self.name = code_name(code)
        self.message = message
        self.request_id = request_id
        super().__init__(f"{self.name} ({code}): {message}")

    @property
    def retryable(self) -> bool:
        """Whether retrying the same request may succeed."""
        return self.name in RETRYABLE_CODES

    @property
    def closes_connection(self) -> bool:
        """Whether natterd closes the connection after this error."""
        return self.name in CLOSING_CODES


class HttpError(NatterError):
    """A non-2xx answer from the HTTP side-port: ``status``, and the server's stable
    ``code`` (``"invalid_credentials"``, ``"username_taken"``, ...; ``None`` when the
    body was not natter's error JSON)."""

    def __init__(self, status: int, code: Optional[str], message: str):
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"HTTP {status} {code or 'error'}: {message}")


class InvalidText(NatterError, ValueError):
    """A message text refused by this client before sending: ``reason`` is the server's
    code it would have drawn (``empty_text``, ``text_too_long``, ``invalid_utf8``)."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


class FrameTooLarge(NatterError):
    """A frame of ``size`` bytes (prefix included) over the connection's ``limit``
    (``Welcome.max_frame``): refused before sending, or announced by the server."""

    def __init__(self, size: int, limit: int, direction: str):
        self.size = size
        self.limit = limit
        super().__init__(f"{direction} frame of {size} bytes exceeds max_frame {limit}")


class ProtocolError(NatterError):
    """natterd sent something that is not a valid frame, or an answer out of place."""


class ConnectionClosed(NatterError):
    """The connection ended; ``error`` is the server's closing ``Error`` when one came."""

    def __init__(self, detail: str, error: Optional[ServerError] = None):
        self.error = error
        super().__init__(detail if error is None else f"{detail}: {error}")
