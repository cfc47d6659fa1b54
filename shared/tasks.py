"""Owned tasks: ``cancel_and_wait`` for one an owner stops, ``TaskSet`` for fire-and-forget
tasks that are still owned (logged when they fail, cancelled on close)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancels ``tasks`` and waits until each has finished, its outcome retrieved.

    Unlike ``with suppress(CancelledError): await task``, this never swallows the caller's
    own cancellation: that idiom can't tell the task's CancelledError from one meant for the
    caller, which then runs on (a provider that hung at shutdown did exactly that).
    """
    live = [t for t in tasks if t is not None]
    for task in live:
        task.cancel()
    pending = [t for t in live if not t.done()]
    if pending:
        await asyncio.wait(pending)  # raises only if the caller is cancelled
    for task in live:
        if not task.cancelled():
            task.exception()  # retrieved: the owner is stopping it, whatever it raised


class TaskSet:
    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._logger, self._what = logger, what
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], what: str = "") -> None:
        """Runs ``coro`` as a task of the set; its failure is logged as the set's ``what``,
        then this call's ``what``."""
        if self._closed:
            coro.close()  # never started: closed, rather than left un-awaited
            return

        async def guarded() -> None:
            try:
                await coro
            except Exception:
                self._logger.exception("%s failed", f"{self._what} {what}".strip())

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
