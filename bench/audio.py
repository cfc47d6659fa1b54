"""16 kHz mono WAV files as the benchmarks read and write them, and where their speech is."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

RATE = 16000


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768


def write_wav(path: Path, samples: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def speech_spans(samples: np.ndarray, min_gap_s: float = 0.6,
                 frame_s: float = 0.02) -> list[tuple[float, float]]:
    """(start, end) seconds of the stretches of sound in ``samples`` that at least
    ``min_gap_s`` of silence separates: the sentences of a fixture made with pauses. Under
    noise (``english_hard.wav``), sound is what stands well above the noise floor (the
    quietest tenth of the frames)."""
    frame = int(frame_s * RATE)
    frames = samples[:len(samples) // frame * frame].reshape(-1, frame)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = rms > max(1e-3, 3 * float(np.percentile(rms, 10)))
    spans: list[tuple[float, float]] = []
    for i in np.flatnonzero(loud):
        at = i * frame_s
        if spans and at - spans[-1][1] < min_gap_s:
            spans[-1] = (spans[-1][0], at + frame_s)
        else:
            spans.append((at, at + frame_s))
    return spans
