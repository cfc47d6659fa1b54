"""``transcriber``: live captions for every speaker, posted to the lobby as transcripts.

Per speaker: WebRTC frames → 16 kHz mono (PyAV) → Silero VAD segmentation → the shared
scheduler → Whisper. While someone speaks, an interim result about every second (when there is
spare capacity); when they pause, the final. A pause starts a speculative final at once, so the
final is usually ready when the silence has confirmed the end of the utterance.

The model is loaded once per provider process and shared by every lobby and speaker, and so is
the scheduler's worker pool (``VOICEBOT_STT_WORKERS`` threads, 1 by default): the first
transcriber of the process makes it, the last one to stop closes it.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from shared import protocol as p
from shared.protocol import ErrorCode, ProtocolError
from shared.tasks import TaskSet

from .audio import SpeechResampler
from .inbound import InboundAudio, recv_batch
from .language import LanguagePolicy
from .models import listing
from .plugin import Bot, BotConfig, LobbyAccess, Peer, setting
from .scheduler import Scheduler
from .stt import LANGUAGES, STT, Recognition, WhisperSTT, load_whisper
from .vad import Segmenter, Utterance, VadConfig

log = logging.getLogger(__name__)

# what CTranslate2 accepts on a CPU or a GPU
COMPUTE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16", "float32", "default", "auto")


@dataclass(frozen=True)
class TranscriberConfig(BotConfig):
    model: str = setting("tiny.en", "an installed model (`voicebot models list`)")
    compute_type: str = setting("int8", "CTranslate2 compute type: int8, int8_float32, float32")
    threads: int = setting(0, "CPU threads per inference (0: one per core, at most 4)",
                           minimum=0, maximum=64)
    beam_size: int = setting(5, "beam size of finals (interims are greedy: 1)",
                             minimum=1, maximum=10)
    language: str = setting("en", "language spoken, or auto: detected per utterance "
                            "(a multilingual model; a speaker's language sticks)")
    task: str = setting("transcribe", "transcribe, or translate (to English; multilingual "
                        "models)")
    final_window: str = setting("auto", "encoder window for finals: full (Whisper's 30 s), "
                                "dynamic (fitted to the utterance, at least "
                                "final_min_window_s), or auto (dynamic; while other finals "
                                "wait, as short as an interim's, greedy)")
    final_min_window_s: float = setting(10.0, "the shortest encoder window for finals, in "
                                        "seconds (Whisper reads a window cut close to the "
                                        "speech less well)", minimum=0, maximum=30)
    interim_interval: float = setting(1.0, "seconds between interim results; 0 turns them off",
                                      minimum=0, maximum=10)
    interim_after: float = setting(0.2, "seconds of speech (from where it starts) before "
                                   "the first interim",
                                   minimum=0, maximum=10)
    min_silence_ms: int = setting(300, "a pause this long ends an utterance",
                                  minimum=100, maximum=5000)
    max_utterance_s: float = setting(15.0, "longer utterances are cut", minimum=2, maximum=30)
    lag_warning_s: float = setting(3.0, "report 'lagging' when a speaker is this far behind",
                                   minimum=0.5, maximum=60)

    def validate(self) -> None:
        def bad(message: str) -> ProtocolError:
            return ProtocolError(ErrorCode.INVALID_CONFIG, message)

        if self.language != "auto" and self.language not in LANGUAGES:
            raise bad(f"unknown language code {self.language!r}")
        if self.task not in ("transcribe", "translate"):
            raise bad("task must be transcribe or translate")
        if self.compute_type not in COMPUTE_TYPES:
            raise bad(f"compute_type must be one of {', '.join(COMPUTE_TYPES)}")
        if self.final_window not in ("full", "dynamic", "auto"):
            raise bad("final_window must be full, dynamic or auto")
        if self.interim_interval and self.interim_interval < 0.3:
            raise bad("interim_interval must be 0 or within 0.3..10")
        installed = {m["name"]: m for m in listing() if m.get("installed")}
        if self.model not in installed:
            raise bad(f"model {self.model!r} is not installed here (installed: "
                      f"{', '.join(sorted(installed)) or 'none'}; `voicebot models install NAME`)")
        if installed[self.model].get("multilingual") is False:
            hint = "install a multilingual model (`voicebot models install base`) and pick it"
            if self.task == "translate":
                raise bad(f"{self.model} knows English only and cannot translate: {hint}")
            if self.language not in ("en", "auto"):
                raise bad(f"{self.model} knows English only, not {self.language!r}: {hint}")

    @classmethod
    def choices(cls) -> dict[str, list[Any]]:
        installed = [m for m in listing() if m.get("installed")]
        if any(m.get("multilingual") is not False for m in installed):
            tasks, languages = ["transcribe", "translate"], ["auto", *sorted(LANGUAGES)]
        else:  # English-only models: offer nothing they can't do
            tasks, languages = ["transcribe"], ["en", "auto"]
        return {"model": [m["name"] for m in installed], "task": tasks, "language": languages,
                "compute_type": list(COMPUTE_TYPES), "final_window": ["auto", "full", "dynamic"]}

    @classmethod
    def choices_by(cls) -> dict[str, dict[str, dict[Any, list[Any]]]]:
        """What each installed model can do: an English-only one transcribes English only."""
        languages, tasks = {}, {}
        for m in listing():
            if m.get("installed"):
                english_only = m.get("multilingual") is False
                languages[m["name"]] = ["en", "auto"] if english_only else \
                    ["auto", *sorted(LANGUAGES)]
                tasks[m["name"]] = ["transcribe"] if english_only else ["transcribe", "translate"]
        return {"language": {"model": languages}, "task": {"model": tasks}}


class TranscriberBot(Bot[TranscriberConfig]):
    kind = "transcriber"
    description = "Live captions: transcribes every speaker with Whisper, interim and final."
    Config = TranscriberConfig
    receive_batch = 5  # 100 ms: well within the time to a final, and less CPU per speaker
    report_every = 10  # seconds between reports of its figures (lag, compute)

    # the process's worker pool, shared by every lobby's transcriber (they share the CPU too),
    # and how many transcribers use it: the first makes it, the last to stop closes it
    _pool: ClassVar[Scheduler | None] = None
    _pool_users: ClassVar[int] = 0

    def __init__(self, lobby: LobbyAccess, config: TranscriberConfig,
                 scheduler: Scheduler | None = None) -> None:
        """``scheduler``: a pool of one's own (its maker closes it); by default the
        process's, made from the environment (``Scheduler.from_env``) when first needed."""
        super().__init__(lobby, config)
        self._shares_pool = scheduler is None
        self.scheduler = scheduler or self._join_pool()
        self.stt_final: STT | None = None
        self.stt_interim: STT | None = None
        self.stt_fallback: STT | None = None
        self.language_policy = LanguagePolicy()  # which language, with language "auto"
        self.streams: dict[str, SpeakerStream] = {}
        self.busy_s = 0.0  # seconds its recognitions took, all speakers, since it started
        self.status = ("loading", "")  # what it last reported
        # the lag monitor, and transcripts on their way: cancelled and awaited on stop
        self.tasks = TaskSet(log, "a transcriber's task")

    @staticmethod
    def _join_pool() -> Scheduler:
        # TranscriberBot's own attributes, never a subclass's: one pool per process
        if TranscriberBot._pool is None:
            TranscriberBot._pool = Scheduler.from_env()
        TranscriberBot._pool_users += 1
        return TranscriberBot._pool

    async def _leave_pool(self) -> None:
        if not self._shares_pool:
            return
        self._shares_pool = False  # once, however often on_stop is called
        TranscriberBot._pool_users -= 1
        if TranscriberBot._pool_users == 0 and TranscriberBot._pool is self.scheduler:
            TranscriberBot._pool = None  # the next transcriber makes a new one
            await self.scheduler.close()

    async def on_joined(self) -> None:
        cfg = self.config
        self._set_status("loading", f"loading {cfg.model}")
        model = await asyncio.to_thread(load_whisper, cfg.model, compute_type=cfg.compute_type,
                                        threads=cfg.threads)
        final_window = "full" if cfg.final_window == "full" else "dynamic"
        self.stt_final = WhisperSTT(model, name=cfg.model, language=cfg.language, task=cfg.task,
                                    beam_size=cfg.beam_size, window=final_window,
                                    min_window_s=cfg.final_min_window_s,
                                    policy=self.language_policy)
        self.stt_interim = WhisperSTT(model, name=cfg.model, language=cfg.language,
                                      task=cfg.task, beam_size=1, window="dynamic",
                                      policy=self.language_policy)
        self.stt_fallback = self.stt_interim if cfg.final_window == "auto" else None
        self._set_status("live", f"{cfg.model}, listening")
        self.tasks.spawn(self._watch_lag())

    async def on_track(self, peer: Peer, track: MediaStreamTrack) -> None:
        if self.stt_final is None or self.stt_interim is None:
            return
        old = self.streams.pop(peer.session_id, None)
        if old is not None:
            old.stop()
        stream = SpeakerStream(self, peer, track)
        self.streams[peer.session_id] = stream
        await stream.run()

    async def on_peer_left(self, peer: Peer) -> None:
        stream = self.streams.pop(peer.session_id, None)
        if stream is not None:
            stream.stop()

    async def on_stop(self) -> None:
        for stream in list(self.streams.values()):
            stream.stop()
        self.streams.clear()
        # one turn of the loop for what stop() just queued (interims taken off the screen): a
        # task's first step posts it; then the rest ends (finals not yet recognized go unposted)
        await asyncio.sleep(0)
        await self.tasks.close()
        await self._leave_pool()

    def _set_status(self, status: str, detail: str,
                    figures: dict[str, float] | None = None) -> None:
        self.status = (status, detail)
        self.lobby.set_status(status, detail, figures)

    def recognize(self, stt: STT, key: str, audio: np.ndarray, *, final: bool,
                  audio_end: float | None = None, fallback: STT | None = None,
                  language: Callable[[], str | None] | None = None
                  ) -> asyncio.Future[Recognition | None]:
        """``Scheduler.submit`` on the shared pool, the recognition's time counted as this
        bot's."""
        future = self.scheduler.submit(stt, key, audio, final=final, audio_end=audio_end,
                                       fallback=fallback, language=language)
        future.add_done_callback(self._count)
        return future

    def _count(self, future: asyncio.Future[Recognition | None]) -> None:
        if not future.cancelled() and future.exception() is None:
            result = future.result()
            if result is not None:
                self.busy_s += result.inference_s

    async def _watch_lag(self) -> None:
        lagging = False
        reported_skips = 0
        ticks = 0
        busy_then, then = self.busy_s, time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            worst = max((s.lag() for s in self.streams.values()), default=0.0)
            skipped = sum(s.skipped for s in self.streams.values())
            figures = {"lag": round(worst, 2), "skipped": skipped}
            if ticks % self.report_every == 0:
                for stream in self.streams.values():
                    log.info("%s: %s", stream.key, stream.describe())
                # seconds of recognition a second, lately: against the pool's workers
                # (VOICEBOT_STT_WORKERS), the headroom left
                now = time.monotonic()
                figures["compute"] = round((self.busy_s - busy_then) / (now - then), 3)
                busy_then, then = self.busy_s, now
                self._set_status(*self.status, figures)  # the same status: new figures
            if worst > self.config.lag_warning_s or (skipped > reported_skips and not lagging):
                lagging = True
                reported_skips = skipped
                self._set_status("lagging", f"{worst:.1f} s behind; "
                                            f"{skipped} utterance(s) skipped to stay live",
                                 figures)
            elif lagging and worst < self.config.lag_warning_s / 2:
                lagging = False
                self._set_status("live", f"{self.config.model}, caught up", figures)


class SpeakerStream:
    """One speaker's audio, from frames to posted transcripts."""

    def __init__(self, bot: TranscriberBot, peer: Peer, track: MediaStreamTrack) -> None:
        cfg = bot.config
        self.bot = bot
        self.peer = peer
        self.track = track
        self.key = f"{bot.lobby.lobby_id}:{peer.session_id}"
        self.segmenter = Segmenter(VadConfig(min_silence_ms=cfg.min_silence_ms,
                                             max_utterance_s=cfg.max_utterance_s))
        self.resample = SpeechResampler()
        self.nonce = f"{int(time.time() * 1000):x}"
        self.skipped = 0
        self.finals_posted = 0
        self.language: str | None = None  # what this speaker speaks, as far as we know
        self._interim_future: asyncio.Future[Recognition | None] | None = None
        self._last_interim_at = 0.0
        self._shown: dict[int, str] = {}  # utterance index -> interim text on screen
        self._speculative: tuple[tuple[int, int, int], asyncio.Future[Recognition | None]] | None = None
        self._post_order = asyncio.Lock()  # FIFO: a speaker's finals are posted in order
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # (sample index, wall clock, monotonic clock) when the audio up to that index arrived,
        # about the last minute of it: a speaker's audio need not arrive in real time (a bot's
        # sender catches up on silence in a burst when its file ends), so times come from
        # when the samples came, not from how many have come since
        self._arrivals: collections.deque[tuple[int, float, float]] = collections.deque(
            maxlen=3000)

    def lag(self) -> float:
        return self.bot.scheduler.lag(self.key)

    def describe(self) -> str:
        track = self.track
        dropped = getattr(track, "dropped", 0)
        received = getattr(track, "received", 0)
        return (f"{received} frames ({dropped} dropped), {self.segmenter.utterance_index} "
                f"utterances, {self.finals_posted} finals, {self.skipped} skipped, "
                f"lag {self.lag():.1f} s")

    def stop(self) -> None:
        if not self._closed:
            self._clear_interims()
        self._closed = True
        self.bot.scheduler.forget(self.key)
        self.track.stop()
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        self._task = asyncio.current_task()
        try:
            while not self._closed:
                frames = await recv_batch(self.track)
                arrived = time.time(), time.monotonic()  # before our own work on them
                # scored together: one VAD call for the batch
                samples = np.concatenate([self.resample(f) for f in frames])
                utterances = self.segmenter.feed(samples)
                self._arrivals.append((self.segmenter.buffer.end, *arrived))
                for utt in utterances:
                    self._utterance(utt)
                self._maybe_interim()
                if isinstance(self.track, InboundAudio):
                    # in a pause, audio as it comes (the provider's poll still gathers 40 ms):
                    # the speculative final starts, and the end is decided, up to 80 ms sooner
                    self.track.batch = 1 if self.segmenter.pausing else self.bot.receive_batch
        except MediaStreamError:  # the peer's track ended (a reload, a lost connection)
            self._clear_interims()
        finally:
            self._task = None

    def _clear_interims(self) -> None:
        """The speaker's audio ended mid-utterance: take its interim off everyone's screen
        (an empty interim clears it); a final still on its way replaces it anyway."""
        for index, text in list(self._shown.items()):
            if text:
                self._send(index, 0, 0, None, final=False)
        self._shown.clear()

    # --- scheduling ---------------------------------------------------------------------------

    def _times(self, start: int, end: int) -> tuple[float, float, float]:
        """Wall-clock start and end of samples ``[start, end)``, and the monotonic end."""
        # the first batch of audio that reached ``end`` (past the minute kept: the oldest kept)
        i = bisect.bisect_left(self._arrivals, (end,))
        if i < len(self._arrivals):
            index, wall, mono = self._arrivals[i]
        else:  # not recorded yet: as if it had just come
            index, wall, mono = self.segmenter.buffer.end, time.time(), time.monotonic()
        behind = (index - end) / 16000
        return (wall - behind - (end - start) / 16000, wall - behind, mono - behind)

    def _language(self) -> str | None:
        return self.language  # asked when the recognition starts (scheduler.Job.language)

    def _maybe_interim(self) -> None:
        cfg, seg = self.bot.config, self.segmenter
        if not cfg.interim_interval or not seg.in_speech or self._interim_future is not None:
            return
        if seg.pausing:
            return  # the final may be about to start: an interim would hold it up
        assert self.bot.stt_interim is not None and seg.voice_start is not None
        now = time.monotonic()
        # until an utterance shows something, a try that came back empty is tried again soon
        shown = bool(self._shown.get(seg.utterance_index))
        interval = cfg.interim_interval if shown else cfg.interim_interval / 4
        if seg.scored - seg.voice_start < cfg.interim_after * 16000 or \
                now - self._last_interim_at < interval:
            return
        audio = seg.current_audio()
        self._last_interim_at = now
        index, start, end = seg.utterance_index, seg.voice_start, seg.scored
        future = self.bot.recognize(self.bot.stt_interim, self.key, audio, final=False,
                                    language=self._language)
        self._interim_future = future
        future.add_done_callback(lambda f: self._interim_done(f, index, start, end))

    def _interim_done(self, future: asyncio.Future[Recognition | None], index: int, start: int,
                      end: int) -> None:
        self._interim_future = None
        if future.cancelled() or future.exception() is not None or self._closed:
            return
        result = future.result()
        if result is None or not result.text or index < self.segmenter.utterance_index:
            return  # replaced, empty, or its utterance has already ended
        if self._shown.get(index) == result.text:
            return
        self._shown[index] = result.text
        self._send(index, start, end, result, final=False)

    def _utterance(self, utt: Utterance) -> None:
        assert self.bot.stt_final is not None
        bounds = (utt.index, utt.start, utt.end)
        if not utt.final:
            if self.bot.scheduler.pending == 0:  # only on spare capacity: it may be wasted
                self._speculative = (bounds, self._submit_final(utt))
            return
        if self._speculative is not None and self._speculative[0] == bounds:
            future = self._speculative[1]
        else:
            future = self._submit_final(utt)
        self._speculative = None
        future.add_done_callback(self._learn_language)  # not from a speculation that missed
        self.bot.tasks.spawn(self._post_final(future, utt))

    def _submit_final(self, utt: Utterance) -> asyncio.Future[Recognition | None]:
        assert self.bot.stt_final is not None
        future = self.bot.recognize(self.bot.stt_final, self.key, utt.audio, final=True,
                                    audio_end=self._times(utt.start, utt.end)[2],
                                    fallback=self.bot.stt_fallback, language=self._language)
        return future

    def _learn_language(self, future: asyncio.Future[Recognition | None]) -> None:
        """The speaker's language from a final that will be posted: at once, before the
        speaker's next recognition starts (the scheduler starts it after this callback)."""
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if result is None or not result.text:
            return
        language = self.bot.language_policy.after_final(self.language, result.language,
                                                        result.language_prob)
        if language != self.language:
            log.info("%s: speaking %s (was %s; detected with p=%.2f)", self.key, language,
                     self.language, result.language_prob)
            self.language = language

    async def _post_final(self, future: asyncio.Future[Recognition | None],
                          utt: Utterance) -> None:
        async with self._post_order:  # after the speaker's previous final, whatever became of it
            # waited for rather than awaited: the recognition's cancellation (the scheduler
            # dropped it) is not ours, while ours still ends us here
            await asyncio.wait([future])
            if future.cancelled():
                return  # dropped (the speaker left): nothing to post
            error = future.exception()
            if error is not None:
                log.error("recognition failed for %s", self.key, exc_info=error)
            result = None if error is not None else future.result()
            shown = self._shown.pop(utt.index, None)
            if result is None:
                self.skipped += 1
            elif not result.text:
                log.info("%s: %.1f s utterance dropped (%s)", self.key, utt.duration,
                         result.dropped)
            if result is None or not result.text:
                if shown:  # take the interim off the screen
                    self._send(utt.index, utt.speech_start, utt.speech_end, None, final=False)
                return
            self.finals_posted += 1
            await self._send_async(utt.index, utt.speech_start, utt.speech_end, result,
                                   final=True)

    # --- posting ------------------------------------------------------------------------------

    def _message(self, index: int, start: int, end: int, result: Recognition | None,
                 final: bool) -> p.Transcript:
        t_start, t_end, _ = self._times(start, end)
        return p.Transcript(lobby_id=self.bot.lobby.lobby_id,
                            segment_id=f"{self.peer.session_id}-{self.nonce}-{index}",
                            speaker_id=self.peer.session_id, speaker_name=self.peer.name,
                            text=result.text if result else "", final=final,
                            start=t_start, end=t_end, model=self.bot.config.model,
                            language=result.language if result else None,
                            task=self.bot.config.task)

    def _send(self, index: int, start: int, end: int, result: Recognition | None,
              final: bool) -> None:
        self.bot.tasks.spawn(self._send_async(index, start, end, result, final))

    async def _send_async(self, index: int, start: int, end: int, result: Recognition | None,
                          final: bool) -> None:
        try:
            await self.bot.lobby.post_transcript(self._message(index, start, end, result, final))
        except Exception:
            log.exception("could not post a transcript for %s", self.key)
