"""Joining a lobby across a simulated internet: how long until people hear each other, and
until the newcomer's first caption — direct and relayed.

Two homes (Linux network namespaces behind nftables NATs, tests/netsim.py) and, on the
internet side, the server (HTTPS), the transcriber's provider and coturn. Ann waits in a lobby
with the transcriber; Ben, in the other home, clicks "Join" in the lobby list, and the clock
starts with that click (in his page, ``Date.now()``: one clock for both pages). Then:

- **Ben hears Ann** / **Ann hears Ben**: the first moment the listener's page measures the
  other's voice (audio level over 0.01) — negotiation, ICE, DTLS, the first audio;
- **first interim** / **first caption**: a transcript of Ben's speech arrives in his page.
  Ben's microphone is a looping recording, so this includes waiting for his sentence to end
  (as it would for a person talking when they join).

Ben leaves and joins again ``--joins`` times. Modes:

- ``direct``: NATs that keep one public port per inside port (``masquerade persistent``) and
  STUN: ICE punches through, no relay;
- ``relayed``: symmetric NATs (``masquerade random``) and TURN: only coturn's relay works;
- ``baseline``: both people in one home, no NAT between them (host candidates) — the same run's
  reference for what the network costs.

Needs root (namespaces), chromium, coturn and nftables. Prints medians and extremes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

from tests.browser import create_lobby, enter, participant
from tests.netsim import URL, Deployment, Internet, home_page

PROVIDER_KEY = "bench-provider-key"
MODES = {"baseline": {"homes": 1, "symmetric": True, "turn": False, "stun": False},
         "direct": {"homes": 2, "symmetric": False, "turn": False, "stun": True},
         "relayed": {"homes": 2, "symmetric": True, "turn": True, "stun": False}}

# resolves, in the listener's page, with the time (Date.now()) it first hears ``peerId``
HEARS = """([peerId]) => (voicebot.store.state.levels[peerId] || 0) > 0.01 && Date.now()"""
INTERIM = """([me, since]) => Object.values(voicebot.store.state.captions).some(
    (c) => c.speaker_id === me && c.at >= since) && Date.now()"""
FINAL = """([me, after]) => voicebot.store.state.messages.some(
    (m) => m.segment_id && m.speaker_id === me && m.message_id > after) && Date.now()"""


async def stamp(page: Any, script: str, arg: list[Any], timeout: float = 60) -> float:
    try:
        handle = await page.wait_for_function(script, arg=arg, polling=20,
                                              timeout=timeout * 1000)
    except Exception as exc:
        states = await page.evaluate("JSON.stringify([voicebot.store.state.peerState, "
                                     "voicebot.store.state.peerPath])")
        raise RuntimeError(f"never: {script[:60]!r} (the page's peers: {states})") from exc
    return float(await handle.json_value())


async def run_mode(mode: str, joins: int, tmp: Path) -> dict[str, list[float]]:
    shape = MODES[mode]
    net = Internet().build(int(shape["homes"]), symmetric=bool(shape["symmetric"]))
    figures: dict[str, list[float]] = {"Ben hears Ann": [], "Ann hears Ben": [],
                                       "first interim": [], "first caption": []}
    paths: set[str] = set()
    try:
        deployment = Deployment(net, tmp, PROVIDER_KEY, turn=bool(shape["turn"]),
                                stun=bool(shape["stun"]))
        try:
            async with deployment.browser(net.homes[0].ns) as one, \
                    deployment.browser(net.homes[-1].ns) as two:
                ann, ben = await home_page(one), await home_page(two)
                await enter(ann, URL, "Ann")
                await create_lobby(ann, "bench")
                await participant(ann, "Transcriber").and_(
                    ann.locator('[data-peer="connected"]')).wait_for(timeout=60000)
                await enter(ben, URL, "Ben")
                ann_id, ben_id = [await p.evaluate("voicebot.store.state.session.session_id")
                                  for p in (ann, ben)]
                for _ in range(joins):
                    # Ann stays: every message so far is in her page (Ben's history isn't news)
                    last = await ann.evaluate("Math.max(0, ...voicebot.store.state.messages"
                                              ".map((m) => m.message_id))")
                    button = ben.get_by_role("button", name="Join bench")
                    await button.wait_for(timeout=30000)
                    await ben.evaluate("""document.addEventListener("click",
                        () => { window.clicked = Date.now(); }, {capture: true, once: true})""")
                    await button.click()
                    clicked = float(await ben.evaluate("window.clicked"))
                    heard = await asyncio.gather(stamp(ben, HEARS, [ann_id]),
                                                 stamp(ann, HEARS, [ben_id]),
                                                 stamp(ben, INTERIM, [ben_id, clicked]),
                                                 stamp(ben, FINAL, [ben_id, last]))
                    for name, at in zip(figures, heard):
                        figures[name].append((at - clicked) / 1000)
                    paths.add(await participant(ben, "Ann").locator(".peer-state").inner_text())
                    await ben.click("#leave")
                    await ben.locator("#room").wait_for(state="hidden", timeout=15000)
                    await asyncio.sleep(1)
        finally:
            deployment.close()
    finally:
        net.close()
    print(f"{mode}: the page said {', '.join(sorted(paths))}")
    return figures


def report(results: dict[str, dict[str, list[float]]]) -> None:
    print("\n== from clicking Join to … (seconds: median [min–max])")
    names = list(next(iter(results.values())))
    print(f"{'':10}" + "".join(f"{name:>26}" for name in names))
    for mode, figures in results.items():
        cells = []
        for name in names:
            values = figures[name]
            cells.append(f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]")
        print(f"{mode:10}" + "".join(f"{cell:>26}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=5, help="joins per mode")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--smoke", action="store_true", help="one join, relayed only")
    opts = parser.parse_args()
    if opts.smoke:
        opts.joins, opts.modes = 1, ["relayed"]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-network-") as tmp:
        for mode in opts.modes:
            directory = Path(tmp) / mode
            directory.mkdir()
            results[mode] = asyncio.run(run_mode(mode, opts.joins, directory))
    report(results)


if __name__ == "__main__":
    main()
