"""Completion webhooks: a user's URL is POSTed a signed JSON event when an image is ready or failed.

This module is what every delivery shares: the signature, where a user's webhook is kept, the
event of a finished record, the backoff and one POST. Consumers deliver durably from the webhook
outbox (`pipeline.webhooks.outbox`): an event survives a killed consumer and is delivered at least once.
The same result always has the same event id, so a receiver deduplicates a repeated delivery by it.

The signature follows the scheme Stripe and GitHub popularised, so receivers' helpers fit:
`Imgsvc-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>` with the user's
webhook secret; receivers check it with `verify` (or its ten lines in their own language).

Webhook URLs are untrusted input pointing our servers at the network: where they may point is
`pipeline.webhooks.urls` (checked again at every delivery: the rules may have changed since);
redirects are never followed. Receivers are untrusted too: only the status of their answer is
looked at, its body is never read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from config.settings import WebhookSettings
from pipeline.core import timing
from pipeline.core.errors import UnknownUser, WebhookAddressRefused
from pipeline.core.image_record import ImageRecord
from pipeline.core.items import ConditionFailed, Item, Present, Remove, Set, SetDefault
from pipeline.core.ports import ItemTable
from pipeline.core.timing import now_iso
from pipeline.webhooks.urls import PrivateAddress, PublicOnlyResolver, check_url

SIGNATURE_HEADER = "Imgsvc-Signature"
EVENT_HEADER = "Imgsvc-Event"
EVENT_ID_HEADER = "Imgsvc-Event-Id"
SECRET_PREFIX = "whsec_"
USER_AGENT = "image-service-webhooks/1"


# Signing ---------------------------------------------------------------------------------------------

# ASCII digits only: str.isdigit() and int() also take other scripts' digits ("١٢٣"); 15 digits keep
# the stamp a float can subtract from (a 400-digit one overflows) and last 30 million years.
_STAMP = re.compile(r"[0-9]{1,15}")
_MAX_SIGNATURE_HEADER = 4096


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `Imgsvc-Signature` header value for `body`, signed now (or at `timestamp`)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return f"t={stamp},v1={_mac(secret, stamp, body)}"


def verify(
    secret: str,
    header: str | bytes | None,
    body: bytes,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """True when `header` signs exactly `body` with `secret`, no more than `tolerance` s ago.

    Any malformed header (None, not ASCII, over 4 KiB, no or several `t=`, a `t=` that is not 1 to
    15 ASCII digits, a part without `=`) is False, never an exception: the header comes from whoever
    sent the request. Several `v1=` are fine (one is enough, as during a secret rotation); unknown
    keys are ignored. An empty secret verifies nothing, so a receiver whose secret is unset accepts
    no forgery.
    """
    fields = _signature_fields(header)
    if fields is None or not secret:
        return False
    stamps = fields.get("t", [])
    if len(stamps) != 1 or not _STAMP.fullmatch(stamps[0]):
        return False
    stamp = int(stamps[0])
    current = time.time() if now is None else now
    if not abs(current - stamp) <= tolerance:  # written so that a NaN `now` fails too
        return False
    try:
        expected = _mac(secret, stamp, body)
    except UnicodeEncodeError:  # a secret with lone surrogates, which nothing can have signed
        return False
    return any(hmac.compare_digest(expected, candidate) for candidate in fields.get("v1", []))


def _signature_fields(header: str | bytes | None) -> dict[str, list[str]] | None:
    """The `key=value` parts of a signature header by key, None if it is not one."""
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            return None
    # ASCII only, also because hmac.compare_digest raises TypeError on other text.
    if not isinstance(header, str) or len(header) > _MAX_SIGNATURE_HEADER or not header.isascii():
        return None
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, equals, value = part.strip(" \t").partition("=")
        if not name or not equals:
            return None
        fields.setdefault(name, []).append(value)
    return fields


# A user's webhook -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: str
    updated_at: str

    @classmethod
    def of(cls, item: Item) -> Webhook:
        """The webhook fields of a user's item."""
        return cls(str(item["webhook_url"]), str(item["webhook_secret"]), str(item["webhook_updated_at"]))

    def public(self) -> dict[str, Any]:
        """What its owner sees (the secret too: they need it to check signatures)."""
        return {"url": self.url, "secret": self.secret, "updated_at": self.updated_at}


class WebhookStore:
    """The webhook lives on the user's item in the users table: one read per event to find it."""

    def __init__(self, users: ItemTable) -> None:
        self._users = users

    async def get(self, user_id: str) -> Webhook | None:
        item = await self._users.get({"user_id": user_id})
        if not item or not item.get("webhook_url"):
            return None
        return Webhook.of(item)

    async def put(self, user_id: str, url: str, *, new_secret: bool = False) -> Webhook:
        """Set the URL; the secret is kept across changes unless `new_secret` (rotation)."""
        fresh = SECRET_PREFIX + secrets.token_urlsafe(32)
        secret = Set("webhook_secret", fresh) if new_secret else SetDefault("webhook_secret", fresh)
        try:
            item = await self._users.update(
                {"user_id": user_id},
                [Set("webhook_url", url), secret, Set("webhook_updated_at", now_iso())],
                Present("user_id"),
            )
        except ConditionFailed:
            raise UnknownUser() from None
        return Webhook.of(item)

    async def delete(self, user_id: str) -> None:
        """Remove URL and secret (idempotent): setting one again starts with a new secret."""
        try:
            await self._users.update(
                {"user_id": user_id},
                [Remove("webhook_url"), Remove("webhook_secret"), Remove("webhook_updated_at")],
                Present("user_id"),
            )
        except ConditionFailed:
            raise UnknownUser() from None


# Events and their delivery ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    owner: str
    id: str
    type: str
    body: bytes


def event_for(record: ImageRecord) -> Event:
    """`image.ready` or `image.failed`, with the record as `GET /images/{id}` describes it."""
    state = record.state
    digest = hashlib.sha256(
        f"{record.owner}/{record.image_id}/{record.source_etag}/{state}".encode()
    ).hexdigest()
    event_id = f"evt_{digest[:32]}"
    kind = f"image.{state}"
    payload = {
        "id": event_id,
        "type": kind,
        "created_at": now_iso(),
        "data": {"user_id": record.owner, **record.public()},
    }
    return Event(record.owner, event_id, kind, json.dumps(payload, separators=(",", ":")).encode())


def backoff(attempt: int, settings: WebhookSettings, rng: random.Random | None = None) -> float:
    """Seconds before attempt `attempt + 1` (`pipeline.core.timing.backoff`, the webhook settings')."""
    return timing.backoff(attempt, settings.backoff_base, settings.backoff_max, rng)


async def post(
    session: aiohttp.ClientSession, slots: asyncio.Semaphore, hook: Webhook, event: Event
) -> str | None:
    """POST `event` to `hook`, signed now, within one of `slots`: None on a 2xx answer (its status
    line and headers; the body is ignored), else what went wrong. `WebhookAddressRefused` when the
    host resolves only to addresses a webhook may not reach: no attempt can succeed."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event.type,
        EVENT_ID_HEADER: event.id,
        SIGNATURE_HEADER: sign(hook.secret, event.body),
    }
    async with slots:
        try:
            async with session.post(
                hook.url, data=event.body, headers=headers, allow_redirects=False
            ) as response:
                # The status is the whole answer: the body is never read, so one that is huge,
                # endless or trickling costs no memory and no time. A connection whose answer
                # has not fully arrived is closed rather than pooled, or the next POST on it
                # would read the leftovers as its own answer.
                if not response.content.is_eof():
                    response.close()
                return None if 200 <= response.status < 300 else f"HTTP {response.status}"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, PrivateAddress):
                raise WebhookAddressRefused(str(exc.os_error)) from None
            return f"{type(exc).__name__}: {exc}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"


@asynccontextmanager
async def open_session(settings: WebhookSettings) -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP session deliveries use: at most `concurrency` connections, every name resolved to
    public addresses only (unless private ones are allowed), `timeout` per POST."""
    resolver = None if settings.allow_private else PublicOnlyResolver()
    connector = aiohttp.TCPConnector(limit=settings.concurrency, resolver=resolver)
    timeout = aiohttp.ClientTimeout(total=settings.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        yield session


async def find_hook(store: WebhookStore, event: Event, allow_private: bool) -> Webhook | None:
    """The owner's webhook now, if it has one that may be called; `InvalidWebhookUrl` if its URL
    is one the rules refuse (no retry can help), `ServiceError` if the table cannot say."""
    hook = await store.get(event.owner)
    if hook is not None:
        check_url(hook.url, allow_private)
    return hook
