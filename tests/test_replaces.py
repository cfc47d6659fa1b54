"""A final that replaces earlier finals (a sentence that went on after a pause): stored as
posted, shown in their place by the page, the exports and ``history.current``."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import expect

from shared import protocol as p
from shared.protocol import ProtocolError

from .browser import chromium, create_lobby, enter
from .conftest import PROVIDER_KEY, Clients
from .helpers import api, api_text, new_token, raw_join, raw_login, raw_request


def final(lobby: str, segment: str, speaker: str, text: str, *replaces: str,
          start: float = 1795300000.0) -> p.Transcript:
    return p.Transcript(lobby_id=lobby, segment_id=segment, speaker_id=speaker, text=text,
                        final=True, start=start, end=start + 1.0, model="tiny.en",
                        language="en", replaces=list(replaces))


def test_replaces_is_checked() -> None:
    ok = final("l1", "s2", "a", "hello there", "s1")
    assert p.decode(p.encode(ok))[0] == ok
    with pytest.raises(ProtocolError, match="only a final"):
        p.Transcript(lobby_id="l1", segment_id="s2", speaker_id="a", text="hel", final=False,
                     replaces=["s1"])
    with pytest.raises(ProtocolError, match="at most 8"):
        final("l1", "s9", "a", "x", *(f"s{i}" for i in range(9)))
    with pytest.raises(ProtocolError, match="its own segment"):
        final("l1", "s1", "a", "x", "s1")
    with pytest.raises(ProtocolError):  # each id is a segment id: 1..128 characters
        final("l1", "s2", "a", "x", "")


async def test_a_final_replaces_finals_of_its_speaker_and_bot_only(
        server: TestServer, clients: Clients) -> None:
    url = str(server.make_url("/"))
    bot, _ = await clients.new("Scribe", bot=True, provider_key=PROVIDER_KEY)
    other, _ = await clients.new("Other scribe", bot=True, provider_key=PROVIDER_KEY)
    alice, inbox = await clients.new("Alice")
    lobby = (await alice.join(lobby_name="pauses")).lobby.id
    await bot.join(lobby_id=lobby)
    await other.join(lobby_id=lobby)
    me = alice.session_id or ""
    await bot.request(final(lobby, "a-1", me, "When the meeting ends."), critical=True)
    await bot.request(final(lobby, "a-2", me, "When the meeting ends, please send the notes.",
                            "a-1", start=1795300000.0), critical=True)
    # another bot can't replace this bot's finals, nor a final another speaker's
    await other.request(final(lobby, "b-1", me, "Someone else's caption.", "a-2",
                              start=1795300002.0), critical=True)
    await bot.request(final(lobby, "a-3", bot.session_id or "", "The bot's own words.", "a-2",
                            start=1795300003.0), critical=True)
    live = await inbox.wait_for(p.Transcript, lambda m: m.segment_id == "a-2")
    assert live.replaces == ["a-1"] and live.final and live.bot_id == bot.session_id

    status, body = await api("GET", url + f"api/lobbies/{lobby}/transcript?format=json", None)
    assert status == 200
    assert [s["text"] for s in body["segments"]] == [
        "When the meeting ends, please send the notes.", "Someone else's caption.",
        "The bot's own words."]
    status, srt = await api_text(url + f"api/lobbies/{lobby}/transcript?format=srt")
    assert status == 200 and "When the meeting ends." not in srt and "please send" in srt
    # the history keeps every final as posted: a client applies `replaces` itself
    status, page = await api("GET", url + f"api/lobbies/{lobby}/messages?after=0", None)
    segments = [(m["segment_id"], m["replaces"]) for m in page["messages"]
                if m.get("segment_id")]
    assert segments == [("a-1", []), ("a-2", ["a-1"]), ("b-1", ["a-2"]), ("a-3", ["a-2"])]

    # an interim may not replace (refused, as raw JSON: the client's own types refuse to build
    # it); the connection and the lobby carry on
    async with aiohttp.ClientSession() as http:
        token = await new_token(http, server, {"bot": True}, {"X-Provider-Key": PROVIDER_KEY})
        ws = await raw_login(http, server, token)
        await raw_join(ws, "Raw scribe", lobby_id=lobby)
        reply = await raw_request(ws, {"type": "transcript", "id": "t1", "data": {
            "lobby_id": lobby, "segment_id": "r-2", "speaker_id": me, "text": "hm",
            "final": False, "replaces": ["r-1"]}})
        assert reply["type"] == "error" and reply["data"]["code"] == "invalid_payload", reply
        reply = await raw_request(ws, {"type": "transcript", "id": "t2", "data": {
            "lobby_id": lobby, "segment_id": "r-3", "speaker_id": me, "text": "Still here.",
            "final": True, "replaces": ["r-1"]}})
        assert reply["type"] == "ack", reply
        await ws.close()


async def test_the_page_shows_a_replacing_final_in_place_of_the_replaced(
        server: TestServer, clients: Clients) -> None:
    url = str(server.make_url("/"))
    bot, _ = await clients.new("Scribe", bot=True, provider_key=PROVIDER_KEY)
    async with chromium() as browser:
        page = await browser.new_page()
        await enter(page, url, "Ann")
        lobby = await create_lobby(page, "pauses")
        ann = next(m.session_id for m in (await bot.join(lobby_id=lobby)).participants
                   if m.name == "Ann")
        finals = page.locator("#messages .msg.transcript .text")
        await bot.request(final(lobby, "a-1", ann, "When the meeting ends."), critical=True)
        await expect(finals).to_have_text(["When the meeting ends."])
        await bot.request(final(lobby, "a-2", ann, "When the meeting ends, please send the "
                                "notes.", "a-1"), critical=True)
        await expect(finals).to_have_text(["When the meeting ends, please send the notes."])
        await page.reload()  # the history replayed: the same
        await expect(page.locator(".participant")).to_have_count(2, timeout=15000)
        await expect(finals).to_have_text(["When the meeting ends, please send the notes."])
