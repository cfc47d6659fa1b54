"""``transcriber``: live captions for every speaker, posted to the lobby as transcripts.

Per speaker (``bots/speaker.py``): WebRTC frames → 16 kHz mono (PyAV) → Silero VAD
segmentation → the shared scheduler → Whisper. While someone speaks, an interim result about
every second (when there is spare capacity); when they pause, the final, as soon as it is
ready; a sentence that goes on after the pause is captioned again, whole, in its place.

The model is loaded once per provider process and shared by every lobby and speaker, and so
are the engines of the same settings and the scheduler's worker pool (``VOICEBOT_STT_WORKERS``
threads, 1 by default): the first transcriber of the process makes it, the last one to stop
closes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from aiortc import MediaStreamTrack

from shared.protocol import ErrorCode, ProtocolError
from shared.tasks import TaskSet

from .language import LanguagePolicy
from .models import listing
from .plugin import Bot, BotConfig, LobbyAccess, Peer, setting
from .scheduler import Scheduler
from .speaker import SpeakerStream
from .stt import LANGUAGES, STT, Recognition, WhisperSTT, load_whisper

log = logging.getLogger(__name__)

# what CTranslate2 accepts on a CPU or a GPU
COMPUTE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16", "float32", "default", "auto")


@dataclass(frozen=True)
class TranscriberConfig(BotConfig):
    model: str = setting("tiny.en", "an installed model (`voicebot models list`)")
    compute_type: str = setting("int8", "CTranslate2 compute type: int8, int8_float32, float32")
    threads: int = setting(0, "CPU threads per recognition (0: half the cores, at most 4)",
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
    final_min_window_s: float = setting(0.0, "the shortest encoder window for finals, in "
                                        "seconds (0: fitted to the utterance)",
                                        minimum=0, maximum=30)
    interim_interval: float = setting(1.0, "seconds between interim results; 0 turns them off",
                                      minimum=0, maximum=10)
    interim_after: float = setting(0.2, "seconds of speech (from where it starts) before "
                                   "the first interim",
                                   minimum=0, maximum=10)
    min_silence_ms: int = setting(300, "a pause this long ends an utterance",
                                  minimum=100, maximum=5000)
    join_ms: int = setting(800, "speech that resumes within this many ms of a final continues "
                           "it: the next final holds both and replaces it (0: never)",
                           minimum=0, maximum=5000)
    max_utterance_s: float = setting(15.0, "longer utterances are cut", minimum=2, maximum=30)
    lag_warning_s: float = setting(3.0, "report 'lagging' when a speaker's finals are this far "
                                   "behind",
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
    # the process's fixed-language engines, by model and settings (models are loaded once
    # per process too, and an engine is its settings and tokenizers: small)
    _engines: ClassVar[dict[tuple[Any, ...], WhisperSTT]] = {}

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

    def _engine(self, model: Any, *, beam_size: int, window: str,
                min_window_s: float) -> WhisperSTT:
        """A recognizer with these settings. One that reads batches (a fixed language) is the
        process's, shared with every transcriber that asks for the same: the pool batches
        only finals waiting for the same engine, so lobbies' finals can share a batch."""
        cfg = self.config
        stt = WhisperSTT(model, name=cfg.model, language=cfg.language, task=cfg.task,
                         beam_size=beam_size, window=window, min_window_s=min_window_s,
                         policy=self.language_policy)
        if not stt.batches:  # it detects languages: the policy it holds is this bot's
            return stt
        key = (id(model), cfg.model, cfg.language, cfg.task, beam_size, window, min_window_s)
        return TranscriberBot._engines.setdefault(key, stt)

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
        self.stt_final = self._engine(model, beam_size=cfg.beam_size, window=final_window,
                                      min_window_s=cfg.final_min_window_s)
        self.stt_interim = self._engine(model, beam_size=1, window="dynamic", min_window_s=0.0)
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
                pool = self.scheduler.stats
                log.info("the pool: %d recognitions (%d finals in batches), %.1f s busy",
                         pool.jobs, pool.batched, pool.busy_s)
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
