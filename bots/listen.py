"""One speaker's audio as a plugin wants it: 16 kHz mono float32 blocks, and when they speak.

``listen(track)`` reads a peer's track (what ``on_track`` gets) and yields ``Heard`` blocks as
they arrive, ``SpeechStarted`` when the speaker starts talking and ``SpeechEnded`` (with the
utterance's audio) when they pause, decided by the same Silero VAD and segmenter the
transcriber uses (``bots.vad``), with the same defaults. No PyAV, no resampling for the
plugin: the samples are at the level the speaker sent (``bots.audio.SpeechResampler``).
Silero scores 32 ms at a time in well under a millisecond, so it runs on the event loop, as
in the transcriber.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .audio import SPEECH_RATE, SpeechResampler
from .inbound import recv_batch
from .vad import Segmenter, VadConfig


@dataclass(frozen=True, eq=False)
class Heard:
    """A block of the speaker's audio as it arrived (16 kHz mono float32, 20 ms or more);
    ``speech``: the speaker is in an utterance as of this block."""

    samples: np.ndarray = field(repr=False)
    speech: bool


@dataclass(frozen=True)
class SpeechStarted:
    """The speaker has been talking for ``min_speech_ms`` (250 ms: a click or a cough shorter
    than that starts nothing); ``at`` is when the speech began, in seconds into their stream
    (as it was read). A ``SpeechEnded`` always follows, unless the track ends first."""

    at: float


@dataclass(frozen=True, eq=False)
class SpeechEnded:
    """The speaker paused (``min_silence_ms``, 300 ms) or talked for ``max_utterance_s``
    (15 s): ``audio`` is the utterance, with up to 192 ms before the speech and 32 ms after
    (empty, rarely: a sound the detector let go after all); ``start`` and ``end`` are the
    speech itself, in seconds into the stream."""

    audio: np.ndarray = field(repr=False)
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


Event = Heard | SpeechStarted | SpeechEnded


async def listen(track: MediaStreamTrack, config: VadConfig | None = None,
                 blocks: bool = True) -> AsyncIterator[Event]:
    """The events of ``track`` until it ends; ``blocks=False`` leaves out ``Heard``.
    ``config`` tunes the detector (``bots.vad.VadConfig``: thresholds, ``min_silence_ms``,
    ``min_speech_ms``, ``max_utterance_s``)."""
    resample, segmenter = SpeechResampler(), Segmenter(config)
    # a sound this long is speech: a click or a cough shorter than it never starts any
    min_speech = segmenter.config.min_speech_ms * SPEECH_RATE // 1000
    speaking = False
    while True:
        try:
            frames = await recv_batch(track)
        except MediaStreamError:
            return
        samples = np.concatenate([resample(frame) for frame in frames])
        onset = segmenter.voice_start
        ended = [u for u in segmenter.feed(samples) if u.final]
        for utterance in ended:
            if not speaking:
                yield SpeechStarted(utterance.speech_start / SPEECH_RATE)
            speaking = False
            yield SpeechEnded(utterance.audio, utterance.speech_start / SPEECH_RATE,
                              utterance.speech_end / SPEECH_RATE)
        if speaking and not ended and not segmenter.in_speech:  # it was dropped after all
            speaking = False
            yield SpeechEnded(np.zeros(0, np.float32), (onset or 0) / SPEECH_RATE,
                              segmenter.scored / SPEECH_RATE)
        voice = segmenter.voice_start
        if not speaking and voice is not None and segmenter.scored - voice >= min_speech:
            speaking = True
            yield SpeechStarted(voice / SPEECH_RATE)
        if blocks:
            yield Heard(samples, segmenter.in_speech)
