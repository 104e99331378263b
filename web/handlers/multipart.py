"""Resumable uploads: a large image goes up in parts, each sent (and sent again) on its own.

`POST /images/upload-url` with `"multipart": true` reserves the image as for one PUT (quota,
length, type, owner) and begins a multipart upload in the store: its answer names the part
size and a URL for each part. On AWS each URL is an S3 presigned `UploadPart` signed for its
exact length; on the local backend it is this API's `PUT /uploads/{user}/{image}/parts/{n}`,
signed like a link. A client that lost its place asks `GET /images/{id}/upload-parts` which
parts arrived (with fresh URLs for all), sends the rest, and `POST /images/{id}/upload-complete`
joins them, after checking each part's number and length; the object's event (S3's, or the
service's own announcement) then completes the record as for any presigned upload
(`pipeline.core.reservations`). Deleting the image aborts the upload; an upload never completed
is released with its reservation when its window ends, and its parts by the buckets' lifecycle
rule and `python -m pipeline gc`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from pipeline.core.errors import (
    ImageNotFound,
    InvalidField,
    InvalidLink,
    NotFound,
    UploadCompleting,
    UploadMismatch,
    UploadNotReserved,
)
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef, valid_image_id, valid_user_id
from pipeline.core.objects import Part
from pipeline.core.reservations import USED, Reservation
from pipeline.core.timing import epoch_iso
from pipeline.core.untrusted import ascii_int
from web import urls
from web.bodies import json_object
from web.keys import BACKEND, LINKS, RECORDS, SETTINGS, STORAGE, UPLOADER
from web.serving import image_ref
from web.views import describe, public_base

#: S3's bounds: parts of at least 5 MiB but the last, at most 10,000 of them.
MIN_PART = 8 * 1024 * 1024
MAX_PARTS = 10_000
_MIB = 1024 * 1024


def part_size_for(length: int) -> int:
    """The part size of an upload of `length` bytes: 8 MiB, or more (whole MiB) past 80 GB."""
    needed = -(-length // MAX_PARTS)
    return max(MIN_PART, -(-needed // _MIB) * _MIB)


def part_rendition(number: int) -> str:
    """What a local part URL's signature covers beside the image and token (no rendition has it)."""
    return f"upload-part-{number}"


async def parts_answer(
    request: web.Request, user_id: str, image_id: str, held: Reservation, received: list[Part]
) -> dict[str, Any]:
    """The upload's state for its client: the part size, each part with its length, a URL that
    works `IMGSVC_UPLOAD_URL_SECONDS` (never past the reservation) and whether it arrived."""
    app, settings = request.app, request.app[SETTINGS]
    assert held.upload_id is not None
    seconds = max(1, min(settings.web.upload_url_seconds, held.expires_at - int(time.time())))
    key = ImageRef.of(user_id, image_id).source_key
    arrived = {p.number: p for p in received}
    parts = []
    for number in range(1, held.part_count + 1):
        length = held.part_length(number)
        assert length is not None
        url = await app[BACKEND].presign_part(
            settings.aws.source_bucket, key, held.upload_id, number, length, seconds
        )
        if url is None:  # the local backend: this API takes the parts
            signature, expires = app[LINKS].sign(
                user_id, image_id, part_rendition(number), held.token, seconds
            )
            query = urlencode({"token": held.token, "expires": expires, "sig": signature})
            url = f"{public_base(request)}/uploads/{user_id}/{image_id}/parts/{number}?{query}"
        part: dict[str, Any] = {"number": number, "length": length, "url": url}
        done = arrived.get(number)
        part["received"] = done is not None and done.size == length
        if part["received"]:
            part["etag"] = done.etag  # type: ignore[union-attr]
        parts.append(part)
    return {
        "image_id": image_id,
        "upload_id": held.upload_id,
        "content_length": held.content_length,
        "part_size": held.part_size,
        "method": "PUT",
        "parts": parts,
        "urls_expire_at": epoch_iso(int(time.time()) + seconds),
        "expires_at": epoch_iso(held.expires_at),
        "complete_url": urls.status_url(user_id, image_id, "/upload-complete"),
        "parts_url": urls.status_url(user_id, image_id, "/upload-parts"),
    }


async def upload_parts(request: web.Request) -> web.Response:
    """`GET /images/{image_id}/upload-parts`: the image, which parts arrived, and URLs for every
    part (410 if it awaits no resumable upload: it arrived, or was never begun as one)."""
    user_id, image_id, ref = await image_ref(request, request.match_info["image_id"])
    record = await _record(request, ref)
    held = Reservation.of(record.item)
    if held is None or held.upload_id is None:
        raise UploadNotReserved(
            "this image awaits no resumable upload: it arrived, or was never begun as one"
        )
    settings = request.app[SETTINGS]
    try:
        received = await request.app[STORAGE].list_parts(
            settings.aws.source_bucket, ref.source_key, held.upload_id
        )
    except NotFound:
        raise UploadNotReserved("the store has no such upload any more (aborted or completed)") from None
    parts = await parts_answer(request, user_id, image_id, held, received)
    return web.json_response({**describe(request, user_id, record), **parts})


async def upload_complete(request: web.Request) -> web.Response:
    """`POST /images/{image_id}/upload-complete` `{"parts": [{"number", "etag"}]}` (optional:
    without it, the parts that arrived): join the parts into the image's original. Every part
    must be there with its exact length (422 names the first that is not); 202 with the image
    (awaiting its upload until the consumer takes the object's event). A retry after success
    answers the same."""
    body = await json_object(request) if request.can_read_body else {}
    named = _named_parts(body["parts"]) if "parts" in body else {}  # bad: 400, whatever the state
    user_id, _, ref = await image_ref(request, request.match_info["image_id"])
    # One join of an image at a time in this process: a store's listing read during another's
    # join (S3's, SeaweedFS's) may lack parts. Across processes the local backend's claim holds;
    # on S3 the loser's listing may be short (422) and its retry answers 202.
    lock = _joins.setdefault(ref.source_key, asyncio.Lock())
    try:
        async with lock:
            return await _join(request, user_id, ref, named)
    finally:
        if not lock.locked() and _joins.get(ref.source_key) is lock:
            del _joins[ref.source_key]


#: The joins under way in this process, by image.
_joins: dict[str, asyncio.Lock] = {}


async def _join(request: web.Request, user_id: str, ref: ImageRef, named: dict[int, str]) -> web.Response:
    held = await _awaited(request, ref)
    if held is None or held.upload_id is None:  # joined already: the object's event is on its way
        return await _accepted(request, user_id, ref)
    if held.released_by(time.time()):
        raise UploadNotReserved("the upload's time ran out: its reservation is being released")
    storage, bucket = request.app[STORAGE], request.app[SETTINGS].aws.source_bucket
    try:
        received = {p.number: p for p in await storage.list_parts(bucket, ref.source_key, held.upload_id)}
    except NotFound:
        return await _joined_elsewhere(request, user_id, ref)
    parts = []
    for number in range(1, held.part_count + 1):
        part, length = received.get(number), held.part_length(number)
        if part is None:
            raise UploadMismatch(f"part {number} has not arrived (of {held.part_count})")
        if part.size != length:
            raise UploadMismatch(f"part {number} has {part.size} bytes; it must have {length}")
        if number in named and named[number].strip('"') != part.etag.strip('"'):
            raise UploadMismatch(f"part {number} is not the one named (its ETag is {part.etag})")
        parts.append(part)
    if extra := sorted(set(received) - set(range(1, held.part_count + 1))):
        raise UploadMismatch(f"part {extra[0]} is beyond the upload's {held.part_count} parts")
    try:
        await storage.complete_parts(bucket, ref.source_key, held.upload_id, parts)
    except NotFound:
        return await _joined_elsewhere(request, user_id, ref)
    return await _accepted(request, user_id, ref)


async def _awaited(request: web.Request, ref: ImageRef) -> Reservation | None:
    """The resumable upload the image awaits; None if it was joined already (its original is in
    the bucket, or its reservation used). 410 for an image that never awaited one."""
    record = await _record(request, ref)
    held = Reservation.of(record.item)
    if held is not None and held.upload_id is not None:
        app = request.app
        joined = await app[STORAGE].etag_of(app[SETTINGS].aws.source_bucket, ref.source_key)
        return None if joined is not None else held
    if held is None and Reservation.of(record.item, USED) is not None:
        return None
    raise UploadNotReserved("this image awaits no resumable upload: it was never begun as one")


async def _joined_elsewhere(request: web.Request, user_id: str, ref: ImageRef) -> web.Response:
    """The store has no such upload: another request joined it (202, as for this one), or is
    joining it now (503 `upload_completing`: ask again)."""
    app = request.app
    if await app[STORAGE].etag_of(app[SETTINGS].aws.source_bucket, ref.source_key) is None:
        raise UploadCompleting(headers={"Retry-After": "1"})
    return await _accepted(request, user_id, ref)


async def _accepted(request: web.Request, user_id: str, ref: ImageRef) -> web.Response:
    return web.json_response(describe(request, user_id, await _record(request, ref)), status=202)


async def _record(request: web.Request, ref: ImageRef) -> ImageRecord:
    """The image's record as it is now (404 if there is none)."""
    record = await request.app[RECORDS].read(ref)
    if record is None:
        raise ImageNotFound()
    return record


def _named_parts(value: object) -> dict[int, str]:
    """`parts` of an upload-complete body: number -> ETag (checked against what arrived)."""
    if not isinstance(value, list) or len(value) > MAX_PARTS:
        raise InvalidField(f"parts must be a list of at most {MAX_PARTS} {{number, etag}}")
    named: dict[int, str] = {}
    for part in value:
        if not isinstance(part, dict):
            raise InvalidField('each part must be {"number": n, "etag": "..."}')
        number, etag = part.get("number"), part.get("etag")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_PARTS:
            raise InvalidField(f"each part's number must be a whole number from 1 to {MAX_PARTS}")
        if not isinstance(etag, str) or len(etag) > 200:
            raise InvalidField("each part's etag must be the string its PUT answered")
        named[number] = etag
    return named


async def put_part(request: web.Request) -> web.Response:
    """`PUT /uploads/{user_id}/{image_id}/parts/{number}?token=&expires=&sig=` (local backend):
    what S3 does with a presigned `UploadPart`. No key; exactly the part's length (422 else);
    the part's ETag in the answer's header. Sent again, a part replaces the earlier copy."""
    app = request.app
    user_id, image_id = request.match_info["user_id"], request.match_info["image_id"]
    number = ascii_int(request.match_info["number"], 1, MAX_PARTS)
    if not (valid_user_id(user_id) and valid_image_id(image_id)) or number is None:
        raise InvalidLink()
    token = request.query.get("token", "")
    app[LINKS].verify(
        user_id,
        image_id,
        part_rendition(number),
        token,
        request.query.get("expires", ""),
        request.query.get("sig", ""),
    )
    if app[BACKEND].presigner is not None:
        raise NotFound("part URLs point at S3 on this deployment")
    ref = ImageRef.of(user_id, image_id)
    record = await app[RECORDS].read(ref)
    held = Reservation.of(record.item) if record is not None else None
    if held is None or held.upload_id is None or held.token != token:
        raise UploadNotReserved("this URL's upload is gone: completed, deleted or released")
    length = held.part_length(number)
    if length is None:
        raise InvalidLink()
    if request.content_length != length:
        raise UploadMismatch(f"part {number} takes exactly {length} bytes (a Content-Length header)")
    uploads = app[UPLOADER]
    async with uploads.admitted(user_id) as lease:
        try:
            etag = await app[STORAGE].put_part(
                app[SETTINGS].aws.source_bucket,
                ref.source_key,
                held.upload_id,
                number,
                request.content.iter_chunked(256 * 1024),
                length,
                lease,
            )
        except NotFound:
            raise UploadNotReserved("this URL's upload is gone: completed, deleted or released") from None
    return web.json_response({"number": number, "etag": etag}, headers={"ETag": etag})
