"""The records the server keeps: sessions, name claims, lobbies, chat and bots.

The store makes them durable (store.py, redis_store.py), the picture holds the live ones
(picture.py), and changes carry them between nodes (changes.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SessionRecord:
    id: str
    token_hash: str
    name: str | None = None
    name_key: str | None = None
    bot: bool = False
    created_at: float = field(default_factory=time.time)
    last_seen: float = field(default_factory=time.time)


@dataclass
class NameClaim:
    """A password-protected name; it outlives the session that holds it."""

    key: str
    display: str
    password_hash: str
    session_id: str | None = None


@dataclass
class LobbyRecord:
    id: str
    name: str
    key: str
    private: bool = False
    password_hash: str | None = None
    max_participants: int = 16
    created_at: float = field(default_factory=time.time)
    empty_since: float | None = None


@dataclass(frozen=True)
class ChatRecord:
    id: int
    lobby_id: str
    session_id: str | None
    name: str
    text: str
    ts: float
    kind: str = "chat"
    meta: dict[str, Any] | None = None


@dataclass
class BotRecord:
    """A bot placed in a lobby; which provider runs it is live state, not stored."""

    id: str
    lobby_id: str
    kind: str
    session_id: str
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)


@dataclass
class Snapshot:
    sessions: list[SessionRecord]
    claims: list[NameClaim]
    lobbies: list[LobbyRecord]
    members: list[tuple[str, str]]  # (lobby_id, session_id)
    bots: list[BotRecord] = field(default_factory=list)
    # live state, kept only by a store several nodes share
    presence: dict[str, dict[str, Any]] = field(default_factory=dict)  # session → node, at
    providers: dict[str, dict[str, Any]] = field(default_factory=dict)  # session → hello
    bot_states: dict[str, dict[str, Any]] = field(default_factory=dict)  # bot → provider, status
