"""Several signaling nodes sharing one Redis: the bus between them.

Every node keeps the whole live picture in memory, as a single node does. What makes the
copies agree:

- **changes** — every write to the shared store (``RedisStore``) publishes what it changed on
  one channel in the same transaction; each node applies the others' changes to its picture.
- **deliveries** — a frame for a session connected to another node goes to that node's inbox
  (a capped Redis stream, so a node that was cut off from Redis for a moment reads on where it
  stopped), in order, and that node hands it to the socket.
- **the lock** — decisions that check, then write (a name is free, a lobby has room) take one
  Redis lock, then wait for their own marker to come back on the changes channel: every
  change published before the lock was taken has been applied when the check runs.
- **heartbeats** — each node refreshes a key with an expiry; a node whose key is gone is dead,
  and the sessions it held are marked disconnected by the survivors.

Redis delivers a subscriber's messages in the order they were published; the barrier relies
on it. A subscriber that reconnects may have missed changes, so it reloads the picture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.tasks import TaskSet

from .changes import Change, decode
from .store import StoreError

log = logging.getLogger(__name__)

INBOX_CAP = 100_000  # frames waiting for a node; a node that far behind has lost its sockets
INBOX_TTL = 3600  # seconds an inbox outlives the last frame sent to it

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def connect_redis(url: str) -> Redis:
    """A client that rides out a Redis restart: commands retry for about ten seconds."""
    retry = Retry(ExponentialBackoff(cap=0.5, base=0.02), retries=25)
    # bytes that are not UTF-8 (written by something else) read as lone surrogates, which the
    # readers of chat skip, instead of failing a whole read
    return Redis.from_url(url, decode_responses=True, encoding_errors="surrogateescape",
                          retry=retry,
                          retry_on_error=[RedisConnectionError, RedisTimeoutError],
                          socket_connect_timeout=2, socket_timeout=10, health_check_interval=5)


class Cluster:
    """This node's link to the others: changes in, deliveries in and out, lock, heartbeat."""

    def __init__(self, url: str, prefix: str, node_id: str | None = None,
                 node_ttl: float = 3.0) -> None:
        self.url = url
        self.prefix = prefix
        self.node_id = node_id or default_node_id()
        self.node_ttl = node_ttl
        self.redis = connect_redis(url)
        self.changes_channel = f"{prefix}:changes"
        # what this node does with the others' news: set once, by ``attach``
        self.on_change: Callable[[Change], None] = lambda change: None
        self.on_deliver: Callable[[list[str], str], None] = lambda ids, text: None
        self.on_resync: Callable[[], Awaitable[None]] | None = None
        self.on_nodes_lost: Callable[[set[str]], Awaitable[None]] | None = None
        self.watched_nodes: Callable[[], Iterable[str]] = lambda: ()
        self._outbox: list[tuple[str, str]] = []
        self._outbox_ready = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._markers: dict[str, asyncio.Future[None]] = {}
        self._release = self.redis.register_script(_RELEASE)
        self._tasks = TaskSet(log, "cluster task")
        self._subscribed = asyncio.Event()
        self._applying = asyncio.Event()  # set once the snapshot is loaded
        self._closed = False

    def attach(self, *, on_change: Callable[[Change], None],
               on_deliver: Callable[[list[str], str], None],
               on_resync: Callable[[], Awaitable[None]],
               on_nodes_lost: Callable[[set[str]], Awaitable[None]],
               watched_nodes: Callable[[], Iterable[str]]) -> None:
        """Connects the cluster to what this node holds: ``on_change`` applies another node's
        change, ``on_deliver`` hands forwarded frames to sockets, ``on_resync`` reloads the
        picture after changes may have been missed, ``on_nodes_lost`` is told of nodes whose
        heartbeat stopped among ``watched_nodes``."""
        self.on_change, self.on_deliver, self.on_resync = on_change, on_deliver, on_resync
        self.on_nodes_lost, self.watched_nodes = on_nodes_lost, watched_nodes

    def inbox(self, node_id: str) -> str:
        return f"{self.prefix}:inbox:{node_id}"

    def _alive_key(self, node_id: str) -> str:
        return f"{self.prefix}:alive:{node_id}"

    # --- life -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Checks Redis answers; a clear ``StoreError`` if it does not."""
        probe = Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
        try:
            await probe.ping()
        except (RedisError, OSError) as exc:
            raise StoreError(f"cannot reach Redis at {self.url}: {exc}") from exc
        finally:
            await probe.aclose()
        await self._beat()

    async def start(self) -> None:
        """Subscribes (call before reading the snapshot: nothing published after is missed)."""
        self._tasks.spawn(self._listen())
        await asyncio.wait_for(self._subscribed.wait(), 10)

    def run(self) -> None:
        """Starts applying changes, heartbeats and sending (after the snapshot is loaded)."""
        self._applying.set()
        self._tasks.spawn(self._send_loop())
        self._tasks.spawn(self._read_inbox())
        self._tasks.spawn(self._heartbeat_loop())

    async def close(self) -> None:
        self._closed = True
        await self.flush()
        await self._tasks.close()
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(self._alive_key(self.node_id), self.inbox(self.node_id))
        await self.redis.aclose()

    # --- changes and deliveries -------------------------------------------------------------

    def forward(self, node_id: str, session_ids: list[str], text: str) -> None:
        """Sends ``text`` to sessions connected to ``node_id`` (in order, without waiting)."""
        self._outbox.append((node_id, ",".join(session_ids) + "\n" + text))
        self._outbox_ready.set()

    async def _send_loop(self) -> None:
        while not self._closed:
            await self._outbox_ready.wait()
            await self.flush()

    async def flush(self) -> None:
        """Returns once every frame forwarded so far is in its node's inbox (in order: one
        flush at a time)."""
        async with self._flush_lock:
            await self._flush()

    async def _flush(self) -> None:
        self._outbox_ready.clear()
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for node_id, payload in batch:
                    pipe.xadd(self.inbox(node_id), {"d": payload}, maxlen=INBOX_CAP,
                              approximate=True)
                for node_id in {node_id for node_id, _ in batch}:  # a dead node's inbox goes
                    pipe.expire(self.inbox(node_id), INBOX_TTL)
                await pipe.execute()
        except (RedisError, OSError) as exc:  # frames in flight are lost, as on a dropped socket
            log.error("could not forward %d frame(s) to other nodes: %s", len(batch), exc)

    # --- the listener -----------------------------------------------------------------------

    async def _listen(self) -> None:
        subscriptions = 0
        delay = 0.05
        while not self._closed:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(self.changes_channel)
                while not self._closed:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    delay = 0.05
                    if msg["type"] == "subscribe":
                        if msg["channel"] != self.changes_channel:
                            continue
                        subscriptions += 1
                        self._subscribed.set()
                        if subscriptions > 1:  # reconnected: whatever was published meanwhile
                            log.warning("re-subscribed to Redis; resynchronising")
                            await self._applying.wait()
                            if self.on_resync is not None:
                                await self.on_resync()
                        continue
                    if msg["type"] != "message":
                        continue
                    await self._applying.wait()
                    if not self._handle(msg["data"]) and self.on_resync is not None:
                        # this node's picture may now differ from the others': load it anew
                        await self.on_resync()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("Redis subscription lost (%s); reconnecting", exc)
            except Exception:
                log.exception("cluster listener failed; reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    async def _read_inbox(self) -> None:
        key = self.inbox(self.node_id)
        last = "0-0"  # this node's id is new: whatever is in its inbox is for it
        delay = 0.05
        while not self._closed:
            try:
                # [(stream, [(entry id, {field: value})])], all str: redis's types can't
                # know that the client decodes responses
                batches: list[tuple[str, list[tuple[str, dict[str, str]]]]] = \
                    await self.redis.xread({key: last}, count=500, block=1000)  # type: ignore[assignment]
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("reading the inbox failed (%s); retrying", exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
                continue
            for _, entries in batches:
                for entry_id, fields in entries:
                    last = entry_id
                    head, _, text = fields["d"].partition("\n")
                    try:
                        self.on_deliver(head.split(","), text)
                    except Exception:
                        log.exception("could not deliver a forwarded frame")

    def _handle(self, data: str) -> bool:
        """Applies one published change; False when it could not be applied."""
        published = json.loads(data)
        if published.get("op") == "marker":
            fut = self._markers.pop(published.get("n", ""), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return True
        if published.get("o") == self.node_id:
            return True  # applied already, when it was made
        try:
            self.on_change(decode(published))
        except Exception:
            log.exception("could not apply change %r; resynchronising", published.get("op"))
            return False
        return True

    async def barrier(self, timeout: float = 10.0) -> None:
        """Returns once every change published before the call has been applied here."""
        nonce = secrets.token_hex(6)
        fut = self._markers[nonce] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self.redis.publish(self.changes_channel,
                                         json.dumps({"op": "marker", "n": nonce}))
                await fut
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreError(f"the other nodes' changes did not arrive: {exc!r}") from exc
        finally:
            self._markers.pop(nonce, None)

    # --- the lock ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exclusive(self, name: str, timeout: float = 10.0) -> AsyncIterator[None]:
        """One holder at a time across the nodes; the picture is current inside."""
        key, token = f"{self.prefix}:lock:{name}", secrets.token_hex(8)
        deadline = time.monotonic() + timeout
        try:
            while not await self.redis.set(key, token, nx=True, px=int(timeout * 1000)):
                if time.monotonic() > deadline:
                    raise StoreError(f"the cluster lock {name!r} stayed busy")
                await asyncio.sleep(0.002 + random.random() * 0.008)
        except (RedisError, OSError) as exc:
            raise StoreError(f"cluster lock: {exc}") from exc
        try:
            await self.barrier()
            yield
        finally:
            with contextlib.suppress(RedisError, OSError):
                await self._release(keys=[key], args=[token])

    # --- heartbeats -------------------------------------------------------------------------

    async def _beat(self) -> None:
        await self.redis.set(self._alive_key(self.node_id), str(time.time()),
                             px=int(self.node_ttl * 1000))

    async def _heartbeat_loop(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.node_ttl / 4)
            try:
                await self._beat()
                await self._check_nodes()
            except (RedisError, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)
            except StoreError as exc:
                log.warning("node check failed: %s", exc)

    async def _check_nodes(self) -> None:
        others = sorted(set(self.watched_nodes()) - {self.node_id})
        if not others or self.on_nodes_lost is None:
            return
        alive = await self.redis.mget([self._alive_key(n) for n in others])
        lost = {n for n, beat in zip(others, alive) if beat is None}
        if lost:
            await self.on_nodes_lost(lost)

    async def alive(self, node_id: str) -> bool:
        return bool(await self.redis.exists(self._alive_key(node_id)))
