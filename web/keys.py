"""Every object the app shares, under a typed key; handlers read state only through these."""

from __future__ import annotations

from aiohttp import web

from config.settings import Settings
from pipeline.consumer.loop import Consumer
from pipeline.core.accounts import Accounts
from pipeline.core.ports import Backend, ObjectStore, TableSet
from pipeline.core.quotas import Usage
from pipeline.core.records import RecordStore
from pipeline.core.supervision import Supervisor
from pipeline.core.sweeper import ReservationSweeper
from pipeline.core.uploads import Uploads
from pipeline.imaging.workers import WorkerPool
from pipeline.webhooks.delivery import WebhookStore
from web.admission import UploadGate
from web.clients import Proxies
from web.idempotency import IdempotencyStore
from web.links import LinkSigner
from web.public import PublicUrls
from web.rates import Buckets
from web.shares import UserShare
from web.throttle import FailureLimiter
from web.variants import VariantMaker
from web.watermarks import Overlay

SETTINGS = web.AppKey("settings", Settings)
BACKEND = web.AppKey("backend", Backend)
STORAGE = web.AppKey("storage", ObjectStore)
RECORDS = web.AppKey("records", RecordStore)
USAGE = web.AppKey("usage", Usage)
LINKS = web.AppKey("links", LinkSigner)
CONSUMER = web.AppKey("consumer", Consumer)
TABLES = web.AppKey("tables", TableSet)
ACCOUNTS = web.AppKey("accounts", Accounts)
LIMITER = web.AppKey("limiter", FailureLimiter)
WEBHOOKS = web.AppKey("webhooks", WebhookStore)
BACKGROUND = web.AppKey("background", Supervisor)
UPLOADS = web.AppKey("uploads", UploadGate)
#: Stores every upload (`pipeline.core.uploads`), admitted through `UPLOADS`.
UPLOADER = web.AppKey("uploader", Uploads)
#: Releases presigned uploads' reservations never used (`pipeline.core.sweeper`).
SWEEPER = web.AppKey("sweeper", ReservationSweeper)
#: Seals and opens public images' URL tokens (`web.public`).
PUBLIC = web.AppKey("public", PublicUrls)
#: Each user's decode budget for uploads (megapixels a second, with a burst).
UPLOAD_RATES = web.AppKey("upload_rates", Buckets)
#: Each user's share of the long polls waiting in this process.
WAITS = web.AppKey("waits", UserShare)
#: The proxies whose forwarding headers name the client (`IMGSVC_TRUSTED_PROXIES`).
PROXIES = web.AppKey("proxies", Proxies)
VARIANTS = web.AppKey("variants", VariantMaker)
#: The deployment's watermark (`watermark=site`), read at start; None without one.
SITE_WATERMARK: web.AppKey[Overlay | None] = web.AppKey("site_watermark")
IDEMPOTENCY = web.AppKey("idempotency", IdempotencyStore)
#: A worker pool for variants that the app uses but does not own (tests share one per session).
VARIANT_POOL = web.AppKey("variant_pool", WorkerPool)
#: Set by an entry point that provisioned the embedded endpoint itself before starting the app.
PROVISIONED = web.AppKey("provisioned", bool)
