"""A bot's side of the lobby mesh: one ``RTCPeerConnection`` per peer, negotiated over signaling.

Roles follow the server's rule (the joiner offers). Glare — both sides offering at once, e.g.
after both reconnected — is settled by session id: the side with the smaller id is polite and
drops its own offer to answer the other's; the other ignores the incoming offer.

aiortc gathers all of its candidates before ``setLocalDescription`` returns, so our SDP carries
them and we send only the end-of-candidates marker; candidates trickled by browsers are added
as they come (buffered until the remote description is set).

Recovery (docs/protocol.md, "Restarting a connection"): aiortc can't restart ICE in place, so a
connection is restarted by replacing it. A connection that fails is replaced by a new one we
offer; an offer that names another DTLS fingerprint or ICE username fragment than the
connection's remote description is the peer's new connection, answered on a new one.

Every queue between aiortc and the bot is bounded: received audio is decoded into an
``InboundAudio`` that drops its oldest frame when the bot falls behind.
"""

from __future__ import annotations

import collections
import fractions
import logging
import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

import av
import numpy as np
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCIceCandidate, RTCIceServer,
                    RTCPeerConnection, RTCSessionDescription)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.sdp import candidate_from_sdp

from shared import protocol as p
from shared.client import SignalingClient
from shared.tasks import TaskSet

from .audio import Converter
from .inbound import MAX_FRAMES, InboundAudio, check_batch
from .plugin import Peer

log = logging.getLogger(__name__)

SAMPLE_RATE = 48_000
MAX_RESTARTS = 5  # failed connections to one peer in a row before we wait for the peer
_IDENTITY = re.compile(r"^a=(fingerprint:\S+ \S+|ice-ufrag:\S+)", re.MULTILINE)


def identity(sdp: str) -> frozenset[str]:
    """The DTLS fingerprints and ICE username fragments an SDP names: another set in an offer
    means a new connection, not a renegotiation of this one."""
    return frozenset(_IDENTITY.findall(sdp))


def selected_path(pc: RTCPeerConnection) -> tuple[str, str] | None:
    """(local, remote) candidate types of the pair a connected ``pc`` uses, e.g. ("host",
    "relay"); None before ICE has picked one."""
    for transceiver in pc.getTransceivers():
        # aiortc has no public accessor for the selected pair: read aioice's nominated one
        connection = transceiver.receiver.transport.transport._connection
        pair = connection._nominated.get(1)
        if pair is not None:
            return pair.local_candidate.type, pair.remote_candidate.type
    return None


def dual_mono(frame: av.AudioFrame) -> av.AudioFrame:
    """A mono float frame as 16-bit stereo with the samples in both channels: what a mono
    Opus stream (a browser's microphone) decodes to, so a receiver that averages the channels
    (``bots/audio.py`` ``SpeechResampler``) hears a bot at the level of its source. aiortc's
    encoder would upmix mono at -3 dB a channel."""
    pcm = (np.clip(frame.to_ndarray().reshape(-1), -1, 1) * 32767).astype(np.int16)
    out = av.AudioFrame.from_ndarray(np.repeat(pcm, 2)[None], format="s16", layout="stereo")
    out.sample_rate = frame.sample_rate
    return out


class OutgoingAudio(MediaStreamTrack):
    """What a bot sends to one peer: silence until a source is set, then the source.

    Frames are converted to 48 kHz s16, mono in both channels (``dual_mono``), and stamped
    with one clock, as RTP's timestamps should be: the time each frame goes out (its samples'
    time), counted from the first. Within a source it advances by the samples sent; when one
    source gives way to another (silence to a file, a file ending), it is set to the time
    that really passed since the first frame, never back. A sender running behind (its loop
    busy) skips what the old source still owed, and the new one starts from now: stamped
    on, the clock would lag real time by that much, and a receiver that dates speech by its
    timestamps (the transcriber) would put it that much too early.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._source: MediaStreamTrack | None = None
        self._silence = AudioStreamTrack()
        # float: PyAV's downmix to 16-bit scales a stereo source down to keep clear of
        # clipping, and a mono file played (aiortc's MediaPlayer: stereo, -3 dB each) went
        # out 3 dB quieter than it is
        self._converter = Converter("flt", "mono", SAMPLE_RATE)
        self._ready: collections.deque[av.AudioFrame] = collections.deque()
        self._pts = 0
        self._started: float | None = None  # monotonic time of the first frame out
        self._switched = False  # the source changed: the next frame out resets the clock

    def set_source(self, track: MediaStreamTrack | None) -> None:
        if track is None and self._source is not None:
            self._restart_silence()
        self._source = track
        self._switched = True

    def _restart_silence(self) -> None:
        # the silence track paces itself from when it started: one left running while a
        # source played would send the whole gap at once (receivers would see a burst)
        self._silence.stop()
        self._silence = AudioStreamTrack()

    async def recv(self) -> av.AudioFrame:
        while not self._ready:
            # aiortc types recv() as any media (a Frame or a Packet); audio tracks give
            # AudioFrames
            frame: av.AudioFrame | None = None
            if self._source is not None:
                try:
                    frame = cast(av.AudioFrame, await self._source.recv())
                except MediaStreamError:
                    self._source = None  # the source ended: back to silence
                    self._restart_silence()
                    self._switched = True
            if frame is None:
                frame = cast(av.AudioFrame, await self._silence.recv())
            frame.pts = None
            self._ready.extend(map(dual_mono, self._converter.convert(frame)))
        out = self._ready.popleft()
        now = time.monotonic()
        if self._started is None:
            self._started = now
        elif self._switched:
            self._pts = max(self._pts, round((now - self._started) * SAMPLE_RATE))
        self._switched = False
        out.pts, out.time_base = self._pts, fractions.Fraction(1, SAMPLE_RATE)
        self._pts += out.samples
        return out

    def stop(self) -> None:
        super().stop()
        self._silence.stop()


@dataclass
class PeerLink:
    peer: Peer
    pc: RTCPeerConnection
    outgoing: OutgoingAudio | None
    pending_ice: list[RTCIceCandidate] = field(default_factory=list)
    tracks: list[InboundAudio] = field(default_factory=list)
    connected: bool = False
    path: tuple[str, str] | None = None  # (local, remote) candidate types once connected
    restarts: int = 0  # failed connections to this peer in a row


# coroutine functions, not any awaitable: each call is a task the mesh owns (TaskSet.spawn)
TrackHandler = Callable[[Peer, MediaStreamTrack], Coroutine[Any, Any, None]]
PeerHandler = Callable[[Peer], Coroutine[Any, Any, None]]


# the SDP direction of a bot's audio: (sends, receives) → direction
_DIRECTIONS = {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly",
               (False, False): "inactive"}


class Mesh:
    """Peer connections of one bot session in one lobby."""

    def __init__(self, client: SignalingClient, lobby_id: str, *, sends_audio: bool,
                 on_track: TrackHandler, on_peer_connected: PeerHandler,
                 on_peer_left: PeerHandler, max_frames: int = MAX_FRAMES,
                 receives_audio: bool = True, receive_batch: int = 1,
                 decode_on_loop: bool = True,
                 on_paths: Callable[[], None] | None = None,
                 hook_label: str = "bot hook") -> None:
        self.client = client
        self.lobby_id = lobby_id
        self.sends_audio = sends_audio
        # False: peers are told not to send us audio (the SDP direction), so none is decoded
        self.receives_audio = receives_audio
        self.max_frames = max_frames
        check_batch(receive_batch, max_frames)  # here, not in aiortc's track event
        self.receive_batch = receive_batch  # frames a received track hands over at a time
        self.decode_on_loop = decode_on_loop  # False: in aiortc's thread per track
        self.links: dict[str, PeerLink] = {}
        self._on_track, self._on_peer_connected, self._on_peer_left = (
            on_track, on_peer_connected, on_peer_left)
        self._on_paths = on_paths or (lambda: None)  # connections' paths or failures changed
        self.ice_failures = 0  # connections that failed, since the start
        self._relay = MediaRelay()
        self._source: MediaStreamTrack | None = None
        self._tasks = TaskSet(log, hook_label)  # what a failing handler is logged as
        self._closed = False
        for type_, handler in ((p.MessageType.PEER_ADDED, self._peer_added),
                               (p.MessageType.PEER_REMOVED, self._peer_removed),
                               (p.MessageType.SDP, self._sdp), (p.MessageType.ICE, self._ice)):
            client.on(type_, handler)

    @property
    def me(self) -> str:
        return self.client.session_id or ""

    def set_source(self, track: MediaStreamTrack) -> None:
        """Sends ``track`` to every peer, present and future (one relayed copy each)."""
        if not self.sends_audio:
            raise RuntimeError("this bot kind does not send audio (set sends_audio = True)")
        self._source = track
        for link in self.links.values():
            if link.outgoing is not None:
                link.outgoing.set_source(self._relay.subscribe(track))

    def connected_peers(self) -> list[Peer]:
        return [link.peer for link in self.links.values() if link.connected]

    def metrics(self) -> dict[str, float]:
        """Connections by (local, remote) candidate type and ICE failures, as the figures of a
        bot status (docs/protocol.md, ``bot_status``)."""
        figures: dict[str, float] = {"ice_failures": self.ice_failures}
        for link in self.links.values():
            if link.path is not None:
                key = "connections_{}_{}".format(*link.path)
                figures[key] = figures.get(key, 0) + 1
        return figures

    # --- signaling ----------------------------------------------------------------------------

    async def _peer_added(self, msg: p.Message) -> None:
        assert isinstance(msg, p.PeerAdded)
        if msg.lobby_id != self.lobby_id or self._closed:
            return
        peer = Peer(msg.peer.session_id, msg.peer.name, msg.peer.bot)
        link = await self._new_link(peer)
        if msg.create_offer:
            await self._offer(link)

    async def restart(self, peer_id: str) -> None:
        """Replaces the connection to ``peer_id`` with a new one we offer (docs/protocol.md,
        "Restarting a connection")."""
        link = self.links.get(peer_id)
        if link is not None and not self._closed:
            await self._offer(await self._new_link(link.peer, restarts=link.restarts + 1))

    async def _offer(self, link: PeerLink) -> None:
        await link.pc.setLocalDescription(await link.pc.createOffer())
        await self._send_description(link)

    async def _peer_removed(self, msg: p.Message) -> None:
        assert isinstance(msg, p.PeerRemoved)
        if msg.lobby_id == self.lobby_id:
            await self._drop(msg.peer_id, left=True)

    async def _sdp(self, msg: p.Message) -> None:
        assert isinstance(msg, p.Sdp)
        if msg.lobby_id != self.lobby_id or self._closed:
            return
        link = self.links.get(msg.peer_id)
        desc = RTCSessionDescription(sdp=msg.description.sdp, type=msg.description.type)
        if desc.type == "offer":
            glare = link is not None and link.pc.signalingState == "have-local-offer"
            if glare and self.me > msg.peer_id:
                log.info("glare with %s: keeping our offer", msg.peer_id)
                return
            restart = (link is not None and not glare and link.pc.remoteDescription is not None
                       and identity(link.pc.remoteDescription.sdp) != identity(desc.sdp))
            if restart:
                log.info("%s restarts its connection", msg.peer_id)
            if link is None or glare or restart:
                # aiortc can't roll back or restart ICE: the polite side (or the one whose
                # peer restarts) starts afresh
                peer = link.peer if link else Peer(msg.peer_id, msg.peer_id)
                link = await self._new_link(peer, restarts=link.restarts if link else 0)
            await link.pc.setRemoteDescription(desc)
            await self._flush_ice(link)
            await link.pc.setLocalDescription(await link.pc.createAnswer())
            await self._send_description(link)
        elif desc.type == "answer" and link is not None and \
                link.pc.signalingState == "have-local-offer":
            await link.pc.setRemoteDescription(desc)
            await self._flush_ice(link)

    async def _ice(self, msg: p.Message) -> None:
        assert isinstance(msg, p.Ice)
        link = self.links.get(msg.peer_id)
        if msg.lobby_id != self.lobby_id or link is None or msg.candidate is None:
            return
        raw = msg.candidate.candidate
        if not raw:
            return
        cand = candidate_from_sdp(raw.split(":", 1)[1] if raw.startswith("candidate:") else raw)
        cand.sdpMid, cand.sdpMLineIndex = msg.candidate.sdpMid, msg.candidate.sdpMLineIndex
        if link.pc.remoteDescription is None:
            link.pending_ice.append(cand)
        else:
            await link.pc.addIceCandidate(cand)

    async def _flush_ice(self, link: PeerLink) -> None:
        for cand in link.pending_ice:
            await link.pc.addIceCandidate(cand)
        link.pending_ice.clear()

    async def _send_description(self, link: PeerLink) -> None:
        desc = link.pc.localDescription
        self.client.send(p.Sdp(lobby_id=self.lobby_id, peer_id=link.peer.session_id,
                               description=p.SessionDescription(type=desc.type, sdp=desc.sdp)))
        self.client.send(p.Ice(lobby_id=self.lobby_id, peer_id=link.peer.session_id,
                               candidate=None))

    # --- peer connections ---------------------------------------------------------------------

    async def _new_link(self, peer: Peer, restarts: int = 0) -> PeerLink:
        await self._drop(peer.session_id, left=False)
        # exactly the servers the signaling server gave us: with none, host candidates only
        # (aiortc's own default would ask a public STUN server)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
            for s in self.client.ice_servers]))
        outgoing = None
        direction = _DIRECTIONS[self.sends_audio, self.receives_audio]
        if self.sends_audio:
            outgoing = OutgoingAudio()
            if self._source is not None:
                outgoing.set_source(self._relay.subscribe(self._source))
            pc.addTransceiver(outgoing, direction=direction)
        else:
            pc.addTransceiver("audio", direction=direction)
        link = PeerLink(peer, pc, outgoing, restarts=restarts)
        self.links[peer.session_id] = link

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind != "audio":
                return
            receiver = next(t.receiver for t in pc.getTransceivers()
                            if t.receiver.track is track)
            inbound = InboundAudio(receiver, self.max_frames, self.receive_batch,
                                   self.decode_on_loop)
            link.tracks.append(inbound)
            self._tasks.spawn(self._on_track(peer, inbound), "on_track")

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.links.get(peer.session_id) is not link:
                return  # replaced already
            if pc.connectionState == "connected" and not link.connected:
                link.connected, link.restarts = True, 0
                link.path = selected_path(pc)
                log.info("connected to %s (%s to %s)", peer.session_id, *link.path or ("?", "?"))
                self._on_paths()
                self._tasks.spawn(self._on_peer_connected(peer), "on_peer_connected")
            elif pc.connectionState == "failed":
                self.ice_failures += 1
                if link.restarts >= MAX_RESTARTS:  # the peer's own restart or removal will do
                    log.info("connection to %s failed again: waiting for it", peer.session_id)
                    await self._drop(peer.session_id, left=False)
                else:
                    log.info("connection to %s failed: offering a new one", peer.session_id)
                    await self.restart(peer.session_id)
                self._on_paths()

        return link

    async def _drop(self, peer_id: str, *, left: bool) -> None:
        link = self.links.pop(peer_id, None)
        if link is None:
            return
        for track in link.tracks:
            await track.close()
        if link.outgoing is not None:
            link.outgoing.stop()
        await link.pc.close()
        if link.path is not None:
            self._on_paths()
        if left:
            self._tasks.spawn(self._on_peer_left(link.peer), "on_peer_left")

    async def close(self) -> None:
        self._closed = True
        for peer_id in list(self.links):
            await self._drop(peer_id, left=False)
        await self._tasks.close()
