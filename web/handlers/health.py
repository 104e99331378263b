"""Liveness (cheap, no dependencies) and readiness (storage, queue and tables reachable).

Each answer is computed from the API app's state, so the same handlers serve the API's port and
the admin listener (`web.admin`), where no client can crowd the probes out.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.core.errors import ServiceError
from web.keys import BACKEND, BACKGROUND, SETTINGS, STORAGE, TABLES
from web.middlewares import error_response


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format, no key: expose the port only where the scraper can reach it."""
    response = web.Response(body=generate_latest())
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    return await readiness(request.app)


async def readiness(app: web.Application) -> web.Response:
    """200 when both buckets, the queue and the images table answer and every background task of
    this process (the in-process consumer, the samplers) runs; 503 naming what did not."""
    failure = app[BACKGROUND].failure
    if failure is not None:
        return error_response(
            503,
            "not_ready",
            f"a background task of this process stopped: {failure}",
            checks={"background": failure},
        )
    settings = app[SETTINGS]
    storage = app[STORAGE]
    checks = {
        "source_bucket": storage.check_bucket(settings.aws.source_bucket),
        "dest_bucket": storage.check_bucket(settings.aws.dest_bucket),
        "queue": app[BACKEND].main.depth(),
        "database": app[TABLES].images.get({"user_id": "-", "image_id": "-"}, consistent=False),
        "disk": storage.check_space(probe=True),
    }
    results = await asyncio.gather(*checks.values(), return_exceptions=True)
    report = {
        name: _describe(r) if isinstance(r, BaseException) else r if isinstance(r, str) else "ok"
        for name, r in zip(checks, results, strict=True)
    }
    if all(v == "ok" for v in report.values()):
        return web.json_response({"status": "ready", "checks": report})
    return error_response(503, "not_ready", "a dependency is unreachable", checks=report)


def _describe(error: BaseException) -> str:
    return error.code if isinstance(error, ServiceError) else type(error).__name__
