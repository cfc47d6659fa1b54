"""A bot's voice and ears: playbacks queued and sent in real time, text spoken with espeak-ng,
one speaker's speech as events (``bots.listen``), and a person who talks over a bot."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestServer
from aiortc import MediaStreamTrack

from bots.listen import Heard, SpeechEnded, SpeechStarted, listen
from bots.mesh import Mesh
from bots.plugin import Bot, BotConfig, Peer, PluginError, check_plugin
from bots.testing import FakeLobby, SoundTrack
from bots.voice import FRAME, RATE, Sound, Voice, speak
from shared import protocol as p

from .conftest import Clients
from .helpers import wait_until
from .test_plugins import add_bot, provider

pytestmark = pytest.mark.backends("sqlite")


def tone(seconds: float, level: float = 0.3, rate: int = RATE) -> Sound:
    t = np.arange(int(seconds * rate)) / rate
    return Sound((level * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)


async def test_playbacks_go_out_one_after_another_in_real_time() -> None:
    voice = Voice()
    levels: list[float] = []

    async def read() -> None:
        while True:
            frame = await voice.recv()
            levels.append(float(np.abs(frame.to_ndarray()).max()))

    reader = asyncio.create_task(read())
    try:
        started = time.monotonic()
        first, second = voice.play(tone(0.5, 0.2)), voice.play(tone(0.3, 0.6, rate=16000))
        await first
        # in real time: not sooner than it lasts
        assert first.done() and not second.done() and time.monotonic() - started >= 0.45
        await second
        assert time.monotonic() - started >= 0.75
        third = voice.play(tone(30))
        await asyncio.sleep(0.2)
        voice.stop_all()
        await asyncio.wait_for(third, 2)
        assert third.stopped and 0.1 < third.sent < 1
    finally:
        reader.cancel()
        await voice.close()
    loud = [round(x, 1) for x in levels if x > 0.01]
    assert loud[:5] == [0.2] * 5 and 0.6 in loud  # in order, at the level they were given
    assert loud.index(0.6) >= 0.45 / 0.02


async def test_a_sound_that_cant_be_read_fails_its_playback_only(tmp_path: Any) -> None:
    voice = Voice()
    bad = tmp_path / "not-audio.wav"
    bad.write_text("no audio here")
    broken, fine = voice.play(bad), voice.play(tone(0.1))
    with pytest.raises(Exception):
        await broken
    await fine
    await voice.close()


async def test_speak_gives_speech_and_reads_no_option_from_the_text() -> None:
    sound = await speak("--help me read this sentence aloud")
    assert sound.duration > 1.0 and float(np.sqrt(np.mean(sound.samples ** 2))) > 0.02
    assert sound.duration < 6  # the whole text, read aloud: not '--help' taken as an option


async def test_listen_gives_blocks_and_each_utterance() -> None:
    one, two = await speak("The first sentence is here."), await speak("And this is another.")
    gap = np.zeros(one.sample_rate, np.float32)  # a second of silence between them
    track = SoundTrack(Sound(np.concatenate([gap, one.samples, gap, two.samples]),
                             one.sample_rate))
    events = [e async for e in listen(track)]
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    blocks = [e for e in events if isinstance(e, Heard)]
    assert len(starts) == len(ends) == 2, events
    assert 0.8 < starts[0].at < 1.3 and ends[0].start == starts[0].at
    assert abs(ends[0].duration - one.duration) < 0.6 and len(ends[0].audio) > 16000
    assert starts[1].at > ends[0].end + 0.8
    assert all(b.samples.dtype == np.float32 for b in blocks)
    heard = sum(len(b.samples) for b in blocks) / 16000
    assert abs(heard - (2 + one.duration + two.duration + 1)) < 0.1  # + the track's 1 s tail


class ReadAloud(Bot[BotConfig]):
    """Says what it is told in the chat ("say …"), and "long" for 20 s (a person may talk
    over it), reporting how each playback went."""

    kind = "readaloud"
    sends_audio = True
    barge_in = True

    async def on_chat(self, message: p.Chat) -> None:
        if message.session_id == self.lobby.session_id:
            return
        if message.text.startswith("say "):
            sound = await speak(message.text[4:])
            started = time.monotonic()
            await self.lobby.play(sound)
            await self.lobby.post_chat(f"said in {time.monotonic() - started:.2f} of "
                                       f"{sound.duration:.2f} s")
        elif message.text == "long":
            playback = self.lobby.play(tone(20),
                                       interruptible=True)
            await playback
            await self.lobby.post_chat(f"interrupted {playback.interrupted} "
                                       f"after {playback.sent:.1f} s")


class Ears:
    """A person's side of the call: hears the bot (levels), and can talk (a ``Voice``)."""

    def __init__(self, client: Any, lobby: str) -> None:
        self.levels: list[float] = []
        self.voice = Voice()
        self.mesh = Mesh(client, lobby, sends_audio=True, on_track=self._track,
                         on_peer_connected=self._noop, on_peer_left=self._noop)
        self.mesh.set_source(self.voice)

    async def _noop(self, peer: Peer) -> None:
        pass

    async def _track(self, peer: Peer, track: MediaStreamTrack) -> None:
        async for event in listen(track):
            if isinstance(event, Heard):
                self.levels.append(float(np.sqrt(np.mean(event.samples ** 2))))

    async def close(self) -> None:
        await self.mesh.close()
        await self.voice.close()


async def test_a_bot_speaks_into_a_real_call_and_a_person_can_talk_over_it(
        server: TestServer, clients: Clients) -> None:
    human, inbox = await clients.new("Ann")
    lobby = (await human.join(lobby_name="voices")).lobby.id
    ears = Ears(human, lobby)
    try:
        async with provider(server, ReadAloud):
            await add_bot(server, human.config.token, lobby, "readaloud")
            await wait_until(lambda: ears.mesh.connected_peers(), 30, "the bot's connection")
            await human.chat(lobby, "say Good morning, this is the bot speaking.")
            said = await inbox.wait_for(p.Chat, lambda m: m.text.startswith("said in"),
                                        timeout=30)
            took, duration = map(float, said.text.split()[2:5:2])
            assert duration - 0.1 <= took <= duration + 10, said.text  # sent in real time
            assert max(ears.levels) > 0.05  # Ann heard it
            await human.chat(lobby, "long")
            await wait_until(lambda: ears.levels and ears.levels[-1] > 0.1, 10, "the long sound")
            ears.voice.play(await speak("Excuse me, may I say something?"))
            done = await inbox.wait_for(p.Chat, lambda m: m.text.startswith("interrupted"),
                                        timeout=30)
            assert done.text.startswith("interrupted True"), done.text
            assert float(done.text.split()[-2]) < 10, done.text
    finally:
        await ears.close()


def test_barge_in_needs_a_voice_and_no_on_track_of_its_own() -> None:
    class Mute(Bot[BotConfig]):
        kind = "mute"
        barge_in = True

    class OwnEars(ReadAloud):
        async def on_track(self, peer: Peer, track: MediaStreamTrack) -> None:
            pass

    with pytest.raises(PluginError, match="sends_audio"):
        check_plugin(Mute)
    with pytest.raises(PluginError, match="its own on_track"):
        check_plugin(OwnEars)
    check_plugin(ReadAloud)


async def test_fake_lobby_records_what_a_bot_plays() -> None:
    lobby = FakeLobby()
    await lobby.start(ReadAloud(lobby, BotConfig()))
    await lobby.say("Ann", "say hello")
    assert lobby.chat[0].startswith("said in") and len(lobby.played) == 1
    assert len(lobby.played[0]) % FRAME == 0 and np.abs(lobby.played[0]).max() > 0.1
