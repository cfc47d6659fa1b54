"""The resilient client against a real server: restarts, dead links, queue limits, breaker."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shared import protocol as p
from shared import errors
from shared.client import SignalingClient, backoff
from shared.config import ClientConfig
from shared.errors import (ClientBug, ConnectTimeout, HandshakeError, NotDelivered, QueueFull,
                           RequestTimeout, SessionEnded)

from .conftest import ROOT, Clients, free_port
from .netfaults import TcpProxy


def test_backoff_is_capped_full_jitter() -> None:
    delays = backoff(initial=0.1, maximum=2.0)
    values = [next(delays) for _ in range(200)]
    assert all(0 <= d <= 2.0 for d in values)
    assert max(values[:3]) <= 0.4  # grows from the initial delay
    assert max(values[50:]) > 1.0  # reaches the cap, with spread below it
    assert len({round(v, 6) for v in values}) > 150


async def test_kill_and_restart_server_mid_chat(server_process: Any) -> None:
    srv = server_process(VOICEBOT_CHAT_RATE="100")
    srv.start()
    writer = SignalingClient(ClientConfig(url=srv.url, name="Writer", backoff_initial=0.05,
                                          backoff_max=0.5, heartbeat=1.0, receive_timeout=3.0,
                                          breaker_threshold=50))
    await writer.start(wait=10)
    await writer.set_name("Writer")
    lobby = (await writer.join(lobby_name="resilience")).lobby.id

    texts = [f"line {i}" for i in range(40)]
    results: list[Any] = []

    async def chatter() -> None:
        for text in texts:
            results.append(await writer.chat(lobby, text))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(chatter())
    await asyncio.sleep(0.3)
    srv.kill()  # no goodbye: SIGKILL
    await asyncio.sleep(0.5)
    srv.start()
    restarted = time.monotonic()
    await writer.wait_connected(5)
    assert time.monotonic() - restarted < 5
    await asyncio.wait_for(task, 30)
    assert writer.stats.reconnects >= 1
    assert lobby in writer.lobbies
    # back in the lobby on the server side too
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {writer.config.token}"}
        async with http.get(srv.url + f"api/lobbies/{lobby}", headers=headers) as r:
            names = [x["name"] for x in (await r.json())["participants"]]
        assert names == ["Writer"]
        async with http.get(srv.url + f"api/lobbies/{lobby}/messages?limit=500") as r:
            stored = [m["text"] for m in (await r.json())["messages"]]
    assert stored == texts  # every message exactly once, in order
    assert len(set(results)) == len(texts)
    await writer.close()


async def test_dead_link_is_detected_within_the_timeout(server: TestServer) -> None:
    proxy = TcpProxy(server.port)  # type: ignore[arg-type]
    await proxy.start()
    client = SignalingClient(ClientConfig(url=f"http://127.0.0.1:{proxy.port}/", heartbeat=0.5,
                                          receive_timeout=2.0, backoff_initial=0.05,
                                          connect_timeout=1.0))
    try:
        await client.start(wait=10)
        proxy.frozen = True  # packets vanish; no FIN, no close frame
        frozen_at = time.monotonic()
        while client.connected and time.monotonic() - frozen_at < 10:
            await asyncio.sleep(0.05)
        detected = time.monotonic() - frozen_at
        assert not client.connected
        # within the receive timeout, plus slack for a loaded 2-core box
        assert detected <= 2.0 + 1.5, detected
        # a reconnect attempt goes into the dead link too: its handshake must time out
        deadline = time.monotonic() + 10
        while proxy.accepted < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert proxy.accepted >= 2
        await asyncio.sleep(0.1)  # the handshake request has gone into the void
        proxy.frozen = False  # the link heals: the client is back
        await client.wait_connected(20)
    finally:
        await client.close(drain=0)
        await proxy.close()


async def test_queue_overflow_ttl_and_critical_frames(tmp_path: Path) -> None:
    # nothing listens on this port: everything stays queued
    client = SignalingClient(ClientConfig(url=f"http://127.0.0.1:{free_port()}/", queue_size=3,
                                          queue_ttl=0.3, backoff_initial=0.05, backoff_max=0.1))
    await client.start()
    try:
        critical = client.send(p.Ping(), critical=True)
        plain = [client.send(p.Ping()) for _ in range(2)]
        extra = client.send(p.Ping())  # full: the oldest non-critical frame goes
        assert client.stats.dropped["overflow"] == 1
        with pytest.raises(NotDelivered) as err:
            await plain[0]
        assert err.value.reason == "overflow"
        client.send(p.Ping(), critical=True)
        client.send(p.Ping(), critical=True)  # evicts the last two plain frames
        with pytest.raises(QueueFull):
            client.send(p.Ping(), critical=True)
        assert client.stats.dropped["overflow"] == 3
        # the TTL runs out while still disconnected: the critical sender learns of it
        with pytest.raises(NotDelivered) as err:
            await asyncio.wait_for(critical, 5)
        assert err.value.reason == "ttl"
        assert extra.done()
        assert client.stats.dropped["ttl"] == 3 and client.stats.queued == 0
    finally:
        await client.close(drain=0)


async def test_breaker_opens_then_closes(tmp_path: Path, settings: Any) -> None:
    port = free_port()
    client = SignalingClient(ClientConfig(url=f"http://127.0.0.1:{port}/", breaker_threshold=3,
                                          breaker_cooldown=0.5, backoff_initial=0.01,
                                          backoff_max=0.02))
    await client.start()
    srv = None
    try:
        for _ in range(100):
            if client.stats.breaker == "open":
                break
            await asyncio.sleep(0.02)
        assert client.stats.breaker == "open" and client.stats.breaker_opens == 1
        failures = client.stats.connect_failures
        await asyncio.sleep(0.3)  # open: no hammering while it waits
        assert client.stats.connect_failures == failures
        from signaling.app import create_app

        srv = TestServer(create_app(settings), host="127.0.0.1", port=port)
        await srv.start_server()
        await client.wait_connected(5)
        assert client.stats.breaker == "closed"
    finally:
        await client.close(drain=0)
        if srv is not None:
            await srv.close()


async def fake_server(ws_handler: Any) -> TestServer:
    """A server that hands out a session and runs ``ws_handler`` for every socket."""
    async def sessions(request: web.Request) -> web.Response:
        return web.json_response({"session_id": "x", "token": "t"}, status=201)

    app = web.Application()
    app.router.add_post("/api/sessions", sessions)
    app.router.add_get("/ws", ws_handler)
    srv = TestServer(app, host="127.0.0.1", port=free_port())
    await srv.start_server()
    return srv


async def test_garbage_and_stalls_from_a_broken_server() -> None:
    """A server that sends junk, then stalls: the client survives, reconnects, never spins."""
    connects = 0

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connects
        connects += 1
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        welcome = p.Welcome(protocol=1, server="fake", session=p.SessionInfo(session_id="x"))
        await ws.send_str(p.encode(welcome))
        for junk in ("{nope", '{"type": "chat", "data": {"lobby_id": 1}}', '{"type": "zzz"}'):
            await ws.send_str(junk)
        await ws.send_bytes(b"\x00")
        await asyncio.sleep(30)  # then stall, answering nothing (not even pings)
        return ws

    srv = await fake_server(ws_handler)
    client = SignalingClient(ClientConfig(url=str(srv.make_url("/")), heartbeat=0.3,
                                          receive_timeout=0.6, backoff_initial=0.2,
                                          backoff_max=0.4))
    try:
        await client.start(wait=5)
        await asyncio.sleep(2.5)
        assert client.stats.invalid >= 4
        assert 2 <= connects <= 8  # reconnected after each stall, with backoff in between
    finally:
        await client.close(drain=0)
        await srv.close()


async def test_graceful_close_reports_unsent(clients: Clients) -> None:
    client, _ = await clients.new("Closer")
    lobby = (await client.join(lobby_name="closing")).lobby.id
    client.send(p.Chat(lobby_id=lobby, text="sent before close"))
    assert await client.close(drain=2) == []
    offline = SignalingClient(ClientConfig(url=f"http://127.0.0.1:{free_port()}/"))
    await offline.start()
    offline.send(p.Ping())
    unsent = await offline.close(drain=0.1)
    assert [m.type for m in unsent] == [p.MessageType.PING]
    assert offline.stats.dropped["closed"] == 1


async def test_duplicates_are_dropped(clients: Clients) -> None:
    writer, _ = await clients.new("Dupe writer")
    lobby = (await writer.join(lobby_name="dupes")).lobby.id
    await writer.chat(lobby, "once")
    reader, inbox = await clients.new("Dupe reader")
    await reader.join(lobby_id=lobby)
    await inbox.wait_for(p.Chat, text="once")
    await reader.join(lobby_id=lobby)  # the server replays history: the client drops repeats
    await reader.request(p.Ping())
    assert len(inbox.of(p.Chat, text="once")) == 1
    assert reader.stats.duplicates >= 1


async def test_a_second_connection_of_the_session_ends_the_first(server: TestServer,
                                                                 clients: Clients) -> None:
    """Two tabs (or two copies of a tool) with one token: the newer one keeps the session,
    the older one is told so (4001) and stops instead of taking it back again and again."""
    from signaling.hub import HUB

    first, _ = await clients.new("Twin")
    lobby = (await first.join(lobby_name="twins")).lobby.id
    second, _ = await clients.new(token=first.config.token)
    failure = await asyncio.wait_for(first.wait_stopped(), 10)
    assert isinstance(failure, SessionEnded) and failure.code == 4001
    assert second.connected and second.session_id == first.session_id
    await second.request(p.Ping())
    assert second.session is not None and lobby in second.session.lobbies
    # the first has stopped for good: one socket each, no tug of war
    assert first.stats.state == "closed" and second.stats.connects == 1
    assert server.app[HUB].picture.sessions[first.session_id].conn is not None  # type: ignore[index]


async def test_not_connected_in_time_is_a_connect_timeout_not_a_request_timeout() -> None:
    client = SignalingClient(ClientConfig(url=f"http://127.0.0.1:{free_port()}/",
                                          backoff_initial=0.05, backoff_max=0.1))
    try:
        with pytest.raises(ConnectTimeout) as err:
            await client.start(wait=0.3)
        assert not isinstance(err.value, RequestTimeout)
        assert client.failure is None and client.stats.state != "failed"  # still trying
    finally:
        await client.close(drain=0)


async def test_a_handler_bug_is_logged_and_the_connection_kept(
        clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    client, _ = await clients.new("Buggy")

    @client.on(p.MessageType.LOBBY_STATE)
    def broken(msg: p.Message) -> None:
        raise KeyError("a bug in the handler")

    with caplog.at_level(logging.ERROR, logger="shared.client"):
        await client.join(lobby_name="bugs")  # the reply goes to the handlers too
        await client.request(p.Ping())
    failed = [r for r in caplog.records if "handler for lobby_state failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None  # with its traceback
    assert client.connected and client.stats.connects == 1 and client.failure is None


async def test_a_bug_in_the_loop_stops_the_client_instead_of_reconnecting(
        clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    client, _ = await clients.new("Crashing")

    async def broken_resume() -> None:
        raise AttributeError("a bug")

    client._resume = broken_resume  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="shared.client"):
        await client._ws.close()  # type: ignore[union-attr]  # the next connection meets the bug
        failure = await asyncio.wait_for(client.wait_stopped(), 10)
    assert isinstance(failure, ClientBug) and isinstance(failure.__cause__, AttributeError)
    assert client.stats.state == "failed" and client.stats.connects == 2
    assert any(r.exc_info is not None for r in caplog.records if "bug" in r.getMessage())
    with pytest.raises(ClientBug):
        await client.wait_connected(1)


async def test_a_server_that_does_not_welcome_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    connects = 0

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        nonlocal connects
        connects += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(p.encode(p.Pong()))  # not a welcome
        await ws.close()
        return ws

    srv = await fake_server(ws_handler)
    client = SignalingClient(ClientConfig(url=str(srv.make_url("/")), backoff_initial=0.02,
                                          backoff_max=0.05))
    try:
        with caplog.at_level(logging.INFO, logger="shared.client"):
            await client.start()
            deadline = time.monotonic() + 10
            while connects < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        assert connects >= 3 and client.failure is None and not client.connected
        lost = [r for r in caplog.records if r.getMessage().startswith("connection lost")]
        assert lost and "expected welcome, got pong" in lost[0].getMessage()
        assert isinstance(lost[0].args[0], HandshakeError)  # type: ignore[index]
    finally:
        await client.close(drain=0)
        await srv.close()


def test_every_client_error_is_documented_in_the_tree_and_the_table() -> None:
    doc = (ROOT / "docs" / "client.md").read_text()
    section = doc[doc.index("## Errors"):]
    tree = section[section.index("```"):section.index("```", section.index("```") + 3)]
    table = re.findall(r"^\| `(\w+)", section, re.MULTILINE)
    classes = {name for name, obj in vars(errors).items()
               if isinstance(obj, type) and issubclass(obj, errors.ClientError)}
    assert set(re.findall(r"\b([A-Z]\w+)\b", tree)) == classes
    assert set(table) == classes - {"ClientError"} and len(table) == len(set(table))
