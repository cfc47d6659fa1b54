"""The shared store of several nodes: the ``Store`` interface on Redis.

Each write is one transaction (``MULTI`` or a script) that also publishes the change on the
cluster's channel, so the other nodes' pictures follow. Durability is Redis's: run it with
``appendonly yes`` and ``appendfsync always`` and a write acknowledged here survives a Redis
restart (docs/deploy.md).

Keys, under the prefix: ``sessions``, ``claims``, ``lobbies``, ``bots``, ``presence``,
``providers``, ``botstate`` (hashes of JSON records), ``members:{lobby}`` (sets),
``chat:{lobby}`` and ``chat:{lobby}:{kind}`` (sorted sets by message id, capped),
``chat:seq`` and ``ref:{session}:{ref}`` (a resend's idempotency key, kept a day).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from .changes import (BotDeleted, BotSaved, BotStateChanged, Change, ClaimDeleted, ClaimSaved,
                      LobbyDeleted, LobbySaved, MemberAdded, MemberRemoved, PresenceChanged,
                      ProviderDeleted, ProviderSaved, SessionSaved, SessionsDeleted, encode)
from .cluster import Cluster
from .records import BotRecord, ChatRecord, LobbyRecord, NameClaim, SessionRecord, Snapshot
from .store import Store, StoreError

log = logging.getLogger(__name__)

CHAT_KINDS = ("chat", "system", "transcript")
REF_TTL = 24 * 3600

# KEYS: seq, chat, chat-of-kind, ref key (or "" without one); ARGV: record JSON without id, cap
_ADD_CHAT = """
if KEYS[4] ~= '' then
  local known = redis.call('GET', KEYS[4])
  if known then
    local found = redis.call('ZRANGEBYSCORE', KEYS[2], known, known)
    if found[1] then return {0, found[1]} end
  end
end
local id = redis.call('INCR', KEYS[1])
local rec = cjson.decode(ARGV[1])
rec['id'] = id
local text = cjson.encode(rec)
redis.call('ZADD', KEYS[2], id, text)
redis.call('ZADD', KEYS[3], id, text)
local cap = tonumber(ARGV[2])
if cap > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -cap - 1)
  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -cap - 1)
end
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], id, 'EX', ARGV[3]) end
return {1, text}
"""

# KEYS: sessions, claims, presence, lobbies; ARGV: prefix, change, session ids...
_DELETE_SESSIONS = """
local lobbies = redis.call('HKEYS', KEYS[4])
for i = 3, #ARGV do
  local id = ARGV[i]
  for _, lobby in ipairs(lobbies) do redis.call('SREM', ARGV[1] .. ':members:' .. lobby, id) end
  redis.call('HDEL', KEYS[1], id)
  redis.call('HDEL', KEYS[3], id)
end
local claims = redis.call('HGETALL', KEYS[2])
for i = 1, #claims, 2 do
  local claim = cjson.decode(claims[i + 1])
  for j = 3, #ARGV do
    if claim['session_id'] == ARGV[j] then
      claim['session_id'] = cjson.null
      redis.call('HSET', KEYS[2], claims[i], cjson.encode(claim))
    end
  end
end
redis.call('PUBLISH', ARGV[1] .. ':changes', ARGV[2])
return 1
"""

# KEYS: lobbies, bots; ARGV: prefix, lobby id, change, chat kinds...
_DELETE_LOBBY = """
local p, lobby = ARGV[1], ARGV[2]
redis.call('HDEL', KEYS[1], lobby)
redis.call('DEL', p .. ':members:' .. lobby, p .. ':chat:' .. lobby)
for i = 4, #ARGV do redis.call('DEL', p .. ':chat:' .. lobby .. ':' .. ARGV[i]) end
local bots = redis.call('HGETALL', KEYS[2])
for i = 1, #bots, 2 do
  if cjson.decode(bots[i + 1])['lobby_id'] == lobby then
    redis.call('HDEL', KEYS[2], bots[i])
    redis.call('HDEL', p .. ':botstate', bots[i])
  end
end
redis.call('PUBLISH', p .. ':changes', ARGV[3])
return 1
"""


def _dump(record: Any) -> str:
    return json.dumps(dataclasses.asdict(record), separators=(",", ":"))


class RedisStore(Store):
    def __init__(self, cluster: Cluster, chat_cap: int = 10_000) -> None:
        self.cluster = cluster
        self.redis = cluster.redis
        self.prefix = cluster.prefix
        self.chat_cap = chat_cap
        self._add_chat = self.redis.register_script(_ADD_CHAT)
        self._delete_sessions = self.redis.register_script(_DELETE_SESSIONS)
        self._delete_lobby = self.redis.register_script(_DELETE_LOBBY)

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _change(self, change: Change) -> str:
        return encode(change, self.cluster.node_id)

    async def _write(self, change: str, *commands: tuple[str, ...]) -> None:
        """Runs ``commands`` and publishes ``change`` in one transaction."""
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                pipe.publish(self.cluster.changes_channel, change)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis: {exc}") from exc

    async def open(self) -> Snapshot:
        await self.cluster.connect()
        await self.cluster.start()
        return await self.snapshot()

    async def snapshot(self) -> Snapshot:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for name in ("sessions", "claims", "lobbies", "bots", "presence", "providers",
                             "botstate"):
                    pipe.hgetall(self._key(name))
                sessions, claims, lobbies, bots, presence, providers, botstate = \
                    await pipe.execute()
            async with self.redis.pipeline(transaction=False) as pipe:
                for lobby_id in lobbies:
                    pipe.smembers(self._key("members", lobby_id))
                member_sets = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis: {exc}") from exc
        return Snapshot(
            sessions=[SessionRecord(**json.loads(v)) for v in sessions.values()],
            claims=[NameClaim(**json.loads(v)) for v in claims.values()],
            lobbies=[LobbyRecord(**json.loads(v)) for v in lobbies.values()],
            members=[(lobby_id, sid) for lobby_id, sids in zip(lobbies, member_sets)
                     for sid in sids],
            bots=[BotRecord(**json.loads(v)) for v in bots.values()],
            presence={k: json.loads(v) for k, v in presence.items()},
            providers={k: json.loads(v) for k, v in providers.items()},
            bot_states={k: json.loads(v) for k, v in botstate.items()},
        )

    async def close(self) -> None:
        await self.cluster.close()

    # --- records ------------------------------------------------------------------------------

    async def _save(self, table: str, key: str,
                    change: SessionSaved | ClaimSaved | LobbySaved | BotSaved) -> None:
        await self._write(self._change(change), ("HSET", self._key(table), key, _dump(change.rec)))

    async def save_session(self, s: SessionRecord) -> None:
        await self._save("sessions", s.id, SessionSaved(s))

    async def delete_sessions(self, ids: list[str]) -> None:
        try:
            await self._delete_sessions(
                keys=[self._key("sessions"), self._key("claims"), self._key("presence"),
                      self._key("lobbies")],
                args=[self.prefix, self._change(SessionsDeleted(tuple(ids))), *ids])
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis: {exc}") from exc

    async def save_claim(self, c: NameClaim) -> None:
        await self._save("claims", c.key, ClaimSaved(c))

    async def delete_claim(self, key: str) -> None:
        await self._write(self._change(ClaimDeleted(key)),
                          ("HDEL", self._key("claims"), key))

    async def save_lobby(self, lb: LobbyRecord) -> None:
        await self._save("lobbies", lb.id, LobbySaved(lb))

    async def delete_lobby(self, lobby_id: str) -> None:
        try:
            await self._delete_lobby(
                keys=[self._key("lobbies"), self._key("bots")],
                args=[self.prefix, lobby_id, self._change(LobbyDeleted(lobby_id)),
                      *CHAT_KINDS])
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis: {exc}") from exc

    async def add_member(self, lobby_id: str, session_id: str) -> None:
        await self._write(self._change(MemberAdded(lobby_id, session_id)),
                          ("SADD", self._key("members", lobby_id), session_id))

    async def remove_member(self, lobby_id: str, session_id: str) -> None:
        await self._write(self._change(MemberRemoved(lobby_id, session_id)),
                          ("SREM", self._key("members", lobby_id), session_id))

    async def save_bot(self, b: BotRecord) -> None:
        await self._save("bots", b.id, BotSaved(b))

    async def delete_bot(self, bot_id: str) -> None:
        await self._write(self._change(BotDeleted(bot_id)),
                          ("HDEL", self._key("bots"), bot_id),
                          ("HDEL", self._key("botstate"), bot_id))

    # --- live state ---------------------------------------------------------------------------

    async def save_presence(self, session_id: str, node: str | None, at: float) -> None:
        value = json.dumps({"node": node, "at": at})
        await self._write(self._change(PresenceChanged(session_id, node, at)),
                          ("HSET", self._key("presence"), session_id, value))

    async def save_provider(self, session_id: str, info: dict[str, Any] | None) -> None:
        if info is None:
            await self._write(self._change(ProviderDeleted(session_id)),
                              ("HDEL", self._key("providers"), session_id))
            return
        await self._write(self._change(ProviderSaved(session_id, info)),
                          ("HSET", self._key("providers"), session_id, json.dumps(info)))

    async def save_bot_state(self, bot_id: str, state: dict[str, Any]) -> None:
        await self._write(self._change(BotStateChanged(bot_id, state)),
                          ("HSET", self._key("botstate"), bot_id, json.dumps(state)))

    # --- chat ---------------------------------------------------------------------------------

    async def add_chat(self, lobby_id: str, session_id: str | None, name: str, text: str,
                       kind: str = "chat", meta: dict[str, Any] | None = None,
                       client_ref: str | None = None) -> tuple[ChatRecord, bool]:
        body = {"lobby_id": lobby_id, "session_id": session_id, "name": name, "text": text,
                "ts": time.time(), "kind": kind, "meta": meta}
        ref_key = self._key("ref", session_id or "-", client_ref) if client_ref is not None else ""
        try:
            created, stored = await self._add_chat(
                keys=[self._key("chat", "seq"), self._key("chat", lobby_id),
                      self._key("chat", lobby_id, kind), ref_key],
                args=[json.dumps(body), self.chat_cap, REF_TTL])
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis: {exc}") from exc
        rec = _chat(stored)
        if rec is None:
            raise StoreError("Redis returned a message it can't have stored")
        return rec, bool(created)

    async def replace_chat(self, rec: ChatRecord) -> None:
        text = json.dumps(dataclasses.asdict(rec))
        keys = (self._key("chat", rec.lobby_id), self._key("chat", rec.lobby_id, rec.kind))
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    pipe.zremrangebyscore(key, rec.id, rec.id)
                    pipe.zadd(key, {text: rec.id})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis: {exc}") from exc

    async def delete_chat(self, rec: ChatRecord) -> None:
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for kind in CHAT_KINDS:
                    pipe.zremrangebyscore(self._key("chat", rec.lobby_id, kind), rec.id, rec.id)
                pipe.zremrangebyscore(self._key("chat", rec.lobby_id), rec.id, rec.id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis: {exc}") from exc

    async def chat_history(self, lobby_id: str, *, before: int | None = None,
                           after: int | None = None, limit: int = 50,
                           kinds: tuple[str, ...] | None = None) -> list[ChatRecord]:
        key = self._key("chat", lobby_id, kinds[0]) if kinds and len(kinds) == 1 else \
            self._key("chat", lobby_id)
        hi = f"({before}" if before is not None else "+inf"
        # str: redis's types can't know that the client decodes responses
        rows: list[str]
        try:
            if after is not None:
                rows = await self.redis.zrangebyscore(  # type: ignore[assignment]
                    key, f"({after}", hi, start=0, num=limit if not kinds else -1)
            else:
                rows = await self.redis.zrevrangebyscore(  # type: ignore[assignment]
                    key, hi, "-inf", start=0, num=limit if not kinds else -1)
                rows.reverse()
        except (RedisError, OSError) as exc:
            raise StoreError(f"Redis: {exc}") from exc
        records = [rec for rec in map(_chat, rows) if rec is not None]
        if kinds and len(kinds) > 1:
            records = [r for r in records if r.kind in kinds]
            records = records[:limit] if after is not None else records[-limit:]
        return records


def _chat(text: str) -> ChatRecord | None:
    """A stored message; None for one that is not even a record (readers skip it)."""
    try:
        d = json.loads(text)
        meta = d.get("meta")
        return ChatRecord(id=int(d["id"]), lobby_id=str(d["lobby_id"]),
                          session_id=d.get("session_id"), name=str(d["name"]),
                          text=str(d["text"]), ts=float(d["ts"]), kind=str(d["kind"]),
                          meta=meta if isinstance(meta, dict) else None)
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("skipping a stored message that is not a record: %.80r", text)
        return None
