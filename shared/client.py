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

Exceptions: everything raised to callers derives from ``ClientError``. A close with code 4001
(the session connected elsewhere), 4002 (deleted) or 4003 (kicked) ends the client with
``SessionEnded``; any other lost connection is retried. See docs/client.md.
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
from .tasks import cancel_and_wait

log = logging.getLogger(__name__)

Handler = Callable[[p.Message], Awaitable[None] | None]


class ClientError(Exception):
    """Base of every error the client raises."""


class ConnectionClosed(ClientError):
    """The client was closed, or gave up on this request."""


class RequestTimeout(ClientError):
    """No reply arrived within the request's timeout."""


class NotDelivered(ClientError):
    """A queued frame was dropped (``reason`` is ``overflow``, ``ttl`` or ``closed``)."""

    def __init__(self, reason: str, message: p.Message) -> None:
        super().__init__(f"{message.type.value} not delivered: {reason}")
        self.reason = reason
        self.message = message


class AuthError(ClientError):
    """The server refused our credentials (provider key or session token); the client stops."""


class SessionEnded(ClientError):
    """The server ended this session's connection for good: ``code`` 4001 (the session
    connected again elsewhere), 4002 (the session was deleted) or 4003 (kicked). The client
    stops instead of reconnecting, which would only take the session back."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by the server ({code}: {reason or 'no reason'})")
        self.code = code
        self.reason = reason


FINAL_CLOSE_CODES = (4001, 4002, 4003)


class QueueFull(ClientError):
    """The outgoing queue is full of critical frames; nothing could make room."""


class ServerError(ClientError):
    """The server answered a request with an ``error``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def backoff(initial: float = 0.1, maximum: float = 5.0, factor: float = 2.0) -> Iterator[float]:
    """Delays with exponential growth and full jitter: uniform in [0, min(max, initial*f^n)]."""
    for n in itertools.count():
        yield random.uniform(0, min(maximum, initial * factor ** min(n, 64)))


@dataclass
class ClientConfig:
    url: str  # the server's HTTP base URL, e.g. http://127.0.0.1:8080/ (base path included)
    # other nodes of the same deployment (without a load balancer): tried in turn when the
    # current one can't be reached or drops us; the session resumes on whichever answers
    fallback_urls: tuple[str, ...] = ()
    token: str | None = None
    name: str | None = None
    password: str | None = None
    bot: bool = False
    provider_key: str | None = None
    create_session: bool = True  # when the token is refused: start a new session, or stop
    connect_timeout: float = 5.0
    heartbeat: float = 5.0  # client pings; a missing pong ends the connection
    receive_timeout: float = 15.0  # no frame (or server ping) for this long: the link is dead
    request_timeout: float = 15.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    healthy_after: float = 5.0  # a connection that lived this long resets the backoff
    queue_size: int = 1000
    queue_ttl: float = 60.0
    dedupe_window: float = 300.0
    dedupe_max: int = 10_000
    breaker_threshold: int = 8  # ~8 s of outage at the default backoff
    breaker_cooldown: float = 15.0
    # https:// servers: certificates are verified against the system's CAs, or against this
    # PEM file (a self-signed server's certificate, or a private CA)
    ca_file: str | None = None
    server_hostname: str | None = None  # the name to verify the certificate against, if not url's

    def __post_init__(self) -> None:
        if not self.url.endswith("/"):
            self.url += "/"
        self.fallback_urls = tuple(u if u.endswith("/") else u + "/" for u in self.fallback_urls)
        if self.queue_size < 1 or self.queue_ttl <= 0 or self.breaker_threshold < 1:
            raise ValueError("queue_size, queue_ttl and breaker_threshold must be positive")

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "ws"


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


@dataclass
class _Outgoing:
    message: p.Message
    id: str | None
    critical: bool
    deadline: float
    delivery: asyncio.Future[None]
    reply: asyncio.Future[p.Message] | None = None


class SignalingClient:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.stats = Stats()
        self.session: p.SessionInfo | None = None
        # the ICE servers the server gave this session (empty: host candidates only)
        self.ice_servers: list[p.IceServer] = []
        self._handlers: dict[p.MessageType, list[Handler]] = collections.defaultdict(list)
        self._queue: collections.deque[_Outgoing] = collections.deque()
        self._inflight: dict[str, _Outgoing] = {}
        self._seen: collections.OrderedDict[str, float] = collections.OrderedDict()
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
            raise RequestTimeout(f"not connected within {timeout} s")

    async def wait_stopped(self) -> ClientError | None:
        """Waits until the connection loop ends (close, or a fatal ``AuthError``)."""
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
        item = self._enqueue(message, f"{self._id_prefix}-{next(self._ids)}", critical, None,
                             reply=True)
        assert item.reply is not None
        try:
            return await asyncio.wait_for(asyncio.shield(item.reply),
                                          timeout or self.config.request_timeout)
        except asyncio.TimeoutError:
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
        while (self._queue or self._inflight) and self.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await cancel_and_wait(self._task)
        try:
            if self._ws is not None:
                with contextlib.suppress(Exception):  # a socket already gone: nothing to say
                    await asyncio.wait_for(self._ws.close(), 1.0)
        finally:
            if self._http is not None:
                await self._http.close()
        unsent = [item for item in (*self._inflight.values(), *self._queue)]
        self._inflight.clear()
        self._queue.clear()
        for item in unsent:
            self._fail(item, "closed")
        self.stats.state = "closed"
        self.stats.queued = 0
        return [item.message for item in unsent]

    # --- queue --------------------------------------------------------------------------------

    def _enqueue(self, message: p.Message, id_: str | None, critical: bool, ttl: float | None,
                 *, reply: bool = False) -> _Outgoing:
        if self._closing:
            raise ConnectionClosed("the client is closed")
        loop = asyncio.get_running_loop()
        item = _Outgoing(message, id_, critical, time.monotonic() + (ttl or self.config.queue_ttl),
                         loop.create_future(), loop.create_future() if reply else None)
        for fut in (item.delivery, item.reply):  # nobody has to await these
            if fut is not None:
                fut.add_done_callback(_consume)
        if len(self._queue) >= self.config.queue_size:
            victim = next((q for q in self._queue if not q.critical), None)
            if victim is None:
                raise QueueFull(f"{len(self._queue)} critical frames wait to be sent")
            self._queue.remove(victim)
            self._fail(victim, "overflow")
        self._queue.append(item)
        self.stats.queued = len(self._queue)
        if not self.connected and self._expiry is None:  # TTLs matter only while offline
            self._expiry = loop.call_at(item.deadline - time.monotonic() + loop.time() + 0.001,
                                        self._expire)
        self._wakeup.set()
        return item

    def _fail(self, item: _Outgoing, reason: str) -> None:
        self.stats.dropped[reason] += 1
        exc = NotDelivered(reason, item.message)
        if item.critical:
            log.error("critical %s frame dropped: %s", item.message.type.value, reason)
        for fut in (item.delivery, item.reply):
            if fut is not None and not fut.done():
                fut.set_exception(exc)

    def _forget(self, item: _Outgoing) -> None:
        if item.id is not None:
            self._inflight.pop(item.id, None)
        with contextlib.suppress(ValueError):
            self._queue.remove(item)
        self.stats.queued = len(self._queue)

    def _expire(self) -> None:
        self._expiry = None
        now = time.monotonic()
        if self._queue and self._queue[0].deadline <= now or \
                any(q.deadline <= now for q in self._queue):
            for item in [q for q in self._queue if q.deadline <= now]:
                self._queue.remove(item)
                self._fail(item, "ttl")
        self.stats.queued = len(self._queue)
        if self._queue and not self.connected:  # the next deadline, while still offline
            loop = asyncio.get_running_loop()
            soonest = min(q.deadline for q in self._queue)
            self._expiry = loop.call_at(soonest - time.monotonic() + loop.time() + 0.001,
                                        self._expire)

    # --- connection loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except AuthError as exc:
            log.error("giving up: %s", exc)
            self.failure = exc
            self.stats.state = "failed"
        except SessionEnded as exc:  # the server's decision, not a fault: no error logged
            log.info("stopping: %s", exc)
            self.failure = exc
            self.stats.state = "closed"
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
            except (asyncio.CancelledError, AuthError):
                raise
            except Exception as exc:
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
            except (asyncio.CancelledError, SessionEnded):
                raise
            except Exception as exc:
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
        cfg = self.config
        timeout = aiohttp.ClientTimeout(total=cfg.connect_timeout)
        if cfg.token is None:
            await self._create_session(timeout)
        try:
            # ws_connect's own timeout covers the open socket, not the handshake: one sent
            # into a dead link would wait for the session's default (5 minutes)
            async with asyncio.timeout(cfg.connect_timeout):
                # the token in a header: a URL ends up in logs and error messages
                ws = await self._http.ws_connect(
                    cfg.ws_url, headers={"Authorization": f"Bearer {cfg.token or ''}"},
                    heartbeat=cfg.heartbeat, server_hostname=cfg.server_hostname,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=cfg.receive_timeout,
                                                    ws_close=cfg.connect_timeout),
                    max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:  # the server no longer knows us
                if not cfg.create_session:
                    raise AuthError("the server refused our session token") from None
                log.warning("session token rejected; creating a new session")
                cfg.token = None
            raise
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        return ws

    async def _create_session(self, timeout: aiohttp.ClientTimeout) -> None:
        assert self._http is not None
        headers = {"X-Provider-Key": self.config.provider_key} if self.config.provider_key else {}
        async with self._http.post(self.config.url + "api/sessions", json={"bot": self.config.bot},
                                   headers=headers, timeout=timeout,
                                   server_hostname=self.config.server_hostname) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 201:
                error = body.get("error", {}) if isinstance(body, dict) else {}
                if resp.status in (401, 403):
                    raise AuthError(f"session refused: {error.get('message', resp.status)}")
                raise ServerError(error.get("code", str(resp.status)), error.get("message", ""))
        self.config.token = body["token"]
        self.stats.sessions_created += 1

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Runs one connection: welcome, resume, then reading and writing side by side."""
        self._ws = ws
        first = await ws.receive(timeout=self.config.connect_timeout)
        if first.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"expected welcome, got {first.type.name}")
        welcome, _ = p.decode(first.data)
        if not isinstance(welcome, p.Welcome):
            raise ConnectionError(f"expected welcome, got {welcome.type.value}")
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
            await self._direct(p.SetName(name=cfg.name, password=cfg.password))
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
        id_ = f"{self._id_prefix}-{next(self._ids)}"
        loop = asyncio.get_running_loop()
        item = _Outgoing(message, id_, False, time.monotonic() + self.config.request_timeout,
                         loop.create_future(), loop.create_future())
        assert item.reply is not None
        self._inflight[id_] = item
        try:
            await self._ws.send_str(p.encode(message, id_))
            self.stats.sent += 1
            return await asyncio.wait_for(item.reply, self.config.request_timeout)
        finally:
            self._inflight.pop(id_, None)

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._expire()  # what went stale while we were away
        while True:
            while self._queue:
                item = self._queue[0]
                if item.id is not None:
                    self._inflight[item.id] = item
                await ws.send_str(p.encode(item.message, item.id))
                self._queue.popleft()
                self.stats.sent += 1
                self.stats.queued = len(self._queue)
                if not item.delivery.done():
                    item.delivery.set_result(None)
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), 1.0)

    def _requeue_inflight(self) -> None:
        """Unanswered requests go back to the front of the queue, in their original order."""
        pending = [item for item in self._inflight.values() if item.reply is not None
                   and not item.reply.done() and item.delivery.done()]
        self._inflight.clear()
        self.stats.resent += len(pending)
        self._queue.extendleft(reversed(pending))
        self.stats.queued = len(self._queue)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            frame = await ws.receive()
            if frame.type is aiohttp.WSMsgType.CLOSE and frame.data in FINAL_CLOSE_CODES:
                raise SessionEnded(frame.data, frame.extra or "")
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                              aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise ConnectionError(f"socket closed ({frame.type.name}: {frame.data!r})")
            if frame.type is not aiohttp.WSMsgType.TEXT:
                self.stats.invalid += 1
                continue
            self.stats.received += 1
            try:
                message, id_ = p.decode(frame.data)
            except p.ProtocolError as exc:
                self.stats.invalid += 1
                log.warning("ignoring a bad frame from the server: %s", exc)
                continue
            await self._receive(message, id_)

    async def _receive(self, message: p.Message, id_: str | None) -> None:
        if id_ is not None and id_ in self._inflight:
            item = self._inflight.pop(id_)
            assert item.reply is not None
            if not item.reply.done():
                if isinstance(message, p.Error):
                    item.reply.set_exception(ServerError(message.code, message.message))
                else:
                    item.reply.set_result(message)
            if isinstance(message, p.Error):
                return
        elif id_ is not None and self._is_duplicate(id_):
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
            except Exception:
                log.exception("handler for %s failed", message.type.value)

    def _is_duplicate(self, id_: str) -> bool:
        now = time.monotonic()
        while self._seen and (len(self._seen) >= self.config.dedupe_max or
                              next(iter(self._seen.values())) < now - self.config.dedupe_window):
            self._seen.popitem(last=False)
        if id_ in self._seen:
            return True
        self._seen[id_] = now
        return False


def _consume(fut: asyncio.Future[Any]) -> None:
    """Marks a future's exception as retrieved: callers may ignore a delivery future."""
    if not fut.cancelled():
        fut.exception()
