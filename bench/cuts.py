"""Whole file or one sentence at a time: what each costs tiny.en in errors, set by set.

    python -m bench.cuts              # 13 minutes on 2 cores
    python -m bench.cuts --smoke      # english_hard.wav at one phase: 10 seconds

The live path reads each sentence alone; offline Whisper (bench.transcribe's baseline) reads a
whole file, 30 s at a time, each sentence after the ones before it. This prints what that
difference does to the word error rate on each set, and how far where a cut falls moves it.

Each set goes through Opus first (``bench/audio.py`` ``through_opus``: what a bot receives),
then is read at several phases: 0, 4, … 28 ms of silence before it. The segmenter scores
32 ms windows, so the phase moves where each cut falls by up to 32 ms; live, it depends on
when the speaker's first packet came. Per set, the mean WER over the phases (min–max):

- **whole file**: ``WhisperModel.transcribe``, beam 5, the baseline bench.transcribe prints;
  and the same with 0.3 s more silence before the file, a change no listener would notice;
- **cuts**: the set fed to the transcriber's segmenter (``bots/vad.py``) 20 ms at a time,
  speech that resumes within ``join_ms`` joined to the final before it as ``bots/speaker.py``
  joins it, each sentence's last final read by the transcriber's final engine (tiny.en, beam
  5, fitted window): the live path, less the network and the timing;
- **cuts with context**: the same cuts, each read with the speaker's previous finals that
  started at most ``--context-s`` before it, their audio before it in Whisper's window and
  their text as the decoder's prefix: a sentence read as it is read in the middle of a whole
  file. Tried in session 15 (bench/README.md); not what the transcriber does.

Sets: ``english_hard.wav`` and ``english_noisy.wav`` (tests/data, festival voices under pink
noise), the 42 held-out sentences of bench.transcribe in ``english_hard.wav``'s voice and
noise (seven times its words), and the same sentences clean, one voice at a time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import transcribe as bt
from bench.audio import RATE, read_wav, through_opus
from bench.tables import table

FRAME = RATE // 50  # 20 ms, as a peer sends
LATER_S = 0.3  # the whole file's second reading: this much more silence first


@dataclass(frozen=True)
class Cut:
    """A sentence's last final: stream samples ``[start, end)`` and the audio it is read from
    (a joined final's pauses shortened to their pre- and post-roll, as the transcriber's)."""

    start: int
    end: int
    audio: np.ndarray


def cuts(stream: np.ndarray, join_ms: int | None = None) -> list[Cut]:
    """The finals the transcriber would read in ``stream``, each continuation replacing the
    final it continues (bots/speaker.py ``_continues``, with a speaker who is never behind)."""
    from bots.transcriber import TranscriberConfig
    from bots.vad import Segmenter, VadConfig

    if join_ms is None:
        join_ms = TranscriberConfig().join_ms  # the transcriber's default
    segmenter = Segmenter(VadConfig())
    out: list[Cut] = []
    last: tuple[int, int, int] | None = None  # (utterance index, speech end, end) of out[-1]
    for at in range(0, len(stream) - FRAME + 1, FRAME):
        for utt in segmenter.feed(stream[at:at + FRAME]):
            if last is not None and (last[0] == utt.index or
                                     utt.speech_start - last[1] <= join_ms * RATE // 1000):
                before = out[-1]
                kept = before.audio[:max(0, len(before.audio) - max(0, last[2] - utt.start))]
                out[-1] = Cut(before.start, utt.end, np.concatenate([kept, utt.audio]))
            else:
                out.append(Cut(utt.start, utt.end, utt.audio))
            last = (utt.index, utt.speech_end, utt.end)
    return out


class Reader:
    """The transcriber's final engine, and the same engine reading with context."""

    def __init__(self) -> None:
        from bots.stt import WhisperSTT, load_whisper

        self.model = load_whisper("tiny.en")
        self.stt = WhisperSTT(self.model, name="tiny.en", beam_size=5)  # the finals' settings
        self.tokenizer = self.stt._tokenizer("en")

    def whole(self, audio: np.ndarray) -> str:
        segments, _ = self.model.transcribe(audio, beam_size=5, language="en")
        return " ".join(s.text for s in segments)

    def alone(self, cut: Cut) -> str:
        return self.stt.recognize(cut.audio, final=True).text

    def after(self, cut: Cut, stream: np.ndarray, before: list[tuple[Cut, str]]) -> str:
        """``cut`` read with ``before`` (earlier cuts and their texts) ahead of it: the stream
        from the first of them to ``cut``'s end, and their texts forced as the decoder's
        prefix (Whisper continues them, as it continues a window's earlier sentences)."""
        if not before:
            return self.alone(cut)
        tok, stt = self.tokenizer, self.stt
        audio = stream[before[0][0].start:cut.end]
        seconds = len(audio) / RATE
        encoded = stt._encode(audio, stt._frames(seconds))
        prefix = tok.encode(" " + " ".join(text for _, text in before).strip())
        prompt = [*tok.sot_sequence, tok.no_timestamps, *prefix]
        result = self.model.model.generate(
            encoded, [prompt], beam_size=stt.beam_size, patience=1,
            max_length=min(448, len(prompt) + int(8 + 6 * seconds)), suppress_blank=False,
            suppress_tokens=stt.suppress, no_repeat_ngram_size=stt.no_repeat_ngram_size)[0]
        ids = result.sequences_ids[0]
        if ids[:len(prefix)] == prefix:  # the forced prefix comes back first
            ids = ids[len(prefix):]
        return str(tok.decode([t for t in ids if t < tok.eot]).strip())


@dataclass
class Set:
    name: str
    audio: np.ndarray  # as received: through Opus
    refs: list[str]


def sets(smoke: bool, workdir: Path) -> Iterator[Set]:
    for name in ("english_hard.wav",) if smoke else ("english_hard.wav", "english_noisy.wav"):
        clip = bt.fixture(name)
        yield Set(name, through_opus(read_wav(clip.path)), clip.utterances)
    if smoke:
        return
    noisy = bt.noisy_held_out(workdir)
    yield Set("held-out, noisy", through_opus(read_wav(noisy.path)), noisy.utterances)
    clean = bt.held_out_clips(workdir, len(bt.HELD_OUT))  # the voices take turns
    for label, first in (("held-out, slt", 0), ("held-out, kal", 1)):
        voice = bt.concat(clean[first::2], workdir / f"clean-{first}.wav")
        yield Set(label, through_opus(read_wav(voice.path)), voice.utterances)


def spread(values: list[float]) -> str:
    pct = [100 * v for v in values]
    return f"{statistics.mean(pct):.1f} ({min(pct):.1f}–{max(pct):.1f})"


def measure(reader: Reader, one: Set, phases: list[int], context_s: float) -> dict[str, Any]:
    wer: dict[str, list[float]] = {"whole": [], "later": [], "cuts": [], "context": []}
    busy = {"cuts": 0.0, "context": 0.0}
    finals = []
    for phase in phases:
        stream = np.concatenate([np.zeros(phase * RATE // 1000, np.float32), one.audio])
        later = np.concatenate([np.zeros(int(LATER_S * RATE), np.float32), stream])
        wer["whole"].append(bt.wer(one.refs, [reader.whole(stream)]))
        wer["later"].append(bt.wer(one.refs, [reader.whole(later)]))
        found = cuts(stream)
        finals.append(len(found))
        alone: list[str] = []
        done: list[tuple[Cut, str]] = []  # each cut, and its text read with context
        for cut in found:
            started = time.perf_counter()
            alone.append(reader.alone(cut))
            middle = time.perf_counter()
            before = [(d, text) for d, text in done if d.start >= cut.start - context_s * RATE]
            done.append((cut, reader.after(cut, stream, before)))
            busy["cuts"] += middle - started
            busy["context"] += time.perf_counter() - middle
        wer["cuts"].append(bt.wer(one.refs, alone))
        wer["context"].append(bt.wer(one.refs, [text for _, text in done]))
    return {"words": len(bt.words(" ".join(one.refs)).split()), "finals": finals,
            "ms": {k: 1000 * v / max(1, sum(finals)) for k, v in busy.items()}, **wer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cuts", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="english_hard.wav at one phase, to check the benchmark runs")
    parser.add_argument("--phases", type=int, default=8,
                        help="how many of the 8 phases (0, 4, … 28 ms), spread out (default 8)")
    parser.add_argument("--context-s", type=float, default=8.0,
                        help="cuts with context: earlier finals that started at most this long "
                             "before the cut (default 8)")
    args = parser.parse_args(argv)
    count = 1 if args.smoke else max(1, min(8, args.phases))
    phases = [4 * (i * 8 // count) for i in range(count)]
    reader = Reader()
    rows = [["set", "words", "finals", "whole file", f"+{LATER_S} s silence", "cuts",
             "cuts with context", "ms per final (cuts, with context)"]]
    with tempfile.TemporaryDirectory(prefix="bench-cuts-") as tmp:
        for one in sets(args.smoke, Path(tmp)):
            got = measure(reader, one, phases, args.context_s)
            rows.append([one.name, str(got["words"]),
                         f"{min(got['finals'])}–{max(got['finals'])} / {len(one.refs)}",
                         spread(got["whole"]), spread(got["later"]), spread(got["cuts"]),
                         spread(got["context"]),
                         f"{got['ms']['cuts']:.0f}, {got['ms']['context']:.0f}"])
            print(f"measured {one.name}", file=sys.stderr, flush=True)
    print(f"== tiny.en WER through Opus, mean over {count} phase(s) {phases} ms (min–max); "
          f"context: finals that started up to {args.context_s:g} s before")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
