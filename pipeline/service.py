"""Wire the pipeline's parts together for one process: clients, queues, worker pool, consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from config.settings import Settings
from pipeline.aws import AwsClients
from pipeline.consumer import Consumer
from pipeline.jobs import JobRunner
from pipeline.queue import Queue
from pipeline.records import RecordStore
from pipeline.storage import Storage
from pipeline.tables import Tables
from pipeline.webhooks import open_dispatcher
from pipeline.workers import WorkerPool


@dataclass(frozen=True)
class Queues:
    main: Queue
    dlq: Queue


async def open_queues(clients: AwsClients, settings: Settings) -> Queues:
    """Resolve both queue URLs once; they never change for a process's life."""
    main = await Queue.named(clients.sqs, settings.aws.queue_name)
    dlq = await Queue.named(clients.sqs, settings.aws.dlq_name)
    return Queues(main, dlq)


@asynccontextmanager
async def open_consumer(
    clients: AwsClients, settings: Settings, *, burst: bool = False, pool: WorkerPool | None = None
) -> AsyncIterator[Consumer]:
    """A ready consumer with its own worker pool, shut down (pool included) when the block ends.

    A `pool` passed in is used and left running: tests run many short consumers on one pool
    instead of starting worker processes for each.
    """
    queues = await open_queues(clients, settings)
    storage = Storage(clients.s3)
    owned = pool is None
    if pool is None:
        pool = WorkerPool(settings.consumer.workers, settings.consumer.worker_threads)
    tables = Tables(clients.dynamodb, settings.aws)
    try:
        if owned:
            await pool.warm_up()
        async with open_dispatcher(tables.users, settings.webhooks) as webhooks:
            jobs = JobRunner(storage, RecordStore(tables.images), pool, settings, webhooks, tables.users)
            yield Consumer(queues.main, queues.dlq, jobs, settings, burst=burst)
    finally:
        if owned:
            await asyncio.to_thread(pool.close)
