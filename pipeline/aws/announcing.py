"""Events for an object store that sends none (`IMGSVC_S3_NOTIFICATIONS=false`: R2, SeaweedFS,
MinIO without a notification target), and for any store holding the local backend's objects
(whose queue no store can reach): the service announces each original it stores itself, as the
local backend does, with the event S3 would have sent (`object_created`).

Only what the service writes is announced: presigned uploads, which go to the store without it,
need the store's own notifications (refused at start without them), and an object put into the
bucket by other means waits for `python -m pipeline reconcile`, which sends the events of
originals that have no record. A crash between the write and the announcement leaves the same
gap, closed the same way; the upload's client sees the failure and may send it again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from config.settings import AwsSettings
from pipeline.aws.storage import Storage
from pipeline.core.events import object_created
from pipeline.core.objects import Part, StoredUpload
from pipeline.core.ports import MessageQueue


class AnnouncingStorage(Storage):
    """`Storage` that sends the main queue (SQS, or the local backend's) an ObjectCreated event
    for each object it writes into the source bucket."""

    def __init__(self, s3: Any, aws: AwsSettings, queue: MessageQueue) -> None:
        super().__init__(s3, aws)
        self._announced = aws.source_bucket
        self._queue = queue

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        etag = await super().put(bucket, key, data, content_type, metadata)
        await self._announce(bucket, key, len(data), etag)
        return etag

    async def upload_stream(
        self, bucket: str, key: str, chunks: AsyncIterator[bytes], **options: Any
    ) -> StoredUpload:
        stored = await super().upload_stream(bucket, key, chunks, **options)
        await self._announce(bucket, key, stored.size, stored.etag)
        return stored

    async def copy(
        self, bucket: str, source: str, key: str, content_type: str, metadata: Mapping[str, str]
    ) -> None:
        await super().copy(bucket, source, key, content_type, metadata)
        if bucket == self._announced:
            meta = await self.head(bucket, key)
            await self._announce(bucket, key, meta.size, meta.etag)

    async def complete_parts(self, bucket: str, key: str, upload_id: str, parts: Sequence[Part]) -> str:
        etag = await super().complete_parts(bucket, key, upload_id, parts)
        await self._announce(bucket, key, sum(p.size for p in parts), etag)
        return etag

    async def _announce(self, bucket: str, key: str, size: int, etag: str) -> None:
        if bucket == self._announced:
            await self._queue.send(object_created(bucket, key, size, etag))
