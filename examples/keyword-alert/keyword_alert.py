"""A third-party bot, packaged on its own: posts "Ann said banana" when a caption holds a
keyword, once per sentence, even when the transcriber revises the sentence later or joins the
next sentence to it."""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

from bots.plugin import Bot, BotConfig, Caption, LobbyAccess, setting

KEEP = 256  # finals remembered: a transcriber revises only its recent ones


@dataclass(frozen=True)
class KeywordAlertConfig(BotConfig):
    keywords: list[str] = setting(["banana"], "words to watch the captions for")
    message: str = setting("{name} said {keyword}", "posted for each keyword heard")


class KeywordAlertBot(Bot[KeywordAlertConfig]):
    kind = "keyword_alert"
    description = "Posts a chat message when someone says one of its keywords."
    Config = KeywordAlertConfig

    def __init__(self, lobby: LobbyAccess, config: KeywordAlertConfig) -> None:
        super().__init__(lobby, config)
        # the mentions already alerted on, by the final that holds them: a revision takes
        # over those of the finals it replaces (whatever they said by then)
        self.alerted: collections.OrderedDict[str, collections.Counter[str]] = \
            collections.OrderedDict()

    async def on_transcript(self, caption: Caption) -> None:
        before: collections.Counter[str] = collections.Counter()
        for old in caption.replaced:
            before.update(self.alerted.pop(old.segment_id, {}))
        now = collections.Counter({word: mentions(word, caption.text)
                                   for word in self.config.keywords})
        self.alerted[caption.segment_id] = now | before
        while len(self.alerted) > KEEP:
            self.alerted.popitem(last=False)
        for word in self.config.keywords:
            if now[word] > before[word]:  # said again, or heard for the first time
                await self.lobby.post_chat(self.config.message.format(
                    name=caption.speaker.name, keyword=word))


def mentions(keyword: str, text: str) -> int:
    return len(re.findall(rf"\b{re.escape(keyword)}\b", text, re.IGNORECASE))
