"""Completion webhooks: a user's URL is POSTed a signed JSON event when an image is ready or failed.

Delivery never blocks the consumer: the job hands the finished record over (`submit` does not
await) and acknowledges its message; each event is then delivered by a task of its own, retried
with exponential backoff, with at most `concurrency` POSTs in progress per process. The events
live in the consumer's memory, so a consumer that is *killed* loses the retries it still owed
(a stopping one keeps delivering for `drain_timeout`); the image record stays the source of
truth, and a receiver that missed something catches up with `GET /images`. The same result
always has the same event id, so a receiver deduplicates a duplicate delivery by it.

The signature follows the scheme Stripe and GitHub popularised, so receivers' helpers fit:
`Imgsvc-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>` with the user's
webhook secret; receivers check it with `verify` (or its ten lines in their own language).

Webhook URLs are untrusted input pointing our servers at the network: unless
`IMGSVC_WEBHOOK_ALLOW_PRIVATE` is set, loopback, private, link-local and other non-global
addresses are refused when the URL is set *and* when each delivery resolves its host (so a name
that later resolves inward is refused too), however the address is spelled (see `check_url`), and
redirects are never followed. Receivers are untrusted too: only the status of their answer is
looked at, its body is never read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from config.settings import WebhookSettings
from pipeline import metrics
from pipeline.errors import InvalidWebhookUrl, UnknownUser
from pipeline.records import ImageRecord
from pipeline.tables import ConditionFailed, Item, Table

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Imgsvc-Signature"
EVENT_HEADER = "Imgsvc-Event"
EVENT_ID_HEADER = "Imgsvc-Event-Id"
SECRET_PREFIX = "whsec_"
MAX_URL_LENGTH = 2048
USER_AGENT = "image-service-webhooks/1"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


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


# Where a webhook may point ----------------------------------------------------------------------------

# Not globally reachable, though the `ipaddress` tables of the Pythons we support say otherwise (they
# lag the IANA registries), or reachable only through a translator that could lead anywhere inside.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15", "240.0.0.0/4",
        "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
        "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10",
    )
)  # fmt: skip
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
_LOOPBACK_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "localhost4", "localhost4.localdomain4", "localhost6",
     "localhost6.localdomain6", "ip6-localhost", "ip6-loopback"}
)  # fmt: skip
_ONLY_IF_ALLOWED = "(allowed only with IMGSVC_WEBHOOK_ALLOW_PRIVATE=true)"
_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_INET_ATON_PART = re.compile(r"0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*")

_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a packet to `ip` may be delivered to (mapped, 6to4, Teredo, NAT64)."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)]
    return []


def _is_public_ip(ip: _IPAddress) -> bool:
    if ip.is_multicast or not ip.is_global or any(ip in net for net in _NOT_GLOBAL):
        return False
    return isinstance(ip, ipaddress.IPv4Address) or all(map(_is_public_ip, _embedded_ipv4(ip)))


def _is_public(address: str) -> bool:
    """True for a globally reachable unicast address, also through any IPv4 address it embeds."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return _is_public_ip(ip)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """`host` read as libc's `inet_aton` and browsers read a numeric host, None if it is no address.

    One to four parts, each decimal, octal (leading 0) or hex (0x); the last fills the bytes left.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_ATON_PART.fullmatch(part) for part in parts):
        return None
    values = [
        int(part, 16) if part.startswith("0x") else int(part, 8 if part[0] == "0" else 10) for part in parts
    ]
    *leading, last = values
    if any(value > 0xFF for value in leading) or last >= 1 << 8 * (5 - len(parts)):
        return None
    return ipaddress.IPv4Address(sum(v << 8 * (3 - i) for i, v in enumerate(leading)) + last)


def _address_of(host: str) -> _IPAddress | str:
    """The address a URL's host (as aiohttp will connect to it) spells, or the host name itself.

    A host whose last label is a number is an IPv4 address to browsers and libc however it is written
    (`2130706433`, `0x7f.1`, `0177.0.0.1.`), so it is never passed on to DNS: it is read the same way,
    and is invalid if it is no address at all.
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise InvalidWebhookUrl(f"url host {host!r} is not a valid IPv6 address") from None
    name = host.lower().removesuffix(".")
    if not _NAME.fullmatch(name) or len(name) > 253:
        raise InvalidWebhookUrl(f"url host {host!r} is not a valid host name")
    if not _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        return name
    address = _inet_aton(name)
    if address is None:
        raise InvalidWebhookUrl(f"url host {host!r} looks like an IPv4 address but is not one")
    return address


def check_url(url: object, allow_private: bool) -> str:
    """`url` if a webhook may point there, else `InvalidWebhookUrl` saying why.

    The host is judged as aiohttp will connect to it, after IDNA mapping (127.0.0.1 written in
    fullwidth digits and ideographic full stops is 127.0.0.1, which aiohttp connects to without asking
    the resolver). IPv4 addresses must be written as four decimal numbers: every other spelling
    (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`, `127.0.0.1.`) is refused, whether the address
    is public or not and whatever `allow_private` says, because parsers disagree about what such a
    host means (one reads `0177.0.0.1` as octal, another as 177.0.0.1) and aiohttp refuses to connect
    to most of them. IPv6 literals are unambiguous, so they are accepted however written, and one that
    embeds an IPv4 address (mapped, 6to4, Teredo, NAT64 `64:ff9b::/96`) is judged by that address too.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"url must be a string of 1 to {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
        host = URL(url).raw_host  # what the client will connect to, IDNA-mapped
    except (ValueError, UnicodeError) as exc:
        raise InvalidWebhookUrl(f"url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not host:
        raise InvalidWebhookUrl("url must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("url must not carry credentials; sign-check the body instead")
    if parts.fragment:
        raise InvalidWebhookUrl("url must not have a #fragment")
    address = _address_of(host)
    if not allow_private:
        if isinstance(address, str):
            if address in _LOOPBACK_NAMES or address.endswith(".localhost"):
                raise InvalidWebhookUrl(f"url host {host!r} names this machine {_ONLY_IF_ALLOWED}")
        elif not _is_public_ip(address):
            means = "" if str(address) == host else f" ({address})"
            raise InvalidWebhookUrl(
                f"url host {host!r}{means} is a loopback, private, link-local or other non-public "
                f"address {_ONLY_IF_ALLOWED}"
            )
    if isinstance(address, ipaddress.IPv4Address) and str(address) != host:
        raise InvalidWebhookUrl(
            f"url host {host!r} is the IPv4 address {address} spelled unusually; write it as {address}"
        )
    return url


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then keeps only global addresses.

    Checked at every connection, so a host name that resolves inward (DNS rebinding, an internal
    name) is refused even though its URL looked fine when it was set.
    """

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = [r for r in await self._inner.resolve(host, port, family) if _is_public(r["host"])]
        if not found:
            raise OSError(f"{host} resolves to no public address; refusing to deliver a webhook there")
        return found

    async def close(self) -> None:
        await self._inner.close()


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

    def __init__(self, users: Table) -> None:
        self._users = users

    async def get(self, user_id: str) -> Webhook | None:
        item = await self._users.get({"user_id": user_id})
        if not item or not item.get("webhook_url"):
            return None
        return Webhook.of(item)

    async def put(self, user_id: str, url: str, *, new_secret: bool = False) -> Webhook:
        """Set the URL; the secret is kept across changes unless `new_secret` (rotation)."""
        fresh = SECRET_PREFIX + secrets.token_urlsafe(32)
        secret_expr = ":secret" if new_secret else "if_not_exists(webhook_secret, :secret)"
        try:
            item = await self._users.update(
                {"user_id": user_id},
                f"SET webhook_url = :url, webhook_secret = {secret_expr}, webhook_updated_at = :now",
                "attribute_exists(user_id)",
                values={":url": url, ":secret": fresh, ":now": _now()},
            )
        except ConditionFailed:
            raise UnknownUser() from None
        return Webhook.of(item)

    async def delete(self, user_id: str) -> None:
        """Remove URL and secret (idempotent): setting one again starts with a new secret."""
        try:
            await self._users.update(
                {"user_id": user_id},
                "REMOVE webhook_url, webhook_secret, webhook_updated_at",
                "attribute_exists(user_id)",
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
        "created_at": _now(),
        "data": {"user_id": record.owner, **record.public()},
    }
    return Event(record.owner, event_id, kind, json.dumps(payload, separators=(",", ":")).encode())


def backoff(attempt: int, settings: WebhookSettings, rng: random.Random | None = None) -> float:
    """Seconds before attempt `attempt + 1`: exponential, capped, with ±20% jitter."""
    delay = min(settings.backoff_max, settings.backoff_base * 2.0 ** (attempt - 1))
    jitter = rng.uniform(0.8, 1.2) if rng else random.uniform(0.8, 1.2)
    return delay * jitter


class Dispatcher:
    """Delivers events in the background; `submit` returns at once."""

    def __init__(
        self, store: WebhookStore, settings: WebhookSettings, session: aiohttp.ClientSession
    ) -> None:
        self._store = store
        self._settings = settings
        self._session = session
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(self, record: ImageRecord) -> None:
        """Queue the event of a finished record; never waits, drops (counted) if the backlog is full."""
        if record.state == "pending":
            return
        if len(self._tasks) >= self._settings.max_pending:
            log.warning("webhook backlog full, event dropped image_id=%s", record.image_id)
            metrics.WEBHOOK_DELIVERIES.labels("dropped").inc()
            return
        task = asyncio.create_task(self._deliver(event_for(record)), name=f"webhook {record.image_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` s for pending deliveries; cancel the rest. Returns how many were cut."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        cut = list(self._tasks)
        for task in cut:
            task.cancel()
        if cut:
            await asyncio.gather(*cut, return_exceptions=True)
            log.warning("webhook deliveries cut short at shutdown count=%d", len(cut))
            metrics.WEBHOOK_DELIVERIES.labels("dropped").inc(len(cut))
        return len(cut)

    async def _deliver(self, event: Event) -> None:
        try:
            hook = await self._store.get(event.owner)
        except Exception as exc:  # the user table unreachable: the event cannot be addressed
            log.warning("webhook lookup failed event_id=%s error=%r", event.id, exc)
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            return
        if hook is None:
            return
        try:
            check_url(hook.url, self._settings.allow_private)  # the rules may have changed since
        except InvalidWebhookUrl as exc:  # no retry can help: counted and logged, not attempted
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            log.warning("webhook refused event_id=%s url=%s error=%s", event.id, hook.url, exc.message)
            return
        attempts = self._settings.attempts
        for attempt in range(1, attempts + 1):
            error = await self._post(hook, event)
            if error is None:
                metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
                log.info("webhook delivered event_id=%s type=%s attempt=%d", event.id, event.type, attempt)
                return
            if attempt == attempts:
                break
            metrics.WEBHOOK_DELIVERIES.labels("retried").inc()
            log.info("webhook attempt failed event_id=%s attempt=%d error=%s", event.id, attempt, error)
            await asyncio.sleep(backoff(attempt, self._settings))
        metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
        log.warning("webhook failed event_id=%s attempts=%d error=%s", event.id, attempts, error)

    async def _post(self, hook: Webhook, event: Event) -> str | None:
        """None on a 2xx answer (its status line and headers; the body is ignored), else what went wrong."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_HEADER: event.type,
            EVENT_ID_HEADER: event.id,
            SIGNATURE_HEADER: sign(hook.secret, event.body),
        }
        async with self._slots:
            try:
                async with self._session.post(
                    hook.url, data=event.body, headers=headers, allow_redirects=False
                ) as response:
                    # The status is the whole answer: the body is never read, so one that is huge,
                    # endless or trickling costs no memory and no time. A connection whose answer
                    # has not fully arrived is closed rather than pooled, or the next POST on it
                    # would read the leftovers as its own answer.
                    if not response.content.is_eof():
                        response.close()
                    return None if 200 <= response.status < 300 else f"HTTP {response.status}"
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                return f"{type(exc).__name__}: {exc}"


@asynccontextmanager
async def open_dispatcher(users: Table, settings: WebhookSettings) -> AsyncIterator[Dispatcher]:
    """A dispatcher with its own HTTP session; on exit it delivers for up to `drain_timeout` s."""
    resolver = None if settings.allow_private else PublicOnlyResolver()
    connector = aiohttp.TCPConnector(limit=settings.concurrency, resolver=resolver)
    timeout = aiohttp.ClientTimeout(total=settings.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        dispatcher = Dispatcher(WebhookStore(users), settings, session)
        try:
            yield dispatcher
        finally:
            await dispatcher.drain(settings.drain_timeout)
