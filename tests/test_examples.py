"""The example plugins end to end, each installed on its own as a third party would (.ci/run):
a provider process offers them with the transcriber; the reader speaks a chat message into
the call, the transcriber captions the reader's speech, and the keyword alert posts once for
each sentence that holds its keyword."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from bots.plugin import discover
from shared import protocol as p
from signaling.dispatch import DISPATCHER

from .conftest import Clients
from .helpers import api, shown, wait_until
from .speech import words

pytestmark = pytest.mark.backends("sqlite")

SENTENCES = ["Please bring a banana to the meeting tomorrow morning.",
             "The weather today is cold and windy.",
             "My sister planted a banana tree in her garden."]


def test_every_example_is_installed_and_offered() -> None:
    assert {"countdown", "keyword_alert", "reader"} <= set(discover())


@pytest.mark.timeout(400)
async def test_the_reader_is_captioned_and_the_alert_fires_once_a_sentence(
        server: TestServer, clients: Clients, provider_process: Any) -> None:
    url = str(server.make_url("/"))
    provider_process(url, plugins=("transcriber", "reader", "keyword_alert"))
    await wait_until(lambda: server.app[DISPATCHER].providers, 60, "the provider")
    human, inbox = await clients.new("Ann")
    lobby = (await human.join(lobby_name="examples")).lobby.id
    for kind, config in (("transcriber", {}), ("reader", {}),
                         ("keyword_alert", {"keywords": ["banana"]})):
        status, body = await api("POST", url + f"api/lobbies/{lobby}/bots", human.config.token,
                                 {"kind": kind, "config": config})
        assert status == 201, body

    def alerts() -> list[str]:
        return [m.text for m in inbox.of(p.Chat) if m.name == "Keyword Alert"]

    await wait_until(lambda: {m.kind for m in inbox.of(p.BotStatus, status="live")}
                     >= {"transcriber", "reader", "keyword_alert"}, 120, "three live bots")
    reader = next(m.session_id for m in inbox.of(p.BotStatus, kind="reader"))
    for sentence in SENTENCES:  # read one after another: the reader queues them
        await human.chat(lobby, sentence)

    def heard() -> str:
        return " ".join(t.text for t in shown(inbox.of(p.Transcript, final=True)))

    said = Counter(words(" ".join(SENTENCES)).split())

    def caught() -> int:  # in any order: a sentence read straight after another may be
        return (said & Counter(words(heard()).split())).total()  # captioned joined to it

    # at least 80 % of the words
    await wait_until(lambda: caught() >= 0.8 * said.total(), 120, f"the words: {heard()}")
    await wait_until(lambda: len(alerts()) >= 2, 60, f"the second alert: {alerts()} {heard()}")
    got = heard()
    assert {t.speaker_id for t in inbox.of(p.Transcript, final=True)} == {reader}
    # one more sentence: an alert still to come would come before its caption
    await human.chat(lobby, "That is all I wanted to say for now.")
    await wait_until(lambda: any(w in heard().lower() for w in ("wanted", "all i", "for now")),
                     60, "the closing caption")
    assert alerts() == ["Reader said banana", "Reader said banana"], (alerts(), got)

