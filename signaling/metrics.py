"""Prometheus metrics of one server, served at ``{base}metrics``."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .events import BotReported


class Metrics:
    """Each app has its own registry (tests run many servers in one process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("voicebot_connections", "open WebSockets", registry=r)
        self.sessions = Gauge("voicebot_sessions", "known sessions", registry=r)
        self.lobbies = Gauge("voicebot_lobbies", "lobbies", registry=r)
        self.providers = Gauge("voicebot_bot_providers", "connected bot providers", registry=r)
        self.bots = Gauge("voicebot_bots", "bots by status", ["status"], registry=r)
        self.messages = Counter("voicebot_messages", "frames received by type", ["type"],
                                registry=r)
        self.errors = Counter("voicebot_errors", "errors sent by code", ["code"], registry=r)
        self.closed = Counter("voicebot_closed_connections", "connections the server closed, "
                              "by reason", ["reason"], registry=r)
        self.relay_latency = Histogram(
            "voicebot_relay_latency_seconds", "SDP/ICE relay: frame read to queued for the peer",
            registry=r, buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1))
        self.ttfs = Histogram(
            "voicebot_transcript_ttfs_seconds", "end of speech to final transcript at the server",
            registry=r, buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0))
        self.lag = Gauge("voicebot_transcription_lag_seconds", "how far a transcriber is behind "
                         "live, as it last reported", ["bot_id"], registry=r)
        self._messages_by_type: dict[str, Any] = {}

    def count_message(self, type_: str) -> None:
        """``messages.labels(type_).inc()``, with the child looked up once per type: this runs
        for every frame, and ``labels()`` costs more than the increment."""
        child = self._messages_by_type.get(type_)
        if child is None:
            child = self._messages_by_type[type_] = self.messages.labels(type_)
        child.inc()

    def bot_reported(self, event: BotReported) -> None:
        lag = event.metrics.get("lag")
        if isinstance(lag, (int, float)) and not isinstance(lag, bool):
            self.lag.labels(event.bot_id).set(float(lag))

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)
