"""The plugin API: subclass ``Bot``, declare it under the ``ai_voicebot.bots`` entry point group.

A bot is one small class. It gets a ``LobbyAccess`` (what it may do in its lobby) and its
validated ``Config``, and overrides the hooks it cares about. Every hook is awaited on the
provider's event loop, so heavy work (inference, decoding files) belongs in a thread.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, Self, TypeVar

from aiortc import MediaStreamTrack

from shared import protocol as p
from shared.validation import Payload

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ai_voicebot.bots"
# the top-level names of this distribution: a plugin that ships its own under one of them
# shadows ours (docs/plugins.md, import names)
OURS = ("bots", "shared", "signaling")


class InvalidConfig(ValueError):
    """A bot's configuration does not fit its schema."""


@dataclass(frozen=True)
class BotConfig(Payload):
    """Base of a plugin's settings: a frozen dataclass whose fields all have defaults."""

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> Self:
        data = data or {}
        if not isinstance(data, dict):
            raise InvalidConfig("config must be an object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidConfig(f"unknown setting(s) {', '.join(unknown)}; known: "
                                f"{', '.join(sorted(known)) or 'none'}")
        try:
            config = cls.from_dict(data)
        except p.ProtocolError as exc:
            raise InvalidConfig(exc.message) from None
        for f in dataclasses.fields(cls):
            value, low, high = getattr(config, f.name), f.metadata.get("minimum"), \
                f.metadata.get("maximum")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                    (low is not None and value < low) or (high is not None and value > high)):
                raise InvalidConfig(f"{f.name} must be within {low}..{high}")
        return config

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """``{name: {"type", "nullable", "default", "help", "minimum"?, "maximum"?,
        "choices"?}}``, announced to the server (which checks a config against it) and shown
        in the UI."""
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if args else hint
            out[f.name] = {"type": _JSON_TYPES.get(base, "string"),
                           "nullable": type(None) in typing.get_args(hint),
                           "default": None if f.default is dataclasses.MISSING else f.default,
                           "help": f.metadata.get("help", "")}
            for bound in ("minimum", "maximum"):
                if f.metadata.get(bound) is not None:
                    out[f.name][bound] = f.metadata[bound]
        for name, values in cls.choices().items():
            out[name]["choices"] = list(values)
        for name, by in cls.choices_by().items():
            out[name]["choices_by"] = {dep: {str(k): list(v) for k, v in table.items()}
                                       for dep, table in by.items()}
        return out

    @classmethod
    def choices_by(cls) -> dict[str, dict[str, dict[Any, list[Any]]]]:
        """Choices that depend on another setting: ``{"language": {"model": {"tiny.en":
        ["en"], "base": [...]}}}``. A UI offers only these; ``validate()`` refuses the rest
        with a message that says what to do."""
        return {}

    @classmethod
    def choices(cls) -> dict[str, list[Any]]:
        """The allowed values of settings that have a fixed set (shown as a menu); may
        depend on the provider (e.g. the models it has)."""
        return {}


_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def setting(default: Any, help: str, *, minimum: float | None = None,
            maximum: float | None = None) -> Any:
    """A config field with a default and a line of help, e.g. ``path: str = setting("", "…")``;
    a number may have bounds, which the server checks before the bot is created."""
    return dataclasses.field(default=default, metadata={"help": help, "minimum": minimum,
                                                        "maximum": maximum})


@dataclass(frozen=True)
class Peer:
    session_id: str
    name: str
    bot: bool = False


class LobbyAccess(abc.ABC):
    """What a bot may do in its lobby. ``bots.testing.FakeLobby`` implements it for tests."""

    lobby_id: str
    session_id: str
    name: str

    @abc.abstractmethod
    def peers(self) -> dict[str, Peer]:
        """The other members, by session id."""

    @abc.abstractmethod
    async def post_chat(self, text: str) -> None:
        """Posts a chat message as this bot; returns once the server has stored it."""

    @abc.abstractmethod
    async def post_transcript(self, message: p.Message) -> None:
        """Posts a transcript (interim or final) to the lobby."""

    @abc.abstractmethod
    def add_track(self, track: MediaStreamTrack) -> None:
        """Sends ``track`` to every peer, present and future."""

    @abc.abstractmethod
    def set_status(self, status: str, detail: str = "",
                   metrics: dict[str, float] | None = None) -> None:
        """Reports ``loading``, ``live``, ``lagging`` or ``failed`` (see protocol.BOT_STATUSES),
        with optional figures the server exports (``{"lag": seconds}``). The same status and
        detail again reports new figures only: the lobby is not told."""


C = TypeVar("C", bound=BotConfig)


class Bot(Generic[C]):
    """Base class of every bot: ``class MyBot(Bot[MyConfig])``. Every hook is optional."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[BotConfig]] = BotConfig
    sends_audio: ClassVar[bool] = False  # True: every peer connection carries our audio
    # received 20 ms frames handed to ``on_track``'s reader at a time: more costs less CPU
    # per stream and delays the audio by as much
    receive_batch: ClassVar[int] = 1

    def __init__(self, lobby: LobbyAccess, config: C) -> None:
        self.lobby = lobby
        self.config = config

    async def on_joined(self) -> None:
        """The bot is in the lobby; peers connect from here on."""

    async def on_peer_connected(self, peer: Peer) -> None:
        """The WebRTC connection to ``peer`` is up (audio sent from now on reaches it)."""

    async def on_track(self, peer: Peer, track: MediaStreamTrack) -> None:
        """A peer's audio arrived. ``track.recv()`` yields frames from a bounded queue;
        a bot that reads too slowly loses the oldest frames, never memory. ``await
        bots.inbound.recv_batch(track)`` yields the frames that came together (see
        ``receive_batch``). A bot that does not define this hook is sent no audio at all,
        so nobody's audio is decoded for it."""

    @classmethod
    def listens(cls) -> bool:
        """Whether peers send this bot their audio: it defines ``on_track``."""
        return cls.on_track is not Bot.on_track

    async def on_peer_left(self, peer: Peer) -> None:
        """A peer left the lobby (or its connection ended)."""

    async def on_chat(self, message: p.Chat) -> None:
        """A chat message in the lobby, its own included."""

    async def on_stop(self) -> None:
        """The bot is being removed or its provider is shutting down: release resources."""


def describe(cls: type[Bot[Any]]) -> p.BotKind:
    return p.BotKind(kind=cls.kind, description=cls.description, config=cls.Config.schema())


def discover(group: str = ENTRY_POINT_GROUP) -> dict[str, type[Bot[Any]]]:
    """Loads every declared plugin; a broken one is logged and skipped, never fatal."""
    found: dict[str, type[Bot[Any]]] = {}
    for ep in entry_points(group=group):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Bot)):
                raise TypeError(f"{ep.value} is not a Bot subclass")
            if cls.kind != ep.name:
                raise TypeError(f"{ep.value}.kind is {cls.kind!r}, but it is declared as {ep.name!r}")
            cls.Config.schema()  # a config the server can't describe is a broken plugin
        except Exception as exc:  # noqa: BLE001 - a plugin is third-party code: anything goes
            top = (exc.name or "").split(".")[0] if isinstance(exc, ImportError) else ""
            hint = (f" (is another package called {top!r} shadowing ai-voicebot's? see "
                    "docs/plugins.md, import names)") if top in OURS else ""
            log.error("bot plugin %r (%s) failed to load: %s: %s%s", ep.name, ep.value,
                      type(exc).__name__, exc, hint)
            continue
        if ep.name in found:
            log.error("bot plugin %r declared twice; keeping %s", ep.name, found[ep.name])
            continue
        found[ep.name] = cls
    return found
