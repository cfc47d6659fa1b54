"""``player``: plays an audio file into the lobby — the test and demo source of speech."""

from __future__ import annotations

import asyncio
import time
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import av
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import MediaStreamError

from shared.protocol import ErrorCode, ProtocolError
from shared.tasks import cancel_and_wait

from .plugin import Bot, BotConfig, LobbyAccess, Peer, setting


def media_roots() -> list[Path]:
    """Where the player may read files: ``VOICEBOT_MEDIA_DIRS`` (path list), else the cwd;
    read at each call, so a config is checked against the provider's setting as it is."""
    raw = os.environ.get("VOICEBOT_MEDIA_DIRS", "")
    return [Path(p).resolve() for p in raw.split(os.pathsep) if p] or [Path.cwd()]


@dataclass(frozen=True)
class PlayerConfig(BotConfig):
    path: str = setting("", "audio file to play, inside the provider's media directories")
    loop: bool = setting(False, "start again at the end")
    delay: float = setting(0.5, "seconds to wait after the first peer connects")
    announce: bool = setting(False, "post 'playing'/'finished' to the chat")

    def validate(self) -> None:
        if not self.path:
            raise ProtocolError(ErrorCode.INVALID_CONFIG, "path is required")
        resolved = Path(self.path).resolve()
        if not any(resolved.is_relative_to(root) for root in media_roots()):
            raise ProtocolError(ErrorCode.INVALID_CONFIG, f"{self.path} is outside the media directories")
        if not resolved.is_file():
            raise ProtocolError(ErrorCode.INVALID_CONFIG, f"no such file: {self.path}")
        if not 0 <= self.delay <= 60:
            raise ProtocolError(ErrorCode.INVALID_CONFIG, "delay must be within 0..60 s")


class _Ending(MediaStreamTrack):
    """Passes frames through; notes when the first one went out (``started``, at
    ``started_at``, Unix time) and sets ``done`` when the source ends."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source
        self.started = asyncio.Event()
        self.started_at = 0.0
        self.done = asyncio.Event()

    async def recv(self) -> av.AudioFrame:
        try:
            # aiortc types recv() as any media (a Frame or a Packet); audio tracks give
            # AudioFrames
            frame = cast(av.AudioFrame, await self.source.recv())
        except MediaStreamError:
            self.done.set()
            self.stop()
            raise
        if not self.started.is_set():
            # the player paces frames in real time from here: the file's second s goes out
            # at started_at + s, which is how a listener knows where its speech really is
            self.started_at = time.time()
            self.started.set()
        return frame


class PlayerBot(Bot[PlayerConfig]):
    kind = "player"
    description = "Plays an audio file into the lobby."
    Config = PlayerConfig
    sends_audio = True

    def __init__(self, lobby: LobbyAccess, config: PlayerConfig) -> None:
        super().__init__(lobby, config)
        self.player: MediaPlayer | None = None
        self._task: asyncio.Task[None] | None = None

    async def on_peer_connected(self, peer: Peer) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._play())

    async def _play(self) -> None:
        cfg = self.config
        await asyncio.sleep(cfg.delay)
        self.player = MediaPlayer(cfg.path, loop=cfg.loop)  # decodes with PyAV in its own thread
        if self.player.audio is None:
            self.lobby.set_status("failed", f"{cfg.path} has no audio")
            return
        track = _Ending(self.player.audio)
        self.lobby.add_track(track)
        name = Path(cfg.path).name
        await track.started.wait()
        self.lobby.set_status("live", f"playing {name} since {track.started_at:.3f}")
        if cfg.announce:
            await self.lobby.post_chat(f"playing {name}")
        await track.done.wait()
        self.lobby.set_status("live", f"finished {name}")
        if cfg.announce:
            await self.lobby.post_chat(f"finished {name}")

    async def on_stop(self) -> None:
        await cancel_and_wait(self._task)
        if self.player is not None and self.player.audio is not None:
            self.player.audio.stop()
