"""Every benchmark runs in smoke mode here, so none of them can rot."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from signaling.testing import ROOT


def run_bench(module: str, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([sys.executable, "-m", module, "--smoke", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.timeout(400)
def test_transcribe_bench_smoke() -> None:
    out = run_bench("bench.transcribe")
    for heading in ("offline WER", "fitted, beam 5 (finals)", "live WER", "TTFS p50",
                    "speakers", "models side by side", "against the targets"):
        assert heading in out
    # the live latencies are measured from where the player's speech really is: its one
    # sentence was found as a turn, and the final came after its true end
    live = out.split("live WER  finals/utts  turns/spans")[1].splitlines()[1].split()
    assert live[2] == "1/1", live
    honest = next(line for line in out.splitlines() if line.startswith("TTFS (the final ending"))
    assert 0 < float(honest.split()[-3]) < 5, honest
    assert "TTFS, Pipecat's (the turn's last final)" in out
    # and that final is dated where the speech ends (docs/protocol.md: to about 10 ms)
    placed = next(line for line in out.splitlines() if line.startswith("that final's end"))
    assert abs(float(placed.split()[-3])) < 0.2, placed
    # the models table: a row for each model compared, or a note saying why there is none
    models = out.split("models side by side")[1].split("== against the targets")[0]
    for model in ("tiny.en", "base"):
        row = next((line.split() for line in models.splitlines()
                    if line.startswith(f"{model} ")), None)
        if row is None:
            assert f"skipped {model}: not installed" in models, models
            continue
        # model, WER fixtures, WER hard (greedy, beam 5, via Opus), RTF, live WER, finals/utts,
        # TTFS p50, TTFS p95, CPU
        assert float(row[5]) > 0, row  # an offline RTF was measured
        assert int(row[7].split("/")[0]) >= 1 and float(row[8]) > 0, row  # a final came live


@pytest.mark.timeout(400)
def test_turns_bench_smoke() -> None:
    out = run_bench("bench.turns")
    table = out.split("min_silence_ms")[1].split("\n\n")[0]
    rows = [line.split() for line in table.splitlines()[1:] if line]
    # every silence setting, and a longer wait never splits more sentences
    assert [int(r[0]) for r in rows] == [200, 300, 400, 500, 700, 900], out
    splits = [int(r[1].rstrip("%")) for r in rows]
    assert splits == sorted(splits, reverse=True) and splits[0] > splits[-1], out
    waits = [float(r[3]) for r in rows]
    assert waits == sorted(waits) and 0.2 <= waits[0] < 0.35, out
    # the transcriber's rule, sentences far apart: continuing finals mends the splits, and
    # joins no two sentences
    table = out.split("1.5 s between sentences)")[1].split("\n\n")[0]
    rows = [line.split() for line in table.splitlines()[2:] if line]
    assert [int(r[0]) for r in rows] == [0, 400, 600, 800, 1000, 1200], out
    assert int(rows[0][1].rstrip("%")) > int(rows[3][1].rstrip("%")), out
    assert all(r[2] == "0%" for r in rows), out


@pytest.mark.timeout(400)
def test_fuzz_smoke() -> None:
    out = run_bench("bench.fuzz")
    assert "PASS" in out and "mismatches 0" in out


@pytest.mark.timeout(400)
def test_relay_smoke() -> None:
    out = run_bench("bench.relay")
    for line in ("ours", "bare aiohttp", "python-socketio", "ours / bare aiohttp",
                 "per server CPU-second", "fan-out", "generator CPU", "bound by"):
        assert line in out
    rows = [line.split() for line in out.splitlines() if " / " not in line
            and line.startswith(("ours ", "bare aiohttp ", "python-socketio "))]
    assert len(rows) == 3
    for cells in rows:  # every server relayed something, and a latency was measured
        numbers = [c for c in cells if c.replace(".", "").isdigit()]
        assert float(numbers[0]) > 0 and float(numbers[1]) > 0


@pytest.mark.timeout(400)
def test_scale_smoke() -> None:
    out = run_bench("bench.scale")
    assert "KiB/session" in out and "target <= 30" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("ours ", "bare "))]
    assert len(rows) == 2
    for cells in rows:
        assert cells[-1] == "200/200"  # every session still connected after the idle period


@pytest.mark.timeout(400)
def test_receive_smoke() -> None:
    out = run_bench("bench.receive")
    for line in ("idle bot", "decode", "resample", "vad", "per stream", "join/leave",
                 "target <= 3 %", "target: flat within 5 %", "aiortc as shipped"):
        assert line in out
    lines = out.splitlines()
    # one stream at 3 depths, received each way: aiortc's own and ours
    readings = [line.split()[:3] for line in lines if line.split()[:2] in (["aiortc", "1"],
                                                                           ["ours", "1"])]
    assert readings == [[way, "1", depth] for way in ("aiortc", "ours")
                        for depth in ("decode", "resample", "vad")], readings
    compared = next(line for line in lines if line.startswith("1 "))
    assert compared.endswith("x") and len(compared.split()) == 14, compared
    churn = lines[next(i for i, line in enumerate(lines) if line.startswith("bot RSS")) + 1]
    assert churn.split()[-3] == "0"  # no peer connection left behind


@pytest.mark.timeout(300)
def test_network_bench_smoke() -> None:
    out = run_bench("bench.network")
    assert "relayed: the page said relayed" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("relayed "))
    assert len(row) == 9  # four figures, each a median and its range


@pytest.mark.timeout(400)
def test_languages_bench_smoke() -> None:
    out = run_bench("bench.languages")
    assert "en: right, WER" in out and "de: right, WER" in out, out
    rows = {label: next((line for line in out.splitlines() if line.startswith(label)), None)
            for label in ("offline, each sentence alone", "offline, whole file", "live")}
    assert None not in rows.values(), out
    live = rows["live"].split()  # type: ignore[union-attr]
    assert re.fullmatch(r"\d+/\d+", live[-2]) and float(live[-1].split("/")[0]) > 0, live


@pytest.mark.timeout(300)
def test_cuts_bench_smoke() -> None:
    out = run_bench("bench.cuts")
    header, row = out.split("== tiny.en WER through Opus")[1].splitlines()[1:3]
    assert header.split()[:3] == ["set", "words", "finals"], out
    cells = row.split("  ")
    cells = [c.strip() for c in cells if c.strip()]
    # the transcriber's cutter finds each of the fixture's 8 sentences as one final
    assert cells[:3] == ["english_hard.wav", "71", "8–8 / 8"], cells
    for cell in cells[3:7]:  # four readings, each a word error rate in percent
        mean = float(cell.split()[0])
        assert 0 < mean < 60, cells
    assert all(float(ms) > 0 for ms in cells[7].split(", ")), cells


def test_the_cuts_join_speech_that_resumes_as_the_transcriber_joins_it() -> None:
    """``bench.cuts.cuts``: a pause shorter than ``join_ms`` (800 ms) leaves one final, its
    audio both stretches of speech; a longer one, two."""
    import numpy as np

    from bench.audio import RATE, read_wav
    from bench.cuts import cuts

    said = read_wav(ROOT / "tests" / "data" / "short.wav")  # speech from 0.6 s to 2.7 s
    head, tail = said[:int(2.8 * RATE)], said[int(0.5 * RATE):]
    for pause_s, finals in ((0.6, 1), (1.4, 2)):  # silence between the two: 0.2 s + the gap
        stream = np.concatenate([head, np.zeros(int((pause_s - 0.2) * RATE), np.float32), tail])
        found = cuts(stream)
        assert len(found) == finals, (pause_s, found)
        assert sum(len(c.audio) for c in found) > 2 * 2.0 * RATE  # all the speech, read
        assert found[-1].end > len(stream) - 1.0 * RATE


def test_the_offline_baseline_on_received_audio_goes_through_opus() -> None:
    """``bench.audio.through_opus`` (section (e)'s "via Opus" column): the same speech, as
    loud and in step to within the codec's look-ahead, but not the same samples."""
    import numpy as np

    from bench.audio import read_wav, through_opus

    sent = read_wav(ROOT / "tests" / "data" / "short.wav")
    got = through_opus(sent)
    assert abs(len(got) - len(sent)) < 0.02 * len(sent)
    n = min(len(got), len(sent))
    assert abs(float(np.std(got)) / float(np.std(sent)) - 1) < 0.1
    lag = max(range(0, 400), key=lambda k: float(np.dot(sent[:n - 400], got[k:k + n - 400])))
    assert lag < 200  # under 12.5 ms late
    aligned = got[lag:lag + n - 400]
    assert np.corrcoef(sent[:n - 400], aligned)[0, 1] > 0.9
    assert not np.array_equal(sent[:n - 400], aligned)
