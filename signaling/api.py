"""The HTTP API under ``{base}api/``. Every error is JSON: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import hmac
import json
import logging
import time
from typing import Any

from aiohttp import web

from shared import protocol as p
from shared.protocol import ErrorCode, ProtocolError
from shared.validation import MAX_SAFE_INT, is_text, loads

from .dispatch import DISPATCHER
from . import export
from .history import current, readable
from .hub import HUB, Hub, LiveSession, Lobby
from .limits import LIMITS
from .store import StoreError

log = logging.getLogger(__name__)

_STATUS = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_ALLOWED: 403,
    ErrorCode.LOBBY_PASSWORD_REQUIRED: 403,
    ErrorCode.BAD_PASSWORD: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.LOBBY_NOT_FOUND: 404,
    ErrorCode.BOT_NOT_FOUND: 404,
    ErrorCode.UNKNOWN_BOT_KIND: 400,
    ErrorCode.INVALID_CONFIG: 400,
    ErrorCode.NO_PROVIDER: 503,
    ErrorCode.LOBBY_FULL: 409,
    ErrorCode.LOBBY_EXISTS: 409,
    ErrorCode.NAME_IN_USE: 409,
    ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.UNAVAILABLE: 503,
}
_CODE_FOR_STATUS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.NOT_ALLOWED,
                    413: ErrorCode.MESSAGE_TOO_LARGE, 401: ErrorCode.UNAUTHORIZED}


def _exception_classes(cls: type[web.HTTPException]) -> dict[int, type[web.HTTPException]]:
    found = {}
    for sub in cls.__subclasses__():
        found.update(_exception_classes(sub))
        if isinstance(getattr(sub, "status_code", None), int) and sub.status_code >= 400:
            found.setdefault(sub.status_code, sub)
    return found


_EXCEPTIONS = _exception_classes(web.HTTPException)


def http_error(status: int, code: ErrorCode | str, message: str) -> web.HTTPException:
    body = json.dumps({"error": {"code": str(code), "message": message}})
    return _EXCEPTIONS[status](text=body, content_type="application/json")


def _error_response(status: int, code: ErrorCode | str, message: str) -> web.Response:
    return web.json_response({"error": {"code": str(code), "message": message}}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ProtocolError as exc:
        return _error_response(_STATUS.get(exc.code, 400), exc.code, exc.message)
    except StoreError as exc:
        log.error("storage failed: %s", exc)
        return _error_response(503, ErrorCode.UNAVAILABLE, "storage is unavailable")
    except web.HTTPException as exc:
        if exc.content_type == "application/json" or exc.status < 400:
            raise
        code = _CODE_FOR_STATUS.get(exc.status, ErrorCode.INVALID_PAYLOAD)
        return _error_response(exc.status, code, exc.reason)
    except Exception:  # a bug: still the documented JSON, and logged
        log.exception("%s %s failed", request.method, request.rel_url.path)
        return _error_response(500, ErrorCode.INTERNAL, "internal error")


async def read_json(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, read by the frames' parser (the same limits and errors)."""
    if not request.can_read_body:
        return {}
    try:
        body = loads(await request.text())
    except UnicodeDecodeError:
        raise http_error(400, ErrorCode.BAD_JSON, "request body is not UTF-8") from None
    except ProtocolError as exc:
        raise http_error(400, ErrorCode.BAD_JSON,
                         exc.message.replace("frame", "request body")) from None
    if not isinstance(body, dict):
        raise http_error(400, ErrorCode.INVALID_PAYLOAD, "request body must be a JSON object")
    return body


def field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """A field of a request body; null is the same as leaving it out."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise http_error(400, ErrorCode.INVALID_PAYLOAD, f"{name} must be a {kind.__name__}")
    if isinstance(value, str) and not is_text(value):
        raise http_error(400, ErrorCode.INVALID_PAYLOAD,
                         f"{name} must be valid Unicode text without NUL")
    if isinstance(value, int) and not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
        raise http_error(400, ErrorCode.INVALID_PAYLOAD, f"{name} is out of range")
    return value


WS_PROTOCOL = "voicebot.v1"
WS_TOKEN_PROTOCOL = "voicebot.bearer."  # + the token: how a browser's WebSocket sends it


def bearer_token(request: web.Request) -> str | None:
    """The session token from ``Authorization: Bearer``, from a WebSocket subprotocol
    ``voicebot.bearer.<token>`` (browsers can't set headers on a WebSocket), or from
    ``?token=`` (kept for old clients; the access log never writes a query)."""
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
        offered = offered.strip()
        if offered.startswith(WS_TOKEN_PROTOCOL):
            return offered[len(WS_TOKEN_PROTOCOL):] or None
    return request.query.get("token") or None


async def session_from(request: web.Request, hub: Hub) -> LiveSession:
    token = bearer_token(request)
    session = await hub.find_session(token) if token else None
    if session is None:
        raise http_error(401, ErrorCode.UNAUTHORIZED, "a valid session token is required")
    return session


def lobby_json(hub: Hub, lobby: Lobby, *, participants: bool = False) -> dict[str, Any]:
    out = lobby.info().to_dict() | {"participant_count": len(lobby.members)}
    if participants:
        out["participants"] = [pp.to_dict() for pp in hub.picture.participants(lobby)]
    return out


async def create_session(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    if not request.app[LIMITS].sessions_by_ip.take(request.remote or "?"):
        raise http_error(429, ErrorCode.RATE_LIMITED, "too many new sessions from your address")
    body = await read_json(request)
    bot = field(body, "bot", bool, False)
    if bot:
        key = hub.settings.provider_key
        given = request.headers.get("X-Provider-Key", "")
        if not key or not hmac.compare_digest(given.encode(), key.encode()):
            raise http_error(403, ErrorCode.NOT_ALLOWED, "bot sessions need the provider key")
    session, token = await hub.create_session(bot=bot)
    return web.json_response({"session_id": session.id, "token": token}, status=201)


async def get_session(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response(hub.picture.session_info(await session_from(request, hub)).to_dict())


def _missing_kinds(request: web.Request) -> list[str]:
    """The automatic bot kinds no connected provider offers yet."""
    offered = {k["kind"] for k in request.app[DISPATCHER].kinds()}
    return [k for k in request.app[HUB].settings.auto_bot_kinds if k not in offered]


async def health(request: web.Request) -> web.Response:
    """Alive: the server answers. ``ready``: every automatic bot kind has a provider."""
    hub, dispatcher = request.app[HUB], request.app[DISPATCHER]
    return web.json_response({"status": "ok", "sessions": len(hub.picture.sessions),
                              "connections": len(hub.picture.connections()),
                              "lobbies": len(hub.picture.lobbies), "time": time.time(),
                              "providers": len(dispatcher.providers),
                              "bot_kinds": [k["kind"] for k in dispatcher.kinds()],
                              "ready": not _missing_kinds(request)})


async def ready(request: web.Request) -> web.Response:
    """200 once every automatic bot kind has a provider (what a load balancer asks), else 503."""
    missing = _missing_kinds(request)
    if missing:
        raise http_error(503, ErrorCode.UNAVAILABLE,
                         f"waiting for a bot provider of: {', '.join(missing)}")
    return web.json_response({"ready": True})


async def list_lobbies(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    lobbies = sorted(hub.picture.public_lobbies(), key=lambda item: (-item[1], item[0].record.name))
    return web.json_response({"lobbies": [lobby_json(hub, lb) for lb, _ in lobbies]})


def creation_allowed(request: web.Request, session: LiveSession) -> None:
    if not request.app[LIMITS].creates_by_session.take(session.id):
        raise http_error(429, ErrorCode.RATE_LIMITED, "too many creations; wait a little")


async def create_lobby(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    session = await session_from(request, hub)
    body = await read_json(request)
    name = field(body, "name", str)
    if name is None:
        raise http_error(400, ErrorCode.INVALID_PAYLOAD, "name is required")
    private = field(body, "private", bool, False)
    password = field(body, "password", str) or None  # "" is no password, as null
    if password is not None and len(password) > p.MAX_PASSWORD_LEN:
        raise http_error(400, ErrorCode.INVALID_PAYLOAD,
                         f"password is longer than {p.MAX_PASSWORD_LEN} characters")
    max_participants = field(body, "max_participants", int)
    creation_allowed(request, session)  # a well-formed request is what counts
    lobby = await hub.create_lobby(name, private=private, password=password,
                                   max_participants=max_participants)
    return web.json_response(lobby_json(hub, lobby), status=201)


async def readable_lobby(request: web.Request, hub: Hub) -> Lobby:
    """A lobby by id; one with a password is readable by its members only."""
    lobby = hub.picture.lobbies.get(request.match_info["lobby_id"])
    if lobby is None:
        raise http_error(404, ErrorCode.LOBBY_NOT_FOUND, "no such lobby")
    if lobby.record.password_hash is not None and \
            (await session_from(request, hub)).id not in lobby.members:
        raise http_error(403, ErrorCode.NOT_ALLOWED, "only members may read this lobby")
    return lobby


async def get_lobby(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return web.json_response(lobby_json(hub, await readable_lobby(request, hub), participants=True))


def int_query(request: web.Request, name: str, default: int | None = None,
              lo: int = 0, hi: int = 2**62) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise http_error(400, ErrorCode.INVALID_PAYLOAD, f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise http_error(400, ErrorCode.INVALID_PAYLOAD, f"{name} must be within {lo}..{hi}")
    return value


async def lobby_messages(request: web.Request) -> web.Response:
    """Pages backwards with ``before`` (newest first page) or forwards with ``after``."""
    hub = request.app[HUB]
    lobby = await readable_lobby(request, hub)
    limit = int_query(request, "limit", 50, 1, 500)
    assert limit is not None
    before, after = int_query(request, "before"), int_query(request, "after")
    records = await hub.chat_history(lobby.id, before=before, after=after, limit=limit)
    # an unreadable record is left out; the cursor still moves past it
    messages = [msg.to_dict() | {"kind": rec.kind} for rec, msg in readable(records)]
    page: dict[str, Any] = {"messages": messages}
    if records and len(records) == limit:
        page["next"] = {"after": records[-1].id} if after is not None else {"before": records[0].id}
    return web.json_response(page)


async def lobby_transcript(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    lobby = await readable_lobby(request, hub)
    fmt = request.query.get("format", "json")
    if fmt not in export.FORMATS:
        raise http_error(400, ErrorCode.INVALID_PAYLOAD,
                         f"format must be one of {', '.join(export.FORMATS)}")
    records, after = [], 0
    while True:  # page through: a long meeting has many finals
        page = await hub.chat_history(lobby.id, after=after, limit=500, kinds=("transcript",))
        records.extend(page)
        if len(page) < 500:
            break
        after = page[-1].id
    finals = [m for m in current(m for _, m in readable(records)) if isinstance(m, p.Transcript)]
    body, content_type = export.render(fmt, lobby.record.name, finals)
    filename = f"transcript-{lobby.id}.{fmt}"
    return web.Response(text=body, content_type=content_type, charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})


async def list_bot_kinds(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    return web.json_response({"kinds": dispatcher.kinds(),
                              "providers": len(dispatcher.providers)})


async def member_lobby(request: web.Request, hub: Hub) -> Lobby:
    """The lobby in the URL, for a caller who is a member of it."""
    lobby = hub.picture.lobbies.get(request.match_info["lobby_id"])
    if lobby is None:
        raise http_error(404, ErrorCode.LOBBY_NOT_FOUND, "no such lobby")
    if (await session_from(request, hub)).id not in lobby.members:
        raise http_error(403, ErrorCode.NOT_ALLOWED, "only members of this lobby may do this")
    return lobby


async def lobby_bots(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    lobby = await readable_lobby(request, hub)
    bots = request.app[DISPATCHER].lobby_bots(lobby.id)
    return web.json_response({"bots": [b.to_dict() for b in bots]})


async def add_bot(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    lobby = await member_lobby(request, hub)
    body = await read_json(request)
    kind = field(body, "kind", str)
    if not kind:
        raise http_error(400, ErrorCode.INVALID_PAYLOAD, "kind is required")
    name = field(body, "name", str)
    config = body.get("config")
    creation_allowed(request, (await session_from(request, hub)))
    bot = await request.app[DISPATCHER].add(lobby.id, kind, config, name, checked=True)
    return web.json_response(bot.to_dict(), status=201)


async def remove_bot(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    lobby = await member_lobby(request, hub)
    dispatcher = request.app[DISPATCHER]
    bot = dispatcher.find(lobby.id, request.match_info["bot_id"])
    await dispatcher.remove(bot)
    return web.json_response({"bot_id": bot.id, "status": "stopped"})


def add_routes(app: web.Application, base: str) -> None:
    api = base + "api/"
    app.router.add_post(api + "sessions", create_session)
    app.router.add_get(api + "session", get_session)
    app.router.add_get(api + "health", health)
    app.router.add_get(api + "ready", ready)
    app.router.add_get(api + "lobbies", list_lobbies)
    app.router.add_post(api + "lobbies", create_lobby)
    app.router.add_get(api + "lobbies/{lobby_id}", get_lobby)
    app.router.add_get(api + "lobbies/{lobby_id}/messages", lobby_messages)
    app.router.add_get(api + "lobbies/{lobby_id}/transcript", lobby_transcript)
    app.router.add_get(api + "bots", list_bot_kinds)
    app.router.add_get(api + "lobbies/{lobby_id}/bots", lobby_bots)
    app.router.add_post(api + "lobbies/{lobby_id}/bots", add_bot)
    app.router.add_delete(api + "lobbies/{lobby_id}/bots/{bot_id}", remove_bot)
