"""The bot platform with real processes: providers, dispatch, the player bot, re-dispatch."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiohttp.test_utils import TestServer

from bots.echo import EchoBot
from bots.mesh import Mesh
from bots.plugin import BotConfig, InvalidConfig, Peer, discover, setting
from bots.testing import FakeLobby
from shared import protocol as p
from signaling.dispatch import DISPATCHER

from .conftest import ROOT, Clients, start_server
from .helpers import api, plugin_dist, wait_until

SPEECH = str(ROOT / "tests" / "data" / "speaker_a.wav")



async def bot_kinds(url: str) -> list[str]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "api/bots") as r:
            return [k["kind"] for k in (await r.json())["kinds"]]



class Listener:
    """A test peer: joins over the shared client and measures the audio energy it receives."""

    def __init__(self, client: Any, lobby_id: str, sends_audio: bool = False) -> None:
        self.energy: dict[str, list[float]] = {}
        self.mesh = Mesh(client, lobby_id, sends_audio=sends_audio, on_track=self._track,
                         on_peer_connected=self._noop, on_peer_left=self._noop)

    async def _noop(self, peer: Peer) -> None:
        pass

    async def _track(self, peer: Peer, track: MediaStreamTrack) -> None:
        series = self.energy.setdefault(peer.name, [])
        try:
            while True:
                frame = await track.recv()
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0  # type: ignore[union-attr]
                series.append(float(np.sqrt(np.mean(pcm ** 2))))
        except Exception:
            return


# --- the plugin API, without a server ----------------------------------------------------------


async def test_echo_bot_in_a_fake_lobby() -> None:
    lobby = FakeLobby()
    bot = EchoBot(lobby, EchoBot.Config.parse({"prefix": "!"}))
    await lobby.start(bot)
    assert lobby.statuses[-1][0] == "live"
    await lobby.add_peer("Ann")
    await lobby.say("Ann", "!hi there")
    await lobby.say("Ann", "no prefix")
    assert lobby.chat == ["Hello, Ann!", "hi there"]


def test_config_schema_and_validation() -> None:
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg(BotConfig):
        rate: float = setting(1.0, "speed")
        label: str | None = setting(None, "a label")
        count: int = setting(3, "how many")

    assert Cfg.schema()["rate"] == {"type": "number", "nullable": False, "default": 1.0,
                                    "help": "speed"}
    assert Cfg.schema()["label"]["nullable"]
    assert Cfg.parse({"count": 5}).count == 5
    for bad in ({"count": "5"}, {"colour": "red"}, {"count": True}):
        with pytest.raises(InvalidConfig):
            Cfg.parse(bad)


def test_discovery_includes_builtins_and_the_example_plugin() -> None:
    found = discover()
    assert {"player", "echo"} <= set(found)
    # examples/countdown-bot is a separate distribution, installed by .ci/run
    assert "countdown" in found, "pip install -e examples/countdown-bot"


def test_a_broken_plugin_is_logged_and_skipped(tmp_path: Any, monkeypatch: Any,
                                               caplog: Any) -> None:
    # what a plugin meets when another package called `shared` hides ours: a name we ship is
    # missing from it
    plugin_dist(tmp_path, "broken = no_such_module:Bot\nwrong = json:JSONDecoder\n"
                "shadowed = shadowed_plugin:Bot",
                {"shadowed_plugin": "from shared.no_such_module import Bot\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    found = discover()
    assert "broken" not in found and "wrong" not in found and "echo" in found
    assert "bot plugin 'broken'" in caplog.text and "bot plugin 'wrong'" in caplog.text
    lines = {line.split("'")[1]: line for line in caplog.text.splitlines() if "bot plugin" in line}
    assert "shadowing ai-voicebot's" in lines["shadowed"]
    assert "shadowing" not in lines["broken"]  # a module of its own: no such hint


async def test_countdown_example_runs() -> None:
    cls = discover()["countdown"]
    lobby = FakeLobby()
    await lobby.start(cls(lobby, cls.Config.parse({"start": 3, "interval": 0.01})))
    await lobby.say("Ann", "!countdown")
    await wait_until(lambda: len(lobby.chat) >= 4, 5, "countdown")
    assert lobby.chat == ["3", "2", "1", "Liftoff!"]


# --- real processes ------------------------------------------------------------------------------


async def test_provider_player_bot_reaches_a_peer(server: TestServer, clients: Clients,
                                                  provider_process: Any) -> None:
    url = str(server.make_url("/"))
    provider_process(url)
    await wait_until(lambda: "player" in server.app[DISPATCHER].kinds().__repr__(), 30,
                     "the provider to register")
    assert {"player", "echo"} <= set(await bot_kinds(url))

    human, inbox = await clients.new("Listener")
    lobby = (await human.join(lobby_name="with a bot")).lobby.id
    listener = Listener(human, lobby, sends_audio=True)  # offers its own audio too
    status, bot = await api("POST", url + f"api/lobbies/{lobby}/bots", human.config.token,
                            {"kind": "player", "config": {"path": SPEECH, "delay": 0.2}})
    assert status == 201, bot
    state = await inbox.wait_for(p.LobbyState, lambda m: any(
        x.bot and x.connected for x in m.participants))
    bot_participant = next(x for x in state.participants if x.bot)
    assert bot_participant.name == "Player" and bot_participant.session_id == bot["session_id"]
    added = time.time()
    playing = await inbox.wait_for(p.BotStatus, lambda m: m.status == "live" and
                                   "playing" in m.detail, timeout=30)
    # it says when its first frame went out: after it was added and its delay, before now
    sent_at = float(playing.detail.rsplit(" since ", 1)[1])
    assert added + 0.2 <= sent_at <= time.time(), (added, playing.detail)
    # the speech arrives: clearly louder than silence for a good part of a second
    await wait_until(lambda: sum(e > 0.02 for e in listener.energy.get("Player", [])) > 25,
                     20, "speech energy from the player")
    link = listener.mesh.links[bot["session_id"]]
    assert link.pc.connectionState == "connected"
    # the player has no on_track: it declined our audio, so it decodes nobody's
    assert [t.currentDirection for t in link.pc.getTransceivers()] == ["recvonly"]

    status, _ = await api("DELETE", url + f"api/lobbies/{lobby}/bots/{bot['bot_id']}",
                          human.config.token)
    assert status == 200
    await inbox.wait_for(p.PeerRemoved, peer_id=bot["session_id"])
    await wait_until(lambda: not listener.mesh.links, 10, "the peer connection to close")
    await inbox.wait_for(p.LobbyState, lambda m: not any(x.bot for x in m.participants))
    status, listing = await api("GET", url + f"api/lobbies/{lobby}/bots", None)
    assert listing == {"bots": []}
    await listener.mesh.close()


async def test_a_connection_restarted_by_the_peer_is_rebuilt_by_the_bot(
        server: TestServer, clients: Clients, provider_process: Any) -> None:
    """The peer replaces its connection to a bot (as a browser does when it fails): the bot,
    which can't restart ICE in place, answers on a new connection of its own, and the audio
    flows again. The bot reports the candidate types of its connections as metrics."""
    url = str(server.make_url("/"))
    provider_process(url)
    await wait_until(lambda: "player" in server.app[DISPATCHER].kinds().__repr__(), 30,
                     "the provider to register")
    human, _ = await clients.new("Listener")
    lobby = (await human.join(lobby_name="restarts")).lobby.id
    listener = Listener(human, lobby)
    status, bot = await api("POST", url + f"api/lobbies/{lobby}/bots", human.config.token,
                            {"kind": "player", "config": {"path": SPEECH, "loop": True}})
    assert status == 201, bot

    def heard() -> int:
        return sum(e > 0.02 for e in listener.energy.get("Player", []))
    await wait_until(lambda: heard() > 25, 30, "speech from the player")
    old = listener.mesh.links[bot["session_id"]]
    old_fingerprints = {line for line in old.pc.remoteDescription.sdp.splitlines()
                        if line.startswith("a=fingerprint")}

    listener.energy.clear()
    await listener.mesh.restart(bot["session_id"])
    new = listener.mesh.links[bot["session_id"]]
    assert new is not old and old.pc.connectionState == "closed"
    await wait_until(lambda: heard() > 25, 30, "speech on the new connection")
    assert new.pc.connectionState == "connected"
    fingerprints = {line for line in new.pc.remoteDescription.sdp.splitlines()
                    if line.startswith("a=fingerprint")}
    assert fingerprints and fingerprints.isdisjoint(old_fingerprints)  # the bot's is new too

    async def bot_metrics() -> str:
        async with aiohttp.ClientSession() as http, http.get(url + "metrics") as resp:
            return await resp.text()
    expected = (f'voicebot_bot_peer_connections{{bot_id="{bot["bot_id"]}",local="host",'
                f'remote="host"}} 1.0')
    deadline = asyncio.get_running_loop().time() + 10
    while expected not in (text := await bot_metrics()):
        assert asyncio.get_running_loop().time() < deadline, text
        await asyncio.sleep(0.2)
    assert f'voicebot_bot_ice_failures_total{{bot_id="{bot["bot_id"]}"}} 0.0' in text
    await listener.mesh.close()


async def test_provider_killed_bot_moves_to_another(server: TestServer, clients: Clients,
                                                    provider_process: Any) -> None:
    url = str(server.make_url("/"))
    dispatcher = server.app[DISPATCHER]
    first = provider_process(url, name="first")
    await wait_until(lambda: len(dispatcher.providers) == 1, 30, "the first provider")
    human, inbox = await clients.new("Host")
    lobby = (await human.join(lobby_name="failover")).lobby.id
    listener = Listener(human, lobby)  # the greeting comes once the WebRTC link is up
    status, bot = await api("POST", url + f"api/lobbies/{lobby}/bots", human.config.token,
                            {"kind": "echo", "name": "Parrot"})
    assert status == 201
    await inbox.wait_for(p.Chat, text="Hello, Host!", timeout=30)
    provider_process(url, name="second")
    await wait_until(lambda: len(dispatcher.providers) == 2, 30, "the second provider")

    first.kill()
    killed = time.monotonic()
    # the same bot (same session, same name) is back, running on the second provider
    await wait_until(lambda: dispatcher.bots[bot["bot_id"]].status == "live" and
                     len(dispatcher.providers) == 1, 10, "the bot to come back")
    assert time.monotonic() - killed < 5
    moved_to = dispatcher.bots[bot["bot_id"]].provider
    assert moved_to is not None and dispatcher.providers[moved_to].name == "second"
    await human.chat(lobby, "!echo still here")
    await inbox.wait_for(p.Chat, text="still here", name="Parrot", timeout=10)
    await listener.mesh.close()


async def test_bot_request_errors(server: TestServer, clients: Clients,
                                  provider_process: Any) -> None:
    url = str(server.make_url("/"))
    human, inbox = await clients.new("Asker")
    lobby = (await human.join(lobby_name="errors")).lobby.id
    path = url + f"api/lobbies/{lobby}/bots"
    status, body = await api("POST", path, human.config.token, {"kind": "player"})
    assert (status, body["error"]["code"]) == (400, "unknown_bot_kind")

    provider_process(url, capacity=1, plugins=("echo", "player"))
    await wait_until(lambda: server.app[DISPATCHER].providers, 30, "the provider")
    status, body = await api("POST", path, human.config.token,
                             {"kind": "echo", "config": {"volume": 11}})
    assert (status, body["error"]["code"]) == (400, "invalid_config")
    status, body = await api("POST", path, human.config.token,
                             {"kind": "echo", "config": {"prefix": 5}})
    assert (status, body["error"]["code"]) == (400, "invalid_config")
    status, body = await api("POST", path, None, {"kind": "echo"})
    assert status == 401
    status, _ = await api("POST", path, human.config.token, {"kind": "echo"})
    assert status == 201
    status, body = await api("POST", path, human.config.token, {"kind": "echo"})
    assert (status, body["error"]["code"]) == (503, "no_provider")
    await inbox.wait_for(p.Chat, lambda m: m.kind == "system" and "no provider" in m.text)
    # a config only the provider can check (the file is not there): refused all the same,
    # with the plugin's own message, and the lobby keeps no trace of the attempt
    status, body = await api("DELETE", path + "/" + (await api("GET", path, None))[1]["bots"][0]["bot_id"],
                             human.config.token)
    assert status == 200
    for config, words in (({"path": "/nonexistent.wav"}, "media"), ({"path": ""}, "required"),
                          ({"path": str(ROOT / "tests" / "data" / "speaker_a.wav"), "delay": 99.0}, "delay")):
        status, body = await api("POST", path, human.config.token,
                                 {"kind": "player", "config": config})
        assert (status, body["error"]["code"]) == (400, "invalid_config"), body
        assert words in body["error"]["message"], body
    assert (await api("GET", path, None))[1]["bots"] == []
    assert not [m for m in inbox.of(p.Chat) if m.kind == "system" and "failed" in m.text]
    status, body = await api("DELETE", path + "/nope", human.config.token)
    assert (status, body["error"]["code"]) == (404, "bot_not_found")


async def test_wrong_provider_key_is_refused(server: TestServer, provider_process: Any) -> None:
    proc = provider_process(str(server.make_url("/")), key="wrong")
    await wait_until(lambda: proc.proc.poll() is not None, 30, "the provider to exit")
    assert proc.proc.returncode != 0
    assert "provider key" in proc.log()
    assert not server.app[DISPATCHER].providers


async def test_bots_leave_with_the_last_human(tmp_path: Any, provider_process: Any) -> None:

    srv = await start_server(tmp_path, grace=0.3)
    pool = Clients(str(srv.make_url("/")))
    try:
        provider_process(str(srv.make_url("/")))
        await wait_until(lambda: srv.app[DISPATCHER].providers, 30, "the provider")
        human, inbox = await pool.new("Only human")
        lobby = (await human.join(lobby_name="emptying")).lobby.id
        await api("POST", str(srv.make_url(f"/api/lobbies/{lobby}/bots")), human.config.token,
                  {"kind": "echo"})
        await inbox.wait_for(p.BotStatus, lambda m: m.status == "live", timeout=30)
        await human.part(lobby)
        dispatcher = srv.app[DISPATCHER]
        await wait_until(lambda: not dispatcher.bots and not dispatcher.hub.picture.lobbies[lobby].members,
                         10, "the bot to leave")
    finally:
        await pool.close()
        await srv.close()


async def test_voicebot_up_runs_server_and_provider(tmp_path: Any) -> None:
    """The README's first command: the server with a local provider that registers."""
    import os
    import subprocess
    import sys

    from .conftest import free_port

    port = free_port()
    env = os.environ | {"VOICEBOT_PROVIDER_KEY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "signaling.cli", "up", "--port", str(port),
                             "--data-dir", str(tmp_path / "data")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        kinds: list[str] = []
        while time.monotonic() < deadline and "player" not in kinds:
            await asyncio.sleep(0.3)
            try:
                kinds = await bot_kinds(url)
            except aiohttp.ClientError:
                pass
        assert {"player", "echo"} <= set(kinds)
    finally:
        proc.terminate()
        assert proc.wait(20) == 0


async def test_auto_bots_join_every_lobby(tmp_path: Any, provider_process: Any) -> None:

    srv = await start_server(tmp_path, auto_bots="echo")  # type: ignore[arg-type]
    pool = Clients(str(srv.make_url("/")))
    try:
        provider_process(str(srv.make_url("/")))
        await wait_until(lambda: srv.app[DISPATCHER].providers, 30, "the provider")
        human, inbox = await pool.new("Visitor")
        await human.join(lobby_name="automatic")
        state = await inbox.wait_for(p.LobbyState, lambda m: any(x.bot for x in m.participants),
                                     timeout=30)
        assert [x.name for x in state.participants if x.bot] == ["Echo"]
        other, _ = await pool.new("Second")
        joined = await other.join(lobby_name="automatic")  # still one echo bot, not two
        # the dispatcher adds a lobby's automatic bots under one lock, and the second join's
        # own call took it before the join was answered: this one runs after it
        await srv.app[DISPATCHER].add_auto_bots(joined.lobby.id)
        assert len(srv.app[DISPATCHER].bots) == 1
    finally:
        await pool.close()
        await srv.close()


def test_voicebot_models_lists_the_bundled_model() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "signaling.cli", "models"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    rows = {line.split()[0]: line.split()[1:3] for line in out.stdout.splitlines()}
    assert out.returncode == 0 and rows["tiny.en"] == ["installed", "package"]


class _Finite(MediaStreamTrack):
    """Real-time silence for ``frames`` frames, then the end of the stream."""

    kind = "audio"

    def __init__(self, frames: int) -> None:
        super().__init__()
        from aiortc.mediastreams import AudioStreamTrack

        self._inner, self._left = AudioStreamTrack(), frames

    async def recv(self) -> Any:
        from aiortc.mediastreams import MediaStreamError

        if self._left == 0:
            raise MediaStreamError
        self._left -= 1
        return await self._inner.recv()


async def test_outgoing_audio_stays_paced_when_a_source_ends() -> None:
    from bots.mesh import OutgoingAudio

    out = OutgoingAudio()
    await out.recv()
    out.set_source(_Finite(25))  # half a second of a source, then back to silence
    for _ in range(25):
        await out.recv()
    started = time.monotonic()
    for _ in range(25):
        await out.recv()
    # silence resumes in real time; a silence clock left running would burst the gap at once
    assert time.monotonic() - started >= 0.35
    out.stop()


async def test_outgoing_audio_is_stamped_with_the_time_that_passed_across_sources() -> None:
    """A sender that fell behind (its loop was busy) when its source changed skips what the
    silence still owed: the source's first frame is stamped with the time since the first
    frame, not the samples sent, so a receiver dating speech by timestamps is not early."""
    from bots.mesh import OutgoingAudio

    out = OutgoingAudio()
    first = await out.recv()
    started = out._started  # when the first frame went out
    assert started is not None
    for _ in range(4):
        await out.recv()
    await asyncio.sleep(0.3)  # 15 frames of silence owed
    out.set_source(_Finite(10))
    frame = await out.recv()
    elapsed = time.monotonic() - started
    assert first.pts == 0
    assert abs(frame.pts / 48_000 - elapsed) < 0.03, (frame.pts / 48_000, elapsed)
    # within the source, by the samples sent
    frames = [await out.recv() for _ in range(5)]
    assert [f.pts - frame.pts for f in frames] == [960 * (i + 1) for i in range(5)]
    out.stop()


async def test_a_plugins_on_stop_error_is_logged_and_the_bot_still_stops(
        caplog: pytest.LogCaptureFixture) -> None:
    from bots.plugin import Bot
    from bots.runner import BotRunner

    class Clumsy(Bot):  # type: ignore[type-arg]
        kind = "clumsy"

        async def on_stop(self) -> None:
            raise RuntimeError("forgot to open what it closes")

    start = p.BotStart(bot_id="b1", kind="clumsy", lobby_id="l1", token="t", name="Clumsy")
    runner = BotRunner(start, Clumsy, "http://127.0.0.1:9/", lambda *a: None)
    runner.bot = Clumsy(runner, Clumsy.Config.parse({}))
    with caplog.at_level("ERROR", logger="bots.runner"):
        await runner._shutdown()  # the runner's own clean-up, as after a stop
    assert "on_stop failed" in caplog.text and "forgot to open" in caplog.text
