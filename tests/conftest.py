from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig
from signaling.app import create_app
from signaling.settings import Settings
from signaling.testing import ProviderProcess, RedisServer, ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent


class Inbox:
    """Collects every message a client receives, to wait for the ones a test expects."""

    def __init__(self, client: SignalingClient) -> None:
        self.messages: list[p.Message] = []
        self._changed = asyncio.Event()
        for type_ in p.MessageType:
            client.on(type_, self._add)

    def _add(self, msg: p.Message) -> None:
        self.messages.append(msg)
        self._changed.set()

    def of(self, type_: type[p.Message], **match: Any) -> list[Any]:
        return [m for m in self.messages if isinstance(m, type_)
                and all(getattr(m, k) == v for k, v in match.items())]

    async def wait_for(self, type_: type[p.Message], predicate: Callable[[Any], bool] = lambda m: True,
                       timeout: float = 10.0, **match: Any) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            for m in self.of(type_, **match):
                if predicate(m):
                    return m
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {type_.__name__} matching {match} in {timeout} s; "
                                     f"got {[type(m).__name__ for m in self.messages][-20:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass


class Clients:
    """Starts named clients against one server URL and closes them all at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.started: list[SignalingClient] = []

    async def new(self, name: str | None = None, password: str | None = None,
                  **config: Any) -> tuple[SignalingClient, Inbox]:
        client = SignalingClient(ClientConfig(url=self.url, **config))
        inbox = Inbox(client)
        self.started.append(client)
        await client.start(wait=10)
        if name is not None:
            await client.set_name(name, password)
        return client, inbox

    async def close(self) -> None:
        for client in self.started:
            await client.close(drain=0)


PROVIDER_KEY = "test-provider-key"
# every rate limit out of the way (env of a server process), for the fuzzers
UNLIMITED = {f"VOICEBOT_{k}": "100000" for k in (
    "MSG_RATE", "MSG_BURST", "ERROR_RATE", "ERROR_BURST", "CHAT_RATE", "CHAT_BURST",
    "CREATE_RATE", "CREATE_BURST", "IP_SESSION_RATE", "IP_SESSION_BURST",
    "IP_UPGRADE_RATE", "IP_UPGRADE_BURST")}
MEDIA = ROOT / "tests" / "data"


# Every test that runs a server runs twice: on the SQLite store (one node) and on Redis (the
# store several nodes share). A test about one of them only says so: @pytest.mark.backends(...).
BACKENDS = ("sqlite", "redis")
_redis: list[RedisServer] = []  # the redis-server of the tests running now, if on Redis


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("backend", marker.args if marker else BACKENDS, indirect=True,
                             scope="session")


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "redis":
        srv = RedisServer(tmp_path_factory.mktemp("redis"))
        srv.start()
        _redis.append(srv)
        yield "redis"
        _redis.clear()
        srv.stop()
    else:
        yield "sqlite"


def backend_settings(data_dir: Path) -> dict[str, Any]:
    """The store settings of the current backend; one data dir is one deployment."""
    if not _redis:
        return {}
    prefix = "t" + hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return {"redis_url": _redis[0].url, "redis_prefix": prefix, "node_ttl": 2.0}


def backend_env(data_dir: Path) -> dict[str, str]:
    return {f"VOICEBOT_{k.upper()}": str(v) for k, v in backend_settings(data_dir).items()}


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    defaults: dict[str, Any] = {"data_dir": data_dir, "grace": 5.0, "sweep_interval": 0.2,
                                "provider_key": PROVIDER_KEY, "create_burst": 100.0}
    return Settings(**(defaults | backend_settings(data_dir) | overrides))


async def start_server(data_dir: Path, port: int | None = None,
                       **overrides: Any) -> TestServer:
    """A real server on loopback over ``data_dir`` (same dir and port: a restart)."""
    srv = TestServer(create_app(make_settings(data_dir, **overrides)), host="127.0.0.1",
                     port=port or free_port())
    await srv.start_server()
    return srv


@pytest.fixture
def settings(tmp_path: Path, backend: str) -> Settings:
    return make_settings(tmp_path / "data")


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[TestServer]:
    srv = TestServer(create_app(settings), host="127.0.0.1", port=free_port())
    await srv.start_server()
    yield srv
    await srv.close()


@pytest.fixture
async def clients(server: TestServer) -> AsyncIterator[Clients]:
    pool = Clients(str(server.make_url("/")))
    yield pool
    await pool.close()


@pytest.fixture
def provider_process() -> Any:
    procs: list[ProviderProcess] = []

    def make(server_url: str, **kwargs: Any) -> ProviderProcess:
        kwargs.setdefault("key", PROVIDER_KEY)
        kwargs["media_dirs"] = (MEDIA, *kwargs.get("media_dirs", ()))
        proc = ProviderProcess(server_url, **kwargs)
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.stop()


@pytest.fixture
def server_process(tmp_path: Path, backend: str) -> Any:
    procs: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        data = tmp_path / "data"
        proc = ServerProcess(data, **({"VOICEBOT_SWEEP_INTERVAL": "0.2"} | backend_env(data) | env))
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        proc.stop()
