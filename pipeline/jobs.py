"""Turn one ObjectCreated record into renditions and a status document.

Idempotent: keys are deterministic and the work always reads the *current* original, so a
duplicate or stale event rewrites the same result instead of adding or reverting one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, NoReturn

from config.settings import Settings
from pipeline.errors import NotFound, PermanentError, PoisonMessage, ServiceError, SourceMissing
from pipeline.events import ObjectCreated
from pipeline.imaging import RenditionResult, make_renditions
from pipeline.layout import ImageRef
from pipeline.status import StatusStore
from pipeline.storage import OversizeObject, Storage
from pipeline.workers import WorkerPool

log = logging.getLogger(__name__)
Outcome = Literal["ready", "source_missing"]
#: How often a job re-does its work when the original changes under it before giving way.
MAX_SOURCE_CHANGES = 3


@dataclass(frozen=True)
class JobResult:
    outcome: Outcome
    key: str
    engine: str | None = None
    renditions: int = 0


class JobRunner:
    """Reads the original, resizes it in the worker pool, writes renditions and status."""

    def __init__(self, storage: Storage, status: StatusStore, pool: WorkerPool, settings: Settings) -> None:
        self._storage = storage
        self._status = status
        self._pool = pool
        self._settings = settings

    async def process(self, record: ObjectCreated) -> JobResult:
        """Raises `PermanentError` (after recording `failed`) or `TransientError`."""
        aws = self._settings.aws
        if record.bucket != aws.source_bucket:
            raise PoisonMessage(f"event for bucket {record.bucket!r}, expected {aws.source_bucket!r}")
        ref = ImageRef(record.key)
        for _ in range(MAX_SOURCE_CHANGES):
            try:
                meta, data = await self._storage.read(
                    aws.source_bucket, ref.source_key, self._settings.imaging.max_bytes
                )
            except NotFound:
                return JobResult("source_missing", ref.source_key)
            except OversizeObject as exc:  # nothing to decode, but the user must learn why
                await self._fail(ref, exc.meta.etag, exc)
            try:
                result = await self._resize(data)
            except PermanentError as exc:
                await self._fail(ref, meta.etag, exc)
            await self._write(ref, meta.etag, result)
            # A newer original may have been processed while we worked; if so, ours overwrote it.
            try:
                current = await self._storage.head(aws.source_bucket, ref.source_key)
            except NotFound:
                return JobResult("source_missing", ref.source_key)
            if current.etag == meta.etag:
                return JobResult("ready", ref.source_key, result.engine, len(result.renditions))
            log.info("original changed during processing key=%s, processing it again", ref.source_key)
        raise SourceMissing("the original keeps changing; the latest upload's own event will process it")

    async def _resize(self, data: bytes) -> RenditionResult:
        return await self._pool.run(
            self._settings.consumer.job_timeout, make_renditions, data, self._settings.imaging
        )

    async def _write(self, ref: ImageRef, etag: str, result: RenditionResult) -> None:
        for rendition in result.renditions:
            await self._storage.put(
                self._settings.aws.dest_bucket,
                ref.rendition_key(rendition.spec),
                rendition.data,
                rendition.spec.content_type,
                {"source-etag": etag.strip('"')},
            )
        await self._status.write_ready(ref, etag, result)

    async def _fail(self, ref: ImageRef, etag: str, error: ServiceError) -> NoReturn:
        """Record the failure, then drop renditions an earlier upload of this id left behind:
        they are never served once the status says `failed`, and would only cost storage."""
        await self._status.write_failed(ref, etag, error)
        await self._storage.delete_many(
            self._settings.aws.dest_bucket,
            [ref.rendition_key(spec) for spec in self._settings.imaging.renditions],
        )
        raise error
