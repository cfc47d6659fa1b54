"""Transcription benchmark: offline faster-whisper vs the live WebRTC path, in one run.

    python -m bench.transcribe            # full run (~10 minutes on 2 cores)
    python -m bench.transcribe --smoke    # seconds: one fixture, one speaker
    python -m bench.transcribe --models tiny.en base small.en   # which models (e) compares

(a) Offline: ``WhisperModel.transcribe`` over each whole file, at its default beam of 5 (the
    quality baseline) and greedy.
(b) Live: a real server and providers; ``player`` bots speak the same files into a lobby and
    the ``transcriber`` bot captions them; a client measures what arrives.
(c) Engines: held-out sentences (not the ones the tests use) cut by the segmenter, one
    utterance at a time: the full 30 s window greedy and with a beam, the transcriber's finals
    (beam 5 in a window of at least 10 s) and its interims (fitted window, greedy).
(d) Concurrency sweep: 1..N players talking continuously at once.
(e) Models side by side (tiny.en and base by default; one not installed is skipped, with a
    note): offline WER and RTF on the English fixtures and on ``english_hard.wav`` (a voice and
    words tiny.en finds hard; also as a bot receives it, through Opus), then each model live,
    alone, on ``english_hard.wav``: WER, TTFS.

Every latency starts where the speech really is, as the player that speaks it knows: a player
says when its first frame went out (its status: ``playing NAME since T``) and sends the file in
real time, so a stretch of speech found in the file at seconds s..e is spoken at T+s..T+e (this
machine's clock, which the observing client shares). Speech is what is audible, over -50 dBFS
(``bench.audio.AUDIBLE_RMS``). Per turn (a stretch of speech):

- TTFS: the arrival of the final that ends the turn minus the turn's true end;
- Pipecat's TTFS (its stt-benchmark's "time to final segment"): the arrival of the turn's last
  final minus the turn's true end (the same unless the turn was split into several finals);
- first interim: the arrival of the turn's first interim minus the turn's true start;
- split: a turn captioned as more than one final, as a reader shows them (a final that a later
  one replaced is not shown: docs/protocol.md, "Replacing finals");
- revised: a turn of which a final was shown and then replaced by a longer one (posted at a
  pause inside it, the sentence went on);
- end error: the `end` of the final that ends the turn minus the turn's true end (where the
  bot dated the end of the speech: docs/protocol.md, "transcript").

A TTFS counts the first final to reach the turn's end: one posted early and later replaced by
one that ends there too was on the screen from then.

"bot clock" is the older measure, arrival minus the final's own ``end`` (what the server's
``voicebot_transcript_ttfs_seconds`` observes), shown alongside. CPU: the transcriber provider
process's CPU seconds per second of speech it heard.
"""

from __future__ import annotations

import argparse
import json
import asyncio
import math
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jiwer
import numpy as np
from whisper_normalizer.english import EnglishTextNormalizer

from bench.audio import AUDIBLE_RMS, read_wav, speech_spans, through_opus, write_wav
from bench.live import KEY, Observer, add_bot, live_lobby, providers_ready, remove_bot, wait_for
from bench.procstats import cpu_seconds
from bench.tables import table
from bench.servers import UNLIMITED
from signaling.testing import ROOT, ProviderProcess, ServerProcess

DATA = ROOT / "tests" / "data"
HARD = "english_hard.wav"  # the model-comparison fixture (tests/test_models.py)
_normalize = EnglishTextNormalizer()

HELD_OUT = [
    "The train to the city leaves at the north platform every morning.",
    "Could you please close the window before the rain starts?",
    "Our team shipped the new release after a long week of testing.",
    "She bought fresh bread and a bag of green apples at the market.",
    "The meeting has been moved to the large room on the second floor.",
    "I think we should ask the customer what they really need.",
    "The children played in the garden until the sun went down.",
    "Let me share my screen so everyone can see the chart.",
    "He forgot his umbrella and got completely wet on the way home.",
    "The budget for next quarter needs to be approved by Friday.",
    "Music was playing softly in the background of the cafe.",
    "Please write down the main points and send them to the group.",
    "We will review the quarterly numbers after lunch on Tuesday.",
    "The printer on the third floor has run out of paper again.",
    "Please remember to lock the door when you leave the office.",
    "My brother drove across the country in an old blue van.",
    "The doctor said I should drink more water and sleep longer.",
    "They are planning a small party for her birthday next week.",
    "The new library opens at nine and closes at six in the evening.",
    "Can you send me the slides from this morning's presentation?",
    "A strong wind knocked over the fence behind the house.",
    "The kitchen smells wonderful when my mother bakes bread.",
    "We need two more volunteers to help with the cleanup on Saturday.",
    "The store was closed because of the holiday, so we went home.",
    "Our flight was delayed by three hours because of the storm.",
    "I usually take the bus to work, but today I walked.",
    "The engineers found a small crack in the bridge last month.",
    "Let's schedule a call with the design team for tomorrow afternoon.",
    "He spent the whole weekend painting the walls of his bedroom.",
    "The price of coffee has gone up again this year.",
    "Turn left at the second light and the hotel is on your right.",
    "The students listened carefully while the teacher explained the problem.",
    "Please keep your phone on silent during the performance.",
    "She has been learning to play the piano for six years.",
    "The garden needs water every day when the weather is hot.",
    "We should finish the report before the end of the week.",
    "The old man fed the birds in the park every afternoon.",
    "Their house is at the end of a quiet street near the river.",
    "I would like a cup of tea with milk and no sugar.",
    "The software update fixed the problem with the login screen.",
    "Most of the guests arrived late because of the traffic.",
    "The museum has a large collection of paintings and old maps.",
]


def words(text: str) -> str:
    return " ".join(_normalize(text).split())  # Whisper's own, as in tests/speech.py


def wer(refs: list[str], hyps: list[str]) -> float:
    return float(jiwer.wer(words(" ".join(refs)), words(" ".join(hyps))))


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


@dataclass
class Truth:
    """Where a player's speech really is: its first frame went out at ``sent_at`` (Unix time),
    the file's stretches of speech are ``spans`` (seconds into it), and a looping player says
    them again every ``period`` seconds."""

    sent_at: float
    spans: list[tuple[float, float]]
    period: float | None = None

    def turn_of(self, start: float, end: float) -> tuple[float, float] | None:
        """The turn (true start, true end) a final of ``start``..``end`` belongs to."""
        middle = (start + end) / 2
        laps = [0]
        if self.period:
            lap = math.floor((middle - self.sent_at) / self.period)
            laps = [lap - 1, lap, lap + 1]
        for lap in laps:
            for s, e in self.spans:
                s, e = self.sent_at + lap * (self.period or 0) + s, \
                    self.sent_at + lap * (self.period or 0) + e
                if s - 0.3 <= middle <= e + 0.3:
                    return s, e
        return None


def truth_of(observer: Observer, name: str, path: Path, loop: bool = False) -> Truth | None:
    sent_at = observer.sent_at(name)
    if sent_at is None:
        return None
    return Truth(sent_at, speech_spans(read_wav(path), floor=AUDIBLE_RMS),
                 duration(path) if loop else None)


def latencies(observer: Observer, truths: dict[str, Truth],
              until: float = math.inf) -> dict[str, Any]:
    """The latencies of the module's docstring, each a list over turns: those whose speech
    ended by ``until`` (a turn cut off when the measurement stopped has only the finals of
    its first part, which came before its true end)."""
    turns: dict[tuple[str, float, float], list[tuple[float, Any]]] = {}
    for at, t in observer.finals:
        truth = truths.get(t.speaker_name)
        turn = truth.turn_of(t.start, t.end) if truth is not None else None
        if turn is not None and turn[1] <= until:
            turns.setdefault((t.speaker_name, *turn), []).append((at, t))
    shown = {id(t) for t in observer.shown()}
    ttfs, pipecat, first, placed = [], [], [], []
    for (_, start, end), finals in turns.items():
        # the first final to reach the turn's end (one posted early may be replaced later by
        # one ending there too: the reader saw the first)
        nearest = min(abs(t.end - end) for _, t in finals)
        closing, closer = min(((at, t) for at, t in finals if abs(t.end - end) <= nearest + 0.1),
                              key=lambda f: f[0])
        ttfs.append(closing - end)
        placed.append(closer.end - end)
        pipecat.append(max(at for at, _ in finals) - end)
        interims = [observer.first_interim[t.segment_id] for _, t in finals
                    if t.segment_id in observer.first_interim]
        if interims:
            first.append(min(interims) - start)
    return {"ttfs": ttfs, "pipecat": pipecat, "first_interim": first, "turns": len(turns),
            "end_error": placed,
            "split": sum(sum(id(t) in shown for _, t in f) > 1 for f in turns.values()),
            "revised": sum(any(id(t) not in shown for _, t in f) for f in turns.values()),
            "bot_clock": observer.ttfs()}


def spread(values: list[float], *qs: int) -> list[str]:
    return [f"{pct(values, q):.3f}" for q in qs]


@dataclass
class Clip:
    path: Path
    utterances: list[str]


def fixture_clips(smoke: bool) -> list[Clip]:
    # the English fixtures the tests use (festival voices); not the other languages, nor the
    # model-comparison sets
    names = ["short.wav"] if smoke else ["short.wav", "speaker_a.wav", "speaker_b.wav"]
    return [fixture(n) for n in names]


def fixture(name: str) -> Clip:
    import json

    spec = json.loads((DATA / "fixtures.json").read_text())
    return Clip(DATA / name, spec[name]["utterances"])


def held_out_clips(workdir: Path, count: int) -> list[Clip]:
    """Synthesizes held-out sentences with festival, alternating two voices."""
    if shutil.which("text2wave") is None or shutil.which("sox") is None:
        raise SystemExit("the held-out set needs festival and sox: "
                         "apt-get install festival festvox-us-slt-hts festvox-kallpc16k sox")
    clips = []
    for i, text in enumerate(HELD_OUT[:count]):
        voice = "voice_cmu_us_slt_arctic_hts" if i % 2 == 0 else "voice_kal_diphone"
        txt, raw, out = workdir / f"h{i}.txt", workdir / f"h{i}.raw.wav", workdir / f"h{i}.wav"
        txt.write_text(text)
        subprocess.run(["text2wave", "-eval", f"({voice})", str(txt), "-o", str(raw)], check=True,
                       capture_output=True)
        subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out),
                        "pad", "0.4", "0.8"], check=True, capture_output=True)
        clips.append(Clip(out, [text]))
    return clips


def noisy_held_out(workdir: Path, snr_db: float = 20) -> Clip:
    """The held-out sentences in one voice (kal_diphone, english_hard.wav's) under pink noise
    ``snr_db`` below the speech, as tests/data/make_fixtures.sh makes english_hard.wav: the
    same kind of audio, seven times the words, so that a point of WER is a few words."""
    parts = []
    for i, text in enumerate(HELD_OUT):
        txt, raw, out = workdir / f"n{i}.txt", workdir / f"n{i}.raw.wav", workdir / f"n{i}.wav"
        txt.write_text(text)
        subprocess.run(["text2wave", "-eval", "(voice_kal_diphone)", str(txt), "-o", str(raw)],
                       check=True, capture_output=True)
        subprocess.run(["sox", "-R", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out),
                        "pad", "0.4", "0.8"], check=True, capture_output=True)
        parts.append(str(out))
    clean, noise, mixed = workdir / "n-clean.wav", workdir / "n-noise.wav", workdir / "noisy.wav"
    subprocess.run(["sox", "-V1", "-R", *parts, str(clean)], check=True)
    subprocess.run(["sox", "-R", str(clean), str(noise), "synth", "pinknoise"], check=True)
    speech, hiss = (float(np.sqrt(np.mean(read_wav(p) ** 2))) for p in (clean, noise))
    gain = speech / hiss / 10 ** (snr_db / 20)
    # both at 0.7, as the fixture: kal_diphone peaks near full scale
    subprocess.run(["sox", "-R", "-m", "-v", "0.7", str(clean), "-v", f"{gain * 0.7:.6f}",
                    str(noise), "-b", "16", str(mixed)], check=True, capture_output=True)
    return Clip(mixed, list(HELD_OUT))


def duration(path: Path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def concat(clips: list[Clip], out: Path) -> Clip:
    subprocess.run(["sox", *[str(c.path) for c in clips], str(out)], check=True)
    return Clip(out, [u for c in clips for u in c.utterances])


# --- (a) and (c): offline ----------------------------------------------------------------------


def transcribe_files(model: Any, clips: list[Clip],
                     beam_size: int = 1) -> tuple[list[str], float, float]:
    """Whole-file ``WhisperModel.transcribe``: the texts, seconds busy, seconds of audio."""
    from faster_whisper.audio import decode_audio

    hyps, audio_s, busy = [], 0.0, 0.0
    for clip in clips:
        started = time.perf_counter()
        segments, _ = model.transcribe(str(clip.path), beam_size=beam_size, language="en")
        hyps.append(" ".join(s.text for s in segments))
        busy += time.perf_counter() - started
        audio_s += len(decode_audio(str(clip.path), 16000)) / 16000
    return hyps, busy, audio_s


# the engines of section (c): (label, window, floor in s, beam); the transcriber's finals use
# the fourth, its interims (and finals while other finals wait) the fifth
ENGINES = (("full window, greedy", "full", 0.0, 1), ("full window, beam 5", "full", 0.0, 5),
           ("10 s floor, beam 5 (finals until 2026-12)", "dynamic", 10.0, 5),
           ("fitted, beam 5 (finals)", "dynamic", 0.0, 5),
           ("fitted, greedy (interims)", "dynamic", 0.0, 1))


def offline(clips: list[Clip], held_out: list[Clip]) -> dict[str, Any]:
    from faster_whisper.audio import decode_audio

    from bots.stt import WhisperSTT, load_whisper
    from bots.vad import Segmenter

    model: Any = load_whisper("tiny.en")
    refs = [u for c in clips for u in c.utterances]
    hyps, busy, audio_s = transcribe_files(model, clips, beam_size=5)  # faster-whisper's default
    greedy, _, _ = transcribe_files(model, clips, beam_size=1)
    out: dict[str, Any] = {"wer": wer(refs, hyps), "wer_greedy": wer(refs, greedy),
                           "rtf": busy / audio_s, "engines": []}
    utterances = []  # each held-out clip cut by the transcriber's own segmenter
    for clip in held_out:
        audio = np.concatenate([decode_audio(str(clip.path), 16000), np.zeros(16000, np.float32)])
        seg = Segmenter()
        for i in range(0, len(audio), 320):
            utterances += [u.audio for u in seg.feed(audio[i:i + 320]) if u.final]
    held_refs = [u for c in held_out for u in c.utterances]
    for label, window, floor, beam in ENGINES:
        stt = WhisperSTT(model, name="tiny.en", window=window, min_window_s=floor, beam_size=beam)
        results = [stt.recognize(a, final=True) for a in utterances]
        out["engines"].append((label, wer(held_refs, [r.text for r in results]),
                               statistics.mean(r.inference_s for r in results)))
    return out


def offline_model(name: str, fixtures: list[Clip], hard: list[Clip]) -> dict[str, Any]:
    """(e), offline: one model's WER on each set, and its RTF over both."""
    from bots.stt import load_whisper

    model: Any = load_whisper(name)
    # the first call pays for allocations the others reuse: not part of the model's RTF
    list(model.transcribe(np.zeros(16000, np.float32), beam_size=1, language="en")[0])
    out: dict[str, Any] = {}
    busy = audio_s = 0.0
    for label, clips in (("fixtures", fixtures), ("hard", hard)):
        if not clips:
            continue
        refs = [u for c in clips for u in c.utterances]
        hyps, b, a = transcribe_files(model, clips)
        out[f"wer_{label}"] = wer(refs, hyps)
        busy, audio_s = busy + b, audio_s + a
        if label == "hard":  # the beam the live finals use, too; and on the audio as received
            out["wer_hard_beam5"] = wer(refs, transcribe_files(model, clips, beam_size=5)[0])
            with tempfile.TemporaryDirectory(prefix="bench-opus-") as tmp:
                received = [Clip(write_wav(Path(tmp) / c.path.name,
                                           through_opus(read_wav(c.path))), c.utterances)
                            for c in clips]
                out["wer_hard_opus"] = wer(refs, transcribe_files(model, received,
                                                                  beam_size=5)[0])
    out["rtf"] = busy / audio_s
    return out


def installed_models(names: list[str]) -> list[str]:
    """The ones of ``names`` this machine can load, with a note for each one it cannot."""
    from bots.models import installed_names

    have = set(installed_names())
    for name in names:
        if name not in have:
            print(f"  skipped {name}: not installed (`voicebot models install {name}`)")
    return [n for n in names if n in have]


# --- (b) and (d): live ---------------------------------------------------------------------------


async def live(url: str, clips: list[Clip], transcriber_pid: int, model: str = "tiny.en",
               lobby_name: str = "live", settings: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    client, observer, lobby = await live_lobby(url, lobby_name)  # a new one: no history
    assert client.config.token is not None
    async with aiohttp.ClientSession() as http:
        transcriber = await add_bot(http, url, client.config.token, lobby, "transcriber",
                                    **{**(settings or {}), "model": model})
        await observer.until_live()
        cpu0, audio_s = cpu_seconds(transcriber_pid), 0.0
        truths: dict[str, Truth] = {}
        for i, clip in enumerate(clips):
            name = f"Speaker {i + 1}"
            bot = await add_bot(http, url, client.config.token, lobby, "player", name,
                                path=str(clip.path), delay=0.3)
            await observer.until_finished(name, duration(clip.path) + 120)
            await asyncio.sleep(1.5)  # time for the last final
            await remove_bot(http, url, client.config.token, lobby, bot)
            audio_s += duration(clip.path)
            truth = truth_of(observer, name, clip.path)
            if truth is not None:
                truths[name] = truth
        cpu = cpu_seconds(transcriber_pid) - cpu0
        # the next measurement starts from a quiet provider
        await remove_bot(http, url, client.config.token, lobby, transcriber)
    await client.close()
    refs = [u for c in clips for u in c.utterances]
    hyps = [t.text for t in sorted(observer.shown(), key=lambda t: t.start)]
    return {"wer": wer(refs, hyps), "finals": len(hyps), "utterances": len(refs),
            **latencies(observer, truths), "spans": sum(len(t.spans) for t in truths.values()),
            "cpu_per_stream": cpu / max(audio_s, 1e-9), "audio_s": audio_s}


# after a sweep step, how long the finals of the turns that ended in it are waited for
SETTLE_S = 3.0


async def sweep(url: str, clips: list[Clip], speakers: int, seconds: float,
                settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """``speakers`` players talking at once, continuously (looping), for ``seconds``."""
    client, observer, lobby = await live_lobby(url, f"sweep {speakers}")
    assert client.config.token is not None
    async with aiohttp.ClientSession() as http:
        bots = [await add_bot(http, url, client.config.token, lobby, "transcriber",
                              **(settings or {}))]
        await observer.until_live()
        names = [f"Talker {speakers}-{i + 1}" for i in range(speakers)]  # unique per step
        paths = {name: clips[i % len(clips)].path for i, name in enumerate(names)}
        for name, path in paths.items():
            bots.append(await add_bot(http, url, client.config.token, lobby, "player", name,
                                      path=str(path), loop=True, delay=0.3))
        # the clock starts once everyone is talking (connecting 6 peers takes a while)
        def talking() -> int:
            return sum(observer.has_status(name, lambda s: s.detail.startswith("playing"))
                       for name in names)
        try:
            await wait_for(lambda: talking() == speakers, 60, "every talker to start")
        except TimeoutError:
            print(f"  (only {talking()} of {speakers} talkers started; measuring anyway)")
        observer.finals.clear()
        await asyncio.sleep(seconds)
        # the turns that ended by now count; their finals may still be on their way
        until = time.time()
        await asyncio.sleep(SETTLE_S)
        lag = [float(m.group(1)) for s in observer.statuses if s.status == "lagging"
               and (m := re.match(r"([0-9.]+) s behind", s.detail))]
        skipped = max([int(m.group(1)) for s in observer.statuses
                       if (m := re.search(r"; (\d+) utterance", s.detail))], default=0)
        for bot in bots:  # the next step starts from a quiet machine
            await remove_bot(http, url, client.config.token, lobby, bot)
    await client.close()
    truths = {name: truth for name, path in paths.items()
              if (truth := truth_of(observer, name, path, loop=True)) is not None}
    per_speaker: dict[str, int] = {}
    for t in observer.shown():
        per_speaker[t.speaker_name] = per_speaker.get(t.speaker_name, 0) + 1
    return {"speakers": speakers, "finals": len(observer.shown()),
            **latencies(observer, truths, until),
            "max_lag": max(lag, default=0.0), "skipped": skipped,
            "min_finals_per_speaker": min(per_speaker.values(), default=0)
            if len(per_speaker) == speakers else 0}


async def compare_models(url: str, names: list[str], fixtures: list[Clip],
                         hard: list[Clip], live_clips: list[Clip],
                         transcriber_pid: int,
                         settings: dict[str, Any] | None = None) -> list[list[str]]:
    """(e): per model, offline WER and RTF, then live on ``live_clips`` with it alone."""
    rows = [["model", "WER fixtures", "WER hard", "hard, beam 5", "via Opus, beam 5", "RTF",
             "live WER", "finals/utts", "TTFS p50", "TTFS p95", "CPU/stream"]]
    for name in names:
        off = offline_model(name, fixtures, hard)
        on_air = await live(url, live_clips, transcriber_pid, model=name,
                            lobby_name=f"model {name}", settings=settings)
        rows.append([name, f"{off['wer_fixtures']:.3f}",
                     *(f"{off[key]:.3f}" if key in off else "-"
                       for key in ("wer_hard", "wer_hard_beam5", "wer_hard_opus")),
                     f"{off['rtf']:.3f}",
                     f"{on_air['wer']:.3f}", f"{on_air['finals']}/{on_air['utterances']}",
                     *spread(on_air["ttfs"], 50, 95), f"{on_air['cpu_per_stream']:.3f}"])
    return rows


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-transcribe-"))
    clips = fixture_clips(args.smoke)
    held_out = held_out_clips(workdir, 2 if args.smoke else len(HELD_OUT))
    live_clips = clips if args.smoke else [*clips, concat(held_out, workdir / "held_out.wav")]
    off: dict[str, Any] = {}
    if not args.sweep_only and not args.live_only and not args.models_only:
        print("== (a) offline faster-whisper on the live files (whole files)")
        off = offline(live_clips, held_out)
        print(table([["offline WER (beam 5, its default)", "offline WER greedy", "offline RTF"],
                     [f"{off['wer']:.3f}", f"{off['wer_greedy']:.3f}", f"{off['rtf']:.3f}"]]))
        print(f"\n== (c) engines on the held-out sentences, one utterance at a time "
              f"({len(held_out)} sentences, cut by the transcriber's segmenter)")
        print(table([["engine", "WER", "s/utterance"],
                     *[[label, f"{w:.3f}", f"{t:.3f}"] for label, w, t in off["engines"]]]),
              flush=True)

    # the sweep adds a bot per talker at each step: no creation limit stands in the way
    server = ServerProcess(workdir / "data", VOICEBOT_PROVIDER_KEY=KEY, **UNLIMITED)
    server.start()
    transcriber = ProviderProcess(server.url, KEY, capacity=4, name="transcribers",
                                  plugins=("transcriber",), log_level=args.log_level)
    players = ProviderProcess(server.url, KEY, capacity=16, name="players", plugins=("player",),
                              media_dirs=(DATA, workdir), log_level="WARNING")
    on_air: dict[str, Any] = {}
    model_rows: list[list[str]] = []
    rows = [["speakers", "finals", "TTFS p50", "TTFS p95", "TTFS p99", "1st interim p95",
             "max lag", "skipped", "min finals/speaker", "|end error| p95"]]
    try:
        await providers_ready(server.url, {"transcriber", "player"})
        if not args.sweep_only and not args.models_only:
            print("\n== (b) live: players → WebRTC → transcriber → lobby")
            # one file, one player: the same speech without a player's start-up per clip
            spoken = [concat(live_clips, workdir / "live.wav")] if len(live_clips) > 1 \
                else live_clips
            on_air = await live(server.url, spoken, transcriber.proc.pid, settings=args.set)
            print(table([["live WER", "finals/utts", "turns/spans", "split", "revised",
                          "CPU/stream"],
                         [f"{on_air['wer']:.3f}", f"{on_air['finals']}/{on_air['utterances']}",
                          f"{on_air['turns']}/{on_air['spans']}", str(on_air["split"]),
                          str(on_air["revised"]), f"{on_air['cpu_per_stream']:.3f}"]]))
            print(table([["from the true bounds of speech", "p50", "p95", "p99"],
                         ["TTFS (the final ending the turn)", *spread(on_air["ttfs"], 50, 95, 99)],
                         ["TTFS, Pipecat's (the turn's last final)",
                          *spread(on_air["pipecat"], 50, 95, 99)],
                         ["first interim (from the true start)",
                          *spread(on_air["first_interim"], 50, 95, 99)],
                         ["bot clock (arrival - the final's end)",
                          *spread(on_air["bot_clock"], 50, 95, 99)],
                         ["that final's end - the true end",
                          *spread(on_air["end_error"], 50, 95, 99)]]), flush=True)
        if args.speakers:
            print(f"\n== (d) concurrency sweep: continuous speakers, {args.seconds:.0f} s each",
                  flush=True)
        for k in args.speakers:
            r = await sweep(server.url, [*clips, *held_out], k, args.seconds, args.set)
            rows.append([str(k), str(r["finals"]), *spread(r["ttfs"], 50, 95, 99),
                         *spread(r["first_interim"], 95), f"{r['max_lag']:.1f}",
                         str(r["skipped"]), str(r["min_finals_per_speaker"]),
                         *spread([abs(e) for e in r["end_error"]], 95)])
        if args.speakers:
            print(table(rows))
        if args.models and not args.sweep_only:
            hard = [] if args.smoke else \
                [noisy_held_out(workdir)] if args.noisy else [fixture(HARD)]
            compared_live = clips if args.smoke else hard
            print(f"\n== (e) models side by side: offline WER on the English fixtures"
                  f"{'' if args.smoke else ' and on ' + hard[0].path.name} (whole files; "
                  f"greedy, beam 5, and beam 5 via Opus), RTF over them; live WER and "
                  f"TTFS on {', '.join(c.path.name for c in compared_live)}, each model alone",
                  flush=True)
            names = installed_models(args.models)
            model_rows = await compare_models(server.url, names, clips, hard, compared_live,
                                              transcriber.proc.pid, args.set)
            print(table(model_rows), flush=True)
    finally:
        players.stop()
        transcriber.stop()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        if args.log_level != "WARNING":
            print(f"transcriber log: {transcriber.log_path}")

    print("\n== against the targets")
    if on_air and off:
        print(f"live WER - offline WER (same files): {on_air['wer'] - off['wer']:+.3f} "
              "(target <= +0.010)")
    if on_air:
        ttfs, first = spread(on_air["ttfs"], 50, 95), spread(on_air["first_interim"], 50, 95)
        print(f"TTFS from the true end of speech p50 {ttfs[0]} s (target <= 0.30), "
              f"p95 {ttfs[1]} s (target <= 0.45)")
        print(f"first interim from the true start p50 {first[0]} s (target <= 0.35), "
              f"p95 {first[1]} s (target <= 0.60)")
        print(f"turns split into several finals: {on_air['split']} of {on_air['turns']}")
    last = rows[-1]
    if args.speakers:
        print(f"{last[0]} continuous speakers: finals p95 {last[3]} s (target <= 1.5 at 12), "
              f"max lag {last[6]} s, {last[7]} skipped")
    # by the column's name: the table gains columns
    by_model = {r[0]: dict(zip(model_rows[0], r, strict=True)) for r in model_rows[1:]}
    if {"tiny.en", "base"} <= set(by_model):
        tiny, base = by_model["tiny.en"], by_model["base"]
        print(f"base vs tiny.en live WER: {base['live WER']} vs {tiny['live WER']} (target: "
              f"base lower); TTFS p50 {base['TTFS p50']} vs {tiny['TTFS p50']} s")
    return 0


def setting_value(item: str) -> tuple[str, Any]:
    """``name=value`` from the command line: the value as JSON if it is (a number, true),
    else as a string."""
    name, sep, value = item.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set takes SETTING=VALUE, not {item!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes")
    parser.add_argument("--speakers", type=int, nargs="+", default=None,
                        help="sweep these speaker counts (default 1 2 4 6)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per sweep step")
    parser.add_argument("--sweep-only", action="store_true", help="only the concurrency sweep")
    parser.add_argument("--live-only", action="store_true",
                        help="only the live part (b): where the time to a final goes")
    parser.add_argument("--models-only", action="store_true",
                        help="only the models side by side (e)")
    parser.add_argument("--log-level", default="WARNING", help="the transcriber's log level")
    parser.add_argument("--noisy", action="store_true",
                        help="(e) on the held-out sentences in english_hard.wav's voice and "
                             "noise instead of on english_hard.wav (7x the words)")
    parser.add_argument("--set", nargs="*", default=[], metavar="SETTING=VALUE",
                        help="transcriber settings for every transcriber added (docs/"
                             "transcriber.md), e.g. threads=1")
    parser.add_argument("--models", nargs="*", default=["tiny.en", "base"],
                        help="models to compare side by side (none: skip that part)")
    args = parser.parse_args(argv)
    args.speakers = [] if args.live_only or args.models_only else \
        args.speakers or ([1] if args.smoke else [1, 2, 4, 6])
    args.models = [] if args.live_only else args.models
    args.set = dict(setting_value(item) for item in args.set)
    args.seconds = args.seconds or (6.0 if args.smoke else 25.0)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
