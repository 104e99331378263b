"""`Idempotency-Key` on the upload routes: a retried upload gets the first answer, once.

As in Stripe's API and the IETF draft (draft-ietf-httpapi-idempotency-key-header): the client
names an upload with a key of its choosing, and for 24 hours the same key from the same user
means the same upload. The first request claims the key in the `requests` table (a conditional
write, so every web process sees the claim), uploads, and saves its answer there. A request
with the key afterwards gets that answer again, marked `Idempotent-Replayed: true`: the same
image id and status, nothing stored or charged again. Its body is still read (HTTP needs it
consumed) and hashed, so the same key on another route or with other bytes is a 422, not a
silent replay of something else.

A request that arrives while the first is still uploading gets 409 with `Retry-After`. An
upload that fails saves nothing: its key is released and a retry is a new attempt (what failed
stored nothing). A claim is a lease renewed while the upload runs, so a web process that dies
mid-upload frees its keys within `LEASE_SECONDS`.

The key is kept only as its SHA-256 with the user id, so a client's key can be any printable
ASCII up to 255 characters without bounding the item's size by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pipeline.core.errors import IdempotencyKeyInUse, IdempotencyKeyReused, InvalidIdempotencyKey
from pipeline.core.items import AllOf, AnyOf, AtMost, ConditionFailed, Equals, Missing, Remove, Set
from pipeline.core.ports import ItemTable

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
#: How long a key names its upload.
KEEP_SECONDS = 24 * 3600
#: How long a claim outlives the process holding it (renewed every third of it while it runs).
LEASE_SECONDS = 60
_KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True)
class Claim:
    """This request holds the key: it uploads, then saves its answer (or releases the key)."""

    item_id: str
    token: str


@dataclass(frozen=True)
class Answer:
    """The first request's answer, to give again."""

    status: int
    body: dict[str, Any]
    body_sha256: str

    def response(self) -> web.Response:
        response = web.json_response(self.body, status=self.status)
        if location := self.body.get("status_url"):
            response.headers["Location"] = str(location)
        response.headers[REPLAYED] = "true"
        return response


def key_of(request: web.Request) -> str | None:
    """The request's idempotency key, None without one; 400 if it is malformed."""
    values = request.headers.getall(HEADER, [])
    if not values:
        return None
    if len(values) > 1 or not _KEY_RE.fullmatch(values[0]):
        raise InvalidIdempotencyKey()
    return values[0]


def fingerprint(*parts: str | bytes) -> str:
    """What the same request must repeat: its route and whatever names the image it makes."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()


class IdempotencyStore:
    """Claims, answers and releases of idempotency keys, in a table every web process shares."""

    def __init__(
        self,
        table: ItemTable,
        *,
        keep: int = KEEP_SECONDS,
        lease: float = LEASE_SECONDS,
        retry_after: int = 2,
    ) -> None:
        self._table = table
        self._keep = keep
        self._lease = lease
        self._retry_after = retry_after

    async def begin(self, user_id: str, key: str, route: str) -> Claim | Answer:
        """Claim `key` for this request, or return the answer it already has; 409 while another
        request holds it, 422 if it was given to another route."""
        item_id = f"{user_id}#{hashlib.sha256(key.encode()).hexdigest()}"
        for _ in range(3):  # a claim released between our write and our read: try again
            now = round(time.time(), 3)
            token = secrets.token_hex(16)
            claim = {
                "id": item_id,
                "state": "pending",
                "route": route,
                "token": token,
                "lease_until": now + self._lease,
                "expires_at": int(now) + self._keep,
            }
            free = AnyOf(
                (
                    Missing("id"),
                    AtMost("expires_at", now),  # DynamoDB's TTL deletes late: expired is free
                    AllOf((Equals("state", "pending"), AtMost("lease_until", now))),  # holder died
                )
            )
            try:
                await self._table.put(claim, free)
                return Claim(item_id, token)
            except ConditionFailed:
                found = await self._table.get({"id": item_id})
            if found is None:
                continue
            if found.get("route") != route:
                raise IdempotencyKeyReused()
            if found.get("state") == "done":
                return Answer(int(found["status"]), json.loads(str(found["body"])), str(found["body_sha256"]))
            raise IdempotencyKeyInUse(headers={"Retry-After": str(self._retry_after)})
        raise IdempotencyKeyInUse(headers={"Retry-After": str(self._retry_after)})

    @contextlib.asynccontextmanager
    async def held(self, claim: Claim) -> AsyncIterator[None]:
        """Keep the claim alive while the body of the `async with` runs; release it if that
        fails (the answer is saved by `finish`, inside the block)."""
        renewer = asyncio.create_task(self._renew(claim))
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._table.delete({"id": claim.item_id}, Equals("token", claim.token)))
            raise
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def finish(self, claim: Claim, status: int, body: dict[str, Any], body_sha256: str) -> None:
        """Save the answer under the key. A claim lost meanwhile (the lease ran out while this
        process stalled) keeps the answer that took over; the upload itself stands either way."""
        try:
            await self._table.update(
                {"id": claim.item_id},
                [
                    Set("state", "done"),
                    Set("status", status),
                    Set("body", json.dumps(body, separators=(",", ":"))),
                    Set("body_sha256", body_sha256),
                    Remove("token"),
                    Remove("lease_until"),
                ],
                Equals("token", claim.token),
            )
        except ConditionFailed:
            log.warning("idempotency claim lost before its answer was saved item=%s", claim.item_id)

    async def _renew(self, claim: Claim) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                await self._table.update(
                    {"id": claim.item_id},
                    [Set("lease_until", round(time.time(), 3) + self._lease)],
                    Equals("token", claim.token),
                )
            except ConditionFailed:
                return
            except Exception as exc:  # a missed renewal is retried; the lease has room for two
                log.warning("idempotency lease not renewed item=%s error=%r", claim.item_id, exc)


async def once(
    request: web.Request,
    store: IdempotencyStore,
    user_id: str,
    route: str,
    upload: Callable[[], Awaitable[tuple[web.Response, str]]],
    body_sha256: Callable[[], Awaitable[str]],
) -> web.Response:
    """Run `upload` (which answers and returns the SHA-256 of the bytes it stored) at most once
    per idempotency key; a replay reads the body through `body_sha256` to compare it."""
    key = key_of(request)
    if key is None:
        response, _ = await upload()
        return response
    begun = await store.begin(user_id, key, route)
    if isinstance(begun, Answer):
        if await body_sha256() != begun.body_sha256:
            raise IdempotencyKeyReused()
        return begun.response()
    async with store.held(begun):
        response, digest = await upload()
    assert response.text is not None  # uploads answer JSON
    try:
        await store.finish(begun, response.status, json.loads(response.text), digest)
    except Exception as exc:  # the upload stands; a retry within the lease gets 409, later a new upload
        log.warning("idempotency answer not saved item=%s error=%r", begun.item_id, exc)
    return response
