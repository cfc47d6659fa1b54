"""Which language an utterance is in, when the transcriber detects it (``language: auto``).

A speaker's language sticks: a short utterance keeps it, because Whisper's language detection
is unreliable on a word or two (a Spanish "Sí, claro." reads as English). A longer one whose
detection names another language is read both ways, and the likelier reading wins (Whisper's
own average log-probability): Whisper told the wrong language translates into it, and the
translation is the less likely reading of the sound. So a sentence in another language
switches the speaker's language at once, while an accent that detection takes for another
language does not, and a transcription never silently becomes a translation.

The decision is made here without I/O, from the detector's probabilities; ``WhisperSTT`` does
the looking. The first look is the detection on the encoder pass the utterance needs anyway
(its own window, 10 s or more for a final). The second, only when the first is unsure, is
the average of several looks: the first, Whisper's full 30 s window (the one it was trained
on and the one offline transcription uses), and the utterance with 25 and 50 ms cut off its
start. Whisper's detection can swing on where the audio starts: an Italian sentence read as
Italian with p=0.98 reads as Thai with p=0.14 when cut 25 ms later, so one look can be far
off where their average is not (docs/transcriber.md, "Languages").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["LanguagePolicy"]


def _top(probs: Mapping[str, float]) -> str:
    return max(probs, key=lambda lang: probs[lang])


@dataclass(frozen=True)
class LanguagePolicy:
    stay: float = 0.8  # the first look this sure of a language needs no second
    min_switch_s: float = 1.5  # shorter utterances keep the speaker's language
    first_sticks: float = 0.5  # a speaker's first final sets their language only this sure

    def __post_init__(self) -> None:
        for name in ("stay", "first_sticks"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.min_switch_s < 0:
            raise ValueError("min_switch_s must not be negative")

    def first_look(self, spoken: str | None, probs: Mapping[str, float],
                   audio_s: float) -> tuple[str, ...] | None:
        """The languages to decode a final in after the first look, or None: look again.

        ``spoken`` is the speaker's language so far (None before their first final)."""
        if spoken is not None and audio_s < self.min_switch_s:
            return (spoken,)
        top = _top(probs)
        return self._readings(spoken, top) if probs[top] >= self.stay else None

    def second_look(self, spoken: str | None, probs: Mapping[str, float]) -> tuple[str, ...]:
        """The languages to decode a final in after the second look (``probs``: ``average``
        of its looks)."""
        return self._readings(spoken, _top(probs))

    @staticmethod
    def average(looks: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """The mean probability of each language over several looks."""
        if not looks:
            raise ValueError("no looks to average")
        languages = set().union(*looks)
        return {lang: sum(look.get(lang, 0.0) for look in looks) / len(looks)
                for lang in languages}

    @staticmethod
    def _readings(spoken: str | None, detected: str) -> tuple[str, ...]:
        # a switch is read both ways, and the likelier reading decides: detection alone
        # (even a sure one) sometimes takes an accent for another language
        return (detected,) if spoken in (None, detected) else (detected, spoken)

    def after_final(self, spoken: str | None, language: str, prob: float) -> str | None:
        """The speaker's language once a final was read in ``language``, which detection gave
        ``prob``: it sticks, unless it was an unsure first guess."""
        return None if spoken is None and prob < self.first_sticks else language

    def at_a_glance(self, spoken: str | None, probs: Mapping[str, float],
                    audio_s: float) -> str:
        """The language of an interim: one look, one reading (the final settles it)."""
        readings = self.first_look(spoken, probs, audio_s)
        return readings[0] if readings else spoken or _top(probs)
