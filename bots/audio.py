"""Audio conversion for bots: PyAV resampling to a fixed format, and a bounded sample buffer."""

from __future__ import annotations

import av
import numpy as np

SPEECH_RATE = 16_000  # what Whisper and Silero take


class Converter:
    """Converts frames of any format to one target format.

    A PyAV resampler is fixed to its first input's format, and a track may change format
    (e.g. silence, then a file): one resampler per input format.
    """

    def __init__(self, format: str, layout: str, rate: int) -> None:
        self.format, self.layout, self.rate = format, layout, rate
        self._resamplers: dict[tuple[str, str, int], av.AudioResampler] = {}

    def convert(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        resampler = self._resamplers.get(key)
        if resampler is None:
            resampler = self._resamplers[key] = av.AudioResampler(
                format=self.format, layout=self.layout, rate=self.rate)
        return resampler.resample(frame)


# a stereo frame's two channels, summed at this gain each (PyAV's downmix), averaged
HALF_POWER = float(np.sqrt(0.5))


class SpeechResampler:
    """aiortc frames (48 kHz Opus-decoded, mono or stereo) → 16 kHz mono float32 samples, at
    the level the speaker sent them: the two channels of a stereo frame are averaged.

    A WebRTC speaker's audio is mono, in both channels: Opus decodes a mono stream (a
    browser's microphone) into both, and a bot sends the same in both (``bots/mesh.py``
    ``OutgoingAudio``). PyAV's own downmix adds the channels at -3 dB each, which put every
    browser's speech 3 dB above what it sent (bench/README.md, session 14)."""

    def __init__(self) -> None:
        self._converter = Converter("flt", "mono", SPEECH_RATE)

    def __call__(self, frame: av.AudioFrame) -> np.ndarray:
        frame.pts = None  # we keep our own sample clock; input timestamps may jump
        stereo = len(frame.layout.channels) == 2
        out = [f.to_ndarray().reshape(-1) for f in self._converter.convert(frame)]
        if not out:
            return np.zeros(0, dtype=np.float32)
        samples = out[0] if len(out) == 1 else np.concatenate(out)
        if stereo:
            samples = np.multiply(samples, HALF_POWER, dtype=np.float32)
        return samples


class SampleBuffer:
    """A bounded window of a stream's samples, addressed by absolute sample index.

    Appends go into spare room at the end of one array; the window is moved to the front only
    when that room runs out, so an append costs what it adds, not what is held.
    """

    def __init__(self, max_samples: int) -> None:
        if max_samples < 1:
            raise ValueError("max_samples must be at least 1")
        self.max_samples = max_samples
        self._data = np.zeros(max_samples + max(max_samples // 2, 16_000), dtype=np.float32)
        self._lo = self._hi = 0  # the window is _data[_lo:_hi]
        self.start = 0  # absolute index of the window's first sample

    @property
    def end(self) -> int:
        return self.start + self._hi - self._lo

    def append(self, samples: np.ndarray) -> None:
        if len(samples) >= self.max_samples:
            self.start += self._hi - self._lo + len(samples) - self.max_samples
            self._data[:self.max_samples] = samples[-self.max_samples:]
            self._lo, self._hi = 0, self.max_samples
            return
        excess = self._hi - self._lo + len(samples) - self.max_samples
        if excess > 0:
            self._lo += excess
            self.start += excess
        if self._hi + len(samples) > len(self._data):
            held = self._hi - self._lo
            self._data[:held] = self._data[self._lo:self._hi]
            self._lo, self._hi = 0, held
        self._data[self._hi:self._hi + len(samples)] = samples
        self._hi += len(samples)

    def slice(self, begin: int, end: int | None = None) -> np.ndarray:
        """Samples ``[begin, end)`` (clipped to what is still held), as a copy."""
        lo = max(begin, self.start) - self.start
        hi = (self.end if end is None else min(end, self.end)) - self.start
        return self._data[self._lo + lo:self._lo + max(lo, hi)].copy()

    def discard_before(self, index: int) -> None:
        cut = min(max(0, index - self.start), self._hi - self._lo)
        self._lo += cut
        self.start += cut
