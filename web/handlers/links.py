"""Signed links: hand out a URL that works without the key until it expires, and follow one."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import web

from pipeline.errors import ImageNotFound, InvalidField, InvalidLink, NotFound
from pipeline.layout import ImageRef, valid_image_id, valid_user_id
from web.handlers.download import ORIGINAL, image_ref, locate, serve_object
from web.keys import CLIENTS, LINKS, SETTINGS

DEFAULT_SECONDS = 3600


async def create_link(request: web.Request) -> web.Response:
    """`GET /images/{image_id}/url?rendition=256|original&expires_in=s`: a link that needs no key.

    With `IMGSVC_LINKS=s3` it is an S3 presigned URL (downloads leave the API for S3 or a CDN);
    otherwise an HMAC-signed `/links/...` URL served by any web process.
    """
    user_id, image_id, ref = await image_ref(request, request.match_info["image_id"])
    settings = request.app[SETTINGS]
    rendition = request.query.get("rendition") or settings.imaging.renditions[0].name
    if rendition != ORIGINAL and settings.imaging.rendition(rendition) is None:
        names = [ORIGINAL, *(s.name for s in settings.imaging.renditions)]
        raise InvalidField(f"rendition must be one of {', '.join(names)}")
    seconds = _seconds(
        request.query.get("expires_in", str(DEFAULT_SECONDS)), settings.accounts.link_max_seconds
    )
    found = await locate(request, ref, rendition)
    if isinstance(found, web.Response):
        return found
    bucket, key = found
    if settings.accounts.links == "s3":
        url = await request.app[CLIENTS].s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds
        )
        expires = int(datetime.now(UTC).timestamp()) + seconds
    else:
        signature, expires = request.app[LINKS].sign(user_id, image_id, rendition, seconds)
        url = f"/links/{user_id}/{image_id}/{rendition}?{urlencode({'expires': expires, 'sig': signature})}"
    return web.json_response(
        {
            "url": url,
            "rendition": rendition,
            "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds"),
        }
    )


async def follow_link(request: web.Request) -> web.StreamResponse:
    """`GET /links/{user_id}/{image_id}/{rendition}?expires=&sig=`: no key; 403 if tampered or expired."""
    user_id, image_id, rendition = (request.match_info[k] for k in ("user_id", "image_id", "rendition"))
    if not (valid_user_id(user_id) and valid_image_id(image_id)):
        raise InvalidLink()
    request.app[LINKS].verify(
        user_id, image_id, rendition, request.query.get("expires", ""), request.query.get("sig", "")
    )
    found = await locate(request, ImageRef.of(user_id, image_id), rendition)
    if isinstance(found, web.Response):
        return found
    bucket, key = found
    try:
        return await serve_object(request, bucket, key)
    except NotFound:
        raise ImageNotFound() from None


def _seconds(raw: str, most: int) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidField(f"expires_in must be a whole number of seconds from 1 to {most}")
    return int(raw)
