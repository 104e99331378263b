"""What object stores say of objects (metadata, listings, completed uploads), the refusal of one
too large to read, and small JSON documents over any store: the object port's data types, kept
apart from the AWS libraries because worker processes need them too (`pipeline.core.originals`),
and the local backend should not load aiobotocore to get them."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.core.errors import NotFound, StorageUnavailable, TooLarge


@dataclass(frozen=True)
class ObjectMeta:
    """What HEAD (or GET) tells about an object."""

    size: int
    etag: str
    last_modified: datetime
    content_type: str
    metadata: Mapping[str, str]


def object_meta(response: Mapping[str, Any]) -> ObjectMeta:
    """The metadata of a HEAD or GET answer (aiobotocore's or botocore's: the same shape)."""
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
        self.max_bytes = max_bytes

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in a worker process (`pipeline.core.originals`) and pickled back to the event loop.
        return OversizeObject, (self.meta, self.max_bytes)


def source_tag(etag: str) -> dict[str, str]:
    """The metadata a rendition or variant is stored with: the ETag of the original it was made
    from (unquoted), which copies and gc check it against."""
    return {"source-etag": etag.strip('"')}


@dataclass(frozen=True)
class ListedObject:
    """One object as a bucket listing gives it."""

    key: str
    size: int
    etag: str
    last_modified: datetime


@dataclass(frozen=True)
class Part:
    """One part of a multipart (resumable) upload, as the store holds it."""

    number: int
    etag: str
    size: int


@dataclass(frozen=True)
class StoredUpload:
    """The result of a completed upload."""

    key: str
    size: int
    format: str
    etag: str


class JsonDocuments(ABC):
    """Small JSON documents on top of `put` and `read`, alike on every object store."""

    @abstractmethod
    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str: ...

    @abstractmethod
    async def read(self, bucket: str, key: str, max_bytes: int) -> tuple[ObjectMeta, bytes]: ...

    async def put_json(
        self, bucket: str, key: str, document: Mapping[str, Any], metadata: Mapping[str, str] | None = None
    ) -> None:
        await self.put(
            bucket, key, json.dumps(document, sort_keys=True).encode(), "application/json", metadata
        )

    async def get_json(self, bucket: str, key: str) -> dict[str, Any] | None:
        """A small JSON document, or None where there is none."""
        try:
            _, data = await self.read(bucket, key, max_bytes=1024 * 1024)
        except NotFound:
            return None
        document = json.loads(data)
        return document if isinstance(document, dict) else None


async def one_chunk(data: bytes) -> AsyncGenerator[bytes, None]:
    """Bytes already in memory as the chunk stream a store's read gives."""
    yield data
