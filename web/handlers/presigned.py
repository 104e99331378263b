"""Presigned uploads: the API authorises an upload, and the bytes go straight to S3.

`POST /images/upload-url` reserves a new image (quota charged) and answers a URL for one PUT of
exactly the declared length and type, valid `IMGSVC_UPLOAD_URL_SECONDS`. On AWS (and the
embedded endpoint) it is an S3 presigned URL, so the API never sees the bytes; on the local
backend it is this API's `PUT /uploads/...`, signed like a link. Either way the consumer
completes the record from the object's event (`pipeline.core.reservations`).
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from pipeline.core.errors import (
    FormatNotAllowed,
    InvalidField,
    InvalidLink,
    MissingField,
    NotFound,
    TooLarge,
    UploadMismatch,
    UploadModeDisabled,
    UploadNotReserved,
    UploadPending,
)
from pipeline.core.errors import ImageExists as ImageExistsError
from pipeline.core.image_record import ImageRecord, UploadFacts
from pipeline.core.layout import ImageRef, valid_image_id, valid_user_id
from pipeline.core.records import ImageTaken, UsageRefused
from pipeline.core.reservations import METADATA_KEY, Reservation
from pipeline.core.timing import epoch_iso
from pipeline.core.untrusted import utf8_text
from pipeline.core.uploads import PURGE_AFTER, upload_metadata
from web import urls
from web.bodies import json_object
from web.handlers.multipart import part_size_for, parts_answer
from web.idempotency import fingerprint, once
from web.identity import resolve_user
from web.keys import BACKEND, IDEMPOTENCY, LINKS, RECORDS, SETTINGS, STORAGE, SWEEPER, UPLOADER, USAGE
from web.uploading import expiry_from, parse_public, upload_charge, visibility_facts
from web.views import describe, public_base

#: The rendition name an upload URL's signature covers (no rendition has it).
UPLOAD_RENDITION = "upload"
_TOKEN_BYTES = 16


async def create_upload_url(request: web.Request) -> web.Response:
    """`POST /images/upload-url` `{"content_length", "content_type", "image_id"?, "file_name"?,
    "expires_in_days"?}`: 201 with the URL, the method and headers to use, when it expires, and
    the image's status URL. New images only: an id in use is 409 (`PUT /images/{id}` replaces)."""
    user_id = await resolve_user(request)
    settings = request.app[SETTINGS]
    if "presigned" not in settings.web.upload_modes:
        raise UploadModeDisabled(
            "presigned uploads are not offered here; send the bytes to PUT or POST /images"
        )
    body = await json_object(request)
    length = _length(body.get("content_length"), settings.imaging.max_bytes)
    content_type = _content_type(body.get("content_type"), settings.imaging.allowed_formats)
    image_id = body.get("image_id")
    if image_id is None:
        image_id = secrets.token_hex(12)
    elif not isinstance(image_id, str) or not valid_image_id(image_id):
        raise InvalidField(
            "image_id must be 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    file_name = body.get("file_name") or ""
    if not isinstance(file_name, str):
        raise InvalidField("file_name must be a string")
    file_name = utf8_text(file_name)[:255]
    expires_at = expiry_from(request, body.get("expires_in_days"))
    public = body.get("public")
    parse_public(public)  # a bad value is a 400 before anything is reserved
    multipart = body.get("multipart", False)
    if not isinstance(multipart, bool):
        raise InvalidField("multipart must be true or false")

    async def reserve() -> tuple[web.Response, str]:
        answer = await _reserve(
            request, user_id, image_id, length, content_type, file_name, expires_at, public, multipart
        )
        return answer, ""

    async def nothing_more() -> str:
        return ""  # the fingerprint holds the whole request

    # Without an image id one is made here: the same request, retried, must get the same answer.
    shape = [
        str(body.get(k))
        for k in ("image_id", "content_length", "content_type", "file_name", "public", "multipart")
    ]
    route = fingerprint(request.method, request.path, *shape, str(body.get("expires_in_days")))
    return await once(request, request.app[IDEMPOTENCY], user_id, route, reserve, nothing_more)


async def _reserve(
    request: web.Request,
    user_id: str,
    image_id: str,
    length: int,
    content_type: str,
    file_name: str,
    expires_at: int | None,
    public: object = None,
    multipart: bool = False,
) -> web.Response:
    app, settings = request.app, request.app[SETTINGS]
    # Its header is not seen before its bytes reach S3: an upload URL costs its user one
    # megapixel of the decode budget (the consumer's per-user share bounds the rest).
    upload_charge(request, user_id)(1.0)
    usage = app[USAGE]
    user = await usage.check(user_id, new_image=True, incoming=length, replaced_bytes=0)
    seconds = settings.web.multipart_upload_seconds if multipart else settings.web.upload_url_seconds
    reservation = Reservation(
        secrets.token_hex(_TOKEN_BYTES), length, content_type, int(time.time()) + seconds
    )
    ref = ImageRef.of(user_id, image_id)
    facts: UploadFacts = {
        "file_name": file_name,
        "content_type": content_type,
        "expires_at": expires_at,
        "purge_at": expires_at + PURGE_AFTER if expires_at else None,
        "notify": bool(user.get("webhook_url")),
        **visibility_facts(request, public, user, None),
    }
    metadata = upload_metadata(user_id, file_name, **{METADATA_KEY: reservation.token})
    if multipart:
        return await _reserve_parts(request, ref, reservation, facts, metadata)
    presigned = await app[BACKEND].presign_put(
        settings.aws.source_bucket, ref.source_key, seconds, content_type, length, metadata
    )
    if presigned is None:  # the local backend: this API takes the bytes, at a signed URL
        signature, expires = app[LINKS].sign(user_id, image_id, UPLOAD_RENDITION, reservation.token, seconds)
        query = urlencode({"token": reservation.token, "expires": expires, "sig": signature})
        presigned = (
            f"{public_base(request)}/uploads/{user_id}/{image_id}?{query}",
            {"Content-Type": content_type},
        )
    url, headers = presigned
    # Signed first (local computation, but it may fail): a reservation is never left without a URL.
    record = await _hold(request, ref, reservation, facts)
    answer = {
        **describe(request, user_id, record),
        "url": url,
        "method": "PUT",
        "headers": headers,
        "expires_at": epoch_iso(reservation.expires_at),
    }
    return _created(answer)


async def _reserve_parts(
    request: web.Request,
    ref: ImageRef,
    reservation: Reservation,
    facts: UploadFacts,
    metadata: dict[str, str],
) -> web.Response:
    """A resumable upload (`web.handlers.multipart`): begun in the store first, so the
    reservation names it; aborted if the reservation is refused."""
    app, settings = request.app, request.app[SETTINGS]
    bucket, (user_id, image_id) = settings.aws.source_bucket, ref.owner_and_id
    upload_id = await app[STORAGE].start_parts(bucket, ref.source_key, reservation.content_type, metadata)
    reservation = dataclasses.replace(
        reservation, upload_id=upload_id, part_size=part_size_for(reservation.content_length)
    )
    try:
        record = await _hold(request, ref, reservation, facts)
    except BaseException:
        await app[STORAGE].abort_parts(bucket, ref.source_key, upload_id)
        raise
    answer = {
        **describe(request, user_id, record),
        **await parts_answer(request, user_id, image_id, reservation, []),
    }
    return _created(answer)


async def _hold(
    request: web.Request, ref: ImageRef, reservation: Reservation, facts: UploadFacts
) -> ImageRecord:
    """Write the reservation (the owner's quota charged with it) and watch it fall due: 409 for
    an id in use or held, the usage refusal over quota."""
    app = request.app
    try:
        record = await app[RECORDS].reserve(ref, reservation, facts, limit=app[USAGE].limit)
    except ImageTaken as exc:
        if exc.held is not None:
            raise UploadPending() from None
        raise ImageExistsError() from None
    except UsageRefused:
        raise await app[USAGE].refusal(ref.owner_and_id[0], 1) from None
    app[SWEEPER].watch(ref, reservation)
    return record


def _created(answer: dict[str, Any]) -> web.Response:
    response = web.json_response(answer, status=201)
    response.headers["Location"] = answer["status_url"]
    return response


async def put_upload(request: web.Request) -> web.Response:
    """`PUT /uploads/{user_id}/{image_id}?token=&expires=&sig=` (local backend): what S3 does with a
    presigned PUT. No key; 403 for a tampered or expired URL, 422 for a body not of the length
    and type the URL was made for, 410 once its reservation is gone."""
    app = request.app
    if app[BACKEND].kind != "local":
        raise NotFound("upload URLs point at S3 on this deployment")
    user_id, image_id = request.match_info["user_id"], request.match_info["image_id"]
    if not (valid_user_id(user_id) and valid_image_id(image_id)):
        raise InvalidLink()
    token = request.query.get("token", "")
    app[LINKS].verify(
        user_id,
        image_id,
        UPLOAD_RENDITION,
        token,
        request.query.get("expires", ""),
        request.query.get("sig", ""),
    )
    ref = ImageRef.of(user_id, image_id)
    record = await app[RECORDS].read(ref)
    held = Reservation.named(record.item, token) if record is not None else None
    if held is None:
        raise UploadNotReserved("this URL's reservation is gone: the image was uploaded, deleted or released")
    if request.content_length != held.content_length:
        raise UploadMismatch(f"this URL takes exactly {held.content_length} bytes (a Content-Length header)")
    if request.content_type != held.content_type:
        raise UploadMismatch(f"this URL takes Content-Type {held.content_type}")
    assert record is not None
    uploads = app[UPLOADER]
    async with uploads.admitted(user_id) as lease:
        stored = await uploads.put(
            ref,
            request.content.iter_chunked(256 * 1024),
            lease,
            charge=upload_charge(request, user_id),
            metadata=upload_metadata(user_id, str(record.item.get("file_name", "")), **{METADATA_KEY: token}),
            max_bytes=held.content_length,
            allowed_formats=frozenset({held.format}),
        )
    response = web.json_response(
        {"image_id": image_id, "bytes": stored.size, "status_url": urls.status_url(user_id, image_id)}
    )
    response.headers["ETag"] = stored.etag
    return response


def _length(value: object, most: int) -> int:
    if value is None:
        raise MissingField("content_length is required: the exact size of the upload in bytes")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidField("content_length must be a whole number of bytes, at least 1")
    if value > most:
        raise TooLarge(f"the upload is larger than the {most} bytes allowed")
    return value


def _content_type(value: object, allowed: frozenset[str]) -> str:
    if value is None:
        raise MissingField("content_type is required, e.g. image/jpeg")
    if not isinstance(value, str) or not value.startswith("image/"):
        raise InvalidField("content_type must be an image type, e.g. image/jpeg")
    fmt = value.removeprefix("image/").lower()
    fmt = {"jpg": "jpeg", "pjpeg": "jpeg", "heic": "heif"}.get(fmt, fmt)
    if fmt not in allowed:
        raise FormatNotAllowed(
            f"content_type must be one of {', '.join(f'image/{f}' for f in sorted(allowed))}"
        )
    return f"image/{fmt}"
