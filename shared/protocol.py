"""The wire protocol between the signaling server and its clients (browsers, bots, tools).

Every frame is a JSON text frame ``{"type": str, "data": object, "id"?: str}``. Each message type
has one dataclass here that validates itself in ``__post_init__``; ``decode`` turns a frame into
``(message, id)`` and ``encode`` does the reverse. Nothing here does I/O, so the server, the
client and the tests share exactly one definition of what is valid. See ``docs/protocol.md``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from dataclasses import dataclass, field
from collections.abc import Callable, Collection
from typing import Any, ClassVar, Self

import orjson

PROTOCOL_VERSION = 1

MAX_ID_LEN = 64
MAX_NAME_LEN = 32
MAX_LOBBY_NAME_LEN = 48
MAX_PASSWORD_LEN = 128
MAX_CHAT_LEN = 2000
MAX_SDP_LEN = 32_000
MAX_CANDIDATE_LEN = 1_000
MAX_TRANSCRIPT_LEN = 4_000
MAX_SAFE_INT = 2**53 - 1


class MessageType(enum.StrEnum):
    # client -> server
    SET_NAME = "set_name"
    JOIN = "join"
    PART = "part"
    PING = "ping"
    # both directions: the client names the target peer, the server names the sender
    CHAT = "chat"
    SDP = "sdp"
    ICE = "ice"
    TRANSCRIPT = "transcript"
    BOT_STATUS = "bot_status"
    # bot providers <-> server
    PROVIDER_HELLO = "provider_hello"
    BOT_START = "bot_start"
    BOT_STOP = "bot_stop"
    # server -> client
    WELCOME = "welcome"
    ICE_SERVERS = "ice_servers"
    SESSION = "session"
    LOBBY_STATE = "lobby_state"
    PEER_ADDED = "peer_added"
    PEER_REMOVED = "peer_removed"
    ACK = "ack"
    PONG = "pong"
    ERROR = "error"


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


def _invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_PAYLOAD, message)


MAX_JSON_DEPTH = 8  # nesting inside a free-form object field (a bot's config, its metrics)


def _check_len(name: str, value: str | None, max_len: int, min_len: int = 0) -> None:
    if value is None:
        return
    if not min_len <= len(value) <= max_len:
        if len(value) > max_len:
            raise _invalid(f"{name} is longer than {max_len} characters")
        raise _invalid(f"{name} must not be empty")


Checker = Callable[[str, Any], Any]


def is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text we can store and send: UTF-8-encodable (no lone
    surrogate, which a JSON escape such as ``\\ud800`` can produce) and without NUL."""
    if value.isascii():
        return "\x00" not in value
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _check_text(name: str, value: str) -> str:
    if not is_text(value):
        raise _invalid(f"{name} must be valid Unicode text without NUL")
    return value


def check_json(name: str, value: Any, depth: int = 0) -> Any:
    """Checks a free-form JSON value (a bot's config or metrics) for what every reader can
    take: objects with string keys, text without NUL, integers within ±(2**53-1), finite
    numbers, at most ``MAX_JSON_DEPTH`` levels of nesting."""
    if value is None or type(value) is bool:
        return value
    if type(value) is str:
        return _check_text(name, value)
    if type(value) is int:
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise _invalid(f"{name} is out of range")
        return value
    if type(value) is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise _invalid(f"{name} must be a finite number")
        return value
    if depth >= MAX_JSON_DEPTH:
        raise _invalid(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels")
    if type(value) is list:
        for item in value:
            check_json(f"{name}[]", item, depth + 1)
        return value
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _invalid(f"{name} keys must be strings")
            _check_text(f"{name} key", key)
            check_json(f"{name}.{key[:32]}", item, depth + 1)
        return value
    raise _invalid(f"{name} holds a value that is not JSON")


def _checker(hint: Any) -> Checker:
    """Compiles a (simple) annotation into a function that checks and converts a value.

    Compiled once per class: validation runs for every frame on the server's hot path.
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        check_inner = _checker(inner)
        return lambda name, value: None if value is None else check_inner(name, value)
    if origin is list:
        (item,) = typing.get_args(hint)
        check_item = _checker(item)

        def check_list(name: str, value: Any) -> Any:
            if not isinstance(value, list):
                raise _invalid(f"{name} must be a list")
            return [check_item(f"{name}[]", v) for v in value]
        return check_list
    if origin is dict or hint is dict:
        def check_dict(name: str, value: Any) -> Any:
            if not isinstance(value, dict):
                raise _invalid(f"{name} must be an object")
            return check_json(name, value)
        return check_dict
    if dataclasses.is_dataclass(hint):
        def check_object(name: str, value: Any) -> Any:
            if isinstance(value, hint):
                return value
            if not isinstance(value, dict):
                raise _invalid(f"{name} must be an object")
            return hint.from_dict(value)
        return check_object
    if hint is str:
        def check_str(name: str, value: Any) -> Any:
            if type(value) is not str:
                raise _invalid(f"{name} must be a string")
            return _check_text(name, value)
        return check_str
    if hint is bool:
        def check_bool(name: str, value: Any) -> Any:
            if type(value) is not bool:
                raise _invalid(f"{name} must be a boolean")
            return value
        return check_bool
    if hint is int:
        def check_int(name: str, value: Any) -> Any:
            if type(value) is not int:
                raise _invalid(f"{name} must be an integer")
            if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:  # what JSON peers and SQLite hold
                raise _invalid(f"{name} is out of range")
            return value
        return check_int
    if hint is float:
        def check_float(name: str, value: Any) -> Any:
            if type(value) is not float and type(value) is not int:
                raise _invalid(f"{name} must be a number")
            try:
                number = float(value)
            except OverflowError:
                raise _invalid(f"{name} is out of range") from None
            if number != number or number in (float("inf"), float("-inf")):
                raise _invalid(f"{name} must be a finite number")
            return number
        return check_float
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        def check_enum(name: str, value: Any) -> Any:
            try:
                return hint(value)
            except (ValueError, TypeError):
                raise _invalid(f"{name} must be one of {[m.value for m in hint]}") from None
        return check_enum
    raise TypeError(f"unsupported annotation {hint!r}")  # a bug in this module, not bad input


_MISSING = object()


def _compile_decoder(cls: type[Payload]) -> Callable[[Any], Any]:
    """``from_dict`` written out for one class, the way ``dataclasses`` writes ``__init__``.

    It runs for every frame a server reads: each value is checked once (not again in
    ``__post_init__``), plain strings without a call, and the instance is filled directly.
    """
    hints = typing.get_type_hints(cls)
    env: dict[str, Any] = {"_invalid": _invalid, "_new": object.__new__, "cls": cls,
                           "_MISSING": _MISSING, "_is_text": is_text}
    lines = ["def from_dict(data):",
             "    if not isinstance(data, dict):",
             f"        raise _invalid({cls.__name__ + ' data must be an object'!r})",
             "    obj = _new(cls)",
             "    d = obj.__dict__  # frozen forbids setattr, not the instance dict"]
    for i, (name, check, required, default) in enumerate(cls._spec()):
        env[f"check{i}"], env[f"default{i}"] = check, default
        hint = hints[name]
        lines += [f"    v = data.get({name!r}, _MISSING)",
                  "    if v is _MISSING:",
                  f"        raise _invalid({f'missing field {name!r}'!r})" if required else
                  f"        v = default{i}()"]
        if hint is str or hint == (str | None):
            none_ok = "v is not None and " if hint is not str else ""
            # lone surrogates only come through the lenient parser, which checks the whole
            # frame; NUL is the one thing the fast parser lets through
            lines += [f"    elif {none_ok}type(v) is not str:",
                      f"        raise _invalid({name + ' must be a string'!r})",
                      f"    elif {none_ok}'\\x00' in v:",
                      f"        raise _invalid({name + ' must be valid Unicode text without NUL'!r})"]
        else:
            lines += ["    else:", f"        v = check{i}({name!r}, v)"]
        lines.append(f"    d[{name!r}] = v")
    lines += ["    obj.validate()", "    return obj"]
    exec("\n".join(lines), env)  # noqa: S102 - our own source, built from field names
    return env["from_dict"]  # type: ignore[no-any-return]


class Payload:
    """Base of every value object on the wire: typed fields, checked on construction."""

    # per class: (field name, checker, required, default maker) for each field, compiled once
    _specs: ClassVar[dict[type, tuple[tuple[str, Checker, bool, Callable[[], Any]], ...]]] = {}
    _decoders: ClassVar[dict[type, Callable[[Any], Any]]] = {}

    @classmethod
    def _spec(cls) -> tuple[tuple[str, Checker, bool, Callable[[], Any]], ...]:
        spec = Payload._specs.get(cls)
        if spec is None:
            hints = typing.get_type_hints(cls)
            spec = Payload._specs[cls] = tuple(
                (f.name, _checker(hints[f.name]),
                 f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                 f.default_factory if f.default_factory is not dataclasses.MISSING
                 else (lambda d=f.default: d))
                for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return spec

    def __post_init__(self) -> None:
        for name, check, _, _ in self._spec():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Checks beyond the field types (lengths, ranges); raises ``ProtocolError``."""

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """The same checks as the constructor. Keys that are not fields are ignored."""
        decoder = Payload._decoders.get(cls)
        if decoder is None:
            decoder = Payload._decoders[cls] = _compile_decoder(cls)
        return decoder(data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _, _, _ in self._spec():
            value = getattr(self, name)
            if isinstance(value, Payload):
                value = value.to_dict()
            elif isinstance(value, list):
                value = [v.to_dict() if isinstance(v, Payload) else v for v in value]
            out[name] = value
        return out


class Message(Payload):
    """A payload that is a whole frame: it knows its own ``type``."""

    type: ClassVar[MessageType]


# --- value objects used inside messages -------------------------------------------------------


@dataclass(frozen=True)
class Participant(Payload):
    session_id: str
    name: str
    bot: bool = False
    connected: bool = True


@dataclass(frozen=True)
class LobbyInfo(Payload):
    id: str
    name: str
    private: bool = False
    has_password: bool = False
    max_participants: int = 16


@dataclass(frozen=True)
class SessionInfo(Payload):
    session_id: str
    name: str | None = None
    protected: bool = False
    bot: bool = False
    lobbies: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SessionDescription(Payload):
    """An ``RTCSessionDescriptionInit``: ``sdp`` may be left out (a rollback has none)."""

    type: str
    sdp: str = ""

    def validate(self) -> None:
        if self.type not in ("offer", "answer", "pranswer", "rollback"):
            raise _invalid("description type must be offer, answer, pranswer or rollback")
        _check_len("sdp", self.sdp, MAX_SDP_LEN)


@dataclass(frozen=True)
class IceCandidate(Payload):
    """An ``RTCIceCandidateInit``. A member left out and a member sent as null are the same
    thing (WebIDL defaults them to null), so null members are left out when relayed."""

    candidate: str = ""
    sdpMid: str | None = None  # noqa: N815 - the browser's RTCIceCandidateInit spelling
    sdpMLineIndex: int | None = None  # noqa: N815
    usernameFragment: str | None = None  # noqa: N815

    def validate(self) -> None:
        _check_len("candidate", self.candidate, MAX_CANDIDATE_LEN)
        _check_len("sdpMid", self.sdpMid, MAX_ID_LEN)
        _check_len("usernameFragment", self.usernameFragment, 256)
        if self.sdpMLineIndex is not None and not 0 <= self.sdpMLineIndex <= 65535:
            raise _invalid("sdpMLineIndex must be within 0..65535")

    def wire(self) -> dict[str, Any]:
        """The candidate as relayed: the members that were given."""
        return {k: v for k, v in vars(self).items() if v is not None}


# --- client -> server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SetName(Message):
    type: ClassVar[MessageType] = MessageType.SET_NAME
    name: str
    password: str | None = None

    def validate(self) -> None:
        _check_len("password", self.password, MAX_PASSWORD_LEN, 1)
        if len(self.name) > 4 * MAX_NAME_LEN:  # the precise rule lives with the names registry
            raise _invalid("name is far too long")


@dataclass(frozen=True)
class Join(Message):
    """Join by ``lobby_id``, or by ``lobby_name`` (created when new, with ``private``/``password``)."""

    type: ClassVar[MessageType] = MessageType.JOIN
    lobby_id: str | None = None
    lobby_name: str | None = None
    password: str | None = None
    private: bool = False
    history_since: int | None = None

    def validate(self) -> None:
        if (self.lobby_id is None) == (self.lobby_name is None):
            raise _invalid("give exactly one of lobby_id and lobby_name")
        _check_len("lobby_id", self.lobby_id, MAX_ID_LEN, 1)
        # an empty or blank name is the names registry's to refuse (name_invalid)
        _check_len("lobby_name", self.lobby_name, 4 * MAX_LOBBY_NAME_LEN)
        _check_len("password", self.password, MAX_PASSWORD_LEN, 1)


@dataclass(frozen=True)
class Part(Message):
    type: ClassVar[MessageType] = MessageType.PART
    lobby_id: str

    def validate(self) -> None:
        _check_len("lobby_id", self.lobby_id, MAX_ID_LEN, 1)


@dataclass(frozen=True)
class Ping(Message):
    type: ClassVar[MessageType] = MessageType.PING


# --- both directions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Chat(Message):
    """Sent by a client with ``lobby_id`` and ``text``; the server fills in the rest."""

    type: ClassVar[MessageType] = MessageType.CHAT
    lobby_id: str
    text: str
    message_id: int | None = None
    session_id: str | None = None
    name: str | None = None
    ts: float | None = None
    kind: str = "chat"

    def validate(self) -> None:
        _check_len("lobby_id", self.lobby_id, MAX_ID_LEN, 1)
        _check_len("text", self.text, MAX_CHAT_LEN, 1)
        if self.kind not in ("chat", "system"):
            raise _invalid("kind must be chat or system")


@dataclass(frozen=True)
class Sdp(Message):
    """``peer_id`` is the target when a client sends it and the sender when the server relays it."""

    type: ClassVar[MessageType] = MessageType.SDP
    lobby_id: str
    peer_id: str
    description: SessionDescription

    def validate(self) -> None:
        _check_len("lobby_id", self.lobby_id, MAX_ID_LEN, 1)
        _check_len("peer_id", self.peer_id, MAX_ID_LEN, 1)


@dataclass(frozen=True)
class Ice(Message):
    """A trickled candidate; ``candidate`` null means end of candidates."""

    type: ClassVar[MessageType] = MessageType.ICE
    lobby_id: str
    peer_id: str
    candidate: IceCandidate | None = None

    def validate(self) -> None:
        _check_len("lobby_id", self.lobby_id, MAX_ID_LEN, 1)
        _check_len("peer_id", self.peer_id, MAX_ID_LEN, 1)


# --- server -> client ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IceServer(Payload):
    """An ``RTCIceServer``: STUN URLs, or TURN URLs with this session's credential."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class Welcome(Message):
    type: ClassVar[MessageType] = MessageType.WELCOME
    protocol: int
    server: str
    session: SessionInfo
    # the ICE servers every peer connection uses (empty: host candidates only), and when the
    # TURN credential in them expires (epoch seconds; null without TURN)
    ice_servers: list[IceServer] = field(default_factory=list)
    ice_expires: float | None = None
    ice_policy: str = "all"  # or "relay": browsers use TURN relays only (RTCIceTransportPolicy)


@dataclass(frozen=True)
class IceServers(Message):
    """New ICE servers (a fresh TURN credential), sent before the current one expires:
    connections made from now on use them."""

    type: ClassVar[MessageType] = MessageType.ICE_SERVERS
    ice_servers: list[IceServer]
    expires: float | None = None


@dataclass(frozen=True)
class Session(Message):
    type: ClassVar[MessageType] = MessageType.SESSION
    session: SessionInfo


@dataclass(frozen=True)
class LobbyState(Message):
    type: ClassVar[MessageType] = MessageType.LOBBY_STATE
    lobby: LobbyInfo
    participants: list[Participant]


@dataclass(frozen=True)
class PeerAdded(Message):
    """Start (or restart) a peer connection; the side told ``create_offer`` sends the offer."""

    type: ClassVar[MessageType] = MessageType.PEER_ADDED
    lobby_id: str
    peer: Participant
    create_offer: bool


@dataclass(frozen=True)
class PeerRemoved(Message):
    type: ClassVar[MessageType] = MessageType.PEER_REMOVED
    lobby_id: str
    peer_id: str


@dataclass(frozen=True)
class Ack(Message):
    type: ClassVar[MessageType] = MessageType.ACK
    result: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Pong(Message):
    type: ClassVar[MessageType] = MessageType.PONG


@dataclass(frozen=True)
class Error(Message):
    type: ClassVar[MessageType] = MessageType.ERROR
    code: str
    message: str
    ref: str | None = None


@dataclass(frozen=True)
class Transcript(Message):
    """Speech of one speaker. Interims (``final`` false) are replaced in place by segment id,
    an empty interim clears it; finals are stored with the lobby's chat and replayed."""

    type: ClassVar[MessageType] = MessageType.TRANSCRIPT
    lobby_id: str
    segment_id: str
    speaker_id: str
    text: str
    final: bool
    speaker_name: str = ""
    start: float = 0.0  # seconds since the epoch
    end: float = 0.0
    model: str = ""
    language: str | None = None  # the language spoken
    task: str = "transcribe"  # or "translate": the text is English, translated from language
    message_id: int | None = None  # set by the server on stored finals
    bot_id: str | None = None  # the bot session that transcribed it (set by the server)

    def validate(self) -> None:
        _check_len("lobby_id", self.lobby_id, MAX_ID_LEN, 1)
        _check_len("segment_id", self.segment_id, MAX_ID_LEN * 2, 1)
        _check_len("speaker_id", self.speaker_id, MAX_ID_LEN, 1)
        _check_len("text", self.text, MAX_TRANSCRIPT_LEN, 1 if self.final else 0)
        _check_len("speaker_name", self.speaker_name, MAX_NAME_LEN * 2)
        _check_len("model", self.model, MAX_ID_LEN)
        _check_len("language", self.language, 16)
        if self.task not in ("transcribe", "translate"):
            raise _invalid("task must be transcribe or translate")
        if self.end < self.start:
            raise _invalid("end must not be before start")


# --- bots and their providers ---------------------------------------------------------------

BOT_STATUSES = ("pending", "starting", "loading", "live", "lagging", "failed", "stopped")


@dataclass(frozen=True)
class BotKind(Payload):
    """A kind of bot a provider can run; ``config`` describes its settings (see bots.plugin)."""

    kind: str
    description: str = ""
    config: dict = field(default_factory=dict)

    def validate(self) -> None:
        _check_len("kind", self.kind, MAX_ID_LEN, 1)
        _check_len("description", self.description, 500)


@dataclass(frozen=True)
class RunningBot(Payload):
    bot_id: str
    kind: str
    lobby_id: str

    def validate(self) -> None:
        _check_len("bot_id", self.bot_id, MAX_ID_LEN, 1)
        _check_len("kind", self.kind, MAX_ID_LEN, 1)
        _check_len("lobby_id", self.lobby_id, MAX_ID_LEN, 1)


@dataclass(frozen=True)
class ProviderHello(Message):
    """A provider announces what it runs; sent again after every reconnect."""

    type: ClassVar[MessageType] = MessageType.PROVIDER_HELLO
    name: str
    capacity: int
    kinds: list[BotKind]
    running: list[RunningBot] = field(default_factory=list)

    def validate(self) -> None:
        _check_len("name", self.name, MAX_NAME_LEN * 2, 1)
        if not 0 <= self.capacity <= 10_000:
            raise _invalid("capacity must be within 0..10000")


@dataclass(frozen=True)
class BotStart(Message):
    type: ClassVar[MessageType] = MessageType.BOT_START
    bot_id: str
    kind: str
    lobby_id: str
    token: str
    name: str
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BotStop(Message):
    type: ClassVar[MessageType] = MessageType.BOT_STOP
    bot_id: str


@dataclass(frozen=True)
class BotStatus(Message):
    """From a provider: how a bot is doing. From the server to a lobby: the same, filled in."""

    type: ClassVar[MessageType] = MessageType.BOT_STATUS
    bot_id: str
    status: str
    detail: str = ""
    lobby_id: str | None = None
    kind: str | None = None
    name: str | None = None
    session_id: str | None = None
    metrics: dict = field(default_factory=dict)  # e.g. {"lag": 1.2}: exported by the server
    # why a bot failed, as an error code: "invalid_config" when its config was refused
    error: str | None = None

    def validate(self) -> None:
        _check_len("bot_id", self.bot_id, MAX_ID_LEN, 1)
        if self.status not in BOT_STATUSES:
            raise _invalid(f"status must be one of {BOT_STATUSES}")
        _check_len("detail", self.detail, 1000)
        _check_len("error", self.error, MAX_ID_LEN)
        for key, value in self.metrics.items():
            if type(value) not in (int, float):
                raise _invalid(f"metrics.{key[:32]} must be a number")


MESSAGES: dict[MessageType, type[Message]] = {
    cls.type: cls
    for cls in (SetName, Join, Part, Ping, Chat, Sdp, Ice, Welcome, IceServers, Session,
                LobbyState, PeerAdded, PeerRemoved, Ack, Pong, Error, ProviderHello, BotStart, BotStop,
                BotStatus, Transcript)
}
_BY_TYPE_NAME: dict[str, type[Message]] = {t.value: cls for t, cls in MESSAGES.items()}


def encode(message: Message, id: str | None = None) -> str:
    # orjson writes dataclasses (nested ones and enums too) itself, several times faster than
    # building the dict with to_dict(): this runs for every frame a server sends
    frame: dict[str, Any] = {"type": message.type.value, "data": message}
    if id is not None:
        frame["id"] = id
    return orjson.dumps(frame).decode()


def encode_data(type_: MessageType, data: dict[str, Any], id: str | None = None) -> str:
    """A frame from already-valid data (the caller vouches for it); values may be payloads."""
    frame: dict[str, Any] = {"type": type_.value, "data": data}
    if id is not None:
        frame["id"] = id
    return orjson.dumps(frame).decode()


_INVALID = object()


def _lenient_loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _INVALID


def _holds_bad_text(value: Any) -> bool:
    """Whether a parsed JSON value holds a string (or key) that is not valid Unicode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if not item.isascii() and not is_text(item.replace("\x00", "")):
                return True
        elif type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False


def loads(text: str) -> Any:
    """Parses JSON from a client (a frame or an HTTP body).

    orjson reads nearly every frame. What it refuses, the standard library reads, so that a
    number out of range (``1e999``, ``NaN``) is named by the field check; a string holding an
    escaped lone surrogate (``"\\ud800"``, which no UTF-8 text can hold) is refused here, and
    so is nesting deeper than orjson's 1024 levels: both ``bad_json``.
    """
    try:
        return orjson.loads(text)  # fast; refuses a few things the stdlib parser reads
    except (ValueError, RecursionError):
        value = _lenient_loads(text)
    if value is _INVALID:
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is not valid JSON")
    if _holds_bad_text(value):
        raise ProtocolError(ErrorCode.BAD_JSON,
                            "frame holds a string that is not valid Unicode (a lone surrogate)")
    return value


def _valid_id(id_: Any) -> bool:
    return isinstance(id_, str) and 0 < len(id_) <= MAX_ID_LEN and is_text(id_)


def decode_envelope(text: str) -> tuple[str, Any, str | None]:
    """Parses the frame's outer shape: returns ``(type, data, id)``."""
    frame = loads(text)
    if not isinstance(frame, dict):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame must be a JSON object")
    type_, data, id_ = frame.get("type"), frame.get("data", {}), frame.get("id")
    if not isinstance(type_, str):
        raise ProtocolError(ErrorCode.BAD_FRAME, "frame needs a string 'type'")
    if id_ is not None and not _valid_id(id_):
        raise ProtocolError(ErrorCode.BAD_FRAME, f"'id' must be a string of 1..{MAX_ID_LEN} "
                                                 "characters (valid Unicode, no NUL)")
    return type_, data, id_


def decode(text: str, allowed: Collection[MessageType] | None = None) -> tuple[Message, str | None]:
    """Parses and validates a frame; ``allowed`` limits the types this side accepts."""
    type_, data, id_ = decode_envelope(text)
    cls = _BY_TYPE_NAME.get(type_)
    if cls is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE,
                            f"unknown message type {type_[:40]!r}") from None
    if allowed is not None and cls.type not in allowed:
        raise ProtocolError(ErrorCode.NOT_ALLOWED, f"{type_!r} may not be sent to this side")
    try:
        return cls.from_dict(data), id_
    except TypeError as exc:  # e.g. a key that is not a field name
        raise _invalid(str(exc)) from None


def frame_id(text: str) -> str | None:
    """The request id of a frame that failed to decode, for the error's ``ref``: None unless
    the frame is a JSON object whose ``id`` is itself valid."""
    frame = _lenient_loads(text)
    if isinstance(frame, dict) and _valid_id(frame.get("id")):
        return frame["id"]  # type: ignore[no-any-return]
    return None
