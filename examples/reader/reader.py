"""A third-party bot, packaged on its own: reads the lobby's chat aloud into the call, one
message after another, with espeak-ng (Debian: ``apt-get install espeak-ng``)."""

from __future__ import annotations

from dataclasses import dataclass

from bots.plugin import Bot, BotConfig, setting
from bots.voice import speak
from shared.protocol import Chat


@dataclass(frozen=True)
class ReaderConfig(BotConfig):
    voice: str = setting("en-us", "an espeak-ng voice (espeak-ng --voices)")
    words_per_minute: int = setting(165, "how fast it reads", minimum=80, maximum=450)
    prefix: str = setting("", "read only messages that start with this (and not the prefix)")


class ReaderBot(Bot[ReaderConfig]):
    kind = "reader"
    description = "Reads the chat aloud into the call."
    Config = ReaderConfig
    sends_audio = True

    async def on_chat(self, message: Chat) -> None:
        sender = self.lobby.peers().get(message.session_id or "")
        # people's messages only: not the system's, its own, nor other bots' (which may be
        # about what it said: a loop)
        if message.kind != "chat" or sender is None or sender.bot:
            return
        if not message.text.startswith(self.config.prefix):
            return
        text = message.text[len(self.config.prefix):].strip()
        if text:
            # play() starts speak() at once and keeps its place in the queue: messages are
            # read in the order they came, one after another
            await self.lobby.play(speak(text, self.config.voice, self.config.words_per_minute))
