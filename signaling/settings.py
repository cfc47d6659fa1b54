"""Server settings: one dataclass, read from ``VOICEBOT_*`` variables and overridden by CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from . import ice


SECRETS = ("provider_key", "admin_token", "turn_secret")


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    host: str = _setting("127.0.0.1", "address to listen on")
    port: int = _setting(8080, "port to listen on")
    data_dir: Path = _setting(Path("data"), "directory for the SQLite database")
    base_path: str = _setting("/", "URL prefix when served behind a proxy, e.g. /ai-voicebot/")
    session_ttl: float = _setting(7 * 24 * 3600.0, "seconds a disconnected session is kept")
    grace: float = _setting(20.0, "seconds a disconnected member stays in its lobbies")
    lobby_ttl: float = _setting(600.0, "seconds an empty lobby is kept")
    max_participants: int = _setting(16, "default participant cap of a lobby (a mesh)")
    history_limit: int = _setting(50, "chat messages replayed on join")
    max_message_bytes: int = _setting(64 * 1024, "frames larger get a message_too_large error")
    max_frame_bytes: int = _setting(1024 * 1024, "frames larger close the socket with 1009")
    heartbeat: float = _setting(15.0, "seconds between WebSocket pings")
    send_queue: int = _setting(1024, "frames queued for one slow client before it is dropped")
    sweep_interval: float = _setting(1.0, "seconds between expiry sweeps")
    integrity_interval: float = _setting(300.0, "seconds between integrity checks")
    provider_key: str | None = _setting(None, "shared secret bot providers authenticate with")
    auto_bots: str = _setting("", "bot kinds added to every lobby a person joins, comma-separated")
    max_db_mb: int = _setting(0, "largest the database may grow, in MiB (0: no limit)")
    redis_url: str | None = _setting(None, "Redis shared by several nodes, e.g. redis://host:6379/0 "
                                           "(unset: one node on SQLite)")
    redis_prefix: str = _setting("voicebot", "prefix of this deployment's Redis keys and channels")
    node_id: str | None = _setting(None, "this node's name among several (default: host-pid-random)")
    node_ttl: float = _setting(3.0, "seconds without a heartbeat before a node counts as dead")
    chat_cap: int = _setting(10_000, "messages kept per lobby in Redis (oldest dropped first)")
    admin_token: str | None = _setting(None, "bearer token of the admin API (disabled if unset)")
    allowed_origins: str = _setting("", "origins allowed to open the WebSocket, comma-separated "
                                        "(default: the server's own host)")
    max_connections: int = _setting(2000, "open WebSockets at most; more are closed with 1013")
    msg_rate: float = _setting(50.0, "frames a second per connection")
    msg_burst: float = _setting(200.0, "frames in a burst per connection")
    chat_rate: float = _setting(3.0, "chat messages a second per connection")
    chat_burst: float = _setting(20.0, "chat messages in a burst per connection")
    create_rate: float = _setting(0.2, "lobbies or bots created a second per connection/session")
    create_burst: float = _setting(10.0, "lobbies or bots created in a burst")
    error_rate: float = _setting(1.0, "protocol errors a second before a socket is closed (1008)")
    error_burst: float = _setting(30.0, "protocol errors in a burst before it is closed")
    ip_session_rate: float = _setting(1.0, "sessions created a second per client address")
    ip_session_burst: float = _setting(30.0, "sessions created in a burst per client address")
    ip_upgrade_rate: float = _setting(2.0, "WebSocket upgrades a second per client address")
    ip_upgrade_burst: float = _setting(30.0, "WebSocket upgrades in a burst per client address")
    stun_urls: str = _setting("", "STUN servers every peer uses, comma-separated, e.g. "
                                  "stun:turn.example.org:3478 (unset: none, host candidates only)")
    turn_urls: str = _setting("", "TURN servers, comma-separated, e.g. turn:turn.example.org:3478"
                                  "?transport=udp,turns:turn.example.org:443?transport=tcp "
                                  "(needs VOICEBOT_TURN_SECRET)")
    turn_secret: str | None = _setting(None, "the TURN server's shared secret (coturn "
                                             "static-auth-secret): credentials are made from it")
    turn_ttl: float = _setting(3600.0, "seconds a session's TURN credential is valid (renewed "
                                       "before it expires)")
    ice_policy: str = _setting("all", "all: peers connect directly where they can; relay: "
                                      "browsers connect through TURN only (needs turn_urls)")
    tls_cert: Path | None = _setting(None, "serve HTTPS with this certificate (PEM, chain)")
    tls_key: Path | None = _setting(None, "the private key of --tls-cert (PEM)")
    tls_self_signed: bool = _setting(False, "serve HTTPS with a self-signed certificate kept in "
                                            "the data dir (for a LAN; browsers must be told to "
                                            "trust it)")
    tls_names: str = _setting("", "extra host names and addresses the self-signed certificate "
                                  "covers, comma-separated (localhost, 127.0.0.1 and this host's "
                                  "name always are)")

    def __post_init__(self) -> None:
        base = "/" + self.base_path.strip("/")
        object.__setattr__(self, "base_path", base.rstrip("/") + "/")
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for name in ("session_ttl", "grace", "lobby_ttl", "heartbeat", "sweep_interval",
                     "integrity_interval", "node_ttl"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 2 <= self.max_participants <= 64:
            raise ValueError("max_participants must be within 2..64")
        if self.max_message_bytes > self.max_frame_bytes:
            raise ValueError("max_message_bytes must not exceed max_frame_bytes")
        ice.check(self.stun_urls, self.turn_urls, self.turn_secret, self.turn_ttl)
        if self.ice_policy not in ("all", "relay"):
            raise ValueError("ice_policy must be all or relay")
        if self.ice_policy == "relay" and not self.turn_urls:
            raise ValueError("ice_policy relay needs turn_urls")
        for name in ("tls_cert", "tls_key"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        if self.tls_cert is not None and self.tls_self_signed:
            raise ValueError("--tls-self-signed or --tls-cert/--tls-key, not both")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None or self.tls_self_signed

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def origins(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]

    @property
    def auto_bot_kinds(self) -> list[str]:
        return [k.strip() for k in self.auto_bots.split(",") if k.strip()]

    @property
    def db_path(self) -> Path:
        return self.data_dir / "voicebot.sqlite3"

    def url(self, path: str = "") -> str:
        """The route ``path`` under the base path, e.g. ``url("api/health")``."""
        return self.base_path + path.lstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Self:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"VOICEBOT_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in dataclasses.fields(cls):
            if f.name in SECRETS:  # environment only: a command line is visible to every user
                continue
            if type(f.default) is bool:  # a flag: --tls-self-signed
                parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                                    action="store_const", const=True,
                                    help=f"{f.metadata['help']} (env VOICEBOT_{f.name.upper()}=1)")
                continue
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                                type=functools.partial(_convert, f),
                                help=f"{f.metadata['help']} (default: {_shown(f.default)}; "
                                     f"env VOICEBOT_{f.name.upper()})")

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Self:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls.from_env(environ, **{k: v for k, v in vars(args).items() if k in names})


def _shown(default: Any) -> str:
    """A default as ``--help`` shows it (argparse formats ``%``: escaped)."""
    text = "unset" if default is None or default == "" else str(default)
    return text.replace("%", "%%")


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    if f.name in ("tls_cert", "tls_key"):
        return Path(raw)
    if isinstance(f.default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    if isinstance(f.default, int):
        return int(raw)
    if isinstance(f.default, float):
        return float(raw)
    if isinstance(f.default, Path):
        return Path(raw)
    return raw
