"""Connection scale: idle authenticated sessions in one server process, against a bare baseline.

    python -m bench.scale                    # 10 000 sessions, ~2 minutes
    python -m bench.scale --smoke            # 200 sessions, seconds

Ours: each session is created over HTTP (``POST /api/sessions``: a token, stored durably) and
then holds an open WebSocket authenticated with it (the server's ``welcome`` has arrived). The
baseline is a bare aiohttp server holding as many idle WebSockets (with the same heartbeat),
measured in the same run: what a socket costs in the framework before any state of ours.

Reported per server: creation and connection rates (``concurrency`` at a time), resident
memory before and after (/proc VmRSS) and per session, the server's CPU while the sessions sit
idle for a heartbeat period (pings and expiry sweeps), and how many are still connected then.
The clients are a separate process speaking raw WebSocket frames (``bench.wsclient``), so
10 000 of them fit in one process; both processes raise their open-file limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.children import read_line, spawn
from bench.procstats import cpu_seconds, raise_fd_limit, rss_kib
from bench.servers import HEARTBEAT, UNLIMITED, start_baseline, stop_baseline
from bench.tables import table
from bench.wsclient import RawSocket, connect_raw, welcomed
from signaling.testing import ServerProcess

TARGET_KIB = 30


# --- the client process ---------------------------------------------------------------------------


async def hold(kind: str, url: str, n: int, concurrency: int) -> None:
    """Creates (ours) and connects ``n`` sessions, reporting each phase as a JSON line, then
    holds them until stdin closes."""
    limit = raise_fd_limit()
    if limit < n + 100:
        raise SystemExit(f"open-file limit {limit} is too low for {n} sockets")
    gate = asyncio.Semaphore(concurrency)
    tokens: list[str] = []
    if kind == "ours":
        started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def create() -> None:
                async with gate, http.post(f"{url}api/sessions") as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"POST api/sessions: {resp.status} {await resp.text()}")
                    tokens.append((await resp.json())["token"])

            await asyncio.gather(*(create() for _ in range(n)))
        report(phase="created", seconds=time.monotonic() - started)

    socks: list[RawSocket] = []

    async def connect(i: int) -> None:
        async with gate:
            if kind == "ours":
                sock = await welcomed(url, tokens[i])
                sock.on_text = lambda *_: None  # idle from here on: drop what comes
            else:
                sock = await connect_raw(url, f"/ws?id={i}&room=idle")
            socks.append(sock)

    started = time.monotonic()
    await asyncio.gather(*(connect(i) for i in range(n)))
    report(phase="connected", seconds=time.monotonic() - started)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    report(phase="closing", open=sum(not s.closed.done() for s in socks))


def report(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


# --- orchestration --------------------------------------------------------------------------------


@dataclass
class ScaleResult:
    n: int
    create_per_s: float | None
    connect_per_s: float
    join_per_s: float
    rss_before_kib: int
    rss_after_kib: int
    idle_cpu: float  # fraction of one core while the sessions sit idle
    still_open: int

    @property
    def kib_per_session(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.n


async def measure(kind: str, url: str, pid: int, n: int, concurrency: int,
                  idle_s: float) -> ScaleResult:
    await asyncio.sleep(1.0)  # let the fresh server settle before the baseline reading
    rss_before = rss_kib(pid)
    child = await spawn("bench.scale", "--hold", kind, url, str(n), str(concurrency))
    assert child.stdin is not None and child.stdout is not None
    try:
        phases: dict[str, float] = {}
        while "connected" not in phases:
            msg = json.loads(await read_line(child, "clients", 120 + n / 20))
            phases[msg["phase"]] = msg["seconds"]
        # idle: a heartbeat period, so every socket has been pinged (and answered) once
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(idle_s)
        idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        rss_after = rss_kib(pid)
        child.stdin.close()
        closing = json.loads(await asyncio.wait_for(child.stdout.readline(), 60))
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    create = phases.get("created")
    return ScaleResult(n, n / create if create else None, n / phases["connected"],
                       n / (phases["connected"] + (create or 0.0)), rss_before, rss_after,
                       idle_cpu, closing["open"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=50, help="sessions joining at a time")
    parser.add_argument("--idle", type=float, default=HEARTBEAT + 1,
                        help="seconds the sessions sit idle before the reading")
    parser.add_argument("--hold", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold:
        kind, url, n, concurrency = args.hold
        asyncio.run(hold(kind, url, int(n), int(concurrency)))
        os._exit(0)  # thousands of sockets: let the kernel close them

    n, idle = (200, 2.0) if args.smoke else (args.sessions, args.idle)
    raise_fd_limit()  # inherited by the servers we start
    print(f"== connection scale: {n} idle sessions in one server process, {args.concurrency} "
          f"joining at a time, then {idle:.0f} s idle")
    results: dict[str, ScaleResult] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    ours = ServerProcess(workdir / "data", VOICEBOT_MAX_CONNECTIONS=str(n + 100), **UNLIMITED)
    ours.start()
    try:
        assert ours.proc is not None
        results["ours"] = asyncio.run(measure("ours", ours.url, ours.proc.pid, n,
                                              args.concurrency, idle))
    finally:
        ours.stop()
    bare, bare_url = start_baseline("bare")
    try:
        results["bare aiohttp"] = asyncio.run(measure("bare", bare_url, bare.pid, n,
                                                      args.concurrency, idle))
    finally:
        stop_baseline(bare)

    rows = [["server", "created/s", "connected/s", "joined/s", "RSS before MiB",
             "RSS after MiB", "KiB/session", "idle CPU", "still open"]]
    for name, r in results.items():
        rows.append([name, f"{r.create_per_s:.0f}" if r.create_per_s else "-",
                     f"{r.connect_per_s:.0f}", f"{r.join_per_s:.0f}",
                     f"{r.rss_before_kib / 1024:.1f}", f"{r.rss_after_kib / 1024:.1f}",
                     f"{r.kib_per_session:.1f}", f"{r.idle_cpu * 100:.1f} %",
                     f"{r.still_open}/{r.n}"])
    print(table(rows))
    o, b = results["ours"], results["bare aiohttp"]
    print(f"ours: {o.kib_per_session:.1f} KiB per session (target <= {TARGET_KIB}), "
          f"{o.kib_per_session / b.kib_per_session:.2f}x a bare aiohttp socket; "
          f"joins at {o.join_per_s:.0f} sessions/s "
          f"({o.connect_per_s / b.connect_per_s:.2f}x the bare server's connect rate)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
