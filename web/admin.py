"""The admin listener: health, readiness and metrics on a port of their own.

The API's port has a connection cap, per-client shares and deadlines, all of which a flood of
clients can reach; an orchestrator's probe that shares them can be refused or delayed, and then
a healthy process gets restarted in the middle of an attack. The admin listener serves the same
three answers from the same process state on another address (loopback by default, for a local
agent, a sidecar or a container's HEALTHCHECK), through aiohttp's plain server: no client of the
API reaches it, so nothing they do counts against it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from web.handlers import health

log = logging.getLogger(__name__)
#: Seconds an idle probe connection stays open (scrapers keep theirs alive between scrapes).
KEEPALIVE_SECONDS = 75.0


def admin_app(api: web.Application) -> web.Application:
    """An app answering `/health/live`, `/health/ready` and `/metrics` from `api`'s state."""
    admin = web.Application()

    def from_api(
        answer: Callable[[web.Application], Awaitable[web.StreamResponse]],
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await answer(api)

        return handler

    admin.router.add_get("/health/live", health.live)
    admin.router.add_get("/health/ready", from_api(health.readiness))
    admin.router.add_get("/metrics", health.metrics)
    return admin


async def start_admin(api: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve the admin app of `api` on `host:port` (0 picks a port); the caller cleans it up."""
    runner = web.AppRunner(admin_app(api), access_log=None, keepalive_timeout=KEEPALIVE_SECONDS)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    for address in runner.addresses:
        log.info("admin listening url=http://%s:%s (health, readiness, metrics)", *address[:2])
    return runner
