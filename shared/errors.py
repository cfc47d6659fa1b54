"""Every exception shared/ raises, in one tree per side.

``ProtocolError`` (with its ``ErrorCode``) is a refusal on the wire: what a server sends back as
an ``error`` message, and what building an invalid message raises anywhere. ``ClientError`` is
the root of everything the signaling client raises. The tree is documented in docs/client.md;
a test holds the two together.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the catalogue imports this module: no import of it at run time
    from .protocol import Message


class ErrorCode(enum.StrEnum):
    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_PAYLOAD = "invalid_payload"
    MESSAGE_TOO_LARGE = "message_too_large"
    NOT_ALLOWED = "not_allowed"
    NAME_INVALID = "name_invalid"
    NAME_IN_USE = "name_in_use"
    NAME_PROTECTED = "name_protected"
    NAME_REQUIRED = "name_required"
    BAD_PASSWORD = "bad_password"
    LOBBY_NOT_FOUND = "lobby_not_found"
    LOBBY_EXISTS = "lobby_exists"
    LOBBY_FULL = "lobby_full"
    LOBBY_PASSWORD_REQUIRED = "lobby_password_required"
    NOT_IN_LOBBY = "not_in_lobby"
    PEER_NOT_IN_LOBBY = "peer_not_in_lobby"
    PEER_UNAVAILABLE = "peer_unavailable"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    RATE_LIMITED = "rate_limited"
    UNKNOWN_BOT_KIND = "unknown_bot_kind"
    INVALID_CONFIG = "invalid_config"
    NO_PROVIDER = "no_provider"
    BOT_NOT_FOUND = "bot_not_found"
    INTERNAL = "internal_error"


class ProtocolError(Exception):
    """A request the server refuses; it travels to the client as an ``error`` message."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# --- the client ----------------------------------------------------------------------------------


class ClientError(Exception):
    """Base of every error the client raises."""


class ConnectTimeout(ClientError):
    """``start(wait=…)`` or ``wait_connected`` ran out of time before the client was connected;
    the connection loop carries on trying."""


class RequestTimeout(ClientError):
    """No reply arrived within the request's timeout."""


class ServerError(ClientError):
    """The server answered a request (or the request for a new session) with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionClosed(ClientError):
    """The client was closed: nothing more can be sent on it."""


class NotDelivered(ClientError):
    """A queued frame was dropped (``reason`` is ``overflow``, ``ttl`` or ``closed``)."""

    def __init__(self, reason: str, message: Message) -> None:
        super().__init__(f"{message.type.value} not delivered: {reason}")
        self.reason = reason
        self.message = message


class QueueFull(ClientError):
    """The outgoing queue is full of critical frames; nothing could make room."""


class AuthError(ClientError):
    """The server refused our credentials (provider key or session token); the client stops."""


class NameRefused(ClientError):
    """The server refused the name the client was configured with (``ClientConfig.name``)
    when the client connected: ``code`` is ``name_in_use`` (another live session has it),
    ``name_protected``, ``bad_password`` or ``name_invalid``. The client stops: retrying
    would be refused again."""

    def __init__(self, code: str, name: str, message: str) -> None:
        super().__init__(f"{code}: the name {name!r} was refused: {message}")
        self.code = code
        self.name = name
        self.message = message


class SessionEnded(ClientError):
    """The server ended this session's connection for good: ``code`` 4001 (the session
    connected again elsewhere), 4002 (the session was deleted) or 4003 (kicked). The client
    stops instead of reconnecting, which would only take the session back."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by the server ({code}: {reason or 'no reason'})")
        self.code = code
        self.reason = reason


class ClientBug(ClientError):
    """The connection loop met an exception that is no network or server failure: a bug
    (the original is ``__cause__``). It is logged with its traceback and the client stops,
    rather than reconnect into the same bug again and again."""


# Raised inside the connection loop, which logs them and reconnects: they never reach a
# caller, but they name in the log what went wrong.


class HandshakeError(ClientError):
    """The server did not open a session the way the protocol says: the session request got
    no JSON answer, or the socket's first frame was not a ``welcome``."""


class ConnectionLost(ClientError):
    """The socket closed or failed under a live connection."""
