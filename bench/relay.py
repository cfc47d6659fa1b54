"""Signaling throughput and latency: our server against two baselines, in one run.

    python -m bench.relay                     # ~2.5 minutes on 2 cores
    python -m bench.relay --smoke             # seconds
    python -m bench.relay --generators 1      # one load-generator process instead of two

Relay: N sessions in L lobbies; each sends ICE-sized messages to the next member of its lobby,
keeping a window in flight (closed loop: the servers run flat out). The same load runs against
(a) our server, (b) a bare aiohttp WebSocket relay (``bench.servers``) (the framework's ceiling: no sessions,
validation, lobbies or limits) and (c) a python-socketio server doing the same relay.
Fan-out: chat in lobbies of 2, 8 and 16 members, each member with one message in flight
(ours stores every chat message durably before delivering it; the baselines only forward).

The load generator runs in processes of its own and speaks raw WebSocket frames
(``bench.wsclient``): a message is
a pre-encoded frame with a fixed-width stamp patched in, and a receiver finds the stamp with a
byte search instead of parsing JSON. It costs a fraction of what any server spends per
message. Every row prints the server's and the generators' CPU (from /proc), so a reader can
see which side was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.children import read_line, release, spawn
from bench.procstats import box_busy, cpu_seconds, raise_fd_limit
from bench.servers import UNLIMITED, start_baseline, stop_baseline
from bench.tables import table
from bench.wsclient import RawSocket, connect_raw, frame, next_json, welcomed
from signaling.testing import ServerProcess

PAD = "x" * 230  # an ICE candidate is 100-300 bytes
CANDIDATE = "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host " + PAD
STAMP = b"#t"  # then 5 digits of sender index and 16 of perf_counter_ns, then "#"
CLOCK_WRAP = 10**16


# --- the three dialects: set up a lobby's sessions and each one's frame template ------------------


@dataclass
class Member:
    """A connected session; its next message is ``head + stamp digits + tail``."""

    index: int  # global, across every generator process
    sock: RawSocket
    head: bytes = b""
    tail: bytes = b""

    def fire(self) -> None:
        self.sock.send(self.head + b"%016d" % (time.perf_counter_ns() % CLOCK_WRAP) + self.tail)


def template(member: Member, build: Callable[[str], str]) -> None:
    """Pre-encodes the member's message; ``build(marker)`` makes its payload around a marker
    (``#t``, 5 digits of sender, 16 of time, ``#``), whose time digits each send patches in."""
    marker = f"#t{member.index:05d}{'0' * 16}#"
    raw = build(marker).encode()
    whole = frame(raw)  # the stamp has a fixed width, so the header is the same every time
    cut = len(whole) - len(raw) + raw.index(marker.encode()) + 7
    member.head, member.tail = whole[:cut], whole[cut + 16:]


def candidate(marker: str) -> dict[str, Any]:
    return {"candidate": CANDIDATE, "sdpMid": marker, "sdpMLineIndex": 0}


async def setup_ours(url: str, http: aiohttp.ClientSession, lobby: int, indices: list[int],
                     tag: str, mode: str) -> list[Member]:
    members: list[Member] = []
    ids: list[str] = []
    lobby_id = ""
    for rank, index in enumerate(indices):
        async with http.post(f"{url}api/sessions") as resp:
            created = await resp.json()
        sock = await welcomed(url, created["token"])
        name = {"type": "set_name", "id": "n", "data": {"name": f"{tag} {index}"}}
        sock.send(frame(json.dumps(name).encode()))
        reply = await next_json(sock, lambda m: m.get("id") == "n")
        assert reply["type"] == "session", reply
        join: dict[str, Any] = ({"lobby_id": lobby_id} if rank else
                                {"lobby_name": f"{tag} lobby {lobby}"})
        sock.send(frame(json.dumps({"type": "join", "id": "j", "data": join}).encode()))
        reply = await next_json(sock, lambda m: m.get("id") == "j")
        assert reply["type"] == "lobby_state", reply
        lobby_id = reply["data"]["lobby"]["id"]
        ids.append(created["session_id"])
        members.append(Member(index, sock))
    for rank, m in enumerate(members):
        target = ids[(rank + 1) % len(ids)]
        if mode == "relay":
            template(m, lambda marker, target=target: json.dumps({"type": "ice", "data": {
                "lobby_id": lobby_id, "peer_id": target, "candidate": candidate(marker)}}))
        else:
            template(m, lambda marker: json.dumps({"type": "chat", "data": {
                "lobby_id": lobby_id, "text": f"{marker} {PAD[:100]}"}}))
    return members


def baseline_template(m: Member, mode: str, room: str, target: str,
                      encode: Callable[[str, dict[str, Any]], str]) -> None:
    """A baseline's message: the same JSON body as ours (and, relayed, the target to find in
    it), which ``encode(event, body)`` puts in the dialect's envelope."""
    if mode == "relay":
        template(m, lambda marker: encode("relay", {"to": target, "lobby_id": room,
                                                    "candidate": candidate(marker)}))
    else:
        template(m, lambda marker: encode("chat", {"room": room,
                                                   "text": f"{marker} {PAD[:100]}"}))


async def setup_bare(url: str, http: aiohttp.ClientSession, lobby: int, indices: list[int],
                     tag: str, mode: str) -> list[Member]:
    members = []
    room = f"{tag}-{lobby}"
    for rank, index in enumerate(indices):
        m = Member(index, await connect_raw(url, f"/ws?id={index}&room={room}"))
        baseline_template(m, mode, room, str(indices[(rank + 1) % len(indices)]),
                          lambda event, body: json.dumps(body))
        members.append(m)
    return members


async def setup_sio(url: str, http: aiohttp.ClientSession, lobby: int, indices: list[int],
                    tag: str, mode: str) -> list[Member]:
    members = []
    room = f"{tag}-{lobby}"
    for index in indices:
        sock = await connect_raw(url, "/socket.io/?EIO=4&transport=websocket")
        sock.on_ping = lambda s: s.send(frame(b"3"))  # engine.io's ping is a text "2"
        await asyncio.wait_for(sock.inbox.get(), 30)  # "0{sid, pingInterval…}": engine.io open
        sock.send(frame(b"40"))  # connect to the default namespace
        await asyncio.wait_for(sock.inbox.get(), 30)  # "40{sid}"
        sock.send(frame(b"42" + json.dumps(["hello", {"id": str(index), "room": room}]).encode()))
        while not (await asyncio.wait_for(sock.inbox.get(), 30)).startswith(b'42["ready"'):
            pass
        members.append(Member(index, sock))
    for rank, m in enumerate(members):  # socket.io's events: "42" and [event, body]
        baseline_template(m, mode, room, str(indices[(rank + 1) % len(indices)]),
                          lambda event, body: "42" + json.dumps([event, body]))
    return members


SETUPS = {"ours": setup_ours, "bare": setup_bare, "sio": setup_sio}


# --- the load generator (processes of its own) ----------------------------------------------------

BUCKET = math.log(1.01)  # latency histogram: 1 % wide buckets, mergeable across processes


@dataclass
class GeneratorSpec:
    kind: str
    url: str
    mode: str  # "relay" or "chat"
    lobbies: dict[int, list[int]]  # lobby number -> global member indices
    window: int
    tag: str


async def generate(spec: GeneratorSpec) -> None:
    """Sets up, prints ``ready``, waits for ``go T0 T1 T2`` (monotonic clock) on stdin, runs the
    load from T0, counts deliveries in [T1, T2), prints the tally as JSON and waits for stdin
    to close."""
    raise_fd_limit()
    loop = asyncio.get_running_loop()
    members: dict[int, Member] = {}
    gate = asyncio.Semaphore(16)

    async def one_lobby(lobby: int, indices: list[int]) -> None:
        async with gate:
            for m in await SETUPS[spec.kind](spec.url, http, lobby, indices, spec.tag,
                                             spec.mode):
                members[m.index] = m

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(one_lobby(k, v) for k, v in spec.lobbies.items()))

    latencies: list[int] = []
    state = {"measuring": False, "running": True}
    relay = spec.mode == "relay"

    def on_text(sock: RawSocket, buf: bytearray, lo: int, hi: int) -> None:
        at = buf.find(STAMP, lo, hi)
        if at < 0:
            if sock.on_ping is not None and buf[lo:hi] == b"2":
                sock.on_ping(sock)
            return
        sender = members.get(int(buf[at + 2:at + 7]))
        if sender is None:  # fan-out to a member another process drives: not ours to count
            return
        if state["measuring"]:
            latencies.append((time.perf_counter_ns() - int(buf[at + 7:at + 23])) % CLOCK_WRAP)
        # relay: the target got it; chat: the sender's own copy means it was delivered
        if state["running"] and (relay or sock is sender.sock):
            sender.fire()

    for m in members.values():
        m.sock.on_text = on_text
    print("ready", flush=True)
    line = await loop.run_in_executor(None, sys.stdin.readline)
    t0, t1, t2 = (float(x) for x in line.split()[1:])

    def at(t: float, fn: Callable[[], None]) -> None:
        loop.call_at(loop.time() + t - time.monotonic(), fn)

    def start() -> None:
        for m in members.values():
            for _ in range(spec.window):
                m.fire()

    done = loop.create_future()
    at(t0, start)
    at(t1, lambda: state.update(measuring=True))
    at(t2, lambda: (state.update(measuring=False, running=False), done.set_result(None)))
    await done
    hist = Counter(int(math.log(max(ns, 1000) / 1000) / BUCKET) for ns in latencies)
    print(json.dumps({"delivered": len(latencies), "hist": hist}), flush=True)
    # stay alive (idle) until the orchestrator has read our CPU use from /proc and lets go
    await loop.run_in_executor(None, sys.stdin.read)


def percentile_ms(hist: Counter[int], q: float) -> float:
    total = sum(hist.values())
    if not total:
        return float("nan")
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= q * total:
            return 1e-3 * math.exp((bucket + 0.5) * BUCKET)
    return float("nan")


# --- orchestration -------------------------------------------------------------------------------


@dataclass
class LoadResult:
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu: float  # fraction of one core
    generator_cpu: list[float]  # each generator process, fraction of one core
    box_cpu: float  # the whole machine, every process, in cores

    @property
    def bound_by(self) -> str:
        """Which side ran out: a process at >= 90 % of a core is saturated; "box": every core
        was busy (other processes included) with neither saturated."""
        if max(self.generator_cpu) >= 0.9:
            return "generator"
        if self.server_cpu >= 0.9:
            return "server"
        if self.box_cpu >= 0.9 * (os.cpu_count() or 1):
            return "box"
        return "latency"

    @property
    def per_server_cpu_s(self) -> float:
        """Messages per second of server CPU: a figure contention on the box moves less."""
        return self.msgs_per_s / max(self.server_cpu, 1e-9)


_runs = 0


async def run_load(kind: str, url: str, server_pid: int, mode: str, lobbies: int, size: int,
                   window: int, seconds: float, generators: int) -> LoadResult:
    """Drives ``lobbies`` lobbies of ``size`` members from ``generators`` processes."""
    global _runs
    _runs += 1
    procs = max(1, min(generators, lobbies))
    shares: list[dict[int, list[int]]] = [{} for _ in range(procs)]
    for lobby in range(lobbies):  # whole lobbies per process: a window closes where it opened
        shares[lobby % procs][lobby] = list(range(lobby * size, (lobby + 1) * size))
    tag = f"g{os.getpid() % 10000}r{_runs}"
    children = []
    for share in shares:
        spec = json.dumps({"kind": kind, "url": url, "mode": mode, "window": window, "tag": tag,
                           "lobbies": share})
        children.append(await spawn("bench.relay", "--generate", spec))
    try:
        for child in children:
            await read_line(child, "generator", 60 + lobbies * size, b"ready")
        t0 = time.monotonic() + 0.2
        t1 = t0 + min(1.0, seconds / 2)  # the window fills and every socket has spoken
        t2 = t1 + seconds
        for child in children:
            assert child.stdin is not None
            child.stdin.write(f"go {t0} {t1} {t2}\n".encode())
            await child.stdin.drain()
        pids = [server_pid, *(c.pid for c in children)]
        await asyncio.sleep(t1 - time.monotonic())
        cpu0, box0, w0 = [cpu_seconds(pid) for pid in pids], box_busy(), time.monotonic()
        await asyncio.sleep(t2 - time.monotonic())
        cpu1, box1, w1 = [cpu_seconds(pid) for pid in pids], box_busy(), time.monotonic()
        hist: Counter[int] = Counter()
        delivered = 0
        for child in children:
            tally = json.loads(await read_line(child, "generator", 60))
            delivered += tally["delivered"]
            hist.update({int(k): v for k, v in tally["hist"].items()})
    finally:
        await release(children, 10)
    used = [(b - a) / (w1 - w0) for a, b in zip(cpu0, cpu1)]
    box = (box1[0] - box0[0]) / (box1[1] - box0[1]) * (os.cpu_count() or 1)
    return LoadResult(delivered / (t2 - t1), percentile_ms(hist, 0.5), percentile_ms(hist, 0.99),
                      used[0], used[1:], box)


def pct(x: float) -> str:
    return f"{x * 100:.0f} %"


SERVERS = (("ours", "ours"), ("bare aiohttp", "bare"), ("python-socketio", "sio"))


def row(name: str, r: LoadResult, digits: int = 2) -> list[str]:
    return [name, f"{r.msgs_per_s:.0f}", f"{r.p50_ms:.{digits}f}", f"{r.p99_ms:.{digits}f}",
            pct(r.server_cpu), " + ".join(pct(c) for c in r.generator_cpu), pct(r.box_cpu),
            r.bound_by, f"{r.per_server_cpu_s:.0f}"]


HEADER = ["server", "msg/s", "p50 ms", "p99 ms", "server CPU", "generator CPU", "box CPU",
          "bound by", "msg per server CPU-s"]


async def bench(urls: dict[str, tuple[str, int]], n: int, lobbies: int, window: int,
                seconds: float, rounds: int, generators: int, sizes: tuple[int, ...],
                fanout_n: int) -> None:
    cores = os.cpu_count() or 1
    print(f"== relay: {n} sessions in {lobbies} lobbies, window {window}, {rounds} round(s) of "
          f"{seconds:.0f} s per server (interleaved; the median round is shown), {generators} "
          f"generator process(es); CPU in % of one core, box CPU of {cores * 100} %")
    runs: dict[str, list[LoadResult]] = {name: [] for name, _ in SERVERS}
    for _ in range(rounds):  # interleaved: a burst of load from elsewhere hits every server
        for name, kind in SERVERS:
            url, pid = urls[kind]
            runs[name].append(await run_load(kind, url, pid, "relay", lobbies, n // lobbies,
                                             window, seconds, generators))
    median = {name: sorted(rs, key=lambda r: r.msgs_per_s)[len(rs) // 2]
              for name, rs in runs.items()}
    rows = [HEADER + (["msg/s of each round"] if rounds > 1 else [])]
    for name, r in median.items():
        rows.append(row(name, r) + ([" ".join(f"{x.msgs_per_s:.0f}" for x in runs[name])]
                                    if rounds > 1 else []))
    print(table(rows))
    ours, bare, sio = (median[name] for name, _ in SERVERS)
    print(f"ours / bare aiohttp = {ours.msgs_per_s / bare.msgs_per_s:.2f} (target >= 0.8); "
          f"ours / python-socketio = {ours.msgs_per_s / sio.msgs_per_s:.2f} (target >= 2)")
    print(f"per server CPU-second: ours / bare aiohttp = "
          f"{ours.per_server_cpu_s / bare.per_server_cpu_s:.2f}; ours / python-socketio = "
          f"{ours.per_server_cpu_s / sio.per_server_cpu_s:.2f}")

    print(f"\n== fan-out: chat, {fanout_n} sessions in lobbies of {', '.join(map(str, sizes))} "
          f"members, one message in flight each, {seconds:.0f} s per row (ours stores each "
          "message durably before delivering it)")
    rows = [["members", *HEADER]]
    rows[0][2] = "deliveries/s"
    rows[0][-1] = "deliveries per server CPU-s"
    for size in sizes:
        for name, kind in SERVERS:
            url, pid = urls[kind]
            r = await run_load(kind, url, pid, "chat", max(1, fanout_n // size), size, 1, seconds,
                               generators)
            rows.append([str(size), *row(name, r, 1)])
    print(table(rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--lobbies", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3, help="relay runs per server")
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--generators", type=int, default=2, help="load-generator processes")
    parser.add_argument("--generate", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate:
        raw = json.loads(args.generate)
        raw["lobbies"] = {int(k): v for k, v in raw["lobbies"].items()}
        asyncio.run(generate(GeneratorSpec(**raw)))
        os._exit(0)  # the figures are out; skip closing hundreds of sockets politely

    n, lobbies, seconds, rounds, sizes, fanout_n = (
        (8, 2, 1.0, 1, (2, 8), 16) if args.smoke else
        (args.sessions, args.lobbies, args.seconds, args.rounds, (2, 8, 16), args.sessions))
    if n % lobbies:
        parser.error("--sessions must be a multiple of --lobbies")
    raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    ours = ServerProcess(workdir / "data", **UNLIMITED)
    ours.start()
    bare, bare_url = start_baseline("bare")
    sio, sio_url = start_baseline("sio")
    try:
        assert ours.proc is not None
        urls = {"ours": (ours.url, ours.proc.pid), "bare": (bare_url, bare.pid),
                "sio": (sio_url, sio.pid)}
        asyncio.run(bench(urls, n, lobbies, args.window, seconds, rounds, args.generators,
                          sizes, fanout_n))
    finally:
        ours.stop()
        for proc in (bare, sio):
            stop_baseline(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
