"""Image records: one image's status, the caller's images page by page, and deletion."""

from __future__ import annotations

from aiohttp import web

from pipeline.core.errors import ImageNotFound, InvalidField
from pipeline.core.listing import Listing
from pipeline.core.removal import remove_image
from pipeline.core.untrusted import ascii_int, ascii_number
from web.identity import resolve_user
from web.keys import RECORDS, SETTINGS, STORAGE, WAITS
from web.serving import image_ref, not_ready
from web.views import describe, thumbnail_links

MAX_WAIT = 20.0
MAX_PAGE = 100


async def image_status(request: web.Request) -> web.Response:
    """`GET /images/{image_id}[?wait=s]`: `pending`, `ready` with rendition URLs, or `failed`.

    With `wait`, a pending image is long-polled for up to that many seconds (at most 20).
    """
    user_id, _, ref = await image_ref(request, request.match_info["image_id"])
    seconds = _wait_seconds(request)
    records = request.app[RECORDS]
    if seconds:
        with request.app[WAITS].hold(user_id):
            record = await records.wait(ref, seconds)
    else:
        record = await records.read(ref)
    if record is None:
        raise ImageNotFound()
    response = web.json_response(describe(request, user_id, record))
    if record.state in ("pending", "awaiting_upload"):
        response.headers["Retry-After"] = str(request.app[SETTINGS].web.retry_after)
    return response


async def image_info(request: web.Request) -> web.Response:
    """`GET /images/{image_id}/info`: what the original is and says about itself, read when its
    renditions were made (`pipeline.imaging.metadata`). Its owner's alone, GPS included: the key
    names the caller, and only the caller's images are found."""
    user_id, image_id, ref = await image_ref(request, request.match_info["image_id"])
    record = await request.app[RECORDS].read(ref)
    if record is None:
        raise ImageNotFound()
    if record.state != "ready":
        return not_ready(record, user_id, image_id, request.app[SETTINGS].web.retry_after)
    item = record.item
    info, placeholder = item.get("info", {}), item.get("placeholder") or {}
    body = {
        "image_id": image_id,
        "format": info.get("format"),
        "width": info.get("width"),
        "height": info.get("height"),
        "frames": info.get("frames", 1),
        "bytes": item.get("bytes"),
        # Images processed before this was read have none of it (`python -m pipeline reconcile`
        # does not redo them; a new upload of the same bytes does).
        **(item.get("metadata") or {"exif": None, "gps": None, "private": None}),
        "dominant_color": placeholder.get("color"),
        "blurhash": placeholder.get("blurhash"),
    }
    return web.json_response(body)


async def list_images(request: web.Request) -> web.Response:
    """`GET /images[?limit=&cursor=&sort=&order=&status=&q=]`: the caller's images, newest first
    unless `sort`/`order` say otherwise, filtered by `status` and `q` (`pipeline.core.listing`),
    with an opaque cursor."""
    user_id = await resolve_user(request)
    limit = _limit(request.query.get("limit", "20"))
    query = request.query
    listing = Listing.parse(query.get("sort"), query.get("order"), query.get("status"), query.get("q"))
    records, cursor = await request.app[RECORDS].page(user_id, limit, query.get("cursor") or None, listing)
    images = []
    for record in records:
        images.append(describe(request, user_id, record) | await thumbnail_links(request, user_id, record))
    return web.json_response({"images": images, "next_cursor": cursor})


async def delete_image(request: web.Request) -> web.Response:
    """`DELETE /images/{image_id}`: the original, every rendition and variant, and the record.
    Idempotent (204)."""
    _, _, ref = await image_ref(request, request.match_info["image_id"])
    app = request.app
    await remove_image(app[STORAGE], app[RECORDS], app[SETTINGS], ref)
    return web.Response(status=204)


def _limit(raw: str) -> int:
    limit = ascii_int(raw, 1, MAX_PAGE)
    if limit is None:
        raise InvalidField(f"limit must be a whole number from 1 to {MAX_PAGE}")
    return limit


def _wait_seconds(request: web.Request) -> float:
    seconds = ascii_number(request.query.get("wait", "0"), 0, MAX_WAIT)
    if seconds is None:
        raise InvalidField(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return seconds
