"""Create the local backend's buckets and queues, idempotently (the counterpart of
`pipeline.aws.provision` for AWS): the same topology (`pipeline.core.topology`)."""

from __future__ import annotations

from config.settings import Settings
from pipeline.core.topology import topology
from pipeline.local.database import Database
from pipeline.local.queue import create_queue
from pipeline.local.storage import create_bucket


async def provision_local(db: Database, settings: Settings) -> None:
    plan = topology(settings)
    for spec in plan.queues:
        await create_queue(db, spec)
    await create_bucket(db, plan.source_bucket, notify_queue=plan.notified_queue)
    await create_bucket(db, plan.dest_bucket)
