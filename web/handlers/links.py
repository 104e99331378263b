"""Signed links: hand out a URL that works without the key until it expires, and follow one."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web
from multidict import MultiDict

from pipeline.core.errors import (
    ImageChanged,
    ImageNotFound,
    ImageNotPublic,
    InvalidField,
    InvalidLink,
    NotFound,
)
from pipeline.core.layout import ImageRef, valid_image_id, valid_user_id
from pipeline.core.untrusted import ascii_int
from pipeline.imaging.variants import PARAMETERS as VARIANT_PARAMETERS
from pipeline.imaging.variants import parse_link_name, parse_variant
from web.keys import LINKS, PUBLIC, RECORDS, SETTINGS
from web.links import version_of
from web.originals import serve_original, stripped_copy
from web.public import variant_url
from web.serving import CACHE_CONTROL, ORIGINAL, image_ref, locate, not_ready, serve_object, serve_variant
from web.uploading import parse_public
from web.views import link_to, public_urls, signed_link

DEFAULT_SECONDS = 3600


async def create_link(request: web.Request) -> web.Response:
    """`GET /images/{image_id}/url?rendition=256|original&expires_in=s`: a link that needs no key.

    With `IMGSVC_LINKS=s3` it is an S3 presigned URL (downloads leave the API for S3 or a CDN);
    otherwise an HMAC-signed `/links/...` URL served by any web process, valid for the upload it
    was made for only (a replaced or re-created image does not answer old links).
    """
    user_id, image_id, ref = await image_ref(request, request.match_info["image_id"])
    settings = request.app[SETTINGS]
    if parse_public(request.query.get("public")):
        return await _public_link(request, user_id, ref)
    most = settings.accounts.link_max_seconds
    seconds = ascii_int(request.query.get("expires_in", str(DEFAULT_SECONDS)), 1, most)
    if seconds is None:
        raise InvalidField(f"expires_in must be a whole number of seconds from 1 to {most}")
    # A multidict: a repeated parameter is refused (400), never signed with one of its values.
    variant = MultiDict((name, value) for name, value in request.query.items() if name in VARIANT_PARAMETERS)
    if variant:
        return await _variant_link(request, user_id, image_id, ref, variant, seconds)
    rendition = request.query.get("rendition") or settings.imaging.renditions[0].name
    if rendition != ORIGINAL and settings.imaging.rendition(rendition) is None:
        names = [ORIGINAL, *(s.name for s in settings.imaging.renditions)]
        raise InvalidField(f"rendition must be one of {', '.join(names)}")
    found = await locate(request, ref, rendition)
    if isinstance(found, web.Response):
        return found
    if rendition == ORIGINAL and stripped_copy(settings, found.record) is not None:
        # Served by the API, as variant links are: the stripped copy may not be made yet.
        url, expires = signed_link(request, user_id, image_id, rendition, found.source_etag, seconds)
    else:
        url, expires = await link_to(
            request, user_id, image_id, rendition, found.bucket, found.key, found.source_etag, seconds
        )
    return _link_answer(url, expires, rendition=rendition)


async def _variant_link(
    request: web.Request, user_id: str, image_id: str, ref: ImageRef, query: MultiDict[str], seconds: int
) -> web.Response:
    """A signed link to a variant (with the same parameters, or a preset): always served by the
    API (not S3-presigned), since the variant may not be made until the link is first followed."""
    if "rendition" in request.query:
        raise InvalidField("give a rendition or variant parameters, not both")
    settings = request.app[SETTINGS]
    # `format=auto` stays auto in the link: each browser following it gets what it accepts.
    spec, negotiated = parse_variant(query, "", settings.variants)
    record = await request.app[RECORDS].read(ref)
    if record is None:
        raise ImageNotFound()
    if record.state != "ready":
        return not_ready(record, user_id, image_id, settings.web.retry_after)
    name = spec.link_name(negotiated)
    url, expires = signed_link(request, user_id, image_id, name, record.source_etag, seconds)
    return _link_answer(url, expires, variant=name)


async def _public_link(request: web.Request, user_id: str, ref: ImageRef) -> web.Response:
    """`?public=true`: the image's public URL of a rendition, the original, a preset, or a variant
    (signed for exactly its parameters: anonymous clients never choose sizes). No expiry: the
    URL works while the image is public and this upload is its original."""
    settings = request.app[SETTINGS]
    record = await request.app[RECORDS].read(ref)
    if record is None:
        raise ImageNotFound()
    urls = public_urls(request, record)
    if urls is None:
        raise ImageNotPublic()
    variant = MultiDict((name, value) for name, value in request.query.items() if name in VARIANT_PARAMETERS)
    if variant and "rendition" in request.query:
        raise InvalidField("give a rendition or variant parameters, not both")
    if variant and "preset" not in variant:
        if record.state != "ready":
            return not_ready(record, user_id, record.image_id, settings.web.retry_after)
        spec, negotiated = parse_variant(variant, "", settings.variants)
        base = urls["original"].rsplit("/", 1)[0]
        url = variant_url(base, request.app[PUBLIC], spec, negotiated)
        return web.json_response({"url": url, "variant": spec.link_name(negotiated), "public": True})
    name = variant.get("preset") or request.query.get("rendition") or settings.imaging.renditions[0].name
    if name not in urls:
        raise InvalidField(f"public URLs are for {', '.join(urls)}")
    return web.json_response({"url": urls[name], "rendition": name, "public": True})


def _link_answer(url: str, expires: int, **what: str) -> web.Response:
    return web.json_response(
        {"url": url, **what, "expires_at": datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds")}
    )


async def follow_link(request: web.Request) -> web.StreamResponse:
    """`GET /links/{user_id}/{image_id}/{rendition}?v=&expires=&sig=`: no key; 403 if tampered or
    expired, 404 `image_changed` once the image was replaced or deleted since the link was made."""
    user_id, image_id, rendition = (request.match_info[k] for k in ("user_id", "image_id", "rendition"))
    if not (valid_user_id(user_id) and valid_image_id(image_id)):
        raise InvalidLink()
    version = request.query.get("v", "")
    request.app[LINKS].verify(
        user_id, image_id, rendition, version, request.query.get("expires", ""), request.query.get("sig", "")
    )
    # A signed link names one upload's bytes, and never others: a browser may keep them, unasked,
    # for as long as the link lives.
    expires = ascii_int(request.query.get("expires", ""), 0, 10**12) or 0
    request[CACHE_CONTROL] = f"private, max-age={max(0, expires - int(time.time()))}, immutable"
    settings = request.app[SETTINGS]
    if rendition != ORIGINAL and settings.imaging.rendition(rendition) is None:
        return await _follow_variant(request, user_id, image_id, rendition, version)
    try:
        found = await locate(request, ImageRef.of(user_id, image_id), rendition)
    except ImageNotFound:
        raise ImageChanged() from None
    if isinstance(found, web.Response):
        return found
    if version_of(found.source_etag) != version:
        raise ImageChanged()
    if rendition == ORIGINAL:
        return await serve_original(request, ImageRef.of(user_id, image_id), found.record)
    try:
        return await serve_object(request, found.bucket, found.key, source_etag=found.source_etag)
    except NotFound:
        raise ImageChanged() from None


async def _follow_variant(
    request: web.Request, user_id: str, image_id: str, name: str, version: str
) -> web.StreamResponse:
    """A signed variant link: the variant of the upload it was made for, made if need be."""
    settings = request.app[SETTINGS]
    parsed = parse_link_name(name, request.headers.get("Accept", ""), settings.variants)
    if parsed is None:
        raise ImageChanged("this link names a variant this deployment no longer makes")
    ref = ImageRef.of(user_id, image_id)
    record = await request.app[RECORDS].read(ref)
    if record is None or version_of(record.source_etag) != version:
        raise ImageChanged()
    if record.state != "ready":
        return not_ready(record, user_id, image_id, settings.web.retry_after)
    spec, negotiated = parsed
    return await serve_variant(request, ref, record, spec, negotiated)
