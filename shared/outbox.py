"""The client's delivery rules without the socket: what waits to be sent, what awaits a reply,
what is dropped and why, and which incoming event ids were already seen.

Nothing here does I/O or reads a clock: the caller passes ``now`` and deadlines (monotonic
seconds) and does the writing. Each frame carries the futures its sender may await; they are
settled here. ``SignalingClient`` keeps one ``Outbox`` and one ``Seen`` across reconnects; the
tests drive them directly (tests/test_outbox.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from .errors import NotDelivered, QueueFull, ServerError
from .protocol import Error, Message

log = logging.getLogger(__name__)


@dataclass(eq=False)  # compared by identity: the same frame may be queued and in flight
class Outgoing:
    """One frame on its way out, with the futures its sender may await."""

    message: Message
    id: str | None  # a request's id, which its reply carries; None: no reply expected
    critical: bool  # never dropped silently: the sender learns of it (NotDelivered)
    deadline: float  # dropped (reason ``ttl``) if still queued at this time
    delivery: asyncio.Future[None]  # resolves once written
    reply: asyncio.Future[Message] | None = None  # a request's reply, or ServerError


class Outbox:
    """The outgoing queue (bounded, in order) and the requests in flight, by id.

    ``dropped`` counts the frames dropped, by reason (``overflow``, ``ttl``, ``closed``).
    """

    def __init__(self, size: int, dropped: collections.Counter[str] | None = None) -> None:
        self.size = size
        self.dropped = dropped if dropped is not None else collections.Counter()
        self.queue: collections.deque[Outgoing] = collections.deque()
        self.inflight: dict[str, Outgoing] = {}

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def busy(self) -> bool:
        """Whether anything is still queued or waiting for its reply."""
        return bool(self.queue or self.inflight)

    def add(self, message: Message, id_: str | None, critical: bool, deadline: float) -> Outgoing:
        """Queues a frame (a request when it has an id). When the queue is full, the oldest
        non-critical frame is dropped (``overflow``) to make room; when every queued frame is
        critical, ``QueueFull`` is raised and nothing is queued."""
        item = _outgoing(message, id_, critical, deadline)
        if len(self.queue) >= self.size:
            victim = next((q for q in self.queue if not q.critical), None)
            if victim is None:
                raise QueueFull(f"{len(self.queue)} critical frames wait to be sent")
            self.queue.remove(victim)
            self.drop(victim, "overflow")
        self.queue.append(item)
        return item

    def direct(self, message: Message, id_: str, deadline: float) -> Outgoing:
        """A request written outside the queue (while resuming), in flight until ``forget``.
        It is never resent: each resume asks again for itself."""
        item = self.inflight[id_] = _outgoing(message, id_, False, deadline)
        return item

    def drop(self, item: Outgoing, reason: str) -> None:
        """Fails ``item``'s futures with ``NotDelivered``; a critical frame is logged too."""
        self.dropped[reason] += 1
        exc = NotDelivered(reason, item.message)
        if item.critical:
            log.error("critical %s frame dropped: %s", item.message.type.value, reason)
        for fut in (item.delivery, item.reply):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def next_deadline(self) -> float | None:
        return min((q.deadline for q in self.queue), default=None)

    def expire(self, now: float) -> None:
        """Drops (``ttl``) the queued frames whose deadline has come."""
        for item in [q for q in self.queue if q.deadline <= now]:
            self.queue.remove(item)
            self.drop(item, "ttl")

    def next(self) -> Outgoing | None:
        """The frame to write next, left queued until ``written``. A request is in flight from
        now on, so that a reply arriving while it is being written finds it."""
        if not self.queue:
            return None
        item = self.queue[0]
        if item.id is not None:
            self.inflight[item.id] = item
        return item

    def written(self, item: Outgoing) -> None:
        """``item``, the one ``next`` gave, is on the socket."""
        self.queue.popleft()
        if not item.delivery.done():
            item.delivery.set_result(None)

    def answer(self, id_: str, message: Message) -> bool:
        """Settles the request that ``message`` (with id ``id_``) answers, an ``error`` as
        ``ServerError``; False if no request of ours has that id."""
        item = self.inflight.pop(id_, None)
        if item is None:
            return False
        assert item.reply is not None
        if not item.reply.done():
            if isinstance(message, Error):
                item.reply.set_exception(ServerError(message.code, message.message))
            else:
                item.reply.set_result(message)
        return True

    def forget(self, item: Outgoing) -> None:
        """Takes ``item`` out wherever it is (its sender gave up on it)."""
        if item.id is not None:
            self.inflight.pop(item.id, None)
        with contextlib.suppress(ValueError):
            self.queue.remove(item)

    def requeue(self) -> int:
        """The link died: requests that were written but not answered go back to the front of
        the queue in their original order, to be resent with the same id (the server stores a
        repeated chat id once). Returns how many."""
        pending = [item for item in self.inflight.values() if item.reply is not None
                   and not item.reply.done() and item.delivery.done()]
        self.inflight.clear()
        self.queue.extendleft(reversed(pending))
        return len(pending)

    def close(self) -> list[Message]:
        """Drops (``closed``) every frame not yet sent or answered; returns their messages."""
        unsent = [*self.inflight.values(), *self.queue]
        self.inflight.clear()
        self.queue.clear()
        for item in unsent:
            self.drop(item, "closed")
        return [item.message for item in unsent]


def _outgoing(message: Message, id_: str | None, critical: bool, deadline: float) -> Outgoing:
    loop = asyncio.get_running_loop()
    item = Outgoing(message, id_, critical, deadline, loop.create_future(),
                    loop.create_future() if id_ is not None else None)
    for fut in (item.delivery, item.reply):  # nobody has to await these
        if fut is not None:
            fut.add_done_callback(_consume)
    return item


def _consume(fut: asyncio.Future[Any]) -> None:
    """Marks a future's exception as retrieved: callers may ignore a delivery future."""
    if not fut.cancelled():
        fut.exception()


@dataclass
class Seen:
    """Incoming event ids seen within ``window`` seconds (at most ``limit``): the server replays
    history after a reconnect, and a frame must not be handled twice."""

    window: float
    limit: int
    _ids: collections.OrderedDict[str, float] = field(default_factory=collections.OrderedDict)

    def check(self, id_: str, now: float) -> bool:
        """Whether ``id_`` was seen before; remembers it if not."""
        ids = self._ids
        while ids and (len(ids) >= self.limit or next(iter(ids.values())) < now - self.window):
            ids.popitem(last=False)
        if id_ in ids:
            return True
        ids[id_] = now
        return False
