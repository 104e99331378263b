"""Create the local backend's buckets and queues, idempotently (the counterpart of
`pipeline.aws.provision` for AWS): the same names, the same redrive policies, the same notification."""

from __future__ import annotations

from config.settings import Settings
from pipeline.core.topology import MAX_RECEIVES, lease_seconds
from pipeline.local.database import Database
from pipeline.local.queue import QueueSpec, create_queue
from pipeline.local.storage import create_bucket


async def provision_local(db: Database, settings: Settings) -> None:
    aws, consumer = settings.aws, settings.consumer
    await create_queue(db, QueueSpec(aws.dlq_name))
    await create_queue(
        db,
        QueueSpec(
            aws.queue_name,
            visibility_timeout=consumer.visibility_timeout,
            dead_letter=aws.dlq_name,
            max_receive_count=consumer.redrive_max_receive_count,
        ),
    )
    await create_queue(db, QueueSpec(aws.outbox_dlq_name))
    await create_queue(
        db,
        QueueSpec(
            aws.outbox_name,
            visibility_timeout=lease_seconds(settings.webhooks),
            dead_letter=aws.outbox_dlq_name,
            max_receive_count=MAX_RECEIVES,
        ),
    )
    await create_bucket(db, aws.source_bucket, notify_queue=aws.queue_name)
    await create_bucket(db, aws.dest_bucket)
