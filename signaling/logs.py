"""Log set-up: plain text for people, or one JSON object a line for log collectors.

Log calls pass ids as ``extra={"session_id": ..., "lobby_id": ...}``; both formats show them.
"""

from __future__ import annotations

import json
import logging
import time

CONTEXT = ("session_id", "lobby_id", "bot_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname,
               "logger": record.name, "msg": record.getMessage()}
        out.update({k: getattr(record, k) for k in CONTEXT if hasattr(record, k)})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        ids = [f"{k}={getattr(record, k)}" for k in CONTEXT if hasattr(record, k)]
        record.context = f" [{' '.join(ids)}]" if ids else ""
        return super().format(record)


def setup(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.Formatter.converter = time.gmtime if fmt == "json" else time.localtime
