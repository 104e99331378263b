"""Prometheus metrics of one process (prometheus-client's default registry).

Every process exposes its own: the API under `/metrics` on its port, a consumer on a port of its
own (`IMGSVC_METRICS_PORT`). Prometheus scrapes each process and sums across them, so nothing here
needs to be shared between processes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from pipeline.core.errors import ServiceError

if TYPE_CHECKING:
    from pipeline.core.ports import MessageQueue

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter(
    "imgsvc_http_requests_total",
    "HTTP requests answered, by route and status.",
    ["method", "route", "status"],
)
HTTP_SECONDS = Histogram(
    "imgsvc_http_request_seconds",
    "Time to answer an HTTP request (streaming bodies included), by route.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
HTTP_CONNECTIONS = Gauge("imgsvc_http_connections", "HTTP connections this process holds open.")
HTTP_CONNECTIONS_CLOSED = Counter(
    "imgsvc_http_connections_closed_total",
    "HTTP connections the server cut: header_timeout, body_timeout, too_large (body past its cap),"
    " send_timeout, evicted (idle or"
    " half-sent, to admit a new one at the cap), refused (at the cap, every connection busy).",
    ["reason"],
)
UPLOAD_BUFFER_BYTES = Gauge("imgsvc_upload_buffer_bytes", "Bytes of upload buffer space reserved now.")
UPLOADS_REFUSED = Counter(
    "imgsvc_uploads_refused_total",
    "Uploads refused before storing for want of room: buffer (no buffer space in time, 503) or"
    " user (too many of the user's uploads in progress, 429).",
    ["reason"],
)
UPLOAD_BYTES = Counter("imgsvc_upload_bytes_total", "Bytes of originals stored by uploads.")
MESSAGES = Counter(
    "imgsvc_messages_total",
    "Queue messages the consumer finished, by outcome (ready, retry, dead_lettered, ...).",
    ["outcome"],
)
DEAD_LETTERS = Counter("imgsvc_dead_letters_total", "Messages sent to the DLQ, by error code.", ["code"])
RECEIVED = Counter("imgsvc_messages_received_total", "Queue messages received by the consumer.")
PROCESSING_SECONDS = Histogram(
    "imgsvc_processing_seconds",
    "Time to make one image's renditions in a worker, by engine and source format.",
    ["engine", "format"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
VARIANT_REQUESTS = Counter(
    "imgsvc_variant_requests_total",
    "Variant requests by outcome: hit (streamed from storage) or miss (made first).",
    ["outcome"],
)
VARIANT_SECONDS = Histogram(
    "imgsvc_variant_seconds",
    "Time to make one variant (the original read, the worker's decode and encode), by output format.",
    ["format"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
)
VARIANT_SOURCES = Counter(
    "imgsvc_variant_sources_total",
    "Variants made, by what was decoded: the original, or its mezzanine (IMGSVC_MEZZANINE).",
    ["source"],
)
WEBHOOK_DELIVERIES = Counter(
    "imgsvc_webhook_deliveries_total",
    "Webhook events by how they ended: delivered, failed (every attempt refused, or a URL the rules"
    " refuse: in the outbox's DLQ); and attempts retried, and events deferred (their owner's"
    " receiver had its share of POSTs).",
    ["outcome"],
)
IN_FLIGHT = Gauge("imgsvc_jobs_in_flight", "Messages the consumer is working on.")
POOL_RESTARTS = Counter("imgsvc_worker_pool_restarts_total", "Imaging worker pools replaced after a crash.")
QUEUE_MESSAGES = Gauge(
    "imgsvc_queue_messages",
    "Approximate messages in the queues, sampled from SQS attributes.",
    ["queue", "state"],
)


@asynccontextmanager
async def queue_sampling(queues: Mapping[str, MessageQueue]) -> AsyncIterator[None]:
    """Sample the queues' depth for the life of the block: once per process, by its entry point
    (an API with the consumer in-process samples once, not twice)."""
    task = asyncio.create_task(sample_queues(queues), name="queue-depth-sampler")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def sample_queues(queues: Mapping[str, MessageQueue], every: float = 15.0) -> None:
    """Keep `imgsvc_queue_messages` current until cancelled (each queue by its label: the jobs'
    queue and DLQ, the webhook outbox and its DLQ). A queue that cannot be reached (SQS down, the
    database busy) is skipped until the next round."""
    while True:
        for label, queue in queues.items():
            with suppress(ServiceError):
                for state, count in (await queue.depth()).items():
                    QUEUE_MESSAGES.labels(label, state).set(count)
        await asyncio.sleep(every)
