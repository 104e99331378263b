"""`GET /p/{token}/{version}/{name}`: a public image's bytes, for anyone, for good (`web.public`);
`PATCH /images/{image_id}`: make an image public or private.

What a public URL answers never changes: bytes are sent `public, max-age=31536000, immutable`.
Everything else it can answer (no such image, a private or replaced one, a rendition not made
yet, a variant being refused) is a 404 or 422 sent `no-store`, so no CDN keeps it: a pending
thumbnail cached as missing is what users of other services meet (thumbor#529).
"""

from __future__ import annotations

import functools
from urllib.parse import quote

from aiohttp import web

from pipeline.core.errors import (
    ImageChanged,
    ImageNotFound,
    InvalidField,
    NoSuchPublicImage,
    NotFound,
    PublicImagesDisabled,
    ServiceError,
)
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef
from pipeline.imaging.variants import best_format, parse_link_name, preset_variant
from web.bodies import json_object
from web.keys import PUBLIC, RECORDS, SETTINGS
from web.links import version_of
from web.middlewares import refusal
from web.originals import serve_original
from web.public import IMMUTABLE, extension, new_nonce
from web.serving import CACHE_CONTROL, DISPOSITION, image_ref, serve_object, serve_variant
from web.views import describe


async def patch_image(request: web.Request) -> web.Response:
    """`PATCH /images/{image_id}` `{"public": true|false}`: a public image gets new URLs each time
    it is made public; a private one's stop answering at once."""
    user_id, _, ref = await image_ref(request, request.match_info["image_id"])
    body = await json_object(request)
    unknown = sorted(set(body) - {"public"})
    if unknown or not isinstance(body.get("public"), bool):
        raise InvalidField('send {"public": true} or {"public": false}, nothing else')
    records = request.app[RECORDS]
    record = await records.read(ref)
    if record is None:
        raise ImageNotFound()
    wanted = bool(body["public"])
    if wanted and not request.app[SETTINGS].web.public_images:
        raise PublicImagesDisabled()
    if wanted != (record.public_nonce is not None):
        updated = await records.set_public(ref, new_nonce() if wanted else None)
        if updated is None:
            raise ImageNotFound()
        record = updated
    return web.json_response(describe(request, user_id, record))


async def follow_public(request: web.Request) -> web.StreamResponse:
    try:
        response = await _serve(request)
    except ServiceError as exc:
        response = refusal(exc, request)
        response.headers["Cache-Control"] = "no-store"
        return response
    if response.status >= 400:  # not ready yet, or failed: never cached
        response.headers["Cache-Control"] = "no-store"
    return response


async def _serve(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    if not settings.web.public_images:
        raise NoSuchPublicImage()
    urls = request.app[PUBLIC]
    token, version, name = (request.match_info[k] for k in ("token", "version", "name"))
    opened = urls.open(token)
    if opened is None:
        raise NoSuchPublicImage()
    owner, image_id, nonce = opened
    ref = ImageRef.of(owner, image_id)
    record = await request.app[RECORDS].read(ref)
    if record is None or record.public_nonce != nonce or version_of(record.source_etag) != version:
        raise NoSuchPublicImage()
    request[CACHE_CONTROL] = IMMUTABLE
    pin = record.source_etag
    stem, _, ext = name.rpartition(".")
    if stem == "original" and record.state != "awaiting_upload":
        if ext != extension(str(record.item.get("format") or "")):
            raise NoSuchPublicImage()
        request[DISPOSITION] = _inline(record, ext)
        try:
            return await serve_original(request, ref, record)
        except ImageChanged:
            raise NoSuchPublicImage() from None
    if record.state != "ready":
        raise NoSuchPublicImage("not made yet; ask again later", headers={"Retry-After": "2"})
    request[DISPOSITION] = _inline(record, ext)
    if (spec := next((s for s in settings.imaging.renditions if s.filename == name), None)) is not None:
        made = record.renditions.get(spec.name)
        if made is None:
            raise NoSuchPublicImage()
        try:
            return await serve_object(request, settings.aws.dest_bucket, str(made["key"]), source_etag=pin)
        except NotFound:
            raise NoSuchPublicImage() from None
    accept = request.headers.get("Accept", "")
    if (preset := preset_variant(stem, best_format(accept), settings.variants)) is not None:
        variant, negotiated = preset
        if ext != ("auto" if negotiated else extension(variant.format)):
            raise NoSuchPublicImage()
    else:
        parsed = parse_link_name(name, accept, settings.variants)
        if parsed is None or not urls.check(token, version, name, request.query.get("s", "")):
            raise NoSuchPublicImage()  # anonymous clients never choose sizes
        variant, negotiated = parsed
    return await serve_variant(request, ref, record, variant, negotiated)


def _inline(record: ImageRecord, ext: str) -> str:
    return _disposition(str(record.item.get("file_name") or record.image_id), record.image_id, ext)


@functools.lru_cache(maxsize=1024)
def _disposition(file_name: str, image_id: str, ext: str) -> str:
    """`inline`, with the image's file name (its stem, with the extension served)."""
    stem = file_name.rsplit(".", 1)[0] or image_id
    served = f"{stem}.{ext}" if ext and ext != "auto" else stem
    printable = "".join(c for c in served if c.isprintable())
    ascii_name = printable.encode("ascii", "replace").decode().replace('"', "").replace("\\", "")
    return f"inline; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(printable)}"
