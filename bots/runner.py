"""Runs one bot instance: its own signaling session, its mesh, and the plugin's hooks.

Every hook call is a task of the runner's (the mesh's for peer hooks), never awaited by the
signaling client's reader: a hook that awaits a request (``post_chat`` in ``on_chat``) would
otherwise hold up the very reply it waits for. An exception in a hook is logged with the
plugin's name; a bot that can't start is reported ``failed``. Nothing reaches the provider.
The instance lives until it is stopped or its session is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import MediaStreamTrack

from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig
from shared.errors import SessionEnded
from shared.tasks import TaskSet

from .captions import CaptionReader
from .listen import SpeechStarted, listen
from .mesh import Mesh
from .plugin import Bot, BotConfig, InvalidConfig, LobbyAccess, Peer
from .voice import Playable, Playback, Voice

log = logging.getLogger(__name__)

StatusReporter = Callable[[p.BotStatus], None]


class BotRunner(LobbyAccess):
    def __init__(self, start: p.BotStart, cls: type[Bot], server_url: str,
                 report: StatusReporter, client_options: dict[str, Any] | None = None) -> None:
        self.start_msg = start
        self.bot_id = start.bot_id
        self.lobby_id = start.lobby_id
        self.name = start.name
        self.session_id = ""
        self.cls = cls
        self.status = "starting"
        self._detail = ""
        self._figures: dict[str, float] = {}  # the plugin's last figures (the mesh adds its own)
        self._report = report
        self.client = SignalingClient(ClientConfig(url=server_url, token=start.token,
                                                   create_session=False,
                                                   **(client_options or {})))
        self.bot: Bot | None = None
        self.mesh: Mesh | None = None
        self.voice: Voice | None = None  # what ``play`` queues on, made on its first call
        self._sending: MediaStreamTrack | None = None
        self._members: dict[str, Peer] = {}
        # peer hooks wait for on_joined: a bot may still be loading (a model, say) when the
        # first peer's audio arrives
        self._joined = asyncio.Event()
        # how a failing hook is logged, by the runner's tasks and the mesh's alike
        self._hook_label = f"bot plugin {cls.kind!r} ({self.bot_id}) hook"
        self._hooks = TaskSet(log, self._hook_label)
        self._captions = CaptionReader(interims=cls.interims)
        # messages up to this id were in the lobby before the bot joined (history), or were
        # handed over already: a replay after a reconnect brings only newer ones to the hooks
        self._newest = 0
        self._live = False  # the join is answered: messages from now on are the bot's

    # --- LobbyAccess --------------------------------------------------------------------------

    def peers(self) -> dict[str, Peer]:
        return dict(self._members)

    async def post_chat(self, text: str) -> None:
        await self.client.chat(self.lobby_id, text)

    async def post_transcript(self, message: p.Message) -> None:
        if getattr(message, "final", False):  # finals must land: acknowledged, re-sent if lost
            await self.client.request(message, critical=True)
        else:
            self.client.send(message)

    def play(self, source: Playable, *, interruptible: bool = False) -> Playback:
        if interruptible and not self.cls.barge_in:
            raise RuntimeError("an interruptible playback needs barge_in = True on the class")
        if self.voice is None:
            self.voice = Voice()
        self._send_track(self.voice)
        return self.voice.play(source, interruptible=interruptible)

    def stop_playing(self) -> None:
        if self.voice is not None:
            self.voice.stop_all()

    def add_track(self, track: MediaStreamTrack) -> None:
        self.stop_playing()
        self._send_track(track)

    def _send_track(self, track: MediaStreamTrack) -> None:
        assert self.mesh is not None
        if self._sending is not track:
            self.mesh.set_source(track)  # raises if the bot does not send audio
            self._sending = track

    def set_status(self, status: str, detail: str = "",
                   metrics: dict[str, float] | None = None) -> None:
        self.status, self._detail, self._figures = status, detail[:1000], metrics or {}
        self._send_status()

    def _send_status(self) -> None:
        figures = self._figures | (self.mesh.metrics() if self.mesh is not None else {})
        self._report(p.BotStatus(bot_id=self.bot_id, status=self.status, detail=self._detail,
                                 metrics=figures))

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Runs until cancelled; reports ``failed`` if the bot can't start."""
        try:
            config: BotConfig = self.cls.Config.parse(self.start_msg.config)
        except InvalidConfig as exc:  # the server refuses the bot with this message
            self.status = "failed"
            self._report(p.BotStatus(bot_id=self.bot_id, status="failed", detail=str(exc)[:1000],
                                     error=p.ErrorCode.INVALID_CONFIG.value))
            return
        self.set_status("starting")
        bot = self.bot = self.cls(self, config)
        self.mesh = Mesh(self.client, self.lobby_id, sends_audio=self.cls.sends_audio,
                         on_track=self._track, on_peer_connected=self._peer_connected,
                         on_peer_left=self._peer_left, receives_audio=self.cls.listens(),
                         receive_batch=self.cls.receive_batch, on_paths=self._send_status,
                         hook_label=self._hook_label)
        self.client.on(p.MessageType.CHAT, self._message)
        self.client.on(p.MessageType.TRANSCRIPT, self._message)
        self.client.on(p.MessageType.LOBBY_STATE, self._roster)
        try:
            await self.client.start(wait=30)
            self.session_id = self.client.session_id or ""
            await self.client.join(lobby_id=self.lobby_id)
            self._live = True
            await bot.on_joined()
            self._joined.set()
            if self.status == "starting":
                self.set_status("live")
            failure = await self.client.wait_stopped()
            if failure is not None and not isinstance(failure, SessionEnded):
                self.set_status("failed", str(failure))  # removed (4002): nothing to report
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("bot %s (%s) failed", self.bot_id, self.cls.kind)
            self.set_status("failed", f"{type(exc).__name__}: {exc}")
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        await self._hooks.close()
        if self.bot is not None:
            try:
                await asyncio.wait_for(self.bot.on_stop(), 5)
            except Exception:  # the plugin's bug, or over 5 s: logged, and the bot still stops
                log.exception("bot %s (%s): on_stop failed", self.bot_id, self.cls.kind)
        if self.voice is not None:
            await self.voice.close()
        if self.mesh is not None:
            await self.mesh.close()
        await self.client.close(drain=1.0)

    def _message(self, msg: p.Message) -> None:
        """A chat message or transcript: handed to its hook as a task, if it is the bot's."""
        assert isinstance(msg, (p.Chat, p.Transcript))
        if msg.lobby_id != self.lobby_id or self.bot is None:
            return
        if msg.message_id is not None:  # stored: ids grow, so an old one is history or a replay
            if msg.message_id <= self._newest:
                return
            self._newest = msg.message_id
        if not self._live:
            return
        if isinstance(msg, p.Chat):
            self._spawn("on_chat", self.bot.on_chat(msg))
        elif (caption := self._captions.read(msg, self._members)) is not None:
            self._spawn("on_transcript", self.bot.on_transcript(caption))

    def _spawn(self, name: str, hook: Coroutine[Any, Any, None]) -> None:
        async def after_joined() -> None:
            try:
                # its waiters wake in order: hooks start in the order their events came
                await self._joined.wait()
            except asyncio.CancelledError:
                hook.close()  # stopped before it started
                raise
            await hook

        self._hooks.spawn(after_joined(), name)

    async def _track(self, peer: Peer, track: MediaStreamTrack) -> None:
        await self._joined.wait()
        assert self.bot is not None
        if not self.cls.barge_in:
            await self.bot.on_track(peer, track)
        elif not peer.bot:  # (no on_track of its own: check_plugin saw to that)
            async for event in listen(track, blocks=False):
                if isinstance(event, SpeechStarted) and self.voice is not None:
                    self.voice.interrupt()

    async def _peer_left(self, peer: Peer) -> None:
        await self._joined.wait()
        assert self.bot is not None
        await self.bot.on_peer_left(peer)

    def _roster(self, msg: p.Message) -> None:
        assert isinstance(msg, p.LobbyState)
        if msg.lobby.id == self.lobby_id:
            self._members = {x.session_id: Peer(x.session_id, x.name, x.bot)
                             for x in msg.participants if x.session_id != self.client.session_id}

    async def _peer_connected(self, peer: Peer) -> None:
        await self._joined.wait()
        assert self.bot is not None
        await self.bot.on_peer_connected(peer)
