"""The wire protocol between the signaling server and its clients (browsers, bots, tools).

Every frame is a JSON text frame ``{"type": str, "data": object, "id"?: str}``. This is the
catalogue: each message type has one dataclass here, checked by the engine in
``shared.validation`` from its annotations and its ``validate()``; ``decode`` turns a frame
into ``(message, id)`` and ``encode`` does the reverse. Nothing here does I/O, so the server,
the client and the tests share exactly one definition of what is valid. See
``docs/protocol.md``.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import orjson

# the wire's error codes and ProtocolError are the catalogue's too (``p.ProtocolError``); they
# live with the other exceptions so that the engine below this module can raise them
from .errors import ErrorCode, ProtocolError
from .validation import Length, Payload, check_len, invalid, is_text, lenient_loads, loads

PROTOCOL_VERSION = 1

MAX_ID_LEN = 64
MAX_NAME_LEN = 32
MAX_LOBBY_NAME_LEN = 48
MAX_PASSWORD_LEN = 128
MAX_CHAT_LEN = 2000
MAX_SDP_LEN = 32_000
MAX_CANDIDATE_LEN = 1_000
MAX_TRANSCRIPT_LEN = 4_000
MAX_REPLACES = 8  # segment ids one final may replace

# a field's length limits go with its type (shared.validation checks them before validate())
Id = Annotated[str, Length(1, MAX_ID_LEN)]  # a lobby's, session's, bot's, message's id
Password = Annotated[str, Length(1, MAX_PASSWORD_LEN)]


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


class Message(Payload):
    """A payload that is a whole frame. Its ``type`` is a class keyword,
    ``class Ping(Message, type=MessageType.PING)``: set once, never a field (a base that
    is no frame of its own has none)."""

    type: ClassVar[MessageType]

    def __init_subclass__(cls, type: MessageType | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type is not None:
            cls.type = type


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
    sdp: Annotated[str, Length(0, MAX_SDP_LEN)] = ""

    def validate(self) -> None:
        if self.type not in ("offer", "answer", "pranswer", "rollback"):
            raise invalid("description type must be offer, answer, pranswer or rollback")


@dataclass(frozen=True)
class IceCandidate(Payload):
    """An ``RTCIceCandidateInit``. A member left out and a member sent as null are the same
    thing (WebIDL defaults them to null), so null members are left out when relayed."""

    candidate: Annotated[str, Length(0, MAX_CANDIDATE_LEN)] = ""
    sdpMid: Annotated[str, Length(0, MAX_ID_LEN)] | None = None  # the browser's spelling
    sdpMLineIndex: int | None = None
    usernameFragment: Annotated[str, Length(0, 256)] | None = None

    def validate(self) -> None:
        if self.sdpMLineIndex is not None and not 0 <= self.sdpMLineIndex <= 65535:
            raise invalid("sdpMLineIndex must be within 0..65535")

    def wire(self) -> dict[str, Any]:
        """The candidate as relayed: the members that were given."""
        return {k: v for k, v in vars(self).items() if v is not None}


# --- client -> server ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SetName(Message, type=MessageType.SET_NAME):
    name: str
    password: Password | None = None

    def validate(self) -> None:
        if len(self.name) > 4 * MAX_NAME_LEN:  # the precise rule lives with the names registry
            raise invalid("name is far too long")


@dataclass(frozen=True)
class Join(Message, type=MessageType.JOIN):
    """Join by ``lobby_id``, or by ``lobby_name`` (created when new, with ``private``/``password``)."""

    lobby_id: Id | None = None
    # an empty or blank name is the names registry's to refuse (name_invalid)
    lobby_name: Annotated[str, Length(0, 4 * MAX_LOBBY_NAME_LEN)] | None = None
    password: Password | None = None
    private: bool = False
    history_since: int | None = None

    def validate(self) -> None:
        if (self.lobby_id is None) == (self.lobby_name is None):
            raise invalid("give exactly one of lobby_id and lobby_name")


@dataclass(frozen=True)
class Part(Message, type=MessageType.PART):
    lobby_id: Id


# --- a request with nothing to say, and its answer -----------------------------------------


@dataclass(frozen=True)
class Ping(Message, type=MessageType.PING):
    """Are you there? Answered with ``pong`` (the heartbeat is WebSocket pings)."""


@dataclass(frozen=True)
class Pong(Message, type=MessageType.PONG):
    """The answer to ``ping``."""


# --- both directions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Chat(Message, type=MessageType.CHAT):
    """Sent by a client with ``lobby_id`` and ``text``; the server fills in the rest."""

    lobby_id: Id
    text: Annotated[str, Length(1, MAX_CHAT_LEN)]
    message_id: int | None = None
    session_id: str | None = None
    name: str | None = None
    ts: float | None = None
    kind: str = "chat"

    def validate(self) -> None:
        if self.kind not in ("chat", "system"):
            raise invalid("kind must be chat or system")


@dataclass(frozen=True)
class Relay(Message):
    """A frame between two peers of a lobby, through the server: ``peer_id`` is the target
    when a client sends it and the sender when the server relays it."""

    lobby_id: Id
    peer_id: Id


@dataclass(frozen=True)
class Sdp(Relay, type=MessageType.SDP):
    description: SessionDescription


@dataclass(frozen=True)
class Ice(Relay, type=MessageType.ICE):
    """A trickled candidate; ``candidate`` null means end of candidates."""

    candidate: IceCandidate | None = None


# --- server -> client ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IceServer(Payload):
    """An ``RTCIceServer``: STUN URLs, or TURN URLs with this session's credential."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


@dataclass(frozen=True)
class Welcome(Message, type=MessageType.WELCOME):
    protocol: int
    server: str
    session: SessionInfo
    # the ICE servers every peer connection uses (empty: host candidates only), and when the
    # TURN credential in them expires (epoch seconds; null without TURN)
    ice_servers: list[IceServer] = field(default_factory=list)
    ice_expires: float | None = None
    ice_policy: str = "all"  # or "relay": browsers use TURN relays only (RTCIceTransportPolicy)


@dataclass(frozen=True)
class IceServers(Message, type=MessageType.ICE_SERVERS):
    """New ICE servers (a fresh TURN credential), sent before the current one expires:
    connections made from now on use them."""

    ice_servers: list[IceServer]
    expires: float | None = None


@dataclass(frozen=True)
class Session(Message, type=MessageType.SESSION):
    session: SessionInfo


@dataclass(frozen=True)
class LobbyState(Message, type=MessageType.LOBBY_STATE):
    lobby: LobbyInfo
    participants: list[Participant]


@dataclass(frozen=True)
class PeerAdded(Message, type=MessageType.PEER_ADDED):
    """Start (or restart) a peer connection; the side told ``create_offer`` sends the offer."""

    lobby_id: str
    peer: Participant
    create_offer: bool


@dataclass(frozen=True)
class PeerRemoved(Message, type=MessageType.PEER_REMOVED):
    lobby_id: str
    peer_id: str


@dataclass(frozen=True)
class Ack(Message, type=MessageType.ACK):
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Error(Message, type=MessageType.ERROR):
    code: str
    message: str
    ref: str | None = None


@dataclass(frozen=True)
class Transcript(Message, type=MessageType.TRANSCRIPT):
    """Speech of one speaker. Interims (``final`` false) are replaced in place by segment id,
    an empty interim clears it; finals are stored with the lobby's chat and replayed. A final
    may name in ``replaces`` earlier finals of the same speaker from the same bot that it
    supersedes (a sentence that went on after a pause): readers show it in their place."""

    lobby_id: Id
    segment_id: Annotated[str, Length(1, 2 * MAX_ID_LEN)]
    speaker_id: Id
    text: str  # at most MAX_TRANSCRIPT_LEN; empty only in an interim (see validate)
    final: bool
    speaker_name: Annotated[str, Length(0, 2 * MAX_NAME_LEN)] = ""
    start: float = 0.0  # seconds since the epoch
    end: float = 0.0
    model: Annotated[str, Length(0, MAX_ID_LEN)] = ""
    language: Annotated[str, Length(0, 16)] | None = None  # the language spoken
    task: str = "transcribe"  # or "translate": the text is English, translated from language
    message_id: int | None = None  # set by the server on stored finals
    bot_id: str | None = None  # the bot session that transcribed it (set by the server)
    replaces: list[Annotated[str, Length(1, 2 * MAX_ID_LEN)]] = field(default_factory=list)

    def validate(self) -> None:
        check_len("text", self.text, MAX_TRANSCRIPT_LEN, 1 if self.final else 0)
        if self.replaces and not self.final:
            raise invalid("only a final may replace other segments")
        if len(self.replaces) > MAX_REPLACES:
            raise invalid(f"a final may replace at most {MAX_REPLACES} segments")
        if self.segment_id in self.replaces:
            raise invalid("a final cannot replace its own segment")
        if self.task not in ("transcribe", "translate"):
            raise invalid("task must be transcribe or translate")
        if self.end < self.start:
            raise invalid("end must not be before start")


# --- bots and their providers ---------------------------------------------------------------

BOT_STATUSES = ("pending", "starting", "loading", "live", "lagging", "failed", "stopped")


@dataclass(frozen=True)
class BotKind(Payload):
    """A kind of bot a provider can run; ``config`` describes its settings (see bots.plugin)."""

    kind: Id
    description: Annotated[str, Length(0, 500)] = ""
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningBot(Payload):
    bot_id: Id
    kind: Id
    lobby_id: Id


@dataclass(frozen=True)
class ProviderHello(Message, type=MessageType.PROVIDER_HELLO):
    """A provider announces what it runs; sent again after every reconnect."""

    name: Annotated[str, Length(1, 2 * MAX_NAME_LEN)]
    capacity: int
    kinds: list[BotKind]
    running: list[RunningBot] = field(default_factory=list)

    def validate(self) -> None:
        if not 0 <= self.capacity <= 10_000:
            raise invalid("capacity must be within 0..10000")


@dataclass(frozen=True)
class BotStart(Message, type=MessageType.BOT_START):
    bot_id: str
    kind: str
    lobby_id: str
    token: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BotStop(Message, type=MessageType.BOT_STOP):
    bot_id: str


@dataclass(frozen=True)
class BotStatus(Message, type=MessageType.BOT_STATUS):
    """From a provider: how a bot is doing. From the server to a lobby: the same, filled in."""

    bot_id: Id
    status: str
    detail: Annotated[str, Length(0, 1000)] = ""
    lobby_id: str | None = None
    kind: str | None = None
    name: str | None = None
    session_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # e.g. {"lag": 1.2}: exported by the server
    # why a bot failed, as an error code: "invalid_config" when its config was refused
    error: Annotated[str, Length(0, MAX_ID_LEN)] | None = None

    def validate(self) -> None:
        if self.status not in BOT_STATUSES:
            raise invalid(f"status must be one of {BOT_STATUSES}")
        for key, value in self.metrics.items():
            if type(value) not in (int, float):
                raise invalid(f"metrics.{key[:32]} must be a number")


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
        raise invalid(str(exc)) from None


def frame_id(text: str) -> str | None:
    """The request id of a frame that failed to decode, for the error's ``ref``: None unless
    the frame is a JSON object whose ``id`` is itself valid."""
    frame = lenient_loads(text)
    if isinstance(frame, dict) and _valid_id(frame.get("id")):
        id_: str = frame["id"]
        return id_
    return None
