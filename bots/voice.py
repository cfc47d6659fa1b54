"""What a bot says into the call: a queue of sounds sent one after another, in real time.

``Voice`` is the one track a speaking bot sends (``LobbyAccess.play`` queues on it). It is
paced by its own clock, 20 ms a frame, silence when nothing plays, so peers hear a steady
stream; a pump task feeds it each queued sound at the pace of real time, whether or not
anyone listens, so a playback ends when its sound has been sent, never later because
nobody was connected. ``speak`` turns text into a ``Sound`` with espeak-ng.
"""

from __future__ import annotations

import asyncio
import collections
import fractions
import inspect
import logging
import shutil
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import av
import numpy as np
from aiortc import MediaStreamTrack

from shared.tasks import cancel_and_wait

from .audio import Converter

log = logging.getLogger(__name__)

RATE = 48_000  # what a bot sends (Opus's clock)
FRAME = 960  # samples in 20 ms
LEAD = 0.06  # how far ahead of real time the pump fills the track (absorbs a busy loop)
MAX_SPEAK_CHARS = 2000


@dataclass(frozen=True)
class Sound:
    """Mono samples (float32 in -1..1, or int16) at ``sample_rate``."""

    samples: np.ndarray
    sample_rate: int = RATE

    def __post_init__(self) -> None:
        if self.samples.ndim != 1:
            raise ValueError("a Sound is mono: a 1-D array of samples")
        if not 8000 <= self.sample_rate <= 192_000:
            raise ValueError(f"sample_rate must be within 8000..192000, not {self.sample_rate}")

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


# what ``play`` takes: a file, a Sound, mono samples at 48 kHz, or frames/blocks as they come
Source: TypeAlias = "str | Path | Sound | np.ndarray | AsyncIterable[np.ndarray | av.AudioFrame]"
# or something that gives one when awaited (``speak(text)``): it starts at once, and its sound
# keeps its place in the queue
Playable: TypeAlias = "Source | Awaitable[Source]"


class Playback:
    """One queued sound. ``await playback`` returns once it has been sent (or stopped), and
    raises what made it fail (a file that can't be decoded); ``stop()`` ends it now.
    ``interruptible``: a person who starts talking stops it (a bot with ``barge_in``), and
    then ``interrupted`` is true."""

    def __init__(self, source: Playable, label: str, interruptible: bool = False) -> None:
        # an awaitable runs from now, while what is ahead of it plays
        self.source: Source | asyncio.Future[Source] = (
            asyncio.ensure_future(source) if inspect.isawaitable(source) else source)
        self.label = label
        self.interruptible = interruptible
        self.sent = 0.0  # seconds of it sent so far
        self.stopped = False
        self.interrupted = False
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def __await__(self) -> Generator[Any, None, None]:
        return asyncio.shield(self._done).__await__()

    def done(self) -> bool:
        return self._done.done()

    def stop(self) -> None:
        self.stopped = True

    async def sound(self) -> Source:
        """The source, once an awaitable one has given it."""
        if isinstance(self.source, asyncio.Future):
            return await self.source
        return self.source

    def _finish(self, error: BaseException | None = None) -> None:
        if isinstance(self.source, asyncio.Future) and not self.source.done():
            self.source.cancel()  # stopped before its turn: what would make it is not needed
        if not self._done.done():
            if error is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(error)
                self._done.exception()  # a playback nobody awaits must not log "never retrieved"


class Voice(MediaStreamTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: collections.deque[Playback] = collections.deque()
        # frames ready to go out; with nobody reading, the oldest go at the pace they came
        self._ready: collections.deque[np.ndarray] = collections.deque(maxlen=10)
        self._pump: asyncio.Task[None] | None = None
        self._start: float | None = None
        self._pts = 0

    def play(self, source: Playable, label: str = "", interruptible: bool = False) -> Playback:
        playback = Playback(source, label or _label(source), interruptible)
        self._queue.append(playback)
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._run(), name="voice")
        return playback

    def stop_all(self) -> None:
        """Stops what plays and drops everything queued (each of them returns, stopped)."""
        for playback in self._queue:
            playback.stop()
        self._ready.clear()

    def interrupt(self) -> None:
        """Someone started talking: stops the interruptible playbacks, playing or queued."""
        for playback in self._queue:
            if playback.interruptible and not playback.stopped:
                playback.stop()
                playback.interrupted = True
        if self._queue and self._queue[0].interrupted:
            self._ready.clear()  # what it had ready goes unsaid

    async def close(self) -> None:
        self.stop_all()
        await cancel_and_wait(self._pump)
        for playback in self._queue:
            playback._finish()
            if isinstance(playback.source, asyncio.Future):
                await cancel_and_wait(playback.source)
        self._queue.clear()
        self.stop()

    async def recv(self) -> av.AudioFrame:
        now = time.monotonic()
        if self._start is None or now - (self._start + self._pts / RATE) > 0.1:
            self._start = now - self._pts / RATE  # first, or read again after a gap: no burst
        wait = self._start + self._pts / RATE - now
        if wait > 0:
            await asyncio.sleep(wait)
        frame = block_frame(self._ready.popleft() if self._ready else np.zeros(FRAME, np.float32),
                            self._pts)
        self._pts += FRAME
        return frame

    async def _run(self) -> None:
        while self._queue:
            playback = self._queue[0]
            try:
                await self._send(playback)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad source fails its playback only
                log.warning("could not play %s: %s: %s", playback.label, type(exc).__name__, exc)
                playback._finish(exc)
            finally:
                if self._queue and self._queue[0] is playback:
                    self._queue.popleft()
            playback._finish()

    async def _send(self, playback: Playback) -> None:
        source = await playback.sound()
        due = time.monotonic()
        async for chunk in chunks(source):
            if playback.stopped:
                return
            wait = due - LEAD - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            due = max(due, time.monotonic() - LEAD) + FRAME / RATE
            self._ready.append(chunk)
            playback.sent += FRAME / RATE
        wait = due - time.monotonic()  # the last frame leaves within LEAD of now
        if wait > 0 and not playback.stopped:
            await asyncio.sleep(wait)


def block_frame(block: np.ndarray, pts: int) -> av.AudioFrame:
    """A 48 kHz mono float32 block as the frame a track gives, at ``pts`` samples."""
    frame = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
    frame.sample_rate, frame.pts = RATE, pts
    frame.time_base = fractions.Fraction(1, RATE)
    return frame


def _label(source: Playable) -> str:
    if isinstance(source, (str, Path)):
        return Path(source).name
    if isinstance(source, Sound):
        return f"a sound of {source.duration:.1f} s"
    return type(source).__name__


async def chunks(source: Source) -> AsyncIterator[np.ndarray]:
    """``source`` as 20 ms blocks of 48 kHz mono float32 samples, the last one padded."""
    converter = Converter("flt", "mono", RATE)
    held = np.zeros(0, np.float32)
    async for frame in _frames(source):
        for out in converter.convert(frame):
            held = np.concatenate([held, out.to_ndarray().reshape(-1)])
        while len(held) >= FRAME:
            yield held[:FRAME]
            held = held[FRAME:]
    if len(held):
        yield np.concatenate([held, np.zeros(FRAME - len(held), np.float32)])


async def _frames(source: Source) -> AsyncIterator[av.AudioFrame]:
    if isinstance(source, (str, Path)):
        for frame in await asyncio.to_thread(_decode, Path(source)):
            yield frame
    elif isinstance(source, (Sound, np.ndarray)):
        sound = source if isinstance(source, Sound) else Sound(source)
        yield _frame(sound.samples, sound.sample_rate)
    else:
        async for item in source:
            yield item if isinstance(item, av.AudioFrame) else _frame(item, RATE)


def _frame(samples: np.ndarray, rate: int) -> av.AudioFrame:
    samples = np.asarray(samples).reshape(-1)
    if samples.dtype == np.int16:
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
    else:
        frame = av.AudioFrame.from_ndarray(samples.astype(np.float32)[None, :], format="flt",
                                           layout="mono")
    frame.sample_rate = rate
    return frame


def _decode(path: Path) -> list[av.AudioFrame]:
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(audio=0):
            frame.pts = None
            frames.append(frame)
        return frames


class SpeechUnavailable(RuntimeError):
    """espeak-ng is not installed (Debian: ``apt-get install espeak-ng``)."""


async def speak(text: str, voice: str = "en-us", words_per_minute: int = 165) -> Sound:
    """``text`` spoken by espeak-ng, as a ``Sound`` (22.05 kHz). The text goes to espeak-ng's
    standard input, so nothing in it is read as an option; at most 2000 characters."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise SpeechUnavailable("espeak-ng is not installed (apt-get install espeak-ng)")
    if not 80 <= words_per_minute <= 450:
        raise ValueError("words_per_minute must be within 80..450")
    proc = await asyncio.create_subprocess_exec(
        binary, "-v", voice, "-s", str(words_per_minute), "--stdout",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    wav, err = await proc.communicate(text[:MAX_SPEAK_CHARS].encode())
    if proc.returncode != 0 or len(wav) < 44:
        raise SpeechUnavailable(f"espeak-ng failed: {err.decode(errors='replace').strip()}")
    return _read_wav(wav)


def _read_wav(data: bytes) -> Sound:
    """espeak-ng's WAV (16-bit mono); its header gives the rate. Read by hand: written to a
    pipe, its lengths are not filled in."""
    rate = int.from_bytes(data[24:28], "little")
    start = data.find(b"data") + 8
    samples = np.frombuffer(data[start:start + (len(data) - start) // 2 * 2], dtype=np.int16)
    return Sound(samples.astype(np.float32) / 32768.0, rate)
