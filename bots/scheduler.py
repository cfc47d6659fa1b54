"""Orders recognition work from every speaker onto a bounded pool of worker threads.

Finals go first, oldest first. Finals that wait together for the same engine run as one
batch, up to ``batch`` of them, when the engine reads a batch for less than its parts
(``STT.batches``: faster-whisper with a fixed language reads 4 for the price of 2). Interim
requests wait for spare capacity and are coalesced per speaker: a newer request replaces an
older one that has not started. Under load a final may name a faster ``fallback`` engine,
used when other finals still wait behind its batch. A final whose audio is older than
``max_lag`` when its turn comes is skipped (counted per speaker) so that a backlog never
grows into minutes of delay.

Whoever makes a scheduler closes it: ``close()`` cancels the queued work and stops the tasks
that wait on the threads (``Scheduler.from_env`` reads the provider's settings when called).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from shared.tasks import TaskSet

from .loop import promptly
from .stt import STT, Recognition

log = logging.getLogger(__name__)


@dataclass
class Job:
    speaker: str
    audio: np.ndarray
    final: bool
    audio_end: float  # monotonic time the last sample arrived
    future: asyncio.Future[Recognition | None]
    stt: STT
    seq: int = 0
    fallback: STT | None = None
    # the speaker's language so far (a hint for detection), or a function that says it when
    # the job starts: the final before it may have changed it meanwhile
    language: str | None | Callable[[], str | None] = None


@dataclass
class SpeakerStats:
    finals: int = 0
    interims: int = 0
    skipped: int = 0
    replaced: int = 0
    degraded: int = 0  # finals run on the fallback engine because others were waiting
    lag: float = 0.0  # how old the audio of the latest final was when it was read
    max_lag: float = 0.0


@dataclass
class SchedulerStats:
    busy_s: float = 0.0
    jobs: int = 0
    batched: int = 0  # finals read in a batch with others
    speakers: dict[str, SpeakerStats] = field(default_factory=lambda: collections.defaultdict(SpeakerStats))


class Scheduler:
    def __init__(self, workers: int = 1, max_lag: float = 8.0, batch: int = 4) -> None:
        if workers < 1 or batch < 1:
            raise ValueError("workers and batch must be >= 1")
        self.workers = workers
        self.max_lag = max_lag
        self.batch = batch
        self.stats = SchedulerStats()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="stt")
        self._finals: collections.deque[Job] = collections.deque()
        self._interims: dict[str, Job] = {}  # one pending interim per speaker, oldest first
        self._idle = workers
        self._seq = itertools.count()
        self._running = TaskSet(log, "a recognition")  # one task per job on a thread
        self._closed = False

    @classmethod
    def from_env(cls) -> Scheduler:
        """A scheduler as the environment says now: ``VOICEBOT_STT_WORKERS`` threads (1),
        ``VOICEBOT_STT_MAX_LAG`` seconds (8) and ``VOICEBOT_STT_BATCH`` finals at most in one
        batch (4; 1 turns batching off)."""
        return cls(workers=int(os.environ.get("VOICEBOT_STT_WORKERS", "1")),
                   max_lag=float(os.environ.get("VOICEBOT_STT_MAX_LAG", "8")),
                   batch=int(os.environ.get("VOICEBOT_STT_BATCH", "4")))

    @property
    def pending(self) -> int:
        return len(self._finals) + len(self._interims)

    def submit(self, stt: STT, speaker: str, audio: np.ndarray, *, final: bool,
               audio_end: float | None = None, fallback: STT | None = None,
               language: str | None | Callable[[], str | None] = None
               ) -> asyncio.Future[Recognition | None]:
        """Queues a recognition; the future gives ``None`` if it was skipped or replaced (and
        is cancelled if the scheduler is closed)."""
        loop = asyncio.get_running_loop()
        job = Job(speaker, audio, final, audio_end or time.monotonic(), loop.create_future(),
                  stt, next(self._seq), fallback, language)
        if self._closed:
            job.future.cancel()
            return job.future
        if final:
            self._finals.append(job)
        else:
            old = self._interims.pop(speaker, None)
            if old is not None:
                self.stats.speakers[speaker].replaced += 1
                old.future.set_result(None)
            self._interims[speaker] = job
        self._pump()
        return job.future

    def lag(self, speaker: str) -> float:
        """Age of the speaker's oldest waiting final (or the last finished job's lag)."""
        waiting = [time.monotonic() - j.audio_end for j in self._finals if j.speaker == speaker]
        return max(waiting, default=self.stats.speakers[speaker].lag)

    def forget(self, speaker: str) -> None:
        """Drops a departed speaker's queued work."""
        for job in [j for j in self._finals if j.speaker == speaker]:
            self._finals.remove(job)
            job.future.cancel()
        job_ = self._interims.pop(speaker, None)
        if job_ is not None:
            job_.future.cancel()

    def _final(self, now: float) -> Job | None:
        """The oldest final still worth reading (older ones are skipped)."""
        while self._finals:
            job = self._finals.popleft()
            if now - job.audio_end <= self.max_lag:
                return job
            self.stats.speakers[job.speaker].skipped += 1
            log.warning("speaker %s: skipping %.1f s of audio %.1f s behind live",
                        job.speaker, len(job.audio) / 16000, now - job.audio_end)
            job.future.set_result(None)
        return None

    def _next(self) -> list[Job]:
        now = time.monotonic()
        job = self._final(now)
        if job is not None:
            jobs = [job]
            if job.stt.batches:  # the finals waiting for the same engine, oldest first
                # (a stale one stays where it is: the next _final skips it)
                same = [j for j in self._finals if j.stt is job.stt and
                        now - j.audio_end <= self.max_lag][:self.batch - 1]
                for other in same:
                    self._finals.remove(other)
                jobs += same
            fallback = job.fallback
            if fallback is not None and self._finals and \
                    all(j.fallback is fallback for j in jobs):  # others wait: be quick
                for j in jobs:
                    j.stt = fallback
                    self.stats.speakers[j.speaker].degraded += 1
            return jobs
        if self._interims:  # spare capacity: the speaker who has waited longest
            speaker = min(self._interims, key=lambda s: self._interims[s].seq)
            return [self._interims.pop(speaker)]
        return []

    def _pump(self) -> None:
        while self._idle > 0:
            jobs = self._next()
            if not jobs:
                return
            self._idle -= 1
            self._running.spawn(self._run(jobs))

    @staticmethod
    def _read(jobs: list[Job], languages: list[str | None]) -> list[Recognition]:
        first = jobs[0]
        if len(jobs) == 1:
            return [first.stt.recognize(first.audio, final=first.final, language=languages[0])]
        return first.stt.recognize_batch([j.audio for j in jobs], final=first.final,
                                         languages=languages)

    async def _run(self, jobs: list[Job]) -> None:
        started = time.monotonic()
        # asked now, not when the job was queued: the speaker's previous final, whose result
        # was delivered before this job started, may have changed it
        languages = [j.language() if callable(j.language) else j.language for j in jobs]
        loop = asyncio.get_running_loop()
        try:  # a result wakes the provider's loop: it does not wait for the I/O poll
            results = await loop.run_in_executor(self._executor, promptly, loop, self._read,
                                                 jobs, languages)
        except Exception as exc:  # noqa: BLE001 - handed to whoever awaits the job
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
        else:
            done = time.monotonic()
            for job, result in zip(jobs, results, strict=True):
                stats = self.stats.speakers[job.speaker]
                if job.final:  # how far behind the captions are: an interim is no caption
                    stats.lag = done - job.audio_end
                    stats.max_lag = max(stats.max_lag, stats.lag)
                    stats.finals += 1
                else:
                    stats.interims += 1
                if not job.future.done():
                    job.future.set_result(result)
        finally:
            for job in jobs:
                if not job.future.done():  # we were cancelled (closed): it never finishes
                    job.future.cancel()
            self.stats.busy_s += time.monotonic() - started
            self.stats.jobs += len(jobs)
            self.stats.batched += len(jobs) if len(jobs) > 1 else 0
            self._idle += 1
            self._pump()

    async def close(self) -> None:
        """Drops the queued work and stops the jobs' tasks; a thread busy with a recognition
        is not waited for (it can't be interrupted; its result is dropped)."""
        self._closed = True
        for job in [*self._finals, *self._interims.values()]:
            job.future.cancel()
        self._finals.clear()
        self._interims.clear()
        await self._running.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
