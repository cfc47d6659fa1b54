"""A bot provider: one process that runs bot instances on the server's request.

It connects with the shared client as a bot session (authenticated by the provider key),
announces its plugins and capacity after every (re)connect, and starts or stops a
``BotRunner`` per ``bot_start``/``bot_stop``. A bot that crashes is reported and forgotten;
the provider carries on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig
from shared.tasks import cancel_and_wait

from .plugin import Bot, describe
from .runner import BotRunner

log = logging.getLogger(__name__)


class Provider:
    def __init__(self, server_url: str, key: str, plugins: dict[str, type[Bot]], *,
                 capacity: int = 8, name: str | None = None,
                 client_options: dict[str, Any] | None = None) -> None:
        self.server_url = server_url
        self.plugins = plugins
        self.capacity = capacity
        self.name = name or f"provider@{socket.gethostname()}"
        self.client_options = client_options or {}
        self.client = SignalingClient(ClientConfig(url=server_url, bot=True, provider_key=key,
                                                   **self.client_options))
        self.runners: dict[str, tuple[BotRunner, asyncio.Task[None]]] = {}
        self.client.on(p.MessageType.WELCOME, self._hello)
        self.client.on(p.MessageType.BOT_START, self._start)
        self.client.on(p.MessageType.BOT_STOP, self._stop)

    def _hello(self, _: p.Message) -> None:
        running = [p.RunningBot(bot_id=r.bot_id, kind=r.cls.kind, lobby_id=r.lobby_id)
                   for r, _ in self.runners.values()]
        self.client.send(p.ProviderHello(name=self.name, capacity=self.capacity,
                                         kinds=[describe(cls) for cls in self.plugins.values()],
                                         running=running))

    def _report(self, status: p.BotStatus) -> None:
        self.client.send(status, critical=status.status == "failed")

    def _start(self, msg: p.Message) -> None:
        assert isinstance(msg, p.BotStart)
        if msg.bot_id in self.runners:
            return
        cls = self.plugins.get(msg.kind)
        if cls is None:
            self._report(p.BotStatus(bot_id=msg.bot_id, status="failed",
                                     detail=f"this provider has no {msg.kind!r} plugin"))
            return
        runner = BotRunner(msg, cls, self.server_url, self._report, self.client_options)
        task = asyncio.create_task(runner.run(), name=f"bot-{msg.bot_id}")
        self.runners[msg.bot_id] = (runner, task)
        task.add_done_callback(lambda _: self.runners.pop(msg.bot_id, None))
        log.info("started bot %s (%s) in lobby %s", msg.bot_id, msg.kind, msg.lobby_id)

    async def _stop(self, msg: p.Message) -> None:
        assert isinstance(msg, p.BotStop)
        entry = self.runners.pop(msg.bot_id, None)
        if entry is not None:
            _, task = entry
            await cancel_and_wait(task)
            self._report(p.BotStatus(bot_id=msg.bot_id, status="stopped"))
            log.info("stopped bot %s", msg.bot_id)

    async def run(self) -> int:
        """Runs until cancelled; returns non-zero if the server refused us."""
        await self.client.start()
        try:
            failure = await self.client.wait_stopped()
        finally:
            await self.shutdown()
        if failure is not None:
            log.error("provider stopped: %s", failure)
            return 1
        return 0

    async def shutdown(self) -> None:
        await cancel_and_wait(*(task for _, task in self.runners.values()))
        self.runners.clear()
        await self.client.close(drain=1.0)
