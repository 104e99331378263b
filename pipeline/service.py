"""Wire the pipeline's parts together for one process: a backend, a worker pool, a consumer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from config.settings import Settings
from pipeline.backends import Backend
from pipeline.consumer import Consumer
from pipeline.jobs import JobRunner
from pipeline.records import RecordStore
from pipeline.webhooks import open_dispatcher
from pipeline.workers import WorkerPool


@asynccontextmanager
async def open_consumer(
    backend: Backend, settings: Settings, *, burst: bool = False, pool: WorkerPool | None = None
) -> AsyncIterator[Consumer]:
    """A ready consumer with its own worker pool, shut down (pool included) when the block ends.

    A `pool` passed in is used and left running: tests run many short consumers on one pool
    instead of starting worker processes for each.
    """
    owned = pool is None
    if pool is None:
        pool = WorkerPool(settings.consumer.workers, settings.consumer.worker_threads)
    tables = backend.tables
    try:
        if owned:
            await pool.warm_up()
        async with open_dispatcher(tables.users, settings.webhooks) as webhooks:
            jobs = JobRunner(
                backend.storage,
                RecordStore(tables.images, tables.users),
                pool,
                settings,
                webhooks,
                tables.users,
            )
            yield Consumer(backend.main, backend.dlq, jobs, settings, burst=burst)
    finally:
        if owned:
            await asyncio.to_thread(pool.close)
