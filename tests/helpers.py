"""Helpers the test modules share (test modules never import each other): waiting on a
condition, the HTTP API, a raw WebSocket logged in by hand, bots added through the API, the
test tone, and two aiortc peers that hear it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
from aiohttp.test_utils import TestServer
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack

from shared import protocol as p
from shared.client import SignalingClient

from .conftest import Clients, Inbox
from .netfaults import TcpProxy


def plugin_dist(folder: Path, entries: str, modules: dict[str, str] | None = None) -> Path:
    """A distribution in ``folder`` (to put on sys.path) that declares the bot plugins
    ``entries`` (lines of ``kind = module:Class``), with ``modules`` ({name: source}) beside it."""
    dist = folder / "fixture_plugins-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fixture-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[ai_voicebot.bots]\n{entries}\n")
    for name, source in (modules or {}).items():
        (folder / f"{name}.py").write_text(source)
    return folder


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
    async with aiohttp.ClientSession() as http, \
            http.request(method, url, json=body, headers=headers) as r:
        return r.status, await r.json()


async def api_text(url: str) -> tuple[int, str]:
    """A GET whose body is text (a transcript export): (status, text)."""
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        return r.status, await r.text()


# --- a raw WebSocket, logged in by hand -------------------------------------------------------


def root_url(server: TestServer | str) -> str:
    """The server's root URL (``http://host:port/``), of a test server or as given."""
    return server if isinstance(server, str) else str(server.make_url("/"))


async def new_token(http: aiohttp.ClientSession, server: TestServer | str, body: Any = None,
                    headers: dict[str, str] | None = None) -> str:
    """A new session (``POST /api/sessions``): its token."""
    async with http.post(root_url(server) + "api/sessions", json=body, headers=headers) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["token"])


async def raw_login(http: aiohttp.ClientSession, server: TestServer | str,
                    token: str | None = None, via: str = "query", timeout: float = 5.0,
                    **connect: Any) -> aiohttp.ClientWebSocketResponse:
    """A raw WebSocket to the server's ``/ws``, past its ``welcome``: a new session unless
    ``token`` is given, whose token goes ``via`` the query (``?token=``), the ``header``
    (``Authorization: Bearer``) or a ``subprotocol`` (``voicebot.bearer.…``, as browsers do);
    ``connect`` goes on to ``ws_connect``."""
    token = token or await new_token(http, server)
    if via == "query":
        connect["params"] = {"token": token}
    elif via == "header":
        connect["headers"] = {**connect.get("headers", {}), "Authorization": f"Bearer {token}"}
    else:
        assert via == "subprotocol", via
        connect["protocols"] = ("voicebot.v1", f"voicebot.bearer.{token}")
    ws = await http.ws_connect(root_url(server) + "ws", **connect)
    welcome = await ws.receive_json(timeout=timeout)
    assert welcome["type"] == "welcome" and welcome["data"]["protocol"] == p.PROTOCOL_VERSION, \
        welcome
    return ws


async def raw_request(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any],
                      timeout: float = 5.0) -> dict[str, Any]:
    """Sends ``frame`` (which has an ``id``) and returns the reply to it; frames before that
    reply (state, other members' traffic) are skipped."""
    await ws.send_json(frame)
    while True:
        reply = await ws.receive_json(timeout=timeout)
        if reply.get("id") == frame["id"]:
            return reply  # type: ignore[no-any-return]


async def raw_join(ws: aiohttp.ClientWebSocketResponse, name: str, timeout: float = 5.0,
                   **join: Any) -> str:
    """Over a raw socket: takes ``name``, then joins the lobby ``join`` names (``lobby_id=`` or
    ``lobby_name=``); returns the lobby's id."""
    named = await raw_request(ws, {"type": "set_name", "data": {"name": name}, "id": "n"}, timeout)
    assert named["type"] == "session", named
    joined = await raw_request(ws, {"type": "join", "data": join, "id": "j"}, timeout)
    assert joined["type"] == "lobby_state", joined
    return str(joined["data"]["lobby"]["id"])


@asynccontextmanager
async def through_proxy(server: TestServer) -> AsyncIterator[tuple[TcpProxy, Clients, Clients]]:
    """Two pools of clients for ``server``: one straight to it, one through a ``TcpProxy`` that
    the test can stall or freeze; all closed at the end."""
    proxy = TcpProxy(server.port)  # type: ignore[arg-type]
    await proxy.start()
    pool, proxied = Clients(root_url(server)), Clients(f"http://127.0.0.1:{proxy.port}/")
    try:
        yield proxy, pool, proxied
    finally:
        await proxied.close()
        await pool.close()
        await proxy.close()


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
    """The test tone: aiortc's paced silence (20 ms frames in real time) filled with a 440 Hz
    sine at 0.3 of full scale, so that decoding shows."""

    async def recv(self) -> av.AudioFrame:
        frame = await super().recv()  # silence with the right timing
        t = (frame.pts + np.arange(frame.samples)) / frame.sample_rate
        samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
        frame.planes[0].update(samples.tobytes())
        return frame


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


def shown(transcripts: list[Any]) -> list[Any]:
    """The finals among ``transcripts`` as a reader shows them: without those that a later
    final replaced (``Transcript.replaces``)."""
    from signaling.history import current

    return current(t for t in transcripts if isinstance(t, p.Transcript) and t.final)
