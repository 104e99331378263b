"""S3 operations the service needs, with errors already translated.

Uploads stream into S3 (one `put_object` when small, a multipart upload otherwise) while the
magic bytes and the byte cap are checked, so no request body is ever held whole in memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.aws import aws_errors
from pipeline.errors import (
    EmptyUpload,
    NotFound,
    ServiceError,
    StorageUnavailable,
    TooLarge,
)
from pipeline.formats import CONTENT_TYPES, MAGIC_BYTES_NEEDED, check_format

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectMeta:
    """What HEAD (or GET) tells about an object."""

    size: int
    etag: str
    last_modified: datetime
    content_type: str
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class StoredUpload:
    """The result of a completed upload."""

    key: str
    size: int
    format: str
    etag: str


def _meta(response: Mapping[str, Any]) -> ObjectMeta:
    try:
        return ObjectMeta(
            size=int(response["ContentLength"]),
            etag=str(response["ETag"]),
            last_modified=response["LastModified"],
            content_type=str(response.get("ContentType") or "application/octet-stream"),
            metadata=dict(response.get("Metadata") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:  # a proxy or a faulty service cut the headers
        raise StorageUnavailable(f"incomplete answer from object storage: {exc!r}") from None


class OversizeObject(TooLarge):
    """An object in the bucket is larger than the pipeline accepts; carries its metadata."""

    def __init__(self, meta: ObjectMeta, max_bytes: int) -> None:
        super().__init__(f"{meta.size} bytes is more than the {max_bytes} allowed")
        self.meta = meta


class Storage:
    """Thin async facade over one S3 client."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        with aws_errors(StorageUnavailable, NotFound):
            return _meta(await self._s3.head_object(Bucket=bucket, Key=key))

    async def etag_of(self, bucket: str, key: str) -> str | None:
        """The object's current ETag, or None when there is no such object."""
        try:
            return (await self.head(bucket, key)).etag
        except NotFound:
            return None

    async def check_bucket(self, bucket: str) -> None:
        with aws_errors(StorageUnavailable):
            await self._s3.head_bucket(Bucket=bucket)

    async def read(self, bucket: str, key: str, max_bytes: int) -> tuple[ObjectMeta, bytes]:
        """Whole object for the imaging worker, refusing one above `max_bytes` before reading it."""
        with aws_errors(StorageUnavailable, NotFound):
            response = await self._s3.get_object(Bucket=bucket, Key=key)
            meta = _meta(response)
            async with response["Body"] as body:
                if meta.size > max_bytes:
                    raise OversizeObject(meta, max_bytes)
                data = await body.read()
        return meta, data

    async def stream(
        self,
        bucket: str,
        key: str,
        byte_range: tuple[int, int] | None = None,
        *,
        if_match: str | None = None,
        chunk_size: int = 256 * 1024,
    ) -> tuple[ObjectMeta, AsyncGenerator[bytes, None]]:
        """Open an object (or an inclusive byte range of it) and return its chunks lazily.

        `if_match` pins the version a caller already described in its headers (412 otherwise).
        """
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        if byte_range is not None:
            kwargs["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        with aws_errors(StorageUnavailable, NotFound):
            response = await self._s3.get_object(**kwargs)
        body = response["Body"]

        async def chunks() -> AsyncGenerator[bytes, None]:
            async with body:
                with aws_errors(StorageUnavailable):
                    async for chunk in body.iter_chunks(chunk_size):
                        yield chunk

        return _meta(response), chunks()

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        with aws_errors(StorageUnavailable):
            await self._s3.put_object(
                Bucket=bucket, Key=key, Body=data, ContentType=content_type, Metadata=dict(metadata or {})
            )

    async def put_json(
        self, bucket: str, key: str, document: Mapping[str, Any], metadata: Mapping[str, str] | None = None
    ) -> None:
        await self.put(
            bucket, key, json.dumps(document, sort_keys=True).encode(), "application/json", metadata
        )

    async def delete_many(self, bucket: str, keys: list[str]) -> None:
        """Idempotent: keys that do not exist are not an error (S3 semantics)."""
        if not keys:
            return
        with aws_errors(StorageUnavailable):
            response = await self._s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
        if errors := response.get("Errors"):
            raise StorageUnavailable(f"could not delete {len(errors)} objects: {errors[0].get('Message')}")

    async def get_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        """A small JSON document, or None where there is none."""
        try:
            _, data = await self.read(bucket, key, max_bytes=1024 * 1024)
        except NotFound:
            return None
        document = json.loads(data)
        return document if isinstance(document, dict) else None

    async def upload_stream(
        self,
        bucket: str,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        part_size: int,
        allowed_formats: frozenset[str],
        metadata: Mapping[str, str],
    ) -> StoredUpload:
        """Stream `chunks` to `key`, checking type from the first bytes and the size as it goes.

        Nothing is written before the type is known; a multipart upload that fails or crosses
        `max_bytes` is aborted, so a refused upload never leaves a partial object behind.
        """
        # Chunks are kept as a list and joined once per part: one copy of the data, not several.
        pending: list[bytes] = []
        pending_bytes = 0
        total = 0
        fmt: str | None = None
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def flush_part() -> None:
            nonlocal upload_id
            if upload_id is None:
                with aws_errors(StorageUnavailable):
                    created = await self._s3.create_multipart_upload(
                        Bucket=bucket, Key=key, ContentType=CONTENT_TYPES[fmt or ""], Metadata=dict(metadata)
                    )
                upload_id = str(created["UploadId"])
            nonlocal pending, pending_bytes
            number = len(parts) + 1
            joined = b"".join(pending)
            body, rest = joined[:part_size], joined[part_size:]
            pending, pending_bytes = ([rest] if rest else []), len(rest)
            with aws_errors(StorageUnavailable):
                part = await self._s3.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
            parts.append({"ETag": part["ETag"], "PartNumber": number})

        try:
            async for chunk in chunks:
                total += len(chunk)
                if total > max_bytes:
                    raise TooLarge(f"the upload is larger than the {max_bytes} bytes allowed")
                pending.append(chunk)
                pending_bytes += len(chunk)
                if fmt is None and total >= MAGIC_BYTES_NEEDED:
                    fmt = check_format(b"".join(pending)[:MAGIC_BYTES_NEEDED], allowed_formats)
                while pending_bytes >= part_size + 1:  # keep the last bytes for the final part
                    await flush_part()
            if total == 0:
                raise EmptyUpload()
            body = b"".join(pending)
            if fmt is None:
                fmt = check_format(body, allowed_formats)
            if upload_id is None:
                with aws_errors(StorageUnavailable):
                    response = await self._s3.put_object(
                        Bucket=bucket,
                        Key=key,
                        Body=body,
                        ContentType=CONTENT_TYPES[fmt],
                        Metadata=dict(metadata),
                    )
                return StoredUpload(key, total, fmt, str(response["ETag"]))
            if pending_bytes:
                await flush_part()
            with aws_errors(StorageUnavailable):
                response = await self._s3.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
            upload_id = None
            return StoredUpload(key, total, fmt, str(response["ETag"]))
        except BaseException:
            if upload_id is not None:
                await self._abort(bucket, key, upload_id)
            raise

    async def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            with aws_errors(StorageUnavailable):
                await self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except ServiceError as exc:  # the bucket's lifecycle rule for stale uploads is the backstop
            log.warning("multipart abort failed key=%s upload_id=%s error=%s", key, upload_id, exc)
