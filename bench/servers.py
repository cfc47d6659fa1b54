"""The servers the load benchmarks drive: ours with its abuse limits lifted, and the baselines
it is measured against in the same run, each in a process of its own.

- ``bare``: a bare aiohttp WebSocket relay, the framework's ceiling: no sessions, validation,
  lobbies or limits; relay by id, broadcast by room, the same heartbeat as ours;
- ``sio``: a python-socketio server doing the same relay and broadcast.

    python -m bench.servers bare PORT     # what start_baseline("bare") runs
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from aiohttp import web

from bench.procstats import raise_fd_limit
from signaling.testing import ROOT, free_port

HEARTBEAT = 15.0  # our server's default; the bare baseline pings as often
# our server's settings for a load test: no rate limit stands in the way
UNLIMITED = {f"VOICEBOT_{k}": "1000000" for k in (
    "MSG_RATE", "MSG_BURST", "CHAT_RATE", "CHAT_BURST", "CREATE_RATE", "CREATE_BURST",
    "IP_SESSION_RATE", "IP_SESSION_BURST", "IP_UPGRADE_RATE", "IP_UPGRADE_BURST")}


def serve_bare(port: int) -> None:
    """The framework's ceiling: relay by id, broadcast by room, nothing else."""
    raise_fd_limit()
    peers: dict[str, web.WebSocketResponse] = {}
    rooms: dict[str, set[str]] = defaultdict(set)

    async def ws(request: web.Request) -> web.WebSocketResponse:
        me, room = request.query["id"], request.query.get("room", "")
        sock = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=1 << 20)
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


BASELINES = {"bare": serve_bare, "sio": serve_socketio}


def start_baseline(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    """Starts the baseline ``kind`` ("bare" or "sio") in a process; returns it and its URL once
    it accepts connections."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.servers", kind, str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the {kind} baseline did not start")


def stop_baseline(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(BASELINES))
    parser.add_argument("port", type=int)
    args = parser.parse_args(argv)
    BASELINES[args.kind](args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
