"""The admin listener: health, readiness and metrics on a port, a thread and an event loop of
their own.

The API's port has a connection cap, per-client shares and deadlines, all of which a flood of
clients can reach; an orchestrator's probe that shares them can be refused or delayed, and then
a healthy process gets restarted in the middle of an attack. Sharing the API's event loop is not
enough apart either: a flood of connections keeps that loop busy, and a probe waits its turn
(measured: 395 ms at the 95th percentile under 300 slow readers reconnecting). So the admin
listener runs aiohttp's plain server on a thread with its own loop, on its own address (loopback
by default, for a local agent, a sidecar or a container's HEALTHCHECK), and answers from what
the API's loop publishes (`Published`): a heartbeat every half second, and readiness worked out
there every two seconds. Liveness is the heartbeat being recent (a stuck loop is not alive);
readiness is the last result, if it is recent; metrics are read straight from the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from web.handlers import health
from web.keys import SETTINGS
from web.middlewares import error_document, error_response

log = logging.getLogger(__name__)
#: Seconds an idle probe connection stays open (scrapers keep theirs alive between scrapes).
KEEPALIVE_SECONDS = 75.0
#: How often the API's loop beats, and works out readiness (s).
HEARTBEAT_SECONDS = 0.5
#: A heartbeat or readiness older than this means the API's loop is stuck (s).
STALE_SECONDS = 10.0
#: How long one readiness check may take before it counts as not ready (s).
READINESS_TIMEOUT = 5.0


@dataclass
class _Readiness:
    status: int
    body: bytes
    at: float


class Published:
    """What the API's loop tells the admin thread: plain values, swapped whole (thread-safe)."""

    def __init__(self, readiness_seconds: float = 2.0) -> None:
        self.heartbeat = time.monotonic()
        self.readiness: _Readiness | None = None
        self._every = readiness_seconds
        #: Readiness older than this means the loop is stuck: a few rounds missed, at least.
        self._stale = max(STALE_SECONDS, 2 * readiness_seconds + READINESS_TIMEOUT)

    async def publish(self, api: web.Application) -> None:
        """Forever, on the API's loop: beat, and work readiness out, so probes never wait for it.
        The two apart: a slow dependency makes readiness late (then not ready), never liveness."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._beat())
            group.create_task(self._check(api))

    async def _beat(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _check(self, api: web.Application) -> None:
        while True:
            try:
                async with asyncio.timeout(READINESS_TIMEOUT):
                    response = await health.readiness(api)
                assert isinstance(response.body, bytes)
                self.readiness = _Readiness(response.status, response.body, time.monotonic())
            except TimeoutError:
                body = error_document("not_ready", f"dependencies did not answer in {READINESS_TIMEOUT:g}s")
                self.readiness = _Readiness(503, json.dumps(body).encode(), time.monotonic())
            await asyncio.sleep(self._every)

    def live(self) -> web.Response:
        age = time.monotonic() - self.heartbeat
        if age > STALE_SECONDS:
            return error_response(503, "not_alive", f"the event loop has not run for {age:.0f}s")
        return web.json_response({"status": "alive"})

    def ready(self) -> web.Response:
        known = self.readiness
        if known is None:
            return error_response(503, "not_ready", "readiness has not been worked out yet")
        age = time.monotonic() - known.at
        if age > self._stale:
            message = f"readiness was last worked out {age:.0f}s ago: the event loop is stuck"
            return error_response(503, "not_ready", message)
        return web.Response(status=known.status, body=known.body, content_type="application/json")


def admin_app(published: Published) -> web.Application:
    """An app answering `/health/live`, `/health/ready` and `/metrics` from `published`."""
    admin = web.Application()

    async def live(request: web.Request) -> web.Response:
        return published.live()

    async def ready(request: web.Request) -> web.Response:
        return published.ready()

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    admin.router.add_get("/health/live", live)
    admin.router.add_get("/health/ready", ready)
    admin.router.add_get("/metrics", metrics)
    return admin


class AdminListener:
    """The admin app served on a thread of its own, with its own event loop."""

    def __init__(self, published: Published, host: str, port: int, sock: socket.socket | None = None) -> None:
        self._published, self._host, self._port, self._sock = published, host, port, sock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="admin-listener", daemon=True)
        self._runner: web.AppRunner | None = None
        self.addresses: list[tuple[str, int]] = []

    def start(self) -> None:
        """Listen (raises `OSError` for a taken address, as the API's own listen would)."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)

    async def _start(self) -> None:
        runner = web.AppRunner(
            admin_app(self._published), access_log=None, keepalive_timeout=KEEPALIVE_SECONDS
        )
        await runner.setup()
        try:
            site = (
                web.SockSite(runner, self._sock)
                if self._sock is not None
                else web.TCPSite(runner, self._host, self._port)
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.addresses = [(str(a[0]), int(a[1])) for a in runner.addresses]

    def stop(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()


@contextlib.asynccontextmanager
async def serving_admin(
    api: web.Application, host: str, port: int, sock: socket.socket | None = None
) -> AsyncIterator[AdminListener]:
    """The admin listener of `api` (on `sock` where a supervisor bound it), and the task on
    `api`'s loop that keeps it informed."""
    published = Published(api[SETTINGS].web.readiness_seconds)
    publishing = asyncio.create_task(published.publish(api), name="admin-publisher")
    listener = AdminListener(published, host, port, sock)
    try:
        await asyncio.to_thread(listener.start)
        if sock is None:
            for address in listener.addresses:
                log.info("admin listening url=http://%s:%s (health, readiness, metrics)", *address)
        yield listener
    finally:
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
        await asyncio.to_thread(listener.stop)
