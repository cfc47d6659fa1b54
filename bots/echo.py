"""``echo``: the smallest useful bot, and the plugin API on one page.

It greets each peer whose connection comes up and answers ``!echo <text>`` in the chat.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import protocol as p

from .plugin import Bot, BotConfig, Peer, setting


@dataclass(frozen=True)
class EchoConfig(BotConfig):
    greeting: str = setting("Hello, {name}!", "posted when a peer connects; {name} is theirs")
    prefix: str = setting("!echo ", "chat messages starting with this are echoed")


class EchoBot(Bot[EchoConfig]):
    kind = "echo"
    description = "Greets peers and echoes chat that starts with !echo."
    Config = EchoConfig

    async def on_joined(self) -> None:
        self.lobby.set_status("live", "listening to the chat")

    async def on_peer_connected(self, peer: Peer) -> None:
        await self.lobby.post_chat(self.config.greeting.format(name=peer.name))

    async def on_chat(self, message: p.Chat) -> None:
        prefix = self.config.prefix
        if message.session_id != self.lobby.session_id and message.text.startswith(prefix):
            await self.lobby.post_chat(message.text[len(prefix):])
