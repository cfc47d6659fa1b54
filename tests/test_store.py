"""The store contract, the same for SQLite and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from signaling.app import create_app
from signaling.hub import HUB
from signaling.records import BotRecord, LobbyRecord, SessionRecord
from signaling.store import Store

from .conftest import make_settings


@pytest.fixture
async def store(tmp_path: Path, backend: str) -> AsyncIterator[Store]:
    settings = make_settings(tmp_path, chat_cap=5)
    st = create_app(settings)[HUB].store
    await st.open()
    yield st
    await st.close()


async def test_records_round_trip(store: Store) -> None:
    await store.save_session(SessionRecord("s1", "h1", "Ann", "ann"))
    await store.save_lobby(LobbyRecord("l1", "Room", "room", private=True, password_hash="x"))
    await store.add_member("l1", "s1")
    await store.save_bot(BotRecord("b1", "l1", "echo", "s1", "Echo", {"volume": 0.5}))
    snap = await store.snapshot()
    assert [(s.id, s.name) for s in snap.sessions] == [("s1", "Ann")]
    assert snap.lobbies[0].private and snap.lobbies[0].password_hash == "x"
    assert snap.members == [("l1", "s1")]
    assert snap.bots[0].config == {"volume": 0.5}
    await store.delete_sessions(["s1"])
    await store.delete_lobby("l1")


async def test_chat_is_idempotent_paged_capped_and_filtered(store: Store) -> None:
    first, created = await store.add_chat("l1", "s1", "Ann", "hello", client_ref="r1")
    again, created_again = await store.add_chat("l1", "s1", "Ann", "hello", client_ref="r1")
    assert created and not created_again and again == first
    ids = [first.id]
    for i in range(3):
        ids.append((await store.add_chat("l1", "s1", "Ann", f"m{i}"))[0].id)
    final, _ = await store.add_chat("l1", "bot", "Scribe", "words", kind="transcript",
                                    meta={"speaker_id": "s1", "start": 0.5})
    ids.append(final.id)
    assert ids == sorted(ids)
    history = await store.chat_history("l1", limit=3)
    assert [r.id for r in history] == ids[-3:]
    assert [r.id for r in await store.chat_history("l1", before=ids[-3], limit=10)] == ids[:-3]
    assert [r.id for r in await store.chat_history("l1", after=ids[0], limit=2)] == ids[1:3]
    only = await store.chat_history("l1", kinds=("transcript",))
    assert [(r.text, r.meta) for r in only] == [("words", {"speaker_id": "s1", "start": 0.5})]
    await store.delete_lobby("l1")
    assert await store.chat_history("l1") == []


@pytest.mark.backends("redis")
async def test_redis_keeps_the_newest_messages_up_to_the_cap(store: Store) -> None:
    for i in range(8):
        await store.add_chat("l2", None, "system", f"n{i}", kind="system")
    assert [r.text for r in await store.chat_history("l2", limit=50)] == \
        [f"n{i}" for i in range(3, 8)]
