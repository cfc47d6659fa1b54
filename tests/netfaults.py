"""A TCP proxy for fault injection: links that go dead, and clients that stop reading."""

from __future__ import annotations

import asyncio
import contextlib

from signaling.testing import free_port


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port``.

    ``frozen``: bytes vanish both ways (a dead link: no FIN, no close frame).
    ``stalled``: stops reading from the server, like a client that stopped reading.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.frozen = False
        self.stalled = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.accepted = 0  # connections so far

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port,
                                                             limit=4096)
        self._writers += [writer, up_writer]
        for src, dst, downstream in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(src, dst, downstream))
            self._tasks.add(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    downstream: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                if downstream and self.stalled.is_set():
                    await asyncio.sleep(3600)  # never read again
                data = await src.read(4096)
                if not data:
                    return
                if not self.frozen:
                    dst.write(data)
                    await dst.drain()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()
