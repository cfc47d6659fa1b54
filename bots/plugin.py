"""The plugin API: subclass ``Bot``, declare it under the ``ai_voicebot.bots`` entry point group.

A bot is one small class. It gets a ``LobbyAccess`` (what it may do in its lobby) and its
validated ``Config``, and overrides the hooks it cares about. Every hook is awaited on the
provider's event loop, so heavy work (inference, decoding files) belongs in a thread.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import logging
import typing
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, Self, TypeVar

from aiortc import MediaStreamTrack

from shared import protocol as p
from shared.botconfig import MAX_LIST_ITEMS, check_config
from shared.validation import Payload

from .inbound import MAX_FRAMES, check_batch
from .voice import Playable, Playback

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "ai_voicebot.bots"
# the top-level names of this distribution: a plugin that ships its own under one of them
# shadows ours (docs/plugins.md, import names)
OURS = ("bots", "shared", "signaling")


class InvalidConfig(ValueError):
    """A bot's configuration does not fit its schema."""


class PluginError(TypeError):
    """A plugin that can't be offered: not a ``Bot``, or a config the server can't describe.
    Discovery logs it and skips that plugin; ``check_plugin`` raises it."""


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
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.metadata.get("required") and data.get(f.name) is None]
        if missing:
            raise InvalidConfig(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                                "required")
        try:
            config = cls.from_dict(data)
        except p.ProtocolError as exc:
            raise InvalidConfig(exc.message) from None
        for f in dataclasses.fields(cls):
            value, low, high = getattr(config, f.name), f.metadata.get("minimum"), \
                f.metadata.get("maximum")
            if isinstance(value, list) and len(value) > MAX_LIST_ITEMS:
                raise InvalidConfig(f"{f.name} has more than {MAX_LIST_ITEMS} items")
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, (int, float)) and not isinstance(item, bool) and (
                        (low is not None and item < low) or (high is not None and item > high)):
                    raise InvalidConfig(f"{f.name} must be within {low}..{high}")
        return config

    @classmethod
    def schema(cls) -> dict[str, Any]:
        """``{name: {"type", "nullable", "default", "help", "items"?, "required"?,
        "minimum"?, "maximum"?, "choices"?, "choices_by"?}}``, announced to the server (which
        checks a config against it) and shown in the UI. A type this cannot describe raises
        ``PluginError``."""
        hints = typing.get_type_hints(cls)
        out = {}
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            nullable = type(None) in typing.get_args(hint)
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if nullable and len(args) == 1 else hint
            default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                       else None if f.default is dataclasses.MISSING else f.default)
            out[f.name] = {**_json_type(f.name, base), "nullable": nullable,
                           "default": default, "help": f.metadata.get("help", "")}
            if f.metadata.get("required"):
                out[f.name]["required"] = True
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


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # ``setting(REQUIRED, "…")``: a config must give this setting


def _json_type(name: str, hint: Any) -> dict[str, Any]:
    """The schema's ``type`` (and ``items``) of a setting's type: str, int, float, bool, or a
    ``list`` of str, int or float."""
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    item = typing.get_args(hint)
    if typing.get_origin(hint) is list and len(item) == 1 and item[0] in (str, int, float):
        return {"type": "array", "items": _JSON_TYPES[item[0]]}
    raise PluginError(f"setting {name!r} has type {hint!r}: a setting is str, int, float, "
                      "bool, list[str], list[int] or list[float], optionally | None")


def setting(default: Any = REQUIRED, help: str = "", *, minimum: float | None = None,
            maximum: float | None = None) -> Any:
    """A config field with a default and a line of help, e.g. ``path: str = setting("", "…")``;
    ``REQUIRED`` (or no default) makes it a setting every config must give; a list default is
    copied for each config; a number (or each number of a list) may have bounds, which the
    server checks before the bot is created."""
    metadata = {"help": help, "minimum": minimum, "maximum": maximum,
                "required": default is REQUIRED}
    if default is REQUIRED:  # None until parsed: parse() refuses a config without it
        return dataclasses.field(default=None, metadata=metadata)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Peer:
    """Another member of the lobby: a person, or a bot (``bot``)."""

    session_id: str
    name: str
    bot: bool = False


@dataclass(frozen=True)
class Caption:
    """What a transcriber heard one speaker say.

    ``final`` captions are stored in the lobby's chat; an interim (only for a bot with
    ``interims = True``) is the text so far of a sentence still being spoken, and an empty
    interim means the speaker's pending text is withdrawn. ``replaced`` holds the earlier
    finals, as this bot saw them, that this final takes the place of: empty for a new
    sentence."""

    speaker: Peer
    text: str
    final: bool
    segment_id: str
    start: float  # Unix time the speech started, and ended
    end: float
    language: str | None = None
    bot_id: str | None = None  # the transcriber's session
    replaced: tuple[Caption, ...] = ()

    @property
    def revision(self) -> bool:
        """Whether this final revises a sentence already seen."""
        return bool(self.replaced)


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
    def play(self, source: Playable, *, interruptible: bool = False) -> Playback:
        """Queues ``source`` to be sent to every peer after what is queued already: a file
        path, a ``Sound``, mono samples at 48 kHz, an async iterable of sample blocks (48 kHz)
        or ``av.AudioFrame``s, or an awaitable that gives one of these (``speak(text)``: it
        starts at once, and its sound keeps its place in the queue).
        ``await`` the playback for when it has been sent; needs ``sends_audio = True``.
        ``interruptible``: a person who starts talking stops it (needs ``barge_in = True``)."""

    @abc.abstractmethod
    def stop_playing(self) -> None:
        """Stops what plays now and drops what is queued; their playbacks return."""

    @abc.abstractmethod
    def add_track(self, track: MediaStreamTrack) -> None:
        """Sends ``track`` to every peer, present and future, in place of anything sent or
        queued before (``play`` after it takes over again)."""

    @abc.abstractmethod
    def set_status(self, status: str, detail: str = "",
                   metrics: dict[str, float] | None = None) -> None:
        """Reports ``loading``, ``live``, ``lagging`` or ``failed`` (see protocol.BOT_STATUSES),
        with optional figures the server exports (``{"lag": seconds}``). The same status and
        detail again reports new figures only: the lobby is not told."""


C = TypeVar("C", bound=BotConfig)


class Bot(Generic[C]):
    """Base class of every bot: ``class MyBot(Bot[MyConfig])``. Every hook is optional.

    Each hook call runs as a task of its own, owned by the bot's runner: a hook may await
    anything (``post_chat``, a playback) without holding up the next message, and a hook
    that fails or is slow delays only itself. Hooks start in the order their events came;
    they are cancelled when the bot stops, before ``on_stop``."""

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[BotConfig]] = BotConfig
    sends_audio: ClassVar[bool] = False  # True: every peer connection carries our audio
    # received 20 ms frames handed to ``on_track``'s reader at a time: more costs less CPU
    # per stream and delays the audio by as much
    receive_batch: ClassVar[int] = 1
    interims: ClassVar[bool] = False  # True: ``on_transcript`` gets interim captions too
    # True: people's audio is watched for speech (the transcriber's VAD), and a person who
    # starts talking stops the playbacks queued with ``play(…, interruptible=True)``. A bot
    # with its own ``on_track`` does this itself (``bots.listen``, ``stop_playing``)
    barge_in: ClassVar[bool] = False

    def __init__(self, lobby: LobbyAccess, config: C) -> None:
        self.lobby = lobby
        self.config = config

    async def on_joined(self) -> None:
        """The bot is in the lobby; peers connect from here on. The other hooks wait for
        this one to return."""

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
        """Whether peers send this bot their audio: it defines ``on_track``, or barges in."""
        return cls.on_track is not Bot.on_track or cls.barge_in

    async def on_peer_left(self, peer: Peer) -> None:
        """A peer left the lobby (or its connection ended)."""

    async def on_chat(self, message: p.Chat) -> None:
        """A chat message posted after the bot joined, its own included (not the history
        the lobby had before)."""

    async def on_transcript(self, caption: Caption) -> None:
        """A caption from a transcriber in the lobby: finals (interims too with
        ``interims = True``), posted after the bot joined; ``caption.replaced`` names the
        earlier finals it takes the place of."""

    async def on_stop(self) -> None:
        """The bot is being removed or its provider is shutting down: release resources."""


HOOKS = ("on_joined", "on_peer_connected", "on_track", "on_peer_left", "on_chat",
         "on_transcript", "on_stop")


def describe(cls: type[Bot[Any]]) -> p.BotKind:
    return p.BotKind(kind=cls.kind, description=cls.description, config=cls.Config.schema())


def check_plugin(cls: Any, name: str | None = None) -> None:
    """Raises ``PluginError`` if ``cls`` can't be offered by a provider: what discovery checks
    before a plugin is offered (``name`` is its entry point's), for a plugin's own tests."""
    if not (isinstance(cls, type) and issubclass(cls, Bot)):
        raise PluginError(f"{cls!r} is not a Bot subclass")
    if name is not None and cls.kind != name:
        raise PluginError(f"{cls.__name__}.kind is {cls.kind!r}, but it is declared as {name!r}")
    for hook in HOOKS:
        if not inspect.iscoroutinefunction(getattr(cls, hook)):
            raise PluginError(f"{cls.__name__}.{hook} must be an async def")
    if cls.barge_in and cls.on_track is not Bot.on_track:
        raise PluginError(f"{cls.__name__} has its own on_track: it can't barge_in too (read "
                          "speech with bots.listen and call self.lobby.stop_playing())")
    if cls.barge_in and not cls.sends_audio:
        raise PluginError(f"{cls.__name__}.barge_in needs sends_audio = True")
    config = cls.Config
    if not (isinstance(config, type) and issubclass(config, BotConfig)
            and dataclasses.is_dataclass(config)):
        raise PluginError(f"{cls.__name__}.Config must be a @dataclass(frozen=True) of BotConfig")
    if not config.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise PluginError(f"{config.__name__} must be a frozen dataclass")
    try:
        schema = config.schema()
        for f in dataclasses.fields(config):
            spec = schema[f.name]
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise PluginError(f"setting {f.name!r} has no default: make it with "
                                  "setting(default, help), or setting(REQUIRED, help)")
            if not spec.get("required"):
                _check_default(cls.kind or "bot", f.name, spec)
        if type(cls.receive_batch) is not int:
            raise PluginError("receive_batch must be an integer")
        check_batch(cls.receive_batch, MAX_FRAMES)
        # what the provider announces must be what the wire carries
        p.decode(p.encode(p.ProviderHello(name="check", capacity=1, kinds=[describe(cls)])))
    except PluginError:
        raise
    except Exception as exc:  # noqa: BLE001 - third-party code: anything goes
        raise PluginError(f"{type(exc).__name__}: {exc}") from None


def _check_default(kind: str, name: str, spec: dict[str, Any]) -> None:
    """The default must be a value the server would take for the setting (type, bounds,
    choices): checked as a config of that setting alone."""
    try:
        check_config(p.BotKind(kind=kind, config={name: spec}), {name: spec["default"]})
    except p.ProtocolError as exc:
        raise PluginError(f"setting {name!r}: default {spec['default']!r}: {exc.message}") from None


def discover(group: str = ENTRY_POINT_GROUP) -> dict[str, type[Bot[Any]]]:
    """Loads every declared plugin; a broken one is logged and skipped, never fatal."""
    found: dict[str, type[Bot[Any]]] = {}
    for ep in entry_points(group=group):
        try:
            cls = ep.load()
        except Exception as exc:  # noqa: BLE001 - a plugin is third-party code: anything goes
            top = (exc.name or "").split(".")[0] if isinstance(exc, ImportError) else ""
            hint = (f" (is another package called {top!r} shadowing ai-voicebot's? see "
                    "docs/plugins.md, import names)") if top in OURS else ""
            log.error("bot plugin %r (%s) failed to load: %s: %s%s", ep.name, ep.value,
                      type(exc).__name__, exc, hint)
            continue
        try:
            check_plugin(cls, ep.name)
        except PluginError as exc:
            log.error("bot plugin %r (%s) refused: %s", ep.name, ep.value, exc)
            continue
        if ep.name in found:
            log.error("bot plugin %r declared twice; keeping %s", ep.name, found[ep.name])
            continue
        found[ep.name] = cls
    return found
