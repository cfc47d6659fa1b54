"""Abuse limits: token buckets per connection and per client address."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from .settings import Settings


@dataclass
class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``."""

    rate: float
    burst: float
    tokens: float = field(default=-1.0)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("a bucket needs rate > 0 and burst >= 1")
        if self.tokens < 0:
            self.tokens = self.burst

    def take(self, n: float = 1.0, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


class KeyedBuckets:
    """One bucket per key (a client address), the least recently used forgotten first."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def take(self, key: str) -> bool:
        bucket = self._buckets.pop(key, None) or TokenBucket(self.rate, self.burst)
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return bucket.take()


@dataclass
class ConnectionLimits:
    """The buckets of one WebSocket connection."""

    messages: TokenBucket
    chat: TokenBucket
    creates: TokenBucket  # lobby creation by join
    errors: TokenBucket  # protocol errors: running dry closes the socket with 1008


class AppLimits:
    """The limits shared by every request of one server."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions_by_ip = KeyedBuckets(settings.ip_session_rate, settings.ip_session_burst)
        self.upgrades_by_ip = KeyedBuckets(settings.ip_upgrade_rate, settings.ip_upgrade_burst)
        self.creates_by_session = KeyedBuckets(settings.create_rate, settings.create_burst)

    def for_connection(self) -> ConnectionLimits:
        st = self.settings
        return ConnectionLimits(messages=TokenBucket(st.msg_rate, st.msg_burst),
                                chat=TokenBucket(st.chat_rate, st.chat_burst),
                                creates=TokenBucket(st.create_rate, st.create_burst),
                                errors=TokenBucket(st.error_rate, st.error_burst))


LIMITS = web.AppKey("limits", AppLimits)
