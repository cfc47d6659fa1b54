"""The automatic transcriber is never lost: a person who joins while no provider is connected
(right after start-up, or while a killed provider restarts) gets it once one connects."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from shared import protocol as p
from signaling.dispatch import DISPATCHER

from .conftest import Clients, start_server
from .helpers import api, wait_until




async def provider_connected_at(srv: Any, timeout: float = 60) -> float:
    """When the dispatcher first saw a provider (polled finely: this is the clock's start)."""
    await wait_until(lambda: srv.app[DISPATCHER].providers, timeout, "a provider", poll=0.02)
    return time.monotonic()


async def test_a_person_who_joins_before_any_provider_gets_the_transcriber(
        tmp_path: Path, backend: str, provider_process: Any) -> None:
    srv = await start_server(tmp_path / "data", auto_bots="transcriber")
    url = str(srv.make_url("/"))
    pool = Clients(url)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "api/ready") as r:
                assert r.status == 503 and (await r.json())["error"]["code"] == "unavailable"
            async with http.get(url + "api/health") as r:
                health = await r.json()
            assert health["ready"] is False and health["providers"] == 0
        # the server has just started: nobody offers transcribers yet
        early, inbox = await pool.new("Early")
        lobby = (await early.join(lobby_name="before the provider")).lobby.id
        pending = await inbox.wait_for(p.BotStatus, lambda m: m.status == "pending")
        assert pending.kind == "transcriber" and "waiting for a provider" in pending.detail
        status, body = await api("GET", url + f"api/lobbies/{lobby}/bots", None)
        assert [(b["kind"], b["status"]) for b in body["bots"]] == [("transcriber", "pending")]

        first = provider_process(url, name="first")
        since = await provider_connected_at(srv)
        await inbox.wait_for(p.BotStatus, lambda m: m.status == "live", timeout=30)
        assert time.monotonic() - since < 3.0, time.monotonic() - since
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "api/ready") as r:
                assert r.status == 200
            async with http.get(url + "api/health") as r:
                health = await r.json()
            assert health["ready"] and "transcriber" in health["bot_kinds"]

        # the provider is killed; a second person opens a new lobby before it is back
        first.kill()
        await wait_until(lambda: not srv.app[DISPATCHER].providers, 30, "the provider to go")
        late, late_inbox = await pool.new("Late")
        other = (await late.join(lobby_name="while it restarts")).lobby.id
        await late_inbox.wait_for(p.BotStatus, lambda m: m.status == "pending" and
                                  m.lobby_id == other)
        provider_process(url, name="second")
        since = await provider_connected_at(srv)
        await late_inbox.wait_for(p.BotStatus, lambda m: m.status == "live" and
                                  m.lobby_id == other, timeout=30)
        assert time.monotonic() - since < 3.0, time.monotonic() - since
        # one transcriber a lobby, each live again
        for lobby_id in (lobby, other):
            _, body = await api("GET", url + f"api/lobbies/{lobby_id}/bots", None)
            assert [b["kind"] for b in body["bots"]] == ["transcriber"], body
        await inbox.wait_for(p.BotStatus, lambda m: m.status == "live" and m.lobby_id == lobby and
                             inbox.messages.index(m) > inbox.messages.index(pending), timeout=30)
    finally:
        await pool.close()
        await srv.close()


async def test_ctrl_c_stops_voicebot_up_cleanly(tmp_path: Path) -> None:
    """Ctrl-C reaches the server and its provider at once (one process group) while a
    transcriber is live: both stop within seconds, exit 0, and log no error."""
    import os
    import signal
    import subprocess
    import sys

    from shared.client import SignalingClient
    from shared.config import ClientConfig
    from signaling.testing import free_port

    from .conftest import ROOT

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "signaling.cli", "up", "--port", str(port),
                                 "--data-dir", str(tmp_path / "data")], cwd=ROOT,
                                env=os.environ | {"VOICEBOT_PROVIDER_KEY": ""},
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                try:
                    async with http.get(url + "api/ready") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            deadline = time.monotonic() + 60
            while not await ready():
                assert time.monotonic() < deadline, log_path.read_text()[-2000:]
                await asyncio.sleep(0.2)
        client = SignalingClient(ClientConfig(url=url))
        inbox: list[p.Message] = []
        client.on(p.MessageType.BOT_STATUS, inbox.append)
        await client.start(wait=10)
        await client.set_name("Stayer")
        await client.join(lobby_name="until the end")
        await wait_until(lambda: any(isinstance(m, p.BotStatus) and m.status == "live"
                                     for m in inbox), 60, "the transcriber")
        os.killpg(proc.pid, signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 20)
        await client.close(drain=0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = log_path.read_text()
    assert code == 0, log[-3000:]
    for bad in ("ERROR", "Traceback", "Task was destroyed", "Unclosed"):
        assert bad not in log, log[-3000:]


async def test_each_lobby_has_its_own_transcriber_by_that_name(
        tmp_path: Path, backend: str, provider_process: Any) -> None:
    """Bot names are unique within a lobby, not across the server: no "Transcriber 2" in a
    lobby where it is the only one. And the page's icon and docs are there."""
    srv = await start_server(tmp_path / "data", auto_bots="echo")
    url = str(srv.make_url("/"))
    pool = Clients(url)
    try:
        provider_process(url, plugins=("echo",))
        await wait_until(lambda: srv.app[DISPATCHER].providers, 60, "the provider")
        names = []
        for person, lobby_name in (("First", "one"), ("Second", "two")):
            client, inbox = await pool.new(person)
            await client.join(lobby_name=lobby_name)
            state = await inbox.wait_for(p.LobbyState, lambda m: any(x.bot for x in m.participants),
                                         timeout=30)
            names += [x.name for x in state.participants if x.bot]
        assert names == ["Echo", "Echo"]
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "favicon.ico") as r:
                assert r.status == 200 and r.content_type == "image/svg+xml"
            # the docs the page links to ("failed: needs a TURN server"), and nothing else
            async with http.get(url + "docs/deploy.md") as r:
                assert r.status == 200 and "TURN with coturn" in await r.text()
            for path in ("docs/missing.md", "docs/..%2Fpyproject.toml", "docs/README"):
                async with http.get(url + path) as r:
                    assert r.status == 404, path
    finally:
        await pool.close()
        await srv.close()
