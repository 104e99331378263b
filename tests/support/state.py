"""What a stack holds, as the tests read it: image records, objects, keys, the DLQ and the queue.
The `..._in` helpers take only the settings and go through the ports (either backend); the
others take moto's clients (the AWS backend)."""

from __future__ import annotations

from typing import Any

from config.settings import Settings
from pipeline.aws.clients import AwsClients, open_clients
from pipeline.aws.queue import Queue
from pipeline.aws.tables import Tables
from pipeline.backends import open_backend
from pipeline.core.events import parse_message
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef
from pipeline.core.objects import ObjectMeta
from pipeline.core.ports import Message
from pipeline.core.records import RecordStore


async def record_of(clients: AwsClients, settings: Settings, key: str) -> ImageRecord | None:
    """The image record of a source key, as every process sees it."""
    return await RecordStore(Tables(clients.dynamodb, settings.aws).images).read(ImageRef(key))


async def status_of(clients: AwsClients, settings: Settings, key: str) -> dict[str, Any]:
    """The record of a source key as a plain dict: `state`, `source_etag`, `error`, `renditions`."""
    return _status(key, await record_of(clients, settings, key))


def _status(key: str, record: ImageRecord | None) -> dict[str, Any]:
    assert record is not None, f"no record for {key}"
    return {
        "state": record.state,
        "source_etag": record.source_etag,
        "error": record.error,
        "renditions": record.renditions,
        "info": record.item.get("info"),
    }


async def dlq_messages(clients: AwsClients, settings: Settings) -> list[Message]:
    """Everything in the DLQ (peeked with a short visibility timeout)."""
    dlq = await Queue.named(clients.sqs, settings.aws.dlq_name)
    seen: dict[str, Message] = {}
    for _ in range(5):
        for message in await dlq.receive(10, wait_seconds=0, visibility_timeout=1):
            seen[message.id] = message
    return list(seen.values())


async def record_in(settings: Settings, key: str) -> ImageRecord | None:
    """The image record of a source key (None: there is none), on either backend."""
    async with open_backend(settings) as ports:
        return await RecordStore(ports.tables.images).read(ImageRef(key))


async def state_in(settings: Settings, key: str) -> dict[str, Any]:
    """`status_of` on `settings`' stack, either backend."""
    return _status(key, await record_in(settings, key))


async def object_in(settings: Settings, key: str, bucket: str | None = None) -> tuple[ObjectMeta, bytes]:
    """An object's metadata and bytes on `settings`' stack, either backend (the source bucket's
    unless `bucket` is named)."""
    async with open_backend(settings) as ports:
        meta, chunks = await ports.storage.stream(bucket or settings.aws.source_bucket, key)
        return meta, b"".join([chunk async for chunk in chunks])


async def keys_in(settings: Settings, bucket: str | None = None, prefix: str = "") -> list[str]:
    """Every key in a bucket of `settings`' stack (the source bucket's unless named)."""
    keys: list[str] = []
    async with open_backend(settings) as ports:
        async for page in ports.storage.list_objects(bucket or settings.aws.source_bucket, prefix):
            keys += [listed.key for listed in page]
    return keys


async def stored_nothing(settings: Settings) -> None:
    """Nothing in the source bucket and no event queued, on `settings`' stack (either backend);
    on AWS no multipart upload left open either (the local backend has none to leave)."""
    async with open_backend(settings) as ports:
        async for page in ports.storage.list_objects(settings.aws.source_bucket, ""):
            assert [listed.key for listed in page] == []
        queued = await ports.main.receive(10, 0)
        events = [parse_message(message.body) for message in queued]
        assert all(event.test_event for event in events), events
    if settings.local.data_dir is None:
        async with open_clients(settings.aws) as clients:
            uploads = await clients.s3.list_multipart_uploads(Bucket=settings.aws.source_bucket)
            assert uploads.get("Uploads", []) == []


async def dead_lettered(settings: Settings) -> list[Message]:
    """Everything in the DLQ of `settings`' stack, either backend (peeked: briefly invisible)."""
    seen: dict[str, Message] = {}
    async with open_backend(settings) as ports:
        for _ in range(5):
            for message in await ports.dlq.receive(10, 0, visibility_timeout=1):
                seen[message.id] = message
    return list(seen.values())


async def queued_events(clients: AwsClients, settings: Settings) -> list[str]:
    """Event names of everything now in the queue (peeked)."""
    url = (await clients.sqs.get_queue_url(QueueName=settings.aws.queue_name))["QueueUrl"]
    found = await clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    names = []
    for message in found.get("Messages", []):
        parsed = parse_message(message["Body"])
        names += ["TestEvent"] if parsed.test_event else [r.event_name for r in parsed.created]
    return names


async def nothing_stored(clients: AwsClients, settings: Settings) -> None:
    listed = await clients.s3.list_objects_v2(Bucket=settings.aws.source_bucket)
    assert listed.get("KeyCount", 0) == 0
    uploads = await clients.s3.list_multipart_uploads(Bucket=settings.aws.source_bucket)
    assert uploads.get("Uploads", []) == []
    assert all(name == "TestEvent" for name in await queued_events(clients, settings))
