"""Property-based fuzzing: whatever a client sends, it gets a precise answer and stays up."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz import FIELDS, TYPES, expected_error
from shared.client import SignalingClient
from shared.config import ClientConfig
from signaling.testing import ServerProcess

from .conftest import UNLIMITED, backend_env
from .helpers import raw_login

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2**64, max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=12)

envelopes = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | st.text(max_size=12)},
    optional={"data": st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
              | json_values,
              "id": st.none() | st.text(max_size=80) | st.integers()}).map(json.dumps)

frames = st.text(max_size=120) | json_values.map(json.dumps) | envelopes


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, backend: str) -> Any:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    server = ServerProcess(data, **UNLIMITED, **backend_env(data))
    server.start()
    yield server
    server.stop()
    log = server.log()
    assert "Traceback" not in log and "handler failed" not in log, log[-3000:]


async def exchange(url: str, batch: list[str]) -> None:
    async with aiohttp.ClientSession() as http:
        ws = await raw_login(http, url, timeout=10)
        for n, text in enumerate(batch):
            await ws.send_str(text)
            await ws.send_str(json.dumps({"type": "ping", "id": f"probe{n}"}))
            codes = []
            while True:
                msg = await ws.receive(timeout=10)
                assert msg.type is aiohttp.WSMsgType.TEXT, f"dropped after {text!r}"
                reply = json.loads(msg.data)
                if reply["type"] == "pong" and reply.get("id") == f"probe{n}":
                    break
                if reply["type"] == "error":
                    codes.append(reply["data"]["code"])
            expected = expected_error(text)
            if expected is not None:
                assert expected in codes, (text, codes)
        await ws.close()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(batch=st.lists(frames, min_size=1, max_size=12))
def test_random_frames_get_answers_and_the_socket_stays(fuzz_server: Any,
                                                        batch: list[str]) -> None:
    asyncio.run(exchange(fuzz_server.url, batch))


def test_bystander_is_unaffected_by_the_fuzzing(fuzz_server: Any) -> None:
    async def chat() -> None:
        client = SignalingClient(ClientConfig(url=fuzz_server.url))
        await client.start(wait=10)
        await client.set_name("Bystander")
        lobby = (await client.join(lobby_name="after fuzzing")).lobby.id
        assert await client.chat(lobby, "all good") > 0
        await client.close()

    asyncio.run(chat())
