"""Abuse limits, slow consumers, the admin API, the origin check, metrics and the OpenAPI doc."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from shared import protocol as p
from shared.errors import ServerError
from signaling.app import OPENAPI, create_app
from signaling.hub import HUB

from .conftest import Clients, make_settings, start_server
from .helpers import api, new_token, raw_login, through_proxy, wait_until

ADMIN = "admin-secret-token"



@pytest.fixture
async def limited(tmp_path: Path, backend: str) -> Any:
    srv = await start_server(tmp_path / "data", msg_rate=5.0, msg_burst=10.0, chat_rate=1.0, chat_burst=3.0,
                      create_rate=0.01, create_burst=2.0, error_rate=0.01, error_burst=5.0,
                      ip_session_rate=0.01, ip_session_burst=8.0, max_connections=3,
                      admin_token=ADMIN, send_queue=16)
    yield srv
    await srv.close()


async def replies(ws: Any, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for f in frames:
        await ws.send_str(json.dumps(f))
    return [await ws.receive_json(timeout=5) for _ in frames]


async def test_message_and_chat_rate_limits(limited: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await raw_login(http, limited)
        # a burst far past the rate, and far past the bad-frame budget (error_burst 5): every
        # frame over the rate is answered rate_limited and dropped, and the socket stays
        out = await replies(ws, [{"type": "ping", "id": f"p{i}"} for i in range(60)])
        codes = [m["data"].get("code") if m["type"] == "error" else m["type"] for m in out]
        assert codes[:10] == ["pong"] * 10 and set(codes[10:]) <= {"rate_limited", "pong"}
        assert codes.count("rate_limited") >= 45, codes
        await asyncio.sleep(0.5)  # the bucket refills at 5 a second
        assert (await replies(ws, [{"type": "ping", "id": "still"}]))[0]["type"] == "pong"
        assert not ws.closed
        await ws.close()


async def test_chat_limit_keeps_the_connection(limited: TestServer) -> None:
    pool = Clients(str(limited.make_url("/")))
    try:
        client, _ = await pool.new("Chatty")
        lobby = (await client.join(lobby_name="chat limits")).lobby.id
        results = []
        for i in range(5):
            try:
                results.append(await client.chat(lobby, f"m{i}"))
            except ServerError as exc:
                results.append(exc.code)
        assert results[3:] == ["rate_limited", "rate_limited"]
        assert client.connected
        await asyncio.sleep(1.1)
        assert isinstance(await client.chat(lobby, "later"), int)  # the bucket refills
        # creating lobbies is limited separately
        await client.join(lobby_name="second")
        with pytest.raises(ServerError) as err:
            await client.join(lobby_name="third")
        assert err.value.code == "rate_limited"
        await client.join(lobby_name="second")  # joining an existing one is fine
    finally:
        await pool.close()


async def test_repeated_protocol_errors_close_with_1008(limited: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await raw_login(http, limited)
        for _ in range(8):
            await ws.send_str("{garbage")
        codes = []
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            codes.append(json.loads(msg.data)["data"]["code"])
        assert codes and set(codes) == {"bad_json"}
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1008


async def test_per_address_session_limit(limited: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(10):
            async with http.post(limited.make_url("/api/sessions")) as r:
                statuses.append(r.status)
                if r.status == 429:
                    assert (await r.json())["error"]["code"] == "rate_limited"
        assert statuses[:8] == [201] * 8 and statuses[8:] == [429, 429]


async def test_per_address_upgrade_limit(tmp_path: Path, backend: str) -> None:
    srv = await start_server(tmp_path / "data", ip_upgrade_rate=0.01, ip_upgrade_burst=3.0)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                await (await raw_login(http, srv)).close()
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await raw_login(http, srv)
            assert err.value.status == 429
    finally:
        await srv.close()


async def test_max_connections_closes_with_1013(limited: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        open_ = [await raw_login(http, limited) for _ in range(3)]
        token = await new_token(http, limited)
        ws = await http.ws_connect(limited.make_url("/ws"), params={"token": token})
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1013
        for w in open_:
            assert (await replies(w, [{"type": "ping", "id": "x"}]))[0]["type"] == "pong"
            await w.close()


async def test_slow_consumer_is_dropped_and_nobody_else_waits(limited: TestServer) -> None:
    async with through_proxy(limited) as (proxy, pool, slow_pool):
        sender, _ = await pool.new("Sender")
        talker, _ = await pool.new("Talker")
        slow, _ = await slow_pool.new("Slow", receive_timeout=60, heartbeat=60)
        lobby = (await sender.join(lobby_name="slow")).lobby.id
        await talker.join(lobby_id=lobby)
        await slow.join(lobby_id=lobby)
        watcher = talker  # receives the talker's own chat back, through the same fan-out
        slow_id = slow.session_id
        hub = limited.app[HUB]
        proxy.stalled.set()  # the slow client stops reading
        big = p.SessionDescription(type="offer", sdp="a=x" + "y" * 30_000)
        latencies = []
        deadline = time.monotonic() + 30
        n, last_chat = 0, 0.0
        while hub.picture.sessions[slow_id].conn is not None and time.monotonic() < deadline:
            await sender.send(p.Sdp(lobby_id=lobby, peer_id=slow_id, description=big))
            n += 1
            # meanwhile, the rest of the lobby chats as usual (within its 1 a second)
            if n >= 25 and time.monotonic() - last_chat >= 1.1:
                started = last_chat = time.monotonic()
                await watcher.chat(lobby, f"still fine {n}")
                latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.001)
        assert hub.picture.sessions[slow_id].conn is None, "the slow consumer was never dropped"
        assert latencies and max(latencies) < 1.0, latencies
        assert sender.connected and talker.connected
        await asyncio.sleep(0.5)  # the flood ran the sender's bucket dry: 5 frames a second
        await sender.request(p.Ping())


async def test_origin_check(tmp_path: Path, backend: str) -> None:
    srv = await start_server(tmp_path / "data", allowed_origins="https://voice.example.org")
    same = await start_server(tmp_path / "b" / "data")
    try:
        async with aiohttp.ClientSession() as http:
            token = await new_token(http, srv)
            for origin, ok in (("https://evil.example.com", False),
                               ("https://voice.example.org", True), (None, True)):
                headers = {"Origin": origin} if origin else {}
                try:
                    ws = await http.ws_connect(srv.make_url("/ws"), params={"token": token},
                                               headers=headers)
                    await ws.close()
                    assert ok, origin
                except aiohttp.WSServerHandshakeError as err:
                    assert not ok and err.status == 403, origin
            token = await new_token(http, same)
            own = f"http://127.0.0.1:{same.port}"  # by default: the page this server served
            ws = await http.ws_connect(same.make_url("/ws"), params={"token": token},
                                       headers={"Origin": own})
            await ws.close()
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(same.make_url("/ws"), params={"token": token},
                                      headers={"Origin": "http://elsewhere:1"})
    finally:
        await srv.close()
        await same.close()


# --- admin -----------------------------------------------------------------------------------------


async def admin(srv: TestServer, method: str, path: str,
                token: str | None = ADMIN) -> tuple[int, Any]:
    return await api(method, str(srv.make_url("/api/admin/" + path)), token)


async def test_admin_api(limited: TestServer) -> None:
    pool = Clients(str(limited.make_url("/")))
    try:
        owner, owner_inbox = await pool.new("Owner", password="hunter2!")
        lobby = (await owner.join(lobby_name="Admin test", password="door")).lobby.id
        guest, _ = await pool.new("Guest")
        await guest.join(lobby_id=lobby, password="door")
        assert (await admin(limited, "GET", "sessions", None))[0] == 401
        assert (await admin(limited, "GET", "sessions", "wrong"))[0] == 401
        status, body = await admin(limited, "GET", "sessions")
        assert status == 200
        text = json.dumps(body)
        for secret in (owner.config.token, guest.config.token):
            assert secret and secret not in text
        assert not re.search(r"[0-9a-f]{32}\$[0-9a-f]{64}", text)  # no password hashes
        me = next(s for s in body["sessions"] if s["name"] == "Owner")
        assert me["connected"] and me["lobbies"] == [lobby] and me["messages_received"] >= 2

        status, body = await admin(limited, "GET", "names")
        assert body["names"] == [{"key": "owner", "name": "Owner", "protected": True,
                                  "session_id": owner.session_id}]
        assert "hash" not in json.dumps(body)
        assert (await admin(limited, "DELETE", "names/owner"))[0] == 200
        await owner.set_name("Owner")  # the password is gone: an ordinary name now

        status, body = await admin(limited, "GET", "lobbies")
        assert [lb["id"] for lb in body["lobbies"]] == [lobby]
        assert "password" not in json.dumps(body).replace("has_password", "")
        for path in ("providers", "bots"):
            assert (await admin(limited, "GET", path))[0] == 200
        assert (await admin(limited, "DELETE", "bots/none"))[0] == 404
        status, body = await admin(limited, "POST", "integrity")
        assert status == 200 and body["repairs"] == []

        assert (await admin(limited, "DELETE", f"sessions/{guest.session_id}"))[0] == 200
        await owner_inbox.wait_for(p.PeerRemoved, peer_id=guest.session_id)
        assert (await admin(limited, "DELETE", f"lobbies/{lobby}"))[0] == 200
        status, body = await admin(limited, "GET", "lobbies")
        assert body["lobbies"] == []
    finally:
        await pool.close()


async def test_admin_api_is_off_without_a_token(server: TestServer) -> None:
    status, body = await admin(server, "GET", "sessions")
    assert status == 404 and body["error"]["code"] == "not_found"


# --- observability ---------------------------------------------------------------------------------


async def test_metrics(server: TestServer, clients: Clients) -> None:
    a, _ = await clients.new("A")
    b, _ = await clients.new("B")
    lobby = (await a.join(lobby_name="metrics")).lobby.id
    await b.join(lobby_id=lobby)
    await a.chat(lobby, "counted")
    await a.request(p.Sdp(lobby_id=lobby, peer_id=b.session_id,
                          description=p.SessionDescription(type="offer", sdp="v=0")))
    with pytest.raises(ServerError):
        await a.request(p.Part(lobby_id="nope"))
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/metrics")) as r:
            assert r.status == 200 and r.content_type.startswith("text/plain")
            text = await r.text()
    assert "voicebot_connections 2.0" in text
    assert "voicebot_lobbies 1.0" in text
    assert 'voicebot_messages_total{type="chat"} 1.0' in text
    assert 'voicebot_errors_total{code="not_in_lobby"} 1.0' in text
    assert re.search(r"voicebot_relay_latency_seconds_count \d", text)
    assert "voicebot_transcript_ttfs_seconds_bucket" in text


def test_openapi_matches_the_routes(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        if route.method in ("HEAD", "OPTIONS") or not path or path.startswith("/static"):
            continue
        if path in ("/", "/favicon.ico", "/docs/{name}"):
            continue  # the web client's page, icon and the docs it links to
        routes.add((route.method.lower(), path))
    doc = json.loads(OPENAPI.read_text())
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert routes == documented


def test_structured_logs_carry_ids() -> None:
    import logging

    from signaling.logs import JsonFormatter, TextFormatter

    record = logging.LogRecord("signaling.hub", logging.INFO, __file__, 1, "joined %s", ("x",),
                               None)
    record.session_id, record.lobby_id = "s1", "l1"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "joined x" and line["session_id"] == "s1" and line["lobby_id"] == "l1"
    assert "[session_id=s1 lobby_id=l1]" in TextFormatter().format(record)


async def test_http_creation_limit(limited: TestServer) -> None:
    """Lobbies (and bots) created over HTTP share one bucket per session: burst 2 here."""
    token = (await api("POST", str(limited.make_url("/api/sessions")), None))[1]["token"]
    statuses = []
    for i in range(4):
        status, body = await api("POST", str(limited.make_url("/api/lobbies")), token,
                                 {"name": f"made {i}"})
        statuses.append(status)
    assert statuses == [201, 201, 429, 429] and body["error"]["code"] == "rate_limited"


async def test_frames_keep_their_order_when_a_socket_backs_up(aiohttp_client: Any) -> None:
    """A connection writes straight to the socket until the kernel stops taking bytes, then
    queues; a client that reads late still gets every frame, once, in order."""
    from aiohttp import web

    from signaling.connection import Connection

    n, pad = 3000, "x" * 8000  # 24 MB: more than the socket buffers hold
    stats: dict[str, int] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = Connection(ws, "s", n, transport=request.transport)  # type: ignore[arg-type]
        for i in range(n):
            conn.send(f"{i:05d}{pad}")
        stats["queued"] = conn._queue.qsize()  # noqa: SLF001
        await conn.close(1000, "done", drain=30)
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    async with client.ws_connect("/") as ws:
        # not reading until the server has sent every frame: its socket backs up
        await wait_until(lambda: "queued" in stats, what="the server to send every frame")
        got = [int(m.data[:5]) async for m in ws if m.type is aiohttp.WSMsgType.TEXT]
    assert got == list(range(n))
    assert 0 < stats["queued"] < n  # both ways were taken: straight through, then queued
