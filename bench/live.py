"""A live lobby to measure in, for the benchmarks that run real bots (``bench.transcribe``,
``bench.languages``): an observing client that records transcripts and bot statuses as they
arrive, bots added and removed over the HTTP API, and the providers awaited.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from shared import protocol as p
from shared.client import SignalingClient
from shared.config import ClientConfig
from signaling.history import current

KEY = "bench-provider-key"  # the servers' and providers' shared key in these benchmarks


@dataclass
class Observer:
    """A lobby member that records transcripts and statuses as they arrive."""

    finals: list[tuple[float, p.Transcript]] = field(default_factory=list)
    first_interim: dict[str, float] = field(default_factory=dict)
    statuses: list[p.BotStatus] = field(default_factory=list)

    def attach(self, client: SignalingClient) -> None:
        client.on(p.MessageType.TRANSCRIPT, self._transcript)
        client.on(p.MessageType.BOT_STATUS, self.statuses.append)

    def _transcript(self, msg: p.Message) -> None:
        assert isinstance(msg, p.Transcript)
        now = time.time()
        if msg.final:
            self.finals.append((now, msg))
        elif msg.text:
            self.first_interim.setdefault(msg.segment_id, now)

    def shown(self) -> list[p.Transcript]:
        """The finals a reader shows: without those a later final replaced."""
        return [t for t in current(t for _, t in self.finals) if isinstance(t, p.Transcript)]

    def ttfs(self) -> list[float]:
        return [at - t.end for at, t in self.finals]

    def interim_delays(self) -> list[float]:
        starts = {t.segment_id: t.start for _, t in self.finals}
        return [at - starts[seg] for seg, at in self.first_interim.items() if seg in starts]

    def sent_at(self, name: str) -> float | None:
        """When player ``name``'s first frame went out (Unix time), as its status says."""
        for s in self.statuses:
            if s.name == name and (m := re.search(r" since ([0-9.]+)$", s.detail)):
                return float(m.group(1))
        return None

    def status_of(self, name: str) -> p.BotStatus | None:
        """The latest status of the bot called ``name`` or of kind ``name``."""
        return next((s for s in reversed(self.statuses) if name in (s.name, s.kind)), None)

    def has_status(self, name: str, ok: Callable[[p.BotStatus], bool]) -> bool:
        """Whether the latest status of ``name`` (see ``status_of``) is one ``ok`` accepts."""
        status = self.status_of(name)
        return status is not None and ok(status)

    async def until_live(self, name: str = "transcriber", timeout: float = 120) -> None:
        await wait_for(lambda: self.has_status(name, lambda s: s.status == "live"), timeout,
                       f"the {name}")

    async def until_finished(self, name: str, timeout: float) -> None:
        await wait_for(lambda: self.has_status(name, lambda s: s.detail.startswith("finished")),
                       timeout, f"{name} to finish")


async def add_bot(http: aiohttp.ClientSession, url: str, token: str, lobby: str, kind: str,
                  name: str | None = None, **config: Any) -> dict[str, Any]:
    async with http.post(f"{url}api/lobbies/{lobby}/bots", json={
            "kind": kind, "name": name, "config": config},
            headers={"Authorization": f"Bearer {token}"}) as r:
        body = await r.json()
        if r.status != 201:
            raise RuntimeError(f"adding {kind}: {body}")
        return body


async def remove_bot(http: aiohttp.ClientSession, url: str, token: str, lobby: str,
                     bot: dict[str, Any]) -> None:
    """Removes ``bot`` (what ``add_bot`` returned) from the lobby."""
    async with http.delete(f"{url}api/lobbies/{lobby}/bots/{bot['bot_id']}",
                           headers={"Authorization": f"Bearer {token}"}):
        pass


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def providers_ready(url: str, kinds: set[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(url + "api/bots") as r:
                if kinds <= {k["kind"] for k in (await r.json())["kinds"]}:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"providers for {kinds} did not register")


async def live_lobby(url: str, name: str) -> tuple[SignalingClient, Observer, str]:
    """A new lobby (no history) called ``name``, with an observer in it."""
    client = SignalingClient(ClientConfig(url=url, name=f"Observer {name}"))
    observer = Observer()
    observer.attach(client)
    await client.start(wait=20)
    await client.set_name(f"Observer {name}")
    lobby = (await client.join(lobby_name=name)).lobby.id
    return client, observer, lobby
