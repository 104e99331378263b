"""AWS Lambda entry point: the consumer's job code, run on an SQS event source.

Configure the event source with `ReportBatchItemFailures`: the handler answers
`{"batchItemFailures": [...]}` naming only the records to retry. The rules are the consumer's:
a permanent failure goes to the DLQ at once with its reason (and counts as handled), a transient
one is retried by SQS until `IMGSVC_CONSUMER_MAX_ATTEMPTS` receives, then dead-lettered likewise.
Imaging runs in a thread of the function (`InlineRunner`): Lambda has no /dev/shm for a
process pool, and its memory setting decides its CPU (see docs/capacity.md).

Handler: `pipeline.lambda_handler.handler`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

# Imaging runs in this process (`InlineRunner`); loading libvips now puts its cost in Lambda's
# init phase rather than in the first invocation's time.
import pipeline.imaging  # noqa: F401
from config.settings import Settings
from pipeline.aws import open_clients
from pipeline.dlq import reason_attributes
from pipeline.errors import ServiceError
from pipeline.jobs import JobRunner
from pipeline.logs import configure_logging
from pipeline.queue import Message, Queue
from pipeline.records import RecordStore
from pipeline.storage import Storage
from pipeline.tables import Tables
from pipeline.verdicts import judge
from pipeline.webhooks import open_dispatcher
from pipeline.workers import InlineRunner

log = logging.getLogger(__name__)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    settings = Settings.from_env()
    configure_logging(settings.log_level, "json")
    return asyncio.run(handle_event(event, settings))


async def handle_event(event: dict[str, Any], settings: Settings) -> dict[str, Any]:
    failures = []
    async with open_clients(settings.aws) as clients:
        dlq = await Queue.named(clients.sqs, settings.aws.dlq_name)
        tables = Tables(clients.dynamodb, settings.aws)
        # A function is frozen once it returns: leaving this block delivers the batch's webhooks.
        async with open_dispatcher(tables.users, settings.webhooks) as webhooks:
            jobs = JobRunner(
                Storage(clients.s3),
                RecordStore(tables.images),
                InlineRunner(),
                settings,
                webhooks,
                tables.users,
            )
            for record in event.get("Records", []):
                message = Message(
                    id=str(record["messageId"]),
                    receipt_handle=str(record.get("receiptHandle", "")),
                    body=str(record.get("body", "")),
                    receive_count=int(record.get("attributes", {}).get("ApproximateReceiveCount", "1")),
                )
                if not await _handled(message, jobs, dlq, settings):
                    failures.append({"itemIdentifier": message.id})
    return {"batchItemFailures": failures}


async def _handled(message: Message, jobs: JobRunner, dlq: Queue, settings: Settings) -> bool:
    """True when the record is done with (processed, ignored or dead-lettered); False to retry."""
    verdict = await judge(message, jobs, settings.consumer.max_attempts, [], [])
    if verdict.action == "dead_letter":
        assert verdict.error is not None
        return await _dead_letter(message, verdict.error, dlq)
    return verdict.action == "ack"


async def _dead_letter(message: Message, error: ServiceError, dlq: Queue) -> bool:
    try:
        await dlq.send(message.body, reason_attributes(message, error))
    except ServiceError as exc:  # not in the DLQ yet: let SQS deliver it again
        log.error("dead-letter send failed message_id=%s error=%s", message.id, exc)
        return False
    log.warning("dead-lettered message_id=%s code=%s reason=%s", message.id, error.code, error.message)
    return True
