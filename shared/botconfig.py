"""A bot kind's settings schema (docs/protocol.md, "Bots and providers"), and checking a
config against it: what the server refuses before a bot is created, and what a plugin's own
defaults must pass before a provider offers it (``bots.plugin.check_plugin``). No I/O."""

from __future__ import annotations

from typing import Any

from . import protocol as p
from .errors import ErrorCode, ProtocolError
from .validation import check_json

_JSON_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,),
                                           "number": (int, float), "boolean": (bool,)}
MAX_LIST_ITEMS = 100  # items of an ``array`` setting


def check_config(kind: p.BotKind, config: Any) -> dict[str, Any]:
    """Checks ``config`` against the schema the provider announced for ``kind``."""
    if not isinstance(config, dict):
        raise ProtocolError(ErrorCode.INVALID_CONFIG, "config must be an object")
    try:
        check_json("config", config)
    except ProtocolError as exc:
        raise ProtocolError(ErrorCode.INVALID_CONFIG, exc.message) from None
    missing = sorted(key for key, spec in kind.config.items()
                     if isinstance(spec, dict) and spec.get("required") and config.get(key) is None)
    if missing:
        raise ProtocolError(ErrorCode.INVALID_CONFIG,
                            f"{kind.kind} needs the setting(s) {', '.join(missing)}")
    for key, value in config.items():
        spec = kind.config.get(key)
        if not isinstance(spec, dict):
            known = ", ".join(sorted(kind.config)) or "none"
            raise ProtocolError(ErrorCode.INVALID_CONFIG,
                                f"{kind.kind} has no setting {key!r} (known: {known})")
        if value is None and spec.get("nullable"):
            continue
        type_ = spec.get("type", "string")
        if type_ == "array":
            if not isinstance(value, list):
                raise ProtocolError(ErrorCode.INVALID_CONFIG, f"{key} must be a list")
            if len(value) > MAX_LIST_ITEMS:
                raise ProtocolError(ErrorCode.INVALID_CONFIG,
                                    f"{key} has more than {MAX_LIST_ITEMS} items")
            for i, item in enumerate(value):
                _check_value(f"{key}[{i}]", item, spec.get("items", "string"), spec)
        else:
            _check_value(key, value, type_, spec)
    return config


def _check_value(key: str, value: Any, type_: Any, spec: dict[str, Any]) -> None:
    expected = _JSON_TYPES.get(type_, (str,))
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
        raise ProtocolError(ErrorCode.INVALID_CONFIG, f"{key} must be of type {type_}")
    choices = spec.get("choices")
    if isinstance(choices, list) and value not in choices:
        raise ProtocolError(ErrorCode.INVALID_CONFIG,
                            f"{key} must be one of {', '.join(map(str, choices))}")
    low, high = spec.get("minimum"), spec.get("maximum")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (isinstance(low, (int, float)) and value < low) or
            (isinstance(high, (int, float)) and value > high)):
        raise ProtocolError(ErrorCode.INVALID_CONFIG, f"{key} must be within {low}..{high}")
