"""Originals read by the worker process that decodes them, not by the event loop that hands out
the work.

The event loop names the original (`Original`: where it is, and the most it may read); the
worker reads it, hashes it and decodes it, and sends back what it learnt (`Fetched`: the object's
metadata, its SHA-256 and first bytes) with what it made. The original's megabytes then never
pass through the event loop, nor through the pipe between the two: for a 12 MP JPEG that was
about half of the consumer loop's CPU per image (the GET, the hash and the hand-off:
`scripts/bench_calls.py`), which the loop needs for feeding more workers, and the API's variant
path saves the same on every first request.

Each backend's original knows how to read itself: the local backend's is the blob file the
event loop found (here); the AWS backend's is read with a synchronous S3 client
(`pipeline.aws.originals`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.core.errors import NotFound, PermanentError, StorageUnavailable
from pipeline.core.objects import ObjectMeta, OversizeObject
from pipeline.core.reservations import METADATA_KEY as RESERVATION_KEY

if TYPE_CHECKING:
    from pipeline.core.results import RenditionResult

#: Bytes of the original sent back with its result: enough to tell its format (`pipeline.core.formats`).
HEAD_BYTES = 64


@dataclass(frozen=True)
class FileOriginal:
    """A blob of the local backend: the file its row names, and the row's metadata. A file gone
    by the time the worker opens it was replaced or deleted since (`NotFound`)."""

    path: str
    meta: ObjectMeta
    max_bytes: int

    def read(self) -> tuple[ObjectMeta, bytes]:
        if self.meta.size > self.max_bytes:
            raise OversizeObject(self.meta, self.max_bytes)
        try:
            with open(self.path, "rb") as file:
                data = file.read(self.max_bytes + 1)
        except FileNotFoundError:
            raise NotFound() from None
        return self.meta, whole(self.meta, data)

    def store(self, dest: Destination, meta: ObjectMeta, result: RenditionResult) -> RenditionResult:
        """Only the event loop writes the local backend's database: it stores them."""
        return result


class Original(Protocol):
    """Where an original is, and the most a worker may read of it: picklable, read in the worker."""

    @property
    def max_bytes(self) -> int: ...

    def read(self) -> tuple[ObjectMeta, bytes]:
        """Its metadata and bytes. `OversizeObject` above `max_bytes` (nothing read), `NotFound`
        if it is gone, `StorageUnavailable` if storage fails."""
        ...

    def store(self, dest: Destination, meta: ObjectMeta, result: RenditionResult) -> RenditionResult:
        """Put the renditions into `dest` where this worker can (they go back without their
        bytes), or give them back as they are for the event loop to store."""
        ...


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
    """The original's metadata and bytes, in this (worker) process."""
    return original.read()


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
    if result is not None and dest is not None and dest.takes(meta):
        result = original.store(dest, meta, result)
    return Fetched(meta, digest, data[:HEAD_BYTES], result, error)


def whole(meta: ObjectMeta, data: bytes) -> bytes:
    if len(data) != meta.size:  # a connection cut short, or an object replaced mid-read
        raise StorageUnavailable(f"read {len(data)} bytes of an object of {meta.size}")
    return data
