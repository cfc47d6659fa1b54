"""Shared helpers for speech tests: fixture texts, WER, and test signals."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import jiwer
import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

DATA = Path(__file__).resolve().parent / "data"
FIXTURES = json.loads((DATA / "fixtures.json").read_text())


_normalize = EnglishTextNormalizer()


def words(text: str) -> str:
    """What WER is computed on: Whisper's English normalizer (the one its WER figures use:
    lower case, no punctuation, "nine" and "9" alike, British and American spellings alike)."""
    return " ".join(_normalize(text).split())


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(words(reference), words(hypothesis)))


def reference(fixture: str) -> str:
    return " ".join(FIXTURES[fixture]["utterances"])


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def noise(seconds: float, level: float = 0.05, seed: int = 7) -> np.ndarray:
    """Pink-ish noise: white noise through a one-pole low-pass, like a fan or a room."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(int(seconds * 16000)).astype(np.float32)
    out = np.empty_like(white)
    acc = 0.0
    for i, x in enumerate(white):  # a few seconds: fast enough in pure Python
        acc = 0.97 * acc + 0.03 * x
        out[i] = acc
    return (out / np.abs(out).max() * level + white * level * 0.2).astype(np.float32)
