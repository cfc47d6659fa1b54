"""Voice activity detection and utterance segmentation, one ``Segmenter`` per speaker.

Silero VAD (the ONNX model faster-whisper ships) scores every 32 ms of 16 kHz audio. The
segmenter turns scores into utterances with hysteresis: speech starts when a chunk scores over
``threshold``; it ends after ``min_silence_ms`` under ``neg_threshold``; an utterance longer
than ``max_utterance_s`` is cut (and the next one starts at once); one shorter than
``min_speech_ms`` is noise and is dropped. Silence never reaches Whisper.

As soon as a pause has lasted ``post_roll_ms``, the segmenter offers the utterance as
*tentative* (``final=False``): a caller may start recognizing it while the rest of the silence
confirms the end. The confirmed utterance has the same bounds unless speech resumed.

While an utterance goes on, the segmenter also says whether its speaker has just gone quiet
(``fading``: the latest 10 ms under a fifth of their utterances' level). That is no pause yet —
a word's own quiet stretches do it too — but it comes some 50 ms before the detector can say
so, which is when a reader waiting on the end should stop gathering frames.

Whisper gets each utterance with ``pre_roll_ms`` before and ``post_roll_ms`` after its speech;
the speech itself (what a transcript's times say) is where the detector heard it, refined to
10 ms on the audio's loudness: the detector is a chunk or two late on a soft onset.
"""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import dataclass, field

import numpy as np

from .audio import SPEECH_RATE, SampleBuffer

CHUNK = 512  # samples Silero scores at a time at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous chunk it sees as context
EDGE_FRAME = 160  # 10 ms: the grain of a transcript's start and end
QUIET_RMS = 1e-3  # a 10 ms frame this quiet is silence whatever the speaker's level (-60 dBFS)
# ``fading``: the latest 10 ms under this share of the speaker's level, the median of the last
# ``LEVEL_FRAMES`` (3 s) 10 ms frames of their utterances over ``QUIET_RMS``. On the held-out
# sentences, clean and in noise, reading frames one at a time from then on found 110 of 110
# pauses within 3 ms (mean) of reading every frame singly, with a quarter more reads than five
# at a time (which found them 43 ms later). A pause's frames count: left out, the speaker is
# "quiet" more often, for more CPU and a later p95 live (bench/README.md, session 12)
FADE_SHARE = 0.2
LEVEL_FRAMES = 300


def _loudness(audio: np.ndarray) -> np.ndarray:
    """RMS of each 10 ms frame."""
    n = len(audio) // EDGE_FRAME
    frames = audio[:n * EDGE_FRAME].reshape(n, EDGE_FRAME).astype(np.float64)
    return np.sqrt((frames ** 2).mean(axis=1))


def _over_background(background: np.ndarray) -> float:
    """How loud a 10 ms frame must be to be sound: well over the quiet frames' level."""
    noise = float(np.percentile(background, 20)) if len(background) else 0.0
    return max(QUIET_RMS, 4 * noise)


def speech_onset(before: np.ndarray, quiet_frames: int = 5) -> int:
    """Where speech starts in ``before``, the audio that ends where the detector first heard
    speech: back over the frames louder than the background (its first half) until 50 ms of
    quiet. The detector starts up to a chunk or two late (a soft "h", a breath)."""
    loud = _loudness(before)
    level = _over_background(loud[:max(1, len(loud) // 2)])
    start, quiet = len(loud), 0
    for f in range(len(loud) - 1, -1, -1):
        if loud[f] > level:
            start, quiet = f, 0
        else:
            quiet += 1
            if quiet >= quiet_frames:
                break
    return len(before) - (len(loud) - start) * EDGE_FRAME


def speech_offset(around: np.ndarray, guess: int, quiet_frames: int = 10) -> int:
    """Where speech ends in ``around``, given that the detector heard the pause begin at
    ``guess`` (Silero may call a fading syllable silence, or a pause's first chunk speech):
    the end of the last frame louder than the background (its last 100 ms) before 100 ms of
    quiet past ``guess``."""
    loud = _loudness(around)
    level = _over_background(loud[-10:])
    end, quiet = 0, 0
    for f in range(len(loud)):
        if loud[f] > level:
            end, quiet = f + 1, 0
        else:
            quiet += 1
            if quiet >= quiet_frames and f * EDGE_FRAME >= guess:
                break
    return end * EDGE_FRAME


class SileroVad:
    """The shared ONNX session; each stream keeps its own ``VadState``."""

    _instance: SileroVad | None = None
    _lock = threading.Lock()

    def __init__(self, path: str | None = None) -> None:
        # imported where the model is loaded, so that importing the segmenter stays cheap
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
    post_roll_ms: int = 32
    max_utterance_s: float = 15.0

    def __post_init__(self) -> None:
        if not 0 < self.neg_threshold <= self.threshold < 1:
            raise ValueError("need 0 < neg_threshold <= threshold < 1")
        if self.min_silence_ms < 32 or self.max_utterance_s < 1:
            raise ValueError("min_silence_ms must be >= 32 and max_utterance_s >= 1")


@dataclass(frozen=True, eq=False)  # compared by identity: it holds an array
class Utterance:
    """A stretch of speech: samples ``[start, end)`` of the speaker's stream, the speech itself
    with the pre- and post-roll Whisper gets around it; the speech alone is
    ``[speech_start, speech_end)``, to 10 ms (the times a transcript gives)."""

    index: int
    start: int
    end: int
    audio: np.ndarray = field(repr=False)
    forced: bool  # cut at max_utterance_s rather than ended by silence
    final: bool = True  # False: a pause that may still turn out to be mid-utterance
    speech_start: int = -1  # -1: as ``start``
    speech_end: int = -1  # -1: as ``end``

    def __post_init__(self) -> None:
        if self.speech_start < 0:
            object.__setattr__(self, "speech_start", self.start)
        if self.speech_end < 0:
            object.__setattr__(self, "speech_end", self.end)
        if not self.start <= self.speech_start <= self.speech_end <= self.end:
            raise ValueError("the speech must lie within the utterance")

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
        # where the current utterance's audio starts (with its pre-roll), and where its speech
        # starts (Utterance.speech_start: the detector's onset, refined on loudness)
        self.speech_start: int | None = None
        self.voice_start: int | None = None
        self._silence_since: int | None = None
        self._offered = False  # a tentative end was offered for the current pause
        self._count = 0
        # the loudness of the 10 ms frames of the speaker's recent utterances (their level),
        # and whether the latest 10 ms fed was under FADE_SHARE of it
        self._levels: collections.deque[float] = collections.deque(maxlen=LEVEL_FRAMES)
        self._quiet = False

    @property
    def in_speech(self) -> bool:
        return self.speech_start is not None

    @property
    def pausing(self) -> bool:
        """In an utterance, and silent since a chunk or more: its end is being decided."""
        return self.speech_start is not None and self._silence_since is not None

    @property
    def fading(self) -> bool:
        """In an utterance, and the latest 10 ms is quiet for this speaker (``FADE_SHARE`` of
        their level): the speech may be ending, before the detector can tell."""
        return self.speech_start is not None and self._quiet

    @property
    def pause_start(self) -> int | None:
        """Where the current pause began (a sample index), while ``pausing``."""
        return self._silence_since if self.speech_start is not None else None

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
        if self.speech_start is not None and len(samples) >= EDGE_FRAME:
            # frames that end where the samples do: the last one is the latest 10 ms
            loud = _loudness(samples[len(samples) % EDGE_FRAME:])
            self._levels.extend(loud[loud > QUIET_RMS].tolist())
            self._quiet = bool(self._levels) and \
                float(loud[-1]) < FADE_SHARE * float(np.median(self._levels))
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
                    before = self.buffer.slice(self.speech_start, chunk_start)
                    self.voice_start = self.speech_start + speech_onset(before)
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
                done.extend(self._utterance(self._silence_since + post_roll, final=False,
                                            speech_end=self._silence_since))
            if silent_for >= cfg.min_silence_ms * SPEECH_RATE // 1000:
                assert self._silence_since is not None
                end = self._silence_since + cfg.post_roll_ms * SPEECH_RATE // 1000
                done.extend(self._finish(end, forced=False, speech_end=self._silence_since))
            elif self.scored - self.speech_start >= cfg.max_utterance_s * SPEECH_RATE:
                done.extend(self._finish(self.scored, forced=True, speech_end=self.scored))
                # the speaker goes on: a new utterance
                self.speech_start = self.voice_start = self.scored
        return done

    def _utterance(self, end: int, *, final: bool, speech_end: int,
                   forced: bool = False) -> list[Utterance]:
        assert self.speech_start is not None and self.voice_start is not None
        start = self.speech_start
        voiced = end - start - self.config.post_roll_ms * SPEECH_RATE // 1000
        if not forced and voiced < self.config.min_speech_ms * SPEECH_RATE // 1000:
            return []  # a click or a cough: not worth a transcript
        if not forced:  # the pause as heard, to the 10 ms; nothing past the utterance's end
            lo = max(self.voice_start, speech_end - 1600)
            around = self.buffer.slice(lo, self.scored)
            speech_end = lo + speech_offset(around, speech_end - lo)
            speech_end = min(end, max(self.voice_start, speech_end))
        return [Utterance(self._count, start, end, self.buffer.slice(start, end), forced, final,
                          speech_start=self.voice_start, speech_end=speech_end)]

    def _finish(self, end: int, forced: bool, speech_end: int) -> list[Utterance]:
        done = self._utterance(end, final=True, forced=forced, speech_end=speech_end)
        self.speech_start, self.voice_start = None, None
        self._silence_since, self._offered = None, False
        self._quiet = False
        if done:
            self._count += 1
        return done
