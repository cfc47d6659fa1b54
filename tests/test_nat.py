"""Real networks, simulated: two homes behind symmetric NATs (Linux namespaces, nftables), the
server, its transcriber and coturn on the "internet" side, Chromium in each home over HTTPS
with the server's self-signed certificate, told to trust exactly it.

With TURN the two people hear each other through coturn's relay and both are captioned;
without it — STUN only, so each learns its public address — they can't connect to each other
at all, the control that shows the NATs are real (the same homes behind cone NATs do connect
directly: bench.network), while both still reach the transcriber on the internet side. Every address is in
198.18.0.0/15 and exists only inside the namespaces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect

from .browser import create_lobby, enter, max_level, participant
from .conftest import PROVIDER_KEY
from .netsim import INTERNET_IP, URL, Deployment, Internet, home_page

pytestmark = pytest.mark.backends("sqlite")


def deploy(net: Internet, tmp: Path, *, turn: bool, stun: bool = False,
           policy: str = "all") -> Deployment:
    return Deployment(net, tmp, PROVIDER_KEY, turn=turn, stun=stun, policy=policy)


@pytest.fixture
def internet() -> Iterator[Internet]:
    net = Internet().build(2, symmetric=True)
    try:
        yield net
    finally:
        net.close()


SELECTED_PAIR = """async (peerId) => {
  const path = await voicebot.mesh.selectedPath(voicebot.mesh.peers.get(peerId).pc);
  return path && [path.local, path.remote];
}"""


async def ann_and_ben(home1: Any, home2: Any, lobby_name: str) -> tuple[Page, Page]:
    """Ann (in the first browser) makes a lobby, Ben (in the second) follows her link."""
    ann, ben = await home_page(home1), await home_page(home2)
    await enter(ann, URL, "Ann")
    lobby = await create_lobby(ann, lobby_name)
    await enter(ben, f"{URL}#lobby={lobby}", "Ben")
    return ann, ben


async def run_call(net: Internet, deployment: Deployment, tmp: Path,
                   expect_connected: bool) -> dict[str, Any]:
    async with deployment.browser(net.homes[0].ns) as home1, \
            deployment.browser(net.homes[1].ns) as home2:
        ann, ben = await ann_and_ben(home1, home2, "across the internet")
        result: dict[str, Any] = {}
        if not expect_connected:
            # ICE gives up on a pair it can't reach, and so does the page after a retry:
            # it says the connection failed, and what would make it work
            started = time.monotonic()
            for page, other in ((ann, "Ben"), (ben, "Ann")):
                await expect(participant(page, other)).to_have_attribute(
                    "data-peer", "failed", timeout=120000)
            print(f"failed after {time.monotonic() - started:.1f} s")
            result["states"] = [await participant(ann, "Ben").get_attribute("data-peer"),
                                await participant(ben, "Ann").get_attribute("data-peer")]
            result["help"] = await participant(ann, "Ben").get_by_role("link").get_attribute(
                "href")
            result["levels"] = [await max_level(ann, "Ben", 2.0), await max_level(ben, "Ann", 2.0)]
            # each home still reaches the internet side: the page got its microphone over
            # https:// at a non-local address, and the transcriber's connection is up
            result["mics"] = [await page.evaluate("voicebot.store.state.mic") for page in (ann, ben)]
            result["bot"] = [await participant(page, "Transcriber").get_attribute("data-peer")
                             for page in (ann, ben)]
            return result
        for page, other in ((ann, "Ben"), (ben, "Ann")):
            await expect(participant(page, other)).to_have_attribute("data-peer", "connected",
                                                                     timeout=30000)
        result["levels"] = [await max_level(ann, "Ben", 3.0), await max_level(ben, "Ann", 3.0)]
        ids = [await p.evaluate("voicebot.store.state.session.session_id") for p in (ann, ben)]
        result["pairs"] = [await ann.evaluate(SELECTED_PAIR, ids[1]),
                           await ben.evaluate(SELECTED_PAIR, ids[0])]
        result["words"] = [await participant(ann, "Ben").locator(".peer-state").inner_text(),
                           await participant(ben, "Ann").locator(".peer-state").inner_text()]
        # both are captioned by the transcriber on the internet side
        for page in (ann, ben):
            await expect(page.locator("#messages .msg.transcript").first).to_be_visible(
                timeout=90000)
        speakers = set(await ann.evaluate(
            "voicebot.store.state.messages.filter((m) => m.segment_id).map((m) => m.speaker_id)"))
        deadline = time.monotonic() + 90
        while not set(ids) <= speakers and time.monotonic() < deadline:
            await asyncio.sleep(1)
            speakers = set(await ann.evaluate(
                "voicebot.store.state.messages.filter((m) => m.segment_id)"
                ".map((m) => m.speaker_id)"))
        result["captioned"] = speakers
        result["ids"] = ids
        return result


@pytest.mark.timeout(400)
@pytest.mark.parametrize("policy", ["all", "relay"])
async def test_two_homes_behind_symmetric_nats_talk_through_turn(internet: Internet,
                                                                 tmp_path: Path,
                                                                 policy: str) -> None:
    """With TURN they hear each other through coturn's relay, and both are captioned. With
    policy "all" one side's relay candidate meets the other's own address (peer-reflexive:
    seen by the relay); with "relay" both sides send through the relay."""
    deployment = deploy(internet, tmp_path, turn=True, policy=policy)
    try:
        result = await run_call(internet, deployment, tmp_path, expect_connected=True)
    finally:
        deployment.close()
    assert min(result["levels"]) > 0.01, result
    if policy == "relay":
        assert result["pairs"] == [["relay", "relay"], ["relay", "relay"]], result
    else:
        assert all("relay" in pair for pair in result["pairs"]), result
    assert result["words"] == ["relayed", "relayed"], result
    assert set(result["ids"]) <= result["captioned"], result


@pytest.mark.timeout(300)
async def test_without_turn_the_two_homes_cannot_connect(internet: Internet,
                                                        tmp_path: Path) -> None:
    deployment = deploy(internet, tmp_path, turn=False, stun=True)
    try:
        result = await run_call(internet, deployment, tmp_path, expect_connected=False)
    finally:
        deployment.close()
    assert result["states"] == ["failed", "failed"], result
    assert result["help"] == "docs/deploy.md", result
    assert max(result["levels"]) < 0.003, result
    assert result["mics"] == ["on", "on"] and result["bot"] == ["connected", "connected"], result


RECOVERED = """([peerId]) => {
  // the connection to peerId was replaced, the new one is up, and its audio is heard
  const entry = voicebot.mesh.peers.get(peerId);
  return !!entry && entry !== window.beforeMove.get(peerId)
    && entry.pc.connectionState === "connected"
    && (voicebot.store.state.levels[peerId] || 0) > 0.01;
}"""


async def seconds_until(page: Page, script: str, arg: Any, timeout: float) -> float:
    started = time.monotonic()
    while not await page.evaluate(script, arg):
        assert time.monotonic() - started < timeout, await page.evaluate(
            "() => [...voicebot.mesh.peers].map(([id, e]) => [id, e.pc.connectionState])")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.timeout(400)
async def test_a_user_whose_address_changes_is_heard_again_within_seconds(
        internet: Internet, tmp_path: Path) -> None:
    """Ann's router gets another public address mid-call (Wi-Fi to mobile): every connection
    through the old one is gone, and nothing tells her page. Her page finds out, reconnects,
    and the calls are rebuilt: Ann and Ben hear each other again within 5 s, and Ann's
    captions resume — without a reload."""
    deployment = deploy(internet, tmp_path, turn=True)
    try:
        async with deployment.browser(internet.homes[0].ns) as home1, \
                deployment.browser(internet.homes[1].ns) as home2:
            ann, ben = await ann_and_ben(home1, home2, "on the move")
            for page, other in ((ann, "Ben"), (ben, "Ann"), (ann, "Transcriber")):
                await expect(participant(page, other)).to_have_attribute(
                    "data-peer", "connected", timeout=30000)
            ann_id, ben_id = [await p.evaluate("voicebot.store.state.session.session_id")
                              for p in (ann, ben)]
            await expect(ann.locator("#messages .msg.transcript").first).to_be_visible(
                timeout=90000)
            sockets = await ann.evaluate("voicebot.conn.sockets")
            for page in (ann, ben):
                await page.evaluate("window.beforeMove = new Map(voicebot.mesh.peers)")

            moved_at = time.time()
            internet.move(internet.homes[0])
            heard = await asyncio.gather(seconds_until(ann, RECOVERED, [ben_id], 30),
                                         seconds_until(ben, RECOVERED, [ann_id], 30))
            # her captions resume: a final of speech that began after the move
            await ann.wait_for_function(
                """([me, since]) => voicebot.store.state.messages.some(
                     (m) => m.segment_id && m.speaker_id === me && m.start > since)""",
                arg=[ann_id, moved_at], timeout=60000)
            reconnected = await ann.evaluate("voicebot.conn.sockets") - sockets
            path = await ben.evaluate("(id) => voicebot.store.state.peerPath[id]", ann_id)
    finally:
        deployment.close()
    print(f"heard again after {heard[0]:.2f} s (Ann) and {heard[1]:.2f} s (Ben)")
    assert reconnected >= 1  # her page found its socket dead and made a new one
    assert path is not None and "relay" in path.values(), path
    assert max(heard) < 5.0, heard


DESCRIPTIONS = """() => [...voicebot.mesh.peers.values()].flatMap(
  (e) => [e.pc.localDescription.sdp, e.pc.remoteDescription.sdp])"""


@pytest.mark.timeout(300)
async def test_with_nothing_configured_no_packet_leaves_the_test_network(tmp_path: Path) -> None:
    """No STUN or TURN configured: the browser's and the bot's descriptions carry host
    candidates only, the page's connections have no ICE server at all, and not one packet —
    from the browser (at home, behind its NAT), the server, the provider or the transcriber —
    is sent anywhere but loopback and 198.18.0.0/15, though the way out is open (a default
    route) and every packet that takes it is counted.

    Chromium's own background services (update checks, sign-in, autofill) look up Google's
    names whatever page it shows; it is told to resolve no name at all, so they stay in. Our
    page uses none (the server is an address), and that its connections name no server is
    checked directly."""
    net = Internet().build(1)
    try:
        net.watch_for_leaks()
        deployment = deploy(net, tmp_path, turn=False)
        no_names = f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {INTERNET_IP}"
        try:
            async with deployment.browser(net.homes[0].ns, no_names) as browser:
                page = await home_page(browser)
                await enter(page, URL, "Ann")
                await create_lobby(page, "no way out")
                await expect(participant(page, "Transcriber")).to_have_attribute(
                    "data-peer", "connected", timeout=30000)
                await expect(page.locator("#messages .msg.transcript").first).to_be_visible(
                    timeout=90000)
                await page.wait_for_function("""() => [...voicebot.mesh.peers.values()].every(
                    (e) => e.pc.iceGatheringState === "complete")""")
                descriptions = await page.evaluate(DESCRIPTIONS)
                servers = await page.evaluate("""() => [...voicebot.mesh.peers.values()]
                    .map((e) => e.pc.getConfiguration().iceServers)""")
        finally:
            deployment.close()
        leaked = net.leaked()
    finally:
        net.close()
    candidates = [line for sdp in descriptions for line in sdp.splitlines()
                  if line.startswith("a=candidate:")]
    assert len(descriptions) == 2 and all(" typ host" in c for c in candidates), candidates
    assert servers == [[]], servers
    home = net.homes[0].ip
    assert any(home in c for c in descriptions[0].splitlines() if "candidate" in c)  # ours
    assert any(INTERNET_IP in c for c in descriptions[1].splitlines() if "candidate" in c)
    assert leaked[0] == 0, leaked
