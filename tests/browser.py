"""Playwright with Debian's Chromium: the browser the tests drive."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from typing import Any

from playwright.async_api import Browser, Page, async_playwright, expect

CHROMIUM = os.environ.get("VOICEBOT_CHROMIUM", "/usr/bin/chromium")
# the fake microphone is granted without a prompt (GRANT), and sound plays without a click
# (AUTOPLAY) unless a test asks for a browser as people have it
GRANT = "--use-fake-ui-for-media-stream"
AUTOPLAY = "--autoplay-policy=no-user-gesture-required"
FLAGS = ["--use-fake-device-for-media-stream", "--no-sandbox", "--disable-gpu",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         # loopback tests: real host candidates instead of mDNS names aiortc would have to resolve
         "--disable-features=WebRtcHideLocalIpsWithMdns"]


@asynccontextmanager
async def chromium(fake_audio: Path | None = None, *, executable: Path | None = None,
                   extra_args: tuple[str, ...] = (), autoplay: bool = True,
                   microphone: bool = True) -> AsyncIterator[Browser]:
    """Headless Chromium whose fake microphone beeps, or plays ``fake_audio`` (a WAV).
    ``executable``: a wrapper that starts it elsewhere (inside a network namespace).
    ``autoplay=False``: the default autoplay policy (sound only after a click or key press);
    ``microphone=False``: a request for the microphone is refused."""
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    args = [*FLAGS, *([AUTOPLAY] if autoplay else []), *([GRANT] if microphone else []),
            *extra_args]
    if fake_audio is not None:
        args.append(f"--use-file-for-fake-audio-capture={fake_audio}")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=executable or CHROMIUM,
                                           headless=True, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def enter(page: Page, url: str, name: str) -> None:
    await page.goto(url)
    await expect(page.locator("#conn")).to_have_text("Connected", timeout=15000)
    await page.fill("#name", name)
    await page.click("#name-form button")
    await expect(page.locator("#me")).to_have_text(f"You are {name}", timeout=10000)


async def create_lobby(page: Page, name: str) -> str:
    await page.fill("#new-lobby", name)
    await page.click("#create-form button")
    await expect(page.locator("#room")).to_be_visible(timeout=15000)
    return (await page.evaluate("location.hash")).split("=", 1)[1]


async def send_chat(page: Page, text: str) -> None:
    await page.fill("#chat-input", text)
    await page.click("#chat-form button")


def participant(page: Page, name: str) -> Any:
    return page.locator(".participant", has=page.locator(".pname", has_text=name))


async def max_level(page: Page, name: str, seconds: float) -> float:
    """The loudest level the page's WebAudio analyser showed for ``name`` over ``seconds``."""
    loudest = 0.0
    for _ in range(int(seconds / 0.1)):
        value = await participant(page, name).get_attribute("data-level")
        loudest = max(loudest, float(value or 0))
        await asyncio.sleep(0.1)
    return loudest
