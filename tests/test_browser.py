"""The browser client in real Chromium: join, talk, chat, captions, safety, reconnection."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestServer
from playwright.async_api import expect

from .browser import chromium, create_lobby, enter, max_level, participant, send_chat

# the README's screenshots are refreshed on request (VOICEBOT_SCREENSHOTS=1); otherwise they go
# to a scratch folder, so a test run leaves the checkout as it was
DOCS = Path(__file__).resolve().parent.parent / "docs" if os.environ.get("VOICEBOT_SCREENSHOTS") \
    else Path(tempfile.mkdtemp(prefix="voicebot-screenshots-"))


async def test_two_pages_talk_and_chat(server: TestServer) -> None:
    url = str(server.make_url("/"))
    async with chromium() as browser:
        ann = await (await browser.new_context(viewport={"width": 1100, "height": 800})).new_page()
        ben = await (await browser.new_context(viewport={"width": 390, "height": 844})).new_page()
        await enter(ann, url, "Ann")
        DOCS.mkdir(exist_ok=True)
        await ann.screenshot(path=str(DOCS / "screenshot-welcome.png"))
        lobby = await create_lobby(ann, "Standup")
        await enter(ben, f"{url}#lobby={lobby}", "Ben")  # the shared link joins after the name
        for page in (ann, ben):
            await expect(page.locator(".participant")).to_have_count(2, timeout=15000)
        await send_chat(ann, "hi Ben")
        await expect(ben.locator("#messages .msg .text", has_text="hi Ben")).to_be_visible()
        await send_chat(ben, "hi Ann")
        await expect(ann.locator("#messages .msg .text", has_text="hi Ann")).to_be_visible()
        # each hears the other: the fake microphone's beeps, measured with WebAudio in the page
        for page, other in ((ann, "Ben"), (ben, "Ann")):
            await expect(participant(page, other)).to_have_attribute("data-peer", "connected",
                                                                     timeout=20000)
            assert await max_level(page, other, 3.0) > 0.01
        await ann.screenshot(path=str(DOCS / "screenshot-lobby.png"))
        await ben.evaluate("window.scrollTo(0, 0)")
        await ben.screenshot(path=str(DOCS / "screenshot-phone.png"))
        await ann.click("#leave")
        await expect(ben.locator(".participant")).to_have_count(1, timeout=15000)


async def test_user_text_is_shown_as_text(server: TestServer) -> None:
    url = str(server.make_url("/"))
    evil = "<img src=x onerror=alert(1)>"
    async with chromium() as browser:
        page = await browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
        await page.goto(url)
        await expect(page.locator("#conn")).to_have_text("Connected", timeout=15000)
        await page.fill("#name", evil)  # refused by the server, and the refusal is text too
        await page.click("#name-form button")
        await expect(page.locator("#notice")).to_contain_text("may hold letters")
        await enter(page, url, "Eve")
        await create_lobby(page, "xss test")
        await send_chat(page, evil)
        await expect(page.locator("#messages .msg .text", has_text=evil)).to_have_text(evil)
        assert await page.locator("#messages img").count() == 0
        await asyncio.sleep(0.5)
        assert dialogs == []


async def test_reconnects_after_a_server_restart(server_process: Any) -> None:
    srv = server_process()
    srv.start()
    async with chromium() as browser:
        page = await browser.new_page()
        await enter(page, srv.url, "Rita")
        await create_lobby(page, "resilient")
        await send_chat(page, "before the restart")
        await expect(page.locator("#messages .msg .text", has_text="before")).to_be_visible()
        srv.kill()
        await expect(page.locator("#conn")).to_have_text("Reconnecting…", timeout=10000)
        srv.start()
        await expect(page.locator("#conn")).to_have_text("Connected", timeout=15000)
        await expect(page.locator("#room")).to_be_visible()
        await expect(page.locator(".participant")).to_have_count(1)
        await send_chat(page, "after the restart")
        await expect(page.locator("#messages .msg .text", has_text="after")).to_be_visible()
        await page.reload()  # a fresh page load resumes the session and its lobby too
        await expect(page.locator("#room")).to_be_visible(timeout=15000)
        await expect(page.locator("#messages .msg .text", has_text="before")).to_be_visible()


async def test_captions_of_my_own_speech(server: TestServer, provider_process: Any) -> None:
    from signaling.dispatch import DISPATCHER

    from .speech import DATA, reference, wer
    from .helpers import wait_until

    url = str(server.make_url("/"))
    provider_process(url, plugins=("transcriber",))
    await wait_until(lambda: server.app[DISPATCHER].providers, 30, "the provider")
    async with chromium(fake_audio=DATA / "short.wav") as browser:  # the microphone loops it
        page = await (await browser.new_context(viewport={"width": 1100, "height": 800})).new_page()
        await enter(page, url, "Ann")
        await create_lobby(page, "captions")
        await expect(page.locator("#bot-kind option")).to_have_count(1, timeout=15000)
        await page.click("#add-bot")
        await expect(page.locator(".bot .status")).to_have_text("live", timeout=60000)
        # the fake microphone loops the file from the moment the page opened it, so the
        # transcriber may come in mid-sentence: the first final can be the end of one, and a
        # final posted at the comma's pause is replaced by the whole sentence
        finals = page.locator("#messages .msg.transcript")
        await expect(finals.first).to_be_visible(timeout=60000)
        deadline, texts = time.monotonic() + 60, []
        while not any(wer(reference("short.wav"), t) <= 0.25 for t in texts):
            assert time.monotonic() < deadline, f"no final matches the speech: {texts}"
            await asyncio.sleep(0.2)
            texts = await finals.locator(".text").all_text_contents()
        assert set(await finals.locator(".who").all_text_contents()) == {"Ann"}
        await expect(page.locator("#captions .caption").first).to_be_visible(timeout=20000)
        await page.screenshot(path=str(DOCS / "screenshot-captions.png"))
