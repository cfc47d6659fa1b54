"""The media receive path: CPU per incoming speech stream, and memory over join/leave cycles.

    python -m bench.receive                  # ~2.5 minutes
    python -m bench.receive --smoke          # seconds

This process is the bot: a signaling session in a lobby with the bots' own ``Mesh`` (one
aiortc peer connection per peer, received tracks behind a ``BoundedTrack``) and, per stream,
what the transcriber does to every frame before Whisper: ``SpeechResampler`` (PyAV, 48 kHz →
16 kHz mono) and the Silero ``Segmenter`` (VAD). Speakers are aiortc peers in other processes,
each sending looped speech (``tests/data/english_espeak.wav``) as Opus, 20 ms a packet.

Two ways of receiving, one after the other in the same run, each with its own speakers:

- ``aiortc``, the baseline: aiortc as shipped — each track decoded in aiortc's thread, every
  frame handed over on its own, the loop woken for every packet;
- ``ours``, what a bot provider runs: frames decoded on the loop (``InboundAudio``), handed
  over in the transcriber's batches of 5, the loop polling for I/O every 40 ms
  (``bots.loop``).

For k = 1, 2, 4, 8 streams it reads this process's CPU (user + system ticks of all threads,
from /proc, so aiortc's decoder threads count) at three depths:

- ``decode``: receive + SRTP + jitter buffer + Opus decode, frames read and dropped;
- ``resample``: the same, each frame resampled to 16 kHz mono float32;
- ``vad``: the same, the samples fed to the Silero segmenter — the transcriber's front end.

The bot with no peers is subtracted: CPU per stream is (CPU with k streams − idle CPU) / k.
Frames per second per stream show the bot kept up (50 is every packet). The ratio is ours over
the baseline's, per stream, at full depth.

Join/leave: a peer joins the bot's lobby, negotiates, sends speech for a moment and leaves,
100 times; the bot's RSS after the cycles is compared with its RSS after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from aiortc.mediastreams import MediaStreamError

from bench.children import read_line, release, spawn
from bench.procstats import cpu_seconds, rss_kib
from bench.speakers import cycle, speak
from bench.tables import table
from bots.audio import SpeechResampler
from bots.inbound import InboundAudio, recv_batch
from bots.loop import POLL_INTERVAL, CoalescingSelector
from bots.mesh import Mesh
from bots.plugin import Peer
from bots.transcriber import TranscriberBot
from bots.vad import Segmenter, SileroVad
from shared.client import SignalingClient
from shared.config import ClientConfig
from signaling.testing import ServerProcess

MODES = ("decode", "resample", "vad")


@dataclass(frozen=True)
class Way:
    """A way of receiving: where frames are decoded, how many at a time, how often to poll."""

    name: str
    decode_on_loop: bool
    batch: int
    poll_interval: float


BASELINE = Way("aiortc", decode_on_loop=False, batch=1, poll_interval=0.0)
OURS = Way("ours", decode_on_loop=True, batch=TranscriberBot.receive_batch,
           poll_interval=POLL_INTERVAL)
TARGET_PER_STREAM = 0.03
TARGET_RSS_GROWTH = 0.05


# --- the bot (this process) -----------------------------------------------------------------------


@dataclass
class Stream:
    frames: int = 0
    resample: SpeechResampler = field(default_factory=SpeechResampler)
    segmenter: Segmenter = field(default_factory=Segmenter)


class ReceivingBot:
    """The bots' mesh, and per stream what the transcriber does to each frame before Whisper."""

    def __init__(self, url: str, selector: CoalescingSelector) -> None:
        self.client = SignalingClient(ClientConfig(url=url, name="receive bench bot"))
        self.selector = selector  # this process's loop's
        self.mode = "vad"
        self.streams: dict[int, Stream] = {}  # one per received track, live ones only
        self.tracks_seen = 0
        self.lobby_id = ""
        self.mesh: Mesh | None = None

    async def start(self) -> None:
        SileroVad.shared()  # the ONNX session is loaded once per process, as in a provider
        await self.client.start(wait=30)
        await self.client.set_name("receive bench bot")
        self.lobby_id = (await self.client.join(lobby_name="receive bench")).lobby.id
        self.mesh = Mesh(self.client, self.lobby_id, sends_audio=False, on_track=self._track,
                         on_peer_connected=self._nothing, on_peer_left=self._nothing)

    @property
    def session_id(self) -> str:
        return self.client.session_id or ""

    async def _nothing(self, peer: Peer) -> None:
        pass

    async def _track(self, peer: Peer, track: InboundAudio) -> None:
        stream = Stream()
        key = id(stream)
        self.streams[key] = stream
        self.tracks_seen += 1
        try:
            while True:
                frames = await recv_batch(track)
                stream.frames += len(frames)
                if self.mode != "decode":
                    samples = np.concatenate([stream.resample(f) for f in frames])
                    if self.mode == "vad":
                        stream.segmenter.feed(samples)  # utterances would go to Whisper
        except MediaStreamError:
            pass  # the peer left
        finally:
            del self.streams[key]

    def receive(self, way: Way) -> None:
        """Tracks received from now on are received ``way``."""
        assert self.mesh is not None
        self.mesh.decode_on_loop, self.mesh.receive_batch = way.decode_on_loop, way.batch
        self.selector.poll_interval = way.poll_interval

    def frames(self) -> int:
        return sum(s.frames for s in self.streams.values())

    async def close(self) -> None:
        if self.mesh is not None:
            await self.mesh.close()
        await self.client.close(drain=0.5)


@dataclass
class Depth:
    way: str
    k: int
    mode: str
    cpu: float  # fraction of one core, the whole process
    fps: float  # frames per second per stream


async def measure(bot: ReceivingBot, way: Way, k: int, mode: str, seconds: float) -> Depth:
    bot.mode = mode
    await asyncio.sleep(0.5)  # the new depth has taken over
    me = os.getpid()
    cpu0, frames0, t0 = cpu_seconds(me), bot.frames(), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    return Depth(way.name, k, mode, (cpu_seconds(me) - cpu0) / elapsed,
                 (bot.frames() - frames0) / elapsed / max(k, 1))


async def spawn_speakers(role: str, *values: str) -> asyncio.subprocess.Process:
    # the values go as one JSON list: a session id may begin with "-", which argparse would
    # take for an option
    return await spawn("bench.receive", role, json.dumps(values))


async def wait_streams(bot: ReceivingBot, k: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(bot.streams) != k or any(s.frames < 25 for s in bot.streams.values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(bot.streams)} streams, not {k}, after {timeout} s")
        await asyncio.sleep(0.1)


async def sweep(bot: ReceivingBot, url: str, way: Way, ks: tuple[int, ...], seconds: float,
                modes: tuple[str, ...]) -> list[Depth]:
    """Idle, then k streams at each depth; the speakers leave at the end."""
    bot.receive(way)
    results = [await measure(bot, way, 0, "vad", seconds)]
    speakers: list[asyncio.subprocess.Process] = []
    have = 0
    try:
        for k in ks:
            while have < k:  # at most 4 speakers a process; earlier ones keep talking
                count = min(k - have, 4)
                # named per way: a name stays claimed a while after its session has gone
                child = await spawn_speakers("--speak", url, bot.lobby_id, bot.session_id, str(count),
                                    str(have), way.name)
                speakers.append(child)
                await read_line(child, "speaker process", 90, b"ready")
                have += count
            await wait_streams(bot, k)
            for mode in modes:
                results.append(await measure(bot, way, k, mode, seconds))
    finally:
        await release(speakers, 15)
    await wait_streams(bot, 0)  # the speakers have gone
    return results


@dataclass
class Churn:
    warmup: int
    cycles: int
    rss_before_kib: int
    rss_after_kib: int
    threads_before: int
    threads_after: int
    links_after: int
    tracks: int
    seconds: float

    @property
    def growth(self) -> float:
        return self.rss_after_kib / self.rss_before_kib - 1


async def churn(bot: ReceivingBot, url: str, warmup: int, cycles: int, talk: float) -> Churn:
    bot.mode = "vad"
    await asyncio.sleep(1.0)  # the sweep's speakers have gone
    started_tracks = bot.tracks_seen
    child = await spawn_speakers("--cycle", url, bot.lobby_id, bot.session_id, str(warmup), str(cycles),
                        str(talk))
    assert child.stdin is not None
    try:
        await read_line(child, "speaker process", 60 + 10 * warmup, b"warm")
        await asyncio.sleep(1.0)  # the last warm-up peer's connection is torn down
        rss_before, threads_before = rss_kib(os.getpid()), threading.active_count()
        t0 = time.monotonic()
        child.stdin.write(b"go\n")
        await child.stdin.drain()
        await read_line(child, "speaker process", 60 + 10 * cycles, b"done")
        elapsed = time.monotonic() - t0
        await asyncio.wait_for(child.wait(), 30)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    await asyncio.sleep(2.0)  # the last peer's connection is torn down
    assert bot.mesh is not None
    return Churn(warmup, cycles, rss_before, rss_kib(os.getpid()), threads_before,
                 threading.active_count(), len(bot.mesh.links), bot.tracks_seen - started_tracks,
                 elapsed)


def per_stream(depths: list[Depth]) -> dict[tuple[int, str], float]:
    idle = depths[0].cpu
    return {(d.k, d.mode): (d.cpu - idle) / d.k for d in depths[1:]}


async def bench(url: str, selector: CoalescingSelector, ks: tuple[int, ...], seconds: float,
                warmup: int, cycles: int, talk: float) -> None:
    bot = ReceivingBot(url, selector)
    await bot.start()
    try:
        print(f"== receive path: k speakers → one bot, {seconds:.0f} s per reading; CPU of the "
              "bot process in % of one core")
        runs = {way.name: await sweep(bot, url, way, ks, seconds, MODES)
                for way in (BASELINE, OURS)}
        rows = [["way", "streams", "depth", "process CPU", "per stream", "frames/s per stream"]]
        for name, depths in runs.items():
            rows.append([name, "0", "idle bot", f"{depths[0].cpu * 100:.2f} %", "-", "-"])
            rows.extend([name, str(d.k), d.mode, f"{d.cpu * 100:.2f} %",
                         f"{(d.cpu - depths[0].cpu) / d.k * 100:.2f} %", f"{d.fps:.1f}"]
                        for d in depths[1:])
        print(table(rows))
        base, ours = per_stream(runs[BASELINE.name]), per_stream(runs[OURS.name])
        rows = [["streams", *(f"{m}: aiortc" for m in MODES), *(f"{m}: ours" for m in MODES),
                 "ours / aiortc (vad)"]]
        for k in ks:
            rows.append([str(k), *(f"{base[k, m] * 100:.2f} %" for m in MODES),
                         *(f"{ours[k, m] * 100:.2f} %" for m in MODES),
                         f"{ours[k, 'vad'] / max(base[k, 'vad'], 1e-9):.2f}x"])
        print("\nCPU per stream\n" + table(rows))
        worst = max(ours[k, "vad"] for k in ks)
        print(f"receive + decode + resample + VAD: at most {worst * 100:.2f} % of a core per stream"
              f" (target <= {TARGET_PER_STREAM * 100:.0f} %); {ours[ks[-1], 'vad'] * 100:.2f} % at "
              f"{ks[-1]} streams; aiortc as shipped: at most "
              f"{max(base[k, 'vad'] for k in ks) * 100:.2f} %")

        print(f"\n== join/leave: {cycles} cycles of a speaker joining, talking {talk:.1f} s and "
              f"leaving, after {warmup} to warm up")
        c = await churn(bot, url, warmup, cycles, talk)
        print(table([
            ["bot RSS before MiB", "after MiB", "growth", "per cycle KiB", "threads before/after",
             "links left", "tracks", "s per cycle"],
            [f"{c.rss_before_kib / 1024:.1f}", f"{c.rss_after_kib / 1024:.1f}",
             f"{c.growth * 100:+.1f} %",
             f"{(c.rss_after_kib - c.rss_before_kib) / max(c.cycles, 1):.1f}",
             f"{c.threads_before}/{c.threads_after}", str(c.links_after), str(c.tracks),
             f"{c.seconds / max(c.cycles, 1):.2f}"]]))
        print(f"RSS after {cycles} join/leave cycles: {c.growth * 100:+.1f} % "
              f"(target: flat within {TARGET_RSS_GROWTH * 100:.0f} %)")
    finally:
        await bot.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--seconds", type=float, default=5.0, help="per CPU reading")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10, help="join/leave cycles before the "
                                                               "first RSS reading")
    parser.add_argument("--talk", type=float, default=0.5, help="seconds of speech per cycle")
    parser.add_argument("--speak", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--cycle", type=json.loads, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.speak:
        url, lobby, bot, count, first, prefix = args.speak
        asyncio.run(speak(url, lobby, bot, int(count), int(first), prefix))
        return 0
    if args.cycle:
        url, lobby, bot, warmup, cycles, talk = args.cycle
        asyncio.run(cycle(url, lobby, bot, int(warmup), int(cycles), float(talk)))
        return 0

    ks, seconds, warmup, cycles = (((1,), 1.0, 2, 3) if args.smoke else
                                   ((1, 2, 4, 8), args.seconds, args.warmup, args.cycles))
    server = ServerProcess(Path(tempfile.mkdtemp(prefix="bench-receive-")) / "data")
    server.start()
    selector = CoalescingSelector(POLL_INTERVAL)  # set per way as the sweep goes
    try:
        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
            runner.run(bench(server.url, selector, ks, seconds, warmup, cycles, args.talk))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
