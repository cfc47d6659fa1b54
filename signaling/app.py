"""``create_app(settings)``: the aiohttp application with its routes and background tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import WSCloseCode, web

from shared.tasks import cancel_and_wait

from . import admin, api, events, ws
from .dispatch import DISPATCHER, Dispatcher
from .hub import HUB, Hub
from .limits import LIMITS, AppLimits
from .metrics import METRICS, Metrics
from .changes import Change, DispatchChange
from .cluster import Cluster
from .redis_store import RedisStore
from .settings import Settings
from .store import SQLiteStore, Store

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
DOCS_DIR = Path(__file__).parent.parent / "docs"  # linked from the page (e.g. "needs TURN")
OPENAPI = Path(__file__).parent / "openapi.json"
SETTINGS = web.AppKey("settings", Settings)


def create_app(settings: Settings, store: Store | None = None) -> web.Application:
    app = web.Application(middlewares=[api.json_errors, admin.admin_only],
                          client_max_size=settings.max_message_bytes)
    app[SETTINGS] = settings
    cluster = None
    if store is None and settings.redis_url:
        cluster = Cluster(settings.redis_url, settings.redis_prefix, settings.node_id,
                          settings.node_ttl)
        store = RedisStore(cluster, settings.chat_cap)
    hub = app[HUB] = Hub(settings, store or SQLiteStore(settings.db_path, settings.max_db_mb),
                         cluster=cluster)
    dispatcher = app[DISPATCHER] = Dispatcher(hub)
    if cluster is not None:
        async def resync() -> None:
            await hub.resync()
            assert hub.snapshot is not None
            dispatcher.load(hub.snapshot)

        def apply(change: Change) -> None:
            if isinstance(change, DispatchChange):
                dispatcher.apply(change)
            else:
                hub.apply_remote(change)

        cluster.attach(on_change=apply, on_deliver=hub.deliver_local, on_resync=resync,
                       on_nodes_lost=hub.nodes_lost, watched_nodes=hub.picture.nodes)
    app[LIMITS] = AppLimits(settings)
    metrics = app[METRICS] = Metrics()
    hub.bus.subscribe(events.BotReported, metrics.bot_reported)
    hub.bus.subscribe(events.CaptionStored, metrics.caption_stored)
    app.cleanup_ctx.append(_hub_lifetime)
    app.cleanup_ctx.append(_maintenance)
    app.on_shutdown.append(_close_sockets)
    base = settings.base_path
    api.add_routes(app, base)
    admin.add_routes(app, base)
    app.router.add_get(base + "ws", ws.websocket)
    app.router.add_get(base + "metrics", _metrics)
    app.router.add_get(base + "api/openapi.json", _openapi)
    app.router.add_get(base, _index)
    app.router.add_get(base + "favicon.ico", _favicon)  # asked for by browsers and tools
    app.router.add_get(base + r"docs/{name:[a-z][a-z0-9-]*\.md}", _doc)
    if base != "/":  # "/ai-voicebot" → "/ai-voicebot/", so relative URLs resolve under it
        app.router.add_get(base.rstrip("/"), _to_base)
    app.router.add_static(base + "static/", STATIC_DIR)
    return app


async def _index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "favicon.svg",
                            headers={"Content-Type": "image/svg+xml",
                                     "Cache-Control": "max-age=86400"})


async def _doc(request: web.Request) -> web.FileResponse:
    path = DOCS_DIR / request.match_info["name"]  # the route's pattern keeps it in DOCS_DIR
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": "text/plain; charset=utf-8"})


async def _metrics(request: web.Request) -> web.Response:
    hub, dispatcher, metrics = request.app[HUB], request.app[DISPATCHER], request.app[METRICS]
    metrics.connections.set(len(hub.picture.connections()))
    metrics.sessions.set(len(hub.picture.sessions))
    metrics.lobbies.set(len(hub.picture.lobbies))
    metrics.providers.set(len(dispatcher.providers))
    metrics.bots.clear()
    for status in {b.status for b in dispatcher.bots.values()}:
        metrics.bots.labels(status).set(sum(b.status == status for b in dispatcher.bots.values()))
    metrics.keep(set(dispatcher.bots))
    return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})


async def _openapi(request: web.Request) -> web.FileResponse:
    return web.FileResponse(OPENAPI)


async def _to_base(request: web.Request) -> web.Response:
    raise web.HTTPPermanentRedirect(request.app[SETTINGS].base_path)


async def _hub_lifetime(app: web.Application) -> AsyncIterator[None]:
    hub = app[HUB]
    repairs = await hub.start()
    assert hub.snapshot is not None
    app[DISPATCHER].load(hub.snapshot)
    log.info("store open: %d sessions, %d lobbies, %d bots, %d integrity repairs",
             len(hub.picture.sessions), len(hub.picture.lobbies), len(app[DISPATCHER].bots), len(repairs))
    yield
    await app[DISPATCHER].close()
    await hub.close()


async def _maintenance(app: web.Application) -> AsyncIterator[None]:
    hub, settings = app[HUB], app[SETTINGS]

    async def loop() -> None:
        next_check = time.monotonic() + settings.integrity_interval
        while True:
            await asyncio.sleep(settings.sweep_interval)
            try:
                hub.renew_ice()
                await hub.sweep()
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + settings.integrity_interval
                    await hub.check_integrity()
            except Exception:  # a bad sweep must not end expiry for good
                log.exception("maintenance sweep failed")

    task = asyncio.create_task(loop(), name="maintenance")
    yield
    await cancel_and_wait(task)


async def _close_sockets(app: web.Application) -> None:
    conns = app[HUB].picture.connections()
    await asyncio.gather(*(c.close(WSCloseCode.GOING_AWAY, "server shutting down")
                           for c in conns), return_exceptions=True)
