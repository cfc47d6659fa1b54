"""The media receive path: ``InboundAudio`` over real aiortc peers, the coalescing loop, and
the VAD's sample buffer."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.codecs.opus import OpusDecoder
from aiortc.contrib.media import MediaPlayer
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError
from aiortc.rtp import RtpPacket

from bots.audio import SampleBuffer, SpeechResampler
from bots.inbound import ArrivalClock, AudioJitterBuffer, InboundAudio, media_time, recv_batch
from bots.loop import CoalescingSelector, hurry, loop_factory, promptly
from bots.mesh import OutgoingAudio

from .helpers import Sine
from .speech import write_wav


class ToneThenQuiet(Sine):
    """``tone`` frames of the test tone, ``quiet`` of silence, and the end: no more packets."""

    def __init__(self, tone: int, quiet: int) -> None:
        super().__init__()
        self.tone, self.quiet, self.sent = tone, quiet, 0

    async def recv(self) -> av.AudioFrame:
        if self.sent == self.tone + self.quiet:
            self.stop()
            raise MediaStreamError
        self.sent += 1
        frame = await super().recv()
        if self.sent > self.tone:
            frame.planes[0].update(bytes(frame.planes[0].buffer_size))
        return frame


async def connected_pair(max_frames: int, batch: int, source: Any = None
                         ) -> tuple[RTCPeerConnection, RTCPeerConnection,
                                    asyncio.Future[InboundAudio]]:
    local = RTCConfiguration(iceServers=[])  # loopback: no STUN server, ever
    sender, receiver = RTCPeerConnection(local), RTCPeerConnection(local)
    sender.addTrack(source or Sine())
    inbound: asyncio.Future[InboundAudio] = asyncio.get_running_loop().create_future()

    @receiver.on("track")
    def on_track(track: Any) -> None:
        rtp_receiver = next(t.receiver for t in receiver.getTransceivers()
                            if t.receiver.track is track)
        inbound.set_result(InboundAudio(rtp_receiver, max_frames, batch))

    await sender.setLocalDescription(await sender.createOffer())
    await receiver.setRemoteDescription(sender.localDescription)
    await receiver.setLocalDescription(await receiver.createAnswer())
    await sender.setRemoteDescription(receiver.localDescription)
    return sender, receiver, inbound


def decoder_threads() -> int:
    return sum(t.name == "audio-decoder" for t in threading.enumerate())


async def test_inbound_audio_decodes_on_the_loop_in_batches() -> None:
    threads_before = decoder_threads()
    sender, receiver, pending = await connected_pair(max_frames=50, batch=5)
    try:
        track = await asyncio.wait_for(pending, 10)
        assert track.inline  # aiortc's decoder thread is bypassed
        batches = [await asyncio.wait_for(recv_batch(track), 10) for _ in range(6)]
        assert all(len(b) >= 5 for b in batches), [len(b) for b in batches]
        frames = [f for b in batches for f in b]
        assert {(f.sample_rate, f.samples) for f in frames} == {(48_000, 960)}
        pts = [f.pts for f in frames]
        assert pts == sorted(pts) and len(set(pts)) == len(pts)
        loud = np.abs(frames[-1].to_ndarray()).max()
        assert loud > 4000  # the tone, decoded
        # aiortc's own track never saw a frame: nothing is decoded twice
        assert track.received >= 30 and receiver.getReceivers()[0].track._queue.empty()
    finally:
        await sender.close()
        await receiver.close()
    # the stream ends for the reader, and aiortc's idle thread is gone
    with pytest.raises(MediaStreamError):
        for _ in range(100):
            await asyncio.wait_for(track.recv(), 5)
    assert decoder_threads() == threads_before


TONE = 0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * 16_000) / 16_000)  # RMS 0.212


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


async def test_a_bot_playing_a_file_is_heard_at_the_files_level(tmp_path: Path) -> None:
    """A mono file, played as a bot plays it (aiortc's MediaPlayer, which makes it stereo at
    -3 dB a channel, then OutgoingAudio), over a real connection, reaches the transcriber's
    input (SpeechResampler) at the level it has in the file: it was 3 dB quieter."""
    player = MediaPlayer(str(write_wav(tmp_path / "tone.wav", TONE)))
    out = OutgoingAudio()
    out.set_source(player.audio)
    sender, receiver, pending = await connected_pair(max_frames=50, batch=5, source=out)
    try:
        track = await asyncio.wait_for(pending, 10)
        resample = SpeechResampler()
        heard: list[np.ndarray] = []
        while sum(map(len, heard)) < 32_000:  # 2 s
            heard.extend(resample(f) for f in await asyncio.wait_for(recv_batch(track), 10))
        samples = np.concatenate(heard)
        tone = samples[np.abs(samples) > 0.01]  # the file, without the silence before it
        assert len(tone) > 8_000
        assert 0.94 < rms(tone[1_600:]) / rms(TONE) < 1.06  # within 0.5 dB
    finally:
        out.stop()
        await sender.close()
        await receiver.close()


def test_a_mono_opus_stream_is_heard_at_its_level() -> None:
    """A browser sends its microphone as mono Opus; aiortc decodes it into both channels.
    The transcriber's input averages them: the level sent, not 3 dB above it."""
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48_000, "mono", "s16"
    decoder, resample = OpusDecoder(), SpeechResampler()
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(48_000) / 48_000)
    pcm = (tone * 32767).astype(np.int16)
    heard = []
    for at in range(0, len(pcm), 960):
        frame = av.AudioFrame.from_ndarray(pcm[None, at:at + 960], format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48_000, at
        for packet in encoder.encode(frame):
            assert not bytes(packet)[0] & 0b100  # the TOC byte: coded as mono
            for decoded in decoder.decode(JitterFrame(data=bytes(packet), timestamp=at)):
                assert len(decoded.layout.channels) == 2
                heard.append(resample(decoded))
    samples = np.concatenate(heard)[1_600:]
    assert 0.94 < rms(samples) / rms(tone) < 1.06


def test_an_audio_packet_leaves_the_jitter_buffer_as_it_arrives_in_order() -> None:
    buffer = AudioJitterBuffer(capacity=16)

    def packet(seq: int) -> RtpPacket:
        p = RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960)
        p._data = bytes([seq])  # type: ignore[attr-defined]  # what the receiver depayloaded
        return p

    def add(seq: int) -> list[int]:
        _, frame = buffer.add(packet(seq))
        frames = ([frame] if frame is not None else []) + buffer.ready()
        return [f.data[0] for f in frames]

    assert add(10) == [10] and add(11) == [11]  # each at once
    assert add(13) == []  # 12 is missing: 13 waits for it
    assert add(12) == [12, 13]  # then both go
    assert add(12) == []  # a late duplicate is dropped
    assert add(14) == [14]
    # 15 never comes: the packets after it wait 60 ms (three packets) for it, then go
    assert add(16) == [] and add(17) == []
    assert add(18) == [16, 17, 18]
    assert add(15) == []  # too late: the stream has moved on
    assert add(19) == [19]


async def test_a_packet_leaves_the_jitter_buffer_when_it_arrives() -> None:
    """aiortc's receiver holds each audio packet until four more came (80 ms): the end of
    someone's speech would reach a bot that much later. The bot's lets it go as it comes. Of
    8 quiet frames after the tone, Opus's delay makes the first loud and the sender never
    sends the last: the other 6 come through before it stops, where aiortc's buffer let 2
    through and one that let a packet go when the next came, 5."""
    sender, receiver, pending = await connected_pair(max_frames=200, batch=1,
                                                     source=ToneThenQuiet(tone=40, quiet=8))
    try:
        track = await asyncio.wait_for(pending, 10)
        loud = []
        while True:
            try:  # the sender sends in real time, then stops: a second without a frame is the end
                frame = await asyncio.wait_for(track.recv(), 1.0)
            except asyncio.TimeoutError:
                break
            loud.append(float(np.abs(frame.to_ndarray()).max()) > 1000)
        assert any(loud), loud
        after_tone = len(loud) - 1 - max(i for i, x in enumerate(loud) if x)
        assert after_tone >= 6, loud[-12:]
    finally:
        await sender.close()
        await receiver.close()


async def test_a_lost_packet_holds_up_the_stream_for_60_ms_not_320() -> None:
    """The network loses a packet (the receiver never sees the 20th): the frames after it
    reach the bot 60 ms late, and then on time. aiortc's buffer would wait until 16 more had
    come (320 ms)."""
    sender, receiver, pending = await connected_pair(max_frames=200, batch=1)
    rtp_receiver = receiver.getReceivers()[0]
    handle = rtp_receiver._handle_rtp_packet
    seen = 0

    async def lossy(packet: RtpPacket, arrival_time_ms: int) -> None:
        nonlocal seen
        seen += 1
        if seen != 20:
            await handle(packet, arrival_time_ms)

    rtp_receiver._handle_rtp_packet = lossy  # type: ignore[method-assign]
    try:
        track = await asyncio.wait_for(pending, 10)
        arrived, dues, medias = [], [], []
        for _ in range(60):
            frame = await asyncio.wait_for(track.recv(), 5)
            arrived.append(time.monotonic())
            media = media_time(frame)
            assert media is not None
            medias.append(media)
            dues.append(track.clock.due(media))
        gaps = np.diff(arrived)
        assert seen >= 61  # the lost packet was among those these frames came after
        assert gaps.max() < 0.25, gaps.round(3)  # 0.06-0.08 s; aiortc's buffer: 0.32 s
        # each frame is dated by when it would have come: those held up behind the lost one
        # by their timestamps (on the clock of the others' arrivals), not by when they got
        # through, and none later than it came
        held = [a - due for a, due in zip(arrived, dues)]
        assert min(held) >= -0.005, np.round(held, 3)
        assert max(held) >= 0.035, np.round(held, 3)
        # and the dates advance as the timestamps do (a lost frame's 20 ms among them)
        assert (np.diff(dues) <= np.diff(medias) + 1e-6).all(), np.diff(dues).round(3)
    finally:
        await sender.close()
        await receiver.close()


def test_the_arrival_clock_dates_held_up_frames_by_their_timestamps() -> None:
    clock = ArrivalClock(window=10.0)
    assert clock.due(0.0) is None
    # 20 ms frames that take 30 ms to come, give or take a few; then two held up 300 ms (a
    # busy loop, a lost packet waited for), and a burst catching up
    jitter = [0.003, 0.0, 0.005, 0.001, 0.002]
    for n in range(50):
        clock.observe(n * 0.02, n * 0.02 + 0.03 + jitter[n % 5])
    assert clock.due(1.0) == pytest.approx(1.03)  # the least delay seen
    clock.observe(1.0, 1.33)
    clock.observe(1.02, 1.33)
    assert clock.due(1.0) == pytest.approx(1.03) and clock.due(1.02) == pytest.approx(1.05)
    # held up for 3 s (a loop that stalled), then the backlog all at once: dated all the same
    for n in range(52, 202):
        clock.observe(n * 0.02, 4.05)
        assert clock.due(n * 0.02) == pytest.approx(n * 0.02 + 0.03)
    # a sender whose clock runs slow against ours (100 ppm): the least delay of the last
    # window stands, not one from long ago
    for n in range(202, 2000):
        clock.observe(n * 0.02, n * 0.02 * 1.0001 + 0.03)
    assert clock.due(40.0) == pytest.approx(40.0 + 0.03 + 39.98 * 0.0001 - 10 * 0.0001, abs=1e-3)
    # the sender starts its timestamps again: dated afresh at once, not 40 s late
    clock.observe(0.0, 41.0)
    assert clock.due(0.02) == pytest.approx(41.02)


async def test_a_slow_reader_loses_the_oldest_frames_not_memory() -> None:
    sender, receiver, pending = await connected_pair(max_frames=10, batch=1)
    try:
        track = await asyncio.wait_for(pending, 10)
        async def unread() -> None:  # ~0.8 s of audio that nobody reads
            while track.received < 40:
                await asyncio.sleep(0.1)

        await asyncio.wait_for(unread(), 20)
        assert track.dropped >= 30
        first = await track.recv()
        assert len(track._pending) + len(track._decoded) <= 9
        later = await track.recv()
        assert later.pts > first.pts
        # the frames kept are the newest: the first one read came well after the stream began
        assert first.pts >= 30 * 960
    finally:
        await sender.close()
        await receiver.close()


class NoPrivateQueue:
    """Stands for an aiortc whose receiver has no decoder queue to replace."""

    def __init__(self) -> None:
        self.track = AudioStreamTrack()


async def test_without_the_hook_frames_are_pumped_from_aiortcs_track() -> None:
    track = InboundAudio(NoPrivateQueue(), max_frames=20, batch=3)  # type: ignore[arg-type]
    assert not track.inline
    batch = await asyncio.wait_for(recv_batch(track), 5)
    assert [f.pts for f in batch] == [0, 160, 320]  # aiortc's 20 ms silence at 8 kHz
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_two_readers_are_both_served_and_both_see_the_end() -> None:
    track = InboundAudio(NoPrivateQueue(), max_frames=20, batch=1)  # type: ignore[arg-type]
    first, second = await asyncio.wait_for(asyncio.gather(track.recv(), track.recv()), 5)
    assert first.pts != second.pts
    waiting = [asyncio.ensure_future(track.recv()) for _ in range(2)]
    await asyncio.sleep(0)
    track.stop()
    ends = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert all(isinstance(e, MediaStreamError) or e.samples == 160 for e in ends), ends


def test_batch_must_fit_the_queue() -> None:
    with pytest.raises(ValueError):
        InboundAudio(NoPrivateQueue(), max_frames=4, batch=5)  # type: ignore[arg-type]


def test_coalescing_loop_delivers_io_in_batches_and_keeps_timers() -> None:
    polls = 0

    class Counting(CoalescingSelector):
        def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
            nonlocal polls
            ready = super().select(timeout)
            polls += bool(ready)
            return ready

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setblocking(False)
        got = 0
        all_in = asyncio.Event()

        def on_readable() -> None:
            nonlocal got
            got += len(a.recv(4096))
            if got == 20:
                all_in.set()

        loop.add_reader(a.fileno(), on_readable)

        def write_slowly() -> None:  # 20 writes, 5 ms apart, from another thread
            for _ in range(20):
                b.send(b"x")
                time.sleep(0.005)

        writer = threading.Thread(target=write_slowly)
        writer.start()
        await asyncio.wait_for(all_in.wait(), 5)  # no timer fires meanwhile to poll for us
        writer.join()
        loop.remove_reader(a.fileno())
        a.close()
        b.close()
        started = time.monotonic()
        for _ in range(10):
            await asyncio.sleep(0.005)  # a timer far shorter than the poll interval
        return got, time.monotonic() - started

    loop = asyncio.SelectorEventLoop(Counting(0.2))
    try:
        got, timers_took = loop.run_until_complete(main())
    finally:
        loop.close()
    assert got == 20
    assert polls < 10  # ~0.1 s of writes in at most a few polls, not one per write
    assert timers_took < 1.5  # ten 5 ms sleeps; held to the interval they would take >= 2 s


def test_coalescing_loop_wakes_at_once_for_work_handed_back_promptly() -> None:
    """A recognition's result (a caption) does not wait for the next poll: the poll interval
    here is 0.5 s, the thread's work 10 ms. Other threads' results do wait for it."""

    async def main() -> tuple[list[float], float]:
        loop = asyncio.get_running_loop()
        took = []
        for _ in range(3):
            started = time.monotonic()
            await loop.run_in_executor(None, promptly, loop, time.sleep, 0.01)
            took.append(time.monotonic() - started)
        started = time.monotonic()
        await loop.run_in_executor(None, time.sleep, 0.01)
        return took, time.monotonic() - started

    loop = loop_factory(0.5)
    try:
        took, plain = loop.run_until_complete(main())
    finally:
        loop.close()
    assert max(took) < 0.25, took  # each would wait out the 0.5 s poll otherwise
    assert plain > 0.3, plain


def test_a_hurried_loop_polls_sooner_until_its_owner_is_done() -> None:
    """A stream deciding whether its speaker paused hurries the loop: a packet then waits for
    the hurried interval, not the 0.5 s poll interval here."""

    async def read_one(a: socket.socket, b: socket.socket) -> float:
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_reader(a.fileno(), lambda: got.done() or got.set_result(a.recv(16)))
        await asyncio.sleep(0)  # a poll has just been: the next one is a whole interval away
        sent = time.monotonic()
        threading.Thread(target=b.send, args=(b"x",)).start()
        await got
        loop.remove_reader(a.fileno())
        return time.monotonic() - sent

    async def main() -> tuple[float, float]:
        a, b = socket.socketpair()
        a.setblocking(False)
        owner = object()
        try:
            hurry(owner, True)
            hurried = await read_one(a, b)
            hurry(owner, False)
            return hurried, await read_one(a, b)
        finally:
            a.close()
            b.close()

    loop = loop_factory(0.5)
    try:
        hurried, calm = loop.run_until_complete(main())
    finally:
        loop.close()
    assert hurried < 0.25 and calm > 0.3, (hurried, calm)


def test_loop_factory_zero_is_the_ordinary_loop() -> None:
    loop = loop_factory(0)
    try:
        assert not isinstance(getattr(loop, "_selector", None), CoalescingSelector)
    finally:
        loop.close()
    loop = loop_factory(0.04)
    try:
        assert isinstance(loop._selector, CoalescingSelector)  # type: ignore[attr-defined]
    finally:
        loop.close()


class PlainBuffer:
    """What ``SampleBuffer`` must behave like: one array, concatenated on every append."""

    def __init__(self, max_samples: int) -> None:
        self.max_samples, self.data, self.start = max_samples, np.zeros(0, np.float32), 0

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def append(self, x: np.ndarray) -> None:
        self.data = np.concatenate([self.data, x])
        excess = len(self.data) - self.max_samples
        if excess > 0:
            self.data, self.start = self.data[excess:], self.start + excess

    def slice(self, begin: int, end: int | None) -> np.ndarray:
        lo = max(begin, self.start) - self.start
        hi = (self.end if end is None else min(end, self.end)) - self.start
        return self.data[lo:max(lo, hi)]

    def discard_before(self, index: int) -> None:
        cut = min(max(0, index - self.start), len(self.data))
        self.data, self.start = self.data[cut:], self.start + cut


def test_sample_buffer_matches_a_plain_array() -> None:
    rng = random.Random(7)
    counter = 0
    for _ in range(100):
        size = rng.randint(1, 4000)
        buf, ref = SampleBuffer(size), PlainBuffer(size)
        for _ in range(300):
            op = rng.random()
            if op < 0.6:
                n = rng.randint(0, 2 * size if rng.random() < 0.05 else 600)
                samples = np.arange(counter, counter + n, dtype=np.float32)
                counter += n
                buf.append(samples)
                ref.append(samples)
            elif op < 0.8:
                index = rng.randint(ref.start - 50, ref.end + 50)
                buf.discard_before(index)
                ref.discard_before(index)
            else:
                begin = rng.randint(ref.start - 100, ref.end + 100)
                end = rng.choice([None, rng.randint(begin - 10, ref.end + 100)])
                assert np.array_equal(buf.slice(begin, end), ref.slice(begin, end))
            assert (buf.start, buf.end) == (ref.start, ref.end)
