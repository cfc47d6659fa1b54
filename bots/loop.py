"""An event loop for bot processes that polls for I/O at most every ``poll_interval`` seconds.

A bot that listens to k speakers gets 50 packets a second from each. Woken for every packet,
the process spends more CPU on being woken (and on reaching code and data that went cold in
the meantime) than on the packet. Polling every few tens of milliseconds hands the loop all
the packets that came in that time at once. Timers still fire on time — a bot sending audio
paces its packets with them — so only I/O waits, and never longer than the interval.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any

POLL_INTERVAL = 0.04  # a bot provider's default: 2 packets a stream per wake-up


class CoalescingSelector(selectors.DefaultSelector):
    """The platform's selector, except that a blocking ``select`` comes back no sooner than
    ``poll_interval`` after the previous one (or the timeout, if that is sooner)."""

    def __init__(self, poll_interval: float) -> None:
        super().__init__()
        self.poll_interval = poll_interval
        self._last = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is None or timeout > 0:
            now = time.monotonic()
            wait = self._last + self.poll_interval - now
            if wait > 0:
                if timeout is not None:
                    deadline = now + timeout  # a sleep may run long: the timer must not
                    time.sleep(min(wait, timeout))
                    timeout = max(0.0, deadline - time.monotonic())
                else:
                    time.sleep(wait)
        ready = super().select(timeout)
        self._last = time.monotonic()
        return ready


def loop_factory(poll_interval: float) -> asyncio.AbstractEventLoop:
    """A new loop; ``poll_interval`` 0 gives the ordinary one."""
    if poll_interval <= 0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(CoalescingSelector(poll_interval))
