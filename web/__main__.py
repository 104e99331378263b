"""`python -m web`: serve the API; with no AWS configured, run the whole stack in this process."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path

from aiohttp import web

from config.settings import ConfigError, Settings
from pipeline import runtime
from pipeline.backends import data_dir_problem, open_backend
from pipeline.demo import seed_demo_once, seed_demo_users
from pipeline.embedded import embedded_aws
from pipeline.logs import configure_logging
from web.admin import serving_admin
from web.app import create_app
from web.keys import PROVISIONED
from web.multipart import ignore_parser_warnings
from web.server import GuardedRunner

log = logging.getLogger("web")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m web",
        description=(
            "Serve the image API. With no AWS endpoint or credentials configured, also start an "
            "embedded AWS endpoint (moto) and the consumer pool in this process. Every setting is "
            "an IMGSVC_* environment variable (see README)."
        ),
    )
    parser.add_argument("--host", help="address to listen on (IMGSVC_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (IMGSVC_PORT, default 8080; 0 picks one)")
    parser.add_argument(
        "--admin-port",
        type=int,
        help="port of the admin listener: health, readiness and metrics apart from the API "
        "(IMGSVC_ADMIN_PORT, default 8081, on IMGSVC_ADMIN_HOST, default 127.0.0.1; 0 picks one)",
    )
    parser.add_argument(
        "--embedded-port", type=int, help="embedded AWS port (IMGSVC_EMBEDDED_PORT, default 4566)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="keep every piece of state under this directory, durably, with no AWS at all "
        "(IMGSVC_DATA_DIR; created if missing)",
    )
    parser.add_argument(
        "--embedded-only",
        action="store_true",
        help="run only the embedded AWS endpoint (provisioned), for API and consumer processes to share",
    )
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    environ = dict(os.environ)
    if args.data_dir is not None:  # validated with the rest, as if it were the variable
        environ["IMGSVC_DATA_DIR"] = str(args.data_dir)
    settings = Settings.from_env(environ)
    web_settings = settings.web
    if args.host is not None:
        web_settings = dataclasses.replace(web_settings, host=args.host)
    if args.port is not None:
        web_settings = dataclasses.replace(web_settings, port=args.port)
    if args.admin_port is not None:
        web_settings = dataclasses.replace(web_settings, admin_port=args.admin_port)
    aws = settings.aws
    if args.embedded_port is not None:
        aws = dataclasses.replace(aws, embedded_port=args.embedded_port)
    return dataclasses.replace(settings, web=web_settings, aws=aws)


async def serve(settings: Settings, *, seed_demo: bool = False) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (the consumer drains first)."""
    if seed_demo:
        async with open_backend(settings, provision_first=True) as backend:
            if settings.aws.mode == "local":
                await seed_demo_once(backend.tables, settings)
            else:
                await seed_demo_users(backend.tables, settings)
    app = create_app(settings)
    app[PROVISIONED] = seed_demo  # done just above: the app need not provision (and log it) again
    runner = GuardedRunner(app, settings.web)
    await runner.setup()
    web_settings = settings.web
    try:
        site = web.TCPSite(runner, web_settings.host, web_settings.port)
        with _listening(web_settings.host, web_settings.port, "--port (IMGSVC_PORT)"):
            await site.start()
        for address in runner.addresses:
            log.info("API listening url=http://%s:%s", *address[:2])
        async with AsyncExitStack() as stack:
            admin_flag = "--admin-port (IMGSVC_ADMIN_PORT)"
            with _listening(web_settings.admin_host, web_settings.admin_port, admin_flag):
                admin = serving_admin(app, web_settings.admin_host, web_settings.admin_port)
                await stack.enter_async_context(admin)
            await _until_signalled()
    finally:
        await runner.cleanup()


class ListenError(Exception):
    """An address to listen on is taken or not ours; the message is the one line to print."""


@contextmanager
def _listening(host: str, port: int, flag: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
        raise ListenError(f"{host}:{port} {why}: choose another with {flag}") from None


async def serve_embedded_only(settings: Settings) -> None:
    """Provision the embedded endpoint and keep it up until SIGINT or SIGTERM; no API, no consumer."""
    async with open_backend(settings, provision_first=True) as backend:
        await seed_demo_users(backend.tables, settings)
    log.info(
        "embedded AWS endpoint only: start API processes with IMGSVC_MODE=embedded "
        "AWS_ENDPOINT_URL=%s and consumers with `python -m pipeline consumer` and the same variables",
        settings.aws.endpoint_url,
    )
    await _until_signalled()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if problem := data_dir_problem(settings):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    ignore_parser_warnings()
    endpoint_started = False
    with ExitStack() as stack:
        if settings.aws.mode == "embedded" and not settings.aws.endpoint_url:
            try:
                endpoint = stack.enter_context(
                    embedded_aws(settings.aws.embedded_host, settings.aws.embedded_port)
                )
            except OSError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            settings = dataclasses.replace(
                settings, aws=dataclasses.replace(settings.aws, endpoint_url=endpoint)
            )
            endpoint_started = True
            log.info(
                "embedded AWS endpoint url=%s (S3, SQS and DynamoDB; point any AWS client at it with "
                "AWS_ENDPOINT_URL=%s and any credentials); data is in memory only and is lost on exit",
                endpoint,
                endpoint,
            )
        elif args.embedded_only:
            print("error: --embedded-only needs the embedded mode (no AWS configured)", file=sys.stderr)
            return 2
        elif settings.aws.mode == "local":
            log.info(
                "local backend data_dir=%s: originals, renditions, records, users, keys and the "
                "queues are kept there and survive restarts",
                settings.aws.data_dir,
            )
        else:
            log.info(
                "using AWS endpoint=%s region=%s", settings.aws.endpoint_url or "default", settings.aws.region
            )
        # The process that started the embedded endpoint owns its demo users.
        started_endpoint = settings.aws.mode == "embedded" and endpoint_started
        main_coroutine = (
            serve_embedded_only(settings)
            if args.embedded_only
            else serve(settings, seed_demo=started_endpoint or settings.aws.mode == "local")
        )
        try:
            runtime.run(main_coroutine, use_uvloop=settings.use_uvloop, debug=settings.loop_debug)
        except ListenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
