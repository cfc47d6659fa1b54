"""The call in real Chromium, as people use it: reloads, leaving mid-sentence, a second tab,
devices, mute and push-to-talk, the phone layout, accessibility, and the bot menus.

The fake microphones play espeak sentences in a loop; levels are what each page's WebAudio
analyser measures; captions come from the real transcriber over WebRTC.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Page, expect

from signaling.dispatch import DISPATCHER

from .browser import chromium, create_lobby, enter, max_level, participant
from .conftest import ROOT
from .speech import DATA

pytestmark = pytest.mark.backends("sqlite")  # the browser's side; the stores are tested elsewhere
SPEECH = DATA / "english_espeak.wav"
AXE = Path(os.environ.get("VOICEBOT_AXE", ROOT / ".ci" / "node" / "node_modules" / "axe-core" /
                          "axe.min.js"))


def continuous_speech(path: Path) -> Path:
    """The espeak sentences with the pauses between them cut to 0.2 s: someone who keeps
    talking, so that what a test measures after a reload is the product, not a pause."""
    import wave

    import numpy as np

    with wave.open(str(SPEECH)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    block = rate // 20
    loud = np.array([np.abs(x[i:i + block]).max() for i in range(0, len(x), block)])
    quiet = loud < loud.max() * 0.02
    keep, run = [], 0
    for i, q in enumerate(quiet):
        run = run + 1 if q else 0
        if run <= 4:  # at most 0.2 s of any pause
            keep.append(x[i * block:(i + 1) * block])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.concatenate(keep).tobytes())
    return path


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def add_transcriber(server: TestServer, page: Page, lobby: str) -> None:
    await wait_for(lambda: _true(server.app[DISPATCHER].providers), 60, "the provider")
    token = await page.evaluate("localStorage.getItem('voicebot.token')")
    async with aiohttp.ClientSession() as http:
        async with http.post(server.make_url(f"/api/lobbies/{lobby}/bots"),
                             headers={"Authorization": f"Bearer {token}"},
                             json={"kind": "transcriber"}) as r:
            assert r.status == 201, await r.text()
    await expect(page.locator(".bot .status")).to_have_text("live", timeout=60000)


async def _true(value: Any) -> bool:
    return bool(value)


async def my_id(page: Page) -> str:
    return str(await page.evaluate("voicebot.store.state.session.session_id"))


RECORDER = """(speaker) => {
  // every caption (interim or final) of one speaker this page shows: [page time, segment id]
  window.heard = [];
  voicebot.store.subscribe((s, prev) => {
    if (s.captions !== prev.captions)
      for (const c of Object.values(s.captions))
        if (c.speaker_id === speaker) window.heard.push([Date.now(), c.segment_id]);
    if (s.messages !== prev.messages)
      for (const m of s.messages.slice(prev.messages.length))
        if (m.speaker_id === speaker) window.heard.push([Date.now(), m.segment_id]);
  });
}"""


async def two_in_a_call(browser: Any, url: str, lobby_name: str,
                        viewport: dict[str, int] | None = None,
                        ben_browser: Any = None) -> tuple[Page, Page, str]:
    ann = await (await browser.new_context(viewport=viewport or {"width": 1100, "height": 800})
                 ).new_page()
    ben = await (await (ben_browser or browser).new_context(
        viewport={"width": 1100, "height": 800})).new_page()
    await enter(ann, url, "Ann")
    lobby = await create_lobby(ann, lobby_name)
    await enter(ben, f"{url}#lobby={lobby}", "Ben")
    for page, other in ((ann, "Ben"), (ben, "Ann")):
        await expect(participant(page, other)).to_have_attribute("data-peer", "connected",
                                                                 timeout=20000)
    return ann, ben, lobby


@pytest.mark.timeout(600)
async def test_reload_mid_call_brings_audio_and_captions_back(
        server: TestServer, provider_process: Any, tmp_path: Path) -> None:
    url = str(server.make_url("/"))
    provider_process(url, plugins=("transcriber",))
    # Ann talks on and on; Ben's microphone beeps (heard, but no speech to transcribe)
    async with chromium(fake_audio=continuous_speech(tmp_path / "talker.wav")) as browser, \
            chromium() as beeping:
        ann, ben, lobby = await two_in_a_call(browser, url, "reloads", ben_browser=beeping)
        await add_transcriber(server, ann, lobby)
        ann_id = await my_id(ann)
        await ben.evaluate(RECORDER, ann_id)
        await wait_for(lambda: ben.evaluate("window.heard.length > 0"), 30, "a first caption")
        delays = []
        for attempt in range(20):
            seen = set(s for _, s in await ben.evaluate("window.heard"))
            reloaded_at = await ben.evaluate("Date.now()")
            await ann.reload()

            async def captioned() -> bool:
                return any(seg not in seen and t > reloaded_at
                           for t, seg in await ben.evaluate("window.heard"))

            await wait_for(captioned, 15, f"a caption after reload {attempt}")
            first = min(t for t, seg in await ben.evaluate("window.heard")
                        if seg not in seen and t > reloaded_at)
            delays.append((first - reloaded_at) / 1000)
            print(f"reload {attempt}: captioned again after {delays[-1]:.2f} s", flush=True)
            # and the audio flows both ways again, on the same page, without a second reload
            await expect(participant(ann, "Ben")).to_have_attribute("data-peer", "connected",
                                                                    timeout=10000)
            assert await max_level(ann, "Ben", 2.0) > 0.01, attempt
            assert await max_level(ben, "Ann", 2.0) > 0.01, attempt
        assert max(delays) <= 3.0, delays
        print("captioned again after a reload, s:", sorted(round(d, 2) for d in delays))


async def test_a_speaker_who_goes_mid_sentence_leaves_no_caption_behind(
        server: TestServer, provider_process: Any) -> None:
    url = str(server.make_url("/"))
    provider_process(url, plugins=("transcriber",))
    async with chromium(fake_audio=SPEECH) as browser:
        ann, ben, lobby = await two_in_a_call(browser, url, "mid sentence")
        await add_transcriber(server, ben, lobby)
        ann_id = await my_id(ann)  # the same session all along: reload and rejoin resume it
        for how in ("reload", "leave", "close"):
            interim = ben.locator(f"#captions .caption[data-speaker='{ann_id}']")
            await expect(interim.first).to_be_visible(timeout=30000)  # Ann is mid-sentence
            shown = set(await ben.evaluate(
                "(id) => Object.values(voicebot.store.state.captions)"
                ".filter((c) => c.speaker_id === id).map((c) => c.segment_id)", ann_id))
            assert shown
            if how == "reload":
                await ann.reload()
            elif how == "leave":
                await ann.click("#leave")
            else:
                await ann.close()
            gone_at = time.monotonic()

            async def gone() -> bool:
                now = set(await ben.evaluate(
                    "() => Object.values(voicebot.store.state.captions).map((c) => c.segment_id)"))
                return not (shown & now)

            await wait_for(gone, 10, f"Ann's interim to go ({how})")
            assert time.monotonic() - gone_at <= 2.0, how
            if how == "leave":  # back in, for the next way of going
                await ann.get_by_role("button", name="Join mid sentence").click()
                await expect(participant(ben, "Ann")).to_have_attribute("data-peer", "connected",
                                                                        timeout=20000)


async def test_a_second_tab_takes_the_session_and_the_first_says_so(server: TestServer) -> None:
    url = str(server.make_url("/"))
    async with chromium() as browser:
        context = await browser.new_context()  # one profile: both tabs share the session
        first = await context.new_page()
        sockets = []
        context.on("page", lambda page: page.on("websocket", lambda ws: sockets.append(ws.url)))
        first.on("websocket", lambda ws: sockets.append(ws.url))
        await enter(first, url, "Tabby")
        lobby = await create_lobby(first, "tabs")
        second = await context.new_page()
        second.on("websocket", lambda ws: sockets.append(ws.url))
        await second.goto(f"{url}#lobby={lobby}")
        await expect(second.locator("#room")).to_be_visible(timeout=15000)
        await expect(first.locator("#replaced")).to_be_visible(timeout=10000)
        await expect(first.locator("#replaced")).to_contain_text("open in another tab")
        await expect(first.locator("#conn")).to_have_text("Open in another tab")
        started = time.monotonic()
        while time.monotonic() - started < 30:  # no tug of war: the sockets stay as they are
            assert len(sockets) <= 3, sockets
            await expect(second.locator("#conn")).to_have_text("Connected")
            await asyncio.sleep(1)
        assert len(sockets) <= 3, sockets
        # "Use it here" brings it back to the first tab; now the second one steps aside
        await first.click("#take-over")
        await expect(first.locator("#conn")).to_have_text("Connected", timeout=10000)
        await expect(first.locator("#room")).to_be_visible()
        await expect(second.locator("#replaced")).to_be_visible(timeout=10000)


async def test_the_landing_page_tests_the_microphone_and_lists_lobbies(
        server: TestServer) -> None:
    url = str(server.make_url("/"))
    async with chromium(fake_audio=SPEECH) as browser:
        host = await (await browser.new_context()).new_page()
        await enter(host, url, "Host")
        await create_lobby(host, "listed")
        page = await (await browser.new_context()).new_page()
        await page.goto(url)  # no name yet: the lobbies are listed all the same
        await expect(page.locator("#lobbies .lobby-name", has_text="listed")).to_be_visible(
            timeout=15000)
        await page.click("#mic-test")
        await wait_for(lambda: page.evaluate("document.getElementById('test-meter').value > 0.02"),
                       10, "the level meter to move")
        await expect(page.locator("#test-text")).to_have_text("We hear you.")
        labels = await page.locator("#welcome .input-select option").all_text_contents()
        assert "Fake Audio Input 1" in labels, labels
        await page.click("#mic-test")  # stops it
        await expect(page.locator("#mic-test")).to_have_text("Test microphone")
        # joining before a name asks for one
        await page.get_by_role("button", name="Join listed").click()
        await expect(page.locator("#notice")).to_contain_text("Pick a name first")


async def test_switching_microphone_mid_call_needs_no_new_offer(server: TestServer) -> None:
    url = str(server.make_url("/"))
    async with chromium(fake_audio=SPEECH) as browser:
        ann, ben, _ = await two_in_a_call(browser, url, "devices")
        offers = [await page.evaluate("voicebot.mesh.offers") for page in (ann, ben)]
        inputs = ann.locator(".side .input-select")
        labels = await inputs.locator("option").all_text_contents()
        assert "Fake Audio Input 2" in labels, labels
        await inputs.select_option(label="Fake Audio Input 2")
        await wait_for(lambda: ann.evaluate(
            "[...voicebot.mesh.peers.values()].every((e) => e.sender && e.sender.track && "
            "e.sender.track.label === 'Fake Audio Input 2')"), 10, "the new microphone")
        assert await max_level(ben, "Ann", 3.0) > 0.01  # Ben hears the new device
        assert [await page.evaluate("voicebot.mesh.offers") for page in (ann, ben)] == offers
        # the speaker picker: every peer's audio element plays on the chosen output
        outputs = ann.locator(".side .output-select")
        await outputs.select_option(label="Fake Audio Output 1")
        sinks = "[...voicebot.audio.nodes.values()].filter((n) => n.el).map((n) => n.el.sinkId)"
        await wait_for(lambda: ann.evaluate(f"{sinks}.every((id) => id && id !== 'default')"), 10,
                       "the speaker to change")
        assert len(set(await ann.evaluate(sinks))) == 1


async def test_mute_shortcut_and_push_to_talk_change_what_the_other_hears(
        server: TestServer) -> None:
    url = str(server.make_url("/"))
    async with chromium(fake_audio=SPEECH) as browser:
        ann, ben, _ = await two_in_a_call(browser, url, "push to talk")
        assert await max_level(ben, "Ann", 2.0) > 0.01
        await ann.locator("body").click(position={"x": 5, "y": 5})  # focus on the page, not a field
        await ann.keyboard.press("m")
        await expect(ann.locator("#mute")).to_have_attribute("aria-pressed", "true")
        await asyncio.sleep(0.5)  # what was in flight when the track went quiet
        assert await max_level(ben, "Ann", 2.0) < 0.003
        await ann.keyboard.down("Space")  # push to talk while muted
        await asyncio.sleep(0.3)
        assert await max_level(ben, "Ann", 2.0) > 0.01
        await ann.keyboard.up("Space")
        await asyncio.sleep(0.5)
        assert await max_level(ben, "Ann", 2.0) < 0.003
        await ann.keyboard.press("m")  # unmuted again
        await expect(ann.locator("#mute")).to_have_attribute("aria-pressed", "false")
        assert await max_level(ben, "Ann", 2.0) > 0.01
        # typing in the chat is typing: "m" there mutes nobody
        await ann.fill("#chat-input", "")
        await ann.type("#chat-input", "mmm ")
        await expect(ann.locator("#mute")).to_have_attribute("aria-pressed", "false")


async def test_on_a_phone_the_captions_are_on_the_first_screen(
        server: TestServer, provider_process: Any) -> None:
    url = str(server.make_url("/"))
    provider_process(url, plugins=("transcriber",))
    async with chromium(fake_audio=SPEECH) as browser:
        phone = {"width": 390, "height": 844}
        ann, ben, lobby = await two_in_a_call(browser, url, "phone", viewport=phone)
        await add_transcriber(server, ben, lobby)
        await expect(ann.locator("#captions .caption").first).to_be_visible(timeout=30000)
        scroll = await ann.evaluate("window.scrollY")
        box = await ann.locator("#captions").bounding_box()
        assert scroll == 0 and box is not None and box["y"] + box["height"] <= 844, (scroll, box)
        # captions off and on, and bigger, for the viewer
        await ann.uncheck("#captions-on")
        await expect(ann.locator("#captions")).to_be_hidden()
        await ann.check("#captions-on")
        await ann.select_option("#caption-size", "large")
        await expect(ann.locator("#captions")).to_have_attribute("data-size", "large")


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    if not AXE.exists():
        raise AssertionError(f"{AXE} is missing: bash .ci/run installs axe-core from npm")
    await page.add_script_tag(path=str(AXE))
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def test_no_serious_accessibility_violations(server: TestServer,
                                                   provider_process: Any) -> None:
    url = str(server.make_url("/"))
    provider_process(url, plugins=("transcriber",))
    async with chromium(fake_audio=SPEECH) as browser:
        page = await (await browser.new_context()).new_page()
        await page.goto(url)
        await expect(page.locator("#conn")).to_have_text("Connected", timeout=15000)
        assert await axe_violations(page) == [], "landing page"
        await enter(page, url, "Ada")
        lobby = await create_lobby(page, "accessible")
        assert await axe_violations(page) == [], "lobby"
        await add_transcriber(server, page, lobby)
        await expect(page.locator("#captions .caption").first).to_be_visible(timeout=30000)
        await expect(page.locator("#messages .msg.transcript").first).to_be_visible(timeout=30000)
        assert await axe_violations(page) == [], "lobby with captions"
        # a final is announced to screen readers; interims are not
        announced = await page.locator("#announcer").text_content()
        assert announced and announced.startswith("Ada: ")
        assert await page.locator("#captions[aria-live]").count() == 0


async def test_the_bot_menus_offer_only_what_the_models_can_do(
        server: TestServer, provider_process: Any) -> None:
    from bots.models import installed_names

    url = str(server.make_url("/"))
    provider_process(url, plugins=("transcriber",))
    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        await enter(page, url, "Menu")
        await create_lobby(page, "menus")
        await wait_for(lambda: _true(server.app[DISPATCHER].providers), 60, "the provider")
        await expect(page.locator("#bot-kind option")).to_have_count(1, timeout=15000)
        model = page.locator("select[name='model']")
        assert set(await model.locator("option").all_text_contents()) == set(installed_names())
        await model.select_option("tiny.en")
        languages = await page.locator("select[name='language'] option").all_text_contents()
        tasks = await page.locator("select[name='task'] option").all_text_contents()
        assert set(languages) <= {"en", "auto"} and tasks == ["transcribe"], (languages, tasks)
        if "base" in installed_names():
            await model.select_option("base")
            languages = await page.locator("select[name='language'] option").all_text_contents()
            tasks = await page.locator("select[name='task'] option").all_text_contents()
            assert "de" in languages and "translate" in tasks
            # what the menus offer is what the server accepts: German + translate on base
            await page.select_option("select[name='language']", "de")
            await page.select_option("select[name='task']", "translate")
            await page.click("#add-bot")
            await expect(page.locator(".bot .status")).to_have_text("live", timeout=60000)
            config = json.loads(await page.evaluate(
                "JSON.stringify(Object.values(voicebot.store.state.bots)[0].config)"))
            assert config["language"] == "de" and config["task"] == "translate"


async def test_a_list_setting_is_edited_in_the_bot_menu(
        server: TestServer, provider_process: Any) -> None:
    url = str(server.make_url("/"))
    provider_process(url, plugins=("keyword_alert",))  # examples/keyword-alert
    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()
        await enter(page, url, "Lister")
        await create_lobby(page, "lists")
        await expect(page.locator("#bot-kind option")).to_have_count(1, timeout=60000)
        keywords = page.locator("input[name='keywords']")
        await expect(keywords).to_have_value("banana")
        await keywords.fill("kiwi,  mango ,")
        await page.click("#add-bot")
        await expect(page.locator(".bot .status")).to_have_text("live", timeout=60000)
        config = json.loads(await page.evaluate(
            "JSON.stringify(Object.values(voicebot.store.state.bots)[0].config)"))
        assert config["keywords"] == ["kiwi", "mango"], config


async def test_a_listener_comes_back_without_autoplay_and_hears_after_one_click(
        server: TestServer, provider_process: Any) -> None:
    """A browser as people have it plays sound only after a click: a page loaded again
    mid-call has had none. It says so, and plays on the first click; a person whose microphone was
    refused listens, and can add one later."""
    url = str(server.make_url("/"))
    provider_process(url, plugins=("player",))
    async with chromium(autoplay=False, microphone=False) as browser:
        context = await browser.new_context()
        page = await context.new_page()
        await enter(page, url, "Lis")
        lobby = await create_lobby(page, "listeners")
        me = participant(page, "Lis")
        await expect(me).to_contain_text("listening", timeout=15000)
        await expect(page.locator("#mute")).to_have_text("Add microphone")
        await wait_for(lambda: _true(server.app[DISPATCHER].providers), 60, "the provider")
        await server.app[DISPATCHER].add(lobby, "player", {
            "path": str(DATA / "english_espeak.wav"), "loop": True, "delay": 0.0}, "Speaker")
        await expect(participant(page, "Speaker")).to_be_visible(timeout=30000)
        assert await max_level(page, "Speaker", 8.0) > 0.01  # joined by a click: it plays
        assert await page.locator("#hear").is_hidden()

        # the page loads again, and resumes the call (the session is in its storage). Chromium
        # may let a page play without a click where the person clicked on the site before in
        # this browser's run: a browser started anew (the storage carried over) has not
        state = await context.storage_state()
        await context.close()
        context = await browser.new_context(storage_state=state)
        page = await context.new_page()
        # nothing of the page is read until it has been refused: Playwright reads a page with
        # scripts that count as the person's gesture, and the page would be let play
        async with page.expect_console_message(lambda m: "refused to play" in m.text,
                                               timeout=60000):
            await page.goto(url + f"#lobby={lobby}")
        me = participant(page, "Lis")
        hear = page.locator("#hear")
        await expect(hear).to_be_visible(timeout=15000)  # play() was refused: it says so
        await expect(page.locator("#hear-button")).to_have_text("Click to hear the call")
        assert await max_level(page, "Speaker", 2.0) == 0.0
        await page.click("#hear-button")
        await expect(hear).to_be_hidden(timeout=5000)
        assert await max_level(page, "Speaker", 5.0) > 0.01
        await expect(me).to_contain_text("listening")
        # the person allows the microphone after all: it joins the call, nobody rejoins
        await context.grant_permissions(["microphone"], origin=url.rstrip("/"))
        await page.click("#mute")
        await expect(page.locator("#mute")).to_have_text("Mute", timeout=10000)
        await expect(me).not_to_contain_text("listening")
        assert await max_level(page, "Lis", 3.0) > 0.01  # its fake microphone beeps


async def mean_level(page: Page, name: str, seconds: float) -> float:
    """The mean level the page's meter showed for ``name`` over ``seconds``."""
    values = []
    for _ in range(int(seconds / 0.1)):
        values.append(float(await participant(page, name).get_attribute("data-level") or 0))
        await asyncio.sleep(0.1)
    return sum(values) / len(values)


async def test_the_sound_switches_change_what_the_other_hears_and_are_remembered(
        server: TestServer) -> None:
    url = str(server.make_url("/"))
    # speech in a fan's noise: noise suppression takes the noise out, which the other hears
    async with chromium(fake_audio=DATA / "english_noisy.wav") as browser:
        ann, ben, _ = await two_in_a_call(browser, url, "sound")
        offers = [await page.evaluate("voicebot.mesh.offers") for page in (ann, ben)]
        switches = ann.locator(".side .sound-switch")
        assert await switches.evaluate_all("els => els.map(e => e.checked)") == [True] * 3
        await ann.click(".side .sound-raw")  # music: all three off
        await expect(ann.locator(".side .sound-raw")).to_have_attribute("aria-pressed", "true")
        await asyncio.sleep(1.0)
        raw = await mean_level(ben, "Ann", 6.0)
        await ann.check(".side .sound-switch[name=noiseSuppression]")
        await asyncio.sleep(1.0)
        suppressed = await mean_level(ben, "Ann", 6.0)
        assert raw > 0.01 and suppressed < 0.85 * raw, (raw, suppressed)
        print(f"level Ben hears: raw {raw:.4f}, noise suppression {suppressed:.4f}")
        assert [await page.evaluate("voicebot.mesh.offers") for page in (ann, ben)] == offers
        await ann.reload()
        await expect(ann.locator("#room")).to_be_visible(timeout=15000)
        assert await ann.locator(".side .sound-switch").evaluate_all(
            "els => els.map(e => [e.name, e.checked])") == [
            ["echoCancellation", False], ["noiseSuppression", True], ["autoGainControl", False]]
        settings = await ann.evaluate(
            "JSON.stringify(voicebot.mesh.peers.values().next().value.sender.track.getSettings())")
        assert json.loads(settings)["noiseSuppression"] is True
