"""The live picture: sessions, name claims, lobbies, memberships and presence, without I/O.

Every change to it is a typed record (changes.py) given to ``Picture.apply``: the hub's own
writes once the store has them, and other nodes' changes as they arrive. Nothing here awaits,
sends or writes; a change that makes a socket held here stale says so in what ``apply``
returns, and the hub closes it.

The picture also answers the questions the rules ask (who holds a name, who is in a lobby,
what breaks the rules), so that they can be tested without sockets or stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared import protocol as p
from shared.protocol import ErrorCode, ProtocolError

from .changes import (ClaimDeleted, ClaimSaved, LobbyDeleted, LobbySaved, MemberAdded,
                      MemberRemoved, PictureChange, PresenceChanged, SessionSaved, SessionsDeleted)
from .connection import CLOSE_REMOVED, CLOSE_REPLACED
from .names import clean_lobby_name
from .records import LobbyRecord, NameClaim, SessionRecord, Snapshot

if TYPE_CHECKING:
    from .connection import Connection


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


@dataclass(frozen=True)
class Drop:
    """A socket held here that a change made stale: the hub closes it."""

    conn: Connection
    code: int
    reason: str
    drain: float = 1.0  # seconds to send what is queued first


@dataclass(frozen=True)
class Violations:
    """What breaks the rules, found by ``Picture.violations``."""

    stale_claims: list[NameClaim]  # pointing at a session that does not hold the name
    usurpers: list[LiveSession]  # holding a name someone else may hold
    overfull: list[Lobby]  # more members than the cap (reported only: nobody is thrown out)


class Picture:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.sessions: dict[str, LiveSession] = {}
        self.claims: dict[str, NameClaim] = {}
        self.lobbies: dict[str, Lobby] = {}
        self._by_token: dict[str, str] = {}
        self._lobby_keys: dict[str, str] = {}

    # --- queries --------------------------------------------------------------------------------

    def by_token_hash(self, digest: str) -> LiveSession | None:
        session_id = self._by_token.get(digest)
        return self.sessions.get(session_id) if session_id else None

    def lobby_by_key(self, key: str) -> Lobby | None:
        lobby_id = self._lobby_keys.get(key)
        return self.lobbies.get(lobby_id) if lobby_id else None

    def lobby_by_name(self, raw: str) -> Lobby | None:
        return self.lobby_by_key(clean_lobby_name(raw)[1])

    def find_lobby(self, lobby_id: str) -> Lobby:
        lobby = self.lobbies.get(lobby_id)
        if lobby is None:
            raise ProtocolError(ErrorCode.LOBBY_NOT_FOUND, "no such lobby")
        return lobby

    def member_lobby(self, s: LiveSession, lobby_id: str) -> Lobby:
        lobby = self.lobbies.get(lobby_id)
        if lobby is None or s.id not in lobby.members:
            raise ProtocolError(ErrorCode.NOT_IN_LOBBY, "not a member of this lobby")
        return lobby

    def peer(self, s: LiveSession, lobby_id: str, peer_id: str) -> LiveSession:
        """The member ``s`` may relay to in a lobby they share."""
        lobby = self.member_lobby(s, lobby_id)
        if peer_id == s.id:
            raise ProtocolError(ErrorCode.NOT_ALLOWED, "cannot relay to yourself")
        target = self.sessions.get(peer_id)
        if target is None or peer_id not in lobby.members:
            raise ProtocolError(ErrorCode.PEER_NOT_IN_LOBBY, "that peer is not in this lobby")
        return target

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

    def session_info(self, s: LiveSession) -> p.SessionInfo:
        claim = self.claims.get(s.record.name_key or "")
        return p.SessionInfo(session_id=s.id, name=s.record.name, bot=s.record.bot,
                             protected=claim is not None and claim.session_id == s.id,
                             lobbies=sorted(s.lobbies))

    def display_name(self, session_id: str, fallback: str) -> str:
        """A session's name as the lobby knows it now (a bot's idea of it may be older)."""
        s = self.sessions.get(session_id)
        return s.record.name if s is not None and s.record.name else fallback

    def name_holder(self, key: str, exclude: LiveSession) -> LiveSession | None:
        """The person holding a name; bots' names don't count (unique per lobby only)."""
        for other in self.sessions.values():
            if other is not exclude and not other.record.bot and other.record.name_key == key:
                return other
        return None

    def names_in(self, lobby: Lobby, exclude: LiveSession) -> set[str | None]:
        return {self.sessions[m].record.name_key for m in lobby.members
                if m in self.sessions and m != exclude.id}

    def connections(self) -> list[Connection]:
        return [s.conn for s in self.sessions.values() if s.conn is not None]

    def nodes(self) -> set[str]:
        """The nodes holding sockets of sessions in the picture."""
        return {s.node for s in self.sessions.values() if s.node}

    def expired(self, now: float, grace: float, session_ttl: float,
                lobby_ttl: float) -> tuple[list[LiveSession], list[LiveSession], list[Lobby]]:
        """What expiry is due: disconnected sessions past their grace period that are still
        members somewhere, sessions unseen for ``session_ttl``, lobbies empty for
        ``lobby_ttl``; a ``lobby_ttl`` of 0 leaves lobbies out."""
        away = [s for s in self.sessions.values() if not s.connected]
        graceless = [s for s in away if s.lobbies and now - s.disconnected_at >= grace]
        stale = [s for s in away if now - s.record.last_seen >= session_ttl]
        lobbies = [lb for lb in self.lobbies.values() if lobby_ttl and not lb.members
                   and lb.record.empty_since is not None
                   and now - lb.record.empty_since >= lobby_ttl]
        return graceless, stale, lobbies

    def place_all(self, presence: dict[str, dict[str, Any]], alive: set[str],
                  now: float) -> list[str]:
        """Applies stored presence: sessions on a live node stay connected, those on a dead
        one are disconnected; sockets held here are the truth about themselves. Returns the
        sessions whose socket is here but whose stored presence says otherwise."""
        wrong = []
        for s in self.sessions.values():
            value = presence.get(s.id, {})
            if s.conn is not None:
                s.node = self.node_id
                if value.get("node") != self.node_id:
                    wrong.append(s.id)
            elif value.get("node") in alive:
                s.node = value["node"]
            elif s.node is not None:
                s.node, s.disconnected_at = None, float(value.get("at") or now)
        return wrong

    def is_live(self, s: LiveSession, grace: float, now: float | None = None) -> bool:
        """Connected, or disconnected for less than the grace period."""
        return s.connected or (now or time.time()) - s.disconnected_at < grace

    def violations(self, grace: float, now: float) -> Violations:
        stale = [c for c in self.claims.values() if c.session_id and (
            (holder := self.sessions.get(c.session_id)) is None
            or holder.record.name_key != c.key)]
        by_key: dict[str, list[LiveSession]] = {}
        for s in self.sessions.values():
            # bots' names are unique within their lobby only (every lobby has its Transcriber)
            if s.record.name_key is not None and not s.record.bot and self.is_live(s, grace, now):
                by_key.setdefault(s.record.name_key, []).append(s)
        usurpers = []
        stale_keys = {c.key for c in stale}
        for key, holders in by_key.items():
            claim = self.claims.get(key)
            if claim is not None:  # only its holder may have it; a stale claim, nobody
                holder_id = None if key in stale_keys else claim.session_id
                keep = [h for h in holders if h.id == holder_id]
            else:
                keep = sorted(holders, key=lambda h: (h.record.created_at, h.id))[:1]
            usurpers += [s for s in holders if s not in keep]
        overfull = [lb for lb in self.lobbies.values()
                    if len(lb.members) > lb.record.max_participants]
        return Violations(stale, usurpers, overfull)

    # --- changes --------------------------------------------------------------------------------

    def apply(self, change: PictureChange) -> list[Drop]:
        """Applies one change; returns the sockets held here that it made stale."""
        match change:
            case SessionSaved(rec):
                s = self.sessions.get(rec.id)
                if s is None:
                    s = self.sessions[rec.id] = LiveSession(rec)
                elif s.record.token_hash != rec.token_hash:
                    self._by_token.pop(s.record.token_hash, None)
                s.record = rec  # in place: handlers in flight hold the session
                self._by_token[rec.token_hash] = rec.id
            case SessionsDeleted(ids):
                return [drop for sid in ids for drop in self._delete_session(sid)]
            case ClaimSaved(rec):
                self.claims[rec.key] = rec
            case ClaimDeleted(key):
                self.claims.pop(key, None)
            case LobbySaved(rec):
                lobby = self.lobbies.get(rec.id)
                if lobby is None:
                    self.lobbies[rec.id] = Lobby(rec)
                else:
                    lobby.record = rec
                self._lobby_keys[rec.key] = rec.id
            case LobbyDeleted(lobby_id):
                self._delete_lobby(lobby_id)
            case MemberAdded(lobby_id, sid):
                lobby, s = self.lobbies.get(lobby_id), self.sessions.get(sid)
                if lobby is not None and s is not None:
                    lobby.members.add(sid)
                    s.lobbies.add(lobby_id)
            case MemberRemoved(lobby_id, sid):
                self._remove_member(lobby_id, sid)
            case PresenceChanged(sid, node, at):
                return self._place(sid, node, at)
        return []

    def _delete_session(self, sid: str) -> list[Drop]:
        s = self.sessions.pop(sid, None)
        if s is None:
            return []
        self._by_token.pop(s.record.token_hash, None)
        for lobby_id in s.lobbies:
            lobby = self.lobbies.get(lobby_id)
            if lobby is not None:
                lobby.members.discard(sid)
        for key, claim in self.claims.items():
            if claim.session_id == sid:
                self.claims[key] = NameClaim(claim.key, claim.display, claim.password_hash)
        return [Drop(s.conn, CLOSE_REMOVED, "removed")] if s.conn is not None else []

    def _delete_lobby(self, lobby_id: str) -> None:
        lobby = self.lobbies.pop(lobby_id, None)
        if lobby is None:
            return
        self._lobby_keys.pop(lobby.record.key, None)
        for sid in lobby.members:
            s = self.sessions.get(sid)
            if s is not None:
                s.lobbies.discard(lobby_id)

    def _remove_member(self, lobby_id: str, sid: str) -> None:
        lobby, s = self.lobbies.get(lobby_id), self.sessions.get(sid)
        if lobby is not None:
            lobby.members.discard(sid)
        if s is not None:
            s.lobbies.discard(lobby_id)
            if s.conn is not None:
                s.conn.announced.discard(lobby_id)

    def _place(self, sid: str, node: str | None, at: float) -> list[Drop]:
        s = self.sessions.get(sid)
        if s is None or node == self.node_id:
            return []  # a session's presence here is the socket itself (the hub's)
        if node is None:
            if s.conn is None:  # a socket here is newer than the news of the old one closing
                s.node, s.disconnected_at = None, at
            return []
        s.node = node
        if s.conn is None:
            return []
        # the session connected to another node: the socket here is stale
        old, s.conn = s.conn, None
        return [Drop(old, CLOSE_REPLACED, "session connected elsewhere", drain=0.2)]  # the new one waits

    def load(self, snap: Snapshot) -> tuple[list[Drop], list[tuple[str, str]]]:
        """Brings the picture in line with what is stored (at start-up, and after changes may
        have been missed); returns the stale sockets and the memberships of missing sessions or
        lobbies. Objects are updated in place: handlers in flight hold them."""
        stored = {rec.id for rec in snap.sessions}
        drops = self.apply(SessionsDeleted(tuple(s for s in self.sessions if s not in stored)))
        for rec in snap.sessions:
            self.apply(SessionSaved(rec))
        self.claims = {c.key: c for c in snap.claims}
        kept = {r.id for r in snap.lobbies}
        for lobby_id in [lid for lid in self.lobbies if lid not in kept]:
            self._delete_lobby(lobby_id)
        for lrec in snap.lobbies:
            self.apply(LobbySaved(lrec))
        for lobby in self.lobbies.values():
            lobby.members.clear()
        for session in self.sessions.values():
            session.lobbies.clear()
        orphans = []
        for lobby_id, sid in snap.members:
            if lobby_id in self.lobbies and sid in self.sessions:
                self.apply(MemberAdded(lobby_id, sid))
            else:
                orphans.append((lobby_id, sid))
        return drops, orphans
