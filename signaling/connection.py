"""One client's WebSocket with its own bounded send queue.

Senders never wait on a client: ``send`` returns at once. While the socket keeps up, a frame is
written straight to the transport; once the kernel stops taking bytes, frames wait in the queue
that a writer task drains, and a client that stops reading fills it and is cut off, so one slow
consumer can't delay a lobby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time

from aiohttp import web

from shared.tasks import cancel_and_wait

from .limits import ConnectionLimits

log = logging.getLogger(__name__)

CLOSE_REPLACED = 4001  # the same session connected again elsewhere
CLOSE_REMOVED = 4002  # the session was deleted (a bot removed from its lobby)
CLOSE_KICKED = 4003  # an administrator kicked the session


def text_frame(payload: bytes) -> bytes:
    """An unmasked, uncompressed, final text frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class Connection:
    def __init__(self, ws: web.WebSocketResponse, session_id: str, queue_size: int,
                 remote: str | None = None, limits: ConnectionLimits | None = None,
                 transport: asyncio.Transport | None = None) -> None:
        self.ws = ws
        self.session_id = session_id
        self.remote = remote
        self.connected_at = time.time()
        self.received = 0
        self.sent = 0
        self.announced: set[str] = set()  # lobbies whose members were told about this connection
        self.limits = limits
        self.overflowed = False
        self.ice_expires: float | None = None  # when the TURN credential it was given expires
        self._queue: asyncio.Queue[str | None] = asyncio.Queue(queue_size)
        self._writing = False  # the writer task is inside send_str
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{session_id}")
        self._closing = False
        self._closer: asyncio.Task[None] | None = None  # close_soon's; finish() awaits it
        # the fast path writes frames itself, so only where aiohttp would not compress them
        self._transport = transport if not ws.compress else None

    @property
    def closed(self) -> bool:
        return self._closing or self.ws.closed

    def send(self, text: str) -> None:
        if self.closed:
            return
        transport = self._transport
        # Straight to the socket when nothing waits ahead of this frame and the kernel has taken
        # every byte so far: no queue and no task switch per frame on the common path.
        if transport is not None and not self._writing and self._queue.empty() and \
                not transport.is_closing() and transport.get_write_buffer_size() == 0:
            transport.write(text_frame(text.encode()))
            self.sent += 1
            return
        try:
            self._queue.put_nowait(text)
        except asyncio.QueueFull:
            log.warning("session %s: send queue overflow, disconnecting", self.session_id,
                        extra={"session_id": self.session_id})
            self.overflowed = True
            self.abort()

    async def _write_loop(self) -> None:
        try:
            while (text := await self._queue.get()) is not None:
                self._writing = True
                await self.ws.send_str(text)  # waits while the client's socket is backed up
                self._writing = False
                self.sent += 1
        except (ConnectionError, RuntimeError) as exc:
            log.debug("session %s: write failed: %s", self.session_id, exc)

    def abort(self) -> None:
        """Drops the connection at once, for a client that can't be written to."""
        self._closing = True
        self._writer.cancel()
        if self.ws._req is not None and self.ws._req.transport is not None:
            self.ws._req.transport.abort()  # a close frame would block as well

    async def close(self, code: int, message: str, *, drain: float = 1.0) -> None:
        """Sends what is queued (for up to ``drain`` seconds), then a close frame."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        # asyncio.wait neither cancels the writer nor swallows a cancellation of the caller
        await asyncio.wait([self._writer], timeout=drain)
        self._writer.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()), drain)

    def close_soon(self, code: int, message: str) -> None:
        """``close`` from code that can't wait for it (a handler answering a frame)."""
        if self._closer is None and not self._closing:
            self._closer = asyncio.create_task(self.close(code, message), name="ws-close")

    async def finish(self) -> None:
        """Stops the writer (and a close in progress) once the socket is gone."""
        self._closing = True
        await cancel_and_wait(self._writer, self._closer)
