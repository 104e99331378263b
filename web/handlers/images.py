"""Image status: what the pipeline has made of an upload so far."""

from __future__ import annotations

from aiohttp import web

from pipeline.errors import ImageNotFound, InvalidField, NotFound
from web import urls
from web.handlers.download import image_ref
from web.keys import SETTINGS, STATUS


async def image_status(request: web.Request) -> web.Response:
    """`GET /images/{image_id}?user_id=[&wait=s]`: `pending`, `ready` with rendition URLs, or `failed`.

    With `wait`, a pending image is long-polled for up to that many seconds (at most 20).
    """
    user_id, image_id, ref = await image_ref(request, request.match_info["image_id"])
    wait = _wait_seconds(request)
    try:
        status = await request.app[STATUS].wait(ref, wait)
    except NotFound:
        raise ImageNotFound() from None
    settings = request.app[SETTINGS]
    body: dict[str, object] = {
        "user_id": user_id,
        "image_id": image_id,
        "status": status.state,
        "bytes": status.source.size,
        "content_type": status.source.content_type,
        "etag": status.source.etag,
        "uploaded_at": status.source.last_modified.isoformat(),
        "original_url": urls.original_url(user_id, image_id),
    }
    if status.info:
        body.update({k: status.info[k] for k in ("format", "width", "height") if k in status.info})
    if status.state == "ready":
        body["renditions"] = {
            name: {
                "url": urls.thumbnail_url(user_id, image_id, name),
                "width": r.get("width"),
                "height": r.get("height"),
                "bytes": r.get("bytes"),
                "content_type": r.get("content_type"),
            }
            for name, r in status.renditions.items()
        }
    elif status.state == "failed":
        body["error"] = status.error
    response = web.json_response(body)
    if status.state == "pending":
        response.headers["Retry-After"] = str(settings.web.retry_after)
    return response


MAX_WAIT = 20.0


def _wait_seconds(request: web.Request) -> float:
    raw = request.query.get("wait", "0")
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidField("wait must be a number of seconds") from None
    if not 0 <= seconds <= MAX_WAIT:  # also refuses nan and inf
        raise InvalidField(f"wait must be between 0 and {MAX_WAIT:g} seconds")
    return seconds
