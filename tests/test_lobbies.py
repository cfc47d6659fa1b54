"""Functional tests of the signaling core through real WebSocket clients."""

from __future__ import annotations

import pytest

from shared import protocol as p
from shared.protocol import ProtocolError
from shared.errors import ServerError

from .conftest import Clients
from .helpers import api


async def test_three_clients_see_each_other(clients: Clients) -> None:
    a, ia = await clients.new("Alice")
    b, ib = await clients.new("Bob")
    c, ic = await clients.new("Carol")
    state = await a.join(lobby_name="Team")
    lobby_id = state.lobby.id
    assert [x.name for x in state.participants] == ["Alice"]
    await b.join(lobby_id=lobby_id)
    await c.join(lobby_name="team ")  # names compare case- and whitespace-insensitively

    for inbox, me in ((ia, a), (ib, b), (ic, c)):
        final = await inbox.wait_for(p.LobbyState, lambda m: len(m.participants) == 3)
        names = sorted(x.name for x in final.participants)
        assert names == ["Alice", "Bob", "Carol"]
        assert all(x.connected and not x.bot for x in final.participants)
    # the joiner offers: Carol offers to both, Bob to Alice; nobody offers twice to one peer
    offers = {(me.session_id, m.peer.session_id) for inbox, me in ((ia, a), (ib, b), (ic, c))
              for m in inbox.of(p.PeerAdded) if m.create_offer}
    answers = {(m.peer.session_id, me.session_id) for inbox, me in ((ia, a), (ib, b), (ic, c))
               for m in inbox.of(p.PeerAdded) if not m.create_offer}
    assert offers == answers
    assert offers == {(c.session_id, a.session_id), (c.session_id, b.session_id),
                      (b.session_id, a.session_id)}


async def test_relay_only_between_lobby_members(clients: Clients) -> None:
    a, ia = await clients.new("A")
    b, ib = await clients.new("B")
    c, ic = await clients.new("C")
    lobby = (await a.join(lobby_name="one")).lobby.id
    await b.join(lobby_id=lobby)
    other = (await c.join(lobby_name="two")).lobby.id

    desc = p.SessionDescription(type="offer", sdp="v=0\r\n")
    assert isinstance(await a.request(p.Sdp(lobby_id=lobby, peer_id=b.session_id,
                                            description=desc)), p.Ack)
    got = await ib.wait_for(p.Sdp)
    assert got.peer_id == a.session_id and got.description == desc
    cand = p.IceCandidate(candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host", sdpMid="0",
                          sdpMLineIndex=0)
    a.send(p.Ice(lobby_id=lobby, peer_id=b.session_id, candidate=cand))
    got_ice = await ib.wait_for(p.Ice)
    assert got_ice.candidate == cand and got_ice.peer_id == a.session_id
    # relayed as sent: the members given, and only those; a rollback needs no sdp
    raw = p.IceCandidate(candidate="candidate:2 1 udp 1 127.0.0.1 10 typ host",
                         usernameFragment="uf1")
    await a.request(p.Ice(lobby_id=lobby, peer_id=b.session_id, candidate=raw))
    relayed = await ib.wait_for(p.Ice, lambda m: m.candidate is not None and
                                m.candidate.usernameFragment == "uf1")
    assert relayed.candidate == raw
    rollback = p.SessionDescription.from_dict({"type": "rollback"})
    await a.request(p.Sdp(lobby_id=lobby, peer_id=b.session_id, description=rollback))
    assert (await ib.wait_for(p.Sdp, lambda m: m.description.type == "rollback")).description.sdp == ""

    with pytest.raises(ServerError) as err:
        await a.request(p.Sdp(lobby_id=lobby, peer_id=c.session_id, description=desc))
    assert err.value.code == "peer_not_in_lobby"
    with pytest.raises(ServerError) as err:
        await a.request(p.Ice(lobby_id=other, peer_id=c.session_id, candidate=None))
    assert err.value.code == "not_in_lobby"
    await a.request(p.Ping())
    assert not ic.of(p.Sdp) and not ic.of(p.Ice)


async def test_chat_history_on_join_and_paging(clients: Clients, server) -> None:  # type: ignore[no-untyped-def]
    a, _ = await clients.new("Writer")
    lobby = (await a.join(lobby_name="history")).lobby.id
    ids = [await a.chat(lobby, f"message {i}") for i in range(5)]
    assert ids == sorted(ids)

    b, ib = await clients.new("Reader")
    await b.join(lobby_id=lobby)
    for i in range(5):
        await ib.wait_for(p.Chat, text=f"message {i}", name="Writer")

    messages = str(server.make_url(f"/api/lobbies/{lobby}/messages"))
    _, page = await api("GET", messages + "?limit=2", None)
    assert [m["text"] for m in page["messages"]] == ["message 3", "message 4"]
    before = page["next"]["before"]
    _, older = await api("GET", messages + f"?limit=10&before={before}", None)
    assert [m["text"] for m in older["messages"]] == ["message 0", "message 1", "message 2"]
    status, body = await api("GET", messages + "?limit=abc", None)
    assert status == 400
    assert body["error"]["code"] == "invalid_payload"


async def test_protected_name(clients: Clients) -> None:
    owner, _ = await clients.new("Grace", password="s3cret!")
    assert owner.session is not None and owner.session.protected

    thief, _ = await clients.new()
    with pytest.raises(ServerError) as err:
        await thief.set_name("grace")
    assert err.value.code == "name_protected"
    with pytest.raises(ServerError) as err:
        await thief.set_name(" GRACE ", "wrong")
    assert err.value.code == "bad_password"
    with pytest.raises(ServerError) as err:  # the right password, but the owner is connected
        await thief.set_name("Grace", "s3cret!")
    assert err.value.code == "name_in_use"

    await owner.close()  # the owner goes away; the password holder takes over at once
    heir, _ = await clients.new()
    info = await heir.set_name("Grace", "s3cret!")
    assert info.name == "Grace" and info.protected


async def test_unprotected_names_are_unique_among_live_sessions(clients: Clients) -> None:
    await clients.new("Dup")
    other, _ = await clients.new()
    with pytest.raises(ServerError) as err:
        await other.set_name("dup")
    assert err.value.code == "name_in_use"
    for bad in ("", "   ", "x" * 33, "<b>hi</b>"):
        with pytest.raises(ServerError) as err:
            await other.set_name(bad)
        assert err.value.code in ("name_invalid", "invalid_payload")
    with pytest.raises(ProtocolError):  # refused before it is sent: no string holds NUL
        await other.set_name("a\x00b")


async def test_lobby_password_and_capacity(clients: Clients) -> None:
    host, _ = await clients.new("Host")
    state = await host.join(lobby_name="Secret", password="pw", private=True)
    assert state.lobby.private and state.lobby.has_password
    guest, _ = await clients.new("Guest")
    with pytest.raises(ServerError) as err:
        await guest.join(lobby_id=state.lobby.id)
    assert err.value.code == "lobby_password_required"
    with pytest.raises(ServerError) as err:
        await guest.join(lobby_id=state.lobby.id, password="nope")
    assert err.value.code == "bad_password"
    await guest.join(lobby_id=state.lobby.id, password="pw")

    lobbies = host.config.url + "api/lobbies"
    _, listed = await api("GET", lobbies, None)
    assert all(lb["id"] != state.lobby.id for lb in listed["lobbies"])
    status, tiny = await api("POST", lobbies, host.config.token,
                             {"name": "Tiny", "max_participants": 2})
    assert status == 201
    status, body = await api("POST", lobbies, host.config.token, {"name": "tiny"})
    assert status == 409 and body["error"]["code"] == "lobby_exists"
    await host.join(lobby_id=tiny["id"])
    await guest.join(lobby_id=tiny["id"])
    third, _ = await clients.new("Third")
    with pytest.raises(ServerError) as err:
        await third.join(lobby_id=tiny["id"])
    assert err.value.code == "lobby_full"
    with pytest.raises(ServerError) as err:
        await third.join(lobby_id="nonexistent")
    assert err.value.code == "lobby_not_found"


async def test_join_needs_a_name(clients: Clients) -> None:
    anon, _ = await clients.new()
    with pytest.raises(ServerError) as err:
        await anon.join(lobby_name="x")
    assert err.value.code == "name_required"


async def test_part_removes_peer_for_everyone(clients: Clients) -> None:
    a, ia = await clients.new("Stay")
    b, _ = await clients.new("Go")
    lobby = (await a.join(lobby_name="parting")).lobby.id
    await b.join(lobby_id=lobby)
    await b.part(lobby)
    removed = await ia.wait_for(p.PeerRemoved)
    assert removed.peer_id == b.session_id
    await ia.wait_for(p.LobbyState, lambda m: [x.name for x in m.participants] == ["Stay"])
