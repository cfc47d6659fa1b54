"""The hub owns the live picture: sessions, name claims, lobbies and who is connected.

It keeps that picture in memory, writes every change through to the ``Store`` before
acknowledging it, and sends frames to connections. The WebSocket and HTTP layers only parse
requests and call it.

With several nodes (``cluster.py``), every node holds the whole picture; a session's socket is on
one node (``LiveSession.node``), frames for it go there, and changes made elsewhere arrive
through ``apply_*``. Checks that must see every node's writes run under ``_exclusive()``.

Negotiation rule: the session that joins (or reconnects into) a lobby creates the offers. The
joiner gets one ``peer_added`` with ``create_offer: true`` per connected member; every member
gets one ``peer_added`` with ``create_offer: false`` for the joiner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from shared import protocol as p
from shared.protocol import ErrorCode, ProtocolError

from . import events, ice
from .history import check_storable, readable, repaired, stored_message
from .cluster import Change, Cluster
from .connection import CLOSE_REMOVED, CLOSE_REPLACED, Connection
from .names import clean_lobby_name, clean_name, hash_password, new_token, token_hash, verify_password
from .settings import Settings
from .store import ChatRecord, LobbyRecord, NameClaim, SessionRecord, Snapshot, Store

log = logging.getLogger(__name__)

SERVER_NAME = "ai-voicebot"


@dataclass
class LiveSession:
    record: SessionRecord
    conn: Connection | None = None  # the socket, when it is on this node
    disconnected_at: float = field(default_factory=time.time)
    lobbies: set[str] = field(default_factory=set)
    node: str | None = None  # the node holding the socket, if connected anywhere

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def connected(self) -> bool:
        return self.node is not None


@dataclass
class Lobby:
    record: LobbyRecord
    members: set[str] = field(default_factory=set)

    @property
    def id(self) -> str:
        return self.record.id

    def info(self) -> p.LobbyInfo:
        r = self.record
        return p.LobbyInfo(id=r.id, name=r.name, private=r.private,
                           has_password=r.password_hash is not None,
                           max_participants=r.max_participants)


class Hub:
    def __init__(self, settings: Settings, store: Store, bus: events.EventBus | None = None,
                 cluster: Cluster | None = None) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus or events.EventBus()
        self.cluster = cluster
        self.node_id = cluster.node_id if cluster is not None else "local"
        self.sessions: dict[str, LiveSession] = {}
        self.claims: dict[str, NameClaim] = {}
        self.lobbies: dict[str, Lobby] = {}
        self._by_token: dict[str, str] = {}
        self._lobby_keys: dict[str, str] = {}
        # membership and names change under one lock: their checks and writes span awaits
        self._lock = asyncio.Lock()
        self.open_sockets = 0  # WebSockets open on this server, counted by ws.py
        self._orphan_members: list[tuple[str, str]] = []
        self.snapshot: Snapshot | None = None
        if cluster is not None:
            cluster.handlers.update({
                "session": self.apply_session, "sessions-": self.apply_sessions_deleted,
                "claim": self.apply_claim, "claim-": self.apply_claim_deleted,
                "lobby": self.apply_lobby, "lobby-": self.apply_lobby_deleted,
                "member+": self.apply_member_added, "member-": self.apply_member_removed,
                "presence": self.apply_presence})
            cluster.on_deliver = self._deliver_local
            cluster.on_nodes_lost = self.nodes_lost
            cluster.watched_nodes = lambda: {s.node for s in self.sessions.values() if s.node}

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """Serializes check-then-write: on this node, and across nodes when there are several."""
        async with self._lock:
            if self.cluster is None:
                yield
            else:
                async with self.cluster.exclusive("hub"):
                    yield

    # --- start-up -----------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Loads the store and runs the integrity check; returns the repairs it made."""
        snap = self.snapshot = await self.store.open()
        self._load(snap)
        await self._load_presence(snap)
        if self.cluster is not None:
            self.cluster.run()
        return await self.check_integrity(chat=True)

    async def resync(self) -> None:
        """Brings the picture in line with the shared store (changes may have been missed).

        Objects are updated in place: handlers in flight hold them."""
        assert self.cluster is not None
        snap = self.snapshot = await self.store.snapshot()
        stored = {rec.id for rec in snap.sessions}
        gone = [sid for sid in self.sessions if sid not in stored]
        self.apply_sessions_deleted({"ids": gone})
        for rec in snap.sessions:
            self._upsert_session(rec)
        self.claims = {c.key: c for c in snap.claims}
        kept = {r.id for r in snap.lobbies}
        for lobby_id in [lid for lid in self.lobbies if lid not in kept]:
            self.apply_lobby_deleted({"id": lobby_id})
        for lrec in snap.lobbies:
            self._upsert_lobby(lrec)
        for lobby in self.lobbies.values():
            lobby.members.clear()
        for session in self.sessions.values():
            session.lobbies.clear()
        for lobby_id, sid in snap.members:
            self.apply_member_added({"lobby": lobby_id, "session": sid})
        await self._load_presence(snap)

    async def _load_presence(self, snap: Snapshot) -> None:
        """Who is connected where: sessions on a live node stay connected; sockets held here
        are the truth about themselves (and are recorded again if the store lost that)."""
        if self.cluster is None:
            return
        nodes = {v.get("node") for v in snap.presence.values()} - {None, self.node_id}
        alive = {n for n in nodes if n and await self.cluster.alive(n)}
        now = time.time()
        for session in self.sessions.values():
            value = snap.presence.get(session.id, {})
            if session.conn is not None:
                session.node = self.node_id
                if value.get("node") != self.node_id:
                    await self.store.save_presence(session.id, self.node_id, now)
            elif value.get("node") in alive:
                session.node = value["node"]
            elif session.node is not None:
                session.node, session.disconnected_at = None, float(value.get("at") or now)

    def _load(self, snap: Snapshot) -> None:
        now = time.time()
        for rec in snap.sessions:
            # everyone was cut off by the restart: the grace period starts now
            self.sessions[rec.id] = LiveSession(rec, disconnected_at=now)
            self._by_token[rec.token_hash] = rec.id
        self.claims = {c.key: c for c in snap.claims}
        for lrec in snap.lobbies:
            self.lobbies[lrec.id] = Lobby(lrec)
            self._lobby_keys[lrec.key] = lrec.id
        for lobby_id, session_id in snap.members:
            lobby, session = self.lobbies.get(lobby_id), self.sessions.get(session_id)
            if lobby is None or session is None:
                self._orphan_members.append((lobby_id, session_id))
                continue
            lobby.members.add(session_id)
            session.lobbies.add(lobby_id)

    def is_live(self, s: LiveSession, now: float | None = None) -> bool:
        """Connected, or disconnected for less than the grace period."""
        return s.connected or (now or time.time()) - s.disconnected_at < self.settings.grace

    async def check_integrity(self, *, chat: bool = False) -> list[str]:
        """Finds and repairs what breaks the rules; ``chat`` reads every stored message too
        (at start-up and on the admin's request: it is the long part)."""
        async with self._exclusive():
            repairs = await self._check_integrity()
        if chat:
            repairs += await self._repair_chat()
        return repairs

    async def _repair_chat(self) -> list[str]:
        repairs = []
        for lobby_id in list(self.lobbies):
            after = 0
            while True:
                page = await self.store.chat_history(lobby_id, after=after, limit=500)
                good = {rec.id for rec, _ in readable(page)}
                for rec in page:
                    if rec.id in good:
                        continue
                    fixed = repaired(rec)
                    if fixed is None:
                        await self.store.delete_chat(rec)
                        repairs.append(f"deleted unreadable message {rec.id} in lobby {lobby_id}")
                    else:
                        await self.store.replace_chat(fixed)
                        repairs.append(f"repaired unreadable message {rec.id} in lobby {lobby_id}")
                if len(page) < 500:
                    break
                after = page[-1].id
        for repair in repairs:
            log.warning("integrity: %s", repair)
        return repairs

    async def _check_integrity(self) -> list[str]:
        repairs: list[str] = []
        for lobby_id, session_id in self._orphan_members:
            await self.store.remove_member(lobby_id, session_id)
            repairs.append(f"removed membership of missing session/lobby {session_id}/{lobby_id}")
        self._orphan_members = []
        for claim in self.claims.values():
            holder = self.sessions.get(claim.session_id) if claim.session_id else None
            if claim.session_id and (holder is None or holder.record.name_key != claim.key):
                repairs.append(f"claim {claim.key!r} pointed at a session not holding it")
                claim.session_id = None
                await self.store.save_claim(claim)
        now = time.time()
        by_key: dict[str, list[LiveSession]] = {}
        for s in self.sessions.values():
            # bots' names are unique within their lobby only (every lobby has its Transcriber)
            if s.record.name_key is not None and not s.record.bot and self.is_live(s, now):
                by_key.setdefault(s.record.name_key, []).append(s)
        for key, holders in by_key.items():
            claim = self.claims.get(key)
            if claim is not None:
                keep = [h for h in holders if h.id == claim.session_id]
            else:
                keep = sorted(holders, key=lambda h: (h.record.created_at, h.id))[:1]
            for s in holders:
                if s not in keep:
                    repairs.append(f"session {s.id} held name {key!r} it may not hold; cleared")
                    await self._rename(s, None, None)
        for lobby in self.lobbies.values():
            if len(lobby.members) > lobby.record.max_participants:
                repairs.append(f"lobby {lobby.id} holds {len(lobby.members)} members, "
                               f"over its cap of {lobby.record.max_participants}")
        for repair in repairs:
            log.warning("integrity: %s", repair)
        return repairs

    # --- sessions -----------------------------------------------------------------------------

    async def create_session(self, *, bot: bool = False) -> tuple[LiveSession, str]:
        token = new_token()
        rec = SessionRecord(id=secrets.token_hex(8), token_hash=token_hash(token), bot=bot)
        await self.store.save_session(rec)
        session = LiveSession(rec)
        self.sessions[rec.id] = session
        self._by_token[rec.token_hash] = rec.id
        return session, token

    async def rotate_token(self, s: LiveSession) -> str:
        """Issues a new token for ``s``; the old one stops working."""
        token = new_token()
        self._by_token.pop(s.record.token_hash, None)
        s.record.token_hash = token_hash(token)
        self._by_token[s.record.token_hash] = s.id
        await self.store.save_session(s.record)
        return token

    def authenticate(self, token: str) -> LiveSession | None:
        session_id = self._by_token.get(token_hash(token))
        return self.sessions.get(session_id) if session_id else None

    async def find_session(self, token: str) -> LiveSession | None:
        """``authenticate``, waiting for the other nodes' news first if the token is unknown
        (a session created on another node a moment ago)."""
        session = self.authenticate(token)
        if session is None and self.cluster is not None:
            await self.cluster.barrier()
            session = self.authenticate(token)
        return session

    def session_info(self, s: LiveSession) -> p.SessionInfo:
        claim = self.claims.get(s.record.name_key or "")
        return p.SessionInfo(session_id=s.id, name=s.record.name, bot=s.record.bot,
                             protected=claim is not None and claim.session_id == s.id,
                             lobbies=sorted(s.lobbies))

    async def connect(self, s: LiveSession, conn: Connection) -> None:
        """Attaches a new connection; resumes the session's lobbies on it."""
        old = s.conn
        s.conn, s.node = conn, self.node_id
        if old is not None:
            await old.close(CLOSE_REPLACED, "session connected elsewhere", drain=0.2)
        s.record.last_seen = time.time()
        await self.store.save_session(s.record)
        await self.store.save_presence(s.id, self.node_id, s.record.last_seen)  # others close theirs
        servers, conn.ice_expires = self.ice_servers(s.id)
        conn.send(p.encode(p.Welcome(protocol=p.PROTOCOL_VERSION, server=SERVER_NAME,
                                     session=self.session_info(s), ice_servers=servers,
                                     ice_expires=conn.ice_expires,
                                     ice_policy=self.settings.ice_policy)))
        log.info("connected from %s", conn.remote, extra={"session_id": s.id})
        self.bus.emit(events.SessionConnected(s.id))
        for lobby_id in sorted(s.lobbies):
            lobby = self.lobbies[lobby_id]
            conn.send(p.encode(self.lobby_state(lobby)))
            self._announce(s, lobby)
            await self._send_history(conn, lobby_id, None)

    def ice_servers(self, session_id: str) -> tuple[list[p.IceServer], float | None]:
        """The ICE servers of a session, with a fresh TURN credential (see ice.py)."""
        st = self.settings
        servers, expires = ice.ice_servers(st.stun_urls, st.turn_urls, st.turn_secret,
                                           st.turn_ttl, session_id, time.time())
        return [p.IceServer(**server) for server in servers], expires

    def renew_ice(self, now: float | None = None) -> int:
        """Sends new ICE servers to every connection whose TURN credential is past half its
        life, so nobody holds an expired one; returns how many were renewed."""
        if not self.settings.turn_urls:
            return 0  # no credential to renew: nothing to walk
        now = now or time.time()
        half = self.settings.turn_ttl / 2
        renewed = 0
        for s in self.sessions.values():
            conn = s.conn
            if conn is None or conn.ice_expires is None or conn.ice_expires - now > half:
                continue
            servers, conn.ice_expires = self.ice_servers(s.id)
            conn.send(p.encode(p.IceServers(ice_servers=servers, expires=conn.ice_expires)))
            renewed += 1
        return renewed

    async def disconnect(self, s: LiveSession, conn: Connection) -> None:
        if s.conn is not conn:  # replaced by a newer connection: nothing changes for others
            return
        s.conn, s.node = None, None
        s.disconnected_at = s.record.last_seen = time.time()
        log.info("disconnected", extra={"session_id": s.id})
        self.bus.emit(events.SessionDisconnected(s.id))
        for lobby_id in s.lobbies:
            self._broadcast_state(self.lobbies[lobby_id])
        try:
            await self.store.save_presence(s.id, None, s.disconnected_at)
            await self.store.save_session(s.record)
        except Exception:
            log.exception("session %s: could not record last_seen", s.id)

    # --- names --------------------------------------------------------------------------------

    async def set_name(self, s: LiveSession, raw: str, password: str | None) -> p.SessionInfo:
        display, key = clean_name(raw)
        async with self._exclusive():
            claim = self.claims.get(key)
            holder = self._name_holder(key, exclude=s)
            if claim is not None and claim.session_id != s.id:
                if password is None:
                    raise ProtocolError(ErrorCode.NAME_PROTECTED,
                                        f"the name {display!r} is protected by a password")
                if not await verify_password(password, claim.password_hash):
                    raise ProtocolError(ErrorCode.BAD_PASSWORD, "wrong password for this name")
                if holder is not None and holder.connected:
                    raise ProtocolError(ErrorCode.NAME_IN_USE,
                                        f"the name {display!r} is in use by a connected session")
            elif holder is not None and self.is_live(holder):
                raise ProtocolError(ErrorCode.NAME_IN_USE, f"the name {display!r} is in use")
            if holder is not None:  # stale (or password-overridden) holder loses the name
                await self._rename(holder, None, None)
            if claim is None and password is not None:
                claim = NameClaim(key, display, await hash_password(password), None)
                self.claims[key] = claim
            await self._rename(s, display, key)
            return self.session_info(s)

    async def assign_name(self, s: LiveSession, base: str, lobby: Lobby) -> str:
        """Gives bot ``s`` the first name of ``base``, ``base 2``, ``base 3``… that nobody in
        ``lobby`` has (a protected name excepted): bot names are unique per lobby, so each
        lobby has its "Transcriber"."""
        async with self._exclusive():
            taken = {self.sessions[m].record.name_key for m in lobby.members
                     if m in self.sessions and m != s.id}
            for n in range(1, 1000):
                display, key = clean_name(base if n == 1 else f"{base[:28]} {n}")
                if key not in self.claims and key not in taken:
                    await self._rename(s, display, key)
                    return display
        raise ProtocolError(ErrorCode.NAME_IN_USE, f"no free name like {base!r}")

    def _name_holder(self, key: str, exclude: LiveSession) -> LiveSession | None:
        """The person holding a name; bots' names don't count (unique per lobby only)."""
        for other in self.sessions.values():
            if other is not exclude and not other.record.bot and other.record.name_key == key:
                return other
        return None

    async def _rename(self, s: LiveSession, display: str | None, key: str | None) -> None:
        old = self.claims.get(s.record.name_key or "")
        if old is not None and old.session_id == s.id and old.key != key:
            old.session_id = None
            await self.store.save_claim(old)
        new = self.claims.get(key or "")
        if new is not None and new.session_id != s.id:
            new.session_id = s.id
            await self.store.save_claim(new)
        s.record.name, s.record.name_key = display, key
        await self.store.save_session(s.record)
        if display is None:
            self._send_text(s, p.encode(p.Session(session=self.session_info(s))))
        for lobby_id in s.lobbies:
            self._broadcast_state(self.lobbies[lobby_id])

    # --- lobbies ------------------------------------------------------------------------------

    def find_lobby(self, lobby_id: str) -> Lobby:
        lobby = self.lobbies.get(lobby_id)
        if lobby is None:
            raise ProtocolError(ErrorCode.LOBBY_NOT_FOUND, "no such lobby")
        return lobby

    def lobby_by_name(self, raw: str) -> Lobby | None:
        lobby_id = self._lobby_keys.get(clean_lobby_name(raw)[1])
        return self.lobbies.get(lobby_id) if lobby_id else None

    async def create_lobby(self, raw_name: str, *, private: bool = False,
                           password: str | None = None,
                           max_participants: int | None = None) -> Lobby:
        async with self._exclusive():
            return await self._create_lobby(raw_name, private=private, password=password,
                                            max_participants=max_participants)

    async def _create_lobby(self, raw_name: str, *, private: bool = False,
                            password: str | None = None,
                            max_participants: int | None = None) -> Lobby:
        name, key = clean_lobby_name(raw_name)
        cap = max_participants or self.settings.max_participants
        if not 2 <= cap <= self.settings.max_participants:
            raise ProtocolError(ErrorCode.INVALID_PAYLOAD,
                                f"max_participants must be within 2..{self.settings.max_participants}")
        pw_hash = await hash_password(password) if password else None
        if key in self._lobby_keys:  # checked after the await: two creators may race
            raise ProtocolError(ErrorCode.LOBBY_EXISTS, f"a lobby named {name!r} exists")
        rec = LobbyRecord(id=secrets.token_urlsafe(9), name=name, key=key, private=private,
                          password_hash=pw_hash, max_participants=cap, empty_since=time.time())
        self._lobby_keys[key] = rec.id
        try:
            await self.store.save_lobby(rec)
        except BaseException:
            del self._lobby_keys[key]
            raise
        lobby = self.lobbies[rec.id] = Lobby(rec)
        return lobby

    def public_lobbies(self) -> list[tuple[Lobby, int]]:
        return [(lb, len(lb.members)) for lb in self.lobbies.values() if not lb.record.private]

    def participants(self, lobby: Lobby) -> list[p.Participant]:
        out = []
        for sid in sorted(lobby.members):
            s = self.sessions[sid]
            out.append(p.Participant(session_id=sid, name=s.record.name or "", bot=s.record.bot,
                                     connected=s.connected))
        return out

    def lobby_state(self, lobby: Lobby) -> p.LobbyState:
        return p.LobbyState(lobby=lobby.info(), participants=self.participants(lobby))

    async def join(self, s: LiveSession, msg: p.Join, ref: str | None) -> None:
        if s.record.name is None:
            raise ProtocolError(ErrorCode.NAME_REQUIRED, "set a name before joining a lobby")
        async with self._exclusive():
            if msg.lobby_id is not None:
                lobby = self.find_lobby(msg.lobby_id)
            else:
                assert msg.lobby_name is not None
                lobby = self.lobby_by_name(msg.lobby_name) or await self._create_lobby(
                    msg.lobby_name, private=msg.private, password=msg.password)
            already = s.id in lobby.members
            if not already:
                if lobby.record.password_hash is not None:
                    if msg.password is None:
                        raise ProtocolError(ErrorCode.LOBBY_PASSWORD_REQUIRED,
                                            "this lobby needs a password")
                    if not await verify_password(msg.password, lobby.record.password_hash):
                        raise ProtocolError(ErrorCode.BAD_PASSWORD, "wrong lobby password")
                await self._add_member(s, lobby)
            conn = s.conn
            if conn is None:
                return
            conn.send(p.encode(self.lobby_state(lobby), ref))
            if lobby.id not in conn.announced:
                self._announce(s, lobby)
        await self._send_history(conn, lobby.id, msg.history_since)

    async def add_member(self, s: LiveSession, lobby: Lobby) -> None:
        """Places ``s`` in ``lobby`` without a join (bots placed by the dispatcher)."""
        async with self._exclusive():
            if s.id not in lobby.members:
                await self._add_member(s, lobby)

    async def _add_member(self, s: LiveSession, lobby: Lobby) -> None:
        if len(lobby.members) >= lobby.record.max_participants:
            raise ProtocolError(ErrorCode.LOBBY_FULL,
                                f"the lobby is full ({lobby.record.max_participants})")
        await self.store.add_member(lobby.id, s.id)
        lobby.members.add(s.id)
        s.lobbies.add(lobby.id)
        if lobby.record.empty_since is not None:
            lobby.record.empty_since = None
            await self.store.save_lobby(lobby.record)
        self.bus.emit(events.MemberJoined(lobby.id, s.id))
        log.info("joined", extra={"session_id": s.id, "lobby_id": lobby.id})

    def _announce(self, s: LiveSession, lobby: Lobby) -> None:
        """Tells the joiner and the members about each other (see the module's rule)."""
        assert s.conn is not None
        s.conn.announced.add(lobby.id)
        me = p.Participant(session_id=s.id, name=s.record.name or "", bot=s.record.bot)
        for other_id in sorted(lobby.members):
            other = self.sessions[other_id]
            if other is s or not other.connected:
                continue
            peer = p.Participant(session_id=other.id, name=other.record.name or "",
                                 bot=other.record.bot)
            s.conn.send(p.encode(p.PeerAdded(lobby_id=lobby.id, peer=peer, create_offer=True)))
            self._send_text(other, p.encode(p.PeerAdded(lobby_id=lobby.id, peer=me,
                                                        create_offer=False)))
        self._broadcast_state(lobby, exclude=s)

    async def _send_history(self, conn: Connection, lobby_id: str, since: int | None) -> None:
        history = await self.store.chat_history(lobby_id, after=since,
                                                limit=self.settings.history_limit)
        for rec, msg in readable(history):
            conn.send(p.encode(msg, f"m{rec.id}"))

    async def part(self, s: LiveSession, lobby_id: str) -> None:
        async with self._exclusive():  # an unknown lobby too: s is not a member of it
            await self._remove_member(s, self.member_lobby(s, lobby_id))

    async def remove_session(self, s: LiveSession) -> None:
        """Takes ``s`` out of every lobby and deletes it (a bot being removed)."""
        async with self._exclusive():
            for lobby_id in sorted(s.lobbies):
                await self._remove_member(s, self.lobbies[lobby_id])
            if s.conn is not None:
                await s.conn.close(CLOSE_REMOVED, "removed")
            await self._expire_session(s)

    async def _remove_member(self, s: LiveSession, lobby: Lobby) -> None:
        await self.store.remove_member(lobby.id, s.id)
        lobby.members.discard(s.id)
        s.lobbies.discard(lobby.id)
        if s.conn is not None:
            s.conn.announced.discard(lobby.id)
        if not lobby.members:
            lobby.record.empty_since = time.time()
            await self.store.save_lobby(lobby.record)
        removed = p.PeerRemoved(lobby_id=lobby.id, peer_id=s.id)
        self._send([*lobby.members, s.id], removed)  # the member learns of it too
        self._broadcast_state(lobby)
        self.bus.emit(events.MemberLeft(lobby.id, s.id))
        log.info("left", extra={"session_id": s.id, "lobby_id": lobby.id})

    async def close_lobby(self, lobby: Lobby) -> None:
        """Removes every member, then the lobby with its chat (an administrator's delete)."""
        async with self._exclusive():
            for session_id in sorted(lobby.members):
                await self._remove_member(self.sessions[session_id], lobby)
            await self.delete_lobby(lobby)

    async def clear_claim(self, key: str) -> None:
        """Takes the password off a name; its holder keeps it as an ordinary name."""
        async with self._exclusive():
            claim = self.claims.pop(key, None)
            if claim is None:
                return
            await self.store.delete_claim(key)
            holder = self.sessions.get(claim.session_id or "")
            if holder is not None:
                self._send_text(holder, p.encode(p.Session(session=self.session_info(holder))))

    async def delete_lobby(self, lobby: Lobby) -> None:
        await self.store.delete_lobby(lobby.id)
        for sid in lobby.members:
            self.sessions[sid].lobbies.discard(lobby.id)
        self.lobbies.pop(lobby.id, None)
        self._lobby_keys.pop(lobby.record.key, None)
        self.bus.emit(events.LobbyDeleted(lobby.id))

    # --- chat and relay -----------------------------------------------------------------------

    def member_lobby(self, s: LiveSession, lobby_id: str) -> Lobby:
        lobby = self.lobbies.get(lobby_id)
        if lobby is None or s.id not in lobby.members:
            raise ProtocolError(ErrorCode.NOT_IN_LOBBY, "not a member of this lobby")
        return lobby

    async def post(self, lobby: Lobby, s: LiveSession | None, text: str, *, kind: str = "chat",
                   meta: dict[str, Any] | None = None,
                   client_ref: str | None = None) -> ChatRecord:
        """Persists a lobby message, then delivers it to every connected member."""
        name = s.record.name or "" if s is not None else "system"
        check_storable(ChatRecord(0, lobby.id, s.id if s else None, name, text, 0.0, kind, meta))
        rec, created = await self.store.add_chat(lobby.id, s.id if s else None, name, text,
                                                 kind=kind, meta=meta, client_ref=client_ref)
        if created:
            self._send(lobby.members, stored_message(rec), f"m{rec.id}")
            self.bus.emit(events.ChatPosted(lobby.id, rec.id, rec.session_id, kind))
        if self.cluster is not None:  # acknowledged means on its way to every node, too
            await self.cluster.flush()
        return rec

    async def post_system(self, lobby_id: str, text: str) -> None:
        lobby = self.lobbies.get(lobby_id)
        if lobby is not None:
            await self.post(lobby, None, text, kind="system")

    def relay(self, s: LiveSession, msg: p.Sdp | p.Ice) -> None:
        lobby = self.member_lobby(s, msg.lobby_id)
        if msg.peer_id == s.id:
            raise ProtocolError(ErrorCode.NOT_ALLOWED, "cannot relay to yourself")
        target = self.sessions.get(msg.peer_id)
        if target is None or msg.peer_id not in lobby.members:
            raise ProtocolError(ErrorCode.PEER_NOT_IN_LOBBY, "that peer is not in this lobby")
        # the hot path: the validated fields go on with the sender's id, not rebuilt or checked
        # again (a payload's instance dict holds exactly its fields)
        data = vars(msg) | {"peer_id": s.id}
        if isinstance(msg, p.Ice) and msg.candidate is not None:
            data["candidate"] = msg.candidate.wire()  # the members that were sent
        if not self._send_text(target, p.encode_data(msg.type, data)):
            raise ProtocolError(ErrorCode.PEER_UNAVAILABLE, "that peer is not connected")

    # --- delivery -----------------------------------------------------------------------------

    def send_to_lobby(self, lobby_id: str, msg: p.Message) -> None:
        lobby = self.lobbies.get(lobby_id)
        if lobby is not None:
            self._send(lobby.members, msg)

    def send_to_session(self, session_id: str, msg: p.Message) -> bool:
        s = self.sessions.get(session_id)
        return s is not None and self._send_text(s, p.encode(msg))

    def _send_text(self, s: LiveSession, text: str) -> bool:
        """Sends to ``s`` on this node or on the node holding its socket."""
        if s.conn is not None:
            s.conn.send(text)
            return True
        if s.node is not None and s.node != self.node_id and self.cluster is not None:
            self.cluster.forward(s.node, [s.id], text)
            return True
        return False

    def _send(self, session_ids: Iterable[str], msg: p.Message, id: str | None = None) -> None:
        text = p.encode(msg, id)  # encoded once for every recipient
        remote: dict[str, list[str]] = {}
        for sid in session_ids:
            s = self.sessions.get(sid)
            if s is None:
                continue
            if s.conn is not None:
                s.conn.send(text)
            elif s.node is not None and s.node != self.node_id:
                remote.setdefault(s.node, []).append(sid)
        if remote and self.cluster is not None:
            for node, ids in remote.items():  # one message a node, not one a member
                self.cluster.forward(node, ids, text)

    def _deliver_local(self, session_ids: list[str], text: str) -> None:
        """Frames another node sent for sockets held here."""
        for sid in session_ids:
            s = self.sessions.get(sid)
            if s is not None and s.conn is not None:
                s.conn.send(text)

    def _broadcast_state(self, lobby: Lobby, exclude: LiveSession | None = None) -> None:
        self._send((m for m in lobby.members if exclude is None or m != exclude.id),
                   self.lobby_state(lobby))

    # --- expiry -------------------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> None:
        """Ends grace periods, expires stale sessions and empty lobbies."""
        now = now or time.time()
        if not self._due(now):  # the common case, decided without taking the lock
            return
        st = self.settings
        async with self._exclusive():
            for s in list(self.sessions.values()):
                if s.connected:
                    continue
                if s.lobbies and now - s.disconnected_at >= st.grace:
                    for lobby_id in sorted(s.lobbies):
                        await self._remove_member(s, self.lobbies[lobby_id])
                if now - s.record.last_seen >= st.session_ttl:
                    await self._expire_session(s)
            for lobby in list(self.lobbies.values()):
                if self._lobby_expired(lobby, now):
                    await self.delete_lobby(lobby)

    def _due(self, now: float) -> bool:
        st = self.settings
        return any(not s.connected and (
            (s.lobbies and now - s.disconnected_at >= st.grace)
            or now - s.record.last_seen >= st.session_ttl) for s in self.sessions.values()) \
            or any(self._lobby_expired(lobby, now) for lobby in self.lobbies.values())

    def _lobby_expired(self, lobby: Lobby, now: float) -> bool:
        empty_since = lobby.record.empty_since
        return not lobby.members and empty_since is not None and \
            now - empty_since >= self.settings.lobby_ttl

    async def _expire_session(self, s: LiveSession) -> None:
        await self.store.delete_sessions([s.id])
        for claim in self.claims.values():
            if claim.session_id == s.id:
                claim.session_id = None
        self.sessions.pop(s.id, None)
        self._by_token.pop(s.record.token_hash, None)
        log.info("session %s expired", s.id)

    # --- other nodes ----------------------------------------------------------------------------

    async def nodes_lost(self, nodes: set[str]) -> None:
        """Sessions held by dead nodes are disconnected; the grace period starts now."""
        async with self._exclusive():
            now = time.time()
            for s in list(self.sessions.values()):
                if s.node not in nodes or s.conn is not None:
                    continue
                log.warning("node %s is gone: session disconnected", s.node,
                            extra={"session_id": s.id})
                s.node, s.disconnected_at = None, now
                await self.store.save_presence(s.id, None, now)
                self.bus.emit(events.SessionDisconnected(s.id))
                for lobby_id in s.lobbies:
                    self._broadcast_state(self.lobbies[lobby_id])

    def apply_session(self, change: Change) -> None:
        self._upsert_session(SessionRecord(**change["rec"]))

    def _upsert_session(self, rec: SessionRecord) -> None:
        s = self.sessions.get(rec.id)
        if s is None:
            s = self.sessions[rec.id] = LiveSession(rec)
        else:
            if s.record.token_hash != rec.token_hash:
                self._by_token.pop(s.record.token_hash, None)
            s.record = rec
        self._by_token[rec.token_hash] = rec.id

    def apply_sessions_deleted(self, change: Change) -> None:
        for sid in change["ids"]:
            s = self.sessions.pop(sid, None)
            if s is None:
                continue
            self._by_token.pop(s.record.token_hash, None)
            for lobby_id in s.lobbies:
                lobby = self.lobbies.get(lobby_id)
                if lobby is not None:
                    lobby.members.discard(sid)
            for claim in self.claims.values():
                if claim.session_id == sid:
                    claim.session_id = None
            if s.conn is not None:
                asyncio.ensure_future(s.conn.close(CLOSE_REMOVED, "removed"))

    def apply_claim(self, change: Change) -> None:
        claim = NameClaim(**change["rec"])
        self.claims[claim.key] = claim

    def apply_claim_deleted(self, change: Change) -> None:
        self.claims.pop(change["key"], None)

    def apply_lobby(self, change: Change) -> None:
        self._upsert_lobby(LobbyRecord(**change["rec"]))

    def _upsert_lobby(self, rec: LobbyRecord) -> None:
        lobby = self.lobbies.get(rec.id)
        if lobby is None:
            self.lobbies[rec.id] = Lobby(rec)
        else:
            lobby.record = rec
        self._lobby_keys[rec.key] = rec.id

    def apply_lobby_deleted(self, change: Change) -> None:
        lobby = self.lobbies.pop(change["id"], None)
        if lobby is None:
            return
        self._lobby_keys.pop(lobby.record.key, None)
        for sid in lobby.members:
            s = self.sessions.get(sid)
            if s is not None:
                s.lobbies.discard(lobby.id)

    def apply_member_added(self, change: Change) -> None:
        lobby, s = self.lobbies.get(change["lobby"]), self.sessions.get(change["session"])
        if lobby is not None and s is not None:
            lobby.members.add(s.id)
            s.lobbies.add(lobby.id)

    def apply_member_removed(self, change: Change) -> None:
        lobby, s = self.lobbies.get(change["lobby"]), self.sessions.get(change["session"])
        if lobby is not None:
            lobby.members.discard(change["session"])
        if s is not None:
            s.lobbies.discard(change["lobby"])
            if s.conn is not None:
                s.conn.announced.discard(change["lobby"])

    def apply_presence(self, change: Change) -> None:
        s = self.sessions.get(change["session"])
        node = change["node"]
        if s is None or node == self.node_id:
            return
        if node is None:
            if s.conn is None:  # a socket here is newer than the news of the old one closing
                s.node, s.disconnected_at = None, float(change["at"])
            return
        s.node = node
        if s.conn is not None:  # the session connected to another node: this socket is stale
            old, s.conn = s.conn, None
            asyncio.ensure_future(old.close(CLOSE_REPLACED, "session connected elsewhere",
                                            drain=0.2))

    def connections(self) -> list[Connection]:
        return [s.conn for s in self.sessions.values() if s.conn is not None]


HUB = web.AppKey("hub", Hub)
