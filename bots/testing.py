"""A fake lobby to test a bot against, without a server or a network.

    lobby = FakeLobby()
    bot = EchoBot(lobby, EchoBot.Config.parse({"prefix": "!"}))
    await lobby.start(bot)
    await lobby.say("Ann", "!hi")
    assert lobby.chat == ["hi"]

It implements the same ``LobbyAccess`` a bot gets in a real lobby, and drives the bot's hooks
the way the runner does, except that each hook is awaited to its end before the call that
caused it returns, so a test sees its effects at once. ``check_plugin(cls)`` runs the checks
a provider runs before it offers a plugin.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from shared import protocol as p
from shared.tasks import cancel_and_wait

from .captions import CaptionReader
from .plugin import Bot, LobbyAccess, Peer, check_plugin
from .voice import Playable, Playback, Source, block_frame, chunks
from .stt import STT, Recognition

__all__ = ["FakeLobby", "ScriptedSTT", "SoundTrack", "check_plugin"]  # check_plugin: what discovery checks


class FakeLobby(LobbyAccess):
    # a bot that answers its own messages more often than this in one go is in a loop
    MAX_OWN_REPLIES = 100

    def __init__(self, lobby_id: str = "fake-lobby", name: str = "Bot") -> None:
        self.lobby_id = lobby_id
        self.session_id = "bot-session"
        self.name = name
        self.chat: list[str] = []  # what the bot posted
        self.transcripts: list[p.Message] = []
        self.tracks: list[MediaStreamTrack] = []
        self.statuses: list[tuple[str, str]] = []
        self.figures: list[dict[str, float]] = []  # the metrics of each status, in order
        # what ``play`` sent, one array of 48 kHz mono float32 samples per playback, in order
        self.played: list[np.ndarray] = []
        self.bot: Bot[Any] | None = None
        self._playing: list[Playback] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._own: list[p.Chat] = []  # the bot's posts, still to reach its on_chat
        self._peers: dict[str, Peer] = {}
        self._ids = itertools.count(1)
        self._captions = CaptionReader()

    # --- what the bot sees ---------------------------------------------------------------------

    def peers(self) -> dict[str, Peer]:
        return dict(self._peers)

    async def post_chat(self, text: str) -> None:
        self.chat.append(text)
        self._own.append(p.Chat(lobby_id=self.lobby_id, text=text, session_id=self.session_id,
                                name=self.name, message_id=next(self._ids)))

    async def post_transcript(self, message: p.Message) -> None:
        self.transcripts.append(message)

    def play(self, source: Playable, *, interruptible: bool = False) -> Playback:
        """Decodes ``source`` at once (no real-time wait) into ``played``; playbacks finish
        in the order they were queued."""
        playback = Playback(source, "fake", interruptible)
        before = self._playing[-1] if self._playing else None
        self._playing.append(playback)

        async def collect() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            try:
                sound = await playback.sound()
                blocks = [block async for block in chunks(sound) if not playback.stopped]
                self.played.append(np.concatenate(blocks) if blocks else np.zeros(0, np.float32))
                playback.sent = sum(map(len, blocks)) / 48_000
            except Exception as exc:  # noqa: BLE001 - as the real queue: the playback fails
                playback._finish(exc)
            playback._finish()

        task = asyncio.ensure_future(collect())
        self._tasks.add(task)

        def forget(_: object) -> None:
            self._playing.remove(playback)
            self._tasks.discard(task)

        task.add_done_callback(forget)
        return playback

    def stop_playing(self) -> None:
        for playback in self._playing:
            playback.stop()

    def add_track(self, track: MediaStreamTrack) -> None:
        self.stop_playing()
        self.tracks.append(track)

    def set_status(self, status: str, detail: str = "",
                   metrics: dict[str, float] | None = None) -> None:
        if status not in p.BOT_STATUSES:
            raise ValueError(f"unknown status {status!r}")
        self.statuses.append((status, detail))
        self.figures.append(dict(metrics or {}))

    # --- what the test does ---------------------------------------------------------------------

    async def start(self, bot: Bot[Any]) -> None:
        self.bot = bot
        self._captions = CaptionReader(interims=bot.interims)
        await self._run(bot.on_joined())

    async def add_peer(self, name: str, track: MediaStreamTrack | None = None,
                       *, bot: bool = False) -> Peer:
        """A peer (a person, or a bot with ``bot=True``) joins and connects; ``track`` is its
        audio, if any: ``on_track`` is awaited until the track ends."""
        assert self.bot is not None, "call start(bot) first"
        peer = Peer(f"peer-{next(self._ids)}", name, bot)
        self._peers[peer.session_id] = peer
        await self._run(self.bot.on_peer_connected(peer))
        if track is not None:
            await self._run(self.bot.on_track(peer, track))
        return peer

    async def remove_peer(self, peer: Peer) -> None:
        assert self.bot is not None
        self._peers.pop(peer.session_id, None)
        await self._run(self.bot.on_peer_left(peer))

    async def say(self, name: str, text: str) -> None:
        """A chat message from the peer called ``name`` (added, as a person, if unknown)."""
        peer = await self._peer(name)
        await self._run(self._bot.on_chat(p.Chat(
            lobby_id=self.lobby_id, text=text, session_id=peer.session_id, name=name,
            message_id=next(self._ids))))

    async def notice(self, text: str) -> None:
        """A ``system`` message from the server (no sender)."""
        await self._run(self._bot.on_chat(p.Chat(lobby_id=self.lobby_id, text=text, name="system",
                                                 kind="system", message_id=next(self._ids))))

    async def caption(self, name: str, text: str, *, final: bool = True,
                      replaces: Sequence[str] = (), segment_id: str | None = None,
                      duration: float = 1.0) -> str:
        """A transcriber's caption of ``name`` (a peer, added as a person if unknown) saying
        ``text``; ``replaces`` are the segment ids of earlier finals it takes the place of.
        Returns its segment id. An interim reaches only a bot with ``interims = True``."""
        peer = await self._peer(name)
        segment = segment_id or f"seg-{next(self._ids)}"
        now = time.time()
        msg = p.Transcript(lobby_id=self.lobby_id, segment_id=segment,
                           speaker_id=peer.session_id, speaker_name=name, text=text,
                           final=final, start=now - duration, end=now, bot_id="transcriber",
                           replaces=list(replaces))
        caption = self._captions.read(msg, self._peers)
        if caption is not None:
            await self._run(self._bot.on_transcript(caption))
        return segment

    async def stop(self) -> None:
        """The bot is removed: ``on_stop``, and what it queued to play is dropped."""
        if self.bot is not None:
            await self.bot.on_stop()
        await cancel_and_wait(*self._tasks)

    @property
    def _bot(self) -> Bot[Any]:
        assert self.bot is not None, "call start(bot) first"
        return self.bot

    async def _peer(self, name: str) -> Peer:
        peer = next((x for x in self._peers.values() if x.name == name), None)
        return peer if peer is not None else await self.add_peer(name)

    async def _run(self, hook: Coroutine[Any, Any, None]) -> None:
        """Awaits ``hook``, then hands the bot its own posts (as a lobby does) until none
        are left."""
        await hook
        for _ in range(self.MAX_OWN_REPLIES):
            if not self._own:
                return
            await self._bot.on_chat(self._own.pop(0))
        raise AssertionError(f"the bot answered its own messages {self.MAX_OWN_REPLIES} times "
                             f"in a row (a loop?): {self.chat[-3:]}")


class SoundTrack(MediaStreamTrack):
    """A peer's audio for a test: ``source`` (anything ``play`` takes: a file, a ``Sound``…)
    as 20 ms frames of 48 kHz mono, then ``silence`` seconds of silence, then the end of the
    track. ``pace`` seconds pass between frames (0: as fast as the bot reads; 0.02: real
    time). Give it to ``FakeLobby.add_peer`` or ``bots.listen.listen``."""

    kind = "audio"

    def __init__(self, source: Source, silence: float = 1.0, pace: float = 0.0) -> None:
        super().__init__()
        self._blocks = chunks(source)
        self._silence = round(silence / 0.02)
        self._pace = pace
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        await asyncio.sleep(self._pace)
        try:
            block = await anext(self._blocks)
        except StopAsyncIteration:
            if self._silence <= 0 or self.readyState != "live":
                self.stop()
                raise MediaStreamError from None
            self._silence -= 1
            block = np.zeros(960, np.float32)
        frame = block_frame(block, self._pts)
        self._pts += len(block)
        return frame


class ScriptedSTT(STT):
    """A fake engine: answers with ``script(audio, final)`` after ``delay`` seconds of "work".

    ``gate``, when given, holds every call until it is set, to test what happens under load.
    With ``batches``, it takes batches (``STT.batches``) and notes the size of each.
    """

    name = "scripted"

    def __init__(self, script: Callable[[np.ndarray, bool], str] | None = None,
                 delay: float = 0.0, gate: threading.Event | None = None,
                 batches: bool = False) -> None:
        self.script = script or (lambda audio, final: f"{len(audio)} samples")
        self.delay = delay
        self.gate = gate
        self.batches = batches
        self.calls: list[tuple[int, bool]] = []
        self.batch_sizes: list[int] = []

    def recognize_batch(self, audios: list[np.ndarray], *, final: bool,
                        languages: list[str | None]) -> list[Recognition]:
        self.batch_sizes.append(len(audios))
        return super().recognize_batch(audios, final=final, languages=languages)

    def recognize(self, audio: np.ndarray, *, final: bool,
                  language: str | None = None) -> Recognition:
        if self.gate is not None:
            self.gate.wait(10)
        if self.delay:
            threading.Event().wait(self.delay)
        self.calls.append((len(audio), final))
        return Recognition(text=self.script(audio, final), language="en", no_speech_prob=0.0,
                           avg_logprob=0.0, audio_s=len(audio) / 16000, inference_s=self.delay)
