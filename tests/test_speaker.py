"""One speaker's captions (bots/speaker.py): a final as soon as the pause allows, and a
sentence that goes on after a pause captioned whole, in place of its first part."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.audio import read_wav, speech_spans
from bots.testing import FakeLobby, ScriptedSTT
from bots.transcriber import TranscriberBot
from shared import protocol as p

from .helpers import shown, wait_until
from .speech import DATA, reference, wer, write_wav
from .test_transcriber import WER_BOUND, RealtimeTrack


def paused(tmp_path: Path, pause_s: float) -> Path:
    """speaker_a.wav's two sentences with a pause of ``pause_s`` between them: one sentence
    that goes on after a pause, as far as the segmenter can tell."""
    samples = read_wav(DATA / "speaker_a.wav")
    (_, end1), (start2, _) = speech_spans(samples)
    half = pause_s / 2
    cut = np.concatenate([samples[:int((end1 + half) * 16000)],
                          samples[int((start2 - half) * 16000):]])
    return write_wav(tmp_path / f"paused-{pause_s}.wav", cut)


def finals(lobby: FakeLobby) -> list[p.Transcript]:
    return [t for t in lobby.transcripts if isinstance(t, p.Transcript) and t.final]


def reads_whole(lobby: FakeLobby) -> bool:
    """Whether the finals shown read all of speaker_a.wav."""
    return wer(reference("speaker_a.wav"), " ".join(t.text for t in shown(lobby.transcripts))) \
        <= WER_BOUND


async def captions(path: Path, count: int, until: Callable[[FakeLobby], bool] | None = None,
                   **config: object) -> FakeLobby:
    """The file spoken in real time to a transcriber, until ``count`` finals came and
    ``until`` holds (and half a second more, for any that should not come)."""
    lobby = FakeLobby()
    bot = TranscriberBot(lobby, TranscriberBot.Config.parse(config))
    await lobby.start(bot)
    await lobby.add_peer("Alice", RealtimeTrack(path))  # type: ignore[arg-type]
    await wait_until(lambda: len(finals(lobby)) >= count and (until is None or until(lobby)),
                     40, f"{count} finals")
    await asyncio.sleep(0.5)
    await lobby.stop()
    return lobby


async def test_a_sentence_that_goes_on_after_a_pause_is_captioned_whole(tmp_path: Path) -> None:
    """Half a second of pause: the first part is posted when the pause begins, and the final
    of the whole replaces it; with ``join_ms`` 0 the two stay apart. (The comma inside the
    first sentence is a pause too: its final goes out if it is recognized before the speech
    resumes, which depends on the box's speed, and the first sentence's replaces it.)"""
    clip = paused(tmp_path, 0.5)
    lobby = await captions(clip, 2, reads_whole)
    posted, kept = finals(lobby), shown(lobby.transcripts)
    assert len(posted) in (2, 3), posted
    assert all(b.replaces == [a.segment_id] for a, b in zip(posted, posted[1:])), posted
    assert len(kept) == 1 and abs(kept[0].start - posted[0].start) < 0.02
    assert wer(reference("speaker_a.wav"), kept[0].text) <= WER_BOUND, kept[0].text
    assert wer(reference("speaker_a.wav").split(".")[0], posted[-2].text) <= WER_BOUND

    lobby = await captions(clip, 2, reads_whole, join_ms=0)
    kept = shown(lobby.transcripts)
    assert len(kept) == 2 and not kept[1].replaces, kept
    assert kept[1].start > kept[0].end


async def test_a_final_does_not_wait_for_the_silence_that_ends_the_utterance(
        tmp_path: Path) -> None:
    """A final ready while the pause lasts is posted then: with ``min_silence_ms`` at 2 s
    (a 2 s wait to end the utterance) it comes within a second of the speech's end; and
    speech that resumes inside the same utterance replaces it with the whole."""
    lobby = FakeLobby()
    bot = TranscriberBot(lobby, TranscriberBot.Config.parse({"min_silence_ms": 2000}))
    await lobby.start(bot)
    bot.stt_final = engine = ScriptedSTT(lambda audio, final: f"{len(audio)} samples",
                                         delay=0.02)
    clip = paused(tmp_path, 0.9)
    (_, end1), _ = speech_spans(read_wav(clip))
    track = RealtimeTrack(clip)
    # (add_peer returns when the track ends)
    speaking = asyncio.ensure_future(lobby.add_peer("Alice", track))  # type: ignore[arg-type]
    await wait_until(lambda: finals(lobby), 10, "the early final", poll=0.01)
    arrived = time.time()
    assert track.started is not None
    assert arrived - (track.started + end1) < 1.0, arrived - (track.started + end1)
    await wait_until(lambda: len(finals(lobby)) >= 2, 20, "the whole")
    await lobby.stop()
    await asyncio.wait([speaking])  # ended by the stop
    first, whole = finals(lobby)[:2]
    assert whole.replaces == [first.segment_id] and abs(whole.start - first.start) < 0.02
    assert int(whole.text.split()[0]) > int(first.text.split()[0]) + 16000  # and the rest
    assert any(final for _, final in engine.calls)


async def test_frames_are_read_one_by_one_where_a_moment_counts() -> None:
    """Five frames at a time while an utterance shows its interim and its speaker is loud
    (less CPU); one at a time in silence, until the first interim shows, and from the moment
    the speaker goes quiet through the pause (speech found, the first interim tried, the final
    started, up to 80 ms sooner)."""
    from bots.plugin import Peer
    from bots.speaker import SpeakerStream

    lobby = FakeLobby()
    bot = TranscriberBot(lobby, TranscriberBot.Config.parse({}))
    stream = SpeakerStream(bot, Peer("peer-1", "Alice", False), RealtimeTrack(DATA / "short.wav"))
    seg = stream.segmenter
    assert stream._batch() == 1  # noqa: SLF001 - silence
    audio = read_wav(DATA / "short.wav")
    (start, end), = speech_spans(audio)
    at = int((start + 0.3) * 16000)
    seg.feed(audio[:at])
    assert seg.in_speech and not seg.pausing
    assert stream._batch() == 1  # noqa: SLF001 - nothing shown yet
    stream._shown[stream._segment(seg.utterance_index)] = "Good"  # noqa: SLF001
    batches = []  # the batch asked for after each 20 ms frame, to the pause
    while not seg.pausing and at < len(audio):
        seg.feed(audio[at:at + 320])
        at += 320
        batches.append(stream._batch())  # noqa: SLF001
    assert batches.count(bot.receive_batch) > len(batches) // 2, batches  # mostly loud
    assert batches[-3:] == [1, 1, 1], batches  # quiet before the pause could be called
    assert seg.pausing and at / 16000 < end + 0.2
    await bot.on_stop()  # leaves the process's worker pool as it found it
