"""Uploads: the original system's JSON route and the native streaming routes. They read the
request (the bytes, raw or the one file of a multipart body, and the options) and hand it to the
upload service (`pipeline.core.uploads`), which streams it into the store: the answer is 202 as
soon as the original is durably stored, never after its thumbnails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from pipeline.core.errors import (
    FileNotInInput,
    InvalidField,
    MissingField,
    TooLarge,
    UploadModeDisabled,
)
from pipeline.core.image_record import ImageRecord, UploadFacts
from pipeline.core.layout import ImageRef, valid_image_id
from pipeline.core.untrusted import utf8_text
from pipeline.core.uploads import Upload
from web.bodies import json_object
from web.idempotency import fingerprint, once
from web.identity import resolve_user
from web.keys import IDEMPOTENCY, SETTINGS, UPLOADER
from web.multipart import MultipartUpload
from web.uploading import expiry_from, parse_public, upload_charge, visibility_facts
from web.views import describe

CHUNK = 256 * 1024
_FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: The SHA-256 of the bytes an upload stored (an idempotent upload saves it with its answer).
_SHA256 = web.RequestKey("uploaded_sha256", str)


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
        ref, size = ImageRef.of(user_id, image_id), path.stat().st_size
        return await _store(request, Upload(ref, _file_chunks(path), file_name, size, expires_at)), ""

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
        ref = ImageRef.of(user_id, image_id)
        response = await _store(request, Upload(ref, chunks, file_name, declared, expires_at), fields)
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
    request: web.Request, upload: Upload, options: Mapping[str, str] | None = None
) -> web.Response:
    """Store the upload (`pipeline.core.uploads`): 202 with the image's record. `options`: the
    upload's, its `public` value read once the bytes are through (a form field may follow them)."""
    user_id = upload.ref.owner_and_id[0]

    def visibility(user: Mapping[str, Any], previous: ImageRecord | None) -> UploadFacts:
        return visibility_facts(request, (options or {}).get("public"), user, previous)

    # From a header or a multipart part header: bytes that were not UTF-8 are lone surrogates.
    upload = dataclasses.replace(upload, file_name=utf8_text(upload.file_name))
    stored = await request.app[UPLOADER].store(
        upload, charge=upload_charge(request, user_id), visibility=visibility
    )
    request[_SHA256] = stored.sha256
    body = describe(request, user_id, stored.record)
    response = web.json_response(body, status=202)
    response.headers["Location"] = body["status_url"]
    return response


def _input_file(input_dir: Path, file_name: str) -> Path:
    root = input_dir.resolve()
    path = (root / file_name).resolve()
    if path.parent != root or not path.is_file():
        raise FileNotInInput(f"{file_name} is not in the input folder")
    return path


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
