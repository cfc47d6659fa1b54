"""Opening a connection: a new session over HTTP when the client has no token, the WebSocket
handshake, then the server's ``welcome``; each step bounded by ``connect_timeout``.

Refusals the client must not retry raise ``AuthError``; a server that answers outside the
protocol raises ``HandshakeError``; the rest (network, timeouts) is aiohttp's and the
standard library's, which the client's loop retries.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from . import protocol as p
from .config import ClientConfig
from .errors import AuthError, HandshakeError, ProtocolError, ServerError

log = logging.getLogger(__name__)


async def create_session(http: aiohttp.ClientSession, cfg: ClientConfig) -> str:
    """``POST api/sessions``: returns the new session's token."""
    headers = {"X-Provider-Key": cfg.provider_key} if cfg.provider_key else {}
    async with http.post(cfg.url + "api/sessions", json={"bot": cfg.bot}, headers=headers,
                         timeout=aiohttp.ClientTimeout(total=cfg.connect_timeout),
                         server_hostname=cfg.server_hostname) as resp:
        try:
            body = await resp.json(content_type=None)
        except ValueError:  # a proxy's error page, say
            raise HandshakeError(f"session request answered {resp.status}, not JSON") from None
        if resp.status != 201:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            if resp.status in (401, 403):
                raise AuthError(f"session refused: {error.get('message', resp.status)}")
            raise ServerError(error.get("code", str(resp.status)), error.get("message", ""))
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise HandshakeError("session request answered without a token")
    return token


async def open_socket(http: aiohttp.ClientSession,
                      cfg: ClientConfig) -> aiohttp.ClientWebSocketResponse:
    """The WebSocket handshake with ``cfg.token``. When the server no longer knows the token
    (401), it is forgotten so that the next try creates a session, or, without
    ``create_session``, ``AuthError`` is raised."""
    try:
        # ws_connect's own timeout covers the open socket, not the handshake: one sent
        # into a dead link would wait for the session's default (5 minutes)
        async with asyncio.timeout(cfg.connect_timeout):
            # the token in a header: a URL ends up in logs and error messages
            return await http.ws_connect(
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


async def receive_welcome(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> p.Welcome:
    """The first frame, which must be ``welcome``."""
    first = await ws.receive(timeout=timeout)
    if first.type is not aiohttp.WSMsgType.TEXT:
        raise HandshakeError(f"expected welcome, got {first.type.name}")
    try:
        welcome, _ = p.decode(first.data)
    except ProtocolError as exc:
        raise HandshakeError(f"expected welcome, got a bad frame ({exc})") from None
    if not isinstance(welcome, p.Welcome):
        raise HandshakeError(f"expected welcome, got {welcome.type.value}")
    return welcome
