"""ICE servers and HTTPS: one list for everyone, TURN credentials a real coturn accepts and
refuses as it should, no third-party server by default, and bad settings refused at start."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from aioice import turn
from aioice.stun import TransactionFailed

from shared import protocol as p
from signaling import ice
from signaling.hub import HUB
from signaling.testing import ProviderProcess, ServerProcess, free_port

from .conftest import MEDIA, PROVIDER_KEY, ROOT, Clients, start_server
from .helpers import api

SECRET = "turn-shared-secret-for-tests"


def test_urls_and_settings_are_checked() -> None:
    for good in ("stun:turn.example.org", "stun:198.18.0.1:3478", "turn:[2001:db8::1]:3478",
                 "turn:turn.example.org:3478?transport=tcp", "turns:turn.example.org:443"):
        assert ice.parse_url(good).text == good
    for bad in ("http://turn.example.org", "turn:", "stun:host:99999", "stun:host?transport=udp",
                "turn:host?transport=sctp", "turn:host name"):
        with pytest.raises(ice.IceConfigError):
            ice.parse_url(bad)
    with pytest.raises(ice.IceConfigError, match="TURN_SECRET"):
        ice.check("", "turn:host", None, 3600)
    with pytest.raises(ice.IceConfigError, match="turn_urls"):
        ice.check("turn:host", "", None, 3600)
    with pytest.raises(ice.IceConfigError, match="turn_ttl"):
        ice.check("", "turn:host", "s", 10)


def test_credentials_are_the_turn_rest_scheme() -> None:
    username, credential = ice.turn_credential("s3cret", "9f2c4e1ab3d07765", 1_800_000_000)
    assert username == "1800000000:9f2c4e1ab3d07765"
    expected = hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()
    assert base64.b64decode(credential) == expected
    servers, expires = ice.ice_servers("", "", None, 3600, "abc", 1000.0)
    assert servers == [] and expires is None  # nothing configured: host candidates only
    servers, expires = ice.ice_servers("stun:a:3478", "turn:a:3478?transport=udp,turns:a:443",
                                       "k", 600, "abc", 1000.0)
    assert servers[0] == {"urls": ["stun:a:3478"]} and expires == 1600.0
    assert servers[1]["urls"] == ["turn:a:3478?transport=udp", "turns:a:443"]
    assert servers[1]["username"] == "1600:abc"


@pytest.mark.backends("sqlite")
async def test_every_session_gets_its_own_credential_and_a_fresh_one_in_time(
        tmp_path: Path, backend: str) -> None:
    srv = await start_server(tmp_path / "data", stun_urls="stun:198.18.0.1:3478",
                             turn_urls="turn:198.18.0.1:3478?transport=udp",
                             turn_secret=SECRET, turn_ttl=600.0)
    pool = Clients(str(srv.make_url("/")))
    try:
        a, inbox = await pool.new("A")
        b, _ = await pool.new("B")
        for client in (a, b):
            stun, turn_server = client.ice_servers
            assert stun.urls == ["stun:198.18.0.1:3478"] and stun.username is None
            expires, sid = turn_server.username.split(":")
            assert sid == client.session_id and 590 <= int(expires) - time.time() <= 600
            assert turn_server.credential == ice.turn_credential(SECRET, sid, int(expires))[1]
        # past half its life, each connection is sent a new one, before it expires
        hub = srv.app[HUB]
        assert hub.renew_ice() == 0
        assert hub.renew_ice(now=time.time() + 301) == 2
        fresh = await inbox.wait_for(p.IceServers)
        assert fresh.expires is not None and fresh.expires > time.time() + 590
        assert a.ice_servers == fresh.ice_servers  # the client uses the new list from now on
    finally:
        await pool.close()
        await srv.close()


# --- a real coturn --------------------------------------------------------------------------


@pytest.fixture
def coturn(tmp_path: Path) -> Any:
    binary = shutil.which("turnserver")
    if binary is None:
        raise RuntimeError("turnserver is missing: apt-get install coturn (bash .ci/run does)")
    port = free_port()
    log = tmp_path / "turn.log"
    proc = subprocess.Popen(
        [binary, "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
         f"--listening-port={port}", "--use-auth-secret", f"--static-auth-secret={SECRET}",
         "--realm=voicebot.test", "--no-tls", "--no-dtls", "--no-cli", "--fingerprint",
         "--allow-loopback-peers", f"--log-file={log}", "--simple-log", "--no-stdout-log",
         "--min-port=50000", "--max-port=50100", f"--pidfile={tmp_path / 'turn.pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    yield ("127.0.0.1", port)
    proc.terminate()
    proc.wait(10)


async def allocate(server: tuple[str, int], username: str, password: str) -> bool:
    """Whether coturn grants a relay allocation to these credentials."""
    try:
        transport, _ = await asyncio.wait_for(turn.create_turn_endpoint(
            asyncio.DatagramProtocol, server_addr=server, username=username, password=password,
            lifetime=60), 10)
    except TransactionFailed:
        return False
    transport.close()
    return True


async def test_coturn_takes_our_credentials_and_refuses_forged_or_expired_ones(
        coturn: tuple[str, int]) -> None:
    now = time.time()
    servers, _ = ice.ice_servers("", f"turn:{coturn[0]}:{coturn[1]}", SECRET, 600, "sessionA", now)
    good = servers[0]
    assert await allocate(coturn, good["username"], good["credential"])
    # forged: a credential made with another secret
    forged = ice.turn_credential("not-the-secret", "sessionA", int(now + 600))
    assert not await allocate(coturn, *forged)
    # expired: a credential whose time is up
    expired = ice.turn_credential(SECRET, "sessionA", int(now - 10))
    assert not await allocate(coturn, *expired)
    # bound to its session: the same credential under another session's name is refused
    other = good["username"].replace("sessionA", "sessionB")
    assert not await allocate(coturn, other, good["credential"])


# --- nothing to a third party ------------------------------------------------------------------


async def test_with_nothing_configured_a_bot_offers_host_candidates_only(
        server: TestServer, clients: Clients, provider_process: Any) -> None:
    url = str(server.make_url("/"))
    provider_process(url, plugins=("player",))
    from signaling.dispatch import DISPATCHER

    deadline = time.monotonic() + 60
    while not server.app[DISPATCHER].providers:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    human, inbox = await clients.new("Host")
    assert human.ice_servers == []
    lobby = (await human.join(lobby_name="local only")).lobby.id
    status, bot = await api("POST", f"{url}api/lobbies/{lobby}/bots", human.config.token,
                            {"kind": "player", "config": {"path": str(MEDIA / "short.wav")}})
    assert status == 201, bot
    offer = await inbox.wait_for(p.Sdp, lambda m: m.description.type == "offer", timeout=60)
    lines = [line for line in offer.description.sdp.splitlines() if line.startswith("a=candidate")]
    assert lines and all(" typ host" in line for line in lines), lines


# --- HTTPS and start-up errors -------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "signaling.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=60, env=os.environ | (env or {}))


@pytest.mark.parametrize("args,env,words", [
    (["--stun-urls", "http://stun.example.org"], {}, "not a STUN or TURN URL"),
    (["--turn-urls", "turn:turn.example.org:3478"], {}, "TURN_SECRET"),
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], {},
     "cannot use the certificate"),
    (["--tls-cert", "/nonexistent/cert.pem"], {}, "go together"),
    (["--ice-policy", "relay"], {}, "needs turn_urls"),
    (["--ice-policy", "direct"], {}, "must be all or relay"),
])
def test_bad_settings_stop_the_server_before_it_starts(tmp_path: Path, args: list[str],
                                                       env: dict[str, str], words: str) -> None:
    port = free_port()
    done = run_cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"), *args,
                   env=env)
    assert done.returncode == 2, done.stderr
    assert words in done.stderr, done.stderr
    assert "serving on" not in done.stderr
    assert not (tmp_path / "data" / "voicebot.sqlite3").exists()  # nothing half-started


def test_self_signed_https_and_a_provider_that_verifies_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    server = ServerProcess(data, port=port, VOICEBOT_TLS_SELF_SIGNED="1",
                           VOICEBOT_PROVIDER_KEY=PROVIDER_KEY)
    assert server.url == f"https://127.0.0.1:{port}/"
    cert = data / "tls" / "cert.pem"
    server.start(ca_file=cert)
    provider = None
    try:
        assert "SHA-256 fingerprint" in server.log() and "serving on https://" in server.log()
        provider = ProviderProcess(server.url, key=PROVIDER_KEY, plugins=("echo",),
                                   extra_args=("--ca-file", str(cert)))
        health = None
        deadline = time.monotonic() + 60
        import json
        import ssl
        import urllib.error
        import urllib.request
        context = ssl.create_default_context(cafile=str(cert))
        while time.monotonic() < deadline:
            health = json.loads(urllib.request.urlopen(server.url + "api/health",
                                                       context=context).read())
            if health["providers"]:
                break
            time.sleep(0.2)
        assert health and health["providers"] == 1, provider.log()
        # the certificate is kept: a restart serves the same one
        fingerprint = server.log().split("fingerprint ")[1].split()[0]
        server.stop()
        server.start(ca_file=cert)
        assert fingerprint in server.log()
        # and a client that does not trust it is refused
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(server.url + "api/health",
                                   context=ssl.create_default_context()).read()
    finally:
        if provider is not None:
            provider.stop()
        server.stop()
