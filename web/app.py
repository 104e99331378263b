"""The app factory: `create_app(settings)` is what `python -m web` serves and what tests drive."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from config.settings import Settings
from pipeline.backends import open_backend
from pipeline.consumer.service import open_consumer
from pipeline.core import metrics
from pipeline.core.accounts import Accounts
from pipeline.core.errors import TooManyUploads, TooManyWaits
from pipeline.core.quotas import Usage
from pipeline.core.records import RecordStore
from pipeline.core.supervision import Supervisor
from pipeline.core.sweeper import ReservationSweeper
from pipeline.core.uploads import Uploads
from pipeline.webhooks.delivery import WebhookStore
from web.admission import UploadGate
from web.clients import Proxies
from web.idempotency import IdempotencyStore
from web.keys import (
    ACCOUNTS,
    BACKEND,
    BACKGROUND,
    CONSUMER,
    IDEMPOTENCY,
    LIMITER,
    LINKS,
    PROVISIONED,
    PROXIES,
    PUBLIC,
    RECORDS,
    SETTINGS,
    SITE_WATERMARK,
    STORAGE,
    SWEEPER,
    TABLES,
    UPLOAD_RATES,
    UPLOADER,
    UPLOADS,
    USAGE,
    VARIANT_POOL,
    VARIANTS,
    WAITS,
    WEBHOOKS,
)
from web.links import LinkSigner, shared_secret
from web.middlewares import error_middleware, metrics_middleware, request_id_middleware, send_request_id
from web.public import PublicUrls
from web.rates import Buckets
from web.routes import setup_routes
from web.server import deadline_middleware
from web.shares import UserShare
from web.throttle import FailureLimiter
from web.variants import VariantMaker
from web.watermarks import site_overlay

log = logging.getLogger(__name__)
#: JSON bodies are tiny; image bodies are streamed and never pass through this limit.
JSON_BODY_LIMIT = 64 * 1024


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[deadline_middleware, request_id_middleware, metrics_middleware, error_middleware],
        client_max_size=JSON_BODY_LIMIT,
    )
    app[SETTINGS] = settings
    app[SITE_WATERMARK] = site_overlay(settings.variants)  # checked as the process starts
    web_settings = settings.web
    app[PROXIES] = Proxies(web_settings.trusted_proxies, web_settings.forwarded_header)
    app[UPLOADS] = UploadGate(
        web_settings.upload_buffer_bytes,
        web_settings.user_max_uploads,
        web_settings.upload_buffer_wait,
        web_settings.retry_after,
    )
    app[WAITS] = UserShare(
        web_settings.user_max_waits,
        lambda limit: TooManyWaits(
            f"at most {limit} long polls of one user at a time; poll without wait, or wait for one",
            headers={"Retry-After": str(web_settings.retry_after)},
        ),
    )
    app[UPLOAD_RATES] = Buckets(
        web_settings.user_upload_megapixels_per_second,
        web_settings.user_upload_megapixels_burst,
        lambda wait: TooManyUploads(
            "this user's uploads would take the image workers more than "
            f"{web_settings.user_upload_megapixels_per_second:g} megapixels a second to decode; "
            "send fewer or smaller images for a moment",
            headers={"Retry-After": str(wait)},
        ),
    )
    app.on_response_prepare.append(send_request_id)
    app.cleanup_ctx.append(_backend)
    if settings.web.run_consumer:
        app.cleanup_ctx.append(_consumer)
    setup_routes(app)
    return app


async def _backend(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Provisioned here in embedded mode unless the entry point did it; the local backend always
    # provisions on open (idempotent); against AWS it is an explicit command.
    async with open_backend(
        settings, provision_first=not app.get(PROVISIONED, False), maintain=True
    ) as backend:
        tables = backend.tables
        accounts = settings.accounts
        app[TABLES] = tables
        app[ACCOUNTS] = Accounts(tables, key_cache_seconds=accounts.key_cache_seconds)
        app[LIMITER] = FailureLimiter(
            tables.throttle, accounts.auth_failures_allowed, accounts.auth_failure_window
        )
        app[BACKEND] = backend
        app[STORAGE] = backend.storage
        app[RECORDS] = RecordStore(tables.images, tables.users, backend.changes)
        app[USAGE] = Usage(tables.users, settings.accounts)
        app[UPLOADER] = Uploads(settings, backend.storage, app[RECORDS], app[USAGE], app[UPLOADS].admit)
        app[WEBHOOKS] = WebhookStore(tables.users)
        app[IDEMPOTENCY] = IdempotencyStore(tables.requests, retry_after=settings.web.retry_after)
        secret = await shared_secret(tables.config, accounts.signing_secret)
        app[LINKS] = LinkSigner(secret)
        app[PUBLIC] = PublicUrls(secret)
        background = app[BACKGROUND] = Supervisor()
        await background.start()
        background.spawn("queue-depth-sampler", metrics.sample_queues(backend.queues()), endless=True)
        sweeper = app[SWEEPER] = ReservationSweeper(backend, app[RECORDS], settings)
        background.spawn("reservation-sweeper", sweeper.run(), endless=True)
        variants = app[VARIANTS] = VariantMaker(
            backend.storage,
            app[RECORDS],
            app[USAGE],
            settings,
            pool=app.get(VARIANT_POOL),
            prepare_reads=backend.prepare_reads,
        )
        try:
            yield
        finally:
            await variants.close()
            await background.stop()


async def _consumer(app: web.Application) -> AsyncIterator[None]:
    """Run the consumer pool in this process (embedded mode), supervised: if it dies, readiness
    fails and says why. On shutdown it drains before its pool closes."""
    async with open_consumer(app[BACKEND], app[SETTINGS]) as consumer:
        app[CONSUMER] = consumer
        task = app[BACKGROUND].spawn("consumer", consumer.run())
        try:
            yield
        finally:
            consumer.stop()
            await asyncio.wait({task})
