"""A plugin author's loop: a new package from a template (``voicebot plugin new``), the
plugins of a working directory (``voicebot dev``), and a real lobby for end-to-end tests
(``live_lobby``).

``live_lobby`` runs what a deployment runs — the signaling server on loopback over a
temporary SQLite store, a provider with the plugin, a person's client in a lobby — all in
the test's own process, so a test needs no ports or processes of its own.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import secrets
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig

from .plugin import ENTRY_POINT_GROUP, Bot, PluginError, check_plugin
from .provider import Provider


class LiveLobby:
    """A lobby on a real server with the bot in it, as a person in it sees it."""

    def __init__(self, url: str, lobby_id: str, person: SignalingClient, bot_id: str) -> None:
        self.url, self.lobby_id, self.person, self.bot_id = url, lobby_id, person, bot_id
        self.messages: list[p.Message] = []
        self._changed = asyncio.Event()
        for type_ in (p.MessageType.CHAT, p.MessageType.TRANSCRIPT, p.MessageType.BOT_STATUS):
            person.on(type_, self._add)

    def _add(self, msg: p.Message) -> None:
        self.messages.append(msg)
        self._changed.set()

    @property
    def chat(self) -> list[p.Chat]:
        """The chat messages so far, the person's own included."""
        return [m for m in self.messages if isinstance(m, p.Chat)]

    async def say(self, text: str) -> None:
        """The person posts ``text`` to the chat."""
        await self.person.chat(self.lobby_id, text)

    async def wait_for(self, match: Callable[[p.Message], bool], timeout: float = 30.0) -> Any:
        """The first message so far or to come that ``match`` accepts; ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((m for m in self.messages if match(m)), None)
            if found is not None:
                return found
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), max(0.0, deadline - time.monotonic()))

    async def wait_for_chat(self, text: str, timeout: float = 30.0) -> p.Chat:
        """The first chat message whose text contains ``text``."""
        found: p.Chat = await self.wait_for(
            lambda m: isinstance(m, p.Chat) and text in m.text, timeout)
        return found


@asynccontextmanager
async def live_lobby(cls: type[Bot[Any]], config: dict[str, Any] | None = None, *,
                     others: tuple[type[Bot[Any]], ...] = (),
                     name: str = "Tester") -> AsyncIterator[LiveLobby]:
    """A real server with ``cls`` (and ``others``) offered by a provider, a person called
    ``name`` in a new lobby, and a ``cls`` bot with ``config`` added to it and live."""
    from aiohttp.test_utils import TestServer

    from signaling.app import create_app
    from signaling.settings import Settings
    from signaling.testing import free_port

    check_plugin(cls)
    key = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="voicebot-live-") as data:
        server = TestServer(create_app(Settings(data_dir=Path(data), provider_key=key,
                                                create_burst=100.0)),
                            host="127.0.0.1", port=free_port())
        await server.start_server()
        url = str(server.make_url("/"))
        provider = Provider(url, key, {c.kind: c for c in (cls, *others)}, name="live-lobby")
        running = asyncio.create_task(provider.run())
        person = SignalingClient(ClientConfig(url=url, name=name))
        try:
            await person.start(wait=30)
            lobby_id = (await person.join(lobby_name=f"{cls.kind} test")).lobby.id
            body: dict[str, Any] = {}
            for _ in range(300):  # the provider announces its plugins as it connects
                async with aiohttp.ClientSession() as http, http.post(
                        url + f"api/lobbies/{lobby_id}/bots", json={"kind": cls.kind,
                                                                    "config": config or {}},
                        headers={"Authorization": f"Bearer {person.config.token}"}) as r:
                    body = await r.json()
                if r.status == 201:
                    break
                if body.get("error", {}).get("code") != "unknown_bot_kind":
                    raise PluginError(f"the server refused the bot: {body}")
                await asyncio.sleep(0.1)
            lobby = LiveLobby(url, lobby_id, person, body["bot_id"])
            await lobby.wait_for(lambda m: isinstance(m, p.BotStatus) and
                                 m.bot_id == lobby.bot_id and m.status in ("live", "failed"))
            yield lobby
        finally:
            await person.close(drain=0)
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            await server.close()


# --- plugins of a working directory ---------------------------------------------------------


def declared(path: Path) -> dict[str, str]:
    """The plugins ``path``'s pyproject.toml declares: ``{kind: "module:Class"}``."""
    project = tomllib.loads((path / "pyproject.toml").read_text())
    return dict(project.get("project", {}).get("entry-points", {}).get(ENTRY_POINT_GROUP, {}))


def load(reference: str, path: Path | None = None) -> type[Bot[Any]]:
    """The class ``module:Class`` names, imported from ``path`` first; checked."""
    if path is not None and str(path) not in sys.path:
        sys.path.insert(0, str(path))
    module, _, attr = reference.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    check_plugin(cls)
    return cls


# --- a new plugin ------------------------------------------------------------------------------


def new_plugin(name: str, where: Path) -> Path:
    """Writes a plugin package called ``name`` (e.g. ``weather-bot``) under ``where``."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{1,40}", name):
        raise ValueError("a plugin's name is lower-case letters, digits and dashes, e.g. "
                         "weather-bot")
    root = where / name
    if root.exists():
        raise FileExistsError(f"{root} exists already")
    module = name.replace("-", "_")
    kind = module.removesuffix("_bot") or module
    cls = "".join(part.title() for part in module.split("_"))
    cls = cls if cls.endswith("Bot") else cls + "Bot"
    fill = {"name": name, "module": module, "kind": kind, "cls": cls}
    (root / "tests").mkdir(parents=True)
    for file, text in TEMPLATE.items():
        (root / file.format(**fill)).write_text(text.format(**fill).lstrip())
    return root


TEMPLATE = {
    "pyproject.toml": """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "An ai-voicebot plugin"
requires-python = ">=3.11"
dependencies = ["ai-voicebot"]

[project.optional-dependencies]
test = ["pytest", "pytest-asyncio"]

[project.entry-points."ai_voicebot.bots"]
{kind} = "{module}:{cls}"

[tool.setuptools]
py-modules = ["{module}"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
""",
    "{module}.py": '''
"""{cls}: answers "!{kind}" in the chat. Start here: docs/plugins.md has every hook."""

from __future__ import annotations

from dataclasses import dataclass

from bots.plugin import Bot, BotConfig, setting
from shared.protocol import Chat


@dataclass(frozen=True)
class {cls}Config(BotConfig):
    reply: str = setting("Hello, {{name}}!", "the answer to !{kind}; {{name}} is the asker's")


class {cls}(Bot[{cls}Config]):
    kind = "{kind}"
    description = "Answers !{kind} in the chat."
    Config = {cls}Config

    async def on_chat(self, message: Chat) -> None:
        if message.text.strip() == "!{kind}" and message.session_id != self.lobby.session_id:
            await self.lobby.post_chat(self.config.reply.format(name=message.name))
''',
    "tests/test_{module}.py": '''
from bots.devloop import live_lobby
from bots.testing import FakeLobby, check_plugin
from {module} import {cls}


def test_a_provider_can_offer_it() -> None:
    check_plugin({cls}, "{kind}")


async def test_it_answers_in_a_fake_lobby() -> None:
    lobby = FakeLobby()
    await lobby.start({cls}(lobby, {cls}.Config.parse({{}})))
    await lobby.say("Ann", "!{kind}")
    assert lobby.chat == ["Hello, Ann!"]


async def test_it_answers_in_a_real_lobby() -> None:
    async with live_lobby({cls}, {{"reply": "Hi {{name}}"}}) as lobby:
        await lobby.say("!{kind}")
        await lobby.wait_for_chat("Hi Tester")
''',
    "README.md": """
# {name}

A bot plugin for ai-voicebot: `{kind}` (docs/plugins.md in ai-voicebot says how it works).

```sh
pip install -e '.[test]'   # declares the plugin to every provider on this machine
python -m pytest           # a fake lobby, then a real one
voicebot dev               # a server with your bot in every lobby; restarts it when you save
```
""",
}
