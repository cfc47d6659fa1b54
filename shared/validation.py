"""The validation engine: typed dataclasses that check themselves, and the JSON they come from.

A ``Payload`` subclass is a frozen dataclass whose annotations say what is valid; each field's
check is compiled once per class (the server validates every frame on its hot path), and
``validate()`` adds the rules types can't say (lengths, ranges). ``loads`` parses untrusted
JSON text. Every refusal is a ``ProtocolError``. The messages themselves are the catalogue in
``shared.protocol``; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Self

import orjson

from .errors import ErrorCode, ProtocolError

MAX_SAFE_INT = 2**53 - 1  # the largest integer every JSON peer (and SQLite) holds exactly
MAX_JSON_DEPTH = 8  # nesting inside a free-form object field (a bot's config, its metrics)


@dataclass(frozen=True)
class Length:
    """A string field's limits, given with its type: ``Annotated[str, Length(1, 64)]``. Checked
    with the type, before ``validate()``; ``min`` 1 refuses an empty string."""

    min: int
    max: int


def invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_PAYLOAD, message)


def check_len(name: str, value: str | None, max_len: int, min_len: int = 0) -> None:
    """Checks an optional string's length: ``min_len`` 1 refuses an empty one."""
    if value is None:
        return
    if not min_len <= len(value) <= max_len:
        if len(value) > max_len:
            raise invalid(f"{name} is longer than {max_len} characters")
        raise invalid(f"{name} must not be empty")
Checker = Callable[[str, Any], Any]


def is_text(value: str) -> bool:
    """Whether ``value`` is valid Unicode text we can store and send: UTF-8-encodable (no lone
    surrogate, which a JSON escape such as ``\\ud800`` can produce) and without NUL."""
    if value.isascii():
        return "\x00" not in value
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _check_text(name: str, value: str) -> str:
    if not is_text(value):
        raise invalid(f"{name} must be valid Unicode text without NUL")
    return value


def check_json(name: str, value: Any, depth: int = 0) -> Any:
    """Checks a free-form JSON value (a bot's config or metrics) for what every reader can
    take: objects with string keys, text without NUL, integers within ±(2**53-1), finite
    numbers, at most ``MAX_JSON_DEPTH`` levels of nesting."""
    if value is None or type(value) is bool:
        return value
    if type(value) is str:
        return _check_text(name, value)
    if type(value) is int:
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise invalid(f"{name} is out of range")
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise invalid(f"{name} must be a finite number")
        return value
    if depth >= MAX_JSON_DEPTH:
        raise invalid(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels")
    if type(value) is list:
        for item in value:
            check_json(f"{name}[]", item, depth + 1)
        return value
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise invalid(f"{name} keys must be strings")
            _check_text(f"{name} key", key)
            check_json(f"{name}.{key[:32]}", item, depth + 1)
        return value
    raise invalid(f"{name} holds a value that is not JSON")


def _checker(hint: Any) -> Checker:
    """Compiles a (simple) annotation into a function that checks and converts a value.

    Compiled once per class: validation runs for every frame on the server's hot path.
    """
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *extras = typing.get_args(hint)
        check_base = _checker(base)
        length = next((e for e in extras if isinstance(e, Length)), None)
        if length is None:
            return check_base

        def check_length(name: str, value: Any) -> Any:
            value = check_base(name, value)
            check_len(name, value, length.max, length.min)
            return value
        return check_length
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        check_inner = _checker(inner)
        return lambda name, value: None if value is None else check_inner(name, value)
    if origin is list:
        (item,) = typing.get_args(hint)
        check_item = _checker(item)

        def check_list(name: str, value: Any) -> Any:
            if not isinstance(value, list):
                raise invalid(f"{name} must be a list")
            return [check_item(f"{name}[]", v) for v in value]
        return check_list
    if origin is dict or hint is dict:
        def check_dict(name: str, value: Any) -> Any:
            if not isinstance(value, dict):
                raise invalid(f"{name} must be an object")
            return check_json(name, value)
        return check_dict
    if isinstance(hint, type) and issubclass(hint, Payload):
        payload: type[Payload] = hint

        def check_object(name: str, value: Any) -> Any:
            if isinstance(value, payload):
                return value
            if not isinstance(value, dict):
                raise invalid(f"{name} must be an object")
            return payload.from_dict(value)
        return check_object
    if hint is str:
        def check_str(name: str, value: Any) -> Any:
            if type(value) is not str:
                raise invalid(f"{name} must be a string")
            return _check_text(name, value)
        return check_str
    if hint is bool:
        def check_bool(name: str, value: Any) -> Any:
            if type(value) is not bool:
                raise invalid(f"{name} must be a boolean")
            return value
        return check_bool
    if hint is int:
        def check_int(name: str, value: Any) -> Any:
            if type(value) is not int:
                raise invalid(f"{name} must be an integer")
            if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:  # what JSON peers and SQLite hold
                raise invalid(f"{name} is out of range")
            return value
        return check_int
    if hint is float:
        def check_float(name: str, value: Any) -> Any:
            if type(value) is not float and type(value) is not int:
                raise invalid(f"{name} must be a number")
            try:
                number = float(value)
            except OverflowError:
                raise invalid(f"{name} is out of range") from None
            if not math.isfinite(number):
                raise invalid(f"{name} must be a finite number")
            return number
        return check_float
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        def check_enum(name: str, value: Any) -> Any:
            try:
                return hint(value)
            except (ValueError, TypeError):
                raise invalid(f"{name} must be one of {[m.value for m in hint]}") from None
        return check_enum
    raise TypeError(f"unsupported annotation {hint!r}")  # a bug in this module, not bad input


_MISSING = object()


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


def _text_field(hint: Any) -> tuple[bool, Length | None] | None:
    """For a string field (``str``, ``Annotated[str, Length(…)]``, either ``| None``): whether
    it is optional, and its limits. None for any other field."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if len(args) != 2 or type(None) not in args:
            return None
        optional, hint = True, next(a for a in args if a is not type(None))
    if hint is str:
        return optional, None
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        lengths = [e for e in extras if isinstance(e, Length)]
        if base is str and len(lengths) == len(extras) == 1:
            return optional, lengths[0]
    return None


def _compile_decoder(cls: type[Payload]) -> Callable[[Any], Any]:
    """``from_dict`` written out for one class, the way ``dataclasses`` writes ``__init__``.

    It runs for every frame a server reads: each value is checked once (not again in
    ``__post_init__``), plain strings without a call, and the instance is filled directly.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    env: dict[str, Any] = {"invalid": invalid, "_new": object.__new__, "cls": cls,
                           "_MISSING": _MISSING, "_is_text": is_text}
    lines = ["def from_dict(data):",
             "    if not isinstance(data, dict):",
             f"        raise invalid({cls.__name__ + ' data must be an object'!r})",
             "    obj = _new(cls)",
             "    d = obj.__dict__  # frozen forbids setattr, not the instance dict"]
    for i, (name, check, required, default) in enumerate(cls._spec()):
        env[f"check{i}"], env[f"default{i}"] = check, default
        hint = hints[name]
        lines += [f"    v = data.get({name!r}, _MISSING)",
                  "    if v is _MISSING:",
                  f"        raise invalid({f'missing field {name!r}'!r})" if required else
                  f"        v = default{i}()"]
        text = _text_field(hint)
        if text is not None:
            optional, length = text
            none_ok = "v is not None and " if optional else ""
            # lone surrogates only come through the lenient parser, which checks the whole
            # frame; NUL is the one thing the fast parser lets through
            lines += [f"    elif {none_ok}type(v) is not str:",
                      f"        raise invalid({name + ' must be a string'!r})",
                      f"    elif {none_ok}'\\x00' in v:",
                      f"        raise invalid({name + ' must be valid Unicode text without NUL'!r})"]
            if length is not None:  # check_len's rule and words, inline
                lines += [f"    elif {none_ok}len(v) > {length.max}:",
                          f"        raise invalid({f'{name} is longer than {length.max} characters'!r})"]
                if length.min > 0:
                    lines += [f"    elif {none_ok}len(v) < {length.min}:",
                              f"        raise invalid({name + ' must not be empty'!r})"]
        else:
            lines += ["    else:", f"        v = check{i}({name!r}, v)"]
        lines.append(f"    d[{name!r}] = v")
    lines += ["    obj.validate()", "    return obj"]
    exec("\n".join(lines), env)  # noqa: S102 - our own source, built from field names
    from_dict: Callable[[Any], Any] = env["from_dict"]
    return from_dict


class Payload:
    """Base of every value object on the wire: typed fields, checked on construction."""

    # per class: (field name, checker, required, default maker) for each field, compiled once
    _specs: ClassVar[dict[type, tuple[tuple[str, Checker, bool, Callable[[], Any]], ...]]] = {}
    _decoders: ClassVar[dict[type, Callable[[Any], Any]]] = {}

    @classmethod
    def _spec(cls) -> tuple[tuple[str, Checker, bool, Callable[[], Any]], ...]:
        spec = Payload._specs.get(cls)
        if spec is None:
            hints = typing.get_type_hints(cls, include_extras=True)
            spec = Payload._specs[cls] = tuple(
                (f.name, _checker(hints[f.name]),
                 f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                 f.default_factory if f.default_factory is not dataclasses.MISSING
                 else _constant(f.default))
                # every subclass is a dataclass; this base is not, so its type can't say it
                for f in dataclasses.fields(typing.cast(Any, cls)))
        return spec

    def __post_init__(self) -> None:
        for name, check, _, _ in self._spec():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Checks beyond the field types (lengths, ranges); raises ``ProtocolError``."""

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """The same checks as the constructor. Keys that are not fields are ignored."""
        decoder = Payload._decoders.get(cls)
        if decoder is None:
            decoder = Payload._decoders[cls] = _compile_decoder(cls)
        payload: Self = decoder(data)
        return payload

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, _, _, _ in self._spec():
            value = getattr(self, name)
            if isinstance(value, Payload):
                value = value.to_dict()
            elif isinstance(value, list):
                value = [v.to_dict() if isinstance(v, Payload) else v for v in value]
            out[name] = value
        return out


_INVALID = object()


def lenient_loads(text: str) -> Any:
    """The standard library's reading of ``text``, which takes a few things orjson refuses;
    where it fails too, an object that is no JSON value."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _INVALID


def _holds_bad_text(value: Any) -> bool:
    """Whether a parsed JSON value holds a string (or key) that is not valid Unicode."""
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:
            if not item.isascii() and not is_text(item.replace("\x00", "")):
                return True
        elif type(item) is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False


def loads(text: str) -> Any:
    """Parses JSON from a client (a frame or an HTTP body).

    orjson reads nearly every frame. What it refuses, the standard library reads, so that a
    number out of range (``1e999``, ``NaN``) is named by the field check; a string holding an
    escaped lone surrogate (``"\\ud800"``, which no UTF-8 text can hold) is refused here, and
    so is nesting deeper than orjson's 1024 levels: both ``bad_json``.
    """
    try:
        return orjson.loads(text)  # fast; refuses a few things the stdlib parser reads
    except (ValueError, RecursionError):
        value = lenient_loads(text)
    if value is _INVALID:
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is not valid JSON")
    if _holds_bad_text(value):
        raise ProtocolError(ErrorCode.BAD_JSON,
                            "frame holds a string that is not valid Unicode (a lone surrogate)")
    return value
