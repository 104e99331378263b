"""`python -m web`: serve the API; with no AWS configured, run the whole stack in this process."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path

from aiohttp import web

from config.settings import ConfigError, Settings
from pipeline.backends import data_dir_problem, open_backend
from pipeline.core import runtime
from pipeline.core.demo import seed_demo_once, seed_demo_users
from pipeline.core.logs import configure_logging
from pipeline.core.version import service_version
from pipeline.imaging.variants import preset_problem
from pipeline.imaging.workers import SUPERVISED, die_with_parent, supervisor_pid
from web.admin import serving_admin
from web.app import create_app
from web.keys import PROVISIONED
from web.multipart import ignore_parser_warnings
from web.notify import notify
from web.server import GuardedRunner
from web.supervisor import Child, Supervisor, address_of, inherited, listen
from web.watermarks import site_overlay

log = logging.getLogger("web")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m web",
        description=(
            "Serve the image API. With no AWS endpoint or credentials configured, also start an "
            "embedded AWS endpoint (moto) and the consumer pool in this process. Every setting is "
            "an IMGSVC_* environment variable (docs/configuration.md)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {service_version()}")
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
        "--workers",
        help="serving processes on the port (IMGSVC_WORKERS; default auto: the CPUs this process "
        "may use; 1: one process, consumer included); more run under a supervisor that starts the "
        "consumer once and a worker that dies again",
    )
    parser.add_argument("--serve-fds", help=argparse.SUPPRESS)  # a worker: the sockets it inherits
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
    if args.workers is not None:
        environ["IMGSVC_WORKERS"] = args.workers
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


async def seed(settings: Settings) -> None:
    """Provision (embedded, local) and create the demo users and their keys."""
    async with open_backend(settings, provision_first=True) as backend:
        if settings.aws.mode == "local":
            await seed_demo_once(backend.tables, settings)
        else:
            await seed_demo_users(backend.tables, settings)


async def serve(
    settings: Settings, *, seed_demo: bool = False, sockets: tuple[socket.socket, socket.socket] | None = None
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully (the consumer drains first).
    `sockets`: the API's and the admin listener's, handed down by a supervisor (`--workers`)."""
    if seed_demo:
        await seed(settings)
    app = create_app(settings)
    # Provisioned just above, or by the supervisor: the app need not provision (and log it) again.
    app[PROVISIONED] = seed_demo or sockets is not None
    runner = GuardedRunner(app, settings.web)
    await runner.setup()
    web_settings = settings.web
    try:
        if sockets is not None:
            await web.SockSite(runner, sockets[0]).start()
            log.info("worker serving pid=%d", os.getpid())
        else:
            site = web.TCPSite(runner, web_settings.host, web_settings.port)
            with _listening(web_settings.host, web_settings.port, "--port (IMGSVC_PORT)"):
                await site.start()
            for address in runner.addresses:
                log.info("API listening url=http://%s:%s", *address[:2])
        async with AsyncExitStack() as stack:
            admin_flag = "--admin-port (IMGSVC_ADMIN_PORT)"
            with _listening(web_settings.admin_host, web_settings.admin_port, admin_flag):
                admin = serving_admin(
                    app,
                    web_settings.admin_host,
                    web_settings.admin_port,
                    sock=sockets[1] if sockets is not None else None,
                )
                await stack.enter_async_context(admin)
            if sockets is None:  # one process: ready (a supervisor says so for its workers)
                notify("READY=1")
            await _until_signalled()
            notify("STOPPING=1")
    finally:
        await runner.cleanup()


def supervise(settings: Settings, *, seed_demo: bool) -> int:
    """`--workers N` (N > 1): bind once, then run N serving processes and the consumer. The demo
    users are made here where one process would make them (embedded, local), never on AWS."""
    web_settings = settings.web
    if seed_demo:
        runtime.run(seed(settings), use_uvloop=settings.use_uvloop)
    try:
        with _listening(web_settings.host, web_settings.port, "--port (IMGSVC_PORT)"):
            api = listen(web_settings.host, web_settings.port)
        admin_flag = "--admin-port (IMGSVC_ADMIN_PORT)"
        with _listening(web_settings.admin_host, web_settings.admin_port, admin_flag):
            admin = listen(web_settings.admin_host, web_settings.admin_port)
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log.info("API listening url=http://%s:%s", *address_of(api))
    log.info("admin listening url=http://%s:%s (health, readiness, metrics)", *address_of(admin))
    env = {
        **os.environ,
        "IMGSVC_WORKERS": "1",
        "IMGSVC_RUN_CONSUMER": "false",
        "IMGSVC_MODE": settings.aws.mode,
        SUPERVISED: str(os.getpid()),  # each child dies with the supervisor, even by SIGKILL (Linux)
    }
    env.pop("NOTIFY_SOCKET", None)  # systemd hears from the supervisor alone (NotifyAccess=main)
    if settings.local.data_dir is not None:
        env["IMGSVC_DATA_DIR"] = str(settings.local.data_dir)
    if settings.aws.endpoint_url:
        env["AWS_ENDPOINT_URL"] = settings.aws.endpoint_url
    fds = (api.fileno(), admin.fileno())
    children = [
        Child(f"worker {n + 1}", ["-m", "web", "--serve-fds", f"{fds[0]},{fds[1]}"], env, fds)
        for n in range(web_settings.serving_processes)
    ]
    if web_settings.run_consumer:
        children.append(Child("consumer", ["-m", "pipeline", "consumer"], env))
    log.info("supervising workers=%d consumer=%s", web_settings.serving_processes, web_settings.run_consumer)
    drain = settings.consumer.drain_timeout + 10
    # Ready once the children are started: the sockets are bound, so a connection made before a
    # worker accepts waits in the backlog, not refused.
    supervisor = Supervisor(children, drain, on_started=lambda: notify("READY=1"))
    return runtime.run(supervisor.run(), use_uvloop=settings.use_uvloop)


class ListenError(Exception):
    """An address to listen on is taken or not ours; the message is the one line to print."""


@contextmanager
def _listening(host: str, port: int, flag: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        why = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
        raise ListenError(f"{host}:{port} {why}: choose another with {flag}") from None


def _may_listen(host: str, port: int, flag: str) -> None:
    """A `ListenError` now if `host:port` is taken (bound as the server will bind it, then let go);
    the server's own bind still decides, should another process take it in between."""
    if port == 0:
        return
    with _listening(host, port, flag):
        listen(host, port).close()


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
    try:
        site_overlay(settings.variants)  # read again by each serving process
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if problem := preset_problem(settings.variants):
        print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if args.serve_fds:  # a worker of a supervisor: everything else is done already
        die_with_parent(supervisor_pid() or os.getppid())
        sockets = inherited(args.serve_fds)
        runtime.run(
            serve(settings, sockets=sockets), use_uvloop=settings.use_uvloop, debug=settings.loop_debug
        )
        return 0
    if problem := data_dir_problem(settings):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if not args.embedded_only:
        try:  # before seconds of starting the endpoint and provisioning, which it would then undo
            _may_listen(settings.web.host, settings.web.port, "--port (IMGSVC_PORT)")
            _may_listen(settings.web.admin_host, settings.web.admin_port, "--admin-port (IMGSVC_ADMIN_PORT)")
        except ListenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    ignore_parser_warnings()
    endpoint_started = False
    with ExitStack() as stack:
        if settings.aws.mode == "embedded" and not settings.aws.endpoint_url:
            from pipeline.aws.embedded import embedded_aws  # moto: only where it runs

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
                settings.local.data_dir,
            )
        else:
            log.info(
                "using AWS endpoint=%s region=%s", settings.aws.endpoint_url or "default", settings.aws.region
            )
        # The process that started the embedded endpoint owns its demo users.
        started_endpoint = settings.aws.mode == "embedded" and endpoint_started
        if settings.web.serving_processes > 1 and not args.embedded_only:
            return supervise(settings, seed_demo=started_endpoint or settings.aws.mode == "local")
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
