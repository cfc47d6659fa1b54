"""The speakers of the receive benchmark (``bench.receive``): aiortc peers in processes of their
own, each a signaling session that joins the bot's lobby and offers it looped speech
(``tests/data/english_espeak.wav``) as Opus, 20 ms a packet, paced in real time like a
microphone.

- ``speak``: ``count`` speakers talk until stdin closes;
- ``cycle``: one speaker joins, talks a moment and leaves, over and over.
"""

from __future__ import annotations

import asyncio
import fractions
import sys
import time
from pathlib import Path

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)

from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig
from signaling.testing import ROOT

SPEECH = ROOT / "tests" / "data" / "english_espeak.wav"
RATE, FRAME = 48_000, 960  # what a browser sends: 20 ms Opus packets at 48 kHz


def speech_frames(path: Path = SPEECH) -> list[np.ndarray]:
    """The file as 20 ms frames of 48 kHz mono s16, decoded once."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    pcm = []
    with av.open(str(path)) as container:
        for decoded in container.decode(audio=0):
            pcm.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(decoded))
    pcm.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
    samples = np.concatenate(pcm)
    return [samples[i:i + FRAME] for i in range(0, len(samples) - FRAME + 1, FRAME)]


class LoopedSpeech(MediaStreamTrack):
    """Speech frames in a loop, paced in real time like a microphone."""

    kind = "audio"

    def __init__(self, frames: list[np.ndarray], offset: int) -> None:
        super().__init__()
        self._frames, self._next = frames, offset
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        pcm = self._frames[self._next % len(self._frames)]
        self._next += 1
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = RATE, self._pts, fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


class Speaker:
    """One signaling session that joins the lobby and offers its speech to the bot only (the
    other speakers in the lobby are ignored: only the bot's receive path is measured)."""

    def __init__(self, url: str, lobby_id: str, bot_id: str, name: str,
                 frames: list[np.ndarray], offset: int) -> None:
        self.lobby_id, self.bot_id = lobby_id, bot_id
        self.frames, self.offset = frames, offset
        self.client = SignalingClient(ClientConfig(url=url, name=name))
        self.pc: RTCPeerConnection | None = None
        self.connected = asyncio.Event()
        self.client.on(p.MessageType.PEER_ADDED, self._peer_added)
        self.client.on(p.MessageType.SDP, self._sdp)

    async def start(self) -> None:
        await self.client.start(wait=30)
        assert self.client.config.name is not None
        await self.client.set_name(self.client.config.name)

    async def join(self) -> None:
        self.connected.clear()
        await self.client.join(lobby_id=self.lobby_id)  # the joiner offers (peer_added)

    async def leave(self) -> None:
        await self.client.part(self.lobby_id)
        if self.pc is not None:
            await self.pc.close()
            self.pc = None

    async def _peer_added(self, msg: p.Message) -> None:
        assert isinstance(msg, p.PeerAdded)
        if msg.peer.session_id != self.bot_id or not msg.create_offer:
            return
        if self.pc is not None:
            await self.pc.close()
        pc = self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # localhost only
        pc.addTrack(LoopedSpeech(self.frames, self.offset))

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState == "connected":
                self.connected.set()

        await pc.setLocalDescription(await pc.createOffer())
        desc = pc.localDescription
        self.client.send(p.Sdp(lobby_id=self.lobby_id, peer_id=self.bot_id,
                               description=p.SessionDescription(type=desc.type, sdp=desc.sdp)))

    async def _sdp(self, msg: p.Message) -> None:
        assert isinstance(msg, p.Sdp)
        if msg.peer_id == self.bot_id and msg.description.type == "answer" and self.pc:
            await self.pc.setRemoteDescription(RTCSessionDescription(
                sdp=msg.description.sdp, type=msg.description.type))


async def speak(url: str, lobby_id: str, bot_id: str, count: int, first: int,
                prefix: str) -> None:
    """``count`` speakers; prints ``ready`` once all are connected, leaves when stdin closes."""
    frames = speech_frames()
    speakers = [Speaker(url, lobby_id, bot_id, f"{prefix} speaker {first + i}", frames,
                        (first + i) * 411 % len(frames)) for i in range(count)]
    for s in speakers:
        await s.start()
        await s.join()
    await asyncio.wait_for(asyncio.gather(*(s.connected.wait() for s in speakers)), 60)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for s in speakers:
        await s.leave()
        await s.client.close(drain=0.5)


async def cycle(url: str, lobby_id: str, bot_id: str, warmup: int, cycles: int,
                talk: float) -> None:
    """One speaker joins, talks for ``talk`` seconds and leaves: ``warmup`` times, then (after
    ``go`` on stdin, once the bot's memory has been read) ``cycles`` times."""
    frames = speech_frames()
    speaker = Speaker(url, lobby_id, bot_id, "cycling speaker", frames, 0)
    await speaker.start()
    for i in range(warmup + cycles):
        if i == warmup:
            print("warm", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await speaker.join()
        await asyncio.wait_for(speaker.connected.wait(), 30)
        await asyncio.sleep(talk)
        await speaker.leave()
    print("done", flush=True)
    await speaker.client.close(drain=0.5)
