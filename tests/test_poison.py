"""A record nobody can send, written straight into the store, does not take its lobby down; the
integrity check repairs it. And every HTTP route answers malformed bodies with a JSON 4xx."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from shared import protocol as p

from .conftest import Clients, make_settings, start_server
from .helpers import api, api_text, new_token, raw_login

ADMIN = "poison-admin-token"
BAD_BYTES = b"caf\xc3\xa9 \xed\xa0\x80 broken"  # valid UTF-8, then a surrogate encoded in it


def poison(settings: Any, lobby_id: str, speaker: str) -> None:
    """Three records our server would never write: invalid UTF-8, an escaped lone surrogate
    in a transcript's language (the poison of issue 16), and NUL."""
    now = time.time()
    transcript_meta = ('{"segment_id": "s1", "speaker_id": "%s", "speaker_name": "A", '
                       '"language": "\\ud800", "start": 1.0, "end": 2.0}' % speaker)
    if settings.redis_url is None:
        db = sqlite3.connect(settings.db_path)
        with db:
            db.execute("INSERT INTO chat (lobby_id, session_id, name, text, ts, kind, meta) "
                       "VALUES (?, ?, 'Mallory', CAST(? AS TEXT), ?, 'chat', NULL)",
                       (lobby_id, speaker, BAD_BYTES, now))
            db.execute("INSERT INTO chat (lobby_id, session_id, name, text, ts, kind, meta) "
                       "VALUES (?, ?, 'Bot', 'poisoned final', ?, 'transcript', ?)",
                       (lobby_id, speaker, now, transcript_meta))
            db.execute("INSERT INTO chat (lobby_id, session_id, name, text, ts, kind, meta) "
                       "VALUES (?, ?, 'Mallory', ?, ?, 'chat', NULL)",
                       (lobby_id, speaker, "nul \x00 inside", now))
        db.close()
        return
    r = redis.Redis.from_url(settings.redis_url)
    key = f"{settings.redis_prefix}:chat:{lobby_id}"
    for kind, doc in (
            ("chat", b'{"lobby_id": "%s", "session_id": null, "name": "Mallory", "text": "'
             % lobby_id.encode() + BAD_BYTES + b'", "ts": 1.0, "kind": "chat", "meta": null'),
            ("transcript", json.dumps({"lobby_id": lobby_id, "session_id": speaker, "name": "Bot",
                                       "text": "poisoned final", "ts": now, "kind": "transcript",
                                       "meta": "@META@"}).encode()
             .replace(b'"@META@"', transcript_meta.encode())[:-1]),
            ("chat", json.dumps({"lobby_id": lobby_id, "session_id": None, "name": "Mallory",
                                 "text": "nul \x00 inside", "ts": now, "kind": "chat",
                                 "meta": None}).encode()[:-1])):
        message_id = r.incr(f"{settings.redis_prefix}:chat:seq")
        doc += b', "id": %d}' % message_id
        r.zadd(key, {doc: message_id})
        r.zadd(f"{key}:{kind}", {doc: message_id})
    r.close()


async def read(url: str) -> Any:
    """A GET of the HTTP API that must answer 200: its JSON body."""
    status, body = await api("GET", url, None)
    assert status == 200, body
    return body


async def test_a_poison_record_leaves_the_lobby_usable_and_is_repaired(
        tmp_path: Path, backend: str) -> None:
    data = tmp_path / "data"
    srv = await start_server(data, admin_token=ADMIN)
    settings = make_settings(data)
    base = str(srv.make_url("/"))
    pool = Clients(base)
    try:
        alice, _ = await pool.new("Alice")
        lobby = (await alice.join(lobby_name="poisoned")).lobby.id
        await alice.chat(lobby, "before")
        poison(settings, lobby, alice.session_id or "")
        await alice.chat(lobby, "after")
        async with aiohttp.ClientSession() as http:
            # a new joiner gets the whole readable history, then a reconnect gets it again
            token = await new_token(http, base)
            for attempt in range(2):
                ws = await raw_login(http, base, token, via="header")
                if attempt == 0:
                    await ws.send_json({"type": "set_name", "data": {"name": "Bob"}, "id": "n"})
                    await ws.send_json({"type": "join", "data": {"lobby_id": lobby}, "id": "j"})
                texts = []
                while "after" not in texts:
                    frame = await ws.receive_json(timeout=5)
                    assert frame["type"] != "error", frame
                    if frame["type"] in ("chat", "transcript"):
                        texts.append(frame["data"]["text"])
                assert texts == ["before", "after"]
                await ws.send_json({"type": "ping", "id": "still"})
                while (frame := await ws.receive_json(timeout=5))["type"] != "pong":
                    pass
                await ws.close()
            # paging, one message a page, walks past the bad records
            seen, after = [], 0
            while True:
                page = await read(f"{base}api/lobbies/{lobby}/messages?limit=1&after={after}")
                seen += [m["text"] for m in page["messages"]]
                if "next" not in page:
                    break
                after = page["next"]["after"]
            assert seen == ["before", "after"]
            newest = await read(f"{base}api/lobbies/{lobby}/messages")
            assert [m["text"] for m in newest["messages"]] == ["before", "after"]
            for fmt in ("json", "srt", "vtt", "txt"):
                status, text = await api_text(f"{base}api/lobbies/{lobby}/transcript?format={fmt}")
                assert status == 200, text
            # the integrity check repairs what it can read at all
            status, body = await api("POST", base + "api/admin/integrity", ADMIN)
            assert status == 200
            repairs = body["repairs"]
            assert len([x for x in repairs if "unreadable message" in x]) == 3, repairs
            repaired = await read(f"{base}api/lobbies/{lobby}/messages")
            texts = [m["text"] for m in repaired["messages"]]
            assert texts[0] == "before" and texts[-1] == "after" and len(texts) == 5, texts
            assert "caf\u00e9 \ufffd" in texts[1] and "nul  inside" in texts
            final = next(m for m in repaired["messages"] if m["kind"] == "transcript")
            assert final["text"] == "poisoned final" and final["language"] in (None, "\ufffd")
            export = await read(f"{base}api/lobbies/{lobby}/transcript?format=json")
            assert "poisoned final" in json.dumps(export)
            body = (await api("POST", base + "api/admin/integrity", ADMIN))[1]
            assert not [x for x in body["repairs"] if "message" in x]
    finally:
        await pool.close()
        await srv.close()


# --- HTTP -------------------------------------------------------------------------------------

DEEP = "[" * 3000 + "]" * 3000
MALFORMED = [
    ("bad json", "{oops"), ("not an object", "[1, 2]"), ("deep array", DEEP),
    ("deep object", '{"a":' * 3000 + "1" + "}" * 3000),
    ("deep inside", '{"name": ' + DEEP + "}"), ("surrogate", '{"name": "x\\ud800", "password": "\\udfff"}'),
    ("nul", '{"name": "a\\u0000b", "kind": "x\\u0000", "password": "p\\u0000"}'),
    ("nulls", '{"bot": null, "name": null, "private": null, "password": null, '
              '"max_participants": null, "kind": null, "config": null}'),
    ("wrong types", '{"bot": "yes", "name": 5, "private": "no", "password": [], '
                    '"max_participants": "9", "kind": {}, "config": [], "format": 1}'),
    ("huge numbers", '{"max_participants": 1e999, "name": 123456789012345678901234567890, '
                     '"kind": -1e308, "config": {"threads": 1e999}}'),
    ("nan", '{"max_participants": NaN, "bot": Infinity, "config": {"threads": NaN}}'),
    ("huge int", '{"max_participants": 9007199254740993, "config": {"threads": 99999999999999999999}}'),
    ("not utf-8", b'{"name": "\xff\xfe"}'),
    ("empty", ""),
]


@pytest.mark.backends("sqlite")
async def test_every_route_answers_malformed_bodies_with_json_4xx(tmp_path: Path,
                                                                  backend: str) -> None:
    srv = await start_server(tmp_path / "data", admin_token=ADMIN, create_burst=1000.0,
                             ip_session_burst=1000.0)
    base = str(srv.make_url("/"))
    pool = Clients(base)
    try:
        member, _ = await pool.new("Member")
        lobby = (await member.join(lobby_name="routes")).lobby.id
        token = member.config.token
        routes = [(route.method, route.resource.canonical)
                  for route in srv.app.router.routes()
                  if route.method in ("POST", "DELETE", "GET") and route.resource is not None
                  and "/static" not in route.resource.canonical]
        assert len(routes) >= 20, routes
        async with aiohttp.ClientSession() as http:
            for method, path in routes:
                url = base.rstrip("/") + path.replace("{lobby_id}", lobby) \
                    .replace("{bot_id}", "nobot").replace("{session_id}", "nobody") \
                    .replace("{key}", "nokey").replace("{filename:.*}", "x")
                for auth in (f"Bearer {token}", f"Bearer {ADMIN}", "Bearer forged", None):
                    for label, body in MALFORMED:
                        headers = {"Authorization": auth} if auth else {}
                        headers["Content-Type"] = "application/json"
                        async with http.request(method, url, data=body, headers=headers) as r:
                            if r.status < 400:
                                continue  # a route that reads no body, or a body that is fine
                            assert r.status < 500, (method, path, label, r.status, await r.text())
                            assert r.content_type == "application/json", (method, path, label)
                            error = (await r.json())["error"]
                            assert error["code"] in {c.value for c in p.ErrorCode} and error["message"]
    finally:
        await pool.close()
        await srv.close()
