"""Durable state: the ``Store`` interface and its embedded SQLite implementation.

The hub keeps the live picture in memory and writes through to a store; every write that the
hub acknowledges to a client has been committed (and fsynced) first. ``RedisStore``
(redis_store.py) implements the same interface for several nodes.
"""

from __future__ import annotations

import abc
import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .changes import (BotDeleted, BotSaved, BotStateChanged, Change, ClaimDeleted, ClaimSaved,
                      LobbyDeleted, LobbySaved, MemberAdded, MemberRemoved, PresenceChanged,
                      ProviderDeleted, ProviderSaved, SessionSaved, SessionsDeleted)
from .records import BotRecord, ChatRecord, LobbyRecord, NameClaim, SessionRecord, Snapshot

T = TypeVar("T")


class StoreError(Exception):
    """The store could not complete an operation (disk full, read-only, corrupt, ...)."""


class Store(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> Snapshot:
        """Connects and returns what is stored."""

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot:
        """Everything stored, read again."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def save_session(self, session: SessionRecord) -> None: ...

    @abc.abstractmethod
    async def delete_sessions(self, ids: list[str]) -> None: ...

    @abc.abstractmethod
    async def save_claim(self, claim: NameClaim) -> None: ...

    @abc.abstractmethod
    async def delete_claim(self, key: str) -> None: ...

    @abc.abstractmethod
    async def save_lobby(self, lobby: LobbyRecord) -> None: ...

    @abc.abstractmethod
    async def delete_lobby(self, lobby_id: str) -> None:
        """Deletes the lobby with its memberships and chat."""

    @abc.abstractmethod
    async def add_member(self, lobby_id: str, session_id: str) -> None: ...

    @abc.abstractmethod
    async def remove_member(self, lobby_id: str, session_id: str) -> None: ...

    @abc.abstractmethod
    async def save_bot(self, bot: BotRecord) -> None: ...

    @abc.abstractmethod
    async def delete_bot(self, bot_id: str) -> None: ...

    @abc.abstractmethod
    async def add_chat(self, lobby_id: str, session_id: str | None, name: str, text: str,
                       kind: str = "chat", meta: dict[str, Any] | None = None,
                       client_ref: str | None = None) -> tuple[ChatRecord, bool]:
        """Appends a message; returns ``(record, created)``.

        ``client_ref`` makes a resend idempotent: the same session and ref returns the
        existing record with ``created`` false.
        """

    @abc.abstractmethod
    async def chat_history(self, lobby_id: str, *, before: int | None = None,
                           after: int | None = None, limit: int = 50,
                           kinds: tuple[str, ...] | None = None) -> list[ChatRecord]:
        """Messages in ascending id order: the newest ``limit`` before ``before``, or the
        oldest ``limit`` after ``after``."""

    @abc.abstractmethod
    async def replace_chat(self, rec: ChatRecord) -> None:
        """Rewrites a stored message's name, text and meta (the integrity check's repair)."""

    @abc.abstractmethod
    async def delete_chat(self, rec: ChatRecord) -> None:
        """Deletes one stored message (one the integrity check could not repair)."""

    # Live state: which node holds a session's socket, which providers are connected, where a
    # bot runs. One node keeps it in memory; a store several nodes share records it too.

    async def save_presence(self, session_id: str, node: str | None, at: float) -> None:
        return None

    async def save_provider(self, session_id: str, info: dict[str, Any] | None) -> None:
        return None

    async def save_bot_state(self, bot_id: str, state: dict[str, Any]) -> None:
        return None

    async def write(self, change: Change) -> None:
        """Makes ``change`` durable; a store several nodes share publishes it with the write."""
        match change:
            case SessionSaved(rec):
                await self.save_session(rec)
            case SessionsDeleted(ids):
                await self.delete_sessions(list(ids))
            case ClaimSaved(claim):
                await self.save_claim(claim)
            case ClaimDeleted(key):
                await self.delete_claim(key)
            case LobbySaved(lobby):
                await self.save_lobby(lobby)
            case LobbyDeleted(lobby_id):
                await self.delete_lobby(lobby_id)
            case MemberAdded(lobby_id, session_id):
                await self.add_member(lobby_id, session_id)
            case MemberRemoved(lobby_id, session_id):
                await self.remove_member(lobby_id, session_id)
            case PresenceChanged(session_id, node, at):
                await self.save_presence(session_id, node, at)
            case BotSaved(bot):
                await self.save_bot(bot)
            case BotDeleted(bot_id):
                await self.delete_bot(bot_id)
            case BotStateChanged(bot_id, state):
                await self.save_bot_state(bot_id, state)
            case ProviderSaved(session_id, info):
                await self.save_provider(session_id, info)
            case ProviderDeleted(session_id):
                await self.save_provider(session_id, None)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, name TEXT, name_key TEXT,
    bot INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS name_claims (
    key TEXT PRIMARY KEY, display TEXT NOT NULL, password_hash TEXT NOT NULL, session_id TEXT);
CREATE TABLE IF NOT EXISTS lobbies (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, key TEXT NOT NULL UNIQUE,
    private INTEGER NOT NULL, password_hash TEXT, max_participants INTEGER NOT NULL,
    created_at REAL NOT NULL, empty_since REAL);
CREATE TABLE IF NOT EXISTS members (
    lobby_id TEXT NOT NULL, session_id TEXT NOT NULL, joined_at REAL NOT NULL,
    PRIMARY KEY (lobby_id, session_id));
CREATE TABLE IF NOT EXISTS chat (
    id INTEGER PRIMARY KEY AUTOINCREMENT, lobby_id TEXT NOT NULL, session_id TEXT,
    name TEXT NOT NULL, text TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL,
    meta TEXT, client_ref TEXT);
CREATE TABLE IF NOT EXISTS bots (
    id TEXT PRIMARY KEY, lobby_id TEXT NOT NULL, kind TEXT NOT NULL, session_id TEXT NOT NULL,
    name TEXT NOT NULL, config TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS chat_by_lobby ON chat (lobby_id, id);
CREATE UNIQUE INDEX IF NOT EXISTS chat_client_ref ON chat (session_id, client_ref)
    WHERE client_ref IS NOT NULL;
"""


class SQLiteStore(Store):
    """SQLite in WAL mode with ``synchronous=FULL``: a commit is on disk when it returns.

    One worker thread owns the connection, so operations run in submission order and
    never block the event loop.
    """

    def __init__(self, path: Path, max_mb: int = 0) -> None:
        self.path = path
        self.max_mb = max_mb
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None, "store is not open"
            try:
                with self._db:  # one transaction, committed on success
                    return fn(self._db)
            except sqlite3.Error as exc:
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> Snapshot:
        def connect() -> None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                # text that is not valid UTF-8 (written by something else) reads as lone
                # surrogates instead of failing the whole query; readers then skip that record
                db.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA busy_timeout=5000")
                db.executescript(_SCHEMA)
                if self.max_mb:  # past it, writes fail with SQLITE_FULL, as on a full disk
                    page = db.execute("PRAGMA page_size").fetchone()[0]
                    db.execute(f"PRAGMA max_page_count={self.max_mb * 1024 * 1024 // page}")
                # back to implicit transactions for `with db:` (typeshed omits "", which sqlite3 takes)
                db.isolation_level = ""  # type: ignore[assignment]
                self._db = db
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"cannot open {self.path}: {exc}") from exc

        await asyncio.get_running_loop().run_in_executor(self._executor, connect)
        return await self.snapshot()

    async def snapshot(self) -> Snapshot:
        return await self._run(_load)

    async def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, shut)
        self._executor.shutdown(wait=True)

    async def save_session(self, s: SessionRecord) -> None:
        await self._run(lambda db: db.execute(
            "INSERT INTO sessions VALUES (?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET"
            " name=excluded.name, name_key=excluded.name_key, last_seen=excluded.last_seen",
            (s.id, s.token_hash, s.name, s.name_key, int(s.bot), s.created_at, s.last_seen)))

    async def delete_sessions(self, ids: list[str]) -> None:
        def delete(db: sqlite3.Connection) -> None:
            rows = [(i,) for i in ids]
            db.executemany("DELETE FROM members WHERE session_id=?", rows)
            db.executemany("UPDATE name_claims SET session_id=NULL WHERE session_id=?", rows)
            db.executemany("DELETE FROM sessions WHERE id=?", rows)

        await self._run(delete)

    async def save_claim(self, c: NameClaim) -> None:
        await self._run(lambda db: db.execute(
            "INSERT OR REPLACE INTO name_claims VALUES (?,?,?,?)",
            (c.key, c.display, c.password_hash, c.session_id)))

    async def delete_claim(self, key: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM name_claims WHERE key=?", (key,)))

    async def save_lobby(self, lb: LobbyRecord) -> None:
        await self._run(lambda db: db.execute(
            "INSERT OR REPLACE INTO lobbies VALUES (?,?,?,?,?,?,?,?)",
            (lb.id, lb.name, lb.key, int(lb.private), lb.password_hash, lb.max_participants,
             lb.created_at, lb.empty_since)))

    async def delete_lobby(self, lobby_id: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            for table, column in (("members", "lobby_id"), ("chat", "lobby_id"), ("bots", "lobby_id"),
                                  ("lobbies", "id")):
                db.execute(f"DELETE FROM {table} WHERE {column}=?", (lobby_id,))

        await self._run(delete)

    async def add_member(self, lobby_id: str, session_id: str) -> None:
        await self._run(lambda db: db.execute(
            "INSERT OR IGNORE INTO members VALUES (?,?,?)", (lobby_id, session_id, time.time())))

    async def remove_member(self, lobby_id: str, session_id: str) -> None:
        await self._run(lambda db: db.execute(
            "DELETE FROM members WHERE lobby_id=? AND session_id=?", (lobby_id, session_id)))

    async def save_bot(self, b: BotRecord) -> None:
        await self._run(lambda db: db.execute(
            "INSERT OR REPLACE INTO bots VALUES (?,?,?,?,?,?,?)",
            (b.id, b.lobby_id, b.kind, b.session_id, b.name, json.dumps(b.config), b.created_at)))

    async def delete_bot(self, bot_id: str) -> None:
        await self._run(lambda db: db.execute("DELETE FROM bots WHERE id=?", (bot_id,)))

    async def add_chat(self, lobby_id: str, session_id: str | None, name: str, text: str,
                       kind: str = "chat", meta: dict[str, Any] | None = None,
                       client_ref: str | None = None) -> tuple[ChatRecord, bool]:
        def add(db: sqlite3.Connection) -> tuple[ChatRecord, bool]:
            if client_ref is not None:
                row = db.execute(f"SELECT {_CHAT_COLUMNS} FROM chat WHERE session_id=? AND "
                                 "client_ref=?", (session_id, client_ref)).fetchone()
                if row is not None:
                    return _chat(row), False
            ts = time.time()
            cur = db.execute(
                "INSERT INTO chat (lobby_id, session_id, name, text, ts, kind, meta, client_ref)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (lobby_id, session_id, name, text, ts, kind,
                 json.dumps(meta) if meta is not None else None, client_ref))
            assert cur.lastrowid is not None
            return ChatRecord(cur.lastrowid, lobby_id, session_id, name, text, ts, kind, meta), True

        return await self._run(add)

    async def replace_chat(self, rec: ChatRecord) -> None:
        await self._run(lambda db: db.execute(
            "UPDATE chat SET name=?, text=?, meta=? WHERE id=?",
            (rec.name, rec.text, json.dumps(rec.meta) if rec.meta is not None else None, rec.id)))

    async def delete_chat(self, rec: ChatRecord) -> None:
        await self._run(lambda db: db.execute("DELETE FROM chat WHERE id=?", (rec.id,)))

    async def chat_history(self, lobby_id: str, *, before: int | None = None,
                           after: int | None = None, limit: int = 50,
                           kinds: tuple[str, ...] | None = None) -> list[ChatRecord]:
        where, args = ["lobby_id=?"], list[Any]([lobby_id])
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args.extend(kinds)
        if after is not None:
            where.append("id>?")
            args.append(after)
            order = "ASC"
        else:
            order = "DESC"
        if before is not None:
            where.append("id<?")
            args.append(before)
        sql = (f"SELECT {_CHAT_COLUMNS} FROM chat WHERE {' AND '.join(where)} "
               f"ORDER BY id {order} LIMIT ?")
        rows = await self._run(lambda db: db.execute(sql, (*args, limit)).fetchall())
        records = [_chat(r) for r in rows]
        return records if order == "ASC" else records[::-1]


_CHAT_COLUMNS = "id, lobby_id, session_id, name, text, ts, kind, meta"


def _chat(row: tuple[Any, ...]) -> ChatRecord:
    message_id, lobby_id, session_id, name, text, ts, kind, meta = row
    try:
        parsed = json.loads(meta) if meta else None
    except ValueError:
        parsed = {"unreadable": True}  # not a transcript's fields: readers skip the record
    return ChatRecord(message_id, lobby_id, session_id, name, text, ts, kind,
                      parsed if isinstance(parsed, dict) else None)


def _load(db: sqlite3.Connection) -> Snapshot:
    return Snapshot(
        sessions=[SessionRecord(i, th, n, nk, bool(b), c, ls) for i, th, n, nk, b, c, ls in
                  db.execute("SELECT * FROM sessions")],
        claims=[NameClaim(*row) for row in db.execute("SELECT * FROM name_claims")],
        lobbies=[LobbyRecord(i, n, k, bool(p), ph, m, c, e) for i, n, k, p, ph, m, c, e in
                 db.execute("SELECT * FROM lobbies")],
        members=[(lb, s) for lb, s in db.execute("SELECT lobby_id, session_id FROM members")],
        bots=[BotRecord(i, lb, k, s, n, json.loads(c), t) for i, lb, k, s, n, c, t in
              db.execute("SELECT * FROM bots")],
    )
