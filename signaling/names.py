"""Display names and lobby names: validation, comparison keys, and password hashing."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import unicodedata

from shared.protocol import MAX_LOBBY_NAME_LEN, MAX_NAME_LEN, ErrorCode, ProtocolError

_ALLOWED_PUNCTUATION = set(" _-.'()!?&+@#")
# scrypt at n=2**14, r=8 costs ~16 MiB and tens of milliseconds: slow for a guesser, fine for us
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


def clean_name(raw: str, max_len: int = MAX_NAME_LEN, what: str = "name") -> tuple[str, str]:
    """Returns ``(display, key)``; the key compares case- and whitespace-insensitively."""
    display = " ".join(unicodedata.normalize("NFKC", raw).split())
    if not display:
        raise ProtocolError(ErrorCode.NAME_INVALID, f"{what} must not be empty")
    if len(display) > max_len:
        raise ProtocolError(ErrorCode.NAME_INVALID, f"{what} is longer than {max_len} characters")
    for ch in display:
        if not (ch.isalnum() or ch in _ALLOWED_PUNCTUATION):
            raise ProtocolError(ErrorCode.NAME_INVALID,
                                f"{what} may hold letters, digits, spaces and _-.'()!?&+@# only")
    return display, display.casefold().replace(" ", "")


def clean_lobby_name(raw: str) -> tuple[str, str]:
    return clean_name(raw, MAX_LOBBY_NAME_LEN, "lobby name")


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)


async def hash_password(password: str) -> str:
    """``salt$hash`` in hex, computed off the event loop (scrypt is deliberately slow)."""
    salt = secrets.token_bytes(16)
    digest = await asyncio.to_thread(_hash, password, salt)
    return f"{salt.hex()}${digest.hex()}"


async def verify_password(password: str, stored: str) -> bool:
    salt_hex, _, digest_hex = stored.partition("$")
    digest = await asyncio.to_thread(_hash, password, bytes.fromhex(salt_hex))
    return hmac.compare_digest(digest, bytes.fromhex(digest_hex))


def new_token() -> str:
    """A session token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """Only this hash is stored, so a copy of the database does not hand out sessions."""
    return hashlib.sha256(token.encode()).hexdigest()
