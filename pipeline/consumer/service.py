"""Wire the pipeline's parts together: a backend, a worker pool, a consumer, and the webhook
deliverer reading the outbox beside it. The job runner and the deliverer are built here for the
Lambda function too (`job_runner`, `deliverer`), so the two runtimes run the same parts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from config.settings import Settings
from pipeline.consumer.jobs import JobRunner
from pipeline.consumer.loop import Consumer
from pipeline.core.ports import Backend
from pipeline.core.records import RecordStore
from pipeline.imaging.workers import InlineRunner, WorkerPool
from pipeline.webhooks.delivery import WebhookStore, open_session
from pipeline.webhooks.outbox import Deliverer, Outbox

log = logging.getLogger(__name__)


def job_runner(backend: Backend, settings: Settings, runner: WorkerPool | InlineRunner) -> JobRunner:
    """The jobs of `backend`'s queue, imaging on `runner`, finished records' events to its outbox."""
    tables = backend.tables
    return JobRunner(
        backend.storage,
        RecordStore(tables.images, tables.users, backend.changes),
        runner,
        settings,
        Outbox(backend.outbox),
        tables.users,
    )


def deliverer(
    backend: Backend, settings: Settings, session: aiohttp.ClientSession, *, poll_seconds: int
) -> Deliverer:
    """Webhook delivery from `backend`'s outbox, failures to the outbox's DLQ."""
    return Deliverer(
        backend.outbox,
        backend.outbox_dlq,
        WebhookStore(backend.tables.users),
        settings.webhooks,
        session,
        poll_seconds=poll_seconds,
    )


@asynccontextmanager
async def open_consumer(
    backend: Backend, settings: Settings, *, burst: bool = False, pool: WorkerPool | None = None
) -> AsyncIterator[Consumer]:
    """A ready consumer with its own worker pool, shut down (pool included) when the block ends.

    Webhook events are delivered from the outbox for the life of the block. On the way out the
    POSTs under way get `drain_timeout` s to finish, and the rest stay in the outbox for the next
    consumer; a burst consumer first delivers what the outbox holds (retries included) within
    that time, so that a drained queue means delivered webhooks too.

    A `pool` passed in is used and left running: tests run many short consumers on one pool
    instead of starting worker processes for each.
    """
    owned = pool is None
    if pool is None:
        pool = WorkerPool(
            settings.consumer.workers,
            settings.consumer.worker_threads,
            prepare=backend.prepare_reads,
            max_jobs=settings.imaging.worker_max_jobs,
            max_rss=settings.imaging.worker_max_rss,
        )
    hooks = settings.webhooks
    try:
        if owned:
            await pool.warm_up()
        async with open_session(hooks) as session:
            # A burst consumer polls briefly: its exit never waits out a long poll.
            hooks_out = deliverer(
                backend, settings, session, poll_seconds=0 if burst else settings.consumer.wait_time_seconds
            )
            delivering = asyncio.create_task(hooks_out.run(), name="webhook-deliverer")
            try:
                jobs = job_runner(backend, settings, pool)
                yield Consumer(backend.main, backend.dlq, jobs, settings, burst=burst)
            finally:
                started = time.monotonic()
                hooks_out.stop(settle_within=hooks.drain_timeout if burst else None)
                try:
                    await delivering
                except Exception:  # a bug: logged, and the events wait in the outbox
                    log.exception("webhook deliverer failed")
                await hooks_out.close(max(0.0, hooks.drain_timeout - (time.monotonic() - started)))
    finally:
        if owned:
            await asyncio.to_thread(pool.close)
