"""Log set-up: plain text for people, or one JSON object a line for log collectors.

Log calls pass ids as ``extra={"session_id": ..., "lobby_id": ...}``; both formats show them.
No credential is ever written: every line passes through ``redact``, which blanks session
tokens wherever they show (a ``token=`` query, a bearer header, a ``"token"`` field, the
WebSocket subprotocol that carries one) and every secret registered with ``add_secret`` (the
provider key, the admin token). The access log writes the path without its query.
"""

from __future__ import annotations

import json
import logging
import re
import time

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

CONTEXT = ("session_id", "lobby_id", "bot_id")
REDACTED = "<redacted>"

_PATTERNS = (
    (re.compile(r"(token=)[^&\s'\"]+", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    (re.compile(r"(bearer[\s.]+)[A-Za-z0-9_\-.~+/=%]+", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    (re.compile(r"""(["']?(?:token|provider_key|admin_token|secret|password)["']?\s*[:=]\s*["'])"""
                r"""[^"']*""", re.IGNORECASE), rf"\g<1>{REDACTED}"),
)
_secrets: set[str] = set()


def add_secret(value: str | None) -> None:
    """Registers a secret this process holds (a key, a token) so no log line shows it."""
    if value and len(value) >= 8:  # a short value would blank ordinary words
        _secrets.add(value)


def redact(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    for secret in _secrets:
        text = text.replace(secret, REDACTED)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname,
               "logger": record.name, "msg": redact(record.getMessage())}
        out.update({k: getattr(record, k) for k in CONTEXT if hasattr(record, k)})
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{k}={getattr(record, k)}" for k in CONTEXT if hasattr(record, k)]
        record.context = f" [{' '.join(ids)}]" if ids else ""
        return redact(super().format(record))


class AccessLogger(AbstractAccessLogger):
    """One line a request, like aiohttp's, but the path without its query string: a browser's
    WebSocket may carry its session token there."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info('%s "%s %s HTTP/%d.%d" %d %s %.3fs', request.remote, request.method,
                         request.rel_url.path, *request.version, response.status,
                         response.body_length, time)


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.Formatter.converter = time.gmtime if fmt == "json" else time.localtime
