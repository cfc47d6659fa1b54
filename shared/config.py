"""``ClientConfig``: everything a ``SignalingClient`` is told, with its defaults (the table in
docs/client.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ClientConfig:
    url: str  # the server's HTTP base URL, e.g. http://127.0.0.1:8080/ (base path included)
    # other nodes of the same deployment (without a load balancer): tried in turn when the
    # current one can't be reached or drops us; the session resumes on whichever answers
    fallback_urls: tuple[str, ...] = ()
    token: str | None = None
    name: str | None = None
    password: str | None = None
    bot: bool = False
    provider_key: str | None = None
    create_session: bool = True  # when the token is refused: start a new session, or stop
    connect_timeout: float = 5.0
    heartbeat: float = 5.0  # client pings; a missing pong ends the connection
    receive_timeout: float = 15.0  # no frame (or server ping) for this long: the link is dead
    request_timeout: float = 15.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    healthy_after: float = 5.0  # a connection that lived this long resets the backoff
    queue_size: int = 1000
    queue_ttl: float = 60.0
    dedupe_window: float = 300.0
    dedupe_max: int = 10_000
    breaker_threshold: int = 8  # ~8 s of outage at the default backoff
    breaker_cooldown: float = 15.0
    # https:// servers: certificates are verified against the system's CAs, or against this
    # PEM file (a self-signed server's certificate, or a private CA)
    ca_file: str | None = None
    server_hostname: str | None = None  # the name to verify the certificate against, if not url's

    def __post_init__(self) -> None:
        if not self.url.endswith("/"):
            self.url += "/"
        self.fallback_urls = tuple(u if u.endswith("/") else u + "/" for u in self.fallback_urls)
        if self.queue_size < 1 or self.queue_ttl <= 0 or self.breaker_threshold < 1:
            raise ValueError("queue_size, queue_ttl and breaker_threshold must be positive")

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "ws"
