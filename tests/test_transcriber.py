"""The transcription pipeline: segmentation, scheduling, Whisper, and the bot end to end."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from faster_whisper.audio import decode_audio

from bots.scheduler import Scheduler
from bots.models import listing
from bots.stt import (STT, ModelError, Recognition, WhisperSTT, drop_restart, load_whisper,
                      resolve_model)
from bots.testing import FakeLobby, ScriptedSTT
from bots.transcriber import TranscriberBot
from bots.vad import Segmenter
from shared import protocol as p
from signaling.dispatch import DISPATCHER

from .conftest import Clients
from .speech import DATA, noise, reference, wer, words, write_wav
from .helpers import api, api_text, shown, start_player, start_transcriber, wait_until

WER_BOUND = 0.15  # tiny.en on our synthetic speech: ~2-5 %; the bound leaves room for jitter


def feed(segmenter: Segmenter, audio: np.ndarray, step: int = 320) -> list[Any]:
    out = []
    for i in range(0, len(audio), step):
        out += segmenter.feed(audio[i:i + step])
    return out


def test_segmenter_finds_utterances_and_ignores_silence_and_noise() -> None:
    audio = np.concatenate([decode_audio(str(DATA / "speaker_a.wav"), 16000),
                            np.zeros(16000, np.float32)])
    finals = [u for u in feed(Segmenter(), audio) if u.final]
    assert len(finals) == 2
    assert 0.2 < finals[0].start / 16000 < 0.6 and 3.5 < finals[0].end / 16000 < 4.3
    assert not feed(Segmenter(), np.zeros(10 * 16000, np.float32))
    assert not feed(Segmenter(), noise(10))


def test_segmenter_offers_a_tentative_end_before_the_final() -> None:
    audio = np.concatenate([decode_audio(str(DATA / "short.wav"), 16000),
                            np.zeros(16000, np.float32)])
    events = feed(Segmenter(), audio)
    last_tentative = [u for u in events if not u.final][-1]
    final = next(u for u in events if u.final)
    assert (last_tentative.start, last_tentative.end) == (final.start, final.end)
    assert events.index(last_tentative) < events.index(final)
    # ``pausing`` (the transcriber then reads its audio as it comes): from the first silent
    # chunk in an utterance to its end, when a tentative end is offered, and never in silence
    seg, seen = Segmenter(), []
    for i in range(0, len(audio), 320):
        got = seg.feed(audio[i:i + 320])
        seen.append((seg.in_speech, seg.pausing, [u.final for u in got]))
    assert not any(pausing for speech, pausing, _ in seen if not speech)
    assert all(pausing for _, pausing, got in seen if got == [False])
    assert any(speech and not pausing for speech, pausing, _ in seen)
    assert not seen[-1][0] and not seen[-1][1]


def test_segmenter_says_a_speaker_went_quiet_before_it_can_call_the_pause() -> None:
    """``fading`` (the transcriber then reads frames as they come and polls sooner): it is on
    for 40 ms or more before every tentative end, off for most of the speech, and off as each
    utterance starts (not left over from the last one's pause)."""
    utterances: dict[str, int] = {}
    for name in ("short.wav", "speaker_a.wav", "speaker_b.wav"):
        audio = np.concatenate([decode_audio(str(DATA / name), 16000),
                                np.zeros(16000, np.float32)])
        seg = Segmenter()
        quiet_for, before_ends, speech, fading, starts = 0, [], 0, 0, 0
        for i in range(0, len(audio), 320):
            was_in_speech = seg.in_speech
            got = seg.feed(audio[i:i + 320])
            if any(not u.final for u in got):
                before_ends.append(quiet_for)
            if seg.in_speech and not was_in_speech:
                assert not seg.fading, (name, i)
                starts += 1
            if seg.in_speech and not seg.pausing:
                speech, fading = speech + 1, fading + seg.fading
            quiet_for = quiet_for + 1 if seg.fading or seg.pausing else 0
        assert before_ends and min(before_ends) >= 2, (name, before_ends)
        assert fading < 0.35 * speech, (name, fading, speech)
        utterances[name] = starts
    assert max(utterances.values()) >= 2, utterances  # a start after another's pause was seen


def test_segmenter_cuts_long_speech() -> None:
    from bots.vad import VadConfig

    speech = decode_audio(str(DATA / "speaker_b.wav"), 16000)
    finals = [u for u in feed(Segmenter(VadConfig(max_utterance_s=2.0)), speech) if u.final]
    assert any(u.forced for u in finals)
    assert all(u.duration <= 2.1 for u in finals)


async def test_scheduler_finals_first_interims_coalesced_and_lag_skipped() -> None:
    gate = threading.Event()
    stt = ScriptedSTT(script=lambda audio, final: f"{'F' if final else 'I'}{len(audio)}", gate=gate)
    sched = Scheduler(workers=1, max_lag=0.5)
    blocker = sched.submit(stt, "a", np.zeros(1), final=True)  # occupies the only worker
    interim_old = sched.submit(stt, "b", np.zeros(2), final=False)
    interim_new = sched.submit(stt, "b", np.zeros(3), final=False)  # replaces the older one
    final_b = sched.submit(stt, "b", np.zeros(4), final=True)
    stale = sched.submit(stt, "c", np.zeros(5), final=True, audio_end=time.monotonic() - 5)
    assert await interim_old is None
    gate.set()
    assert (await blocker).text == "F1"
    assert (await final_b).text == "F4"
    assert await stale is None  # too far behind live: skipped, and counted
    assert (await interim_new).text == "I3"
    assert [n for n, _ in stt.calls] == [1, 4, 3]  # the final ran before the waiting interim
    assert sched.stats.speakers["c"].skipped == 1 and sched.stats.speakers["b"].replaced == 1
    await sched.close()


async def test_finals_that_wait_together_run_as_one_batch() -> None:
    """Finals queued behind a busy worker run as one batch (at most ``batch``) when the engine
    takes batches, each answered with its own reading; a stale one is still skipped, and an
    engine that does not take batches gets them one by one."""
    gate = threading.Event()
    stt = ScriptedSTT(script=lambda audio, final: f"F{len(audio)}", gate=gate, batches=True)
    sched = Scheduler(workers=1, max_lag=0.5, batch=3)
    blocker = sched.submit(stt, "a", np.zeros(1), final=True)
    stale = sched.submit(stt, "b", np.zeros(2), final=True, audio_end=time.monotonic() - 5)
    waiting = [sched.submit(stt, speaker, np.zeros(n), final=True)
               for speaker, n in (("c", 3), ("d", 4), ("e", 5), ("f", 6))]
    gate.set()
    assert (await blocker).text == "F1" and await stale is None
    assert [(await f).text for f in waiting] == ["F3", "F4", "F5", "F6"]  # type: ignore[union-attr]
    assert stt.batch_sizes == [3]  # c, d and e together; then f alone
    assert [n for n, _ in stt.calls] == [1, 3, 4, 5, 6]
    await sched.close()

    single = ScriptedSTT(gate=threading.Event())
    sched = Scheduler(workers=1, batch=3)
    futures = [sched.submit(single, s, np.zeros(1), final=True) for s in "abc"]
    assert single.gate is not None
    single.gate.set()
    await asyncio.gather(*futures)
    assert single.batch_sizes == [] and len(single.calls) == 3
    await sched.close()


async def test_lobbies_with_the_same_settings_share_their_engines() -> None:
    """Transcribers of one process that read a fixed language with the same settings share
    their engines, so the pool can batch finals from several lobbies; other settings get
    their own."""
    bots = [TranscriberBot(FakeLobby(f"lobby-{i}"), TranscriberBot.Config.parse(config))
            for i, config in enumerate(({}, {}, {"beam_size": 3}))]
    for bot in bots:
        await bot.on_joined()
    first, second, other = bots
    assert first.stt_final is second.stt_final and first.stt_interim is second.stt_interim
    assert other.stt_final is not first.stt_final and other.stt_interim is first.stt_interim
    assert first.stt_final is not None and first.stt_final.batches
    for bot in bots:
        await bot.on_stop()


def test_whisper_reads_a_batch_as_it_reads_each() -> None:
    """Three utterances of different lengths in one encoder pass and one beam search read as
    they do one at a time; each is given its share of the time."""
    stt = WhisperSTT(load_whisper("tiny.en"), name="tiny.en", beam_size=5)
    assert stt.batches
    audio = decode_audio(str(DATA / "speaker_a.wav"), 16000)
    utterances = [u.audio for u in feed(Segmenter(), np.concatenate(
        [audio, np.zeros(16000, np.float32)])) if u.final]
    utterances.append(decode_audio(str(DATA / "short.wav"), 16000))
    assert len(utterances) == 3
    alone = [stt.recognize(a, final=True) for a in utterances]
    together = stt.recognize_batch(utterances, final=True, languages=[None] * 3)
    for one, batched in zip(alone, together, strict=True):
        assert wer(one.text, batched.text) <= 0.1, (one.text, batched.text)
    assert len({r.inference_s for r in together}) == 1 and together[0].inference_s > 0


async def test_transcribers_share_one_pool_made_from_the_environment_when_needed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The process's pool is made by the first transcriber, from the environment as it is
    then (not at import), shared by the next, and closed by the last one to stop."""
    monkeypatch.setenv("VOICEBOT_STT_WORKERS", "3")
    monkeypatch.setenv("VOICEBOT_STT_MAX_LAG", "42")
    config = TranscriberBot.Config.parse({})
    first, second = (TranscriberBot(FakeLobby(), config) for _ in range(2))
    pool = first.scheduler
    assert second.scheduler is pool and (pool.workers, pool.max_lag) == (3, 42.0)
    own = Scheduler(workers=1)
    third = TranscriberBot(FakeLobby(), config, scheduler=own)  # its maker's to close
    await first.on_stop()
    await third.on_stop()
    late = pool.submit(ScriptedSTT(), "a", np.zeros(1), final=True)
    assert (await late) is not None  # still open: the second transcriber uses it
    await second.on_stop()
    assert pool.submit(ScriptedSTT(), "a", np.zeros(1), final=True).cancelled()
    assert (await own.submit(ScriptedSTT(), "a", np.zeros(1), final=True)) is not None
    await own.close()
    monkeypatch.setenv("VOICEBOT_STT_WORKERS", "2")
    fresh = TranscriberBot(FakeLobby(), config)
    assert fresh.scheduler is not pool and fresh.scheduler.workers == 2
    await fresh.on_stop()


def test_model_resolution_and_errors(tmp_path: Path) -> None:
    bundled = resolve_model("tiny.en", tmp_path)
    assert Path(bundled, "model.bin").is_file()
    assert any(m["name"] == "tiny.en" and m["installed"] for m in listing(tmp_path))
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        resolve_model("nope", tmp_path)
    with pytest.raises(ModelError, match="not installed: run `voicebot models install base`"):
        resolve_model("base", tmp_path)
    with pytest.raises(ModelError, match="not a CTranslate2 Whisper model"):
        resolve_model(str(tmp_path))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in ("config.json", "tokenizer.json"):
        (corrupt / f).write_text("{}")
    (corrupt / "model.bin").write_bytes(b"\0" * 1024)
    with pytest.raises(ModelError, match="does not describe a Whisper model"):
        load_whisper(str(corrupt))
    for f in ("config.json", "tokenizer.json"):
        (corrupt / f).write_bytes((Path(bundled) / f).read_bytes())
    with pytest.raises(ModelError, match="cannot load model"):
        load_whisper(str(corrupt))
    with pytest.raises(ModelError, match="English-only"):
        WhisperSTT(load_whisper("tiny.en"), name="tiny.en", language="de")


def test_a_restarted_utterance_is_cut() -> None:
    assert drop_restart("Good morning, can you hear me clearly. Good morning,") == \
        "Good morning, can you hear me clearly."
    assert drop_restart("Good morning. Can you hear me? good morning, can you") == \
        "Good morning. Can you hear me?"
    for kept in ("Good morning. Can you hear me?", "We shipped it. We are done.", "Yes.", ""):
        assert drop_restart(kept) == kept


@pytest.mark.parametrize(("window", "min_window_s"), [("full", 0), ("dynamic", 0),
                                                     ("dynamic", 10)])
def test_whisper_recognizes_fixture_speech(window: str, min_window_s: float) -> None:
    stt = WhisperSTT(load_whisper("tiny.en"), name="tiny.en", window=window,
                     min_window_s=min_window_s, beam_size=5)
    # the encoder window in 10 ms frames: the speech plus 1 s, in 2 s steps, then the floor
    expected = {"full": 3000, "dynamic": 1000 if min_window_s else 400}[window]
    assert stt._frames(2.5) == expected  # noqa: SLF001
    assert stt._frames(13.2) == (3000 if window == "full" else 1600)  # noqa: SLF001
    audio = decode_audio(str(DATA / "short.wav"), 16000)
    result = stt.recognize(audio, final=True)
    assert wer(reference("short.wav"), result.text) <= WER_BOUND, result.text
    silent = stt.recognize(np.zeros(32000, np.float32), final=True)
    assert silent.text == "" and silent.dropped == "no speech"


class FileTrack:
    """Frames of a WAV file at 48 kHz, as aiortc decodes a peer's mono (the samples in both
    channels), paced faster than real time (the pipeline keeps up)."""

    kind = "audio"

    def __init__(self, path: Path, pace: float = 0.004) -> None:
        import av

        from bots.mesh import dual_mono

        self.frames = []
        with av.open(str(path)) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=48000,
                                          frame_size=960)
            for frame in container.decode(audio=0):
                self.frames += map(dual_mono, resampler.resample(frame))
        silence = np.zeros((1, 960 * 2), dtype=np.int16)
        for _ in range(60):  # 1.2 s of silence closes the last utterance
            f = av.AudioFrame.from_ndarray(silence, format="s16", layout="stereo")
            f.sample_rate = 48000
            self.frames.append(f)
        self.pace = pace
        self.stopped = False

    async def recv(self) -> Any:
        from aiortc.mediastreams import MediaStreamError

        if not self.frames or self.stopped:
            raise MediaStreamError
        await asyncio.sleep(self.pace)
        return self.frames.pop(0)

    def stop(self) -> None:
        self.stopped = True


async def test_transcriber_in_a_fake_lobby() -> None:
    lobby = FakeLobby()
    bot = TranscriberBot(lobby, TranscriberBot.Config.parse({}))
    await lobby.start(bot)
    assert [s for s, _ in lobby.statuses] == ["loading", "live"]
    await lobby.add_peer("Alice", FileTrack(DATA / "speaker_a.wav"))  # type: ignore[arg-type]
    await wait_until(lambda: len([t for t in lobby.transcripts if t.final]) >= 2, 30, "finals")
    finals = [t for t in lobby.transcripts if isinstance(t, p.Transcript) and t.final]
    assert all(t.speaker_name == "Alice" and t.model == "tiny.en" for t in finals)
    assert wer(reference("speaker_a.wav"), " ".join(t.text for t in finals)) <= WER_BOUND
    assert finals[0].end > finals[0].start
    await lobby.stop()


class FirstReadsNothing(STT):
    """An interim engine that reads nothing the first time (too little speech yet), then
    words; it notes how much audio each call had."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def recognize(self, audio: np.ndarray, *, final: bool,
                  language: str | None = None) -> Recognition:
        self.calls.append(len(audio) / 16000)
        return Recognition(text="hello" if len(self.calls) > 1 else "", language="en",
                           no_speech_prob=0.0, avg_logprob=0.0, audio_s=len(audio) / 16000,
                           inference_s=0.0)


async def test_a_first_interim_that_reads_nothing_is_tried_again_soon() -> None:
    """The first interim is tried after interim_after (0.2 s) of speech; one that read
    nothing is tried again after an eighth of interim_interval, not a whole one."""
    lobby = FakeLobby()
    bot = TranscriberBot(lobby, TranscriberBot.Config.parse({}))
    await lobby.start(bot)
    bot.stt_interim = engine = FirstReadsNothing()
    await lobby.add_peer("Alice", FileTrack(DATA / "speaker_a.wav", pace=0.02))  # type: ignore[arg-type]
    await wait_until(lambda: len(engine.calls) >= 2, 30, "a second interim")
    await lobby.stop()
    first, second = engine.calls[:2]
    # the audio of an interim starts 0.192 s before the speech; frames come 5 at a time
    assert first <= 0.2 + 0.192 + 0.1 + 0.04, engine.calls
    # an eighth of interim_interval (0.125 s) later, less a VAD chunk (the audio of an
    # interim ends on one); interim_interval would be 1.0
    assert 0.125 - 0.032 <= second - first < 0.5, engine.calls
    shown = [t for t in lobby.transcripts if isinstance(t, p.Transcript) and not t.final]
    assert shown and shown[0].text == "hello"


async def test_a_transcriber_reports_its_compute() -> None:
    """Every ``report_every`` seconds: its status again, with how many seconds of recognition
    it used a second (its share of the worker pool)."""
    lobby = FakeLobby()
    bot = TranscriberBot(lobby, TranscriberBot.Config.parse({}))
    bot.report_every = 1
    await lobby.start(bot)
    await lobby.add_peer("Alice", FileTrack(DATA / "speaker_a.wav", pace=0.02))  # type: ignore[arg-type]
    await wait_until(lambda: any(f.get("compute", 0) > 0 for f in lobby.figures), 30,
                     "a report of compute")
    await lobby.stop()
    reports = [(s, f) for s, f in zip(lobby.statuses, lobby.figures) if "compute" in f]
    assert all(status == ("live", "tiny.en, listening") for status, _ in reports)
    assert all(0 <= f["compute"] < 2 and "lag" in f for _, f in reports)
    assert bot.busy_s > 0


class CatchUpTrack(FileTrack):
    """The file as if live for ``live_s``, then ``burst_s`` of silence at once: what a bot's
    sender does when its file ends and it catches up on the silence it owes."""

    def __init__(self, path: Path, live_s: float, burst_s: float = 10.0) -> None:
        import av

        super().__init__(path, pace=0.02)
        self.live = int(live_s / 0.02)
        self.frames = self.frames[:self.live]
        silence = np.zeros((1, 960 * 2), dtype=np.int16)
        for _ in range(int(burst_s / 0.02)):
            f = av.AudioFrame.from_ndarray(silence, format="s16", layout="stereo")
            f.sample_rate = 48000
            self.frames.append(f)
        self.burst_at: float | None = None

    async def recv(self) -> Any:
        from aiortc.mediastreams import MediaStreamError

        if self.live > 0:
            self.live -= 1
            return await super().recv()
        if self.burst_at is None:
            self.burst_at = time.time()
        if not self.frames or self.stopped:
            raise MediaStreamError
        await asyncio.sleep(0)
        return self.frames.pop(0)


async def test_transcript_times_are_when_the_speech_came() -> None:
    """A final decoded while a burst of audio comes in is still dated by when its own audio
    arrived, not counted back from the newest audio (which would put it seconds too early)."""
    lobby = FakeLobby()
    bot = TranscriberBot(lobby, TranscriberBot.Config.parse({}))
    await lobby.start(bot)
    # short.wav's speech ends 2.8 s in: the burst starts as the pause that ends it does
    track = CatchUpTrack(DATA / "short.wav", live_s=2.8)
    await lobby.add_peer("Alice", track)  # type: ignore[arg-type]
    # the utterance's final (an early one may come first, at the comma's pause)
    def whole() -> list[p.Transcript]:
        return [t for t in lobby.transcripts if isinstance(t, p.Transcript) and t.final
                and t.end - t.start > 2.0]
    await wait_until(whole, 30, "the final")
    final = whole()[0]
    assert track.burst_at is not None
    assert abs(final.end - track.burst_at) < 1.0, final.end - track.burst_at
    assert 2.0 < final.end - final.start < 2.8  # the utterance's own length
    await lobby.stop()


class RealtimeTrack(FileTrack):
    """The file at the pace of a live microphone: frame n is delivered when its last sample
    has been spoken, ``started + (n + 1) * 20 ms`` (an absolute schedule: no drift)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, pace=0.02)
        self.started: float | None = None
        self.sent = 0

    async def recv(self) -> Any:
        from aiortc.mediastreams import MediaStreamError

        if not self.frames or self.stopped:
            raise MediaStreamError
        if self.started is None:
            self.started = time.time()
        self.sent += 1
        await asyncio.sleep(max(0.0, self.started + self.sent * 0.02 - time.time()))
        return self.frames.pop(0)


class HeldUpTrack(RealtimeTrack):
    """``RealtimeTrack`` with timestamps (as aiortc's received frames have), but the frames
    due in the half second around the end of each stretch of speech in ``spans`` are held up
    and come 0.6 s after it, all at once: a network that held them, or a loop busy with other
    speakers that got to them late."""

    def __init__(self, path: Path, spans: list[tuple[float, float]]) -> None:
        from fractions import Fraction

        super().__init__(path)
        for n, frame in enumerate(self.frames):
            frame.pts, frame.time_base = n * 960, Fraction(1, 48000)
        self.spans = spans

    async def recv(self) -> Any:
        due = (self.sent + 1) * 0.02
        for _, end in self.spans:
            if end - 0.2 <= due <= end + 0.3:
                assert self.started is not None
                await asyncio.sleep(max(0.0, self.started + end + 0.6 - time.time()))
                self.sent += 1
                return self.frames.pop(0)
        return await super().recv()


@pytest.mark.parametrize("held_up", [False, True], ids=["on-time", "held-up"])
async def test_a_finals_start_and_end_are_where_its_speech_is(held_up: bool) -> None:
    """Against speech whose bounds the test knows (where the file's silence ends and begins
    again, to the 20 ms), a final's ``start`` and ``end`` are within 50 ms: the speech itself,
    not the padding Whisper gets around it, on the clock of the audio's arrival — when it
    would have come had nothing held it up (here, held up, the end of each sentence comes
    0.6 s late: dated by when it was read, the finals were 0.6 s late)."""
    from bench.audio import read_wav, speech_spans

    lobby = FakeLobby()
    bot = TranscriberBot(lobby, TranscriberBot.Config.parse({}))
    await lobby.start(bot)
    truth = speech_spans(read_wav(DATA / "speaker_a.wav"), min_gap_s=0.35)
    track = HeldUpTrack(DATA / "speaker_a.wav", truth) if held_up else \
        RealtimeTrack(DATA / "speaker_a.wav")
    await lobby.add_peer("Alice", track)  # type: ignore[arg-type]

    def errors() -> list[tuple[float, float]]:
        # the finals as shown: one posted at a pause inside a sentence is replaced by the
        # whole sentence's, which starts where the first did
        assert track.started is not None
        return [(round(t.start - track.started - s, 3), round(t.end - track.started - e, 3))
                for t, (s, e) in zip(shown(lobby.transcripts), truth)]

    def placed() -> bool:
        found = errors()
        return len(found) == len(truth) and all(abs(a) <= 0.05 and abs(b) <= 0.05
                                                for a, b in found)

    try:
        await wait_until(placed, 30, "finals where the speech is")
    except AssertionError:
        raise AssertionError(f"finals' (start, end) errors: {errors()}") from None
    finals = [t for t in lobby.transcripts if isinstance(t, p.Transcript) and t.final]
    # the first interim of an utterance starts where its final does
    first = next(t for t in lobby.transcripts if isinstance(t, p.Transcript) and not t.final)
    final = next(t for t in finals if t.segment_id == first.segment_id)
    assert abs(first.start - final.start) <= 0.02, (first.start, final.start)
    await lobby.stop()


# --- end to end with real processes --------------------------------------------------------------




async def captioned_lobby(server: TestServer, clients: Clients, provider_process: Any,
                          name: str, **provider: Any) -> tuple[str, Any, Any]:
    """A provider, a host in lobby ``name``, and a transcriber there that is live."""
    url = str(server.make_url("/"))
    provider_process(url, capacity=6, **provider)
    await wait_until(lambda: server.app[DISPATCHER].providers, 30, "the provider")
    human, inbox = await clients.new("Host")
    lobby = (await human.join(lobby_name=name)).lobby.id
    await start_transcriber(url, human.config.token, lobby)
    await inbox.wait_for(p.BotStatus, lambda m: m.kind == "transcriber" and m.status == "live",
                         timeout=60)
    return lobby, human, inbox


def finals_of(inbox: Any, speaker: str) -> list[p.Transcript]:
    """The speaker's finals as a reader shows them (none that a later one replaced)."""
    return shown([t for t in inbox.of(p.Transcript, final=True) if t.speaker_name == speaker])


def read_out(inbox: Any, speaker: str, fixture: str) -> bool:
    """Whether the speaker's finals shown so far read the fixture (finals posted at a pause
    are replaced when the sentence goes on: the text converges)."""
    return wer(reference(fixture), " ".join(t.text for t in finals_of(inbox, speaker))) \
        <= WER_BOUND


async def test_end_to_end_live_captions(server: TestServer, clients: Clients,
                                        provider_process: Any) -> None:
    url = str(server.make_url("/"))
    lobby, human, inbox = await captioned_lobby(server, clients, provider_process, "captions")
    player = await start_player(url, human.config.token, lobby, DATA / "speaker_a.wav", "Alice")
    await wait_until(lambda: read_out(inbox, "Alice", "speaker_a.wav"), 60, "the finals")

    finals = finals_of(inbox, "Alice")
    assert all(t.speaker_id == player["session_id"] and t.message_id for t in finals)
    # interims came first, for the same sentence (its segment, or one its final replaced),
    # and were partial text of it
    first = finals[0]
    sentence = {first.segment_id, *first.replaces}
    sentence |= {old for t in inbox.of(p.Transcript, final=True) if t.segment_id in sentence
                 for old in t.replaces}
    interims = [t for t in inbox.of(p.Transcript, final=False) if t.segment_id in sentence]
    assert interims, "no interim before the first final"
    assert inbox.messages.index(interims[0]) < inbox.messages.index(first)
    assert set(words(interims[0].text).split()) & set(words(first.text).split())

    # a late joiner gets the finals from the lobby's history
    late, late_inbox = await clients.new("Late")
    await late.join(lobby_id=lobby)
    await late_inbox.wait_for(p.Transcript, lambda t: t.final and t.text == first.text)

    status, srt = await api_text(url + f"api/lobbies/{lobby}/transcript?format=srt")
    assert status == 200 and "00:00:00,000 --> " in srt and "Alice: " in srt
    status, body = await api("GET", url + f"api/lobbies/{lobby}/transcript?format=json", None)
    assert [s["speaker"] for s in body["segments"]] == ["Alice"] * len(body["segments"])
    status, vtt = await api_text(url + f"api/lobbies/{lobby}/transcript?format=vtt")
    assert vtt.startswith("WEBVTT") and "<v Alice>" in vtt
    status, body = await api("GET", url + f"api/lobbies/{lobby}/transcript?format=doc", None)
    assert status == 400

    # its figures every 10 s, exported; repeating its status, they are not the lobby's to see
    lives = [m for m in inbox.of(p.BotStatus) if m.kind == "transcriber" and m.status == "live"]
    series = f'voicebot_transcription_compute_ratio{{bot_id="{lives[0].bot_id}"}}'
    deadline = time.monotonic() + 30
    while series not in (await api_text(url + "metrics"))[1]:
        assert time.monotonic() < deadline, "no compute figure"
        await asyncio.sleep(0.5)
    lives = [m for m in inbox.of(p.BotStatus) if m.kind == "transcriber" and m.status == "live"]
    assert len(lives) == 1, lives



async def test_two_speakers_at_once_are_attributed(server: TestServer, clients: Clients,
                                                   provider_process: Any) -> None:
    url = str(server.make_url("/"))
    lobby, human, inbox = await captioned_lobby(server, clients, provider_process, "crosstalk")
    await asyncio.gather(
        start_player(url, human.config.token, lobby, DATA / "speaker_a.wav", "Alice"),
        start_player(url, human.config.token, lobby, DATA / "speaker_b.wav", "Bob"))
    try:
        await wait_until(lambda: read_out(inbox, "Alice", "speaker_a.wav") and
                         read_out(inbox, "Bob", "speaker_b.wav"), 90, "finals of both")
    except AssertionError:
        raise AssertionError([(t.speaker_name, t.text) for t in inbox.of(p.Transcript)
                              if t.final]) from None


async def test_silence_and_noise_give_no_transcripts(server: TestServer, clients: Clients,
                                                     provider_process: Any,
                                                     tmp_path: Path) -> None:
    url = str(server.make_url("/"))
    write_wav(tmp_path / "silence.wav", np.zeros(10 * 16000, np.float32))
    write_wav(tmp_path / "noise.wav", noise(10))
    lobby, human, inbox = await captioned_lobby(server, clients, provider_process, "quiet",
                                                media_dirs=(tmp_path,))
    await start_player(url, human.config.token, lobby, tmp_path / "silence.wav", "Silence")
    await start_player(url, human.config.token, lobby, tmp_path / "noise.wav", "Noise")
    await inbox.wait_for(p.BotStatus, lambda m: "finished silence" in m.detail, timeout=60)
    await inbox.wait_for(p.BotStatus, lambda m: "finished noise" in m.detail, timeout=60)
    await asyncio.sleep(2.0)  # anything still in flight would arrive by now
    assert inbox.of(p.Transcript) == []


async def test_model_errors_are_clear(server: TestServer, clients: Clients,
                                      provider_process: Any, tmp_path: Path) -> None:
    import shutil

    from bots.models import default_models_dir

    url = str(server.make_url("/"))
    # a store whose "base" is damaged after install: the bot fails, and says so in the lobby
    store = tmp_path / "models"
    store.mkdir()
    shutil.copytree(default_models_dir() / "base", store / "base")
    with open(store / "base" / "model.bin", "r+b") as f:
        f.truncate(1024)
    provider = provider_process(url, VOICEBOT_MODELS_DIR=str(store))
    await wait_until(lambda: server.app[DISPATCHER].providers, 30, "the provider")
    human, inbox = await clients.new("Host")
    lobby = (await human.join(lobby_name="no model")).lobby.id
    status, body = await api("POST", url + f"api/lobbies/{lobby}/bots", human.config.token,
                             {"kind": "transcriber", "config": {"model": "large-v9"}})
    assert (status, body["error"]["code"]) == (400, "invalid_config")  # before anyone joins
    # everything the plugin would refuse is refused at the POST, with its message
    for bad, expected in (({"language": "xx"}, "language"), ({"task": "summarize"}, "task"),
                          ({"threads": -3}, "threads"),
                          ({"min_silence_ms": -5}, "min_silence_ms"),
                          ({"compute_type": "bogus"}, "compute_type"),
                          ({"model": "tiny.en", "task": "translate"}, "models install base"),
                          ({"model": "tiny.en", "language": "de"}, "English only")):
        status, body = await api("POST", url + f"api/lobbies/{lobby}/bots", human.config.token,
                                 {"kind": "transcriber", "config": bad})
        assert (status, body["error"]["code"]) == (400, "invalid_config"), (bad, body)
        assert expected in body["error"]["message"], (bad, body)
    await start_transcriber(url, human.config.token, lobby, model="base")
    failed = await inbox.wait_for(p.BotStatus, lambda m: m.status == "failed" and
                                  "cannot load" in m.detail, timeout=60)
    assert "cannot load model 'base'" in failed.detail
    await inbox.wait_for(p.Chat, lambda m: m.kind == "system" and "cannot load model" in m.text)
    await wait_until(lambda: "cannot load model 'base'" in provider.log(), 10, "the log")
