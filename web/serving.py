"""Serving an image's objects: find the original or a rendition for a caller, then stream it.

Shared by every handler that sends image bytes (downloads, signed links). Conditional GET (ETag /
If-None-Match, If-Modified-Since) and single byte ranges are answered from the object's metadata
before any body is fetched; the body is then streamed chunk by chunk.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from config.settings import RenditionSpec
from pipeline.core import metrics
from pipeline.core.errors import (
    ImageChanged,
    ImageNotFound,
    InvalidField,
    MissingField,
    NotFound,
    RangeNotSatisfiable,
    RenditionNotFound,
    ServiceError,
)
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef, valid_image_id
from pipeline.core.objects import ObjectMeta, one_chunk
from pipeline.imaging.variants import NEGOTIATED, VariantSpec, accepted_types
from web import urls
from web.conditional import not_modified
from web.identity import resolve_user
from web.keys import ACCOUNTS, RECORDS, SETTINGS, SITE_WATERMARK, STORAGE, VARIANTS
from web.middlewares import error_response
from web.ranges import parse_range
from web.watermarks import overlay_for

log = logging.getLogger(__name__)


async def image_ref(request: web.Request, image_id: str | None = None) -> tuple[str, str, ImageRef]:
    """Validate the caller and the image id (query or path) and build the image's keys."""
    user_id = await resolve_user(request)
    image_id = image_id if image_id is not None else request.query.get("image_id", "")
    if not image_id:
        raise MissingField("image_id is required")
    if not valid_image_id(image_id):
        raise InvalidField(
            "image_id must be 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return user_id, image_id, ImageRef.of(user_id, image_id)


#: The rendition name that stands for the original upload (signed links can point at it).
ORIGINAL = "original"


@dataclass(frozen=True)
class Located:
    """Where an image's original or rendition is, and which original it must come from."""

    bucket: str
    key: str
    source_etag: str
    record: ImageRecord


async def locate(request: web.Request, ref: ImageRef, rendition: str) -> Located | web.Response:
    """The object of the original or of a rendition, or the answer for a rendition that is not
    made (yet): pending 404 or failed 422. Raises `ImageNotFound` without a record."""
    settings = request.app[SETTINGS]
    record = await request.app[RECORDS].read(ref)
    if record is None:
        raise ImageNotFound()
    if rendition == ORIGINAL and record.state != "awaiting_upload":
        return Located(settings.aws.source_bucket, ref.source_key, record.source_etag, record)
    if record.state != "ready":
        owner, image_id = ref.owner_and_id
        return not_ready(record, owner, image_id, settings.web.retry_after)
    made = record.renditions.get(rendition)
    if made is None:
        raise RenditionNotFound(
            f"rendition {rendition} was not made for this image; it has "
            + (", ".join(sorted(record.renditions)) or "none")
        )
    return Located(settings.aws.dest_bucket, str(made["key"]), record.source_etag, record)


VARY = web.RequestKey("vary", str)
#: Overrides the configured `Cache-Control` for one response (signed links: immutable).
CACHE_CONTROL = web.RequestKey("cache_control", str)


def best_for(accept: str, candidates: list[RenditionSpec]) -> RenditionSpec:
    """The smallest-file format the client explicitly accepts (`image/*` is no promise of AVIF)."""
    accepted = accepted_types(accept)
    for fmt in NEGOTIATED:
        for spec in candidates:
            if spec.format == fmt and f"image/{fmt}" in accepted:
                return spec
    return next((s for s in candidates if s.format not in NEGOTIATED), candidates[0])


async def serve_variant(
    request: web.Request, ref: ImageRef, record: ImageRecord, spec: VariantSpec, negotiated: bool
) -> web.StreamResponse:
    """Stream a variant of a ready image, made first if it is not stored yet."""
    if negotiated:
        request[VARY] = "Accept"
    spec = spec.at_focal_point(record.item.get("focal_point"))
    overlay = None
    if spec.ops.watermark is not None:  # which watermark, now: its digest names the variant
        owner = await request.app[ACCOUNTS].user(record.owner) if spec.ops.watermark == "own" else None
        overlay = overlay_for(spec, owner, request.app[SITE_WATERMARK])
        spec = spec.with_watermark(overlay.digest) if overlay is not None else spec
    bucket = request.app[SETTINGS].aws.dest_bucket
    key = ref.variant_key(record.source_etag, spec.name)
    known = record.variant_names
    if known is None or spec.name in known:  # stored, or maybe (a record from before names)
        try:
            response = await serve_object(request, bucket, key, source_etag=record.source_etag)
        except NotFound:
            pass
        else:
            _variant_requests("hit").inc()
            return response
    _variant_requests("miss").inc()
    from_storage = request.method != "GET" or any(h in request.headers for h in _NEEDS_HEAD)
    overlay_bytes = overlay.data if overlay is not None else None
    made = await request.app[VARIANTS].ensure(
        ref, record, spec, key, stored=from_storage, overlay=overlay_bytes
    )
    if made is None:
        return await serve_object(request, bucket, key, source_etag=record.source_etag)
    # Just made: answered from memory, with what a later GET of the stored object will say.
    meta = ObjectMeta(len(made.data), made.etag, made.last_modified, made.content_type, made.metadata)
    return await _send(request, meta, None, one_chunk(made.data))


@functools.cache
def _variant_requests(outcome: str) -> Any:
    return metrics.VARIANT_REQUESTS.labels(outcome)  # looked up once, not per request


def not_ready(record: ImageRecord, user_id: str, image_id: str, retry_after: int) -> web.Response:
    if record.state == "awaiting_upload":
        return error_response(
            404,
            "upload_pending",
            "the image's bytes have not been uploaded yet (its upload URL is unused)",
            status="awaiting_upload",
            status_url=urls.status_url(user_id, image_id),
        )
    if record.state == "failed":
        error = record.error or {}
        return error_response(
            422,
            "thumbnail_failed",
            f"the image could not be processed: {error.get('message', 'unknown reason')}",
            status="failed",
            reason=error,
        )
    response = error_response(
        404,
        "thumbnail_pending",
        "the thumbnail is not ready yet; retry later",
        status="pending",
        status_url=urls.status_url(user_id, image_id),
    )
    response.headers["Retry-After"] = str(retry_after)
    return response


async def serve_object(
    request: web.Request,
    bucket: str,
    key: str,
    *,
    if_match: str | None = None,
    source_etag: str | None = None,
) -> web.StreamResponse:
    """Stream one S3 object with caching headers, conditional GET and byte ranges.

    A plain GET is one S3 request; conditional, ranged and HEAD requests first HEAD the object.
    `if_match` pins an original to the ETag the caller expects, `source_etag` a rendition to the
    original it must have been made from: a link made for one upload never serves another's bytes.
    """
    storage = request.app[STORAGE]
    if request.method == "GET" and not any(h in request.headers for h in _NEEDS_HEAD):
        meta, chunks = await storage.stream(bucket, key, if_match=if_match)
        if not _made_from(meta, source_etag):
            await chunks.aclose()
            raise ImageChanged()
        return await _send(request, meta, None, chunks)
    meta = await storage.head(bucket, key)
    if (if_match is not None and meta.etag != if_match) or not _made_from(meta, source_etag):
        raise ImageChanged()
    if not_modified(request.headers, meta.etag, meta.last_modified.timestamp()):
        return web.Response(status=304, headers=_headers(request, meta))
    try:
        byte_range = parse_range(request.headers, meta.size, meta.etag)
    except RangeNotSatisfiable as exc:
        refusal = error_response(exc.http_status, exc.code, exc.message)
        refusal.headers["Content-Range"] = f"bytes */{meta.size}"
        return refusal
    if request.method == "HEAD" or meta.size == 0:
        return await _send(request, meta, byte_range, None)
    _, chunks = await storage.stream(bucket, key, byte_range, if_match=meta.etag)
    return await _send(request, meta, byte_range, chunks)


def _made_from(meta: ObjectMeta, source_etag: str | None) -> bool:
    return source_etag is None or meta.metadata.get("source-etag") == source_etag.strip('"')


_NEEDS_HEAD = ("Range", "If-None-Match", "If-Modified-Since")


#: `Content-Disposition` of one response (public URLs: inline, with the image's file name).
DISPOSITION = web.RequestKey("disposition", str)


@functools.lru_cache(maxsize=1024)
def _http_date(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


def _headers(request: web.Request, meta: ObjectMeta) -> dict[str, str]:
    vary = {"Vary": request[VARY]} if VARY in request else {}
    if DISPOSITION in request:
        vary["Content-Disposition"] = request[DISPOSITION]
    return vary | {
        "ETag": meta.etag,
        "Last-Modified": _http_date(meta.last_modified),
        "Cache-Control": request.get(CACHE_CONTROL) or request.app[SETTINGS].web.cache_control,
        "X-Content-Type-Options": "nosniff",
        "Accept-Ranges": "bytes",
    }


async def _send(
    request: web.Request,
    meta: ObjectMeta,
    byte_range: tuple[int, int] | None,
    chunks: AsyncGenerator[bytes, None] | None,
) -> web.StreamResponse:
    status = 200 if byte_range is None else 206
    length = meta.size if byte_range is None else byte_range[1] - byte_range[0] + 1
    headers = _headers(request, meta)
    headers["Content-Type"] = meta.content_type
    if byte_range is not None:
        headers["Content-Range"] = f"bytes {byte_range[0]}-{byte_range[1]}/{meta.size}"
    if chunks is not None and length <= SMALL_BODY:
        return await _send_whole(status, headers, length, chunks)
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    await response.prepare(request)
    if chunks is None:
        return response
    try:
        async for chunk in chunks:
            await response.write(chunk)
    except ServiceError as exc:
        # Headers are sent: the only honest signal left is to cut the connection short.
        log.warning("download interrupted key=%s error=%s", request.path, exc)
        if request.transport is not None:
            request.transport.close()
        return response
    finally:  # a client that went away leaves the S3 body unread: give its connection back now
        await chunks.aclose()
    await response.write_eof()
    return response


#: Bodies up to this size are read whole before the headers go out, and sent with them in one
#: write: a thumbnail costs one system call instead of two, and a storage error is still an honest
#: JSON answer instead of a cut connection. Bounded: one such buffer per request in progress.
SMALL_BODY = 64 * 1024


async def _send_whole(
    status: int, headers: dict[str, str], length: int, chunks: AsyncGenerator[bytes, None]
) -> web.StreamResponse:
    try:
        body = b"".join([chunk async for chunk in chunks])
    finally:
        await chunks.aclose()
    if len(body) != length:  # the object changed between its metadata and its bytes
        raise ImageChanged()
    return web.Response(status=status, body=body, headers=headers)
