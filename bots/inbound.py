"""Received audio: decoded on the event loop, behind a bounded queue.

aiortc decodes every received frame in a thread of its own per track and hands each decoded
frame back with ``asyncio.run_coroutine_threadsafe``. For 20 ms Opus packets that costs more
than the decoding: per packet, a wake-up of the decoder thread, a write to the loop's self-pipe,
a loop wake-up and a task. Opus decodes a packet in tens of microseconds, so ``InboundAudio``
decodes on the loop instead, as each frame leaves the jitter buffer, and hands the frame to the
bot's queue directly.

That takes the place of the queue between aiortc's receiver and its decoder thread (a private
attribute). It is only done while the thread has not started; otherwise, or if aiortc's
receiver no longer has that queue, frames are pumped from aiortc's own track as before. The
thread itself still starts, and waits, idle, until the receiver stops.

The receiver's jitter buffer is replaced too, while it is empty: aiortc's holds every audio
packet until four more have come (80 ms), a cushion for playing sound out evenly. A bot does
not play out, and an audio packet is a whole frame: ``AudioJitterBuffer`` lets each packet go
the moment it arrives in order. The packets behind a missing one wait for it, then all go
together; once three have come (60 ms of 20 ms packets) it is taken as lost.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
from typing import Any, cast

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError

from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

_QUEUE = "_RTCRtpReceiver__decoder_queue"
_THREAD = "_RTCRtpReceiver__decoder_thread"
_JITTER = "_RTCRtpReceiver__jitter_buffer"
_TIMESTAMPS = "_RTCRtpReceiver__timestamp_mapper"


MAX_FRAMES = 100  # received frames a track holds for a bot that reads slowly (2 s)


def check_batch(batch: int, max_frames: int) -> None:
    if not 1 <= batch <= max_frames:
        raise ValueError(f"a receive batch must be 1..{max_frames} frames, not {batch}")


class ArrivalClock:
    """When received audio would have arrived had nothing held it up, from its media
    timestamps (a frame's ``pts``: aiortc's receiver maps the sender's RTP timestamps there).

    A frame's arrival is its timestamp plus an offset: the sender's clock to ours, plus the
    least time a frame takes to come. Anything more is delay — the network's jitter, a missing
    packet waited for, this process's loop busy with other speakers — and a speaker's words
    are dated by when they were said, not by when we got round to them, however late that
    was. The offset is the least seen over the last ``window`` seconds (a sender's clock
    drifts against ours, a route changes); timestamps that go back (the sender started its
    clock again) start it afresh. aiortc's receiver never hands back a timestamp that goes
    back (it takes one for a wrap of the 32-bit counter), so a restart there is a leap
    forward, and its lower offset takes over at once. Times are seconds on one clock of the
    caller's (``time.monotonic``)."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        # (arrival, offset) of the arrivals that may yet be the least in the window: offsets
        # increase from the front (the least) to the back (the latest)
        self._least: collections.deque[tuple[float, float]] = collections.deque()
        self._last = -math.inf  # the latest timestamp

    def observe(self, media: float, arrived: float) -> None:
        """A frame whose timestamp is ``media`` arrived at ``arrived``."""
        offset, least = arrived - media, self._least
        if media < self._last:
            least.clear()
        self._last = media
        while least and least[-1][1] >= offset:
            least.pop()
        least.append((arrived, offset))
        while least[0][0] < arrived - self.window:
            least.popleft()

    def due(self, media: float) -> float | None:
        """When a frame whose timestamp is ``media`` came, or would have, without delay; None
        before any arrival was observed."""
        return media + self._least[0][1] if self._least else None


def media_time(frame: av.AudioFrame) -> float | None:
    """A frame's timestamp in seconds, if it has one."""
    if frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base)


class InboundAudio(MediaStreamTrack):
    """A received audio track; the oldest frame goes when ``max_frames`` are waiting.

    With ``batch`` > 1 a waiting ``recv()`` is woken only once that many frames have arrived,
    and the frames are decoded together then: on a shared box most of the cost of a 20 ms
    frame is in touching the decoder's (and the caller's) code and data again each time, not
    in decoding. The price is up to ``batch`` × 20 ms of delay.
    """

    kind = "audio"

    def __init__(self, receiver: RTCRtpReceiver, max_frames: int, batch: int = 1,
                 on_loop: bool = True) -> None:
        super().__init__()
        check_batch(batch, max_frames)
        self.max_frames, self.batch = max_frames, batch
        self.received = 0
        self.dropped = 0
        self.clock = ArrivalClock()  # when frames came, noted as they come (before a read)
        # frames not yet read, in arrival order: decoded ones, then encoded (codec, JitterFrame)
        # pairs (or, without the hook, frames aiortc decoded)
        self._pending: collections.deque[Any] = collections.deque()
        self._decoded: collections.deque[av.AudioFrame] = collections.deque()
        self._ended = False  # no frame will come after those pending
        self._waiters: list[asyncio.Future[None]] = []  # readers waiting (one, as a rule)
        self._decoder: Any = None
        self._codec_name: str | None = None
        self._pump: asyncio.Task[None] | None = None
        # False: aiortc decodes in its thread (what the receive bench compares with)
        self.inline = on_loop and _decode_inline(receiver, self)
        if not self.inline:
            self._pump = asyncio.create_task(self._run(receiver.track), name="inbound-audio-pump")

    def push(self, item: Any) -> None:
        """An encoded ``(codec, frame)`` pair or a decoded frame; None at the end of the stream."""
        if item is None:
            self._ended = True
        else:
            self.received += 1
            self._note_arrival(item)
            if len(self._pending) + len(self._decoded) >= self.max_frames:
                (self._decoded or self._pending).popleft()  # dropped before it is decoded
                self.dropped += 1
            self._pending.append(item)
        if self._waiters and (self._ended or len(self._pending) >= self.batch):
            self._wake()

    def _note_arrival(self, item: Any) -> None:
        if isinstance(item, tuple):
            codec, encoded = item
            media: float | None = encoded.timestamp / codec.clockRate
        else:
            media = media_time(item)
        if media is not None:
            self.clock.observe(media, time.monotonic())

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        while not self._decoded:
            if self._pending and (self._ended or len(self._pending) >= self.batch):
                self._decode_pending()
                continue
            if self._ended:
                self.stop()
                raise MediaStreamError
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if self.readyState != "live":
                raise MediaStreamError
        return self._decoded.popleft()

    async def recv_batch(self) -> list[av.AudioFrame]:
        """The next frame and those that came with it: ``batch`` or more (more if the reader
        was late), fewer only at the end of the stream."""
        frames = [await self.recv()]
        frames.extend(self._decoded)
        self._decoded.clear()
        return frames

    def _decode_pending(self) -> None:
        while self._pending:
            item = self._pending.popleft()
            if not isinstance(item, tuple):
                self._decoded.append(item)
                continue
            codec, encoded = item
            if codec.name != self._codec_name:
                self._decoder, self._codec_name = get_decoder(codec), codec.name
            try:
                self._decoded.extend(self._decoder.decode(encoded))
            except av.FFmpegError as exc:  # one bad packet: the stream goes on
                log.warning("failed to decode a %s frame: %s", codec.name, exc)

    def stop(self) -> None:
        super().stop()
        if self._pump is not None:
            self._pump.cancel()
        self._wake()  # a recv() in progress sees the end

    async def close(self) -> None:
        """Stops the track and waits for the pump to end (``stop`` can't: it is synchronous,
        as aiortc's tracks are)."""
        self.stop()
        await cancel_and_wait(self._pump)

    async def _run(self, source: MediaStreamTrack) -> None:
        try:
            while True:
                self.push(await source.recv())
        except MediaStreamError:
            pass  # the source ended; a cancellation (stop) goes on up, past the end pushed here
        finally:
            self.push(None)


async def recv_batch(track: MediaStreamTrack) -> list[av.AudioFrame]:
    """The next frames that came together: an ``InboundAudio``'s batch, or one frame of any
    other track (a bot under ``bots.testing`` reads the tracks it is given directly)."""
    if isinstance(track, InboundAudio):
        return await track.recv_batch()
    # aiortc types recv() as any media (a Frame or a Packet); audio tracks give AudioFrames
    return [cast(av.AudioFrame, await track.recv())]


class AudioJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer (its ordering, its limits), but a packet is a frame: it is
    complete when it arrives, not when a packet of the next frame does. That holds for audio
    (Opus, G.711: one frame per packet), not video.

    A missing packet is waited for until ``lost_after`` later ones have come (60 ms), then
    given up: the decoder carries on from the next. aiortc's waits until the buffer is full
    (16 packets, 320 ms), and everything said meanwhile reaches the bot that much later."""

    lost_after = 3

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        assert self._origin is not None  # add() has set it
        for _ in range(self.capacity):
            packet = self._packets[self._origin % self.capacity]
            if packet is not None:
                self.remove(1)
                return JitterFrame(data=packet._data,  # type: ignore[attr-defined]
                                   timestamp=packet.timestamp)
            if sum(p is not None for p in self._packets) < self.lost_after:
                return None  # the next one in order may still come
            self.remove(1)  # lost
        return None

    def ready(self) -> list[JitterFrame]:
        """The frames that can go now besides the one ``add`` returned: those a late packet
        was holding up (``add`` gives one frame at a time)."""
        frames = []
        while self._origin is not None and \
                (frame := self._remove_frame(self._origin)) is not None:
            frames.append(frame)
        return frames


class _LoopDecoder:
    """Stands in for the receiver's queue to its decoder thread.

    ``put`` is called on the loop by the receiver with each complete frame (or None when it
    stops); ``get`` is called by the idle decoder thread, and returns once the receiver stops.
    """

    def __init__(self, sink: InboundAudio, buffer: AudioJitterBuffer | None,
                 timestamps: Any = None) -> None:
        self._sink = sink
        self._buffer = buffer
        self._timestamps = timestamps  # the receiver's mapping of RTP timestamps, for those
        self._stopped = threading.Event()

    def put(self, task: tuple[Any, Any] | None, *args: Any, **kwargs: Any) -> None:
        try:
            self._sink.push(task)
            if task is not None and self._buffer is not None:
                codec = task[0]
                for frame in self._buffer.ready():  # as the receiver does with each frame
                    if self._timestamps is not None:
                        frame.timestamp = self._timestamps.map(frame.timestamp)
                    self._sink.push((codec, frame))
        finally:
            if task is None:
                self._stopped.set()  # whatever happened, the receiver's join() returns

    def get(self, *args: Any, **kwargs: Any) -> None:
        self._stopped.wait()  # then aiortc's worker ends its own (unused) track


def _decode_inline(receiver: RTCRtpReceiver, sink: InboundAudio) -> bool:
    if getattr(receiver, _THREAD, True) is not None or not hasattr(receiver, _QUEUE) or \
            isinstance(getattr(receiver, _QUEUE), _LoopDecoder):
        log.info("aiortc's receiver has changed or already started: decoding in its thread")
        return False
    buffer = getattr(receiver, _JITTER, None)
    ours = None
    if isinstance(buffer, JitterBuffer) and getattr(buffer, "_origin", 0) is None:
        ours = AudioJitterBuffer(capacity=buffer.capacity)
        setattr(receiver, _JITTER, ours)
    setattr(receiver, _QUEUE, _LoopDecoder(sink, ours, getattr(receiver, _TIMESTAMPS, None)))
    return True
