"""Untrusted input, property-based: every client message type, every string field drawn from
text with lone surrogates, NUL and bidi marks and at its length limits ±1, and every JSON shape.

The expected reply of each frame is worked out here from the rules docs/protocol.md states
("Strings, numbers and nesting", the limits, the error table), not from the server's decoder, and
the frame must get exactly that reply on a socket that stays open. Afterwards nothing
unreadable is stored and the bystander got every chat, intact.
"""

from __future__ import annotations

import asyncio
import json
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.client import SignalingClient
from shared.config import ClientConfig
from signaling.testing import ServerProcess

from .conftest import PROVIDER_KEY, UNLIMITED, Inbox, backend_env
from .helpers import new_token, raw_join, raw_login

# --- what the docs say ------------------------------------------------------------------------

MAX_DEPTH_READ, MAX_DEPTH = 512, 1024  # always read / always bad_json past it
NAME_PUNCTUATION = set(" _-.'()!?&+@#")


def has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(has_surrogate(k) or has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(map(has_surrogate, value))
    return False


def name_ok(raw: str, max_len: int) -> bool:
    """The documented name rule: NFKC, runs of white space as one space, 1..max characters,
    letters, digits, spaces and _-.'()!?&+@# only."""
    display = " ".join(unicodedata.normalize("NFKC", raw).split())
    return 0 < len(display) <= max_len and all(c.isalnum() or c in NAME_PUNCTUATION
                                               for c in display)


@dataclass(frozen=True)
class Field:
    path: tuple[str, ...]  # where in data
    max_len: int
    min_len: int = 0
    rule: str = ""  # "name", "lobby_name", "description_type": a check after the length;
    # "other_than:X": X is refused (a final may not replace its own segment)


# per type: the template's data, the string fields to draw, the reply when all is well
TYPES: dict[str, tuple[dict[str, Any], list[Field], str]] = {
    "set_name": ({"name": "Fz"}, [Field(("name",), 128, 0, "name"),
                                  Field(("password",), 128, 1)], "session"),
    "join": ({"lobby_name": "fuzz lobby"}, [Field(("lobby_name",), 192, 0, "lobby_name"),
                                            Field(("lobby_id",), 64, 1, "unknown_lobby")],
             "lobby_state"),
    "part": ({"lobby_id": "nowhere"}, [Field(("lobby_id",), 64, 1, "not_member")], "ack"),
    "chat": ({"lobby_id": "$L", "text": "hi"}, [Field(("text",), 2000, 1)], "ack"),
    "sdp": ({"lobby_id": "$L", "peer_id": "$B", "description": {"type": "offer", "sdp": "v=0"}},
            [Field(("description", "sdp"), 32_000), Field(("description", "type"), 10_000, 0,
                                                          "description_type")], "ack"),
    "ice": ({"lobby_id": "$L", "peer_id": "$B",
             "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0",
                           "sdpMLineIndex": 0}},
            [Field(("candidate", "candidate"), 1000), Field(("candidate", "sdpMid"), 64),
             Field(("candidate", "usernameFragment"), 256)], "ack"),
    "ping": ({}, [], "pong"),
    # a bot session's
    "transcript": ({"lobby_id": "$L", "segment_id": "seg", "speaker_id": "$B", "text": "hello",
                    "final": True, "language": "en", "start": 1.0, "end": 2.0,
                    "replaces": ["seg0"]},
                   [Field(("text",), 4000, 1), Field(("language",), 16),
                    Field(("model",), 64), Field(("speaker_name",), 64),
                    Field(("segment_id",), 128, 1, "other_than:seg0"),
                    Field(("replaces", "0"), 128, 1, "other_than:seg")], "ack"),
    "bot_status": ({"bot_id": "nobot", "status": "live"},
                   [Field(("detail",), 1000), Field(("bot_id",), 64, 1)], "ack"),
    "provider_hello": ({"name": "fz", "capacity": 0, "kinds": [{"kind": "fz"}]},
                       [Field(("name",), 64, 1), Field(("kinds", "0", "description"), 500),
                        Field(("kinds", "0", "kind"), 64, 1)], "ack"),
}
BOT_TYPES = ("transcript", "bot_status", "provider_hello")


def expected_reply(type_: str, data: Any, fld: Field | None, value: Any, depth: int,
                   text: str) -> tuple[str, str | None]:
    """``(reply type, error code)`` as the docs promise it."""
    if depth > MAX_DEPTH or has_surrogate(json.loads(text)):
        return "error", "bad_json"
    if not isinstance(data, dict) or (isinstance(value, str) and value.startswith("$DEEP")):
        return "error", "invalid_payload"
    if fld is None:
        return TYPES[type_][2], None
    if not isinstance(value, str):
        return "error", "invalid_payload"
    if "\x00" in value or not fld.min_len <= len(value) <= fld.max_len:
        return "error", "invalid_payload"
    if fld.rule == "name" and not name_ok(value, 32):
        return "error", "name_invalid"
    if fld.rule == "lobby_name" and not name_ok(value, 48):
        return "error", "name_invalid"
    if fld.rule == "description_type" and value not in ("offer", "answer", "pranswer",
                                                         "rollback"):
        return "error", "invalid_payload"
    if fld.rule.startswith("other_than:") and value == fld.rule.split(":", 1)[1]:
        return "error", "invalid_payload"
    if fld.rule == "unknown_lobby":
        return "error", "lobby_not_found"
    if fld.rule == "not_member":
        return "error", "not_in_lobby"
    return TYPES[type_][2], None


# --- what to draw -----------------------------------------------------------------------------

SPECIALS = ["\x00", "\u200e", "\u200f", "\u202e", "\u2066", "\u061c", "\ud800", "\udbff",
            "\udc00", "\udfff", "é", "😀", "\n", " ", "a"]
chars = st.characters(exclude_categories=()) | st.sampled_from(SPECIALS)


def texts(fld: Field) -> st.SearchStrategy[str]:
    at_limits = st.tuples(st.sampled_from(sorted({max(fld.min_len - 1, 0), fld.min_len,
                                                  fld.max_len, fld.max_len + 1} - {0})),
                          chars).map(lambda t: "a" * (t[0] - 1) + t[1])
    return st.text(chars, max_size=30) | at_limits | st.just("")


def nested(depth: int) -> str:
    """A placeholder for ``depth`` nested lists, put in when the frame is written (the
    encoder here would hit Python's recursion limit first)."""
    return f"$DEEP{depth}"


def write_frame(frame: dict[str, Any]) -> str:
    text = json.dumps(frame)
    for depth in (5, 50, MAX_DEPTH_READ - 10, 2000):
        text = text.replace(f'"$DEEP{depth}"', "[" * depth + '"x"' + "]" * depth)
    return text


wrong_shapes = (st.integers(min_value=-2**70, max_value=2**70) | st.booleans()
                | st.floats(allow_nan=True, allow_infinity=True)
                | st.lists(st.integers(), max_size=3) | st.dictionaries(st.text(max_size=3),
                                                                         st.integers(), max_size=2)
                | st.sampled_from([5, 50, MAX_DEPTH_READ - 10, 2000]).map(lambda d: ("deep", d)))


@dataclass
class Case:
    type_: str
    data: Any
    fld: Field | None
    value: Any
    depth: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    type_ = draw(st.sampled_from(sorted(TYPES)))
    template, fields, _ = TYPES[type_]
    data: Any = json.loads(json.dumps(template))
    if draw(st.integers(0, 9)) == 0:  # the whole data of another shape
        shape = draw(wrong_shapes)
        if isinstance(shape, tuple):
            return Case(type_, nested(shape[1]), None, None, shape[1] + 2)
        if isinstance(shape, dict):
            shape = [shape]  # an object is a valid data shape: keep this one wrong
        return Case(type_, shape, None, None, 2)
    if not fields:
        return Case(type_, data, None, None, 2)
    fld = draw(st.sampled_from(fields))
    depth = 2 + len(fld.path)
    value: Any
    if draw(st.integers(0, 4)) == 0:
        value = draw(wrong_shapes)
        if isinstance(value, tuple):
            depth += value[1]
            value = nested(value[1])
    else:
        value = draw(texts(fld))
    target = data
    for key in fld.path[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if isinstance(target, list):
        target[int(fld.path[-1])] = value
    else:
        target[fld.path[-1]] = value
    if fld.rule == "unknown_lobby":
        del data["lobby_name"]  # join by id instead: exactly one of the two
    return Case(type_, data, fld, value, depth)


# --- the run ----------------------------------------------------------------------------------


@dataclass
class World:
    url: str
    lobby: str = ""
    bystander: str = ""
    chats: list[str] = field(default_factory=list)  # acknowledged chat texts, in order
    names: set[str] = field(default_factory=lambda: {"bystander"})  # name keys taken


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Any:
    data = tmp_path_factory.mktemp("untrusted") / "data"
    server = ServerProcess(data, VOICEBOT_PROVIDER_KEY=PROVIDER_KEY, VOICEBOT_GRACE="1",
                           **UNLIMITED, **backend_env(data))
    server.start()
    state = World(server.url)
    loop = asyncio.new_event_loop()

    async def start_bystander() -> tuple[SignalingClient, Inbox]:
        client = SignalingClient(ClientConfig(url=server.url))
        inbox = Inbox(client)
        await client.start(wait=10)
        await client.set_name("Bystander")
        state.lobby = (await client.join(lobby_name="fuzz lobby")).lobby.id
        state.bystander = client.session_id or ""
        return client, inbox

    bystander, inbox = loop.run_until_complete(start_bystander())
    # the bystander runs on its own loop between examples: keep it turning in a thread
    import threading
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(stop.wait()), daemon=True)
    thread.start()
    yield state, bystander, inbox, loop
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)
    loop.run_until_complete(bystander.close(drain=0))
    loop.close()
    server.stop()
    log = server.log()
    assert "Traceback" not in log and "handler failed" not in log, log[-3000:]


async def _session(http: aiohttp.ClientSession, url: str, bot: bool) -> str:
    return await new_token(http, url, {"bot": bot},
                           {"X-Provider-Key": PROVIDER_KEY} if bot else {})


async def run_cases(state: World, batch: list[Case], serial: int) -> None:
    bot = any(c.type_ in BOT_TYPES for c in batch)
    async with aiohttp.ClientSession() as http:
        token = await _session(http, state.url, bot)
        ws = await raw_login(http, state.url, token, via="header", timeout=10, max_msg_size=0)
        await raw_join(ws, f"Fuzz {serial}", timeout=10, lobby_id=state.lobby)
        for n, case in enumerate(batch):
            data = json.loads(json.dumps(case.data).replace('"$L"', json.dumps(state.lobby))
                              .replace('"$B"', json.dumps(state.bystander)))
            frame: dict[str, Any] = {"type": case.type_, "data": data, "id": f"q{n}"}
            if case.type_ == "set_name" and isinstance(data, dict) and data.get("name") == "Fz":
                data["name"] = f"Fz {serial}-{n}"  # a name of its own: no name_in_use
            text = write_frame(frame)
            want_type, want_code = expected_reply(case.type_, data, case.fld, case.value,
                                                  case.depth, text)
            await ws.send_str(text)
            await ws.send_str(json.dumps({"type": "ping", "id": f"probe{n}"}))
            replies = []
            while True:
                msg = await ws.receive(timeout=10)
                assert msg.type is aiohttp.WSMsgType.TEXT, (f"socket dropped after {text[:300]!r}",
                                                            msg)
                reply = json.loads(msg.data)
                if reply["type"] == "pong" and reply.get("id") == f"probe{n}":
                    break
                if reply.get("id") == f"q{n}" or reply["type"] == "error":
                    replies.append(reply)
            assert len(replies) == 1, (text[:300], replies)
            (reply,) = replies
            got = (reply["type"], reply["data"].get("code") if reply["type"] == "error" else None)
            name = data.get("name") if case.type_ == "set_name" and isinstance(data, dict) else None
            key = " ".join(unicodedata.normalize("NFKC", name).split()).casefold().replace(
                " ", "") if isinstance(name, str) else None
            if got == ("error", "name_in_use") and key in state.names:
                pass  # a valid name another session of this run holds (or held a moment ago)
            else:
                assert got == (want_type, want_code), (text[:300], reply)
            if got == ("session", None) and key is not None:
                state.names.add(key)
            if reply["type"] == "error":  # ref: the id, unless the frame could not be read
                assert reply["data"]["ref"] == (None if case.depth > MAX_DEPTH else f"q{n}"), \
                    reply
            if case.type_ == "chat" and want_type == "ack":
                assert isinstance(reply["data"]["result"]["message_id"], int)
                state.chats.append(data["text"])
        await ws.send_str(json.dumps({"type": "part", "data": {"lobby_id": state.lobby}}))
        await ws.close()


SERIAL = iter(range(10**9))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(cases(), min_size=1, max_size=6))
def test_every_frame_gets_the_documented_reply(world: Any, batch: list[Case]) -> None:
    state, _, _, _ = world
    asyncio.run(run_cases(state, batch, next(SERIAL)))


def test_nothing_unreadable_was_stored_and_the_bystander_kept_up(world: Any) -> None:
    state, bystander, inbox, loop = world

    async def check_bystander() -> list[str]:
        # the bystander is still in the lobby and can chat; it got every acknowledged chat
        await bystander.chat(state.lobby, "bystander still here")
        return [m.text for m in inbox.messages if type(m).__name__ == "Chat"]

    got = asyncio.run_coroutine_threadsafe(check_bystander(), loop).result(30)
    assert "bystander still here" in got
    assert [t for t in got if t in set(state.chats)] == state.chats  # in order, each intact

    async def read_back() -> None:
        async with aiohttp.ClientSession() as http:
            token = await _session(http, state.url, False)
            auth = {"Authorization": f"Bearer {token}"}
            url = f"{state.url}api/lobbies/{state.lobby}/"
            page: dict[str, Any] = {"next": {"after": 0}}
            stored = []
            while "next" in page:
                async with http.get(url + "messages", params={"limit": "500", **{
                        k: str(v) for k, v in page["next"].items()}}, headers=auth) as r:
                    assert r.status == 200, await r.text()
                    page = await r.json()
                    stored += page["messages"]
            for message in stored:  # what a strict reader takes: UTF-8, no NUL
                json.dumps(message, ensure_ascii=False).encode()
                assert "\x00" not in json.dumps(message, ensure_ascii=False)
            texts = [m["text"] for m in stored if m["kind"] == "chat"]
            assert [t for t in texts if t in set(state.chats)] == state.chats
            for fmt in ("json", "srt", "vtt", "txt"):
                async with http.get(url + "transcript", params={"format": fmt}) as r:
                    assert r.status == 200, await r.text()
                    (await r.read()).decode("utf-8")

    asyncio.run(read_back())
