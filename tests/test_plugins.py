"""The plugin platform as an author meets it: hooks that await requests, captions for plugins,
settings that can't hurt other plugins, a taken name, capacity that can be seen and freed.

Bots here run in a provider in the test's own process (a real server, real sockets, the
runner and mesh a provider uses), so a test can define its plugin on the spot."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bots.plugin import (REQUIRED, Bot, BotConfig, Caption, InvalidConfig, PluginError, check_plugin,
                         discover, setting)
from bots.provider import Provider
from bots.testing import FakeLobby
from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig
from shared.errors import NameRefused
from signaling.dispatch import DISPATCHER

from .conftest import PROVIDER_KEY, Clients
from .helpers import api, plugin_dist, wait_until

pytestmark = pytest.mark.backends("sqlite")  # dispatch on Redis: test_cluster.py, test_bots.py


@asynccontextmanager
async def provider(server: TestServer, *plugins: type[Bot[Any]],
                   capacity: int = 4) -> AsyncIterator[Provider]:
    """A provider of ``plugins`` in this process, connected to ``server``."""
    prov = Provider(str(server.make_url("/")), PROVIDER_KEY, {cls.kind: cls for cls in plugins},
                    capacity=capacity, name="in-test")
    task = asyncio.create_task(prov.run())
    try:
        await wait_until(lambda: prov.client.session_id in server.app[DISPATCHER].providers,
                         30, "the provider")
        yield prov
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def add_bot(server: TestServer, token: str | None, lobby: str, kind: str,
                  config: dict[str, Any] | None = None, status: int = 201) -> dict[str, Any]:
    code, body = await api("POST", str(server.make_url("/")) + f"api/lobbies/{lobby}/bots",
                           token, {"kind": kind, "config": config or {}})
    assert code == status, body
    return body  # type: ignore[no-any-return]


# --- hooks never hold the client up ------------------------------------------------------------


class PongBot(Bot[BotConfig]):
    """Answers "ping N" with "pong N", awaiting the post inside ``on_chat``: the docs' first
    pattern, which once froze the bot until the request timed out."""

    kind = "pong"

    async def on_chat(self, message: p.Chat) -> None:
        if message.text.startswith("ping ") and message.session_id != self.lobby.session_id:
            await self.lobby.post_chat("pong " + message.text[5:])
            await self.lobby.post_chat("posted " + message.text[5:])  # a second await, too


async def test_a_hook_that_awaits_post_chat_is_answered_every_time(
        server: TestServer, clients: Clients) -> None:
    human, inbox = await clients.new("Ann")
    lobby = (await human.join(lobby_name="ping")).lobby.id
    async with provider(server, PongBot):
        await add_bot(server, human.config.token, lobby, "pong")
        await inbox.wait_for(p.BotStatus, lambda m: m.status == "live", timeout=30)
        took = []
        for n in range(10):
            sent = time.monotonic()
            await human.chat(lobby, f"ping {n}")
            # the old runner answered the first, then waited 15 s for its own ack
            await inbox.wait_for(p.Chat, text=f"posted {n}", timeout=5)
            took.append(time.monotonic() - sent)
        assert len(inbox.of(p.Chat, text="pong 9")) == 1
        logging.getLogger(__name__).info("ping → pong: %s", [f"{t:.3f}" for t in took])


async def test_the_countdown_example_counts_down_to_liftoff_in_a_real_lobby(
        server: TestServer, clients: Clients) -> None:
    countdown = discover()["countdown"]  # examples/countdown-bot, installed on its own
    human, inbox = await clients.new("Ann")
    lobby = (await human.join(lobby_name="launch")).lobby.id
    async with provider(server, countdown):
        await add_bot(server, human.config.token, lobby, "countdown",
                      {"start": 3, "interval": 0.05})
        await inbox.wait_for(p.BotStatus, lambda m: m.status == "live", timeout=30)
        await human.chat(lobby, "!countdown")
        await inbox.wait_for(p.Chat, text="Liftoff!", timeout=10)  # the old runner: "3", then 15 s
        said = [m.text for m in inbox.of(p.Chat) if m.name == "Countdown"]
        assert said == ["3", "2", "1", "Liftoff!"]


class SlowAndBrokenBot(Bot[BotConfig]):
    """A hook that takes its time and one that fails: neither holds up the next message."""

    kind = "moody"

    async def on_chat(self, message: p.Chat) -> None:
        if message.text == "slow":
            await asyncio.sleep(3600)
        elif message.text == "fail":
            raise RuntimeError("the plugin's own bug")
        elif message.text == "hello" and message.session_id != self.lobby.session_id:
            await self.lobby.post_chat("still here")


async def test_a_slow_or_failing_hook_delays_only_itself(
        server: TestServer, clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    human, inbox = await clients.new("Ann")
    lobby = (await human.join(lobby_name="moody")).lobby.id
    async with provider(server, SlowAndBrokenBot):
        await add_bot(server, human.config.token, lobby, "moody")
        await inbox.wait_for(p.BotStatus, lambda m: m.status == "live", timeout=30)
        for text in ("slow", "fail", "hello"):
            await human.chat(lobby, text)
        await inbox.wait_for(p.Chat, text="still here", timeout=10)
    assert "bot plugin 'moody'" in caplog.text and "hook on_chat failed" in caplog.text
    assert "the plugin's own bug" in caplog.text


# --- captions for plugins ----------------------------------------------------------------------


@dataclass(frozen=True)
class AlertConfig(BotConfig):
    keywords: list[str] = setting(["banana"], "words to watch for")


class AlertBot(Bot[AlertConfig]):
    """The docs' once-per-sentence pattern: a revision of a sentence already alerted on is
    not alerted on again."""

    kind = "alert"
    Config = AlertConfig

    async def on_transcript(self, caption: Caption) -> None:
        for word in self.config.keywords:
            if caption.text.lower().count(word) > sum(old.text.lower().count(word)
                                                      for old in caption.replaced):
                await self.lobby.post_chat(f"{caption.speaker.name} said {word}")


class CaptionerBot(Bot[BotConfig]):
    """Posts the finals a transcriber would: "caption ID TEXT" posts TEXT as segment ID,
    "revise ID OLD TEXT" posts TEXT as ID in place of the final OLD."""

    kind = "captioner"

    async def on_chat(self, message: p.Chat) -> None:
        words = message.text.split(" ")
        if words[0] not in ("caption", "revise") or message.session_id is None:
            return
        replaces = [words[2]] if words[0] == "revise" else []
        text = " ".join(words[3:] if replaces else words[2:])
        await self.lobby.post_transcript(p.Transcript(
            lobby_id=self.lobby.lobby_id, segment_id=words[1], speaker_id=message.session_id,
            speaker_name=message.name or "", text=text, final=True, replaces=replaces,
            start=time.time() - 1, end=time.time()))


async def test_on_transcript_gets_finals_with_what_they_replace_in_a_real_lobby(
        server: TestServer, clients: Clients) -> None:
    human, inbox = await clients.new("Ann")
    lobby = (await human.join(lobby_name="captions")).lobby.id
    await human.chat(lobby, "history: banana before the bots came")
    async with provider(server, AlertBot, CaptionerBot):
        await add_bot(server, human.config.token, lobby, "captioner")
        await add_bot(server, human.config.token, lobby, "alert")
        await wait_until(lambda: len(inbox.of(p.BotStatus, status="live")) >= 2, 30, "two bots")
        await human.chat(lobby, "caption s1 I ate a banana")
        await inbox.wait_for(p.Chat, text="Ann said banana", timeout=10)
        await human.chat(lobby, "revise s2 s1 I ate a banana and it was ripe")  # the same sentence
        await human.chat(lobby, "caption s3 I slept")
        await human.chat(lobby, "revise s4 s3 I slept then ate a banana")  # now it holds the word
        await wait_until(lambda: len(inbox.of(p.Chat, text="Ann said banana")) >= 2, 10,
                         "the second alert")
        await human.chat(lobby, "caption s5 the end")
        await inbox.wait_for(p.Transcript, segment_id="s5", timeout=10)
        await asyncio.sleep(0.5)  # any late, wrong alert would be in by now
        assert len(inbox.of(p.Chat, text="Ann said banana")) == 2


async def test_fake_lobby_feeds_captions_with_replaces_applied() -> None:
    lobby = FakeLobby()
    await lobby.start(AlertBot(lobby, AlertBot.Config.parse({"keywords": ["banana", "kiwi"]})))
    first = await lobby.caption("Ann", "I ate a banana")
    await lobby.caption("Ann", "I ate a banana and a kiwi", replaces=[first])
    await lobby.caption("Bob", "no fruit")
    await lobby.caption("Bob", "banana", final=False)  # an interim: the bot did not ask
    assert lobby.chat == ["Ann said banana", "Ann said kiwi"]


class InterimBot(Bot[BotConfig]):
    kind = "interims"
    interims = True

    async def on_transcript(self, caption: Caption) -> None:
        await self.lobby.post_chat(f"{'final' if caption.final else 'interim'}: {caption.text}")


async def test_a_bot_that_asks_for_interims_gets_them() -> None:
    lobby = FakeLobby()
    await lobby.start(InterimBot(lobby, BotConfig()))
    await lobby.caption("Ann", "I a", final=False, segment_id="x")
    await lobby.caption("Ann", "I ate", segment_id="x")
    assert lobby.chat == ["interim: I a", "final: I ate"]


# --- settings that can't hurt anyone -----------------------------------------------------------


@dataclass(frozen=True)
class ListConfig(BotConfig):
    words: list[str] = setting(["a", "b"], "words")
    sizes: list[int] = setting([1], "sizes", minimum=1, maximum=9)
    room: str = setting(REQUIRED, "a setting every config must give")


def test_list_and_required_settings_parse_and_describe_themselves() -> None:
    schema = ListConfig.schema()
    assert schema["words"] == {"type": "array", "items": "string", "nullable": False,
                               "default": ["a", "b"], "help": "words"}
    assert schema["room"]["required"] and schema["room"]["default"] is None
    cfg = ListConfig.parse({"room": "x", "sizes": [2, 3]})
    assert (cfg.words, cfg.sizes, cfg.room) == (["a", "b"], [2, 3], "x")
    assert ListConfig.parse({"room": "y"}).words is not cfg.words  # a copy each
    for bad, words in (({}, "room is required"), ({"room": "x", "sizes": [0]}, "within"),
                       ({"room": "x", "words": "a"}, "list"), ({"room": "x", "words": [1]}, "words")):
        with pytest.raises(InvalidConfig, match=words):
            ListConfig.parse(bad)


@dataclass(frozen=True)
class DictConfig(BotConfig):
    table: dict[str, int] = setting(None, "a type no schema describes")


class DictBot(Bot[DictConfig]):
    kind = "dicty"
    Config = DictConfig


class SyncHookBot(Bot[BotConfig]):
    kind = "synchook"

    def on_chat(self, message: p.Chat) -> None:  # type: ignore[override]
        pass


@dataclass(frozen=True)
class BadDefaultConfig(BotConfig):
    count: int = setting("three", "a default of the wrong type")


class BadDefaultBot(Bot[BadDefaultConfig]):
    kind = "baddefault"
    Config = BadDefaultConfig


@dataclass(frozen=True)
class NoDefaultConfig(BotConfig):
    city: str  # a plain field: every setting needs a default, or REQUIRED


class NoDefaultBot(Bot[NoDefaultConfig]):
    kind = "nodefault"
    Config = NoDefaultConfig


class ListBot(Bot[ListConfig]):
    kind = "listy"
    Config = ListConfig


def test_check_plugin_refuses_what_a_provider_could_not_offer() -> None:
    check_plugin(ListBot)
    check_plugin(AlertBot)
    for cls, words in ((DictBot, "setting 'table'"), (SyncHookBot, "on_chat must be an async def"),
                       (BadDefaultBot, "default 'three'"), (dict, "not a Bot subclass"),
                       (NoDefaultBot, "'city' has no default")):
        with pytest.raises(PluginError, match=words):
            check_plugin(cls)
    with pytest.raises(PluginError, match="declared as 'other'"):
        check_plugin(ListBot, "other")


BROKEN_PLUGINS = '''
from dataclasses import dataclass
from bots.plugin import Bot, BotConfig, setting

@dataclass(frozen=True)
class TableConfig(BotConfig):
    table: dict[str, int] = setting(None, "no schema describes this")

class TableBot(Bot[TableConfig]):
    kind = "table"
    Config = TableConfig

@dataclass(frozen=True)
class TupleConfig(BotConfig):
    words: list[str] = setting(("banana",), "a tuple, the usual dodge of a mutable default")

class TupleBot(Bot[TupleConfig]):
    kind = "tupled"
    Config = TupleConfig

@dataclass(frozen=True)
class WordsConfig(BotConfig):
    words: list[str] = setting(["banana"], "a list is fine")

class WordsBot(Bot[WordsConfig]):
    kind = "words"
    Config = WordsConfig
'''


def test_discovery_refuses_a_broken_plugin_with_one_line_and_keeps_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    plugin_dist(tmp_path, "table = fixture_plugins:TableBot\nwords = fixture_plugins:WordsBot\n"
                "tupled = fixture_plugins:TupleBot", {"fixture_plugins": BROKEN_PLUGINS})
    monkeypatch.syspath_prepend(str(tmp_path))
    found = discover()
    assert not {"table", "tupled"} & set(found) and {"words", "echo", "transcriber"} <= set(found)
    lines = [r.getMessage() for r in caplog.records if "bot plugin 'table'" in r.getMessage()]
    assert len(lines) == 1 and "refused" in lines[0] and "setting 'table'" in lines[0], lines


async def test_a_list_setting_reaches_the_server_and_is_checked_there(
        server: TestServer, clients: Clients) -> None:
    """A list setting once broke provider_hello: every plugin of that provider went offline."""
    human, inbox = await clients.new("Ann")
    lobby = (await human.join(lobby_name="settings")).lobby.id
    async with provider(server, ListBot, PongBot):
        kinds = {k["kind"]: k for k in (await api("GET", str(server.make_url("/")) + "api/bots",
                                                  None))[1]["kinds"]}
        assert {"listy", "pong"} <= set(kinds)
        assert kinds["listy"]["config"]["words"]["type"] == "array"
        token = human.config.token
        for config in ({}, {"room": "x", "words": "a"}, {"room": "x", "words": [1]},
                       {"room": "x", "sizes": [10]}, {"room": "x", "words": ["a"] * 101}):
            body = await add_bot(server, token, lobby, "listy", config, status=400)
            assert body["error"]["code"] == "invalid_config", body
        await add_bot(server, token, lobby, "listy", {"room": "x", "words": ["kiwi"]})
        await inbox.wait_for(p.BotStatus, lambda m: m.status == "live", timeout=30)


# --- a taken name ----------------------------------------------------------------------------


async def test_a_taken_name_is_a_clear_error_not_a_timeout(clients: Clients) -> None:
    await clients.new("Taken")
    client = SignalingClient(ClientConfig(url=clients.url, name="Taken"))
    try:
        with pytest.raises(NameRefused) as refused:
            await client.start(wait=60)  # the old client reconnected for ever: ConnectTimeout
        assert refused.value.code == "name_in_use" and refused.value.name == "Taken"
        assert isinstance(await client.wait_stopped(), NameRefused)
    finally:
        await client.close(drain=0)


# --- capacity you can see --------------------------------------------------------------------


async def test_a_full_provider_is_not_a_missing_one_and_a_freed_place_is_taken(
        server: TestServer, clients: Clients) -> None:
    human, inbox = await clients.new("Ann")
    first = (await human.join(lobby_name="one")).lobby.id
    second = (await human.join(lobby_name="two")).lobby.id
    dispatcher = server.app[DISPATCHER]
    # no provider runs the kind: the bot waits, and says for what
    bot = await dispatcher.add(first, "pong", {}, None, pending_ok=True)
    pending = await inbox.wait_for(p.BotStatus, bot_id=bot.id, status="pending")
    assert pending.error == "no_provider" and "runs pong bots" in pending.detail
    async with provider(server, PongBot, capacity=1):
        await inbox.wait_for(p.BotStatus, bot_id=bot.id, status="live", timeout=30)
        waiting = await dispatcher.add(second, "pong", {}, None, pending_ok=True)
        full = await inbox.wait_for(p.BotStatus, bot_id=waiting.id, status="pending")
        assert full.error == "providers_full" and "1 of 1" in full.detail, full
        _, body = await api("GET", str(server.make_url("/")) + f"api/lobbies/{second}/bots", None)
        assert body["bots"][0]["error"] == "providers_full"
        freed = time.monotonic()
        await dispatcher.remove(dispatcher.bots[bot.id])
        await inbox.wait_for(p.BotStatus, bot_id=waiting.id, status="live", timeout=30)
        logging.getLogger(__name__).info("started %.2f s after its place was freed",
                                         time.monotonic() - freed)


async def test_voicebot_up_is_ready_with_a_broken_plugin_installed(tmp_path: Path) -> None:
    """One bad plugin once took every plugin of its provider offline: `voicebot up` never
    became ready, and the only trace was `handler for welcome failed`."""
    import os
    import subprocess
    import sys

    import aiohttp

    from signaling.testing import free_port

    plugins = plugin_dist(tmp_path / "plugins",
                          "table = fixture_plugins:TableBot\nwords = fixture_plugins:WordsBot\n"
                          "gone = no_such_module:Bot\ntupled = fixture_plugins:TupleBot",
                          {"fixture_plugins": BROKEN_PLUGINS})
    port, log_path = free_port(), tmp_path / "up.log"
    env = os.environ | {"VOICEBOT_PROVIDER_KEY": "", "PYTHONPATH": str(plugins)}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "signaling.cli", "up", "--port", str(port),
                                 "--data-dir", str(tmp_path / "data")], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as http, http.get(url + "api/ready") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        deadline = time.monotonic() + 120
        while not await ready():
            assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()
            await asyncio.sleep(0.3)
        kinds = {k["kind"] for k in (await api("GET", url + "api/bots", None))[1]["kinds"]}
        assert {"transcriber", "words", "echo"} <= kinds and not {"table", "tupled"} & kinds
        text = log_path.read_text()
        assert "bot plugin 'table' (fixture_plugins:TableBot) refused" in text
        assert "bot plugin 'tupled' (fixture_plugins:TupleBot) refused" in text
        assert "bot plugin 'gone'" in text and "handler for welcome failed" not in text
    finally:
        proc.terminate()
        assert proc.wait(20) == 0
