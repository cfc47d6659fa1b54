"""The ``/ws`` endpoint: authenticate, then route each frame to its handler.

Frames from one connection are handled one at a time, in order. Any bad frame gets an
``error`` reply (with the frame's ``id`` as ``ref``) and the connection stays up.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable

from aiohttp import WSMsgType, web

from shared import protocol as p
from shared.protocol import ErrorCode, MessageType, ProtocolError

from .api import bearer_token, http_error
from .connection import Connection
from .dispatch import DISPATCHER
from .hub import HUB, Hub, LiveSession
from .store import StoreError

log = logging.getLogger(__name__)

Handler = Callable[[web.Application, LiveSession, p.Message, str | None], Awaitable[None]]


def reply(s: LiveSession, msg: p.Message, ref: str | None) -> None:
    if s.conn is not None:
        s.conn.send(p.encode(msg, ref))


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
    reply(s, p.Ack(), ref)


async def on_chat(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, p.Chat)
    lobby = app[HUB].member_lobby(s, msg.lobby_id)
    # the request id doubles as an idempotency key: a resend after a reconnect is stored once
    rec = await app[HUB].post(lobby, s, msg.text, client_ref=ref)
    reply(s, p.Ack(result={"message_id": rec.id}), ref)


async def on_relay(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, (p.Sdp, p.Ice))
    app[HUB].relay(s, msg)
    if ref is not None:
        reply(s, p.Ack(), ref)


def _provider_only(s: LiveSession) -> None:
    if not s.record.bot:
        raise ProtocolError(ErrorCode.NOT_ALLOWED, "only bot providers may send this")


async def on_provider_hello(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, p.ProviderHello)
    _provider_only(s)
    await app[DISPATCHER].hello(s.id, msg)
    reply(s, p.Ack(), ref)


async def on_bot_status(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    assert isinstance(msg, p.BotStatus)
    _provider_only(s)
    app[DISPATCHER].bot_status(s.id, msg)
    if ref is not None:
        reply(s, p.Ack(), ref)


async def on_transcript(app: web.Application, s: LiveSession, msg: p.Message,
                        ref: str | None) -> None:
    assert isinstance(msg, p.Transcript)
    _provider_only(s)
    hub = app[HUB]
    lobby = hub.member_lobby(s, msg.lobby_id)
    speaker = hub.sessions.get(msg.speaker_id)
    name = speaker.record.name if speaker is not None and speaker.record.name else msg.speaker_name
    if msg.final:
        meta = {"segment_id": msg.segment_id, "speaker_id": msg.speaker_id, "speaker_name": name,
                "start": msg.start, "end": msg.end, "model": msg.model, "language": msg.language}
        rec = await hub.post(lobby, s, msg.text, kind="transcript", meta=meta, client_ref=ref)
        reply(s, p.Ack(result={"message_id": rec.id}), ref)
        return
    hub.send_to_lobby(lobby.id, dataclasses.replace(msg, speaker_name=name, bot_id=s.id))
    if ref is not None:
        reply(s, p.Ack(), ref)


async def on_ping(app: web.Application, s: LiveSession, msg: p.Message, ref: str | None) -> None:
    reply(s, p.Pong(), ref)


HANDLERS: dict[MessageType, Handler] = {
    MessageType.SET_NAME: on_set_name,
    MessageType.JOIN: on_join,
    MessageType.PART: on_part,
    MessageType.CHAT: on_chat,
    MessageType.SDP: on_relay,
    MessageType.ICE: on_relay,
    MessageType.PING: on_ping,
    MessageType.PROVIDER_HELLO: on_provider_hello,
    MessageType.BOT_STATUS: on_bot_status,
    MessageType.TRANSCRIPT: on_transcript,
}


async def dispatch(app: web.Application, s: LiveSession, conn: Connection, text: str) -> None:
    hub = app[HUB]
    conn.received += 1
    if len(text) > hub.settings.max_message_bytes or \
            len(text.encode()) > hub.settings.max_message_bytes:
        send_error(conn, ErrorCode.MESSAGE_TOO_LARGE,
                   f"frames are limited to {hub.settings.max_message_bytes} bytes", None)
        return
    ref = None
    try:
        msg, ref = p.decode(text, HANDLERS)
        await HANDLERS[msg.type](app, s, msg, ref)
    except ProtocolError as exc:
        send_error(conn, exc.code, exc.message, ref if ref is not None else p.frame_id(text))
    except StoreError as exc:
        log.error("session %s: storage failed: %s", s.id, exc)
        send_error(conn, ErrorCode.UNAVAILABLE, "storage is unavailable; nothing was saved", ref)
    except Exception:
        log.exception("session %s: handler failed", s.id)
        send_error(conn, ErrorCode.INTERNAL, "internal error", ref)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    hub = request.app[HUB]
    token = bearer_token(request)
    session = hub.authenticate(token) if token else None
    if session is None:
        raise http_error(401, ErrorCode.UNAUTHORIZED, "a valid session token is required")
    st = hub.settings
    ws = web.WebSocketResponse(heartbeat=st.heartbeat, max_msg_size=st.max_frame_bytes)
    await ws.prepare(request)
    conn = Connection(ws, session.id, st.send_queue, request.remote)
    try:
        await hub.connect(session, conn)
        async for frame in ws:
            if frame.type is WSMsgType.TEXT:
                await dispatch(request.app, session, conn, frame.data)
            elif frame.type is WSMsgType.BINARY:
                send_error(conn, ErrorCode.BAD_FRAME, "binary frames are not accepted", None)
            elif frame.type is WSMsgType.ERROR:
                log.info("session %s: socket error: %s", session.id, ws.exception())
    finally:
        await hub.disconnect(session, conn)
        await conn.finish()
    return ws
