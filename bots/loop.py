"""An event loop for bot processes that polls for I/O at most every ``poll_interval`` seconds.

A bot that listens to k speakers gets 50 packets a second from each. Woken for every packet,
the process spends more CPU on being woken (and on reaching code and data that went cold in
the meantime) than on the packet. Polling every few tens of milliseconds hands the loop all
the packets that came in that time at once. Timers still fire on time — a bot sending audio
paces its packets with them — so only I/O waits, and never longer than the interval.

A bot waiting on the next packets to decide something a user waits for (has this speaker
paused?) can ``hurry`` the loop: while anyone does, it polls every ``HURRIED_INTERVAL``
instead, which still gathers the packets of many streams but delays a packet 5 ms on
average, not 20.

Work a thread hands back through ``promptly`` (the transcriber's recognitions) does not wait
for the next poll either: what it carries (a caption) is what a user waits for, and waiting for
the poll cost a caption 20 ms on average, up to 40. Other threads' results (aiortc encodes each
frame a bot sends in one) still wait for it, as packets do.
"""

from __future__ import annotations

import asyncio
import selectors
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, TypeVarTuple

POLL_INTERVAL = 0.04  # a bot provider's default: 2 packets a stream per wake-up
HURRIED_INTERVAL = 0.01

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")


class CoalescingSelector(selectors.DefaultSelector):
    """The platform's selector, except that a blocking ``select`` comes back no sooner than
    ``poll_interval`` after the previous one (or the timeout, if that is sooner), unless
    ``wake()`` is called meanwhile."""

    def __init__(self, poll_interval: float,
                 hurried_interval: float = HURRIED_INTERVAL) -> None:
        super().__init__()
        self.poll_interval = poll_interval
        self.hurried_interval = min(poll_interval, hurried_interval)
        self.hurried_by: set[object] = set()
        self._last = 0.0
        self._woken = threading.Event()

    def wake(self) -> None:
        """Ends the current (or next) wait for the poll interval; any thread may call it."""
        self._woken.set()

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if timeout is None or timeout > 0:
            now = time.monotonic()
            interval = self.hurried_interval if self.hurried_by else self.poll_interval
            wait = self._last + interval - now
            if wait > 0:
                if timeout is not None:
                    deadline = now + timeout  # a wait may run long: the timer must not
                    self._woken.wait(min(wait, timeout))
                    timeout = max(0.0, deadline - time.monotonic())
                else:
                    self._woken.wait(wait)
        # a wake() from here on has written to the loop's self-pipe too: select sees it
        self._woken.clear()
        ready = super().select(timeout)
        self._last = time.monotonic()
        return ready


class CoalescingEventLoop(asyncio.SelectorEventLoop):
    """A selector event loop on a ``CoalescingSelector``."""

    def __init__(self, poll_interval: float) -> None:
        self.selector = CoalescingSelector(poll_interval)
        super().__init__(self.selector)


def promptly(loop: asyncio.AbstractEventLoop, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
    """``fn(*args)``, called in a worker thread, with ``loop`` woken when it returns, so that
    the result is handled without waiting for the poll: ``await loop.run_in_executor(pool,
    promptly, loop, fn, *args)``. (The wake may come a moment before the result is handed
    back; the loop then waits for that in its select, not for the poll.)"""
    try:
        return fn(*args)
    finally:
        if isinstance(loop, CoalescingEventLoop):
            loop.selector.wake()


def hurry(owner: object, on: bool) -> None:
    """While ``on`` for any owner, the running loop (a ``CoalescingEventLoop``; any other
    polls at once anyway) polls for I/O every ``HURRIED_INTERVAL``. An owner that stops must
    say ``False``."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a coroutine closed outside its loop (garbage): nothing to hurry
        return
    if isinstance(loop, CoalescingEventLoop):
        if on:
            loop.selector.hurried_by.add(owner)
        else:
            loop.selector.hurried_by.discard(owner)


def loop_factory(poll_interval: float) -> asyncio.AbstractEventLoop:
    """A new loop; ``poll_interval`` 0 gives the ordinary one."""
    if poll_interval <= 0:
        return asyncio.new_event_loop()
    return CoalescingEventLoop(poll_interval)
