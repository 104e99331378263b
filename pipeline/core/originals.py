"""Originals read by the worker process that decodes them, not by the event loop that hands out
the work.

The event loop names the original (`Original`: where it is, and the most it may read); the
worker reads it, hashes it and decodes it, and sends back what it learnt (`Fetched`: the object's
metadata, its SHA-256 and first bytes) with what it made. The original's megabytes then never
pass through the event loop, nor through the pipe between the two: for a 12 MP JPEG that was
about half of the consumer loop's CPU per image (the GET, the hash and the hand-off:
`scripts/bench_calls.py`), which the loop needs for feeding more workers, and the API's variant
path saves the same on every first request.

A worker holds one synchronous S3 client (botocore, the library under aiobotocore: a worker has
no event loop to run the other on), made as the worker starts; on the local backend it opens the
blob file the event loop found. The client gives up on a stalled S3 well within a job's timeout
(`pipeline.aws.clients.sync_s3_client`), so a slow network fails a job as transient, never as an image
too costly to process.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import NotFound, PermanentError, StorageUnavailable
from pipeline.core.objects import ObjectMeta, OversizeObject, object_meta, source_tag
from pipeline.core.reservations import METADATA_KEY as RESERVATION_KEY

if TYPE_CHECKING:
    from config.settings import AwsSettings
    from pipeline.core.results import RenditionResult

#: Bytes of the original sent back with its result: enough to tell its format (`pipeline.core.formats`).
HEAD_BYTES = 64


@dataclass(frozen=True)
class S3Original:
    """An object in S3 (or the embedded endpoint), read with these settings."""

    aws: AwsSettings
    bucket: str
    key: str
    max_bytes: int


@dataclass(frozen=True)
class FileOriginal:
    """A blob of the local backend: the file its row names, and the row's metadata. A file gone
    by the time the worker opens it was replaced or deleted since (`NotFound`)."""

    path: str
    meta: ObjectMeta
    max_bytes: int


Original = S3Original | FileOriginal


@dataclass(frozen=True)
class Destination:
    """Where a worker that read an original from S3 puts the renditions it made of it (their
    keys by rendition name), if the object names `owner` as its uploader, as the API's do, and
    no presigned reservation: anything else is checked by the event loop first, which then
    writes them. A worker that read a local blob leaves them to the event loop too (only it
    writes the local backend's database)."""

    bucket: str
    keys: Mapping[str, str]
    owner: str

    def takes(self, meta: ObjectMeta) -> bool:
        return meta.metadata.get("user-id") == self.owner and RESERVATION_KEY not in meta.metadata


@dataclass(frozen=True)
class Fetched:
    """What the worker read, and the renditions it made of it (or the permanent error that
    prevented them)."""

    meta: ObjectMeta
    sha256: str
    head: bytes
    result: RenditionResult | None
    error: PermanentError | None


def read(original: Original) -> tuple[ObjectMeta, bytes]:
    """The original's metadata and bytes, in this (worker) process. `OversizeObject` above its
    `max_bytes` (nothing read), `NotFound` if it is gone, `StorageUnavailable` if storage fails."""
    if isinstance(original, FileOriginal):
        if original.meta.size > original.max_bytes:
            raise OversizeObject(original.meta, original.max_bytes)
        try:
            with open(original.path, "rb") as file:
                data = file.read(original.max_bytes + 1)
        except FileNotFoundError:
            raise NotFound() from None
        return original.meta, _whole(original.meta, data)
    from pipeline.aws.clients import aws_errors  # botocore and its kin: only where S3 is read

    s3 = client(original.aws)
    with aws_errors(StorageUnavailable, NotFound):
        response = s3.get_object(Bucket=original.bucket, Key=original.key)
        body = response["Body"]
        try:
            meta = object_meta(response)
            if meta.size > original.max_bytes:
                raise OversizeObject(meta, original.max_bytes)
            data = body.read(original.max_bytes + 1)
        finally:
            body.close()
    return meta, _whole(meta, data)


def fetched(original: Original, make: Any, dest: Destination | None = None) -> Fetched:
    """Read the original, hash it, and hand its bytes to `make` (a decoder's `bytes -> result`
    that raises `PermanentError` for what it cannot decode); put what it made into `dest`, where
    one is given and this worker can."""
    meta, data = read(original)
    digest = hashlib.sha256(data).hexdigest()
    try:
        result, error = make(data), None
    except PermanentError as exc:
        result, error = None, exc
    if result is not None and dest is not None and isinstance(original, S3Original) and dest.takes(meta):
        result = _stored(original.aws, dest, meta, result)
    return Fetched(meta, digest, data[:HEAD_BYTES], result, error)


def _stored(
    aws: AwsSettings, dest: Destination, meta: ObjectMeta, result: RenditionResult
) -> RenditionResult:
    """Put the renditions as the event loop would (`JobRunner._write_renditions`: each names
    the original it was made from); they go back without their bytes."""
    from pipeline.aws.clients import aws_errors

    s3 = client(aws)
    stored = []
    with aws_errors(StorageUnavailable):
        for rendition in result.renditions:
            s3.put_object(
                Bucket=dest.bucket,
                Key=dest.keys[rendition.spec.name],
                Body=rendition.data,
                ContentType=rendition.spec.content_type,
                Metadata=source_tag(meta.etag),
            )
            stored.append(dataclasses.replace(rendition, data=b"", stored_bytes=rendition.size))
    return dataclasses.replace(result, renditions=tuple(stored))


def _whole(meta: ObjectMeta, data: bytes) -> bytes:
    if len(data) != meta.size:  # a connection cut short, or an object replaced mid-read
        raise StorageUnavailable(f"read {len(data)} bytes of an object of {meta.size}")
    return data


_clients: dict[AwsSettings, Any] = {}


def client(aws: AwsSettings) -> Any:
    """This process's S3 client for `aws` (one per settings: a worker serves one service). Made
    when its worker starts (`pipeline.imaging.workers`): its 0.2 s of models and its 35 MB are then paid
    once, not by the worker's first job."""
    made = _clients.get(aws)
    if made is None:
        from pipeline.aws.clients import sync_s3_client

        made = _clients[aws] = sync_s3_client(aws)
    return made
