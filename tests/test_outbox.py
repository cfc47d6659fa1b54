"""The client's delivery rules on their own: no socket, no server, no clock (time is passed in)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from shared import protocol as p
from shared.errors import NotDelivered, QueueFull, ServerError
from shared.outbox import Outbox, Outgoing, Seen


def chat(text: str) -> p.Chat:
    return p.Chat(lobby_id="L", text=text)


def write_next(box: Outbox) -> Outgoing:
    """What the client's writer does with each frame, the socket left out."""
    item = box.next()
    assert item is not None
    box.written(item)
    return item


async def test_frames_leave_in_order_and_resolve_when_written() -> None:
    box = Outbox(10)
    first, second = box.add(chat("a"), None, False, 60), box.add(chat("b"), None, False, 60)
    assert len(box) == 2 and box.busy
    item = box.next()
    assert item is first and not first.delivery.done()  # not written yet: still queued
    box.written(first)
    assert first.delivery.done() and box.next() is second
    box.written(second)
    assert len(box) == 0 and not box.busy and box.next() is None


async def test_overflow_drops_the_oldest_plain_frame_never_a_critical_one() -> None:
    box = Outbox(3)
    critical = box.add(chat("c"), None, True, 60)
    plain = [box.add(chat(f"p{i}"), None, False, 60) for i in range(2)]
    box.add(chat("new"), None, False, 60)  # full: the oldest plain frame goes
    with pytest.raises(NotDelivered) as err:
        await plain[0].delivery
    assert err.value.reason == "overflow" and box.dropped["overflow"] == 1
    box.add(chat("c2"), None, True, 60)
    box.add(chat("c3"), None, True, 60)
    assert [q.critical for q in box.queue] == [True, True, True]
    with pytest.raises(QueueFull):
        box.add(chat("c4"), None, True, 60)
    assert len(box) == 3 and not critical.delivery.done()


async def test_ttl_drops_what_is_due_and_names_the_next_deadline() -> None:
    box = Outbox(10)
    soon, later = box.add(chat("a"), None, True, 5.0), box.add(chat("b"), None, False, 9.0)
    assert box.next_deadline() == 5.0
    box.expire(now=4.9)
    assert len(box) == 2
    box.expire(now=5.0)
    assert list(box.queue) == [later] and box.next_deadline() == 9.0
    with pytest.raises(NotDelivered) as err:
        await soon.delivery
    assert err.value.reason == "ttl" and box.dropped == {"ttl": 1}
    box.expire(now=100)
    assert box.next_deadline() is None and box.dropped["ttl"] == 2


async def test_a_reply_settles_its_request_an_error_as_server_error() -> None:
    box = Outbox(10)
    ok, bad = box.add(p.Ping(), "r1", False, 60), box.add(p.Ping(), "r2", False, 60)
    for item in (box.next(), box.next()):  # the second next() gives the same frame again
        assert item is ok
    box.written(ok)
    assert box.next() is bad and box.inflight.keys() == {"r1", "r2"}
    box.written(bad)
    assert ok.reply is not None and bad.reply is not None
    assert box.answer("r1", p.Pong()) and await ok.reply == p.Pong()
    assert box.answer("r2", p.Error(code="lobby_full", message="full"))
    with pytest.raises(ServerError) as err:
        await bad.reply
    assert err.value.code == "lobby_full"
    assert not box.answer("r1", p.Pong())  # answered already: no longer ours
    assert not box.busy


async def test_a_reply_that_comes_while_writing_finds_its_request() -> None:
    box = Outbox(10)
    item = box.add(p.Ping(), "r1", False, 60)
    assert box.next() is item
    assert box.answer("r1", p.Pong())  # before written(): the socket write has not returned
    box.written(item)
    assert item.reply is not None and item.reply.result() == p.Pong()
    assert not box.busy


async def test_requeue_resends_written_unanswered_requests_first_in_order() -> None:
    box = Outbox(10)
    requests = [box.add(p.Ping(), f"r{i}", False, 60) for i in range(3)]
    plain = box.add(chat("x"), None, False, 60)
    for request in requests:
        assert write_next(box) is request
    box.answer("r1", p.Pong())
    unwritten = box.add(p.Ping(), "r3", False, 60)
    assert box.next() is plain
    assert box.requeue() == 2  # r0 and r2: written, no reply; r3 was never written
    assert [q.id for q in box.queue] == ["r0", "r2", None, "r3"]
    assert box.inflight == {} and unwritten in box.queue


async def test_a_direct_request_is_tracked_but_never_resent() -> None:
    box = Outbox(10)
    item = box.direct(p.SetName(name="n"), "d1", 60)
    assert box.inflight == {"d1": item} and len(box) == 0
    assert box.requeue() == 0 and len(box) == 0
    item = box.direct(p.SetName(name="n"), "d2", 60)
    box.forget(item)
    assert not box.busy


async def test_forget_takes_a_frame_out_wherever_it_is() -> None:
    box = Outbox(10)
    queued, inflight = box.add(p.Ping(), "a", False, 60), box.add(p.Ping(), "b", False, 60)
    write_next(box)
    box.next()
    box.forget(queued)
    box.forget(inflight)
    assert not box.busy and box.dropped == {}


async def test_close_fails_everything_left_and_returns_its_messages() -> None:
    box = Outbox(10)
    request = box.add(p.Ping(), "r", True, 60)
    write_next(box)
    plain = box.add(chat("left"), None, False, 60)
    assert box.close() == [p.Ping(), chat("left")]
    for fut in (request.reply, plain.delivery):
        assert fut is not None
        with pytest.raises(NotDelivered) as err:
            await fut
        assert err.value.reason == "closed"
    assert box.dropped == {"closed": 2} and not box.busy


async def test_nobody_has_to_await_a_dropped_frame() -> None:
    """A delivery future that fails unawaited must not log 'exception never retrieved'."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    box = Outbox(1)
    box.add(chat("a"), None, False, 60)
    box.add(chat("b"), None, False, 60)  # drops "a", whose future nobody holds
    box.close()
    del box
    gc.collect()
    await asyncio.sleep(0)
    assert unhandled == []


def test_seen_drops_repeats_within_the_window_and_bounds_its_memory() -> None:
    seen = Seen(window=10.0, limit=3)
    assert not seen.check("m1", now=0.0)
    assert seen.check("m1", now=5.0)  # a replay
    assert not seen.check("m2", now=6.0) and not seen.check("m3", now=7.0)
    assert not seen.check("m4", now=8.0)  # the limit: the oldest id is forgotten
    assert not seen.check("m1", now=8.5)
    assert seen.check("m4", now=9.0)
    assert not seen.check("m2", now=30.0)  # past the window: everything older is forgotten
    assert not seen.check("m4", now=30.0)
