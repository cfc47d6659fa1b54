"""The resilient signaling client every bot, tool and test uses.

One task runs the connection loop: connect (creating a session over HTTP if it has no token),
resume (name, lobbies, then the outgoing queue in order), read until the socket dies, back off
with full jitter, repeat. A circuit breaker slows the loop after repeated failures.

Delivery model:

* ``send(msg)`` queues a frame; it is written as soon as the client is connected. While
  disconnected the queue is bounded (oldest non-critical frame dropped first) and every frame
  has a TTL. A critical frame is never dropped silently: its delivery future fails.
* ``request(msg)`` also gives the frame an ``id`` and waits for the reply with that ``id``.
  Unanswered requests are re-sent after a reconnect with the same ``id``; the server treats a
  repeated chat ``id`` as the same message, so chat is stored exactly once.
* Incoming frames with an ``id`` that is no reply (chat, transcripts) are de-duplicated within
  a window, since the server replays history after a reconnect.

The queue, its limits and the replay filter are ``shared.outbox`` (no I/O); this module is the
socket loop around them.

Exceptions (``shared.errors``): everything raised to callers derives from ``ClientError``. A
close with code 4001 (the session connected elsewhere), 4002 (deleted) or 4003 (kicked) ends
the client with ``SessionEnded``, and a configured name the server refuses with
``NameRefused``; any other lost connection is retried; an exception that is
no network or server failure is a bug: logged with its traceback, it stops the client
(``ClientBug``). See docs/client.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import logging
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from . import protocol as p
from .config import ClientConfig
from .errors import (AuthError, ClientBug, ClientError, ConnectionClosed, ConnectionLost,
                     ConnectTimeout, ErrorCode, HandshakeError, NameRefused, ProtocolError, RequestTimeout,
                     ServerError, SessionEnded)
from .handshake import create_session, open_socket, receive_welcome
from .outbox import Outbox, Outgoing, Seen
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

Handler = Callable[[p.Message], Awaitable[None] | None]


FINAL_CLOSE_CODES = (4001, 4002, 4003)
# a configured name refused with one of these stops the client (NameRefused): asked again, the
# server would refuse it again
NAME_REFUSALS = (ErrorCode.NAME_IN_USE, ErrorCode.NAME_PROTECTED, ErrorCode.BAD_PASSWORD,
                 ErrorCode.NAME_INVALID)

# What a lost or refused connection raises: the loop logs these and tries again. Anything else
# is a bug, and reconnecting would only meet it again.
LINK_FAILURES: tuple[type[Exception], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is one)
    TimeoutError,  # connect_timeout, receive_timeout, a resume request unanswered
    aiohttp.ClientError,  # HTTP and WebSocket failures, a handshake refused (not 401)
    HandshakeError, ConnectionLost,
    ServerError,  # a session refused with 5xx (a name refused is NameRefused: final)
)


def backoff(initial: float = 0.1, maximum: float = 5.0, factor: float = 2.0) -> Iterator[float]:
    """Delays with exponential growth and full jitter: uniform in [0, min(max, initial*f^n)]."""
    for n in itertools.count():
        yield random.uniform(0, min(maximum, initial * factor ** min(n, 64)))


@dataclass
class Stats:
    state: str = "idle"
    breaker: str = "closed"
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    breaker_opens: int = 0
    sessions_created: int = 0
    sent: int = 0
    received: int = 0
    queued: int = 0
    resent: int = 0
    duplicates: int = 0
    invalid: int = 0
    dropped: collections.Counter[str] = field(default_factory=collections.Counter)


class SignalingClient:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.session: p.SessionInfo | None = None
        # the ICE servers the server gave this session (empty: host candidates only)
        self.ice_servers: list[p.IceServer] = []
        self._handlers: dict[p.MessageType, list[Handler]] = collections.defaultdict(list)
        self._outbox = Outbox(config.queue_size, self.stats.dropped)
        self._seen = Seen(config.dedupe_window, config.dedupe_max)
        self._lobbies: dict[str, str | None] = {}  # lobby id -> password, to re-join
        self._last_message: dict[str, int] = {}  # lobby id -> newest chat id seen
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._connected = asyncio.Event()
        self._stopped = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None
        self.failure: ClientError | None = None
        self._closing = False
        self._ids = itertools.count(1)
        self._id_prefix = uuid.uuid4().hex[:8]

    # --- public API ---------------------------------------------------------------------------

    def on(self, type_: p.MessageType, fn: Handler | None = None) -> Any:
        """Registers a handler for a message type; usable as ``@client.on(MessageType.CHAT)``."""
        def register(fn: Handler) -> Handler:
            self._handlers[type_].append(fn)
            return fn

        return register(fn) if fn is not None else register

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def session_id(self) -> str | None:
        return self.session.session_id if self.session else None

    @property
    def lobbies(self) -> list[str]:
        return list(self._lobbies)

    async def start(self, wait: float | None = None) -> None:
        """Starts the connection loop; with ``wait``, returns once connected (or times out)."""
        if self._task is None:
            ssl_context = None
            if self.config.ca_file:
                ssl_context = ssl.create_default_context(cafile=self.config.ca_file)
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context)
                                               if ssl_context else None)
            self._task = asyncio.create_task(self._run(), name="signaling-client")
        if wait is not None:
            await self.wait_connected(wait)

    async def wait_connected(self, timeout: float) -> None:
        """Returns once connected; raises the failure that stopped the client, if any."""
        waiters = {asyncio.ensure_future(self._connected.wait()),
                   asyncio.ensure_future(self._stopped.wait())}
        done, pending = await asyncio.wait(waiters, timeout=timeout,
                                           return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        if self.failure is not None:
            raise self.failure
        if not done or not self.connected:
            raise ConnectTimeout(f"not connected within {timeout} s")

    async def wait_stopped(self) -> ClientError | None:
        """Waits until the connection loop ends (close, ``AuthError``, ``SessionEnded`` or
        ``ClientBug``) and returns that failure, or None after ``close``."""
        await self._stopped.wait()
        return self.failure

    def send(self, message: p.Message, *, critical: bool = False,
             ttl: float | None = None) -> asyncio.Future[None]:
        """Queues ``message``; returns a future that resolves once it is written.

        Awaiting the future is optional for ordinary frames. A critical frame's future fails
        with ``NotDelivered`` if it is ever dropped.
        """
        return self._enqueue(message, None, critical, ttl).delivery

    async def request(self, message: p.Message, *, timeout: float | None = None,
                      critical: bool = False) -> p.Message:
        """Sends ``message`` with a fresh id and returns the reply; ``ServerError`` on error."""
        item = self._enqueue(message, self._next_id(), critical, None)
        assert item.reply is not None
        try:
            return await asyncio.wait_for(asyncio.shield(item.reply),
                                          timeout or self.config.request_timeout)
        except TimeoutError:
            self._forget(item)
            raise RequestTimeout(f"no reply to {message.type.value} in time") from None

    async def set_name(self, name: str, password: str | None = None) -> p.SessionInfo:
        reply = await self.request(p.SetName(name=name, password=password))
        assert isinstance(reply, p.Session)
        self.config.name, self.config.password = name, password
        self.session = reply.session
        return reply.session

    async def join(self, *, lobby_id: str | None = None, lobby_name: str | None = None,
                   password: str | None = None, private: bool = False) -> p.LobbyState:
        reply = await self.request(p.Join(lobby_id=lobby_id, lobby_name=lobby_name,
                                          password=password, private=private))
        assert isinstance(reply, p.LobbyState)
        self._lobbies[reply.lobby.id] = password
        return reply

    async def part(self, lobby_id: str) -> None:
        self._lobbies.pop(lobby_id, None)
        await self.request(p.Part(lobby_id=lobby_id))

    async def chat(self, lobby_id: str, text: str) -> int:
        """Posts chat; returns the stored message id once the server has persisted it."""
        reply = await self.request(p.Chat(lobby_id=lobby_id, text=text), critical=True)
        assert isinstance(reply, p.Ack)
        return int(reply.result["message_id"])

    async def close(self, drain: float = 2.0) -> list[p.Message]:
        """Sends what it can within ``drain`` seconds, closes, returns what was not sent."""
        if self._closing:
            return []
        self._closing = True
        deadline = time.monotonic() + drain
        while self._outbox.busy and self.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await cancel_and_wait(self._task)
        try:
            if self._ws is not None:
                with contextlib.suppress(Exception):  # a socket already gone: nothing to say
                    await asyncio.wait_for(self._ws.close(), 1.0)
        finally:
            if self._http is not None:
                await self._http.close()
        unsent = self._outbox.close()
        self.stats.state = "closed"
        self.stats.queued = 0
        return unsent

    # --- queue --------------------------------------------------------------------------------

    def _next_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids)}"

    def _enqueue(self, message: p.Message, id_: str | None, critical: bool,
                 ttl: float | None) -> Outgoing:
        if self._closing:
            raise ConnectionClosed("the client is closed")
        deadline = time.monotonic() + (ttl or self.config.queue_ttl)
        item = self._outbox.add(message, id_, critical, deadline)
        self.stats.queued = len(self._outbox)
        if not self.connected and self._expiry is None:  # TTLs matter only while offline
            self._schedule_expiry(deadline)
        self._wakeup.set()
        return item

    def _forget(self, item: Outgoing) -> None:
        self._outbox.forget(item)
        self.stats.queued = len(self._outbox)

    def _expire(self) -> None:
        self._expiry = None
        self._outbox.expire(time.monotonic())
        self.stats.queued = len(self._outbox)
        soonest = self._outbox.next_deadline()
        if soonest is not None and not self.connected:  # the next deadline, while offline
            self._schedule_expiry(soonest)

    def _schedule_expiry(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()  # its clock is not time.monotonic's: convert
        self._expiry = loop.call_at(deadline - time.monotonic() + loop.time() + 0.001,
                                    self._expire)

    # --- connection loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except (AuthError, NameRefused) as exc:
            log.error("giving up: %s", exc)
            self.failure = exc
            self.stats.state = "failed"
        except SessionEnded as exc:  # the server's decision, not a fault: no error logged
            log.info("stopping: %s", exc)
            self.failure = exc
            self.stats.state = "closed"
        except Exception as exc:
            log.exception("signaling client stopped by a bug")
            self.failure = ClientBug(f"{type(exc).__name__}: {exc}")
            self.failure.__cause__ = exc
            self.stats.state = "failed"
        finally:
            self._stopped.set()

    async def _loop(self) -> None:
        delays = self._backoff()
        failures = 0
        while True:
            self.stats.state = "connecting"
            started = time.monotonic()
            try:
                ws = await self._connect()
            except LINK_FAILURES as exc:
                failures += 1
                self.stats.connect_failures += 1
                log.info("connect failed (%d in a row): %s", failures, exc)
                self._next_url()
                self._expire()
                if failures >= self.config.breaker_threshold:
                    await self._breaker_pause()
                else:
                    await self._pause(next(delays))
                continue
            failures = 0
            self.stats.breaker = "closed"
            try:
                await self._serve(ws)
            except LINK_FAILURES as exc:
                log.info("connection lost: %s", exc)
            finally:
                self._connected.clear()
                self._ws = None
                with contextlib.suppress(Exception):
                    await ws.close()
                self._requeue_inflight()
            self._next_url()
            if time.monotonic() - started >= self.config.healthy_after:
                delays = self._backoff()
            await self._pause(next(delays))

    def _next_url(self) -> None:
        cfg = self.config
        if cfg.fallback_urls:
            cfg.url, cfg.fallback_urls = cfg.fallback_urls[0], (*cfg.fallback_urls[1:], cfg.url)

    def _backoff(self) -> Iterator[float]:
        return backoff(self.config.backoff_initial, self.config.backoff_max)

    async def _pause(self, delay: float) -> None:
        self.stats.state = "backoff"
        await asyncio.sleep(delay)

    async def _breaker_pause(self) -> None:
        if self.stats.breaker != "open":
            self.stats.breaker_opens += 1
            log.warning("circuit breaker open: waiting %.1f s before the next try",
                        self.config.breaker_cooldown)
        self.stats.breaker = "open"
        self.stats.state = "backoff"
        await asyncio.sleep(self.config.breaker_cooldown)
        self.stats.breaker = "half-open"

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        assert self._http is not None
        if self.config.token is None:
            self.config.token = await create_session(self._http, self.config)
            self.stats.sessions_created += 1
        ws = await open_socket(self._http, self.config)
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        return ws

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Runs one connection: welcome, resume, then reading and writing side by side."""
        self._ws = ws
        welcome = await receive_welcome(ws, self.config.connect_timeout)
        self.session = welcome.session
        self.ice_servers = welcome.ice_servers
        self.stats.state = "resuming"
        await self._receive(welcome, None)
        reader = asyncio.create_task(self._read(ws), name="signaling-client-reader")
        writer: asyncio.Task[None] | None = None
        try:
            resume = asyncio.ensure_future(self._resume())
            await asyncio.wait({reader, resume}, return_when=asyncio.FIRST_COMPLETED)
            if not resume.done():  # the socket died while resuming
                resume.cancel()
                reader.result()
            resume.result()
            self.stats.state = "connected"
            self._connected.set()
            writer = asyncio.create_task(self._write(ws), name="signaling-client-writer")
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            await cancel_and_wait(reader, writer)

    async def _resume(self) -> None:
        """Restores the name and lobbies, sent ahead of anything queued."""
        cfg, session = self.config, self.session
        assert session is not None
        if cfg.name is not None and session.name != " ".join(cfg.name.split()):
            try:
                await self._direct(p.SetName(name=cfg.name, password=cfg.password))
            except ServerError as exc:
                if exc.code in NAME_REFUSALS:
                    raise NameRefused(exc.code, cfg.name, exc.message) from None
                raise
        for lobby_id, password in list(self._lobbies.items()):
            try:
                await self._direct(p.Join(lobby_id=lobby_id, password=password,
                                          history_since=self._last_message.get(lobby_id)))
            except ServerError as exc:
                log.warning("could not re-join lobby %s: %s", lobby_id, exc)
                if exc.code in ("lobby_not_found", "bad_password", "lobby_full"):
                    self._lobbies.pop(lobby_id, None)

    async def _direct(self, message: p.Message) -> p.Message:
        """A request written now, bypassing the queue (used while resuming)."""
        assert self._ws is not None
        id_ = self._next_id()
        item = self._outbox.direct(message, id_, time.monotonic() + self.config.request_timeout)
        assert item.reply is not None
        try:
            await self._ws.send_str(p.encode(message, id_))
            self.stats.sent += 1
            return await asyncio.wait_for(item.reply, self.config.request_timeout)
        finally:
            self._outbox.forget(item)

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._expire()  # what went stale while we were away
        while True:
            while (item := self._outbox.next()) is not None:
                await ws.send_str(p.encode(item.message, item.id))
                self._outbox.written(item)
                self.stats.sent += 1
                self.stats.queued = len(self._outbox)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), 1.0)

    def _requeue_inflight(self) -> None:
        self.stats.resent += self._outbox.requeue()
        self.stats.queued = len(self._outbox)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            frame = await ws.receive()
            if frame.type is aiohttp.WSMsgType.CLOSE and frame.data in FINAL_CLOSE_CODES:
                raise SessionEnded(frame.data, frame.extra or "")
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise ConnectionLost(f"socket closed ({frame.type.name}: {frame.data!r})")
            if frame.type is not aiohttp.WSMsgType.TEXT:
                self.stats.invalid += 1
                continue
            self.stats.received += 1
            try:
                message, id_ = p.decode(frame.data)
            except ProtocolError as exc:
                self.stats.invalid += 1
                log.warning("ignoring a bad frame from the server: %s", exc)
                continue
            await self._receive(message, id_)

    async def _receive(self, message: p.Message, id_: str | None) -> None:
        if id_ is not None and self._outbox.answer(id_, message):
            if isinstance(message, p.Error):  # the requester has it, as ServerError
                return
        elif id_ is not None and self._seen.check(id_, time.monotonic()):
            self.stats.duplicates += 1
            return
        if isinstance(message, p.Chat) and message.message_id is not None:
            newest = self._last_message.get(message.lobby_id, 0)
            self._last_message[message.lobby_id] = max(newest, message.message_id)
        elif isinstance(message, p.Session):
            self.session = message.session
        elif isinstance(message, p.IceServers):
            self.ice_servers = message.ice_servers
        elif isinstance(message, p.PeerRemoved) and message.peer_id == self.session_id:
            self._lobbies.pop(message.lobby_id, None)
        for handler in list(self._handlers.get(message.type, ())):
            try:
                result = handler(message)
                if inspect.isawaitable(result):
                    await result
            except Exception:  # the handler's bug, not the connection's: log it, read on
                log.exception("handler for %s failed", message.type.value)
