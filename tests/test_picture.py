"""The live picture on its own: typed changes in, state and queries out; no sockets, no store."""

from __future__ import annotations

import dataclasses
import json

import pytest

from shared.protocol import ErrorCode, ProtocolError
from signaling import changes
from signaling.changes import (BotDeleted, BotSaved, BotStateChanged, ChangeError, ClaimDeleted,
                               ClaimSaved, LobbyDeleted, LobbySaved, MemberAdded, MemberRemoved,
                               PresenceChanged, ProviderDeleted, ProviderSaved, SessionSaved,
                               SessionsDeleted)
from signaling.connection import CLOSE_REMOVED, CLOSE_REPLACED
from signaling.picture import LiveSession, Picture
from signaling.records import BotRecord, LobbyRecord, NameClaim, SessionRecord, Snapshot


class Socket:
    """What the picture knows of a socket held here: the lobbies it was announced in."""

    def __init__(self) -> None:
        self.announced: set[str] = set()


def session(sid: str, name: str | None = None, *, bot: bool = False,
            created: float = 0.0) -> SessionRecord:
    key = name.lower() if name else None
    return SessionRecord(sid, f"hash-{sid}", name, key, bot, created_at=created, last_seen=100.0)


def lobby(lid: str, cap: int = 16) -> LobbyRecord:
    return LobbyRecord(lid, lid.title(), lid, max_participants=cap, empty_since=50.0)


def picture_with(*changes_: changes.PictureChange, node: str = "here") -> Picture:
    pic = Picture(node)
    for change in changes_:
        pic.apply(change)
    return pic


def state(pic: Picture) -> tuple[object, ...]:
    """Everything a node's picture holds about the shared state (not its own sockets)."""
    return ({sid: (s.record, sorted(s.lobbies), s.node) for sid, s in pic.sessions.items()},
            dict(pic.claims),
            {lid: (lb.record, sorted(lb.members)) for lid, lb in pic.lobbies.items()})


def test_a_session_is_found_by_its_token_and_a_new_token_replaces_the_old() -> None:
    pic = picture_with(SessionSaved(session("a", "Ann")))
    ann = pic.by_token_hash("hash-a")
    assert isinstance(ann, LiveSession) and ann.record.name == "Ann"
    pic.apply(SessionSaved(dataclasses.replace(ann.record, token_hash="new")))
    assert pic.by_token_hash("hash-a") is None
    assert pic.by_token_hash("new") is ann  # the same object: handlers in flight hold it


def test_membership_is_kept_on_both_sides_and_unknown_parties_are_ignored() -> None:
    pic = picture_with(SessionSaved(session("a", "Ann")), LobbySaved(lobby("x")),
                       MemberAdded("x", "a"), MemberAdded("x", "ghost"), MemberAdded("nowhere", "a"))
    assert pic.lobbies["x"].members == {"a"} and pic.sessions["a"].lobbies == {"x"}
    ann = pic.sessions["a"]
    ann.conn = Socket()  # type: ignore[assignment]  # the picture reads only `announced`
    ann.conn.announced.add("x")
    assert pic.apply(MemberRemoved("x", "a")) == []
    assert pic.lobbies["x"].members == set() and ann.lobbies == set()
    assert ann.conn.announced == set()  # announced again when the session rejoins
    assert [p.session_id for p in pic.participants(pic.lobbies["x"])] == []


def test_deleting_a_session_takes_it_out_of_lobbies_unholds_its_claim_and_drops_its_socket() -> None:
    pic = picture_with(SessionSaved(session("a", "Ann")), LobbySaved(lobby("x")),
                       MemberAdded("x", "a"), ClaimSaved(NameClaim("ann", "Ann", "pw", "a")))
    socket = Socket()
    pic.sessions["a"].conn = socket  # type: ignore[assignment]
    drops = pic.apply(SessionsDeleted(("a", "unknown")))
    assert [(d.conn, d.code) for d in drops] == [(socket, CLOSE_REMOVED)]
    assert "a" not in pic.sessions and pic.by_token_hash("hash-a") is None
    assert pic.lobbies["x"].members == set()
    assert pic.claims["ann"].session_id is None and pic.claims["ann"].password_hash == "pw"


def test_deleting_a_lobby_forgets_its_name_and_its_members_memberships() -> None:
    pic = picture_with(SessionSaved(session("a", "Ann")), LobbySaved(lobby("x")),
                       MemberAdded("x", "a"))
    assert pic.lobby_by_key("x") is pic.lobbies["x"]
    pic.apply(LobbyDeleted("x"))
    assert pic.lobby_by_key("x") is None and pic.sessions["a"].lobbies == set()
    with pytest.raises(ProtocolError) as err:
        pic.find_lobby("x")
    assert err.value.code == ErrorCode.LOBBY_NOT_FOUND


def test_presence_from_other_nodes() -> None:
    pic = picture_with(SessionSaved(session("a", "Ann")), SessionSaved(session("b", "Ben")))
    ann, ben = pic.sessions["a"], pic.sessions["b"]
    pic.apply(PresenceChanged("a", "there", 10.0))
    assert ann.node == "there" and ann.connected
    pic.apply(PresenceChanged("a", None, 20.0))
    assert not ann.connected and ann.disconnected_at == 20.0
    # Ben's socket is here; the news that his socket elsewhere closed is older than this one
    socket = Socket()
    ben.conn, ben.node = socket, "here"  # type: ignore[assignment]
    assert pic.apply(PresenceChanged("b", None, 30.0)) == [] and ben.conn is socket
    assert pic.apply(PresenceChanged("b", "here", 31.0)) == []  # our own news
    # he connected to another node since: the socket here is stale
    drops = pic.apply(PresenceChanged("b", "there", 32.0))
    assert [(d.conn, d.code) for d in drops] == [(socket, CLOSE_REPLACED)]
    assert ben.conn is None and ben.node == "there"
    assert pic.nodes() == {"there"}


def test_relaying_needs_a_shared_lobby_and_another_member() -> None:
    pic = picture_with(SessionSaved(session("a", "Ann")), SessionSaved(session("b", "Ben")),
                       SessionSaved(session("c", "Cy")), LobbySaved(lobby("x")),
                       MemberAdded("x", "a"), MemberAdded("x", "b"))
    ann = pic.sessions["a"]
    assert pic.peer(ann, "x", "b") is pic.sessions["b"]
    for lobby_id, peer_id, code in [("x", "a", ErrorCode.NOT_ALLOWED),
                                    ("x", "c", ErrorCode.PEER_NOT_IN_LOBBY),
                                    ("y", "b", ErrorCode.NOT_IN_LOBBY)]:
        with pytest.raises(ProtocolError) as err:
            pic.peer(ann, lobby_id, peer_id)
        assert err.value.code == code


def test_what_breaks_the_rules_is_found() -> None:
    pic = picture_with(
        SessionSaved(session("a", "Ann", created=1.0)), SessionSaved(session("b", "Ann", created=2.0)),
        SessionSaved(session("c", "Cy")), SessionSaved(session("t1", "Transcriber", bot=True)),
        SessionSaved(session("t2", "Transcriber", bot=True)),
        ClaimSaved(NameClaim("cy", "Cy", "pw", "a")),  # Ann does not hold "cy"
        LobbySaved(lobby("x", cap=2)), *(MemberAdded("x", s) for s in "abc"))
    for s in pic.sessions.values():
        s.node = "here"
    found = pic.violations(grace=60, now=1000.0)
    assert [c.key for c in found.stale_claims] == ["cy"]
    # two people named Ann: the first keeps it; Cy's stale claim leaves "cy" to nobody;
    # bots share names across lobbies
    assert sorted(s.id for s in found.usurpers) == ["b", "c"]
    assert [lb.id for lb in found.overfull] == ["x"]
    # a disconnected session past its grace period no longer holds a name against others
    pic.sessions["a"].node, pic.sessions["a"].disconnected_at = None, 0.0
    assert "b" not in {s.id for s in pic.violations(grace=60, now=1000.0).usurpers}


def test_expiry_due() -> None:
    pic = picture_with(SessionSaved(session("a", "Ann")), SessionSaved(session("b", "Ben")),
                       LobbySaved(lobby("x")), LobbySaved(lobby("y")), MemberAdded("x", "a"))
    ann, ben = pic.sessions["a"], pic.sessions["b"]
    ann.disconnected_at = ben.disconnected_at = 100.0
    graceless, stale, lobbies = pic.expired(130.0, grace=20, session_ttl=1000, lobby_ttl=60)
    assert graceless == [ann] and stale == [] and [lb.id for lb in lobbies] == ["y"]
    assert pic.expired(2000.0, 20, 1000, 0)[1] == [ann, ben]
    assert pic.expired(2000.0, 20, 1000, 0)[2] == []  # a lobby_ttl of 0 leaves lobbies out
    ben.node = "here"
    assert ben not in pic.expired(2000.0, 20, 1000, 60)[1]


def test_loading_a_snapshot_brings_the_picture_in_line() -> None:
    pic = picture_with(SessionSaved(session("a", "Ann")), SessionSaved(session("gone")),
                       LobbySaved(lobby("x")), LobbySaved(lobby("old")), MemberAdded("x", "gone"))
    ann = pic.sessions["a"]
    socket = Socket()
    pic.sessions["gone"].conn = socket  # type: ignore[assignment]
    snap = Snapshot(sessions=[session("a", "Ann B")], claims=[NameClaim("k", "K", "pw")],
                    lobbies=[lobby("x")], members=[("x", "a"), ("x", "missing"), ("z", "a")])
    drops, orphans = pic.load(snap)
    assert [d.conn for d in drops] == [socket]
    assert orphans == [("x", "missing"), ("z", "a")]
    assert pic.sessions["a"] is ann and ann.record.name == "Ann B" and ann.lobbies == {"x"}
    assert set(pic.lobbies) == {"x"} and pic.lobbies["x"].members == {"a"}
    assert list(pic.claims) == ["k"]


def test_every_change_survives_the_wire() -> None:
    for change in [SessionSaved(session("a", "Ann")), SessionsDeleted(("a", "b")),
                   ClaimSaved(NameClaim("k", "K", "pw", "a")), ClaimDeleted("k"),
                   LobbySaved(lobby("x")), LobbyDeleted("x"), MemberAdded("x", "a"),
                   MemberRemoved("x", "a"), PresenceChanged("a", None, 1.5),
                   BotSaved(BotRecord("b1", "x", "transcriber", "s1", "T", {"model": "base"})),
                   BotDeleted("b1"), BotStateChanged("b1", {"status": "running"}),
                   ProviderSaved("s1", {"name": "p", "capacity": 2, "kinds": []}),
                   ProviderDeleted("s1")]:
        assert changes.decode(json.loads(changes.encode(change, "node-1"))) == change


@pytest.mark.parametrize("published", [{"op": "nope"}, {"op": "lobby"},
                                       {"op": "lobby", "rec": {"id": "x"}},
                                       {"op": "member+", "lobby": "x"}])
def test_a_change_that_cannot_be_read_is_refused(published: dict[str, object]) -> None:
    with pytest.raises(ChangeError):
        changes.decode(published)


def test_a_node_applying_the_published_changes_ends_with_the_same_picture() -> None:
    """The node that writes and the nodes that hear of it apply the same records."""
    made = [SessionSaved(session("a", "Ann")), SessionSaved(session("b", "Ben")),
            LobbySaved(lobby("x")), MemberAdded("x", "a"), MemberAdded("x", "b"),
            ClaimSaved(NameClaim("ann", "Ann", "pw", "a")), MemberRemoved("x", "b"),
            LobbySaved(dataclasses.replace(lobby("x"), empty_since=None)),
            SessionsDeleted(("b",)), PresenceChanged("a", "writer", 5.0)]
    writer, other = Picture("writer"), Picture("other")
    for change in made:
        writer.apply(change)
        other.apply(changes.decode(json.loads(changes.encode(change, "writer"))))
    writer.sessions["a"].node = "writer"  # the writer holds Ann's socket itself
    assert state(writer) == state(other)
