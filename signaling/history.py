"""Stored lobby messages as they go on the wire, and what to do with one that can't.

A chat record becomes a ``Chat`` or, for a final transcript, a ``Transcript`` whose fields
live in the record's ``meta``. Building the message validates it, so the same function decides
whether a record may be stored (``check_storable``, before anything is written) and whether a
stored one can be read (``readable``): a record that can't be sent — a string that is not
valid Unicode, a field of the wrong type, written by an older version or straight into the
store — is skipped and logged on every read path, never sent, and the integrity check
(``repaired``) rewrites it with the bad characters replaced, or deletes it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable
from typing import Any

from shared import protocol as p
from shared.protocol import ErrorCode, ProtocolError

from .records import ChatRecord
from .store import Store

log = logging.getLogger(__name__)

Message = p.Chat | p.Transcript

TRANSCRIPT_FIELDS = ("segment_id", "speaker_id", "speaker_name", "start", "end", "model",
                     "language", "task", "replaces")


def transcript_meta(msg: p.Transcript) -> dict[str, Any]:
    """What a final transcript keeps in its chat record's ``meta`` (``stored_message`` reads
    it back). An empty ``replaces`` is left out: Redis's Lua would store ``[]`` as ``{}``."""
    return {name: getattr(msg, name) for name in TRANSCRIPT_FIELDS
            if name != "replaces" or msg.replaces}


def stored_message(rec: ChatRecord) -> Message:
    """The record as it goes on the wire; raises ``ProtocolError`` if it can't."""
    if rec.kind == "transcript":
        meta = {k: v for k, v in (rec.meta or {}).items() if k in TRANSCRIPT_FIELDS}
        try:
            return p.Transcript(lobby_id=rec.lobby_id, text=rec.text, final=True,
                                message_id=rec.id, bot_id=rec.session_id, **meta)
        except TypeError as exc:  # a required field missing from meta
            raise ProtocolError(ErrorCode.INVALID_PAYLOAD, str(exc)) from None
    return p.Chat(lobby_id=rec.lobby_id, text=rec.text, message_id=rec.id,
                  session_id=rec.session_id, name=rec.name, ts=rec.ts, kind=rec.kind)


def check_storable(rec: ChatRecord) -> None:
    """Refuses, before it is written, a message that could not be read back."""
    try:
        stored_message(rec)
    except ProtocolError as exc:
        raise ProtocolError(ErrorCode.INVALID_PAYLOAD,
                            f"the message can't be stored: {exc.message}") from None


def readable(records: Iterable[ChatRecord]) -> list[tuple[ChatRecord, Message]]:
    """The records that can be sent, each with its message; the others are logged."""
    out = []
    for rec in records:
        try:
            out.append((rec, stored_message(rec)))
        except ProtocolError as exc:
            log.warning("skipping unreadable stored message %d (%s); the integrity check "
                        "repairs it", rec.id, exc.message, extra={"lobby_id": rec.lobby_id})
    return out


def current(messages: Iterable[Message]) -> list[Message]:
    """The messages without the finals a later one replaced (``Transcript.replaces``: only a
    final of the same speaker from the same bot replaces one; docs/protocol.md)."""
    messages = list(messages)
    replaced = {(m.bot_id, m.speaker_id, old) for m in messages if isinstance(m, p.Transcript)
                for old in m.replaces}
    return [m for m in messages if not (isinstance(m, p.Transcript) and
                                        (m.bot_id, m.speaker_id, m.segment_id) in replaced)]


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value).replace("\x00", "")
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def repaired(rec: ChatRecord) -> ChatRecord | None:
    """A readable version of an unreadable record, or None if none can be made.

    Characters that are not valid Unicode become U+FFFD and NUL is dropped; a transcript's
    fields that still fail are dropped (an optional one) or the record is given up."""
    fixed = dataclasses.replace(rec, name=_clean(rec.name), text=_clean(rec.text) or "\ufffd",
                                meta=_clean(rec.meta) if isinstance(rec.meta, dict) else None)
    if fixed.kind == "transcript" and fixed.meta is not None:
        meta = {k: v for k, v in fixed.meta.items() if k in TRANSCRIPT_FIELDS}
        kept: dict[str, Any] = {k: meta[k] for k in ("segment_id", "speaker_id") if k in meta}
        for key, value in meta.items():  # keep each optional field that still reads
            if key not in kept and _reads(dataclasses.replace(fixed, meta=kept | {key: value})):
                kept[key] = value
        fixed = dataclasses.replace(fixed, meta=kept)
    return fixed if _reads(fixed) else None


def _reads(rec: ChatRecord) -> bool:
    try:
        stored_message(rec)
    except ProtocolError:
        return False
    return True


async def repair_chat(store: Store, lobby_ids: list[str]) -> list[str]:
    """Reads every stored message of ``lobby_ids`` and repairs or deletes the unreadable ones;
    returns what it did."""
    repairs = []
    for lobby_id in lobby_ids:
        after = 0
        while True:
            page = await store.chat_history(lobby_id, after=after, limit=500)
            good = {rec.id for rec, _ in readable(page)}
            for rec in page:
                if rec.id in good:
                    continue
                fixed = repaired(rec)
                if fixed is None:
                    await store.delete_chat(rec)
                    repairs.append(f"deleted unreadable message {rec.id} in lobby {lobby_id}")
                else:
                    await store.replace_chat(fixed)
                    repairs.append(f"repaired unreadable message {rec.id} in lobby {lobby_id}")
            if len(page) < 500:
                break
            after = page[-1].id
    for repair in repairs:
        log.warning("integrity: %s", repair)
    return repairs
