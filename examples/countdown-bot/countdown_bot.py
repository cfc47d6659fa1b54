"""A third-party bot, packaged on its own: ``!countdown`` in the chat starts a countdown."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bots.plugin import Bot, BotConfig, setting
from shared.protocol import Chat


@dataclass(frozen=True)
class CountdownConfig(BotConfig):
    start: int = setting(5, "the number to count down from")
    interval: float = setting(1.0, "seconds between numbers")


class CountdownBot(Bot[CountdownConfig]):
    kind = "countdown"
    description = "Counts down in the chat when someone says !countdown."
    Config = CountdownConfig

    async def on_chat(self, message: Chat) -> None:
        if message.text.strip() == "!countdown" and message.session_id != self.lobby.session_id:
            for n in range(self.config.start, 0, -1):
                await self.lobby.post_chat(str(n))
                await asyncio.sleep(self.config.interval)
            await self.lobby.post_chat("Liftoff!")
