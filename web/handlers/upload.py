"""Uploads: the original system's JSON route and the native streaming routes.

Bodies are streamed chunk by chunk into S3 (`Storage.upload_stream`); the handler answers 202 as
soon as the original is durably stored and never waits for thumbnails.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

from config.settings import ImagingSettings
from pipeline.core import metrics
from pipeline.core.errors import (
    ImageNotFound,
    InsufficientStorage,
    InvalidField,
    MissingField,
    NotFound,
    ServiceError,
    TooLarge,
    UploadModeDisabled,
    UploadPending,
)
from pipeline.core.formats import decode_megapixels, screen_prefix
from pipeline.core.image_record import PUBLIC_FIELD, ImageRecord
from pipeline.core.layout import ImageRef, valid_image_id
from pipeline.core.logs import REQUEST_ID
from pipeline.core.records import KEEP_PUBLIC, ImageTaken, Superseded, UsageRefused
from pipeline.core.removal import drop_variants
from pipeline.core.reservations import FIELD, USED, Reservation
from pipeline.core.untrusted import ascii_int, utf8_text
from web.bodies import json_object
from web.idempotency import fingerprint, once
from web.identity import resolve_user
from web.keys import IDEMPOTENCY, RECORDS, SETTINGS, STORAGE, UPLOAD_RATES, UPLOADS, USAGE
from web.multipart import MultipartUpload
from web.public import PublicImagesDisabled, new_nonce
from web.views import describe

log = logging.getLogger(__name__)
CHUNK = 256 * 1024
#: How much of an upload is kept to read its header (bombs are refused before being stored).
SCREEN_BYTES = 64 * 1024
#: Seconds past its expiry before DynamoDB's TTL removes a record gc has not removed.
PURGE_AFTER = 7 * 86_400
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: The SHA-256 of the bytes an upload stored (an idempotent upload saves it with its answer).
_SHA256 = web.RequestKey("uploaded_sha256", str)


class FileNotInInput(NotFound):
    code = "file_not_found"
    default_message = "no such file in the input folder"


async def compat_upload(request: web.Request) -> web.Response:
    """`POST /upload` `{"file_name": "cat.jpg", "user_id": ...}`: store `input/<file_name>` as `cat`."""
    await resolve_user(request)  # 401 before anything about the body
    body = await json_object(request)
    user_id = await resolve_user(request, body.get("user_id", ""))
    file_name = body.get("file_name")
    if file_name is None or file_name == "":
        raise MissingField("file_name is required")
    if not isinstance(file_name, str) or not _FILE_NAME_RE.fullmatch(file_name) or ".." in file_name:
        raise InvalidField("file_name must be a plain file name from the input folder, without a path")
    image_id = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    if not valid_image_id(image_id):
        raise InvalidField("the file name (without extension) is not a valid image id")
    settings = request.app[SETTINGS]
    path = _input_file(settings.web.input_dir, file_name)

    expires_at = expiry_from(request, body.get("expires_in_days"))

    async def upload() -> tuple[web.Response, str]:
        size = path.stat().st_size
        chunks = _file_chunks(path)
        return await _store(request, user_id, image_id, chunks, file_name, size, expires_at), ""

    async def nothing_more() -> str:
        return ""  # the route's fingerprint holds the whole body

    route = fingerprint(request.method, request.path, image_id, file_name)
    return await once(request, request.app[IDEMPOTENCY], user_id, route, upload, nothing_more)


async def put_image(request: web.Request) -> web.Response:
    """`PUT /images/{image_id}?user_id=`: the body (raw, or multipart with one file) is the image."""
    user_id = await resolve_user(request)
    image_id = request.match_info["image_id"]
    if not valid_image_id(image_id):
        raise InvalidField(
            "image_id must be 1-64 letters, digits, '-' or '_', starting with a letter or digit"
        )
    return await _stream_upload(request, user_id, image_id)


async def post_image(request: web.Request) -> web.Response:
    """`POST /images?user_id=`: like PUT, with a server-generated, unguessable image id."""
    user_id = await resolve_user(request)
    return await _stream_upload(request, user_id, secrets.token_hex(12))


async def _stream_upload(request: web.Request, user_id: str, image_id: str) -> web.Response:
    if "api" not in request.app[SETTINGS].web.upload_modes:
        raise UploadModeDisabled("uploads through the API are not offered here; use POST /images/upload-url")
    expires_at = expiry_from(request, request.query.get("expires_in_days"))

    parse_public(request.query.get("public"))  # a bad value is a 400 before any byte is read

    async def upload() -> tuple[web.Response, str]:
        chunks, file_name, declared, fields = await _body(request)
        response = await _store(
            request, user_id, image_id, chunks, file_name, declared, expires_at, public=fields
        )
        return response, request[_SHA256]

    async def body_sha256() -> str:
        chunks, _, _, _ = await _body(request)
        digest, size, limit = hashlib.sha256(), 0, request.app[SETTINGS].imaging.max_bytes
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"the upload is larger than the {limit} bytes allowed")
            digest.update(chunk)
        return digest.hexdigest()

    # A POST's image id is made here: its route is the same on every try.
    route = fingerprint(request.method, request.path)
    return await once(request, request.app[IDEMPOTENCY], user_id, route, upload, body_sha256)


async def _body(request: web.Request) -> tuple[AsyncIterator[bytes], str, int | None, dict[str, str]]:
    """An upload's image bytes (raw, or the one file of a multipart body), its file name, its
    declared length if it has one, and its options (`public`: from the query, or a form field,
    complete once the bytes have been read)."""
    settings = request.app[SETTINGS]
    if request.content_length is not None and request.content_length > settings.imaging.max_bytes:
        raise TooLarge(f"the upload is larger than the {settings.imaging.max_bytes} bytes allowed")
    file_name = request.query.get("file_name") or request.headers.get("X-File-Name") or ""
    options = {"public": request.query["public"]} if "public" in request.query else {}
    if request.content_type.startswith("multipart/"):
        body = await MultipartUpload.open(request, settings.imaging.max_bytes)
        body.fields.update(options)  # the query wins: fields read later never replace it
        part = await body.file_part()
        return body.chunks(part), part.filename or file_name, None, body.fields
    return request.content.iter_chunked(CHUNK), file_name, request.content_length, options


async def _store(
    request: web.Request,
    user_id: str,
    image_id: str,
    chunks: AsyncIterator[bytes],
    file_name: str,
    declared: int | None,
    expires_at: int | None = None,
    *,
    public: Mapping[str, str] | None = None,
) -> web.Response:
    """Check quotas, stream the original into S3, charge the user, record the upload: 202.
    `public`: the upload's options, its `public` value read once the bytes are through."""
    settings = request.app[SETTINGS]
    # From a header or a multipart part header: bytes that were not UTF-8 are lone surrogates.
    file_name = utf8_text(file_name)
    ref = ImageRef.of(user_id, image_id)
    records, usage = request.app[RECORDS], request.app[USAGE]
    await room_for_bytes(request)
    async with request.app[UPLOADS].admit(user_id) as lease:
        previous = await records.read(ref)
        if previous is not None and Reservation.live(previous.item) is not None:
            raise UploadPending()  # its URL could replace these bytes
        replaced = previous.bytes if previous else 0
        user = await usage.check(
            user_id, new_image=previous is None, incoming=declared, replaced_bytes=replaced
        )
        digest = hashlib.sha256()
        stored = await request.app[STORAGE].upload_stream(
            settings.aws.source_bucket,
            ref.source_key,
            _hashed(screened(chunks, settings.imaging, upload_charge(request, user_id)), digest),
            max_bytes=settings.imaging.max_bytes,
            part_size=settings.web.part_size,
            allowed_formats=settings.imaging.allowed_formats,
            metadata=upload_metadata(user_id, file_name),
            lease=lease,
        )
    request[_SHA256] = digest.hexdigest()
    metrics.UPLOAD_BYTES.inc(stored.size)
    visibility = await _visibility_of_stored(request, ref, (public or {}).get("public"), user, previous)
    facts = {
        "file_name": file_name[:255],
        "content_type": f"image/{stored.format}",
        "format": stored.format,
        "bytes": stored.size,
        "sha256": request[_SHA256],
        "expires_at": expires_at,  # removed by `python -m pipeline gc` after this (epoch seconds)
        "purge_at": expires_at + PURGE_AFTER if expires_at else None,  # DynamoDB TTL's backstop
        # The consumer looks the webhook up only for images whose owner had one at upload time.
        "notify": bool(user.get("webhook_url")),
        FIELD: None,  # a reservation of this id long expired is this upload's now
        USED: None,  # and a presigned upload's URL no longer puts anything here
        **visibility,
    }
    storage, source_bucket = request.app[STORAGE], settings.aws.source_bucket
    try:
        # The record and the owner's counters in one transaction; a new image is refused there
        # if it crosses a quota (an upload without Content-Length can get that far).
        record = await records.record_upload(
            ref,
            stored.etag,
            facts,
            lambda: storage.etag_of(source_bucket, ref.source_key),
            read=previous,
            limit=usage.limit,
        )
    except Superseded:  # another upload of this id landed after ours: it is the image now
        found = await records.read(ref)
        if found is None:
            raise ImageNotFound("the image was deleted while it was being uploaded") from None
        record = found
    except UsageRefused:  # nothing recorded: the new original goes again
        await storage.delete_many(source_bucket, [ref.source_key])
        raise await usage.refusal(user_id, 1) from None
    except ImageTaken:  # reserved for a presigned upload while this one streamed: it gives way
        if await storage.etag_of(source_bucket, ref.source_key) == stored.etag:
            await storage.delete_many(source_bucket, [ref.source_key])
        raise UploadPending() from None
    else:
        if record.replaced is not None:  # the replaced original's variants are never served again
            try:
                await drop_variants(storage, settings, ref, keep_etag=record.source_etag)
            except Exception as exc:  # recorded already: the upload stands; gc removes them later
                log.warning(
                    "variants of a replaced original not dropped key=%s error=%r", ref.source_key, exc
                )
    log.info("upload stored key=%s bytes=%d format=%s", ref.source_key, stored.size, stored.format)
    body = describe(request, user_id, record)
    response = web.json_response(body, status=202)
    response.headers["Location"] = body["status_url"]
    return response


async def room_for_bytes(request: web.Request) -> None:
    """Refuse new bytes while the store has no room for them (a local disk under
    `IMGSVC_MIN_FREE_BYTES`): 507 with `Retry-After`, so what is left stays for deletes."""
    state = await request.app[STORAGE].check_space()
    if state != "ok":
        raise InsufficientStorage(
            f"the server's storage is low on space ({state}); retry later (deleting images still works)",
            headers={"Retry-After": str(request.app[SETTINGS].web.retry_after * 30)},
        )


async def _visibility_of_stored(
    request: web.Request, ref: ImageRef, raw: object, user: Mapping[str, Any], previous: ImageRecord | None
) -> dict[str, object]:
    """`visibility_facts` once the original is stored (a form field may follow the file)."""
    try:
        return visibility_facts(request, raw, user, previous)
    except ServiceError:
        if previous is not None:
            # A form field after the file said something invalid, but the new bytes have replaced
            # the old ones already: the upload stands, its visibility as it was.
            log.warning("upload's public field ignored key=%s", ref.source_key)
            return {}
        bucket = request.app[SETTINGS].aws.source_bucket  # a new image: nothing of it is kept
        await request.app[STORAGE].delete_many(bucket, [ref.source_key])
        raise


def parse_public(raw: object) -> bool | None:
    """An upload's `public` option (a query value, a form field or a JSON boolean); None: not given."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("true", "1", "false", "0"):
        return raw.lower() in ("true", "1")
    raise InvalidField("public must be true or false")


def visibility_facts(
    request: web.Request, raw: object, user: Mapping[str, Any], previous: ImageRecord | None
) -> dict[str, object]:
    """The record's visibility after an upload: as asked (`public`), else the owner's default
    for a new image, else as it was; a public image keeps its URL nonce when replaced (its URLs'
    version changes, so old ones stop answering). `PublicImagesDisabled` where forbidden."""
    allowed = request.app[SETTINGS].web.public_images
    wanted = parse_public(raw)
    if wanted and not allowed:
        raise PublicImagesDisabled()
    if wanted is None:
        if previous is not None:
            return {}
        wanted = bool(user.get("public_by_default")) and allowed
    if not wanted:
        return {PUBLIC_FIELD: None}
    return {PUBLIC_FIELD: KEEP_PUBLIC if previous is not None else new_nonce()}


def expiry_from(request: web.Request, days: object) -> int | None:
    """When the image expires (epoch seconds): `expires_in_days` (a whole number from 1 to
    36500, from the query or the JSON body), else the deployment's retention; None: never."""
    retention = request.app[SETTINGS].accounts.retention_days
    if days is None or days == "":
        return int(time.time()) + retention * 86_400 if retention else None
    longest = retention or 36_500
    value = ascii_int(days, 1, longest) if isinstance(days, str) else days
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= longest:
        raise InvalidField(
            f"expires_in_days must be a whole number of days from 1 to {longest}"
            + (" (this deployment keeps images no longer)" if longest < 36_500 else "")
        )
    return int(time.time()) + value * 86_400


def upload_metadata(user_id: str, file_name: str, **more: str) -> dict[str, str]:
    """An original's S3 metadata, however it is put. It travels as HTTP headers: kept ASCII
    whatever the client sent."""
    return {
        "original-filename": quote(file_name[:255], safe=" ._-"),
        "user-id": user_id,  # the consumer trusts an owner named here (`JobRunner._check_owner`)
        "request-id": REQUEST_ID.get(),  # so the consumer's log lines for it carry the same id
        **more,
    }


async def _hashed(chunks: AsyncIterator[bytes], digest: Any) -> AsyncIterator[bytes]:
    """Pass chunks through, hashing them: the record keeps the original's SHA-256."""
    async for chunk in chunks:
        digest.update(chunk)
        yield chunk


def _input_file(input_dir: Path, file_name: str) -> Path:
    root = input_dir.resolve()
    path = (root / file_name).resolve()
    if path.parent != root or not path.is_file():
        raise FileNotInInput(f"{file_name} is not in the input folder")
    return path


async def screened(
    chunks: AsyncIterator[bytes], imaging: ImagingSettings, charge: Callable[[float], None] | None = None
) -> AsyncIterator[bytes]:
    """Pass chunks through, refusing a decompression bomb as soon as its header has arrived, and
    charging `charge` what it will cost to decode (megapixels x frames) from that header."""
    prefix = bytearray()
    screened = False
    async for chunk in chunks:
        if not screened:
            prefix += chunk
            if len(prefix) >= SCREEN_BYTES:
                _screen(bytes(prefix), imaging, charge)
                screened = True
        yield chunk
    if not screened:
        _screen(bytes(prefix), imaging, charge)


def _screen(prefix: bytes, imaging: ImagingSettings, charge: Callable[[float], None] | None) -> None:
    info = screen_prefix(prefix, imaging)
    if charge is not None:
        charge(decode_megapixels(info))


def upload_charge(request: web.Request, user_id: str) -> Callable[[float], None]:
    """What charges an upload of `user_id` to its decode budget (`IMGSVC_USER_UPLOAD_MEGAPIXELS_*`)."""
    buckets = request.app[UPLOAD_RATES]
    return lambda megapixels: buckets.take(user_id, megapixels)


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
