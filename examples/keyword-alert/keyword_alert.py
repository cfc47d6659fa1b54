"""A third-party bot, packaged on its own: posts "Ann said banana" when a caption holds a
keyword, once per sentence, even when the transcriber revises the sentence later or joins the
next sentence to it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from bots.plugin import Bot, BotConfig, Caption, setting


@dataclass(frozen=True)
class KeywordAlertConfig(BotConfig):
    keywords: list[str] = setting(["banana"], "words to watch the captions for")
    message: str = setting("{name} said {keyword}", "posted for each keyword heard")


class KeywordAlertBot(Bot[KeywordAlertConfig]):
    kind = "keyword_alert"
    description = "Posts a chat message when someone says one of its keywords."
    Config = KeywordAlertConfig

    async def on_transcript(self, caption: Caption) -> None:
        for keyword in self.config.keywords:
            # a final that replaces others holds their words too: only more mentions than
            # they had are news (the speaker said it again, or the revision heard it)
            before = sum(mentions(keyword, old.text) for old in caption.replaced)
            if mentions(keyword, caption.text) > before:
                await self.lobby.post_chat(self.config.message.format(
                    name=caption.speaker.name, keyword=keyword))


def mentions(keyword: str, text: str) -> int:
    return len(re.findall(rf"\b{re.escape(keyword)}\b", text, re.IGNORECASE))
