"""Languages: one speaker switching between English, Spanish, German and Italian.

    python -m bench.languages            # ~5 minutes on 2 cores
    python -m bench.languages --smoke    # the first three sentences, interleaved only
    python -m bench.languages --record   # base's offline detection into tests/data/fixtures.json

The speech is ``tests/data/multilingual.wav``: 14 sentences by espeak-ng voices, interleaved
(two of them short replies that keep the language before them). The grouped order is the same
sentences cut out of it and put together language by language. For both orders:

- live: a ``player`` bot speaks the file into a lobby over WebRTC and a ``transcriber`` with
  ``{"model": "base", "language": "auto"}`` captions it; each final is matched to the sentence
  it overlaps in time;
- offline, whole file: ``WhisperModel.transcribe(multilingual=True)`` (faster-whisper detects a
  language for every 30 s window, but does not say which it took: only WER);
- offline, each sentence alone: ``detect_language`` and ``transcribe`` on each cut sentence (the
  same for both orders: what Whisper does when nothing came before).

Printed per language: how many finals got the right ``language``, and WER (Whisper's English
normalizer for English, its basic one for the others). TTFS is as bench.transcribe measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jiwer
import numpy as np
from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

from bench.audio import RATE, read_wav, speech_spans, write_wav
from bench.live import KEY, add_bot, live_lobby, providers_ready
from bench.tables import table
from bench.transcribe import DATA, pct
from shared import protocol as p
from signaling.testing import ProviderProcess, ServerProcess

FIXTURE = "multilingual.wav"
_english, _basic = EnglishTextNormalizer(), BasicTextNormalizer()


@dataclass(frozen=True)
class Sentence:
    language: str
    text: str
    start: float  # seconds into its file
    end: float


def fixture_spec() -> dict[str, Any]:
    return dict(json.loads((DATA / "fixtures.json").read_text())[FIXTURE])


def sentences() -> list[Sentence]:
    """The fixture's sentences, where they are in it."""
    utterances = fixture_spec()["utterances"]
    spans = speech_spans(read_wav(DATA / FIXTURE))
    if len(spans) != len(utterances):
        raise RuntimeError(f"{FIXTURE}: {len(spans)} stretches of speech for "
                           f"{len(utterances)} sentences")
    return [Sentence(u["language"], u["text"], s, e) for u, (s, e) in zip(utterances, spans)]


def cut(samples: np.ndarray, s: Sentence, before: float = 0.4, after: float = 1.0) -> np.ndarray:
    return samples[max(0, int((s.start - before) * RATE)):int((s.end + after) * RATE)]


def grouped(workdir: Path) -> tuple[Path, list[Sentence]]:
    """The same sentences, language by language (in order of first appearance)."""
    samples, order = read_wav(DATA / FIXTURE), sentences()
    languages = list(dict.fromkeys(s.language for s in order))
    parts, placed, at = [], [], 0.0
    for s in sorted(order, key=lambda s: languages.index(s.language)):
        part = cut(samples, s)
        lead = min(0.4, s.start)
        placed.append(Sentence(s.language, s.text, at + lead, at + lead + s.end - s.start))
        parts.append(part)
        at += len(part) / RATE
    return write_wav(workdir / "grouped.wav", np.concatenate(parts)), placed


def assign(finals: Sequence[tuple[float, float]], spoken: Sequence[Sentence]) -> list[int | None]:
    """Which sentence each final (start, end on another clock) is of: the clocks' offset that
    puts the most finals inside sentences, then the sentence each overlaps most (None: none)."""
    def overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
        return min(a[1], b[1]) - max(a[0], b[0])

    def placed(offset: float) -> list[int | None]:
        out: list[int | None] = []
        for start, end in finals:
            shifted = (start - offset, end - offset)
            best = max(range(len(spoken)),
                       key=lambda i: overlap(shifted, (spoken[i].start, spoken[i].end)))
            out.append(best if overlap(shifted, (spoken[best].start, spoken[best].end)) > 0
                       else None)
        return out

    if not finals:
        return []
    offsets = [f[0] - s.start for f in finals for s in spoken]
    best = max(offsets, key=lambda o: sum(i is not None for i in placed(o)))
    return placed(best)


def normalized(text: str, language: str) -> str:
    return " ".join((_english if language == "en" else _basic)(text).split())


def score(spoken: Sequence[Sentence], results: Sequence[tuple[int | None, str, str | None]]
          ) -> dict[str, dict[str, Any]]:
    """Per language: finals with the right language (of those that got one), and WER.
    ``results``: (sentence index or None, text, language or None) per final."""
    out: dict[str, dict[str, Any]] = {}
    for lang in dict.fromkeys(s.language for s in spoken):
        mine = [i for i, s in enumerate(spoken) if s.language == lang]
        heard = [r for r in results if r[0] in mine]
        refs = [normalized(spoken[i].text, lang) for i in mine]
        hyps = [normalized(" ".join(t for j, t, _ in heard if j == i), lang) for i in mine]
        labelled = [r for r in heard if r[2] is not None]
        out[lang] = {"right": sum(r[2] == lang for r in labelled), "labelled": len(labelled),
                     "wer": float(jiwer.wer(refs, hyps))}
    return out


# --- offline -----------------------------------------------------------------------------------


def load_base() -> Any:
    from bots.stt import load_whisper

    return load_whisper("base")


def offline_alone(model: Any, spoken: Sequence[Sentence], samples: np.ndarray
                  ) -> tuple[list[tuple[int | None, str, str | None]], list[float]]:
    """Each sentence by itself: detection, then transcription; and the detected probability
    of the language really spoken."""
    results: list[tuple[int | None, str, str | None]] = []
    probs: list[float] = []
    for i, s in enumerate(spoken):
        audio = cut(samples, s)
        _, _, all_probs = model.detect_language(audio)
        probs.append(dict(all_probs).get(s.language, 0.0))
        segments, info = model.transcribe(audio, language=None, beam_size=5)
        results.append((i, " ".join(seg.text.strip() for seg in segments), info.language))
    return results, probs


def offline_file(model: Any, path: Path, spoken: Sequence[Sentence]
                 ) -> list[tuple[int | None, str, str | None]]:
    segments, _ = model.transcribe(str(path), language=None, multilingual=True, beam_size=5)
    segs = list(segments)
    where = assign([(seg.start, seg.end) for seg in segs], spoken)
    return [(i, seg.text.strip(), None) for i, seg in zip(where, segs)]


def record() -> None:
    """Writes base's offline detection of each sentence into the fixture's spec."""
    model, spoken = load_base(), sentences()
    _, probs = offline_alone(model, spoken, read_wav(DATA / FIXTURE))
    path = DATA / "fixtures.json"
    spec = json.loads(path.read_text())
    for u, prob in zip(spec[FIXTURE]["utterances"], probs):
        u["offline_language_prob"] = round(prob, 3)
        print(f"{u['language']} {prob:.3f} {u['text']}")
    path.write_text(json.dumps(spec, indent=2, ensure_ascii=False) + "\n")


# --- live --------------------------------------------------------------------------------------


async def live(url: str, path: Path, spoken: Sequence[Sentence], label: str
               ) -> tuple[list[tuple[int | None, str, str | None]], list[float]]:
    client, observer, lobby = await live_lobby(url, f"languages {label}")
    assert client.config.token is not None
    async with aiohttp.ClientSession() as http:
        await add_bot(http, url, client.config.token, lobby, "transcriber", model="base",
                      language="auto")
        await observer.until_live()
        await add_bot(http, url, client.config.token, lobby, "player", "Polly", path=str(path),
                      delay=0.3)
        await observer.until_finished("Polly", spoken[-1].end + 120)
        await asyncio.sleep(3)  # time for the last final
    await client.close()
    finals: list[p.Transcript] = [t for _, t in sorted(observer.finals, key=lambda f: f[1].start)]
    where = assign([(t.start, t.end) for t in finals], spoken)
    return [(i, t.text, t.language) for i, t in zip(where, finals)], observer.ttfs()


# --- the report --------------------------------------------------------------------------------


def rows_of(label: str, scores: dict[str, dict[str, Any]], extra: str = "") -> list[str]:
    cells = [label]
    for s in scores.values():
        right = f"{s['right']}/{s['labelled']}" if s["labelled"] else "-"
        cells.append(f"{right} {s['wer']:.2f}")
    total_right = sum(s["right"] for s in scores.values())
    total = sum(s["labelled"] for s in scores.values())
    cells.append(f"{total_right}/{total}" if total else "-")
    return [*cells, extra]


async def main_async(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-languages-"))
    samples = read_wav(DATA / FIXTURE)
    interleaved = sentences()
    orders: dict[str, tuple[Path, list[Sentence]]] = {"interleaved": (DATA / FIXTURE, interleaved)}
    if args.smoke:  # English, Spanish, German: one switch after another
        interleaved = interleaved[:3]
        short = write_wav(workdir / "smoke.wav", samples[:int((interleaved[-1].end + 1) * RATE)])
        orders = {"interleaved": (short, interleaved)}
    else:
        orders["grouped"] = grouped(workdir)
    languages = list(dict.fromkeys(s.language for s in interleaved))
    rows = [["", *[f"{lang}: right, WER" for lang in languages], "right", "TTFS p50/p95"]]
    try:
        model = load_base()
        alone, probs = offline_alone(model, interleaved, samples)
        rows.append(rows_of("offline, each sentence alone", score(interleaved, alone)))
        for name, (path, spoken) in orders.items():
            rows.append(rows_of(f"offline, whole file, {name}",
                                score(spoken, offline_file(model, path, spoken))))
        print("offline detection of the language spoken, sentences of 1.5 s and more: min "
              f"{min(p for p, s in zip(probs, interleaved) if s.end - s.start >= 1.5):.2f}",
              flush=True)
        server = ServerProcess(workdir / "data", VOICEBOT_PROVIDER_KEY=KEY)
        server.start()
        transcriber = ProviderProcess(server.url, KEY, capacity=2, name="transcribers",
                                      plugins=("transcriber",), log_level=args.log_level)
        players = ProviderProcess(server.url, KEY, capacity=2, name="players",
                                  plugins=("player",), media_dirs=(DATA, workdir),
                                  log_level="WARNING")
        try:
            await providers_ready(server.url, {"transcriber", "player"})
            for name, (path, spoken) in orders.items():
                results, ttfs = await live(server.url, path, spoken, name)
                rows.append(rows_of(f"live, {name}", score(spoken, results),
                                    f"{pct(ttfs, 50):.2f}/{pct(ttfs, 95):.2f}"))
                if args.verbose:
                    for i, text, lang in results:
                        said = spoken[i].language if i is not None else "?"
                        print(f"  {name}: spoken {said}, labelled {lang}: {text}")
        finally:
            players.stop()
            transcriber.stop()
            server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes")
    parser.add_argument("--record", action="store_true",
                        help="record base's offline detection in tests/data/fixtures.json")
    parser.add_argument("--verbose", action="store_true", help="print every live final")
    parser.add_argument("--log-level", default="WARNING", help="the transcriber's log level")
    args = parser.parse_args(argv)
    if args.record:
        record()
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
