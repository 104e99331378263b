"""Image records: one image's status, the caller's images page by page, and deletion."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pipeline.errors import ImageNotFound, InvalidField
from pipeline.records import ImageRecord
from pipeline.untrusted import ascii_int, ascii_number
from web import urls
from web.handlers.download import image_ref
from web.handlers.links import link_to
from web.identity import resolve_user
from web.keys import RECORDS, SETTINGS, STORAGE, USAGE

MAX_WAIT = 20.0
MAX_PAGE = 100
#: How long a listing's thumbnail links work (capped by the link maximum): a gallery shows a
#: thumbnail once, so the link only has to outlive the page load, with room for a slow network.
THUMBNAIL_LINK_SECONDS = 3600


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
    images = []
    for record in records:
        body = describe(user_id, record)
        if (link := await thumbnail_link(request, user_id, record)) is not None:
            body["thumbnail_url"] = link
        images.append(body)
    return web.json_response({"images": images, "next_cursor": cursor})


async def thumbnail_link(request: web.Request, user_id: str, record: ImageRecord) -> str | None:
    """A link to the image's first rendition that needs no key, or None before it is made.

    `<img>` cannot send the key; with this in the listing a gallery needs no request per image.
    The link is the one `GET /images/{id}/url` makes (`link_to`).
    """
    settings = request.app[SETTINGS]
    rendition = settings.imaging.renditions[0].name
    made = record.renditions.get(rendition)  # empty unless ready
    if made is None:
        return None
    seconds = min(THUMBNAIL_LINK_SECONDS, settings.accounts.link_max_seconds)
    url, _ = await link_to(
        request,
        user_id,
        record.image_id,
        rendition,
        settings.aws.dest_bucket,
        str(made["key"]),
        record.source_etag,
        seconds,
    )
    return url


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
    limit = ascii_int(raw, 1, MAX_PAGE)
    if limit is None:
        raise InvalidField(f"limit must be a whole number from 1 to {MAX_PAGE}")
    return limit


def _wait_seconds(request: web.Request) -> float:
    seconds = ascii_number(request.query.get("wait", "0"), 0, MAX_WAIT)
    if seconds is None:
        raise InvalidField(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return seconds
