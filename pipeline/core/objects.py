"""What an object store says of one object, and the refusal of one too large to read: kept apart
from `pipeline.aws.storage` (and its AWS libraries) because worker processes need them too
(`pipeline.core.originals`), and a worker reading local blobs should not load aiobotocore to get them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.core.errors import StorageUnavailable, TooLarge


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
