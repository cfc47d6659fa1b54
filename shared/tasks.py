"""Fire-and-forget tasks that are still owned: logged when they fail, cancelled on close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log, self._what = logger, what
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._closed:
            coro.close()  # never started: closed, rather than left un-awaited
            return

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                self._log.exception("%s failed", self._what)

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self._closed = True
        while self._tasks:
            # cancelled again until done: asyncio.wait_for (3.11) can swallow a cancellation
            # that arrives as the awaited thing completes, and a loop would then run on
            for task in list(self._tasks):
                task.cancel()
            await asyncio.wait(list(self._tasks), timeout=1.0)
