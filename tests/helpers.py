"""Helpers the test modules share (test modules never import each other): waiting on a
condition, the HTTP API, bots added through it, and two aiortc peers that hear a tone."""

from __future__ import annotations

import asyncio
import fractions
import time
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from shared import protocol as p
from shared.client import SignalingClient

from .conftest import Inbox


async def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition",
                     poll: float = 0.05) -> None:
    """Polls ``predicate`` every ``poll`` seconds; fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(poll)


async def api(method: str, url: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    """A JSON call to the HTTP API: (status, body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, json=body, headers=headers) as r:
            return r.status, await r.json()


async def api_text(url: str) -> tuple[int, str]:
    """A GET whose body is text (a transcript export): (status, text)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            return r.status, await r.text()


async def start_transcriber(url: str, token: str, lobby: str, **config: Any) -> dict[str, Any]:
    status, bot = await api("POST", url + f"api/lobbies/{lobby}/bots", token,
                            {"kind": "transcriber", "config": config})
    assert status == 201, bot
    return bot


async def start_player(url: str, token: str, lobby: str, path: Path, name: str,
                       delay: float = 1.0) -> dict[str, Any]:
    status, bot = await api("POST", url + f"api/lobbies/{lobby}/bots", token,
                            {"kind": "player", "name": name,
                             "config": {"path": str(path), "delay": delay}})
    assert status == 201, bot
    return bot


class Sine(AudioStreamTrack):
    """The test tone: 440 Hz at 48 kHz, paced in real time by the base class's clock."""

    def __init__(self) -> None:
        super().__init__()
        self._t = 0

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()  # silence with the right timing
        n = frame.samples
        t = (np.arange(self._t, self._t + n) / 48000.0)
        self._t += n
        samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        out = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        out.sample_rate, out.pts, out.time_base = 48000, frame.pts, fractions.Fraction(1, 48000)
        return out


async def rms_of(track: MediaStreamTrack, frames: int) -> float:
    """The mean RMS of the last 20 of ``frames`` frames received on ``track``."""
    energies = []
    for _ in range(frames):
        frame = await asyncio.wait_for(track.recv(), 5)
        pcm = frame.to_ndarray().astype(np.float32) / 32768.0
        energies.append(float(np.sqrt(np.mean(pcm ** 2))))
    return float(np.mean(energies[-20:]))


async def exchange_audio(offerer: SignalingClient, offerer_inbox: Inbox,
                         answerer: SignalingClient, answerer_inbox: Inbox) -> None:
    """The two join one lobby, negotiate through the server(s) and hear each other's tone."""
    lobby = (await answerer.join(lobby_name="webrtc")).lobby.id
    await offerer.join(lobby_id=lobby)  # the joiner is told to create the offer
    told = await offerer_inbox.wait_for(p.PeerAdded)
    assert told.create_offer and told.peer.session_id == answerer.session_id
    assert not (await answerer_inbox.wait_for(p.PeerAdded)).create_offer

    local = RTCConfiguration(iceServers=[])  # loopback: no STUN server, ever
    pcs = {"offer": RTCPeerConnection(local), "answer": RTCPeerConnection(local)}
    received: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    pcs["answer"].on("track", received.put_nowait)
    pcs["answer"].addTrack(Sine())
    pcs["offer"].addTrack(Sine())
    offer_tracks: asyncio.Queue[MediaStreamTrack] = asyncio.Queue()
    pcs["offer"].on("track", offer_tracks.put_nowait)

    async def on_answerer_sdp(msg: p.Message) -> None:
        assert isinstance(msg, p.Sdp) and msg.peer_id == offerer.session_id
        pc = pcs["answer"]
        await pc.setRemoteDescription(RTCSessionDescription(**msg.description.to_dict()))
        await pc.setLocalDescription(await pc.createAnswer())
        await relay(answerer, msg.peer_id, pc)

    async def on_offerer_sdp(msg: p.Message) -> None:
        assert isinstance(msg, p.Sdp)
        await pcs["offer"].setRemoteDescription(RTCSessionDescription(**msg.description.to_dict()))

    async def relay(client: SignalingClient, peer_id: str, pc: RTCPeerConnection) -> None:
        desc = pc.localDescription
        await client.request(p.Sdp(lobby_id=lobby, peer_id=peer_id, description=p.SessionDescription(
            type=desc.type, sdp=desc.sdp)))

    answerer.on(p.MessageType.SDP, on_answerer_sdp)
    offerer.on(p.MessageType.SDP, on_offerer_sdp)
    try:
        await pcs["offer"].setLocalDescription(await pcs["offer"].createOffer())
        await relay(offerer, answerer.session_id, pcs["offer"])
        at_answerer = await asyncio.wait_for(received.get(), 10)
        at_offerer = await asyncio.wait_for(offer_tracks.get(), 10)
        assert at_answerer.kind == at_offerer.kind == "audio"
        # a 0.3-amplitude sine has an RMS of ~0.21; Opus keeps it close
        assert await rms_of(at_answerer, 50) > 0.1
        assert await rms_of(at_offerer, 50) > 0.1
        assert pcs["offer"].connectionState == "connected"
    finally:
        for pc in pcs.values():
            await pc.close()
