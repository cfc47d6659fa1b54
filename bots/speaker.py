"""One speaker's captions: frames → utterances → recognitions → posted transcripts.

A ``SpeakerStream`` cuts its speaker's audio into utterances (``bots/vad.py``) and asks the
transcriber's scheduler for interims while they speak and a final when they pause. The final
is posted as soon as it is ready while the pause lasts: a pause starts a speculative final at
once, and a final that finishes before speech resumes goes out then, without waiting for the
silence that ends the utterance (``min_silence_ms``).

A final posted early can turn out to be half a sentence: the speaker only paused. So a
speaker's final is a **part** that the next one may continue. Speech that resumes in the same
utterance, or a new utterance that starts within ``join_ms`` of the part's speech, is
recognized together with the part's audio, and its final *replaces* the part
(``Transcript.replaces``, docs/protocol.md): readers show the whole sentence in its place. A
part is not continued when the whole could outgrow Whisper's window (``WINDOW_S``), nor is the
part of a speaker who is behind (a longer recognition would put them further behind).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from shared import protocol as p

from .audio import SPEECH_RATE, SpeechResampler
from .inbound import ArrivalClock, InboundAudio, media_time, recv_batch
from .loop import hurry
from .plugin import Peer
from .stt import Recognition
from .vad import Segmenter, Utterance, VadConfig

if TYPE_CHECKING:
    from .transcriber import TranscriberBot

log = logging.getLogger(__name__)

RecognitionFuture = asyncio.Future[Recognition | None]
# a part and the utterance that continues it must fit Whisper's 30 s window, with a second to
# spare: a part longer than this less max_utterance_s is not continued
WINDOW_S = 29


@dataclass(frozen=True, eq=False)
class Part:
    """A final on its way or posted, which later speech may continue: stream samples
    ``[start, end)`` (its earliest part's start), the speech ``[speech_start, speech_end)``,
    and the audio it was recognized from (a joined part's has the pauses between its pieces
    shortened to their pre- and post-roll)."""

    segment_id: str
    index: int  # the utterance it ends with
    start: int
    end: int
    speech_start: int
    speech_end: int
    audio: np.ndarray = field(repr=False)

    def prefix(self, start: int) -> np.ndarray:
        """Its audio before stream sample ``start``, for a continuation whose own audio
        starts there (within the part: speech resumed in the same utterance)."""
        overlap = max(0, self.end - start)
        return self.audio[:max(0, len(self.audio) - overlap)]


@dataclass(eq=False)
class Speculation:
    """A final started the moment a pause began; posted early if it is done while the pause
    lasts."""

    bounds: tuple[int, int, int]  # the utterance's (index, start, end)
    pause_start: int
    future: RecognitionFuture
    audio: np.ndarray = field(repr=False)
    base: Part | None  # the part it continues, if any
    posted: bool = False


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
        self._interim_future: RecognitionFuture | None = None
        self._last_interim_at = 0.0
        self._shown: dict[str, str] = {}  # segment id -> interim text on screen
        self._speculative: Speculation | None = None
        # the speaker's latest final (the part a continuation replaces), and for the current
        # utterance whether it continues that part (decided once, when first asked)
        self._last: Part | None = None
        self._joins: tuple[int, bool] | None = None
        self._segments: dict[int, str] = {}  # utterance index -> its segment id, once revised
        self._revisions = 0
        self._post_order = asyncio.Lock()  # FIFO: a speaker's finals are posted in order
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # when the speaker's packets came, or would have without delay: their timestamps
        # on our clock (an InboundAudio's notes each packet as it comes, before we read it)
        self.clock = track.clock if isinstance(track, InboundAudio) else ArrivalClock()
        # (sample index, wall clock, monotonic clock) when the audio up to that index arrived,
        # about the last minute of it: a speaker's audio need not arrive in real time (a bot's
        # sender catches up on silence in a burst when its file ends, a lost packet leaves a
        # gap), so times come from when the samples came, not from how many have come since
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
                arrived = self._arrived(frames)
                # scored together: one VAD call for the batch
                samples = np.concatenate([self.resample(f) for f in frames])
                utterances = self.segmenter.feed(samples)
                self._arrivals.append((self.segmenter.buffer.end, *arrived))
                for utt in utterances:
                    self._utterance(utt)
                self._maybe_interim()
                if isinstance(self.track, InboundAudio):
                    self.track.batch = self._batch()
                hurry(self, self._deciding())
        except MediaStreamError:  # the peer's track ended (a reload, a lost connection)
            self._clear_interims()
        finally:
            hurry(self, False)
            self._task = None

    def _arrived(self, frames: list[av.AudioFrame]) -> tuple[float, float]:
        """When the last of ``frames`` came, wall clock and monotonic, had nothing held it
        up (``ArrivalClock``): a loop busy with other speakers reads a packet late, and the
        speech in it is dated by when it was said all the same."""
        wall, mono = time.time(), time.monotonic()
        media = media_time(frames[-1])
        if media is None:
            return wall, mono
        if not isinstance(self.track, InboundAudio):  # which notes arrivals as they come
            self.clock.observe(media, mono)
        due = self.clock.due(media)
        if due is None or due >= mono:
            return wall, mono
        return wall - (mono - due), due

    def _batch(self) -> int:
        """How many frames to read at a time: five while an utterance shows and its speaker
        is loud, else each as it comes (and while ``_deciding``, the provider polls every
        10 ms). In silence and until the first interim shows, speech is found and its first
        interim tried up to 80 ms sooner. From the moment the speaker goes quiet
        (``Segmenter.fading``), the pause is found, and the speculative final started, up to
        80 ms sooner (43 ms on average: bench/README.md, session 12)."""
        seg = self.segmenter
        if seg.pausing or seg.fading or not seg.in_speech or not self._showing():
            return 1
        return self.bot.receive_batch

    def _deciding(self) -> bool:
        """Whether the next packets decide something a user waits for: the end of an
        utterance (in a pause, or the speaker has just gone quiet), or an utterance's first
        interim."""
        seg = self.segmenter
        return seg.in_speech and (seg.pausing or seg.fading or (
            self.bot.config.interim_interval > 0 and not self._showing()))

    def _showing(self) -> bool:
        """Whether the current utterance shows an interim."""
        return bool(self._shown.get(self._segment(self.segmenter.utterance_index)))

    def _clear_interims(self) -> None:
        """The speaker's audio ended mid-utterance: take its interim off everyone's screen
        (an empty interim clears it); a final still on its way replaces it anyway."""
        for segment_id, text in list(self._shown.items()):
            if text:
                self._send(segment_id, 0, 0, None, final=False)
        self._shown.clear()

    # --- segments and parts -------------------------------------------------------------------

    def _segment(self, index: int) -> str:
        """The segment id of utterance ``index``'s transcripts; a new one once a final of it
        was posted (the utterance went on after an early final)."""
        return self._segments.get(index) or f"{self.peer.session_id}-{self.nonce}-{index}"

    def _continues(self, index: int, voice_start: int) -> Part | None:
        """The part utterance ``index`` (its speech from stream sample ``voice_start``)
        continues, if any: decided once per utterance."""
        last = self._last
        if last is None:
            return None
        if last.index == index:
            return last  # speech resumed after the utterance's early final: always
        if self._joins is None or self._joins[0] != index:
            cfg = self.bot.config
            joins = (cfg.join_ms > 0 and last.index < index
                     and voice_start - last.speech_end <= cfg.join_ms * SPEECH_RATE // 1000
                     and last.end - last.start <= (WINDOW_S - cfg.max_utterance_s) * SPEECH_RATE
                     and self.lag() < 1.0)
            self._joins = (index, joins)
        return last if self._joins[1] else None

    def _with_base(self, index: int, start: int, voice_start: int,
                   audio: np.ndarray) -> tuple[np.ndarray, Part | None]:
        base = self._continues(index, voice_start)
        if base is None:
            return audio, None
        return np.concatenate([base.prefix(start), audio]), base

    # --- scheduling ---------------------------------------------------------------------------

    def _times(self, start: int, end: int) -> tuple[float, float, float]:
        """Wall-clock start and end of samples ``[start, end)``, and the monotonic end."""
        # the first batch of audio that reached ``end`` (past the minute kept: the oldest kept)
        i = bisect.bisect_left(self._arrivals, (end,))
        if i < len(self._arrivals):
            index, wall, mono = self._arrivals[i]
        else:  # not recorded yet: as if it had just come
            index, wall, mono = self.segmenter.buffer.end, time.time(), time.monotonic()
        behind = (index - end) / SPEECH_RATE
        return (wall - behind - (end - start) / SPEECH_RATE, wall - behind, mono - behind)

    def _language(self) -> str | None:
        return self.language  # asked when the recognition starts (scheduler.Job.language)

    def _maybe_interim(self) -> None:
        cfg, seg = self.bot.config, self.segmenter
        if not cfg.interim_interval or not seg.in_speech or self._interim_future is not None:
            return
        if seg.pausing:
            return  # the final may be about to start: an interim would hold it up
        assert self.bot.stt_interim is not None and seg.voice_start is not None \
            and seg.speech_start is not None
        now = time.monotonic()
        index = seg.utterance_index
        segment_id = self._segment(index)
        # until an utterance shows something, a try that came back empty is tried again soon
        interval = cfg.interim_interval if self._shown.get(segment_id) else \
            cfg.interim_interval / 8
        if seg.scored - seg.voice_start < cfg.interim_after * SPEECH_RATE or \
                now - self._last_interim_at < interval:
            return
        self._last_interim_at = now
        audio, base = self._with_base(index, seg.speech_start, seg.voice_start,
                                      seg.current_audio())
        start = base.speech_start if base is not None else seg.voice_start
        end = seg.scored
        future = self.bot.recognize(self.bot.stt_interim, self.key, audio, final=False,
                                    language=self._language)
        self._interim_future = future
        future.add_done_callback(
            lambda f: self._interim_done(f, index, segment_id, start, end))

    def _interim_done(self, future: RecognitionFuture, index: int, segment_id: str, start: int,
                      end: int) -> None:
        self._interim_future = None
        if future.cancelled() or future.exception() is not None or self._closed:
            return
        result = future.result()
        if result is None or not result.text or index < self.segmenter.utterance_index \
                or segment_id != self._segment(index):
            return  # replaced, empty, or its utterance (or segment) has a final already
        if self._shown.get(segment_id) == result.text:
            return
        self._shown[segment_id] = result.text
        self._send(segment_id, start, end, result, final=False)

    def _utterance(self, utt: Utterance) -> None:
        assert self.bot.stt_final is not None
        bounds = (utt.index, utt.start, utt.end)
        spec = self._speculative
        if not utt.final:
            pause_start = self.segmenter.pause_start
            if self.bot.scheduler.pending == 0 and pause_start is not None:
                # only on spare capacity: it may be wasted
                audio, base = self._with_base(utt.index, utt.start, utt.speech_start, utt.audio)
                spec = Speculation(bounds, pause_start, self._submit_final(utt, audio), audio,
                                   base)
                self._speculative = spec
                spec.future.add_done_callback(lambda _: self._early(spec, utt))
            return
        self._speculative = None
        if spec is not None and spec.bounds == bounds:
            if not spec.posted:
                self._commit(utt, spec.future, spec.audio, spec.base)
            return
        audio, base = self._with_base(utt.index, utt.start, utt.speech_start, utt.audio)
        self._commit(utt, self._submit_final(utt, audio), audio, base)

    def _early(self, spec: Speculation, utt: Utterance) -> None:
        """A speculative final is done: posted now if the pause it began in still lasts."""
        seg, future = self.segmenter, spec.future
        if self._closed or self._speculative is not spec or future.cancelled() or \
                future.exception() is not None or seg.utterance_index != utt.index or \
                seg.pause_start != spec.pause_start:
            return  # speech resumed, or the utterance ended (its final is on its way)
        result = future.result()
        if result is None or not result.text:
            return  # nothing to show yet: the utterance's end decides
        spec.posted = True
        self._commit(utt, future, spec.audio, spec.base)

    def _submit_final(self, utt: Utterance, audio: np.ndarray) -> RecognitionFuture:
        assert self.bot.stt_final is not None
        return self.bot.recognize(self.bot.stt_final, self.key, audio, final=True,
                                  audio_end=self._times(utt.start, utt.end)[2],
                                  fallback=self.bot.stt_fallback, language=self._language)

    def _commit(self, utt: Utterance, future: RecognitionFuture, audio: np.ndarray,
                base: Part | None) -> None:
        """``utt``'s final (continuing ``base``) is the speaker's latest part: posted when
        recognized, after the speaker's finals before it."""
        part = Part(self._segment(utt.index), utt.index,
                    base.start if base is not None else utt.start, utt.end,
                    base.speech_start if base is not None else utt.speech_start,
                    utt.speech_end, audio)
        self._last = part
        # the utterance may still go on (an early final): its next transcripts are a new segment
        self._revisions += 1
        self._segments = {utt.index: f"{self.peer.session_id}-{self.nonce}-{utt.index}"
                                     f"r{self._revisions}"}
        future.add_done_callback(self._learn_language)  # not from a speculation that missed
        self.bot.tasks.spawn(self._post_final(future, part, base))

    def _learn_language(self, future: RecognitionFuture) -> None:
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

    async def _post_final(self, future: RecognitionFuture, part: Part,
                          base: Part | None) -> None:
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
            shown = self._shown.pop(part.segment_id, None)
            if result is None:
                self.skipped += 1
            elif not result.text:
                log.info("%s: %.1f s utterance dropped (%s)", self.key,
                         len(part.audio) / SPEECH_RATE, result.dropped)
            if result is None or not result.text:
                if shown:  # take the interim off the screen
                    self._send(part.segment_id, part.speech_start, part.speech_end, None,
                               final=False)
                if self._last is part:  # nothing of it is shown: nothing to continue
                    self._last = base
                return
            self.finals_posted += 1
            await self._send_async(part.segment_id, part.speech_start, part.speech_end, result,
                                   final=True, replaces=[base.segment_id] if base else [])

    # --- posting ------------------------------------------------------------------------------

    def _message(self, segment_id: str, start: int, end: int, result: Recognition | None,
                 final: bool, replaces: list[str]) -> p.Transcript:
        t_start, t_end, _ = self._times(start, end)
        return p.Transcript(lobby_id=self.bot.lobby.lobby_id, segment_id=segment_id,
                            speaker_id=self.peer.session_id, speaker_name=self.peer.name,
                            text=result.text if result else "", final=final,
                            start=t_start, end=t_end, model=self.bot.config.model,
                            language=result.language if result else None,
                            task=self.bot.config.task, replaces=replaces)

    def _send(self, segment_id: str, start: int, end: int, result: Recognition | None,
              final: bool) -> None:
        self.bot.tasks.spawn(self._send_async(segment_id, start, end, result, final))

    async def _send_async(self, segment_id: str, start: int, end: int,
                          result: Recognition | None, final: bool,
                          replaces: list[str] | None = None) -> None:
        try:
            await self.bot.lobby.post_transcript(
                self._message(segment_id, start, end, result, final, replaces or []))
        except Exception:
            log.exception("could not post a transcript for %s", self.key)
