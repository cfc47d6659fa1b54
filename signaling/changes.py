"""Changes to the server's state as typed records: what a write did, for every node to apply.

A change is made once. The hub writes it to the store, then applies it to its own picture
(picture.py); a shared store (redis_store.py) publishes the same record in the same transaction,
and every other node decodes it and applies it to its copy. The dispatcher's bots and providers
travel the same way.

On the wire a change is one JSON object: ``op`` names its type, ``o`` the node that made it, and
the other keys are its fields, a record's fields nested under ``rec``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from .records import BotRecord, LobbyRecord, NameClaim, SessionRecord


class ChangeError(ValueError):
    """A published change that can't be read (another version, or corrupt)."""


@dataclass(frozen=True)
class SessionSaved:
    op: ClassVar[str] = "session"
    rec: SessionRecord


@dataclass(frozen=True)
class SessionsDeleted:
    """Sessions gone, with their memberships; claims they held are kept, unheld."""

    op: ClassVar[str] = "sessions-"
    ids: tuple[str, ...]


@dataclass(frozen=True)
class ClaimSaved:
    op: ClassVar[str] = "claim"
    rec: NameClaim


@dataclass(frozen=True)
class ClaimDeleted:
    op: ClassVar[str] = "claim-"
    key: str


@dataclass(frozen=True)
class LobbySaved:
    op: ClassVar[str] = "lobby"
    rec: LobbyRecord


@dataclass(frozen=True)
class LobbyDeleted:
    """A lobby gone, with its memberships, chat and bots."""

    op: ClassVar[str] = "lobby-"
    id: str


@dataclass(frozen=True)
class MemberAdded:
    op: ClassVar[str] = "member+"
    lobby: str
    session: str


@dataclass(frozen=True)
class MemberRemoved:
    op: ClassVar[str] = "member-"
    lobby: str
    session: str


@dataclass(frozen=True)
class PresenceChanged:
    """The node holding a session's socket (None: disconnected ``at`` then)."""

    op: ClassVar[str] = "presence"
    session: str
    node: str | None
    at: float


@dataclass(frozen=True)
class BotSaved:
    op: ClassVar[str] = "bot"
    rec: BotRecord


@dataclass(frozen=True)
class BotDeleted:
    op: ClassVar[str] = "bot-"
    id: str


@dataclass(frozen=True)
class BotStateChanged:
    """Which provider runs a bot and how it is doing (live state, see dispatch.py)."""

    op: ClassVar[str] = "botstate"
    id: str
    state: dict[str, Any]


@dataclass(frozen=True)
class ProviderSaved:
    """A provider's hello: its name, capacity and kinds."""

    op: ClassVar[str] = "provider"
    session: str
    info: dict[str, Any]


@dataclass(frozen=True)
class ProviderDeleted:
    op: ClassVar[str] = "provider-"
    session: str


PictureChange = (SessionSaved | SessionsDeleted | ClaimSaved | ClaimDeleted | LobbySaved
                 | LobbyDeleted | MemberAdded | MemberRemoved | PresenceChanged)
DispatchChange = BotSaved | BotDeleted | BotStateChanged | ProviderSaved | ProviderDeleted
Change = PictureChange | DispatchChange

_TYPES: dict[str, type[Any]] = {cls.op: cls for cls in (
    SessionSaved, SessionsDeleted, ClaimSaved, ClaimDeleted, LobbySaved, LobbyDeleted,
    MemberAdded, MemberRemoved, PresenceChanged, BotSaved, BotDeleted, BotStateChanged,
    ProviderSaved, ProviderDeleted)}
_RECORDS: dict[str, type[Any]] = {"session": SessionRecord, "claim": NameClaim,
                                  "lobby": LobbyRecord, "bot": BotRecord}


def encode(change: Change, origin: str) -> str:
    data = {f.name: getattr(change, f.name) for f in dataclasses.fields(change)}
    if "rec" in data:
        data["rec"] = dataclasses.asdict(data["rec"])
    return json.dumps({"op": change.op, "o": origin, **data}, separators=(",", ":"))


def decode(data: dict[str, Any]) -> Change:
    """The change in a published object (already parsed: the cluster reads ``op`` first)."""
    cls = _TYPES.get(data.get("op", ""))
    if cls is None:
        raise ChangeError(f"unknown change {data.get('op')!r}")
    try:
        values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        if "rec" in values:
            values["rec"] = _RECORDS[cls.op](**values["rec"])
        if "ids" in values:
            values["ids"] = tuple(values["ids"])
        change: Change = cls(**values)
    except (KeyError, TypeError) as exc:
        raise ChangeError(f"malformed change {cls.op!r}: {exc}") from None
    return change
