"""Voice activity detection and utterance segmentation, one ``Segmenter`` per speaker.

Silero VAD (the ONNX model faster-whisper ships) scores every 32 ms of 16 kHz audio. The
segmenter turns scores into utterances with hysteresis: speech starts when a chunk scores over
``threshold``; it ends after ``min_silence_ms`` under ``neg_threshold``; an utterance longer
than ``max_utterance_s`` is cut (and the next one starts at once); one shorter than
``min_speech_ms`` is noise and is dropped. Silence never reaches Whisper.

As soon as a pause has lasted ``post_roll_ms``, the segmenter offers the utterance as
*tentative* (``final=False``): a caller may start recognizing it while the rest of the silence
confirms the end. The confirmed utterance has the same bounds unless speech resumed.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .audio import SPEECH_RATE, SampleBuffer

CHUNK = 512  # samples Silero scores at a time at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous chunk it sees as context


class SileroVad:
    """The shared ONNX session; each stream keeps its own ``VadState``."""

    _instance: SileroVad | None = None
    _lock = threading.Lock()

    def __init__(self, path: str | None = None) -> None:
        import onnxruntime
        from faster_whisper.utils import get_assets_path

        opts = onnxruntime.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            path or os.path.join(get_assets_path(), "silero_vad_v6.onnx"),
            providers=["CPUExecutionProvider"], sess_options=opts)

    @classmethod
    def shared(cls) -> SileroVad:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def score(self, chunks: np.ndarray, state: VadState) -> np.ndarray:
        """Speech probability of each row of ``chunks`` (shape ``[n, CHUNK]``), in order."""
        context = np.concatenate([state.context[None, :], chunks[:-1, -CONTEXT:]], axis=0)
        batch = np.concatenate([context, chunks], axis=1).astype(np.float32)
        probs, state.h, state.c = self.session.run(None, {"input": batch, "h": state.h,
                                                          "c": state.c})
        state.context = chunks[-1, -CONTEXT:].copy()
        return np.asarray(probs, dtype=np.float32).reshape(-1)


@dataclass
class VadState:
    h: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), np.float32))
    c: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 128), np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, np.float32))


@dataclass(frozen=True)
class VadConfig:
    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_silence_ms: int = 300
    min_speech_ms: int = 250
    pre_roll_ms: int = 192
    post_roll_ms: int = 96
    max_utterance_s: float = 15.0

    def __post_init__(self) -> None:
        if not 0 < self.neg_threshold <= self.threshold < 1:
            raise ValueError("need 0 < neg_threshold <= threshold < 1")
        if self.min_silence_ms < 32 or self.max_utterance_s < 1:
            raise ValueError("min_silence_ms must be >= 32 and max_utterance_s >= 1")


@dataclass(frozen=True, eq=False)  # compared by identity: it holds an array
class Utterance:
    """A stretch of speech: samples ``[start, end)`` of the speaker's stream."""

    index: int
    start: int
    end: int
    audio: np.ndarray = field(repr=False)
    forced: bool  # cut at max_utterance_s rather than ended by silence
    final: bool = True  # False: a pause that may still turn out to be mid-utterance

    @property
    def duration(self) -> float:
        return (self.end - self.start) / SPEECH_RATE


class Segmenter:
    def __init__(self, config: VadConfig | None = None, vad: SileroVad | None = None) -> None:
        self.config = config or VadConfig()
        self.vad = vad or SileroVad.shared()
        self.state = VadState()
        keep = int((self.config.max_utterance_s + 2) * SPEECH_RATE)
        self.buffer = SampleBuffer(keep)
        self._pending = np.zeros(0, dtype=np.float32)  # samples not yet scored
        self.scored = 0  # absolute index up to which audio has been scored
        self.speech_start: int | None = None
        self._silence_since: int | None = None
        self._offered = False  # a tentative end was offered for the current pause
        self._count = 0

    @property
    def in_speech(self) -> bool:
        return self.speech_start is not None

    @property
    def utterance_index(self) -> int:
        """Index of the current (or next) utterance of this speaker."""
        return self._count

    def current_audio(self) -> np.ndarray:
        """The utterance so far (for interim results); empty outside speech."""
        if self.speech_start is None:
            return np.zeros(0, dtype=np.float32)
        return self.buffer.slice(self.speech_start, self.scored)

    def feed(self, samples: np.ndarray) -> list[Utterance]:
        """Adds 16 kHz samples; returns the utterances that ended (or paused) within them."""
        self.buffer.append(samples)
        self._pending = np.concatenate([self._pending, samples])
        n = len(self._pending) // CHUNK
        if n == 0:
            return []
        chunks = self._pending[:n * CHUNK].reshape(n, CHUNK)
        self._pending = self._pending[n * CHUNK:]
        probs = self.vad.score(chunks, self.state)
        done: list[Utterance] = []
        cfg = self.config
        for prob in probs:
            chunk_start = self.scored
            self.scored += CHUNK
            if self.speech_start is None:
                if prob >= cfg.threshold:
                    self.speech_start = max(self.buffer.start,
                                            chunk_start - cfg.pre_roll_ms * SPEECH_RATE // 1000)
                    self._silence_since = None
                else:  # keep only what a pre-roll may need
                    self.buffer.discard_before(self.scored - cfg.pre_roll_ms * SPEECH_RATE // 1000)
                continue
            if prob >= cfg.neg_threshold:
                self._silence_since, self._offered = None, False
            elif self._silence_since is None:
                self._silence_since = chunk_start
            silent_for = self.scored - self._silence_since if self._silence_since else 0
            post_roll = cfg.post_roll_ms * SPEECH_RATE // 1000
            if silent_for >= post_roll and not self._offered and \
                    silent_for < cfg.min_silence_ms * SPEECH_RATE // 1000:
                assert self._silence_since is not None
                self._offered = True
                done.extend(self._utterance(self._silence_since + post_roll, final=False))
            if silent_for >= cfg.min_silence_ms * SPEECH_RATE // 1000:
                assert self._silence_since is not None
                end = self._silence_since + cfg.post_roll_ms * SPEECH_RATE // 1000
                done.extend(self._finish(end, forced=False))
            elif self.scored - self.speech_start >= cfg.max_utterance_s * SPEECH_RATE:
                done.extend(self._finish(self.scored, forced=True))
                self.speech_start = self.scored  # the speaker goes on: a new utterance
        return done

    def _utterance(self, end: int, *, final: bool, forced: bool = False) -> list[Utterance]:
        assert self.speech_start is not None
        start = self.speech_start
        voiced = end - start - self.config.post_roll_ms * SPEECH_RATE // 1000
        if not forced and voiced < self.config.min_speech_ms * SPEECH_RATE // 1000:
            return []  # a click or a cough: not worth a transcript
        return [Utterance(self._count, start, end, self.buffer.slice(start, end), forced, final)]

    def _finish(self, end: int, forced: bool) -> list[Utterance]:
        done = self._utterance(end, final=True, forced=forced)
        self.speech_start, self._silence_since, self._offered = None, None, False
        if done:
            self._count += 1
        return done
