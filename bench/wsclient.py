"""A raw WebSocket client: what lets one load-generator core outrun a server core.

No library on top: a message is a pre-encoded frame (``frame``) written as it is, and a
received text frame is handed to ``on_text`` as a slice of the receive buffer, without a
copy. ``bench.relay`` drives its load with it and ``bench.scale`` holds its idle sessions.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

# one key for every handshake: the server only checks that it is 16 bytes of base64
HANDSHAKE = ("GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
TextHandler = Callable[["RawSocket", bytearray, int, int], None]


def frame(payload: bytes, opcode: int = 1) -> bytes:
    """A client frame. The mask key is zero, so the payload goes out as it is: no XOR pass."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload


class RawSocket(asyncio.Protocol):
    """A WebSocket client with nothing on top. ``on_text(sock, buf, lo, hi)`` sees each text
    frame's payload as ``buf[lo:hi]`` without a copy; by default frames go to ``inbox``."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.on_text: TextHandler = self._to_inbox
        self.on_ping: Callable[[RawSocket], None] | None = None

    @staticmethod
    def _to_inbox(sock: RawSocket, buf: bytearray, lo: int, hi: int) -> None:
        sock.inbox.put_nowait(bytes(buf[lo:hi]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, data: bytes) -> None:
        """Sends an already-framed message (see ``frame``)."""
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:buf.find(b"\r\n")])
            del buf[:end + 4]
            if b" 101 " not in status:
                self.upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
        pos, n = 0, len(buf)
        while n - pos >= 2:
            length, head = buf[pos + 1] & 0x7F, 2  # server frames are never masked
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            end = pos + head + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                self.on_text(self, buf, pos + head, end)
            elif opcode == 9:  # the server's heartbeat: a pong keeps the socket open
                self.send(frame(bytes(buf[pos + head:end]), 0xA))
            elif opcode == 8 and self.transport is not None:
                self.transport.close()
            pos = end
        if pos:
            del buf[:pos]


async def connect_raw(url: str, path: str) -> RawSocket:
    """Opens ``path`` on the server at ``url`` (http://host:port/) as a raw WebSocket."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    loop = asyncio.get_running_loop()
    _, sock = await loop.create_connection(RawSocket, parts.hostname, parts.port)
    sock.send(HANDSHAKE.format(path=path, host=parts.netloc).encode())
    await asyncio.wait_for(asyncio.shield(sock.upgraded), 30)
    return sock


async def next_json(sock: RawSocket, until: Callable[[Any], bool], timeout: float = 30) -> Any:
    """The next frame (JSON, during setup only) that ``until`` accepts; others are skipped."""
    deadline = time.monotonic() + timeout
    while True:
        data = await asyncio.wait_for(sock.inbox.get(), max(0.01, deadline - time.monotonic()))
        msg = json.loads(data)
        if until(msg):
            return msg


async def welcomed(url: str, token: str) -> RawSocket:
    """A raw WebSocket to our server at ``url``, authenticated with ``token``: its ``welcome``
    has arrived."""
    sock = await connect_raw(url, f"{urlsplit(url).path}ws?token={token}")
    await next_json(sock, lambda m: m.get("type") == "welcome")
    return sock
