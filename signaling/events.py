"""A small in-process event bus: the hub announces what happened, other parts subscribe.

Subscribers are plain callables run synchronously in emit order; one that needs to do I/O
schedules its own task. A failing subscriber is logged and never breaks the emitter.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True)
class SessionConnected:
    session_id: str


@dataclass(frozen=True)
class SessionDisconnected:
    session_id: str


@dataclass(frozen=True)
class MemberJoined:
    lobby_id: str
    session_id: str


@dataclass(frozen=True)
class MemberLeft:
    lobby_id: str
    session_id: str


@dataclass(frozen=True)
class ChatPosted:
    lobby_id: str
    message_id: int
    session_id: str | None
    kind: str


@dataclass(frozen=True)
class CaptionStored:
    """A final transcript stored: ``end`` is its speech's end by the bot's clock, ``at`` when
    it was stored by the server's."""

    lobby_id: str
    message_id: int
    end: float | None
    at: float


@dataclass(frozen=True)
class BotReported:
    """A bot's status came with figures (e.g. a transcriber's lag)."""

    bot_id: str
    status: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class LobbyDeleted:
    lobby_id: str


class EventBus:
    def __init__(self) -> None:
        self._subscribers: dict[type, list[Callable[[Any], None]]] = defaultdict(list)

    def subscribe(self, event_type: type[E], callback: Callable[[E], None]) -> Callable[[], None]:
        """Registers ``callback``; returns a function that unsubscribes it."""
        self._subscribers[event_type].append(callback)
        return lambda: self._subscribers[event_type].remove(callback)

    def emit(self, event: object) -> None:
        for callback in list(self._subscribers.get(type(event), ())):
            try:
                callback(event)
            except Exception:
                log.exception("event subscriber %r failed on %r", callback, event)
