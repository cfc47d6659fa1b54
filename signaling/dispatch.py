"""Bot dispatch: which providers are connected, which bots run where, and moving them.

A bot is a session of its own, placed in its lobby by the server. Each time a bot is handed
to a provider, its session gets a fresh token, so only the newest instance can connect; an
old instance (a provider that was cut off, not dead) is refused and stops by itself.

With several nodes, providers and bots may connect to any of them: each node knows every
provider and where each bot runs (the store records both and the other nodes apply the
changes), and ``BotStart`` reaches a provider through the hub, whatever its node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from shared import protocol as p
from shared.protocol import ErrorCode, ProtocolError
from shared.botconfig import check_config
from shared.tasks import TaskSet

from . import events
from .changes import (BotDeleted, BotSaved, BotStateChanged, DispatchChange, ProviderDeleted,
                      ProviderSaved)
from .hub import Hub
from .records import BotRecord, Snapshot

log = logging.getLogger(__name__)


@dataclass
class ProviderInfo:
    session_id: str
    name: str
    capacity: int
    kinds: dict[str, p.BotKind]
    bots: set[str] = field(default_factory=set)

    def has_room(self, kind: str) -> bool:
        return kind in self.kinds and len(self.bots) < self.capacity

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "capacity": self.capacity,
                "kinds": [k.to_dict() for k in self.kinds.values()]}


# how long ``POST …/bots`` waits for the provider to accept or refuse the config
CONFIG_VERDICT_TIMEOUT = 5.0


@dataclass
class BotInstance:
    record: BotRecord
    provider: str | None = None
    status: str = "pending"
    detail: str = ""
    error: str | None = None  # the error code of a failure ("invalid_config")
    # set when its provider reports on it: the config was parsed (accepted or refused)
    reported: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def id(self) -> str:
        return self.record.id

    def to_dict(self) -> dict[str, Any]:
        r = self.record
        return {"bot_id": r.id, "kind": r.kind, "lobby_id": r.lobby_id, "name": r.name,
                "session_id": r.session_id, "config": r.config, "status": self.status,
                "detail": self.detail, "error": self.error,
                "provider": self.provider is not None}


class Dispatcher:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.providers: dict[str, ProviderInfo] = {}
        self.bots: dict[str, BotInstance] = {}
        self._lock = asyncio.Lock()
        self._auto_lock = asyncio.Lock()
        self._tasks = TaskSet(log, "dispatcher task")
        self._dirty: dict[str, None] = {}  # bots whose state is not yet written, in order
        self._flushing = False
        hub.bus.subscribe(events.SessionDisconnected, self._on_disconnect)
        hub.bus.subscribe(events.MemberLeft, self._on_member_left)
        hub.bus.subscribe(events.MemberJoined, self._on_member_joined)

    def load(self, snap: Snapshot) -> None:
        self.bots.clear()
        self.providers.clear()
        for sid, info in snap.providers.items():
            session = self.hub.picture.sessions.get(sid)
            if session is not None and session.connected:  # on a live node
                self.apply(ProviderSaved(sid, info))
            else:
                self._tasks.spawn(self.hub.store.save_provider(sid, None))
        for rec in snap.bots:
            if rec.session_id in self.hub.picture.sessions and rec.lobby_id in self.hub.picture.lobbies:
                self.bots[rec.id] = BotInstance(rec)
                state = snap.bot_states.get(rec.id)
                if state is not None:
                    self.apply(BotStateChanged(rec.id, state))
            else:
                self._tasks.spawn(self.hub.store.delete_bot(rec.id))

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        async with self._lock:
            if self.hub.cluster is None:
                yield
            else:
                async with self.hub.cluster.exclusive("dispatch"):
                    yield

    # --- changes made on other nodes ----------------------------------------------------------

    def apply(self, change: DispatchChange) -> None:
        match change:
            case BotSaved(rec):
                self.bots.setdefault(rec.id, BotInstance(rec))
            case BotDeleted(bot_id):
                bot = self.bots.pop(bot_id, None)
                if bot is not None:
                    for prov in self.providers.values():
                        prov.bots.discard(bot.id)
            case BotStateChanged(bot_id, state):
                self._set_state(bot_id, state)
            case ProviderSaved(sid, info):
                kinds = {k["kind"]: p.BotKind.from_dict(k) for k in info["kinds"]}
                self.providers[sid] = ProviderInfo(
                    sid, info["name"], info["capacity"], kinds,
                    {b.id for b in self.bots.values() if b.provider == sid})
            case ProviderDeleted(sid):
                self.providers.pop(sid, None)

    def _set_state(self, bot_id: str, state: dict[str, Any]) -> None:
        bot = self.bots.get(bot_id)
        if bot is None:
            return
        bot.provider, bot.status, bot.detail = state["provider"], state["status"], state["detail"]
        bot.error = state.get("error")
        if state.get("reported"):
            bot.reported.set()
        for prov in self.providers.values():
            prov.bots.discard(bot.id)
        if bot.provider in self.providers:
            self.providers[bot.provider].bots.add(bot.id)

    # --- queries ------------------------------------------------------------------------------

    def kinds(self) -> list[dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for prov in self.providers.values():
            for kind in prov.kinds.values():
                entry = merged.setdefault(kind.kind, kind.to_dict() | {"providers": 0, "free": 0})
                entry["providers"] += 1
                entry["free"] += max(0, prov.capacity - len(prov.bots))
        return sorted(merged.values(), key=lambda k: k["kind"])

    def lobby_bots(self, lobby_id: str) -> list[BotInstance]:
        return [b for b in self.bots.values() if b.record.lobby_id == lobby_id]

    def find(self, lobby_id: str, bot_id: str) -> BotInstance:
        bot = self.bots.get(bot_id)
        if bot is None or bot.record.lobby_id != lobby_id:
            raise ProtocolError(ErrorCode.BOT_NOT_FOUND, "no such bot in this lobby")
        return bot

    # --- requests -----------------------------------------------------------------------------

    async def add(self, lobby_id: str, kind: str, config: Any, name: str | None, *,
                  checked: bool = False, pending_ok: bool = False) -> BotInstance:
        """Places a bot of ``kind`` in the lobby and hands it to a provider.

        ``checked``: wait for the provider to parse the config, and refuse what it refuses
        (``invalid_config``). ``pending_ok``: with no provider for the kind yet, the bot waits
        for one (an automatic bot, whose config is the default) instead of being refused."""
        lobby = self.hub.picture.find_lobby(lobby_id)
        announced = next((prov.kinds[kind] for prov in self.providers.values()
                          if kind in prov.kinds), None)
        if announced is None and not pending_ok:
            known = ", ".join(k["kind"] for k in self.kinds()) or "none"
            raise ProtocolError(ErrorCode.UNKNOWN_BOT_KIND,
                                f"no provider offers a {kind!r} bot (available: {known})")
        if announced is not None:
            config = check_config(announced, config if config is not None else {})
        if self._pick(kind) is None and not pending_ok:
            await self.hub.post_system(lobby_id, f"Could not add a {kind} bot: no provider has room")
            raise ProtocolError(ErrorCode.NO_PROVIDER, f"no provider has room for a {kind!r} bot")
        session, _ = await self.hub.create_session(bot=True)
        try:
            display = await self.hub.assign_name(session, name or kind.replace("_", " ").title(),
                                                 lobby)
            await self.hub.add_member(session, lobby)
        except BaseException:
            await self.hub.remove_session(session)
            raise
        rec = BotRecord(id=secrets.token_hex(6), lobby_id=lobby.id, kind=kind,
                        session_id=session.id, name=display, config=config)
        await self.hub.store.save_bot(rec)
        bot = self.bots[rec.id] = BotInstance(rec)
        if not await self._dispatch(bot):
            self._set_pending(bot)
        elif checked:
            await self._config_verdict(bot)
        return bot

    async def _config_verdict(self, bot: BotInstance) -> None:
        """Waits for the provider's first word on ``bot``; a refused config removes it."""
        with contextlib.suppress(asyncio.TimeoutError):  # an old or slow provider: 201 anyway
            await asyncio.wait_for(bot.reported.wait(), CONFIG_VERDICT_TIMEOUT)
        if bot.status == "failed" and bot.error == ErrorCode.INVALID_CONFIG.value:
            reason = bot.detail or "invalid config"
            await self.remove(bot, "invalid config")
            raise ProtocolError(ErrorCode.INVALID_CONFIG, reason)

    async def remove(self, bot: BotInstance, reason: str = "removed") -> None:
        self.bots.pop(bot.id, None)
        if bot.provider is not None:
            prov = self.providers.get(bot.provider)
            if prov is not None:
                prov.bots.discard(bot.id)
            self.hub.send_to_session(bot.provider, p.BotStop(bot_id=bot.id))
            self._tasks.spawn(self.dispatch_pending(failed=False))  # its place is free for a waiting bot
        await self.hub.store.delete_bot(bot.id)
        self._set_status(bot, "stopped", reason)
        session = self.hub.picture.sessions.get(bot.record.session_id)
        if session is not None:
            await self.hub.remove_session(session)

    # --- providers ----------------------------------------------------------------------------

    async def hello(self, provider_session: str, msg: p.ProviderHello) -> None:
        prov = ProviderInfo(provider_session, msg.name, msg.capacity,
                            {k.kind: k for k in msg.kinds})
        self.providers[provider_session] = prov
        await self.hub.store.save_provider(provider_session, prov.to_dict())
        log.info("provider %s connected: %s, capacity %d", msg.name,
                 ", ".join(prov.kinds) or "no kinds", msg.capacity)
        for running in msg.running:
            bot = self.bots.get(running.bot_id)
            if bot is not None and bot.provider in (None, provider_session):
                bot.provider = provider_session  # a server restart: the bot never stopped
                prov.bots.add(bot.id)
            else:  # moved elsewhere meanwhile, or removed: only one instance may run
                self.hub.send_to_session(provider_session, p.BotStop(bot_id=running.bot_id))
        await self.dispatch_pending()
        for lobby_id in list(self.hub.picture.lobbies):  # people who joined while no provider was here
            await self.add_auto_bots(lobby_id)

    def bot_status(self, provider_session: str, msg: p.BotStatus) -> None:
        bot = self.bots.get(msg.bot_id)
        if bot is None or bot.provider != provider_session:
            return
        if msg.metrics:
            self.hub.bus.emit(events.BotReported(bot.id, msg.status, dict(msg.metrics)))
        if (msg.status, msg.detail) == (bot.status, bot.detail) and msg.status != "failed":
            return  # new figures only: nothing for the lobby to see, or to store
        bot.error = msg.error if msg.status == "failed" else None
        refused = bot.error == ErrorCode.INVALID_CONFIG.value and not bot.reported.is_set()
        bot.reported.set()
        self._set_status(bot, msg.status, msg.detail)
        if msg.status == "failed":
            prov = self.providers.get(provider_session)
            if prov is not None:
                prov.bots.discard(bot.id)
            bot.provider = None
            self._tasks.spawn(self.dispatch_pending(failed=False))  # its place is free for a waiting bot
            if not refused:  # a refused config is the adder's error to read, not the lobby's
                self._tasks.spawn(self.hub.post_system(bot.record.lobby_id,
                                                       f"{bot.record.name} failed: {msg.detail}"))

    def _set_status(self, bot: BotInstance, status: str, detail: str = "",
                    error: str | None = None) -> None:
        bot.status, bot.detail = status, detail
        if error is not None:
            bot.error = error
        self._save_state(bot)
        r = bot.record
        self.hub.send_to_lobby(r.lobby_id, p.BotStatus(
            bot_id=r.id, status=status, detail=detail, lobby_id=r.lobby_id, kind=r.kind,
            name=r.name, session_id=r.session_id, error=error))

    def _set_pending(self, bot: BotInstance, why: str = "") -> None:
        """``pending``, saying what it waits for: ``no_provider`` (no provider runs its kind)
        or ``providers_full`` (every one that does is running all the bots it may)."""
        kind = bot.record.kind
        runs = [prov for prov in self.providers.values() if kind in prov.kinds]
        if not runs:
            error, wait = "no_provider", f"waiting for a provider that runs {kind} bots"
        else:
            used, capacity = (sum(len(prov.bots) for prov in runs),
                              sum(prov.capacity for prov in runs))
            error, wait = "providers_full", (
                f"waiting for room: every provider of {kind} bots is full ({used} of "
                f"{capacity} bots running; a provider's --capacity sets its share)")
        if (bot.status, bot.error) != ("pending", error) or why:
            self._set_status(bot, "pending", f"{why}: {wait}" if why else wait, error)

    def _pick(self, kind: str) -> ProviderInfo | None:
        candidates = [prov for prov in self.providers.values() if prov.has_room(kind)]
        return min(candidates, key=lambda prov: (len(prov.bots) / max(prov.capacity, 1),
                                                 len(prov.bots)), default=None)

    async def _dispatch(self, bot: BotInstance) -> bool:
        prov = self._pick(bot.record.kind)
        session = self.hub.picture.sessions.get(bot.record.session_id)
        if prov is None or session is None:
            return False
        token = await self.hub.rotate_token(session)
        bot.provider, bot.error = prov.session_id, None
        prov.bots.add(bot.id)
        r = bot.record
        self.hub.send_to_session(prov.session_id, p.BotStart(
            bot_id=r.id, kind=r.kind, lobby_id=r.lobby_id, token=token, name=r.name,
            config=r.config))
        self._set_status(bot, "starting", f"on {prov.name}")
        return True

    def _save_state(self, bot: BotInstance) -> None:
        """Records where ``bot`` runs; the newest state of each bot is written, in order."""
        if self.hub.cluster is None:
            return
        self._dirty[bot.id] = None  # read when written: the newest state wins
        if not self._flushing:
            self._flushing = True
            self._tasks.spawn(self._write_states())

    async def _write_states(self) -> None:
        try:
            while self._dirty:
                bot_id = next(iter(self._dirty))
                del self._dirty[bot_id]
                bot = self.bots.get(bot_id)
                if bot is not None:
                    await self.hub.store.save_bot_state(bot_id, {
                        "provider": bot.provider, "status": bot.status, "detail": bot.detail,
                        "error": bot.error, "reported": bot.reported.is_set()})
        finally:
            self._flushing = False

    async def dispatch_pending(self, *, failed: bool = True) -> None:
        """Hands the bots that have no provider to one with room; ``failed``: those that
        failed too (a provider that connects may run what another could not)."""
        async with self._exclusive():
            for bot in list(self.bots.values()):
                if bot.provider is None and bot.id in self.bots and \
                        (failed or bot.status == "pending") and not await self._dispatch(bot):
                    self._set_pending(bot)

    def _on_disconnect(self, event: events.SessionDisconnected) -> None:
        prov = self.providers.pop(event.session_id, None)
        if prov is None:
            return
        self._tasks.spawn(self.hub.store.save_provider(prov.session_id, None))
        log.warning("provider %s disconnected; moving its %d bot(s)", prov.name, len(prov.bots))
        for bot_id in prov.bots:
            bot = self.bots.get(bot_id)
            if bot is not None:
                bot.provider = None
                self._set_pending(bot, "its provider went away")
        self._tasks.spawn(self.dispatch_pending())

    def _on_member_joined(self, event: events.MemberJoined) -> None:
        session = self.hub.picture.sessions.get(event.session_id)
        if session is not None and not session.record.bot:
            self._tasks.spawn(self.add_auto_bots(event.lobby_id))

    async def add_auto_bots(self, lobby_id: str) -> None:
        """Adds the configured automatic bots (e.g. the transcriber) missing from a lobby with
        a person in it. With no provider for a kind yet, the bot is added ``pending`` and
        starts when one connects (``hello`` runs this for every lobby, too)."""
        async with self._auto_lock:  # one at a time: two joins at once add one transcriber
            lobby = self.hub.picture.lobbies.get(lobby_id)
            if lobby is None or not any(
                    (s := self.hub.picture.sessions.get(m)) is not None and not s.record.bot
                    for m in lobby.members):
                return
            present = {b.record.kind for b in self.lobby_bots(lobby_id)}
            for kind in self.hub.settings.auto_bot_kinds:
                if kind not in present:
                    try:
                        await self.add(lobby_id, kind, {}, None, pending_ok=True)
                    except ProtocolError as exc:  # a full lobby, say: the people come first
                        log.warning("could not add the automatic %s bot: %s", kind,
                                    exc.message, extra={"lobby_id": lobby_id})

    def _on_member_left(self, event: events.MemberLeft) -> None:
        """Bots leave with the last human, so the lobby can empty and expire."""
        lobby = self.hub.picture.lobbies.get(event.lobby_id)
        if lobby is None:
            return
        if any(not self.hub.picture.sessions[m].record.bot for m in lobby.members):
            return
        for bot in self.lobby_bots(event.lobby_id):
            self._tasks.spawn(self.remove(bot, "everyone left"))

    async def close(self) -> None:
        await self._tasks.close()


DISPATCHER = web.AppKey("dispatcher", Dispatcher)
