"""A long fuzz run: random and malformed frames at a real server.

    python -m bench.fuzz --frames 100000      # ~2 minutes
    python -m bench.fuzz --smoke              # seconds

Each frame is garbage text, random JSON, or an envelope of a real type with random fields.
After every frame the fuzzer sends a ping and waits for its pong, so every reply is matched
to the frame that caused it. It checks: every frame our decoder rejects is answered with that
error code; the connection never drops; a bystander in a lobby keeps chatting with the normal
round trip; the server log holds no unhandled exception. It prints the tally.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import string
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig
from signaling.testing import ServerProcess
from signaling.ws import ACCEPTED

TYPES = [t.value for t in p.MessageType] + ["", "PING", "chat ", "x" * 70]
FIELDS = sorted({f for cls in p.MESSAGES.values() for f in cls.__dataclass_fields__})


def json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, -1, 1, 2**31, 2**63, rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-9, 3.14])
    if kind in (4, 5):
        n = rng.choice([0, 1, 5, 40, 300, 3000])
        return "".join(rng.choice(string.printable + "é€😀\u0000") for _ in range(n))
    if kind in (6, 7):
        return {rng.choice(FIELDS + ["", "zz"]): json_value(rng, depth + 1)
                for _ in range(rng.randrange(6))}
    return [json_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def frame(rng: random.Random) -> str:
    kind = rng.randrange(10)
    if kind == 0:
        return "".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return json.dumps(json_value(rng))
    if kind == 2:  # truncated JSON
        text = json.dumps({"type": rng.choice(TYPES), "data": json_value(rng)})
        return text[:rng.randrange(1, max(2, len(text)))]
    envelope: dict[str, Any] = {"type": rng.choice(TYPES)}
    if rng.random() < 0.9:
        envelope["data"] = json_value(rng) if rng.random() < 0.2 else {
            rng.choice(FIELDS): json_value(rng) for _ in range(rng.randrange(7))}
    if rng.random() < 0.8:
        envelope["id"] = rng.choice([f"f{rng.randrange(10**6)}", 5, "", "i" * 80, None])
    return json.dumps(envelope)


def expected_error(text: str) -> str | None:
    """The error code our own decoder gives this frame, if it rejects it."""
    if len(text.encode()) > 64 * 1024:
        return "message_too_large"
    try:
        p.decode(text, ACCEPTED)
    except p.ProtocolError as exc:
        return exc.code.value
    return None


async def run(frames: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-"))
    log_path = workdir / "server.log"
    server = ServerProcess(workdir / "data", log_path=log_path, VOICEBOT_MSG_RATE="100000", VOICEBOT_MSG_BURST="100000",
                           VOICEBOT_ERROR_RATE="100000", VOICEBOT_ERROR_BURST="100000",
                           VOICEBOT_CHAT_RATE="100000", VOICEBOT_CHAT_BURST="100000",
                           VOICEBOT_CREATE_RATE="100000", VOICEBOT_CREATE_BURST="100000")
    server.start()
    tally = {"frames": 0, "rejected": 0, "errors_expected": 0, "errors_matched": 0,
             "mismatches": 0, "reconnects": 0, "bystander_max_s": 0.0}
    bystander = SignalingClient(ClientConfig(url=server.url, name="Bystander"))
    await bystander.start(wait=10)
    await bystander.set_name("Bystander")
    lobby = (await bystander.join(lobby_name="fuzzed")).lobby.id
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.url + "api/sessions") as r:
                token = (await r.json())["token"]
            ws = await http.ws_connect(server.url + "ws", params={"token": token},
                                       max_msg_size=0)
            await ws.receive(timeout=10)  # welcome
            for n in range(frames):
                text = frame(rng)
                expected = expected_error(text)
                await ws.send_str(text)
                await ws.send_str(json.dumps({"type": "ping", "id": f"probe{n}"}))
                codes = []
                while True:
                    msg = await ws.receive(timeout=10)
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        tally["reconnects"] += 1
                        raise RuntimeError(f"connection dropped after frame {n}: {text[:200]!r}")
                    reply = json.loads(msg.data)
                    if reply.get("type") == "pong" and reply.get("id") == f"probe{n}":
                        break
                    if reply.get("type") == "error":
                        codes.append(reply["data"]["code"])
                tally["frames"] += 1
                tally["rejected"] += bool(codes)
                if expected is not None:
                    tally["errors_expected"] += 1
                    if expected in codes:
                        tally["errors_matched"] += 1
                    else:
                        tally["mismatches"] += 1
                        print(f"expected {expected}, got {codes}: {text[:200]!r}")
                if n % 500 == 0:
                    started = time.monotonic()
                    await bystander.chat(lobby, f"still here {n}")
                    tally["bystander_max_s"] = max(tally["bystander_max_s"],
                                                   time.monotonic() - started)
            await ws.close()
    finally:
        await bystander.close()
        server.stop()
    log = log_path.read_text(errors="replace")
    tally["unhandled"] = log.count("Traceback") + log.count("handler failed")
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="2000 frames")
    args = parser.parse_args(argv)
    frames = 2000 if args.smoke else args.frames
    started = time.monotonic()
    tally = asyncio.run(run(frames, args.seed))
    elapsed = time.monotonic() - started
    print(f"frames tried       {tally['frames']}  ({tally['frames'] / elapsed:.0f}/s)")
    print(f"answered w/ error  {tally['rejected']}")
    print(f"decoder rejects    {tally['errors_expected']}, answered with that code "
          f"{tally['errors_matched']}, mismatches {tally['mismatches']}")
    print(f"dropped sockets    {tally['reconnects']}")
    print(f"unhandled errors   {tally['unhandled']}")
    print(f"bystander chat     worst round trip {tally['bystander_max_s'] * 1000:.0f} ms")
    ok = tally["mismatches"] == 0 and tally["unhandled"] == 0 and tally["reconnects"] == 0
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
