"""The ``voicebot`` command."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from .app import create_app
from .settings import Settings
from .store import StoreError

log = logging.getLogger("voicebot")


def _serve(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    try:
        web.run_app(create_app(settings), host=settings.host, port=settings.port,
                    shutdown_timeout=5.0, print=lambda msg: log.info(
                        "serving on http://%s:%d%s", settings.host, settings.port,
                        settings.base_path))
    except StoreError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicebot", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the signaling server")
    Settings.add_arguments(serve)
    serve.set_defaults(run=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except ValueError as exc:  # settings that make no sense
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
