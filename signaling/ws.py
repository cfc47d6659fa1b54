"""The ``/ws`` endpoint: authenticate, then route each frame to its handler.

Frames from one connection are handled one at a time, in order. Any bad frame gets an
``error`` reply (with the frame's ``id`` as ``ref``) and the connection stays up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import WSCloseCode, WSMsgType, web

from shared import protocol as p
from shared.protocol import ErrorCode, MessageType, ProtocolError

from .api import WS_PROTOCOL, bearer_token, http_error
from .connection import Connection
from .dispatch import DISPATCHER
from .hub import HUB, Hub, LiveSession
from .limits import LIMITS, ConnectionLimits
from .metrics import METRICS
from .store import StoreError

log = logging.getLogger(__name__)

Handler = Callable[[web.Application, LiveSession, p.Message, str | None], Awaitable[None]]


def reply(s: LiveSession, msg: p.Message, ref: str | None) -> None:
    if s.conn is not None:
        s.conn.send(p.encode(msg, ref))


def confirm(s: LiveSession, msg: p.Ack | p.Pong, ref: str | None) -> None:
    """An ``ack`` or ``pong`` answers only a frame that has an id (docs/protocol.md)."""
    if ref is not None:
        reply(s, msg, ref)


def send_error(conn: Connection, code: ErrorCode, message: str, ref: str | None) -> None:
    conn.send(p.encode(p.Error(code=code.value, message=message, ref=ref), ref))


async def on_set_name(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, p.SetName)
    reply(s, p.Session(session=await app[HUB].set_name(s, msg.name, msg.password)), ref)


async def on_join(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, p.Join)
    await app[HUB].join(s, msg, ref)


async def on_part(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, p.Part)
    await app[HUB].part(s, msg.lobby_id)
    confirm(s, p.Ack(), ref)


async def on_chat(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, p.Chat)
    lobby = app[HUB].picture.member_lobby(s, msg.lobby_id)
    # the request id doubles as an idempotency key: a resend after a reconnect is stored once
    rec = await app[HUB].post(lobby, s, msg.text, client_ref=ref)
    confirm(s, p.Ack(result={"message_id": rec.id}), ref)


def _provider_only(s: LiveSession) -> None:
    if not s.record.bot:
        raise ProtocolError(ErrorCode.NOT_ALLOWED, "only bot providers may send this")


async def on_provider_hello(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, p.ProviderHello)
    _provider_only(s)
    await app[DISPATCHER].hello(s.id, msg)
    confirm(s, p.Ack(), ref)


async def on_bot_status(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, p.BotStatus)
    _provider_only(s)
    app[DISPATCHER].bot_status(s.id, msg)
    confirm(s, p.Ack(), ref)


async def on_transcript(app: web.Application, s: LiveSession, msg: p.Message,
                        ref: str | None) -> None:
    assert isinstance(msg, p.Transcript)
    _provider_only(s)
    message_id = await app[HUB].caption(s, msg, ref)
    confirm(s, p.Ack(result={} if message_id is None else {"message_id": message_id}), ref)


async def on_ping(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    confirm(s, p.Pong(), ref)


HANDLERS: dict[MessageType, Handler] = {
    MessageType.SET_NAME: on_set_name,
    MessageType.JOIN: on_join,
    MessageType.PART: on_part,
    MessageType.CHAT: on_chat,
    MessageType.PING: on_ping,
    MessageType.PROVIDER_HELLO: on_provider_hello,
    MessageType.BOT_STATUS: on_bot_status,
    MessageType.TRANSCRIPT: on_transcript,
}
ACCEPTED = frozenset((*HANDLERS, MessageType.SDP, MessageType.ICE))


async def dispatch(app: web.Application, s: LiveSession, conn: Connection, text: str) -> None:
    hub, metrics = app[HUB], app[METRICS]
    started = time.perf_counter()
    conn.received += 1
    ref = None
    try:
        limit = hub.settings.max_message_bytes
        # a character is at most 4 bytes: only frames near the limit need encoding to measure
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            raise ProtocolError(ErrorCode.MESSAGE_TOO_LARGE, f"frames are limited to {limit} bytes")
        msg, ref = p.decode(text, ACCEPTED)
        metrics.messages.inc(msg.type.value)
        if conn.limits is not None and not s.record.bot:
            check_limits(hub, conn.limits, msg)
        if isinstance(msg, (p.Sdp, p.Ice)):  # the hot path: no handler coroutine to create
            hub.relay(s, msg)
            if ref is not None:
                reply(s, p.Ack(), ref)  # confirm(), inlined on the hot path
            metrics.relay_latency.observe(time.perf_counter() - started)
        else:
            await HANDLERS[msg.type](app, s, msg, ref)
    except ProtocolError as exc:
        fail(app, conn, exc.code, exc.message, ref if ref is not None else p.frame_id(text),
             counts=exc.code is not ErrorCode.RATE_LIMITED)
    except StoreError as exc:
        log.error("storage failed: %s", exc, extra={"session_id": s.id})
        fail(app, conn, ErrorCode.UNAVAILABLE, "storage is unavailable; nothing was saved", ref)
    except Exception:
        log.exception("handler failed", extra={"session_id": s.id})
        fail(app, conn, ErrorCode.INTERNAL, "internal error", ref)


def check_limits(hub: Hub, limits: ConnectionLimits, msg: p.Message) -> None:
    if not limits.messages.take():
        raise ProtocolError(ErrorCode.RATE_LIMITED, "too many messages; slow down")
    if isinstance(msg, p.Chat) and not limits.chat.take():
        raise ProtocolError(ErrorCode.RATE_LIMITED, "too many chat messages; slow down")
    if isinstance(msg, p.Join) and msg.lobby_name is not None and \
            hub.picture.lobby_by_name(msg.lobby_name) is None and not limits.creates.take():
        raise ProtocolError(ErrorCode.RATE_LIMITED, "too many new lobbies; wait a little")


def fail(app: web.Application, conn: Connection, code: ErrorCode, message: str,
         ref: str | None, *, counts: bool = True) -> None:
    """Answers a bad frame; a client that keeps sending them is cut off (1008).

    A frame dropped for going over the rate (``rate_limited``) is not a bad frame: it does not
    count, so a client that bursts is slowed down, never disconnected for it."""
    app[METRICS].errors.labels(code.value).inc()
    send_error(conn, code, message, ref)
    if counts and conn.limits is not None and not conn.limits.errors.take() and not conn.closed:
        app[METRICS].closed.labels("protocol_errors").inc()
        conn.close_soon(WSCloseCode.POLICY_VIOLATION, "too many bad frames")


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    """Browsers send Origin; other clients (bots, tools) don't and aren't subject to it."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if allowed:
        return origin.rstrip("/") in allowed or "*" in allowed
    return origin.split("://", 1)[-1] == request.host  # the page this server served


async def websocket(request: web.Request) -> web.WebSocketResponse:
    hub, metrics, limits = request.app[HUB], request.app[METRICS], request.app[LIMITS]
    st = hub.settings
    if not origin_allowed(request, st.origins):
        raise http_error(403, ErrorCode.NOT_ALLOWED, "this origin may not connect")
    if not limits.upgrades_by_ip.take(request.remote or "?"):
        raise http_error(429, ErrorCode.RATE_LIMITED, "too many connections from your address")
    token = bearer_token(request)
    session = await hub.find_session(token) if token else None
    if session is None:
        raise http_error(401, ErrorCode.UNAUTHORIZED, "a valid session token is required")
    # a browser that offered its token as a subprotocol must be answered with one it offered
    ws = web.WebSocketResponse(heartbeat=st.heartbeat, max_msg_size=st.max_frame_bytes,
                               protocols=(WS_PROTOCOL,))
    await ws.prepare(request)
    # a count, not len(hub.picture.connections()): that walks every session on every connect
    if hub.open_sockets >= st.max_connections:
        metrics.closed.labels("capacity").inc()
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"server full, try again later")
        return ws
    conn = Connection(ws, session.id, st.send_queue, request.remote, limits.for_connection(),
                      request.transport)
    hub.open_sockets += 1
    try:
        await hub.connect(session, conn)
        async for frame in ws:
            if frame.type is WSMsgType.TEXT:
                await dispatch(request.app, session, conn, frame.data)
            elif frame.type is WSMsgType.BINARY:
                fail(request.app, conn, ErrorCode.BAD_FRAME, "binary frames are not accepted", None)
            elif frame.type is WSMsgType.ERROR:
                log.info("socket error: %s", ws.exception(), extra={"session_id": session.id})
        if ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            metrics.closed.labels("frame_too_large").inc()
    finally:
        if conn.overflowed:
            metrics.closed.labels("slow_consumer").inc()
        hub.open_sockets -= 1
        await hub.disconnect(session, conn)
        await conn.finish()
    return ws
