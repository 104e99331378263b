"""Image status, kept next to the renditions as a small JSON document.

There is no database yet, so the status of an image is derived: the consumer writes
`{source_key}/status.json` into the destination bucket naming the source ETag it processed.
Whatever does not match the current original is `pending`. Every process reads the same
document, so several web and consumer processes always agree.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from config.settings import Settings
from pipeline.errors import NotFound, ServiceError
from pipeline.imaging import RenditionResult
from pipeline.layout import ImageRef
from pipeline.storage import ObjectMeta, Storage

State = Literal["pending", "ready", "failed"]


@dataclass(frozen=True)
class ImageStatus:
    """The status of one original, as the API reports it."""

    state: State
    source: ObjectMeta
    renditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: dict[str, str] | None = None
    info: dict[str, Any] | None = None


class StatusStore:
    """Reads and writes status documents in the destination bucket."""

    def __init__(self, storage: Storage, settings: Settings) -> None:
        self._storage = storage
        self._settings = settings

    async def write_ready(self, ref: ImageRef, source_etag: str, result: RenditionResult) -> None:
        renditions = {
            r.spec.name: {
                "key": ref.rendition_key(r.spec),
                "width": r.width,
                "height": r.height,
                "bytes": len(r.data),
                "content_type": r.spec.content_type,
            }
            for r in result.renditions
        }
        info = {"format": result.info.format, "width": result.info.width, "height": result.info.height}
        await self._write(ref, source_etag, "ready", renditions=renditions, info=info, engine=result.engine)

    async def write_failed(self, ref: ImageRef, source_etag: str, error: ServiceError) -> None:
        await self._write(ref, source_etag, "failed", error={"code": error.code, "message": error.message})

    async def _write(self, ref: ImageRef, source_etag: str, state: State, **fields: Any) -> None:
        document = {"state": state, "source_etag": source_etag, "updated_at": time.time(), **fields}
        # The ETag also travels as metadata, so a waiting client's HEAD can tell when it is written.
        metadata = {"source-etag": source_etag.strip('"')}
        await self._storage.put_json(self._settings.aws.dest_bucket, ref.status_key, document, metadata)

    async def wait(self, ref: ImageRef, seconds: float) -> ImageStatus:
        """The status, waiting up to `seconds` for a pending one to change (long polling).

        Between reads it only HEADs the status document, backing off from 50 to 250 ms, so a
        waiting client costs a few cheap requests per second whichever process serves it.
        """
        status = await self.read(ref)
        deadline = time.monotonic() + seconds
        delay = 0.05
        wanted = status.source.etag.strip('"')
        while status.state == "pending" and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 1.5, 0.25)
            try:
                head = await self._storage.head(self._settings.aws.dest_bucket, ref.status_key)
            except NotFound:
                continue
            if head.metadata.get("source-etag") == wanted:
                status = await self.read(ref)
        return status

    async def read(self, ref: ImageRef) -> ImageStatus:
        """The current status, raising `NotFound` when there is no such original."""
        source = await self._storage.head(self._settings.aws.source_bucket, ref.source_key)
        document = await self._storage.get_json(self._settings.aws.dest_bucket, ref.status_key)
        if document is None or document.get("source_etag") != source.etag:
            return ImageStatus("pending", source)
        state = document.get("state")
        if state == "ready":
            return ImageStatus("ready", source, document.get("renditions", {}), None, document.get("info"))
        if state == "failed":
            return ImageStatus("failed", source, error=document.get("error"))
        raise NotFound("the status document is unreadable")
