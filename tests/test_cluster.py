"""Two signaling nodes (real processes) on one real redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig
from signaling.hub import HUB
from signaling.testing import ROOT, RedisServer, ServerProcess, free_port

from .conftest import PROVIDER_KEY, Clients, Inbox
from .helpers import exchange_audio, wait_until

NODE_TTL = 1.5


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[ServerProcess]]:
    procs = []
    for name in ("a", "b"):
        proc = ServerProcess(tmp_path / name, VOICEBOT_REDIS_URL=redis_server.url,
                             VOICEBOT_REDIS_PREFIX="cluster", VOICEBOT_NODE_ID=name,
                             VOICEBOT_NODE_TTL=str(NODE_TTL), VOICEBOT_GRACE="3",
                             VOICEBOT_SWEEP_INTERVAL="0.2", VOICEBOT_PROVIDER_KEY=PROVIDER_KEY)
        proc.start()
        procs.append(proc)
    yield procs
    for proc in procs:
        proc.stop()


@pytest.fixture
async def pools(nodes: list[ServerProcess]) -> Any:
    made = [Clients(node.url) for node in nodes]
    yield made
    for pool in made:
        await pool.close()


def others(inbox: Inbox, lobby: str, count: int) -> Any:
    return lambda m: m.lobby.id == lobby and len(m.participants) == count and all(
        x.connected for x in m.participants)


async def test_three_clients_on_two_nodes_share_a_lobby(pools: list[Clients]) -> None:
    a, b = pools
    ann, ann_inbox = await a.new("Ann")
    bob, bob_inbox = await b.new("Bob")
    cid, cid_inbox = await a.new("Cid")
    lobby = (await ann.join(lobby_name="across")).lobby.id
    await bob.join(lobby_name="across")  # by name: the lobby made on node a is known on b
    await cid.join(lobby_id=lobby)
    for inbox in (ann_inbox, bob_inbox, cid_inbox):
        await inbox.wait_for(p.LobbyState, others(inbox, lobby, 3))
    # the joiner offers to everyone, whatever their node
    offers = {m.peer.session_id for m in cid_inbox.of(p.PeerAdded, create_offer=True)}
    assert offers == {ann.session_id, bob.session_id}
    await bob_inbox.wait_for(p.PeerAdded, lambda m: m.peer.session_id == cid.session_id)
    # SDP and ICE relayed from a to b and back
    desc = p.SessionDescription(type="offer", sdp="v=0 cid-to-bob")
    await cid.request(p.Sdp(lobby_id=lobby, peer_id=bob.session_id, description=desc))
    got = await bob_inbox.wait_for(p.Sdp, peer_id=cid.session_id)
    assert got.description.sdp == "v=0 cid-to-bob"
    cand = p.IceCandidate(candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host", sdpMid="0")
    await bob.request(p.Ice(lobby_id=lobby, peer_id=cid.session_id, candidate=cand))
    assert (await cid_inbox.wait_for(p.Ice, peer_id=bob.session_id)).candidate == cand
    # chat reaches every member and is in the history a newcomer on the other node gets
    ids = [await bob.chat(lobby, "hello from b"), await ann.chat(lobby, "hello from a")]
    for inbox in (ann_inbox, bob_inbox, cid_inbox):
        await inbox.wait_for(p.Chat, text="hello from b")
        await inbox.wait_for(p.Chat, text="hello from a")
    dee, dee_inbox = await b.new("Dee")
    await dee.join(lobby_id=lobby)
    history = [m.message_id for m in await _wait_chats(dee_inbox, 2)]
    assert history == ids
    # names are unique across nodes
    with pytest.raises(Exception, match="in use"):
        await (await b.new())[0].set_name("Ann")
    # a part on one node is seen on the other
    await cid.part(lobby)
    await bob_inbox.wait_for(p.PeerRemoved, peer_id=cid.session_id)


async def _wait_chats(inbox: Inbox, n: int) -> list[p.Chat]:
    await inbox.wait_for(p.Chat, lambda m: len(inbox.of(p.Chat)) >= n)
    return inbox.of(p.Chat)


async def test_aiortc_peers_on_two_nodes_exchange_audio(pools: list[Clients]) -> None:
    a, b = pools
    offerer, offerer_inbox = await a.new("Offerer")
    answerer, answerer_inbox = await b.new("Answerer")
    await exchange_audio(offerer, offerer_inbox, answerer, answerer_inbox)


async def test_killed_node_clients_resume_on_the_other(nodes: list[ServerProcess]) -> None:
    node_a, node_b = nodes
    fast = {"backoff_initial": 0.05, "backoff_max": 0.5, "receive_timeout": 5.0}
    mover = SignalingClient(ClientConfig(url=node_a.url, fallback_urls=(node_b.url,), **fast))
    ghost = SignalingClient(ClientConfig(url=node_a.url, **fast))  # knows no other node
    stayer = SignalingClient(ClientConfig(url=node_b.url, **fast))
    mover_inbox, stayer_inbox = Inbox(mover), Inbox(stayer)
    try:
        for client, name in ((mover, "Mover"), (ghost, "Ghost"), (stayer, "Stayer")):
            await client.start(wait=10)
            await client.set_name(name)
        lobby = (await stayer.join(lobby_name="failover")).lobby.id
        await mover.join(lobby_id=lobby)
        await ghost.join(lobby_id=lobby)
        acked = [await mover.chat(lobby, f"before {i}") for i in range(5)]
        session = mover.session_id
        node_a.kill()
        killed = time.monotonic()
        await mover.wait_connected(10)
        await mover_inbox.wait_for(p.LobbyState, lambda m: m.lobby.id == lobby and len(
            mover_inbox.of(p.LobbyState)) > 1)
        assert time.monotonic() - killed < 5.0
        assert mover.session_id == session  # the same session, resumed on node b
        acked.append(await mover.chat(lobby, "after"))
        await stayer_inbox.wait_for(p.Chat, text="after")
        stored = [m.message_id for m in stayer_inbox.of(p.Chat)]
        assert stored == acked  # every acknowledged message, once, in order
        # the client that did not come back: disconnected after the node's heartbeat runs out,
        # then removed from the lobby after the grace period, for everyone
        await stayer_inbox.wait_for(p.LobbyState, lambda m: any(
            x.session_id == ghost.session_id and not x.connected for x in m.participants),
            timeout=NODE_TTL + 5)
        await stayer_inbox.wait_for(p.PeerRemoved, peer_id=ghost.session_id, timeout=10)
        await mover_inbox.wait_for(p.PeerRemoved, peer_id=ghost.session_id, timeout=10)
    finally:
        for client in (mover, ghost, stayer):
            await client.close(drain=0)


async def test_redis_restart_loses_nothing_acknowledged(nodes: list[ServerProcess],
                                                        redis_server: RedisServer) -> None:
    node_a, node_b = nodes
    a = SignalingClient(ClientConfig(url=node_a.url, backoff_max=0.5))
    b = SignalingClient(ClientConfig(url=node_b.url, backoff_max=0.5))
    b_inbox = Inbox(b)
    try:
        for client, name in ((a, "Ann"), (b, "Bob")):
            await client.start(wait=10)
            await client.set_name(name)
        lobby = (await a.join(lobby_name="restart")).lobby.id
        await b.join(lobby_id=lobby)
        acked = [await a.chat(lobby, f"before {i}") for i in range(10)]
        redis_server.kill()  # a crash: only what was fsynced survives
        await asyncio.sleep(0.5)
        redis_server.start()
        started = time.monotonic()
        acked.append(await a.chat(lobby, "after the restart"))
        assert time.monotonic() - started < 10
        await b_inbox.wait_for(p.Chat, text="after the restart", timeout=15)
        async with aiohttp.ClientSession() as http:
            async with http.get(node_b.url + f"api/lobbies/{lobby}/messages",
                                params={"limit": "50"}) as r:
                body = await r.json()
        assert [m["message_id"] for m in body["messages"]] == acked
        # both nodes still route across and follow each other's changes: a relay from b to a,
        # a newcomer on a seen from b
        await b.request(p.Sdp(lobby_id=lobby, peer_id=a.session_id or "",
                              description=p.SessionDescription(type="offer", sdp="v=0 again")))
        c = SignalingClient(ClientConfig(url=node_a.url))
        await c.start(wait=10)
        await c.set_name("Cy")
        await c.join(lobby_id=lobby)
        await b_inbox.wait_for(p.PeerAdded, lambda m: m.peer.session_id == c.session_id)
        await c.close(drain=0)
    finally:
        await a.close(drain=0)
        await b.close(drain=0)


async def test_bot_on_a_provider_of_the_other_node(nodes: list[ServerProcess],
                                                   provider_process: Any) -> None:
    node_a, node_b = nodes
    provider_process(node_b.url, name="b-provider")
    pool = Clients(node_a.url)
    try:
        human, inbox = await pool.new("Human")
        lobby = (await human.join(lobby_name="bots across")).lobby.id
        async with aiohttp.ClientSession() as http:
            for _ in range(100):  # the provider registers with node b
                async with http.get(node_a.url + "api/bots") as r:
                    if (await r.json())["providers"]:
                        break
                await asyncio.sleep(0.1)
            async with http.post(node_a.url + f"api/lobbies/{lobby}/bots",
                                 json={"kind": "echo"},
                                 headers={"Authorization": f"Bearer {human.config.token}"}) as r:
                assert r.status == 201, await r.text()
        await inbox.wait_for(p.BotStatus, status="live", timeout=30)
        added = await inbox.wait_for(p.PeerAdded, timeout=30)
        assert added.peer.bot
    finally:
        await pool.close()


def test_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "signaling.cli", "serve", "--data-dir",
                          str(tmp_path), "--port", str(free_port())], cwd=ROOT,
                         env=os.environ | {"VOICEBOT_REDIS_URL":
                                           f"redis://127.0.0.1:{free_port()}/0"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "cannot reach Redis" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.backends("redis")
async def test_a_change_that_cannot_be_applied_resyncs_the_node(server: TestServer) -> None:
    """Another node's change that this one fails to apply (here: a malformed record) makes it
    load the whole picture anew, rather than differ from the others from then on."""
    cluster = server.app[HUB].cluster
    assert cluster is not None and cluster.on_resync is not None
    resync, resyncs = cluster.on_resync, []

    async def counted() -> None:
        resyncs.append(time.monotonic())
        await resync()

    cluster.on_resync = counted
    await cluster.redis.publish(cluster.changes_channel, json.dumps({"op": "lobby",
                                                                     "o": "another-node"}))
    await wait_until(lambda: resyncs, 10, "a resync")
    assert server.app[HUB].snapshot is not None  # loaded, and the node goes on
