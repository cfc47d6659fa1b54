"""When is a pause the end of a sentence? Split rate against the wait for a final.

    python -m bench.turns            # a few minutes on 2 cores
    python -m bench.turns --smoke    # seconds: one voice, three sentences, no Smart Turn

Held-out sentences (``PAUSED``, used by no test) are synthesized in parts with festival's two
voices and espeak-ng, joined by the pauses a speaker makes at a comma or a hesitation
(300-700 ms), each sentence followed by silence. The truth (where each part and each sentence
ends) comes from the construction.

(a) The transcriber's segmenter (``bots/vad.py``) at each ``min_silence_ms``: the share of
    sentences cut into more than one final, and the wait from the true end of the sentence to
    the cut of its final (the VAD's share of time-to-final; recognition and delivery come on
    top, see bench.transcribe).
(b) Smart Turn v3.2 (pipecat-ai 1.14.0's end-of-turn model, BSD-2-Clause, fetched with
    ``pip download`` and checked against its SHA-256): its probability that the turn is
    complete after 200 ms of silence (as Pipecat asks it) at each pause inside a sentence and
    at each sentence's end, and the rule it would enable: cut after 200 ms when it says
    complete, else after a long pause.
(c) The transcriber's rule (``bots/speaker.py``): a final goes out at the pause, and speech
    that resumes within ``join_ms`` continues it (the next final replaces it, whole). Each
    voice's sentences are spoken one after another, 1.5 s apart and then 0.6-1.5 s apart:
    per ``join_ms``, the sentences shown as more than one final (split) and the finals that
    hold more than one sentence (merged).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.audio import RATE, read_wav
from bench.tables import table

# (part, part, …): a pause between parts; none of these sentences is in a test
PAUSED = [
    ("When the meeting ends,", "please send the notes to everyone."),
    ("I think", "we should wait until Monday."),
    ("If it rains tomorrow,", "the picnic will move indoors."),
    ("The report is finished,", "but the charts still need work."),
    ("After lunch,", "we can walk down to the river."),
    ("My sister,", "who lives in Boston,", "is visiting next week."),
    ("Well,", "I am not sure that is right."),
    ("Before you leave,", "turn off the lights in the kitchen."),
    ("The train was late,", "so we took a taxi instead."),
    ("To be honest,", "I liked the first design better."),
    ("On the other hand,", "the old one was cheaper."),
    ("So,", "um,", "where did you put the keys?"),
]
PAUSES_MS = (300, 400, 500, 600, 700)
VOICES = ("voice_cmu_us_slt_arctic_hts", "voice_kal_diphone", "espeak-ng:en-us")
SETTINGS_MS = (200, 300, 400, 500, 700, 900)
JOIN_MS = (0, 400, 600, 800, 1000, 1200)
# between sentences, for (c): far apart, then as close as people go on talking
GAPS_MS = {"1.5 s": (1500,), "0.6-1.5 s": (600, 800, 1000, 1200, 1500)}
MAX_PART_S = 14.0  # a part longer than this is not continued (bots/speaker.py: 29 s less 15)

SMART_TURN_WHEEL = "pipecat-ai==1.14.0"
SMART_TURN_MEMBER = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
SMART_TURN_SHA256 = "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"
ASK_AFTER_S = 0.2  # Pipecat's stop_secs: the silence after which it asks the model
TAIL_S = 1.5  # silence after each sentence


@dataclass
class Sentence:
    text: str
    voice: str
    audio: np.ndarray
    pauses: list[tuple[float, float]]  # (start, end) s of each pause inside the sentence
    end: float  # s: the true end of the speech


def speak(text: str, voice: str, workdir: Path) -> np.ndarray:
    """``text`` said by ``voice``, trimmed to the speech, 16 kHz."""
    raw, out = workdir / "raw.wav", workdir / "part.wav"
    if voice.startswith("espeak-ng:"):
        subprocess.run(["espeak-ng", "-v", voice.split(":", 1)[1], "-w", str(raw), text],
                       check=True, capture_output=True)
    else:
        (workdir / "part.txt").write_text(text)
        subprocess.run(["text2wave", "-eval", f"({voice})", str(workdir / "part.txt"), "-o",
                        str(raw)], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(out)],
                   check=True, capture_output=True)
    audio = read_wav(out)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[loud[0]:loud[-1] + 1]


def sentences(voices: tuple[str, ...], count: int, workdir: Path) -> list[Sentence]:
    out, n = [], 0
    for voice in voices:
        for parts in PAUSED[:count]:
            pieces, pauses, at = [np.zeros(int(0.5 * RATE), np.float32)], [], 0.5
            for i, part in enumerate(parts):
                if i:
                    pause = PAUSES_MS[n % len(PAUSES_MS)] / 1000
                    n += 1
                    pieces.append(np.zeros(int(pause * RATE), np.float32))
                    pauses.append((at, at + pause))
                    at += pause
                said = speak(part, voice, workdir)
                pieces.append(said)
                at += len(said) / RATE
            pieces.append(np.zeros(int(TAIL_S * RATE), np.float32))
            out.append(Sentence(" ".join(parts), voice, np.concatenate(pieces), pauses, at))
    return out


def segment(sentence: Sentence, min_silence_ms: int) -> list[float]:
    """When (s into the sentence's audio) the segmenter cut each final."""
    from bots.vad import Segmenter, VadConfig

    seg, cuts = Segmenter(VadConfig(min_silence_ms=min_silence_ms)), []
    for i in range(0, len(sentence.audio), 320):  # 20 ms, as WebRTC delivers it
        for u in seg.feed(sentence.audio[i:i + 320]):
            if u.final:
                cuts.append((i + 320) / RATE)
    return cuts


def segmenter_rows(all_sentences: list[Sentence]) -> list[list[str]]:
    rows = [["min_silence_ms", "split", "missed", "wait p50", "wait p95"]]
    for ms in SETTINGS_MS:
        split = missed = 0
        waits = []
        for s in all_sentences:
            cuts = segment(s, ms)
            if not cuts:
                missed += 1
                continue
            split += len(cuts) > 1
            waits.append(cuts[-1] - s.end)
        rows.append([str(ms), f"{split / len(all_sentences):.0%}", str(missed),
                     f"{np.percentile(waits, 50):.3f}", f"{np.percentile(waits, 95):.3f}"])
    return rows


def joined_rows(all_sentences: list[Sentence], gaps: tuple[int, ...]) -> list[list[str]]:
    from bots.vad import Segmenter

    rows = [["join_ms", "split", "merged", "finals per sentence"]]
    talks = []  # per voice: its sentences one after another, and where each one's speech is
    for voice in dict.fromkeys(s.voice for s in all_sentences):
        pieces, truth, at = [], [], 0.0
        for i, s in enumerate(x for x in all_sentences if x.voice == voice):
            speech = s.audio[int(0.5 * RATE):int(s.end * RATE)]
            gap = np.zeros(int(gaps[i % len(gaps)] / 1000 * RATE), np.float32)
            pieces += [gap, speech]
            at += len(gap) / RATE
            truth.append((at, at + len(speech) / RATE))
            at += len(speech) / RATE
        audio = np.concatenate([*pieces, np.zeros(RATE, np.float32)])
        seg, spans = Segmenter(), []
        for i in range(0, len(audio), 320):
            spans += [(u.speech_start / RATE, u.speech_end / RATE)
                      for u in seg.feed(audio[i:i + 320]) if u.final]
        talks.append((truth, spans))
    for join_ms in JOIN_MS:
        split = merged = finals = count = 0
        for truth, spans in talks:
            parts: list[list[float]] = []
            for start, end in spans:
                if parts and start - parts[-1][1] <= join_ms / 1000 and \
                        parts[-1][1] - parts[-1][0] <= MAX_PART_S:
                    parts[-1][1] = end
                else:
                    parts.append([start, end])
            def overlaps(a: tuple[float, float] | list[float], b: tuple[float, float]) -> bool:
                return a[0] < b[1] and b[0] < a[1]
            split += sum(sum(overlaps(p, t) for p in parts) > 1 for t in truth)
            merged += sum(sum(overlaps(p, t) for t in truth) > 1 for p in parts)
            finals, count = finals + len(parts), count + len(truth)
        rows.append([str(join_ms), f"{split / count:.0%}", f"{merged / max(finals, 1):.0%}",
                     f"{finals / count:.2f}"])
    return rows


def fetch_smart_turn(workdir: Path) -> Path:
    """The model file out of the pinned wheel (no pipecat import), checked."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d",
                    str(workdir), SMART_TURN_WHEEL], check=True, capture_output=True)
    wheel = next(workdir.glob("pipecat_ai-*.whl"))
    target = workdir / "smart-turn-v3.2-cpu.onnx"
    with zipfile.ZipFile(wheel) as z, z.open(SMART_TURN_MEMBER) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    if hashlib.sha256(target.read_bytes()).hexdigest() != SMART_TURN_SHA256:
        raise SystemExit(f"{target.name}: checksum mismatch (not the expected model)")
    return target


class SmartTurn:
    """Smart Turn v3.x: Whisper log-mel features of the last 8 s of a normalized waveform
    (faster-whisper computes them), one probability that the turn is complete."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort
        from faster_whisper.feature_extractor import FeatureExtractor

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), sess_options=options)
        self.features = FeatureExtractor(feature_size=80)

    def complete(self, audio: np.ndarray) -> float:
        last = audio[-8 * RATE:]
        last = np.pad(last, (8 * RATE - len(last), 0))
        last = (last - last.mean()) / np.sqrt(last.var() + 1e-7)
        features = self.features(last.astype(np.float32), padding=0)[None]
        return float(self.session.run(None, {"input_features": features})[0][0][0])


def smart_turn_rows(model: SmartTurn, all_sentences: list[Sentence]) -> tuple[
        list[list[str]], list[list[str]]]:
    inside: list[list[float]] = []  # per sentence, at each pause inside it
    ends, busy = [], []
    for s in all_sentences:
        inside.append([model.complete(s.audio[:int((start + ASK_AFTER_S) * RATE)])
                       for start, _ in s.pauses])
        started = time.perf_counter()
        ends.append(model.complete(s.audio[:int((s.end + ASK_AFTER_S) * RATE)]))
        busy.append(time.perf_counter() - started)
    probs = [["asked at", "count", "P(complete) p10", "p50", "p90", "said complete"]]
    for label, values in (("a pause inside a sentence", [p for ps in inside for p in ps]),
                          ("a sentence's end", ends)):
        probs.append([label, str(len(values)), *(f"{np.percentile(values, q):.2f}"
                                                 for q in (10, 50, 90)),
                      f"{sum(v >= 0.5 for v in values) / len(values):.0%}"])
    split = sum(any(p >= 0.5 for p in ps) for ps in inside) / len(all_sentences)
    rule = [["rule", "split", "wait p50", "wait p95"]]
    for long_ms in (700, 900):
        waits = [ASK_AFTER_S + statistics.mean(busy) if p >= 0.5 else long_ms / 1000
                 for p in ends]
        rule.append([f"cut at {ASK_AFTER_S * 1000:.0f} ms if complete, else {long_ms} ms",
                     f"{split:.0%}", f"{np.percentile(waits, 50):.3f}",
                     f"{np.percentile(waits, 95):.3f}"])
    return probs, rule


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="seconds, not minutes")
    args = parser.parse_args(argv)
    if shutil.which("text2wave") is None or shutil.which("espeak-ng") is None:
        raise SystemExit("needs festival and espeak-ng: apt-get install festival "
                         "festvox-us-slt-hts festvox-kallpc16k espeak-ng sox")
    workdir = Path(tempfile.mkdtemp(prefix="bench-turns-"))
    try:
        voices = VOICES[:1] if args.smoke else VOICES
        said = sentences(voices, 3 if args.smoke else len(PAUSED), workdir)
        inside = sum(len(s.pauses) for s in said)
        print(f"== {len(said)} sentences ({len(voices)} voices), {inside} pauses of "
              f"{min(PAUSES_MS)}-{max(PAUSES_MS)} ms inside them")
        print("\n== (a) the segmenter: sentences cut into several finals, and the wait from "
              "the true end of speech to the final's cut")
        print(table(segmenter_rows(said)), flush=True)
        for label, gaps in GAPS_MS.items():
            print("\n== (c) finals that speech resuming within join_ms continues "
                  f"(min_silence_ms 300; {label} between sentences)")
            print(table(joined_rows(said, gaps)), flush=True)
        if args.smoke:
            return 0
        print(f"\n== (b) Smart Turn v3.2, asked after {ASK_AFTER_S * 1000:.0f} ms of silence")
        probs, rule = smart_turn_rows(SmartTurn(fetch_smart_turn(workdir)), said)
        print(table(probs))
        print(table(rule))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
