"""AWS Lambda entry point: the consumer's job code, and webhook delivery, run on SQS event sources.

Two queues feed the function: the S3 events (jobs) and the webhook outbox (deliveries); each
record is handled by what its `eventSourceARN` names. Configure both event sources with
`ReportBatchItemFailures`: the handler answers `{"batchItemFailures": [...]}` naming only the
records SQS should keep. The rules are the consumer's: a permanent failure goes to the DLQ at once
with its reason (and counts as handled), a transient one is retried by SQS until
`IMGSVC_CONSUMER_MAX_ATTEMPTS` receives, then dead-lettered likewise. A job puts its webhook event
in the outbox, as a consumer's does, so a function that times out or crashes owes nothing it can
lose; one outbox record is one delivery attempt (`pipeline.webhooks.outbox`). Imaging runs in a thread of
the function (`InlineRunner`): Lambda has no /dev/shm for a process pool, and its memory setting
decides its CPU (see docs/capacity.md).

Handler: `pipeline.consumer.lambda_handler.handler`.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack
from typing import Any

# Imaging runs in this process (`InlineRunner`); loading libvips now puts its cost in Lambda's
# init phase rather than in the first invocation's time.
import pipeline.imaging.renditions  # noqa: F401
from config.settings import Settings
from pipeline.aws.clients import open_clients
from pipeline.backends import aws_backend
from pipeline.consumer.jobs import JobRunner
from pipeline.consumer.service import deliverer, job_runner
from pipeline.consumer.verdicts import judge
from pipeline.core.dlq import dead_letter
from pipeline.core.logs import configure_logging
from pipeline.core.ports import Message, MessageQueue
from pipeline.imaging.workers import InlineRunner
from pipeline.webhooks.delivery import open_session
from pipeline.webhooks.outbox import Deliverer

log = logging.getLogger(__name__)


class Function:
    """What a warm container keeps between invocations: its event loop, the AWS clients (and
    their connection pools), the queues, the job runner and the webhook session. Opened once, at
    the first invocation; Lambda freezes the container between invocations, so nothing runs in
    the background: every invocation finishes its records before it returns."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stack = AsyncExitStack()
        self._jobs: JobRunner | None = None
        self._dlq: MessageQueue | None = None
        self._deliverer: Deliverer | None = None

    async def open(self) -> Function:
        """The same parts as a consumer process's (`pipeline.consumer.service`), imaging in a thread."""
        clients = await self._stack.enter_async_context(open_clients(self.settings.aws))
        backend = await aws_backend(clients, self.settings)
        session = await self._stack.enter_async_context(open_session(self.settings.webhooks))
        self._dlq = backend.dlq
        self._deliverer = deliverer(backend, self.settings, session, poll_seconds=0)
        self._jobs = job_runner(backend, self.settings, InlineRunner(prepare=backend.prepare_reads))
        return self

    async def close(self) -> None:
        await self._stack.aclose()

    async def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        assert self._jobs is not None and self._dlq is not None and self._deliverer is not None
        jobs: list[Message] = []
        deliveries: list[Message] = []
        for record in event.get("Records", []):
            message = Message(
                id=str(record["messageId"]),
                receipt_handle=str(record.get("receiptHandle", "")),
                body=str(record.get("body", "")),
                receive_count=int(record.get("attributes", {}).get("ApproximateReceiveCount", "1")),
            )
            source = str(record.get("eventSourceARN", "")).rsplit(":", 1)[-1]
            (deliveries if source == self.settings.aws.outbox_name else jobs).append(message)
        failures = [m.id for m in jobs if not await _handled(m, self._jobs, self._dlq, self.settings)]
        # Deliveries at once (the session bounds the POSTs): a slow receiver costs one timeout.
        delivered = await asyncio.gather(
            *(self._deliverer.deliver(m) for m in deliveries), return_exceptions=True
        )
        for message, done in zip(deliveries, delivered, strict=True):
            if isinstance(done, BaseException):  # a bug: SQS keeps the record, nothing lost
                log.error("webhook delivery crashed message_id=%s error=%r", message.id, done)
            if done is not True:
                failures.append(message.id)
        return {"batchItemFailures": [{"itemIdentifier": failed} for failed in failures]}


class _Warm:
    """The module-level state of a warm container: one loop and one open `Function`."""

    loop: asyncio.AbstractEventLoop | None = None
    function: Function | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if _Warm.function is None or _Warm.loop is None:  # a cold start
        settings = Settings.from_env()
        configure_logging(settings.log_level, "json")
        _Warm.loop = asyncio.new_event_loop()
        _Warm.function = _Warm.loop.run_until_complete(Function(settings).open())
    return _Warm.loop.run_until_complete(_Warm.function.handle(event))


def shutdown() -> None:
    """Close what a warm container holds (Lambda never calls this; tests and tools do)."""
    if _Warm.function is not None and _Warm.loop is not None:
        _Warm.loop.run_until_complete(_Warm.function.close())
        _Warm.loop.close()
    _Warm.loop = _Warm.function = None


async def handle_event(event: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """One event with everything opened for it and closed after (tests, one-off tools)."""
    function = await Function(settings).open()
    try:
        return await function.handle(event)
    finally:
        await function.close()


async def _handled(message: Message, jobs: JobRunner, dlq: MessageQueue, settings: Settings) -> bool:
    """True when the record is done with (processed, ignored or dead-lettered); False to retry."""
    verdict = await judge(message, jobs, settings.consumer.max_attempts, [], [])
    if verdict.action == "dead_letter":
        assert verdict.error is not None
        return await dead_letter(dlq, message, verdict.error)  # else SQS delivers it again
    return verdict.action == "ack"
