"""The hub applies the rules to the live picture and tells connections what changed.

The picture itself (sessions, name claims, lobbies, who is connected) is ``Picture``
(picture.py), without I/O. The hub checks each request against the rules, writes the change
through to the ``Store`` and applies it to the picture before acknowledging it, and sends
frames to connections. The WebSocket and HTTP layers only parse requests and call it.

With several nodes (``cluster.py``), every node holds the whole picture; a session's socket is on
one node (``LiveSession.node``), frames for it go there, and changes made elsewhere arrive
through ``apply_remote``. Checks that must see every node's writes run under ``_exclusive()``.

Negotiation rule: the session that joins (or reconnects into) a lobby creates the offers. The
joiner gets one ``peer_added`` with ``create_offer: true`` per connected member; every member
gets one ``peer_added`` with ``create_offer: false`` for the joiner.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

from aiohttp import web

from shared import protocol as p
from shared.protocol import ErrorCode, ProtocolError
from shared.tasks import TaskSet

from . import events, ice
from .changes import (ClaimDeleted, ClaimSaved, LobbyDeleted, LobbySaved, MemberAdded,
                      MemberRemoved, PictureChange, PresenceChanged, SessionSaved, SessionsDeleted)
from .cluster import Cluster
from .connection import CLOSE_REMOVED, CLOSE_REPLACED, Connection
from .history import check_storable, readable, repair_chat, stored_message, transcript_meta
from .names import clean_lobby_name, clean_name, hash_password, new_token, token_hash, verify_password
from .picture import Drop, LiveSession, Lobby, Picture
from .records import ChatRecord, LobbyRecord, NameClaim, SessionRecord, Snapshot
from .settings import Settings
from .store import Store

log = logging.getLogger(__name__)

SERVER_NAME = "ai-voicebot"


class Hub:
    def __init__(self, settings: Settings, store: Store, bus: events.EventBus | None = None,
                 cluster: Cluster | None = None) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus or events.EventBus()
        self.cluster = cluster
        self.node_id = cluster.node_id if cluster is not None else "local"
        self.picture = Picture(self.node_id)
        # membership and names change under one lock: their checks and writes span awaits
        self._lock = asyncio.Lock()
        self._tasks = TaskSet(log, "hub task")  # closing sockets that a change made stale
        self.open_sockets = 0  # WebSockets open on this server, counted by ws.py
        self._orphan_members: list[tuple[str, str]] = []
        self.snapshot: Snapshot | None = None

    @contextlib.asynccontextmanager
    async def _exclusive(self) -> AsyncIterator[None]:
        """Serializes check-then-write: on this node, and across nodes when there are several."""
        async with self._lock:
            if self.cluster is None:
                yield
            else:
                async with self.cluster.exclusive("hub"):
                    yield

    async def _write(self, change: PictureChange) -> None:
        """Writes ``change`` through to the store, then applies it to the picture."""
        await self.store.write(change)
        self._drop(self.picture.apply(change))

    async def _update(self, s: LiveSession, **fields: Any) -> None:
        """Changes fields of a session's record. The picture first: writes that don't take the
        lock (connect, disconnect) may be in flight, and each must save the others' fields."""
        change = SessionSaved(dataclasses.replace(s.record, **fields))
        self.picture.apply(change)
        await self.store.write(change)

    def apply_remote(self, change: PictureChange) -> None:
        """A change another node made (and wrote)."""
        self._drop(self.picture.apply(change))

    def _drop(self, drops: list[Drop]) -> None:
        for drop in drops:
            self._tasks.spawn(drop.conn.close(drop.code, drop.reason, drain=drop.drain))

    # --- start-up -----------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Loads the store and runs the integrity check; returns the repairs it made."""
        # memberships of missing sessions or lobbies: only those read at start-up are sure to
        # be stale (a resync reads the members after the records)
        self._orphan_members = await self._load(await self.store.open())
        if self.cluster is not None:
            self.cluster.run()
        return await self.check_integrity(chat=True)

    async def close(self) -> None:
        await self._tasks.close()
        await self.store.close()

    async def resync(self) -> None:
        """Brings the picture in line with the shared store (changes may have been missed)."""
        await self._load(await self.store.snapshot())

    async def _load(self, snap: Snapshot) -> list[tuple[str, str]]:
        self.snapshot = snap
        drops, orphans = self.picture.load(snap)
        self._drop(drops)
        if self.cluster is not None:  # who is connected where (``Picture.place_all``)
            nodes = {v.get("node") for v in snap.presence.values()} - {None, self.node_id}
            alive = {n for n in nodes if n and await self.cluster.alive(n)}
            now = time.time()
            for sid in self.picture.place_all(snap.presence, alive, now):
                await self.store.save_presence(sid, self.node_id, now)  # the store lost it
        return orphans

    async def check_integrity(self, *, chat: bool = False) -> list[str]:
        """Finds and repairs what breaks the rules; ``chat`` reads every stored message too
        (at start-up and on the admin's request: it is the long part)."""
        repairs: list[str] = []
        async with self._exclusive():
            for lobby_id, sid in self._orphan_members:
                await self.store.remove_member(lobby_id, sid)
                repairs.append(f"removed membership of missing session/lobby {sid}/{lobby_id}")
            self._orphan_members = []
            found = self.picture.violations(self.settings.grace, time.time())
            for claim in found.stale_claims:
                repairs.append(f"claim {claim.key!r} pointed at a session not holding it")
                await self._write(ClaimSaved(dataclasses.replace(claim, session_id=None)))
            for s in found.usurpers:
                repairs.append(f"session {s.id} held name {s.record.name_key!r} it may not "
                               "hold; cleared")
                await self._rename(s, None, None)
            repairs += [f"lobby {lobby.id} holds {len(lobby.members)} members, over its cap of "
                        f"{lobby.record.max_participants}" for lobby in found.overfull]
        for repair in repairs:
            log.warning("integrity: %s", repair)
        if chat:
            repairs += await repair_chat(self.store, list(self.picture.lobbies))
        return repairs

    # --- sessions -----------------------------------------------------------------------------

    async def create_session(self, *, bot: bool = False) -> tuple[LiveSession, str]:
        token = new_token()
        rec = SessionRecord(id=secrets.token_hex(8), token_hash=token_hash(token), bot=bot)
        await self._write(SessionSaved(rec))
        return self.picture.sessions[rec.id], token

    async def rotate_token(self, s: LiveSession) -> str:
        """Issues a new token for ``s``; the old one stops working."""
        token = new_token()
        await self._update(s, token_hash=token_hash(token))
        return token

    def authenticate(self, token: str) -> LiveSession | None:
        return self.picture.by_token_hash(token_hash(token))

    async def find_session(self, token: str) -> LiveSession | None:
        """``authenticate``, waiting for the other nodes' news first if the token is unknown
        (a session created on another node a moment ago)."""
        session = self.authenticate(token)
        if session is None and self.cluster is not None:
            await self.cluster.barrier()
            session = self.authenticate(token)
        return session

    async def connect(self, s: LiveSession, conn: Connection) -> None:
        """Attaches a new connection; resumes the session's lobbies on it."""
        old = s.conn
        s.conn, s.node = conn, self.node_id
        if old is not None:
            await old.close(CLOSE_REPLACED, "session connected elsewhere", drain=0.2)
        await self._update(s, last_seen=time.time())
        # recorded for the other nodes, which close a socket they hold for it
        await self.store.save_presence(s.id, self.node_id, s.record.last_seen)
        servers, conn.ice_expires = ice.for_session(self.settings, s.id, time.time())
        conn.send(p.encode(p.Welcome(protocol=p.PROTOCOL_VERSION, server=SERVER_NAME,
                                     session=self.picture.session_info(s), ice_servers=servers,
                                     ice_expires=conn.ice_expires,
                                     ice_policy=self.settings.ice_policy)))
        log.info("connected from %s", conn.remote, extra={"session_id": s.id})
        self.bus.emit(events.SessionConnected(s.id))
        for lobby_id in sorted(s.lobbies):
            lobby = self.picture.lobbies[lobby_id]
            conn.send(p.encode(self.picture.lobby_state(lobby)))
            self._announce(s, lobby)
            await self._send_history(conn, lobby_id, None)

    def renew_ice(self, now: float | None = None) -> int:
        """Renews TURN credentials past half their life (``ice.renew``)."""
        if not self.settings.turn_urls:
            return 0  # no credential to renew: nothing to walk
        return ice.renew(self.picture.connections(), self.settings, now or time.time())

    async def disconnect(self, s: LiveSession, conn: Connection) -> None:
        if s.conn is not conn:  # replaced by a newer connection: nothing changes for others
            return
        s.conn, s.node = None, None
        s.disconnected_at = time.time()
        log.info("disconnected", extra={"session_id": s.id})
        self.bus.emit(events.SessionDisconnected(s.id))
        for lobby_id in s.lobbies:
            self._broadcast_state(self.picture.lobbies[lobby_id])
        try:
            await self.store.save_presence(s.id, None, s.disconnected_at)
            await self._update(s, last_seen=s.disconnected_at)
        except Exception:
            log.exception("session %s: could not record last_seen", s.id)

    # --- names --------------------------------------------------------------------------------

    async def set_name(self, s: LiveSession, raw: str, password: str | None) -> p.SessionInfo:
        display, key = clean_name(raw)
        async with self._exclusive():
            claim = self.picture.claims.get(key)
            holder = self.picture.name_holder(key, exclude=s)
            if claim is not None and claim.session_id != s.id:
                if password is None:
                    raise ProtocolError(ErrorCode.NAME_PROTECTED,
                                        f"the name {display!r} is protected by a password")
                if not await verify_password(password, claim.password_hash):
                    raise ProtocolError(ErrorCode.BAD_PASSWORD, "wrong password for this name")
                if holder is not None and holder.connected:
                    raise ProtocolError(ErrorCode.NAME_IN_USE,
                                        f"the name {display!r} is in use by a connected session")
            elif holder is not None and self.picture.is_live(holder, self.settings.grace):
                raise ProtocolError(ErrorCode.NAME_IN_USE, f"the name {display!r} is in use")
            if holder is not None:  # stale (or password-overridden) holder loses the name
                await self._rename(holder, None, None)
            if claim is None and password is not None:  # written with its holder, below
                self.picture.apply(ClaimSaved(NameClaim(key, display,
                                                        await hash_password(password), None)))
            await self._rename(s, display, key)
            return self.picture.session_info(s)

    async def assign_name(self, s: LiveSession, base: str, lobby: Lobby) -> str:
        """Gives bot ``s`` the first name of ``base``, ``base 2``, ``base 3``… that nobody in
        ``lobby`` has (a protected name excepted): bot names are unique per lobby, so each
        lobby has its "Transcriber"."""
        async with self._exclusive():
            taken = self.picture.names_in(lobby, exclude=s)
            for n in range(1, 1000):
                display, key = clean_name(base if n == 1 else f"{base[:28]} {n}")
                if key not in self.picture.claims and key not in taken:
                    await self._rename(s, display, key)
                    return display
        raise ProtocolError(ErrorCode.NAME_IN_USE, f"no free name like {base!r}")

    async def _rename(self, s: LiveSession, display: str | None, key: str | None) -> None:
        old = self.picture.claims.get(s.record.name_key or "")
        if old is not None and old.session_id == s.id and old.key != key:
            await self._write(ClaimSaved(dataclasses.replace(old, session_id=None)))
        new = self.picture.claims.get(key or "")
        if new is not None and new.session_id != s.id:
            await self._write(ClaimSaved(dataclasses.replace(new, session_id=s.id)))
        await self._update(s, name=display, name_key=key)
        if display is None:
            self._send_text(s, p.encode(p.Session(session=self.picture.session_info(s))))
        for lobby_id in s.lobbies:
            self._broadcast_state(self.picture.lobbies[lobby_id])

    async def clear_claim(self, key: str) -> None:
        """Takes the password off a name; its holder keeps it as an ordinary name."""
        async with self._exclusive():
            claim = self.picture.claims.get(key)
            if claim is None:
                return
            await self._write(ClaimDeleted(key))
            holder = self.picture.sessions.get(claim.session_id or "")
            if holder is not None:
                self._send_text(holder, p.encode(p.Session(
                    session=self.picture.session_info(holder))))

    # --- lobbies ------------------------------------------------------------------------------

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
        if self.picture.lobby_by_key(key) is not None:  # after the await: creators may race
            raise ProtocolError(ErrorCode.LOBBY_EXISTS, f"a lobby named {name!r} exists")
        rec = LobbyRecord(id=secrets.token_urlsafe(9), name=name, key=key, private=private,
                          password_hash=pw_hash, max_participants=cap, empty_since=time.time())
        await self._write(LobbySaved(rec))
        return self.picture.lobbies[rec.id]

    async def join(self, s: LiveSession, msg: p.Join, ref: str | None) -> None:
        if s.record.name is None:
            raise ProtocolError(ErrorCode.NAME_REQUIRED, "set a name before joining a lobby")
        async with self._exclusive():
            if msg.lobby_id is not None:
                lobby = self.picture.find_lobby(msg.lobby_id)
            else:
                assert msg.lobby_name is not None
                lobby = self.picture.lobby_by_name(msg.lobby_name) or await self._create_lobby(
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
            conn.send(p.encode(self.picture.lobby_state(lobby), ref))
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
        await self._write(MemberAdded(lobby.id, s.id))
        if lobby.record.empty_since is not None:
            await self._write(LobbySaved(dataclasses.replace(lobby.record, empty_since=None)))
        self.bus.emit(events.MemberJoined(lobby.id, s.id))
        log.info("joined", extra={"session_id": s.id, "lobby_id": lobby.id})

    def _announce(self, s: LiveSession, lobby: Lobby) -> None:
        """Tells the joiner and the members about each other (see the module's rule)."""
        assert s.conn is not None
        s.conn.announced.add(lobby.id)
        me = p.Participant(session_id=s.id, name=s.record.name or "", bot=s.record.bot)
        for other_id in sorted(lobby.members):
            other = self.picture.sessions[other_id]
            if other is s or not other.connected:
                continue
            peer = p.Participant(session_id=other.id, name=other.record.name or "",
                                 bot=other.record.bot)
            s.conn.send(p.encode(p.PeerAdded(lobby_id=lobby.id, peer=peer, create_offer=True)))
            self._send_text(other, p.encode(p.PeerAdded(lobby_id=lobby.id, peer=me,
                                                        create_offer=False)))
        self._broadcast_state(lobby, exclude=s)

    async def _send_history(self, conn: Connection, lobby_id: str, since: int | None) -> None:
        for rec, msg in readable(await self.chat_history(lobby_id, after=since,
                                                         limit=self.settings.history_limit)):
            conn.send(p.encode(msg, f"m{rec.id}"))

    async def part(self, s: LiveSession, lobby_id: str) -> None:
        async with self._exclusive():  # an unknown lobby too: s is not a member of it
            await self._remove_member(s, self.picture.member_lobby(s, lobby_id))

    async def remove_session(self, s: LiveSession) -> None:
        """Takes ``s`` out of every lobby and deletes it (a bot being removed)."""
        async with self._exclusive():
            for lobby_id in sorted(s.lobbies):
                await self._remove_member(s, self.picture.lobbies[lobby_id])
            if s.conn is not None:
                await s.conn.close(CLOSE_REMOVED, "removed")
            await self._expire_session(s)

    async def _remove_member(self, s: LiveSession, lobby: Lobby) -> None:
        await self._write(MemberRemoved(lobby.id, s.id))
        if not lobby.members:
            await self._write(LobbySaved(dataclasses.replace(lobby.record,
                                                             empty_since=time.time())))
        removed = p.PeerRemoved(lobby_id=lobby.id, peer_id=s.id)
        self._send([*lobby.members, s.id], removed)  # the member learns of it too
        self._broadcast_state(lobby)
        self.bus.emit(events.MemberLeft(lobby.id, s.id))
        log.info("left", extra={"session_id": s.id, "lobby_id": lobby.id})

    async def close_lobby(self, lobby: Lobby) -> None:
        """Removes every member, then the lobby with its chat (an administrator's delete)."""
        async with self._exclusive():
            for session_id in sorted(lobby.members):
                await self._remove_member(self.picture.sessions[session_id], lobby)
            await self.delete_lobby(lobby)

    async def delete_lobby(self, lobby: Lobby) -> None:
        await self._write(LobbyDeleted(lobby.id))
        self.bus.emit(events.LobbyDeleted(lobby.id))

    # --- chat and relay -----------------------------------------------------------------------

    async def chat_history(self, lobby_id: str, *, before: int | None = None,
                           after: int | None = None, limit: int = 50,
                           kinds: tuple[str, ...] | None = None) -> list[ChatRecord]:
        """A lobby's stored messages, as ``Store.chat_history`` pages them."""
        return await self.store.chat_history(lobby_id, before=before, after=after, limit=limit,
                                             kinds=kinds)

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

    async def caption(self, bot: LiveSession, msg: p.Transcript, ref: str | None) -> int | None:
        """A bot's caption: a final is stored and delivered (its message id returned), an
        interim only delivered. The speaker is named as the lobby knows them now."""
        lobby = self.picture.member_lobby(bot, msg.lobby_id)
        msg = dataclasses.replace(msg, bot_id=bot.id, speaker_name=self.picture.display_name(
            msg.speaker_id, msg.speaker_name))
        if not msg.final:
            self._send(lobby.members, msg)
            return None
        rec = await self.post(lobby, bot, msg.text, kind="transcript", meta=transcript_meta(msg),
                              client_ref=ref)
        self.bus.emit(events.CaptionStored(lobby.id, rec.id, msg.end, time.time()))
        return rec.id

    async def post_system(self, lobby_id: str, text: str) -> None:
        lobby = self.picture.lobbies.get(lobby_id)
        if lobby is not None:
            await self.post(lobby, None, text, kind="system")

    def relay(self, s: LiveSession, msg: p.Sdp | p.Ice) -> None:
        target = self.picture.peer(s, msg.lobby_id, msg.peer_id)
        # the hot path: the validated fields go on with the sender's id, not rebuilt or checked
        # again (a payload's instance dict holds exactly its fields)
        data = vars(msg) | {"peer_id": s.id}
        if isinstance(msg, p.Ice) and msg.candidate is not None:
            data["candidate"] = msg.candidate.wire()  # the members that were sent
        if not self._send_text(target, p.encode_data(msg.type, data)):
            raise ProtocolError(ErrorCode.PEER_UNAVAILABLE, "that peer is not connected")

    # --- delivery -----------------------------------------------------------------------------

    def send_to_lobby(self, lobby_id: str, msg: p.Message) -> None:
        lobby = self.picture.lobbies.get(lobby_id)
        if lobby is not None:
            self._send(lobby.members, msg)

    def send_to_session(self, session_id: str, msg: p.Message) -> bool:
        s = self.picture.sessions.get(session_id)
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
            s = self.picture.sessions.get(sid)
            if s is None:
                continue
            if s.conn is not None:
                s.conn.send(text)
            elif s.node is not None and s.node != self.node_id:
                remote.setdefault(s.node, []).append(sid)
        if remote and self.cluster is not None:
            for node, ids in remote.items():  # one message a node, not one a member
                self.cluster.forward(node, ids, text)

    def deliver_local(self, session_ids: list[str], text: str) -> None:
        """Frames another node sent for sockets held here."""
        for sid in session_ids:
            s = self.picture.sessions.get(sid)
            if s is not None and s.conn is not None:
                s.conn.send(text)

    def _broadcast_state(self, lobby: Lobby, exclude: LiveSession | None = None) -> None:
        self._send((m for m in lobby.members if exclude is None or m != exclude.id),
                   self.picture.lobby_state(lobby))

    # --- expiry -------------------------------------------------------------------------------

    async def sweep(self, now: float | None = None) -> None:
        """Ends grace periods, expires stale sessions and empty lobbies."""
        now = now or time.time()
        st = self.settings
        if not any(self.picture.expired(now, st.grace, st.session_ttl, st.lobby_ttl)):
            return  # the common case, decided without taking the lock
        async with self._exclusive():
            graceless, stale, _ = self.picture.expired(now, st.grace, st.session_ttl, 0)
            for s in graceless:
                for lobby_id in sorted(s.lobbies):
                    await self._remove_member(s, self.picture.lobbies[lobby_id])
            for s in stale:
                await self._expire_session(s)
            # after the members left: a lobby emptied just now has a lobby_ttl to go
            for lobby in self.picture.expired(now, st.grace, st.session_ttl, st.lobby_ttl)[2]:
                await self.delete_lobby(lobby)

    async def _expire_session(self, s: LiveSession) -> None:
        await self._write(SessionsDeleted((s.id,)))
        log.info("session %s expired", s.id)

    # --- other nodes ----------------------------------------------------------------------------

    async def nodes_lost(self, nodes: set[str]) -> None:
        """Sessions held by dead nodes are disconnected; the grace period starts now."""
        async with self._exclusive():
            now = time.time()
            for s in [s for s in self.picture.sessions.values() if s.node in nodes]:
                log.warning("node %s is gone: session disconnected", s.node,
                            extra={"session_id": s.id})
                await self._write(PresenceChanged(s.id, None, now))
                self.bus.emit(events.SessionDisconnected(s.id))
                for lobby_id in s.lobbies:
                    self._broadcast_state(self.picture.lobbies[lobby_id])


HUB = web.AppKey("hub", Hub)
