"""Image records: one image's status, the caller's images page by page, and deletion."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pipeline.errors import ImageNotFound, InvalidField
from pipeline.records import ImageRecord
from web import urls
from web.handlers.download import image_ref
from web.identity import resolve_user
from web.keys import RECORDS, SETTINGS, STORAGE, USAGE

MAX_WAIT = 20.0
MAX_PAGE = 100


def describe(user_id: str, record: ImageRecord) -> dict[str, Any]:
    """An image as clients see it: the record's public fields and where to fetch things."""
    body: dict[str, Any] = {"user_id": user_id, **record.public()}
    body["status_url"] = urls.status_url(user_id, record.image_id)
    body["original_url"] = urls.original_url(user_id, record.image_id)
    if record.state == "ready":
        body["renditions"] = {
            name: {
                "url": urls.thumbnail_url(user_id, record.image_id, name),
                **{k: r.get(k) for k in ("width", "height", "bytes", "content_type")},
            }
            for name, r in record.renditions.items()
        }
    return body


async def image_status(request: web.Request) -> web.Response:
    """`GET /images/{image_id}[?wait=s]`: `pending`, `ready` with rendition URLs, or `failed`.

    With `wait`, a pending image is long-polled for up to that many seconds (at most 20).
    """
    user_id, _, ref = await image_ref(request, request.match_info["image_id"])
    record = await request.app[RECORDS].wait(ref, _wait_seconds(request))
    if record is None:
        raise ImageNotFound()
    response = web.json_response(describe(user_id, record))
    if record.state == "pending":
        response.headers["Retry-After"] = str(request.app[SETTINGS].web.retry_after)
    return response


async def list_images(request: web.Request) -> web.Response:
    """`GET /images[?limit=&cursor=]`: the caller's images, newest first, with an opaque cursor."""
    user_id = await resolve_user(request)
    limit = _limit(request.query.get("limit", "20"))
    records, cursor = await request.app[RECORDS].page(user_id, limit, request.query.get("cursor") or None)
    return web.json_response({"images": [describe(user_id, r) for r in records], "next_cursor": cursor})


async def delete_image(request: web.Request) -> web.Response:
    """`DELETE /images/{image_id}`: the original, every rendition and the record. Idempotent (204).

    The original goes first, so a message already in flight for the image finds nothing to
    process and is acknowledged; the record goes last, so a retried delete still finds its parts.
    """
    user_id, _, ref = await image_ref(request, request.match_info["image_id"])
    settings = request.app[SETTINGS]
    storage = request.app[STORAGE]
    await storage.delete_many(settings.aws.source_bucket, [ref.source_key])
    await storage.delete_many(
        settings.aws.dest_bucket, [ref.rendition_key(spec) for spec in settings.imaging.renditions]
    )
    old = await request.app[RECORDS].delete(ref)
    if old is not None:
        await request.app[USAGE].release(user_id, old.bytes, 1)
    return web.Response(status=204)


def _limit(raw: str) -> int:
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidField("limit must be a whole number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidField(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def _wait_seconds(request: web.Request) -> float:
    raw = request.query.get("wait", "0")
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidField("wait must be a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:  # also refuses nan and inf
        raise InvalidField(f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return seconds
