"""State survives a restart on the same data dir; expiry and the integrity check repair the rest."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from pathlib import Path

import pytest
import redis.asyncio

from shared import protocol as p
from shared.errors import ServerError
from signaling.hub import HUB
from signaling.records import LobbyRecord, SessionRecord

from .conftest import Clients, free_port, make_settings, start_server
from .helpers import api, wait_until



async def test_restart_keeps_sessions_names_lobbies_and_chat(tmp_path: Path, backend: str) -> None:
    port = free_port()
    srv = await start_server(tmp_path, port)
    pool = Clients(str(srv.make_url("/")))
    try:
        alice, _ = await pool.new("Alice", password="pw-alice")
        bob, bob_inbox = await pool.new("Bob")
        lobby = (await alice.join(lobby_name="Durable", password="door")).lobby.id
        await bob.join(lobby_id=lobby, password="door")
        await alice.chat(lobby, "before the restart")
        token = alice.config.token

        await srv.close()
        srv = await start_server(tmp_path, port)
        # both clients come back on their own, with their sessions and in their lobby
        await alice.wait_connected(10)
        await bob.wait_connected(10)
        assert alice.config.token == token and alice.stats.sessions_created == 1
        hub = srv.app[HUB]
        assert hub.picture.sessions[alice.session_id].record.name == "Alice"
        assert hub.picture.lobbies[lobby].members == {alice.session_id, bob.session_id}
        assert hub.picture.claims["alice"].session_id == alice.session_id
        await bob_inbox.wait_for(p.LobbyState, lambda m: m.lobby.id == lobby and
                                 all(x.connected for x in m.participants) and
                                 len(m.participants) == 2)
        await alice.chat(lobby, "after the restart")

        # a brand-new client sees the whole history; the name is still protected
        carol, carol_inbox = await pool.new("Carol")
        await carol.join(lobby_id=lobby, password="door")
        await carol_inbox.wait_for(p.Chat, text="before the restart")
        await carol_inbox.wait_for(p.Chat, text="after the restart")
        with pytest.raises(ServerError) as err:
            await carol.set_name("alice")
        assert err.value.code == "name_protected"
    finally:
        await pool.close()
        await srv.close()


async def test_grace_period_then_removal(tmp_path: Path, backend: str) -> None:
    srv = await start_server(tmp_path, grace=0.5)
    pool = Clients(str(srv.make_url("/")))
    try:
        stay, inbox = await pool.new("Stay")
        leave, _ = await pool.new("Leave")
        lobby = (await stay.join(lobby_name="grace")).lobby.id
        await leave.join(lobby_id=lobby)
        await leave.close()
        # first marked disconnected, then removed once the grace period is over
        await inbox.wait_for(p.LobbyState, lambda m: any(not x.connected for x in m.participants))
        removed = await inbox.wait_for(p.PeerRemoved)
        assert removed.peer_id == leave.session_id
        # the name of a session past its grace period is free again
        again, _ = await pool.new("leave")
        assert again.session is not None and again.session.name == "leave"
    finally:
        await pool.close()
        await srv.close()


async def test_stale_sessions_and_empty_lobbies_expire(tmp_path: Path, backend: str) -> None:
    srv = await start_server(tmp_path, grace=0.2, session_ttl=0.6, lobby_ttl=0.6)
    pool = Clients(str(srv.make_url("/")))
    try:
        gone, _ = await pool.new("Gone")
        lobby = (await gone.join(lobby_name="short lived")).lobby.id
        sid = gone.session_id
        await gone.close()
        hub = srv.app[HUB]
        await wait_until(lambda: sid not in hub.picture.sessions
                         and lobby not in hub.picture.lobbies, 5,
                         "the session and its lobby to expire")
        status, _ = await api("GET", str(srv.make_url("/ws")) + f"?token={gone.config.token}",
                              None)
        assert status == 401
    finally:
        await pool.close()
        await srv.close()
    if backend == "sqlite":
        db = sqlite3.connect(tmp_path / "voicebot.sqlite3")
        assert db.execute("SELECT count(*) FROM sessions WHERE id=?", (sid,)).fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM chat WHERE lobby_id=?", (lobby,)).fetchone()[0] == 0
    else:
        st = make_settings(tmp_path)
        r = redis.asyncio.Redis.from_url(st.redis_url or "")
        assert not await r.hexists(f"{st.redis_prefix}:sessions", sid)
        assert not await r.exists(f"{st.redis_prefix}:chat:{lobby}")
        await r.aclose()


async def test_integrity_check_repairs_a_corrupt_store(tmp_path: Path, backend: str) -> None:
    srv = await start_server(tmp_path)
    await srv.close()
    now = time.time()
    # two sessions holding one name (e.g. a crash between two writes), and an orphan member
    if backend == "sqlite":
        db = sqlite3.connect(tmp_path / "voicebot.sqlite3")
        with db:
            db.execute("INSERT INTO sessions VALUES ('s1','h1','Twin','twin',0,?,?)", (now - 10, now))
            db.execute("INSERT INTO sessions VALUES ('s2','h2','TWIN','twin',0,?,?)", (now - 5, now))
            db.execute("INSERT INTO members VALUES ('no-such-lobby','s1',?)", (now,))
        db.close()
    else:
        st = make_settings(tmp_path)
        r = redis.asyncio.Redis.from_url(st.redis_url or "")
        for sid, name, created in (("s1", "Twin", now - 10), ("s2", "TWIN", now - 5)):
            rec = SessionRecord(sid, "h" + sid, name, "twin", False, created, now)
            await r.hset(f"{st.redis_prefix}:sessions", sid, json.dumps(dataclasses.asdict(rec)))
        await r.hset(f"{st.redis_prefix}:lobbies", "gone", json.dumps(dataclasses.asdict(
            LobbyRecord("gone", "Gone", "gone"))))
        await r.sadd(f"{st.redis_prefix}:members:gone", "no-such-session")
        await r.aclose()
    srv = await start_server(tmp_path)
    try:
        hub = srv.app[HUB]
        assert hub.picture.sessions["s1"].record.name == "Twin"  # the older holder keeps it
        assert hub.picture.sessions["s2"].record.name is None
        assert await hub.check_integrity() == []  # repaired for good
    finally:
        await srv.close()
    if backend == "sqlite":
        db = sqlite3.connect(tmp_path / "voicebot.sqlite3")
        assert db.execute("SELECT name FROM sessions WHERE id='s2'").fetchone() == (None,)
        assert db.execute("SELECT count(*) FROM members").fetchone() == (0,)
    else:
        r = redis.asyncio.Redis.from_url(st.redis_url or "")
        s2 = json.loads(await r.hget(f"{st.redis_prefix}:sessions", "s2") or "{}")
        assert s2["name"] is None
        assert await r.smembers(f"{st.redis_prefix}:members:gone") == set()
        await r.aclose()


async def test_base_path(tmp_path: Path, backend: str) -> None:
    srv = await start_server(tmp_path, base_path="ai-voicebot")  # type: ignore[arg-type]
    pool = Clients(str(srv.make_url("/ai-voicebot/")))
    try:
        client, _ = await pool.new("Proxied")
        assert (await client.join(lobby_name="behind nginx")).lobby.name == "behind nginx"
        status, health = await api("GET", str(srv.make_url("/ai-voicebot/api/health")), None)
        assert status == 200 and health["status"] == "ok"
        assert (await api("GET", str(srv.make_url("/api/health")), None))[0] == 404
    finally:
        await pool.close()
        await srv.close()
