"""Fault injection: a full disk, a read-only data dir, clients that vanish without a goodbye."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from shared import protocol as p
from shared.errors import ServerError
from signaling.hub import HUB
from signaling.testing import ROOT

from .conftest import Clients, free_port, make_settings, start_server
from .helpers import api, through_proxy



async def test_full_disk_refuses_writes_cleanly_and_loses_nothing(tmp_path: Path, backend: str) -> None:
    """SQLite at its size cap, or Redis at its ``maxmemory``: the same clean refusal."""
    rates = {"chat_rate": 1000.0, "chat_burst": 1000.0, "msg_rate": 1000.0, "msg_burst": 1000.0}
    if backend == "sqlite":
        srv = await start_server(tmp_path, max_db_mb=1, **rates)
    else:
        srv = await start_server(tmp_path, **rates)
        redis_full = redis.asyncio.Redis.from_url(make_settings(tmp_path).redis_url or "")
        used = (await redis_full.info("memory"))["used_memory"]
        await redis_full.config_set("maxmemory", used + 1024 * 1024)
    try:
        lobby, acknowledged = await _fill_up(srv, tmp_path, backend)
    finally:
        if backend == "redis":
            await redis_full.config_set("maxmemory", 0)
            await redis_full.aclose()
    # with room again, the same data dir works and still holds every message
    srv = await start_server(tmp_path)
    pool = Clients(str(srv.make_url("/")))
    try:
        writer, inbox = await pool.new("Writer 2")
        await writer.join(lobby_id=lobby)
        assert isinstance(await writer.chat(lobby, "room again"), int)
        await inbox.wait_for(p.Chat, text=acknowledged[-1])
    finally:
        await pool.close()
        await srv.close()


async def _fill_up(srv: Any, tmp_path: Path, backend: str) -> tuple[str, list[str]]:
    pool = Clients(str(srv.make_url("/")))
    acknowledged: list[str] = []
    try:
        writer, _ = await pool.new("Writer")
        reader, reader_inbox = await pool.new("Reader")
        lobby = (await writer.join(lobby_name="full disk")).lobby.id
        await reader.join(lobby_id=lobby)
        error = None
        for i in range(2000):
            text = f"{i:05d} " + "x" * 1900
            try:
                await writer.chat(lobby, text)
                acknowledged.append(text)
            except ServerError as exc:
                error = exc
                break
        assert error is not None and error.code == "unavailable", "the disk never filled"
        assert len(acknowledged) > 50
        # the server, the sockets and reads carry on
        assert writer.connected and reader.connected
        await writer.request(p.Ping())
        await reader_inbox.wait_for(p.Chat, text=acknowledged[-1])
    finally:
        await pool.close()
        await srv.close()
    if backend == "sqlite":
        db = sqlite3.connect(tmp_path / "voicebot.sqlite3")
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = [t for (t,) in db.execute("SELECT text FROM chat ORDER BY id")]
        db.close()
    else:
        st = make_settings(tmp_path)
        r = redis.asyncio.Redis.from_url(st.redis_url or "")
        stored = [json.loads(m)["text"] for m in
                  await r.zrange(f"{st.redis_prefix}:chat:{lobby}", 0, -1)]
        await r.aclose()
    assert stored == acknowledged  # everything acknowledged, nothing else
    return lobby, acknowledged


@pytest.mark.backends("sqlite")  # on Redis: test_cluster.py's unreachable-Redis test
def test_read_only_data_dir_is_a_clear_error(tmp_path: Path, backend: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    # root ignores permission bits, so make the directory immutable instead
    subprocess.run(["chattr", "+i", str(data)], check=True)
    try:
        out = subprocess.run([sys.executable, "-m", "signaling.cli", "serve", "--data-dir",
                              str(data), "--port", str(free_port())], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["chattr", "-i", str(data)], check=True)
    assert out.returncode == 2
    assert "cannot start" in out.stderr and "voicebot.sqlite3" in out.stderr
    assert "Traceback" not in out.stderr


async def test_vanished_client_is_cleaned_up_after_the_grace_period(tmp_path: Path,
                                                                   backend: str) -> None:
    srv = await start_server(tmp_path, heartbeat=0.5, grace=1.0)
    try:
        async with through_proxy(srv) as (proxy, pool, ghost_pool):
            stay, inbox = await pool.new("Stay")
            ghost, _ = await ghost_pool.new("Ghost", receive_timeout=60, heartbeat=60,
                                            backoff_initial=5.0)
            lobby = (await stay.join(lobby_name="ghosts")).lobby.id
            await ghost.join(lobby_id=lobby)
            proxy.frozen = True  # the ghost's network is gone: no FIN, no close frame
            away = await inbox.wait_for(p.LobbyState, lambda m: any(
                x.session_id == ghost.session_id and not x.connected for x in m.participants),
                timeout=10)
            assert away is not None
            removed = await inbox.wait_for(p.PeerRemoved, peer_id=ghost.session_id, timeout=10)
            assert removed.lobby_id == lobby
            assert srv.app[HUB].picture.lobbies[lobby].members == {stay.session_id}
    finally:
        await srv.close()


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
async def test_server_restart_mid_lobby_keeps_acknowledged_transcripts(
        server_process: Any, signal_name: str) -> None:
    """Finals a bot had acknowledged survive a crash (SIGKILL) as well as a clean stop."""
    import signal

    from shared.client import SignalingClient
    from shared.config import ClientConfig

    from .conftest import PROVIDER_KEY

    srv = server_process(VOICEBOT_PROVIDER_KEY=PROVIDER_KEY)
    srv.start()
    bot = SignalingClient(ClientConfig(url=srv.url, bot=True, provider_key=PROVIDER_KEY,
                                       backoff_initial=0.05, backoff_max=0.3,
                                       breaker_threshold=50))
    await bot.start(wait=10)
    await bot.set_name("Scribe")
    lobby = (await bot.join(lobby_name="crash")).lobby.id
    acked = []
    for i in range(10):
        await bot.request(p.Transcript(lobby_id=lobby, segment_id=f"s{i}", speaker_id=bot.session_id or "",
                                       text=f"final number {i}", final=True), critical=True)
        acked.append(f"final number {i}")
    assert srv.proc is not None
    srv.proc.send_signal(getattr(signal, signal_name))
    srv.proc.wait(10)
    srv.start()
    await bot.wait_connected(10)
    segments = (await api("GET", srv.url + f"api/lobbies/{lobby}/transcript?format=json",
                          None))[1]["segments"]
    assert [s["text"] for s in segments] == acked
    await bot.close()
