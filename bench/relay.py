"""Signaling throughput and latency: our server against two baselines, in one run.

    python -m bench.relay                 # ~3 minutes
    python -m bench.relay --smoke         # seconds

Relay: N sessions in L lobbies; each sends ICE-sized messages to the next member of its lobby,
keeping a window of messages in flight (closed loop: the servers run flat out). The same load
runs against (a) our server, (b) a bare aiohttp WebSocket relay (the framework's ceiling, no
sessions, no validation, no lobbies) and (c) a python-socketio server doing the same relay.
Fan-out: chat in lobbies of 2, 8 and 16 members (ours stores every message durably first;
the bare baseline only forwards).

The load generator is a process of its own; it reports its CPU use so one can see it is not
the bottleneck. Servers and generator share the machine: on 2 cores each gets about one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from signaling.testing import ROOT, ServerProcess, free_port

PAD = "x" * 230  # an ICE candidate is 100-300 bytes


# --- baseline servers ------------------------------------------------------------------------------


def serve_bare(port: int) -> None:
    """The framework's ceiling: relay by id, broadcast by room, nothing else."""
    peers: dict[str, web.WebSocketResponse] = {}
    rooms: dict[str, set[str]] = defaultdict(set)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        me, room = request.query["id"], request.query.get("room", "")
        sock = web.WebSocketResponse(max_msg_size=1 << 20)
        await sock.prepare(request)
        peers[me] = sock
        rooms[room].add(me)
        try:
            async for msg in sock:
                frame = json.loads(msg.data)
                if "to" in frame:
                    target = peers.get(frame["to"])
                    if target is not None:
                        await target.send_str(msg.data)
                else:
                    for member in list(rooms[room]):
                        await peers[member].send_str(msg.data)
        finally:
            peers.pop(me, None)
            rooms[room].discard(me)
        return sock

    app = web.Application()
    app.router.add_get("/ws", ws)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def serve_socketio(port: int) -> None:
    import socketio

    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False,
                               max_http_buffer_size=1 << 20)
    sids: dict[str, str] = {}

    @sio.event
    async def hello(sid: str, data: dict[str, str]) -> None:
        sids[data["id"]] = sid
        await sio.enter_room(sid, data["room"])
        await sio.emit("ready", {}, to=sid)

    @sio.event
    async def relay(sid: str, data: dict[str, Any]) -> None:
        target = sids.get(data["to"])
        if target is not None:
            await sio.emit("relay", data, to=target)

    @sio.event
    async def chat(sid: str, data: dict[str, Any]) -> None:
        await sio.emit("chat", data, room=data["room"])

    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


# --- the load generator (its own process) ------------------------------------------------------------


class Load:
    """N clients; each sends to its ring neighbour, keeping ``window`` messages in flight."""

    def __init__(self, n: int, lobbies: int, window: int, mode: str) -> None:
        self.n, self.lobbies, self.window, self.mode = n, lobbies, window, mode
        self.inflight = [0] * n
        self.latencies: list[float] = []
        self.delivered = 0
        self.measuring = False
        self.wakeups = [asyncio.Event() for _ in range(n)]

    def lobby_of(self, i: int) -> int:
        return i % self.lobbies

    def neighbour(self, i: int) -> int:
        members = [j for j in range(self.n) if self.lobby_of(j) == self.lobby_of(i)]
        return members[(members.index(i) + 1) % len(members)]

    def received(self, sender: int, sent_at: float, receiver: int) -> None:
        if self.measuring:
            self.delivered += 1
            self.latencies.append(time.perf_counter() - sent_at)
        # relay: the target got it; chat: it fanned out, and the sender got its own copy
        if self.mode == "relay" or receiver == sender:
            self.inflight[sender] -= 1
            self.wakeups[sender].set()

    async def pump(self, i: int, send: Any) -> None:
        while True:
            while self.inflight[i] >= self.window:
                self.wakeups[i].clear()
                await self.wakeups[i].wait()
            self.inflight[i] += 1
            await send(i, self.neighbour(i), time.perf_counter())

    def result(self, seconds: float, cpu: float) -> dict[str, Any]:
        lat = sorted(self.latencies) or [float("nan")]
        return {"msgs_per_s": self.delivered / seconds, "p50_ms": lat[len(lat) // 2] * 1e3,
                "p99_ms": lat[int(len(lat) * 0.99)] * 1e3, "generator_cpu": cpu / seconds}


async def connect_ours(url: str, load: Load) -> tuple[list[Any], Any]:
    from shared import protocol as p
    from shared.client import ClientConfig, SignalingClient

    clients: list[SignalingClient] = []
    lobby_ids: dict[int, str] = {}
    for i in range(load.n):
        c = SignalingClient(ClientConfig(url=url, queue_size=100_000))

        def on_ice(msg: p.Message, i: int = i) -> None:
            assert isinstance(msg, p.Ice) and msg.candidate is not None
            sender, sent_at = msg.candidate.sdpMid.split("|")  # type: ignore[union-attr]
            load.received(int(sender), float(sent_at), i)

        def on_chat(msg: p.Message, i: int = i) -> None:
            assert isinstance(msg, p.Chat)
            if load.mode == "chat":
                sender, sent_at = msg.text.split("|")[:2]
                load.received(int(sender), float(sent_at), i)

        c.on(p.MessageType.ICE, on_ice)
        c.on(p.MessageType.CHAT, on_chat)
        await c.start(wait=30)
        await c.set_name(f"{load.mode} {os.getpid()} {i}")  # unique across runs
        lobby = load.lobby_of(i)
        if lobby in lobby_ids:
            await c.join(lobby_id=lobby_ids[lobby])
        else:
            lobby_ids[lobby] = (await c.join(lobby_name=f"{load.mode} {os.getpid()} {lobby}")).lobby.id
        clients.append(c)
    ids = [c.session_id for c in clients]

    async def send(i: int, to: int, now: float) -> None:
        client = clients[i]
        lobby = lobby_ids[load.lobby_of(i)]
        if load.mode == "relay":
            client.send(p.Ice(lobby_id=lobby, peer_id=ids[to] or "", candidate=p.IceCandidate(
                candidate="candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host " + PAD,
                sdpMid=f"{i}|{now}", sdpMLineIndex=0)))
        else:
            client.send(p.Chat(lobby_id=lobby, text=f"{i}|{now}|{PAD[:100]}"))
        await asyncio.sleep(0)

    async def close() -> None:
        for c in clients:
            await c.close(drain=0)

    return [send], close


async def connect_bare(url: str, load: Load) -> tuple[list[Any], Any]:
    http = aiohttp.ClientSession()
    socks = []
    for i in range(load.n):
        ws = await http.ws_connect(f"{url}ws", params={"id": str(i), "room": str(load.lobby_of(i))})
        socks.append(ws)

    async def reader(ws: aiohttp.ClientWebSocketResponse, i: int) -> None:
        async for msg in ws:
            frame = json.loads(msg.data)
            load.received(frame["from"], frame["ts"], i)

    tasks = [asyncio.create_task(reader(ws, i)) for i, ws in enumerate(socks)]

    async def send(i: int, to: int, now: float) -> None:
        frame = {"from": i, "ts": now, "pad": PAD}
        if load.mode == "relay":
            frame["to"] = str(to)
        await socks[i].send_str(json.dumps(frame))

    async def close() -> None:
        for t in tasks:
            t.cancel()
        for ws in socks:
            await ws.close()
        await http.close()

    return [send], close


async def connect_sio(url: str, load: Load) -> tuple[list[Any], Any]:
    import socketio

    clients = []
    for i in range(load.n):
        c = socketio.AsyncClient(reconnection=False)
        ready = asyncio.Event()
        c.on("ready", lambda data, ready=ready: ready.set())
        c.on("relay", lambda data, i=i: load.received(data["from"], data["ts"], i))
        c.on("chat", lambda data, i=i: load.received(data["from"], data["ts"], i))
        await c.connect(url, transports=["websocket"])
        await c.emit("hello", {"id": str(i), "room": str(load.lobby_of(i))})
        await asyncio.wait_for(ready.wait(), 10)
        clients.append(c)

    async def send(i: int, to: int, now: float) -> None:
        data = {"from": i, "ts": now, "pad": PAD, "to": str(to), "room": str(load.lobby_of(i))}
        await clients[i].emit("relay" if load.mode == "relay" else "chat", data)

    async def close() -> None:
        for c in clients:
            await c.disconnect()

    return [send], close


async def generate(kind: str, url: str, n: int, lobbies: int, seconds: float, window: int,
                   mode: str) -> dict[str, Any]:
    load = Load(n, lobbies, window, mode)
    connect = {"ours": connect_ours, "bare": connect_bare, "sio": connect_sio}[kind]
    (send,), close = await asyncio.wait_for(connect(url, load), 60 + n)
    pumps = [asyncio.create_task(load.pump(i, send)) for i in range(n)]
    await asyncio.sleep(min(2.0, seconds / 3))  # warm up
    load.measuring = True
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    load.measuring = False
    cpu, elapsed = time.process_time() - cpu0, time.perf_counter() - t0
    for t in pumps:
        t.cancel()
    try:
        await asyncio.wait_for(close(), 15)
    except asyncio.TimeoutError:  # the figures are in; a slow goodbye must not hang the run
        print("closing the clients timed out", file=sys.stderr)
    return load.result(elapsed, cpu)


# --- orchestration -------------------------------------------------------------------------------


def start_baseline(flag: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.relay", flag, str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(100):
        try:
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{flag} did not start")


def run_load(kind: str, url: str, n: int, lobbies: int, seconds: float, window: int,
             mode: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.relay", "--generate", kind, url, str(n),
                          str(lobbies), str(seconds), str(window), mode], cwd=ROOT,
                         capture_output=True, text=True, timeout=seconds * 5 + 90)
    if out.returncode != 0:
        raise RuntimeError(f"generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


UNLIMITED = {f"VOICEBOT_{k}": "1000000" for k in (
    "MSG_RATE", "MSG_BURST", "CHAT_RATE", "CHAT_BURST", "CREATE_RATE", "CREATE_BURST",
    "IP_SESSION_RATE", "IP_SESSION_BURST", "IP_UPGRADE_RATE", "IP_UPGRADE_BURST")}


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--lobbies", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--serve-bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-sio", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--generate", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return 0
    if args.serve_sio:
        serve_socketio(args.serve_sio)
        return 0
    if args.generate:
        kind, url, n, lobbies, seconds, window, mode = args.generate
        result = asyncio.run(generate(kind, url, int(n), int(lobbies), float(seconds),
                                      int(window), mode))
        print(json.dumps(result), flush=True)
        os._exit(0)  # skip interpreter teardown of leftover client tasks

    n, lobbies, seconds = ((8, 2, 2.0) if args.smoke else
                           (args.sessions, args.lobbies, args.seconds))
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    ours = ServerProcess(workdir / "data", **UNLIMITED)
    ours.start()
    bare, bare_url = start_baseline("--serve-bare")
    sio, sio_url = start_baseline("--serve-sio")
    try:
        print(f"== relay: {n} sessions in {lobbies} lobbies, window {args.window}, "
              f"{seconds:.0f} s each")
        results = {}
        for name, kind, url in (("ours", "ours", ours.url), ("bare aiohttp", "bare", bare_url),
                                ("python-socketio", "sio", sio_url)):
            results[name] = run_load(kind, url, n, lobbies, seconds, args.window, "relay")
        rows = [["server", "msg/s", "p50 ms", "p99 ms", "generator CPU"]]
        for name, r in results.items():
            rows.append([name, f"{r['msgs_per_s']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                         f"{r['generator_cpu'] * 100:.0f} %"])
        print(table(rows))
        ours_r = results["ours"]["msgs_per_s"]
        print(f"ours / bare aiohttp = {ours_r / results['bare aiohttp']['msgs_per_s']:.2f} "
              f"(target >= 0.8); ours / python-socketio = "
              f"{ours_r / results['python-socketio']['msgs_per_s']:.2f} (target >= 2)")

        print(f"\n== fan-out: chat, {seconds:.0f} s per lobby size (ours stores each message "
              "durably before delivering it)")
        rows = [["members", "ours deliveries/s", "ours p99 ms", "bare deliveries/s", "bare p99 ms"]]
        for size in ((2,) if args.smoke else (2, 8, 16)):
            o = run_load("ours", ours.url, size, 1, seconds, 1, "chat")
            b = run_load("bare", bare_url, size, 1, seconds, 1, "chat")
            rows.append([str(size), f"{o['msgs_per_s']:.0f}", f"{o['p99_ms']:.1f}",
                         f"{b['msgs_per_s']:.0f}", f"{b['p99_ms']:.1f}"])
        print(table(rows))
    finally:
        ours.stop()
        for proc in (bare, sio):
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
