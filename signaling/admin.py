"""The admin API under ``{base}api/admin/``: bearer ``VOICEBOT_ADMIN_TOKEN``; off when unset.

It never returns password hashes or session tokens.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

from aiohttp import web

from shared.protocol import ErrorCode

from .api import http_error
from .connection import CLOSE_KICKED
from .dispatch import DISPATCHER
from .hub import HUB


@web.middleware
async def admin_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """Guards every admin route: 404 when the API is off, 401 without the right token."""
    if "/api/admin/" not in request.path:
        return await handler(request)
    expected = request.app[HUB].settings.admin_token
    if not expected:
        raise http_error(404, ErrorCode.NOT_FOUND, "the admin API is disabled")
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise http_error(401, ErrorCode.UNAUTHORIZED, "admin token required")
    return await handler(request)


async def list_sessions(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    out = []
    for s in hub.picture.sessions.values():
        conn = s.conn
        out.append({"session_id": s.id, "name": s.record.name, "bot": s.record.bot,
                    "connected": conn is not None, "lobbies": sorted(s.lobbies),
                    "created_at": s.record.created_at, "last_seen": s.record.last_seen,
                    "connected_at": conn.connected_at if conn else None,
                    "messages_received": conn.received if conn else 0,
                    "messages_sent": conn.sent if conn else 0,
                    "remote": conn.remote if conn else None})
    return web.json_response({"sessions": out})


async def kick_session(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    session = hub.picture.sessions.get(request.match_info["session_id"])
    if session is None:
        raise http_error(404, ErrorCode.NOT_FOUND, "no such session")
    if session.conn is not None:
        await session.conn.close(CLOSE_KICKED, "kicked by an administrator", drain=0.2)
    await hub.remove_session(session)
    return web.json_response({"session_id": session.id, "kicked": True})


async def list_names(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response({"names": [
        {"key": c.key, "name": c.display, "protected": True, "session_id": c.session_id}
        for c in sorted(hub.picture.claims.values(), key=lambda c: c.key)]})


async def clear_name(request: web.Request) -> web.Response:
    """Removes a name's password: the name becomes an ordinary one (a password reset)."""
    hub = request.app[HUB]
    key = request.match_info["key"]
    if key not in hub.picture.claims:
        raise http_error(404, ErrorCode.NOT_FOUND, "no protected name with that key")
    await hub.clear_claim(key)
    return web.json_response({"key": key, "cleared": True})


async def list_lobbies(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response({"lobbies": [
        lb.info().to_dict() | {"members": sorted(lb.members), "created_at": lb.record.created_at,
                               "empty_since": lb.record.empty_since}
        for lb in hub.picture.lobbies.values()]})


async def delete_lobby(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    lobby = hub.picture.lobbies.get(request.match_info["lobby_id"])
    if lobby is None:
        raise http_error(404, ErrorCode.LOBBY_NOT_FOUND, "no such lobby")
    dispatcher = request.app[DISPATCHER]
    for bot in dispatcher.lobby_bots(lobby.id):
        await dispatcher.remove(bot, "the lobby was deleted")
    await hub.close_lobby(lobby)
    return web.json_response({"lobby_id": lobby.id, "deleted": True})


async def list_providers(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    return web.json_response({"providers": [
        {"session_id": prov.session_id, "name": prov.name, "capacity": prov.capacity,
         "kinds": sorted(prov.kinds), "bots": sorted(prov.bots)}
        for prov in dispatcher.providers.values()]})


async def list_bots(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    return web.json_response({"bots": [b.to_dict() for b in dispatcher.bots.values()]})


async def stop_bot(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    bot = dispatcher.bots.get(request.match_info["bot_id"])
    if bot is None:
        raise http_error(404, ErrorCode.BOT_NOT_FOUND, "no such bot")
    await dispatcher.remove(bot, "stopped by an administrator")
    return web.json_response({"bot_id": bot.id, "status": "stopped"})


async def integrity(request: web.Request) -> web.Response:
    started = time.monotonic()
    repairs = await request.app[HUB].check_integrity(chat=True)
    return web.json_response({"repairs": repairs, "seconds": time.monotonic() - started})


def add_routes(app: web.Application, base: str) -> None:
    admin = base + "api/admin/"
    app.router.add_get(admin + "sessions", list_sessions)
    app.router.add_delete(admin + "sessions/{session_id}", kick_session)
    app.router.add_get(admin + "names", list_names)
    app.router.add_delete(admin + "names/{key}", clear_name)
    app.router.add_get(admin + "lobbies", list_lobbies)
    app.router.add_delete(admin + "lobbies/{lobby_id}", delete_lobby)
    app.router.add_get(admin + "providers", list_providers)
    app.router.add_get(admin + "bots", list_bots)
    app.router.add_delete(admin + "bots/{bot_id}", stop_bot)
    app.router.add_post(admin + "integrity", integrity)
