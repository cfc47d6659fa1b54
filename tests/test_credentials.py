"""No credential in any log line: a whole session of `voicebot up` at DEBUG, every way a client
can present its token, the provider and its bots, the admin API, refused attempts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig
from signaling.logs import redact
from signaling.testing import free_port

from .conftest import MEDIA, ROOT
from .helpers import new_token, raw_join, raw_login

ADMIN = "admin-5ecret-that-must-not-leak"
KEY = "provider-5ecret-that-must-not-leak"
TOKEN_SHAPE = re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{43}(?![A-Za-z0-9_\-])")


def test_redact_blanks_every_form_of_a_credential() -> None:
    token = "Zq3x_" + "a" * 38
    for line in (f"GET /ws?token={token} 101", f"GET /ws?x=1&TOKEN={token}&y=2",
                 f"Authorization: Bearer {token}", f"protocols voicebot.bearer.{token}",
                 f'{{"type": "bot_start", "data": {{"token": "{token}"}}}}',
                 f"{{'token': '{token}'}}"):
        assert token not in redact(line), line
    assert redact("nothing secret here: wrong password for this name") == \
        "nothing secret here: wrong password for this name"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_credential_in_the_log_of_a_whole_session(tmp_path: Path,
                                                           log_format: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = tmp_path / "up.log"
    env = os.environ | {"VOICEBOT_PROVIDER_KEY": KEY, "VOICEBOT_ADMIN_TOKEN": ADMIN,
                        "VOICEBOT_AUTO_BOTS": "echo", "VOICEBOT_MEDIA_DIRS": str(MEDIA)}
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "signaling.cli", "--log-level", "DEBUG", "--log-format",
             log_format, "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    tokens: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            while True:  # ready: the provider is there with its kinds
                try:
                    async with http.get(url + "api/health") as r:
                        if (await r.json()).get("ready"):
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                await asyncio.sleep(0.2)
            # a browser-style client: the token as a subprotocol, then the old ?token= way
            token = await new_token(http, url, {})
            tokens.append(token)
            ws = await raw_login(http, url, token, via="subprotocol", timeout=10)
            assert ws.protocol == "voicebot.v1"
            lobby = await raw_join(ws, "Browser", timeout=10, lobby_name="secrets")
            await ws.close()
            ws = await raw_login(http, url, token, timeout=10)
            # a tool with the shared client (the Authorization header)
            tool = SignalingClient(ClientConfig(url=url, name="Tool"))
            await tool.start(wait=10)
            tokens.append(tool.config.token or "")
            await tool.set_name("Tool")
            await tool.join(lobby_id=lobby)
            await tool.chat(lobby, "hello")
            # a bot added by hand, besides the automatic echo bot
            auth = {"Authorization": f"Bearer {token}"}
            async with http.post(url + f"api/lobbies/{lobby}/bots", headers=auth, json={
                    "kind": "player", "config": {"path": str(MEDIA / "short.wav")}}) as r:
                assert r.status == 201, await r.text()
            deadline = time.monotonic() + 60
            while True:
                async with http.get(url + f"api/lobbies/{lobby}/bots") as r:
                    bots = (await r.json())["bots"]
                if len(bots) == 2 and all(b["status"] == "live" for b in bots):
                    break
                assert time.monotonic() < deadline, bots
                await asyncio.sleep(0.2)
            # the admin API, right and wrong, and refused credentials of every kind
            admin = {"Authorization": f"Bearer {ADMIN}"}
            for path in ("sessions", "bots", "providers", "lobbies"):
                async with http.get(url + "api/admin/" + path, headers=admin) as r:
                    assert r.status == 200
            async with http.post(url + "api/admin/integrity", headers=admin) as r:
                assert r.status == 200
            async with http.get(url + "api/admin/sessions",
                                headers={"Authorization": "Bearer " + ADMIN[::-1]}) as r:
                assert r.status == 401
            forged = "F" * 43
            tokens.append(forged)
            async with http.get(url + "ws", params={"token": forged}) as r:
                assert r.status == 401
            async with http.post(url + "api/sessions", json={"bot": True},
                                 headers={"X-Provider-Key": KEY[::-1]}) as r:
                assert r.status == 403
            await tool.request(p.Ping())
            await tool.close()
            await ws.close()
    finally:
        proc.terminate()
        proc.wait(30)
    log = log_path.read_text(errors="replace")
    assert "bot plugins" in log and "connected from" in log and "GET /ws" in log, log[-2000:]
    for secret in (ADMIN, KEY, ADMIN[::-1], KEY[::-1], *tokens):
        assert secret not in log, secret
    # bots' tokens are never seen outside: nothing shaped like a token may show at all
    assert not TOKEN_SHAPE.findall(log), TOKEN_SHAPE.findall(log)[:5]
    if log_format == "json":
        for line in log.splitlines():
            if line.startswith("{"):
                json.loads(line)
