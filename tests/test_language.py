"""Languages: the per-utterance decision (bots/language.py, no I/O), Whisper base reading the
multilingual fixture one sentence at a time, and one speaker switching between languages
through the real WebRTC path.

``multilingual.wav`` (tests/data/fixtures.json) interleaves English, Spanish, German and
Italian sentences, each one that faster-whisper base, offline, detects correctly on its own
(the probabilities are recorded with the fixture), and two short replies ("Sí, claro.",
"Ja, genau.") that detection alone gets wrong: they keep the speaker's language.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from bench.audio import read_wav
from bench.languages import FIXTURE, assign, fixture_spec, normalized, sentences
from bench.transcribe import add_bot, providers_ready
from bots.language import LanguagePolicy
from bots.scheduler import Scheduler
from bots.stt import STT, Recognition
from shared import protocol as p
from signaling.testing import ROOT

from .conftest import Clients
from .helpers import shown
from .speech import DATA

POLICY = LanguagePolicy()


def probs(**p: float) -> dict[str, float]:
    return {"en": 0.0, "es": 0.0, "de": 0.0, **p}


def test_a_sure_first_look_decides() -> None:
    # the speaker's language, sure: one reading, no second look
    assert POLICY.first_look("en", probs(en=0.9, es=0.05), 4.0) == ("en",)
    # a speaker's first utterance takes what detection is sure of
    assert POLICY.first_look(None, probs(es=0.85), 4.0) == ("es",)
    # another language, sure: read both ways (the likelier reading decides)
    assert POLICY.first_look("en", probs(es=0.95), 4.0) == ("es", "en")
    # anything unsure looks again
    assert POLICY.first_look("en", probs(es=0.7, en=0.2), 4.0) is None
    assert POLICY.first_look("en", probs(en=0.6, de=0.3), 4.0) is None
    assert POLICY.first_look(None, probs(de=0.5, en=0.4), 4.0) is None


def test_a_short_utterance_keeps_the_speakers_language() -> None:
    assert POLICY.first_look("es", probs(en=0.45, es=0.11), 1.3) == ("es",)
    assert POLICY.first_look("es", probs(en=0.99), 1.49) == ("es",)
    assert POLICY.at_a_glance("de", probs(en=0.95), 1.0) == "de"
    assert POLICY.first_look("es", probs(en=0.99), 1.5) == ("en", "es")  # long enough
    assert POLICY.first_look(None, probs(en=0.9), 0.5) == ("en",)  # nothing to keep yet


def test_the_second_look_reads_a_switch_both_ways() -> None:
    assert POLICY.second_look("en", probs(de=0.76, en=0.1)) == ("de", "en")
    assert POLICY.second_look("en", probs(en=0.5, de=0.4)) == ("en",)
    assert POLICY.second_look(None, probs(de=0.3, en=0.2)) == ("de",)


def test_the_second_look_averages_its_looks() -> None:
    # one wild look (Whisper's detection swings on where the audio starts) is outvoted
    looks = [probs(th=0.37, it=0.07), probs(it=0.9), probs(it=0.8, es=0.1), probs(la=0.23)]
    mean = POLICY.average(looks)
    assert max(mean, key=lambda lang: mean[lang]) == "it"
    assert mean["it"] == pytest.approx((0.07 + 0.9 + 0.8) / 4)
    assert sum(mean.values()) == pytest.approx((0.37 + 0.07 + 0.9 + 0.9 + 0.23) / 4)
    with pytest.raises(ValueError):
        POLICY.average([])


def test_a_final_sets_the_speakers_language_unless_an_unsure_first_guess() -> None:
    assert POLICY.after_final("en", "de", 0.3) == "de"  # the readings decided: it sticks
    assert POLICY.after_final(None, "es", 0.9) == "es"
    assert POLICY.after_final(None, "en", 0.24) is None  # "Guten Morgen," read as English


def test_interims_take_one_look() -> None:
    assert POLICY.at_a_glance("en", probs(es=0.9), 3.0) == "es"  # sure: show it in Spanish
    assert POLICY.at_a_glance("en", probs(es=0.6, en=0.3), 3.0) == "en"  # unsure: sticky
    assert POLICY.at_a_glance(None, probs(es=0.4, en=0.3), 3.0) == "es"


def test_the_policy_checks_its_settings() -> None:
    with pytest.raises(ValueError, match="stay"):
        LanguagePolicy(stay=1.5)
    with pytest.raises(ValueError, match="min_switch_s"):
        LanguagePolicy(min_switch_s=-1)


class Recorder(STT):
    """Says every utterance is German, and records the language it was told."""

    def __init__(self) -> None:
        self.told: list[str | None] = []

    def recognize(self, audio: np.ndarray, *, final: bool,
                  language: str | None = None) -> Recognition:
        self.told.append(language)
        return Recognition(text="Ja", language="de", no_speech_prob=0.0, avg_logprob=0.0,
                           audio_s=len(audio) / 16000, inference_s=0.0)


async def test_the_next_recognition_knows_what_the_last_final_decided() -> None:
    """Two finals of one speaker queued at once: the second is told the language the first
    decided (a speculative final is queued before the one before it is done)."""
    stt, heard = Recorder(), {"language": "en"}
    sched = Scheduler(workers=1)

    def learn(future: asyncio.Future[Recognition | None]) -> None:
        result = future.result()
        assert result is not None
        heard["language"] = result.language

    first = sched.submit(stt, "a", np.zeros(160), final=True, language=lambda: heard["language"])
    first.add_done_callback(learn)
    second = sched.submit(stt, "a", np.zeros(160), final=True,
                          language=lambda: heard["language"])
    await asyncio.gather(first, second)
    assert stt.told == ["en", "de"]
    await sched.close()


# --- the fixture, offline and live ------------------------------------------------------------


def overlap(text: str, said: str, language: str) -> float:
    """The share of the words said that the text has: a translation has next to none."""
    heard, ref = set(normalized(text, language).split()), normalized(said, language).split()
    return sum(w in heard for w in ref) / len(ref)


def test_the_fixture_is_what_base_detects_offline() -> None:
    """Every sentence of 1.5 s or more was detected correctly by base offline (recorded by
    ``python -m bench.languages --record``); the short replies were not."""
    spoken = sentences()
    recorded = [u["offline_language_prob"] for u in fixture_spec()["utterances"]]
    assert len({s.language for s in spoken}) >= 3
    long = [prob for prob, s in zip(recorded, spoken) if s.end - s.start >= 1.5]
    short = [prob for prob, s in zip(recorded, spoken) if s.end - s.start < 1.5]
    assert len(long) >= 10 and min(long) >= 0.7
    assert short and max(short) < 0.5


@pytest.mark.parametrize("shift", [-0.075, 0.025])
def test_a_sentence_is_detected_wherever_its_cut_starts(shift: float) -> None:
    """The Italian sentence, cut where base's detection of it swings to Thai (p=0.14 to 0.37):
    the second look still finds Italian, and the final reads it as Italian."""
    from bots.stt import WhisperSTT, load_whisper

    spoken = sentences()
    i = next(i for i, s in enumerate(spoken) if s.text.startswith("Domani mattina"))
    s, before = spoken[i], spoken[i - 1]
    samples = read_wav(DATA / FIXTURE)
    audio = samples[int((s.start - 0.15 + shift) * 16000):int((s.end + 0.25) * 16000)]
    stt = WhisperSTT(load_whisper("base"), name="base", language="auto", beam_size=5,
                     min_window_s=10.0)
    first = stt._detect(stt._encode(audio, stt._frames(len(audio) / 16000)))
    assert max(first.values()) < POLICY.stay  # unsure: the case for a second look
    result = stt.recognize(audio, final=True, language=before.language)
    assert (result.language, before.language) == ("it", "de")
    assert overlap(result.text, s.text, "it") >= 0.3, result.text


@pytest.mark.timeout(420)
@pytest.mark.backends("sqlite")  # the store plays no part here
async def test_a_speaker_switching_languages_is_captioned_in_each(
        server: TestServer, clients: Clients, provider_process: Any) -> None:
    url = str(server.make_url("/"))
    provider_process(url, capacity=4)
    await providers_ready(url, {"transcriber", "player"})
    host, inbox = await clients.new("Host")
    lobby = (await host.join(lobby_name="polyglot")).lobby.id
    assert host.config.token is not None
    async with aiohttp.ClientSession() as http:
        await add_bot(http, url, host.config.token, lobby, "transcriber", model="base",
                      language="auto")
        await inbox.wait_for(p.BotStatus, lambda m: m.kind == "transcriber" and
                             m.status == "live", timeout=120)
        await add_bot(http, url, host.config.token, lobby, "player", "Polly",
                      path=str(DATA / FIXTURE), delay=0.3)
        await inbox.wait_for(p.BotStatus, lambda m: m.name == "Polly" and
                             m.detail.startswith("finished"), timeout=240)
    spoken = sentences()

    def finals() -> list[p.Transcript]:  # as a reader shows them
        return sorted(shown([t for t in inbox.of(p.Transcript, final=True)
                             if t.speaker_name == "Polly"]), key=lambda t: t.start)

    # the last sentence's final, however long the queue behind it
    deadline = asyncio.get_running_loop().time() + 120
    while len(spoken) - 1 not in assign([(t.start, t.end) for t in finals()], spoken):
        assert asyncio.get_running_loop().time() < deadline, [t.text for t in finals()]
        await asyncio.sleep(0.5)
    heard = finals()
    where = assign([(t.start, t.end) for t in heard], spoken)
    report = [(spoken[i].language if i is not None else None, t.language, t.text)
              for i, t in zip(where, heard)]
    print("\n".join(map(str, report)))
    assert None not in where, report
    assert set(where) == set(range(len(spoken))), report  # every sentence was heard
    right = sum(said == lang for said, lang, _ in report)
    assert right >= 0.9 * len(report), report
    for i, t in zip(where, heard):
        s = spoken[i]
        if s.end - s.start < 1.5:  # a short reply keeps the language before it
            assert t.language == spoken[i - 1].language, report
        else:  # transcribed, in the language spoken: never a silent translation
            assert overlap(t.text, s.text, s.language) >= 0.3, (s.text, t.text, t.language)


def test_the_docs_name_every_setting_and_the_policys_numbers() -> None:
    from bots.transcriber import TranscriberConfig

    doc = (ROOT / "docs" / "transcriber.md").read_text()
    settings = doc.split("| setting |", 1)[1].split("\n\n", 1)[0]  # the settings' table
    rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", settings, re.MULTILINE))
    assert rows == {f.name: str(f.default) for f in dataclasses.fields(TranscriberConfig)}
    languages = doc.split("## Languages", 1)[1]
    for number in (POLICY.stay, POLICY.min_switch_s, POLICY.first_sticks):
        assert f"{number}" in languages, number
