"""What becomes of one queue message: the rules the consumer and the Lambda handler share.

Parse the message, run its records through the job, and classify how it ended: acknowledge
(processed, ignored, or the original is gone), dead-letter (a permanent error, or a transient one
on its last attempt), or retry. Carrying the verdict out (deleting, sending to the DLQ, hiding
the message for a backoff, or naming it in `batchItemFailures`) is each runtime's own business.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from pipeline.consumer.jobs import JobRunner
from pipeline.core.errors import PermanentError, ServiceError, SourceMissing, TransientError, UnexpectedError
from pipeline.core.events import parse_message
from pipeline.core.ports import Message

log = logging.getLogger(__name__)
Action = Literal["ack", "dead_letter", "retry"]


@dataclass(frozen=True)
class Verdict:
    action: Action
    #: One name per record (a message may carry several), for logs and metrics: ready,
    #: source_missing, test_event, ignored, failed, retry.
    outcomes: tuple[str, ...]
    error: ServiceError | None = None


async def judge(
    message: Message, jobs: JobRunner, max_attempts: int, keys: list[str], request_ids: list[str]
) -> Verdict:
    """Process `message` and say what to do with it; fills `keys` (its object keys) and
    `request_ids` (of the uploads it was about) as it goes, so a log line has them even when the
    work is cancelled half-way. Raises only on cancellation."""
    try:
        parsed = parse_message(message.body)
        keys.extend(quote(r.key, safe="/") for r in parsed.created)
        if parsed.test_event:
            return Verdict("ack", ("test_event",))
        for name in parsed.ignored:
            log.info("ignoring event message_id=%s event=%s", message.id, name)
        outcomes = []
        for record in parsed.created:
            result = await jobs.process(record)
            request_ids.append(result.request_id)
            if result.error is not None:  # recorded as failed; the DLQ keeps the message and why
                return Verdict("dead_letter", ("failed",), result.error)
            outcomes.append(result.outcome)
            if result.outcome == "source_missing":
                log.info("original gone before processing key=%s, acknowledged", result.key)
        return Verdict("ack", tuple(outcomes) or ("ignored",))
    except SourceMissing as exc:
        log.info("acknowledged without processing message_id=%s reason=%s", message.id, exc.message)
        return Verdict("ack", ("source_missing",))
    except PermanentError as exc:
        return Verdict("dead_letter", ("failed",), exc)
    except Exception as exc:  # transient, or a bug: neither may lose the message
        if not isinstance(exc, TransientError):
            log.exception("unexpected error message_id=%s", message.id)
            exc = UnexpectedError(f"{type(exc).__name__}: {exc}")
        if message.receive_count >= max_attempts:
            return Verdict("dead_letter", ("failed",), exc)
        log.warning(
            "transient failure message_id=%s attempt=%d/%d code=%s error=%s",
            message.id,
            message.receive_count,
            max_attempts,
            exc.code,
            exc.message,
        )
        return Verdict("retry", ("retry",), exc)
