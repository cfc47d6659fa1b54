"""ICE servers for everyone in a deployment: STUN and TURN URLs, and short-lived TURN
credentials in the "TURN REST API" scheme that coturn implements (``use-auth-secret``).

A session's credential is ``username = "<expiry>:<session_id>"`` and
``credential = base64(HMAC-SHA1(secret, username))``: coturn recomputes the HMAC with the same
shared secret, so the signaling server never talks to coturn, a credential names the session it
was issued to (changing the name breaks the HMAC), and it stops working at its expiry. Nothing
here does I/O. See docs/protocol.md ("ICE servers") and docs/deploy.md ("TURN").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from shared import protocol as p

if TYPE_CHECKING:
    from .connection import Connection
    from .settings import Settings

SCHEMES = ("stun", "stuns", "turn", "turns")
# RFC 7064 / 7065: scheme:host[:port][?transport=udp|tcp]; IPv6 hosts in brackets
_URL = re.compile(r"^(?P<scheme>[a-z]+):(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+)"
                  r"(?::(?P<port>\d{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?$")


class IceConfigError(ValueError):
    """An ICE setting that can't work; the server refuses to start with it."""


@dataclass(frozen=True)
class IceUrl:
    scheme: str
    host: str
    port: int | None
    transport: str | None
    text: str

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")


def parse_url(text: str) -> IceUrl:
    """Checks one STUN or TURN URL (``stun:host:3478``, ``turn:host?transport=tcp``,
    ``turns:host:443``); raises ``IceConfigError`` saying what is wrong."""
    m = _URL.match(text.strip())
    if m is None:
        raise IceConfigError(f"not a STUN or TURN URL: {text!r} (e.g. stun:turn.example.org:3478, "
                             "turn:turn.example.org:3478?transport=udp, turns:turn.example.org:443)")
    scheme = m["scheme"]
    if scheme not in SCHEMES:
        raise IceConfigError(f"{text!r}: the scheme must be one of {', '.join(SCHEMES)}")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise IceConfigError(f"{text!r}: the port must be within 1..65535")
    if m["transport"] and scheme.startswith("stun"):
        raise IceConfigError(f"{text!r}: ?transport= is for TURN URLs only")
    return IceUrl(scheme, m["host"], port, m["transport"], text.strip())


def parse_urls(raw: str) -> list[IceUrl]:
    return [parse_url(u) for u in raw.split(",") if u.strip()]


def check(stun_urls: str, turn_urls: str, turn_secret: str | None, turn_ttl: float) -> None:
    """What a server's ICE settings must satisfy; raises ``IceConfigError``."""
    stun, turn = parse_urls(stun_urls), parse_urls(turn_urls)
    if any(u.is_turn for u in stun):
        raise IceConfigError("turn: URLs go in turn_urls (they need credentials)")
    if any(not u.is_turn for u in turn):
        raise IceConfigError("stun: URLs go in stun_urls")
    if turn and not turn_secret:
        raise IceConfigError("turn_urls need VOICEBOT_TURN_SECRET, the shared secret of the TURN "
                             "server (coturn: use-auth-secret, static-auth-secret)")
    if turn_secret and not turn:
        raise IceConfigError("VOICEBOT_TURN_SECRET is set but turn_urls is empty")
    if not 60 <= turn_ttl <= 7 * 24 * 3600:
        raise IceConfigError("turn_ttl must be within 60 s..7 days")


def turn_credential(secret: str, session_id: str, expires: int) -> tuple[str, str]:
    """``(username, credential)`` for ``session_id``, valid until ``expires`` (epoch seconds)."""
    username = f"{expires}:{session_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(stun_urls: str, turn_urls: str, turn_secret: str | None, turn_ttl: float,
                session_id: str, now: float) -> tuple[list[dict[str, Any]], float | None]:
    """The ``RTCIceServer`` list a session uses, and when its TURN credential expires (None
    without TURN). With nothing configured the list is empty: host candidates only."""
    servers: list[dict[str, Any]] = []
    stun = [u.text for u in parse_urls(stun_urls)]
    if stun:
        servers.append({"urls": stun})
    turn = [u.text for u in parse_urls(turn_urls)]
    if not turn or not turn_secret:
        return servers, None
    expires = int(now + turn_ttl)
    username, credential = turn_credential(turn_secret, session_id, expires)
    servers.append({"urls": turn, "username": username, "credential": credential})
    return servers, float(expires)



def for_session(st: Settings, session_id: str,
                now: float) -> tuple[list[p.IceServer], float | None]:
    """The ICE servers of a session, with a fresh TURN credential."""
    servers, expires = ice_servers(st.stun_urls, st.turn_urls, st.turn_secret, st.turn_ttl,
                                   session_id, now)
    return [p.IceServer(**server) for server in servers], expires


def renew(conns: Iterable[Connection], st: Settings, now: float) -> int:
    """Sends new ICE servers to every connection whose TURN credential is past half its life,
    so nobody holds an expired one; returns how many were renewed."""
    renewed = 0
    for conn in conns:
        if conn.ice_expires is None or conn.ice_expires - now > st.turn_ttl / 2:
            continue
        fresh, conn.ice_expires = for_session(st, conn.session_id, now)
        conn.send(p.encode(p.IceServers(ice_servers=fresh, expires=conn.ice_expires)))
        renewed += 1
    return renewed
