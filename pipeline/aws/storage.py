"""S3 operations the service needs, with errors already translated.

Uploads stream into S3 (one `put_object` when small, a multipart upload otherwise) while the
magic bytes and the byte cap are checked, so no request body is ever held whole in memory.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from config.settings import AwsSettings
from pipeline.aws.clients import aws_errors
from pipeline.aws.originals import S3Original
from pipeline.core.errors import (
    EmptyUpload,
    NotFound,
    ServiceError,
    StorageUnavailable,
    TooLarge,
    UploadMismatch,
)
from pipeline.core.formats import CONTENT_TYPES, MAGIC_BYTES_NEEDED, check_format
from pipeline.core.objects import (
    JsonDocuments,
    ListedObject,
    ObjectMeta,
    OversizeObject,
    Part,
    StoredUpload,
    object_meta,
)

if TYPE_CHECKING:
    from pipeline.core.originals import Original
    from pipeline.core.ports import BufferLease

log = logging.getLogger(__name__)
#: Keys per DeleteObjects request (S3 takes at most 1,000).
_DELETE_BATCH = 1000


class Storage(JsonDocuments):
    """Thin async facade over one S3 client."""

    def __init__(self, s3: Any, aws: AwsSettings) -> None:
        self._s3 = s3
        self._aws = aws

    async def locate(self, bucket: str, key: str, max_bytes: int) -> Original:
        return S3Original(self._aws, bucket, key, max_bytes)

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        with aws_errors(StorageUnavailable, NotFound):
            return object_meta(await self._s3.head_object(Bucket=bucket, Key=key))

    async def etag_of(self, bucket: str, key: str) -> str | None:
        """The object's current ETag, or None when there is no such object."""
        try:
            return (await self.head(bucket, key)).etag
        except NotFound:
            return None

    async def check_bucket(self, bucket: str) -> None:
        with aws_errors(StorageUnavailable):
            await self._s3.head_bucket(Bucket=bucket)

    async def check_space(self, *, probe: bool = False) -> str:
        """S3 has no disk of ours to fill: always `ok` (its own faults are errors of each call)."""
        return "ok"

    async def read(self, bucket: str, key: str, max_bytes: int) -> tuple[ObjectMeta, bytes]:
        """Whole object for the imaging worker, refusing one above `max_bytes` before reading it."""
        with aws_errors(StorageUnavailable, NotFound):
            response = await self._s3.get_object(Bucket=bucket, Key=key)
            meta = object_meta(response)
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

        return object_meta(response), chunks()

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Store one small object whole; returns its ETag (what GET and HEAD will say)."""
        with aws_errors(StorageUnavailable):
            response = await self._s3.put_object(
                Bucket=bucket, Key=key, Body=data, ContentType=content_type, Metadata=dict(metadata or {})
            )
        return str(response["ETag"])

    async def delete_many(self, bucket: str, keys: list[str]) -> None:
        """Idempotent: keys that do not exist are not an error (S3 semantics). Any number of
        keys: sent 1,000 at a time, DeleteObjects' limit."""
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = keys[start : start + _DELETE_BATCH]
            with aws_errors(StorageUnavailable):
                response = await self._s3.delete_objects(
                    Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            if errors := response.get("Errors"):
                raise StorageUnavailable(
                    f"could not delete {len(errors)} objects: {errors[0].get('Message')}"
                )

    async def copy(
        self,
        bucket: str,
        source: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        """CopyObject: the bytes never leave S3 (objects up to 5 GB; ours are renditions)."""
        with aws_errors(StorageUnavailable, not_found=NotFound):
            await self._s3.copy_object(
                Bucket=bucket,
                Key=key,
                CopySource={"Bucket": bucket, "Key": source},
                MetadataDirective="REPLACE",
                ContentType=content_type,
                Metadata=dict(metadata),
            )

    async def abort_stale_uploads(self, bucket: str, older_than: datetime, *, dry_run: bool = False) -> int:
        """Abort the multipart uploads begun before `older_than` (a crashed API's, say), a page
        at a time; their parts are billed as storage until then."""
        stale = 0
        paginator = self._s3.get_paginator("list_multipart_uploads")
        with aws_errors(StorageUnavailable):
            async for page in paginator.paginate(Bucket=bucket):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] >= older_than:
                        continue
                    stale += 1
                    if not dry_run:
                        await self._s3.abort_multipart_upload(
                            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
        return stale

    async def list_objects(self, bucket: str, prefix: str = "") -> AsyncIterator[list[ListedObject]]:
        """Every object under `prefix`, a page (at most 1,000) at a time, in key order."""
        paginator = self._s3.get_paginator("list_objects_v2")
        with aws_errors(StorageUnavailable):
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                yield [
                    ListedObject(str(o["Key"]), int(o["Size"]), str(o["ETag"]), o["LastModified"])
                    for o in page.get("Contents", [])
                ]

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
        lease: BufferLease | None = None,
    ) -> StoredUpload:
        """Stream `chunks` to `key`, checking type from the first bytes and the size as it goes.

        Nothing is written before the type is known; a multipart upload that fails or crosses
        `max_bytes` is aborted, so a refused upload never leaves a partial object behind. One
        buffer of at most `part_size` is used, grown as bytes arrive, each growth reserved from
        `lease` first (it may wait, or refuse the upload).
        """
        upload = _StreamedUpload(self._s3, bucket, key, metadata, part_size, allowed_formats, lease)
        try:
            async for chunk in chunks:
                if upload.total + len(chunk) > max_bytes:
                    raise TooLarge(f"the upload is larger than the {max_bytes} bytes allowed")
                await upload.feed(chunk)
            return await upload.finish()
        except BaseException:
            if upload.upload_id is not None:
                await self._abort(bucket, key, upload.upload_id)
            raise

    # -- resumable uploads (S3's multipart uploads; clients send the parts to presigned URLs) ----

    async def start_parts(self, bucket: str, key: str, content_type: str, metadata: Mapping[str, str]) -> str:
        with aws_errors(StorageUnavailable):
            created = await self._s3.create_multipart_upload(
                Bucket=bucket, Key=key, ContentType=content_type, Metadata=dict(metadata)
            )
        return str(created["UploadId"])

    async def put_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        chunks: AsyncIterator[bytes],
        length: int,
        lease: BufferLease | None = None,
    ) -> str:
        """A part sent through this process (a store its clients cannot reach: the local backend
        beside an S3-compatible store), held whole for the one request: reserved from `lease`
        first (the uploads' memory budget), and sent from the buffer as it is."""
        if lease is not None:
            await lease.grow_to(length)
        body = bytearray()
        async for chunk in chunks:
            if len(body) + len(chunk) > length:
                raise UploadMismatch(f"part {number} must have {length} bytes")
            body += chunk
        if len(body) != length:
            raise UploadMismatch(f"part {number} has {len(body)} bytes; it must have {length}")
        with aws_errors(StorageUnavailable, NotFound), _BufferReader(body) as reader:
            sent = await self._s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=reader
            )
        return str(sent["ETag"])

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[Part]:
        parts: list[Part] = []
        paginator = self._s3.get_paginator("list_parts")
        with aws_errors(StorageUnavailable, NotFound):
            async for page in paginator.paginate(Bucket=bucket, Key=key, UploadId=upload_id):
                parts += [
                    Part(int(p["PartNumber"]), str(p["ETag"]), int(p["Size"])) for p in page.get("Parts", [])
                ]
        return sorted(parts, key=lambda p: p.number)

    async def complete_parts(self, bucket: str, key: str, upload_id: str, parts: Sequence[Part]) -> str:
        listing = {"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]}
        with aws_errors(StorageUnavailable, NotFound):
            done = await self._s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=listing
            )
        return str(done["ETag"])

    async def abort_parts(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            with aws_errors(StorageUnavailable, NotFound):
                await self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except NotFound:
            pass  # completed or aborted already

    async def _abort(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            with aws_errors(StorageUnavailable):
                await self._s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        except ServiceError as exc:  # the bucket's lifecycle rule for stale uploads is the backstop
            log.warning("multipart abort failed key=%s upload_id=%s error=%s", key, upload_id, exc)


#: Bytes an upload's buffer reservation grows by at a time (fewer, larger steps than each chunk).
GROWTH = 64 * 1024


class _StreamedUpload:
    """The buffer and the S3 multipart state of one streamed upload.

    The buffer is filled in place and handed to S3 as it is, part after part: each byte is
    copied once, from the request into the buffer, never joined or sliced again. A full buffer
    is sent only when more data follows, so the last part is never empty and a body of at most
    one part is a single `put_object`.
    """

    def __init__(
        self,
        s3: Any,
        bucket: str,
        key: str,
        metadata: Mapping[str, str],
        part_size: int,
        allowed_formats: frozenset[str],
        lease: BufferLease | None,
    ) -> None:
        self._s3, self._bucket, self._key, self._metadata = s3, bucket, key, dict(metadata)
        #: Grows with the first part's bytes (never ahead of them), then is reused for each part.
        self._buffer = bytearray()
        self._lease = lease
        self._filled = 0
        self._part_size = part_size
        self._allowed = allowed_formats
        self._parts: list[dict[str, Any]] = []
        self.total = 0
        self.format: str | None = None
        self.upload_id: str | None = None

    async def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        view = memoryview(chunk)
        while view:
            if self._filled == len(self._buffer) < self._part_size:  # the first part: grow with it
                take = min(len(view), self._part_size - self._filled)
                if self._lease is not None:
                    await self._lease.grow_to(-(-(self._filled + take) // GROWTH) * GROWTH)
                self._buffer += view[:take]
                self._filled += take
                view = view[take:]
                continue
            if self._filled == len(self._buffer):
                await self._send_part()
            take = min(len(view), len(self._buffer) - self._filled)
            self._buffer[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
        if self.format is None and self.total >= MAGIC_BYTES_NEEDED:
            self._check_format()

    def _check_format(self) -> None:
        """Called while the buffer still starts with the body's first bytes."""
        self.format = check_format(bytes(self._buffer[:MAGIC_BYTES_NEEDED]), self._allowed)

    async def finish(self) -> StoredUpload:
        if self.total == 0:
            raise EmptyUpload()
        if self.format is None:
            self.format = check_format(bytes(self._buffer[: self._filled]), self._allowed)
        del self._buffer[self._filled :]  # in place: the last body is exactly what arrived
        if self.upload_id is None:
            # Closed (its view of the buffer released) when the call returns: the buffer can be
            # resized again only once no view of it is left.
            with aws_errors(StorageUnavailable), _BufferReader(self._buffer) as body:
                response = await self._s3.put_object(
                    Bucket=self._bucket,
                    Key=self._key,
                    Body=body,
                    ContentType=CONTENT_TYPES[self.format],
                    Metadata=self._metadata,
                )
            return StoredUpload(self._key, self.total, self.format, str(response["ETag"]))
        if self._filled:
            await self._send_part()
        with aws_errors(StorageUnavailable):
            response = await self._s3.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self.upload_id = None
        return StoredUpload(self._key, self.total, self.format, str(response["ETag"]))

    async def _send_part(self) -> None:
        if self.format is None:
            self._check_format()
        if self.upload_id is None:
            with aws_errors(StorageUnavailable):
                created = await self._s3.create_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    ContentType=CONTENT_TYPES[self.format or ""],
                    Metadata=self._metadata,
                )
            self.upload_id = str(created["UploadId"])
        number = len(self._parts) + 1
        with aws_errors(StorageUnavailable), _BufferReader(self._buffer) as body:
            part = await self._s3.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=self.upload_id, PartNumber=number, Body=body
            )
        self._parts.append({"ETag": part["ETag"], "PartNumber": number})
        self._filled = 0


class _BufferReader(io.RawIOBase):
    """A seekable file over a bytearray, without copying it: botocore sends (and checksums,
    and on a retry re-reads) a file in small reads, while a bytearray body would be handed to
    the HTTP client whole (aiohttp warns that this can block the loop)."""

    def __init__(self, data: bytearray) -> None:
        super().__init__()
        self._view = memoryview(data)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Whole slices in one C-level copy (RawIOBase's default would go through `readinto` in
        8 KiB steps for `read()` without a size)."""
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._position + size)
        chunk = self._view[self._position : end].tobytes()
        self._position = max(self._position, end)
        return chunk

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, target: Any) -> int:
        size = min(len(target), len(self._view) - self._position)
        target[:size] = self._view[self._position : self._position + size]
        self._position += size
        return size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._view)}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._view.release()
        super().close()
