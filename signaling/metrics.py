"""Prometheus metrics of one server, served at ``{base}metrics``."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .events import BotReported, CaptionStored


class FrameCounter:
    """A counter by one label for the per-frame path: plain ints, turned into a metric family
    when scraped (``Counter.labels().inc()`` takes a dict lookup and a lock each time)."""

    def __init__(self, name: str, doc: str, label: str, registry: CollectorRegistry) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.counts: defaultdict[str, int] = defaultdict(int)
        registry.register(self)

    def inc(self, value: str) -> None:
        self.counts[value] += 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.doc, labels=[self.label])
        for value, count in sorted(self.counts.items()):
            family.add_metric([value], count)
        yield family


class FrameHistogram:
    """A histogram for the per-frame path, the same way as ``FrameCounter``."""

    def __init__(self, name: str, doc: str, buckets: Sequence[float],
                 registry: CollectorRegistry) -> None:
        self.name, self.doc, self.bounds = name, doc, tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # bucket "le" the bound
        self.sum += value

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts):
            total += count
            cumulative.append((bound, total))
        yield HistogramMetricFamily(self.name, self.doc, buckets=cumulative, sum_value=self.sum)


CANDIDATE_TYPES = ("host", "srflx", "prflx", "relay")


class BotConnections:
    """Each bot's peer connections by the candidate types of the pair in use, and its ICE
    failures, as it last reported them (``bot_status`` figures ``connections_<local>_<remote>``
    and ``ice_failures``, docs/protocol.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.paths: dict[str, dict[tuple[str, str], float]] = {}
        self.failures: dict[str, float] = {}
        registry.register(self)

    def update(self, bot_id: str, figures: dict[str, object]) -> None:
        paths: dict[tuple[str, str], float] = {}
        for key, value in figures.items():
            local, _, remote = key.removeprefix("connections_").partition("_")
            if key.startswith("connections_") and local in CANDIDATE_TYPES \
                    and remote in CANDIDATE_TYPES and isinstance(value, (int, float)):
                paths[local, remote] = float(value)
        self.paths[bot_id] = paths
        failures = figures.get("ice_failures")
        if isinstance(failures, (int, float)) and not isinstance(failures, bool):
            self.failures[bot_id] = float(failures)

    def keep(self, bot_ids: set[str]) -> None:
        """Forgets the bots that are gone."""
        for table in (self.paths, self.failures):
            for bot_id in set(table) - bot_ids:
                del table[bot_id]

    def collect(self) -> Iterator[Metric]:
        paths = GaugeMetricFamily(
            "voicebot_bot_peer_connections", "a bot's connected peers by the candidate types "
            "of the pair in use (local: the bot's; relay on either side: relayed)",
            labels=["bot_id", "local", "remote"])
        for bot_id, table in sorted(self.paths.items()):
            for (local, remote), count in sorted(table.items()):
                paths.add_metric([bot_id, local, remote], count)
        yield paths
        failures = CounterMetricFamily("voicebot_bot_ice_failures", "a bot's peer connections "
                                       "that failed (each is replaced by a new one)",
                                       labels=["bot_id"])
        for bot_id, count in sorted(self.failures.items()):
            failures.add_metric([bot_id], count)
        yield failures


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
        self.messages = FrameCounter("voicebot_messages", "frames received by type", "type", r)
        self.errors = Counter("voicebot_errors", "errors sent by code", ["code"], registry=r)
        self.closed = Counter("voicebot_closed_connections", "connections the server closed, "
                              "by reason", ["reason"], registry=r)
        self.relay_latency = FrameHistogram(
            "voicebot_relay_latency_seconds", "SDP/ICE relay: frame read to queued for the peer",
            (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1), r)
        self.ttfs = Histogram(
            "voicebot_transcript_ttfs_seconds",
            "a final's end (its speech's end, bot's clock) to the final stored (server's clock)",
            registry=r, buckets=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0))
        self.lag = Gauge("voicebot_transcription_lag_seconds", "how far a transcriber is behind "
                         "live, as it last reported", ["bot_id"], registry=r)
        self.compute = Gauge("voicebot_transcription_compute_ratio", "seconds of recognition a "
                             "second, over a transcriber's last report interval (against "
                             "its provider's VOICEBOT_STT_WORKERS)", ["bot_id"], registry=r)
        self.bot_connections = BotConnections(r)
        self._figured: set[str] = set()  # bots with a lag or compute series

    def caption_stored(self, event: CaptionStored) -> None:
        if event.end:
            self.ttfs.observe(max(0.0, event.at - event.end))

    def bot_reported(self, event: BotReported) -> None:
        self.bot_connections.update(event.bot_id, event.metrics)
        for name, gauge in (("lag", self.lag), ("compute", self.compute)):
            value = event.metrics.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                gauge.labels(event.bot_id).set(float(value))
                self._figured.add(event.bot_id)

    def keep(self, bot_ids: set[str]) -> None:
        """Drops the series of bots that are gone."""
        for bot_id in self._figured - bot_ids:
            for gauge in (self.lag, self.compute):
                try:
                    gauge.remove(bot_id)
                except KeyError:  # it reported one of the two only
                    pass
        self._figured &= bot_ids
        self.bot_connections.keep(bot_ids)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)
