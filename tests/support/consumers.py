"""Consumers for the tests: short ones on the session's shared worker pools, run until a stack's
queue is drained, and the event Lambda's SQS event source would hand the function."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from pipeline.aws.queue import Queue
from pipeline.backends import aws_backend, open_backend
from pipeline.consumer.loop import Consumer
from pipeline.consumer.service import open_consumer
from pipeline.imaging.workers import WorkerPool
from tests.support.backends import Backend

#: The session's worker pools, by role (the app's variants or a consumer's) and shape.
_POOLS: dict[tuple[bool, int, int], WorkerPool] = {}


async def shared_pool(settings: Settings, *, variants: bool = False) -> WorkerPool:
    """One worker pool per shape for the whole session: starting worker processes (imports of
    pyvips and Pillow included) for every short consumer, or every app's variants, cost seconds
    per test. `variants`: the shape of the app's variant pool rather than the consumer's (the apps'
    pools and the consumers' are never the same pool, even where their shapes agree)."""
    consumer = settings.consumer
    shape = (settings.variants.workers, 1) if variants else (consumer.workers, consumer.worker_threads)
    key = (variants, *shape)
    if key not in _POOLS:
        _POOLS[key] = WorkerPool(*shape)
        await _POOLS[key].warm_up()
    return _POOLS[key]


def close_pools() -> None:
    """Stop the session's worker pools (at the end of the session)."""
    for pool in _POOLS.values():
        pool.close()


async def consume(backend: Backend) -> dict[str, int]:
    """Run a short consumer on `backend` until its queue is drained; the outcomes it counted."""
    pool = await shared_pool(backend.settings)
    async with open_consumer(backend.ports, backend.settings, burst=True, pool=pool) as consumer:
        return dict((await consumer.run()).outcomes)


@asynccontextmanager
async def shared_consumer(
    clients: AwsClients, settings: Settings, *, burst: bool = False
) -> AsyncIterator[Consumer]:
    """A consumer on the session's shared worker pool (tests that kill workers open their own)."""
    backend = await aws_backend(clients, settings)
    async with open_consumer(backend, settings, burst=burst, pool=await shared_pool(settings)) as consumer:
        yield consumer


async def run_consumer_until_drained(
    clients: AwsClients, settings: Settings, timeout: float = 30
) -> dict[str, int]:
    """Run a burst consumer: returns once the queue is empty and nothing is in flight."""
    async with shared_consumer(clients, settings, burst=True) as consumer:
        async with asyncio.timeout(timeout):
            stats = await consumer.run()
    return dict(stats.outcomes)


@asynccontextmanager
async def consumer_on(
    settings: Settings, *, burst: bool = True, wrap: Callable[[Any], Any] | None = None
) -> AsyncIterator[Consumer]:
    """A consumer on `settings`' stack (either backend), on the session's shared worker pool;
    `wrap` changes its ports first (`tests.support.faults`)."""
    pool = await shared_pool(settings)
    async with open_backend(settings) as opened:
        ports = wrap(opened) if wrap is not None else opened
        async with open_consumer(ports, settings, burst=burst, pool=pool) as consumer:
            yield consumer


async def drain(
    settings: Settings, timeout: float = 30, wrap: Callable[[Any], Any] | None = None
) -> dict[str, int]:
    """Run a burst consumer on `settings`' stack (either backend) until its queue is drained; the
    outcomes it counted."""
    async with consumer_on(settings, wrap=wrap) as consumer:
        async with asyncio.timeout(timeout):
            return dict((await consumer.run()).outcomes)


async def sqs_event(
    clients: AwsClients,
    settings: Settings,
    count: int,
    receive_count: int | None = None,
    *,
    queue_name: str | None = None,
) -> dict[str, Any]:
    """What Lambda's SQS event source hands the function: the queue's real messages (the S3
    events' queue, or the one named)."""
    name = queue_name or settings.aws.queue_name
    queue = await Queue.named(clients.sqs, name)
    messages: dict[str, Any] = {}
    async with asyncio.timeout(20):
        while len(messages) < count:
            for m in await queue.receive(10, wait_seconds=1, visibility_timeout=60):
                if "TestEvent" not in m.body:
                    messages[m.id] = m
    return {
        "Records": [
            {
                "messageId": m.id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": {"ApproximateReceiveCount": str(receive_count or m.receive_count)},
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{settings.aws.region}:123456789012:{name}",
            }
            for m in messages.values()
        ]
    }
