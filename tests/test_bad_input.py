"""Every kind of bad input gets a specific error code, and nobody loses anything."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from shared import protocol as p

from .conftest import Clients
from .helpers import api, raw_login


async def exchange(ws: aiohttp.ClientWebSocketResponse, frame: Any) -> dict[str, Any]:
    await ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))
    return await ws.receive_json(timeout=5)


BAD_FRAMES = [
    ("{not json", "bad_json", None),
    ('"just a string"', "bad_frame", None),
    ({"data": {}}, "bad_frame", None),
    ({"type": "teleport", "data": {}, "id": "r1"}, "unknown_type", "r1"),
    ({"type": "welcome", "data": {}, "id": "r2"}, "not_allowed", "r2"),
    ({"type": "ping", "id": 7}, "bad_frame", None),
    ({"type": "set_name", "data": {}, "id": "r3"}, "invalid_payload", "r3"),
    ({"type": "set_name", "data": {"name": 5}, "id": "r4"}, "invalid_payload", "r4"),
    ({"type": "set_name", "data": {"name": "n" * 200}, "id": "r5"}, "invalid_payload", "r5"),
    ({"type": "set_name", "data": {"name": "ok", "password": ""}, "id": "r6"}, "invalid_payload", "r6"),
    ({"type": "join", "data": {"lobby_id": "a", "lobby_name": "b"}, "id": "r7"}, "invalid_payload", "r7"),
    ({"type": "join", "data": {"lobby_name": "x"}, "id": "r8"}, "name_required", "r8"),
    ({"type": "chat", "data": {"lobby_id": "x", "text": ""}, "id": "r9"}, "invalid_payload", "r9"),
    ({"type": "chat", "data": {"lobby_id": "x", "text": "t" * 2001}, "id": "r10"}, "invalid_payload", "r10"),
    ({"type": "chat", "data": {"lobby_id": "x", "text": "hi"}, "id": "r11"}, "not_in_lobby", "r11"),
    ({"type": "sdp", "data": {"lobby_id": "x", "peer_id": "y", "description": {"type": "bogus"}},
      "id": "r12"}, "invalid_payload", "r12"),
    ({"type": "ice", "data": {"lobby_id": "x", "peer_id": "y"}, "id": "r13"}, "not_in_lobby", "r13"),
    ({"type": "part", "data": {"lobby_id": "nope"}, "id": "r14"}, "not_in_lobby", "r14"),
    ({"type": "ping", "data": [], "id": "r15"}, "invalid_payload", "r15"),
    # found by the fuzzer: integers past what SQLite (and JSON peers) hold
    ({"type": "join", "data": {"lobby_id": "x", "history_since": 2**63}, "id": "r16"},
     "invalid_payload", "r16"),
    ('{"type": "chat", "data": {"lobby_id": "x", "text": "t", "ts": 1e999}, "id": "r17"}',
     "invalid_payload", "r17"),
]


async def test_bad_frames_get_specific_errors_and_the_connection_survives(
        server: TestServer, clients: Clients) -> None:
    bystander, inbox = await clients.new("Bystander")
    lobby = (await bystander.join(lobby_name="calm")).lobby.id
    async with aiohttp.ClientSession() as http:
        ws = await raw_login(http, server)
        for frame, code, ref in BAD_FRAMES:
            reply = await exchange(ws, frame)
            assert reply["type"] == "error", (frame, reply)
            assert reply["data"]["code"] == code, (frame, reply)
            assert reply["data"]["ref"] == ref
        await ws.send_bytes(b"\x00\x01")
        assert (await ws.receive_json(timeout=5))["data"]["code"] == "bad_frame"
        # still fully usable afterwards
        assert (await exchange(ws, {"type": "ping", "id": "alive"}))["type"] == "pong"
        await ws.close()
    assert await bystander.chat(lobby, "still here") > 0
    await bystander.request(p.Ping())


async def test_oversized_frames(server: TestServer, settings) -> None:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as http:
        ws = await raw_login(http, server)
        big = json.dumps({"type": "ping", "id": "big", "pad": "x" * settings.max_message_bytes})
        reply = await exchange(ws, big)
        assert reply["data"]["code"] == "message_too_large"
        assert (await exchange(ws, {"type": "ping", "id": "ok"}))["type"] == "pong"
        # past the transport limit the socket is closed with 1009, as RFC 6455 says
        await ws.send_str("x" * (settings.max_frame_bytes + 1))
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1009
        # and the server carries on
        ws2 = await raw_login(http, server)
        assert (await exchange(ws2, {"type": "ping", "id": "ok"}))["type"] == "pong"
        await ws2.close()


@pytest.mark.parametrize("method,path,body,status,code", [
    ("GET", "/api/nowhere", None, 404, "not_found"),
    ("PUT", "/api/sessions", None, 405, "not_allowed"),
    ("POST", "/api/sessions", "{oops", 400, "bad_json"),
    ("POST", "/api/sessions", "[1]", 400, "invalid_payload"),
    ("POST", "/api/sessions", '{"bot": "yes"}', 400, "invalid_payload"),
    ("POST", "/api/sessions", '{"bot": true}', 403, "not_allowed"),
    ("POST", "/api/lobbies", '{"name": "x"}', 401, "unauthorized"),
    ("GET", "/api/lobbies/missing", None, 404, "lobby_not_found"),
    ("GET", "/api/lobbies/missing/messages", None, 404, "lobby_not_found"),
    ("GET", "/api/session", None, 401, "unauthorized"),
    ("GET", "/ws?token=forged", None, 401, "unauthorized"),
])
async def test_http_errors_are_json(server: TestServer, method: str, path: str, body: str | None,
                                    status: int, code: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, server.make_url(path), data=body) as r:
            assert r.status == status
            assert r.content_type == "application/json"
            err = (await r.json())["error"]
            assert err["code"] == code and err["message"]


async def test_http_lobby_validation(server: TestServer) -> None:
    token = (await api("POST", str(server.make_url("/api/sessions")), None))[1]["token"]
    for body, code in (({}, "invalid_payload"), ({"name": 3}, "invalid_payload"),
                       ({"name": "<script>"}, "name_invalid"),
                       ({"name": "ok", "max_participants": 500}, "invalid_payload")):
        status, reply = await api("POST", str(server.make_url("/api/lobbies")), token, body)
        assert status == 400, body
        assert reply["error"]["code"] == code


async def test_replies_follow_the_id_rules(server: TestServer, clients: Clients) -> None:
    """No id: no ack and no pong (state replies still come); a bad id is never echoed."""
    bystander, inbox = await clients.new("Listener")
    lobby = (await bystander.join(lobby_name="ids")).lobby.id
    async with aiohttp.ClientSession() as http:
        ws = await raw_login(http, server)
        await ws.send_json({"type": "set_name", "data": {"name": "Quiet"}})
        assert (await ws.receive_json(timeout=5))["type"] == "session"  # state, without id
        await ws.send_json({"type": "join", "data": {"lobby_id": lobby}})
        frames = []
        await ws.send_json({"type": "ping"})
        await ws.send_json({"type": "chat", "data": {"lobby_id": lobby, "text": "no id"}})
        await ws.send_json({"type": "ping", "id": "last"})
        while not frames or frames[-1].get("id") != "last":
            frames.append(await ws.receive_json(timeout=5))
        types = [f["type"] for f in frames]
        assert "lobby_state" in types and types.count("pong") == 1 and "ack" not in types, types
        assert all(f.get("id") != "" for f in frames)
        await inbox.wait_for(p.Chat, text="no id")  # it was stored and delivered all the same
        for bad_id, code in (("i" * 65, "bad_frame"), ("a\x00b", "bad_frame")):
            reply = await exchange(ws, {"type": "ping", "id": bad_id})
            assert (reply["data"]["code"], reply["data"]["ref"], reply.get("id")) == \
                (code, None, None)
        reply = await exchange(ws, '{"type": "ping", "id": "x\\ud800"}')
        assert (reply["data"]["code"], reply["data"]["ref"]) == ("bad_json", None)
        reply = await exchange(ws, '{"type": "chat", "data": {"lobby_id": "%s", "text": '
                                   '"\\udfff"}, "id": "s1"}' % lobby)
        assert (reply["data"]["code"], reply["data"]["ref"]) == ("bad_json", "s1")
        reply = await exchange(ws, {"type": "join", "data": {"lobby_name": "  "}, "id": "e"})
        assert reply["data"]["code"] == "name_invalid"
        await ws.close()
