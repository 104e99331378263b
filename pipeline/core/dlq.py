"""Operate the dead-letter queue: list messages with their reasons, redrive them, purge.

Redrive is receive -> send to the main queue -> delete, one message at a time per batch entry,
so each message is put back at least once, and in practice once, even where
`StartMessageMoveTask` is missing (moto).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pipeline.core import metrics
from pipeline.core.errors import ServiceError
from pipeline.core.events import parse_message
from pipeline.core.polling import release
from pipeline.core.ports import Message, MessageQueue

log = logging.getLogger(__name__)
T = TypeVar("T")


def reason_attributes(message: Message, error: ServiceError) -> dict[str, str]:
    """What a dead letter carries besides the original body: why, and after how many attempts."""
    return dead_letter_attributes(message.id, error.code, error.message, message.receive_count)


async def dead_letter(dlq: MessageQueue, message: Message, error: ServiceError) -> bool:
    """Send `message` to `dlq` with why it failed; False (logged) when the send failed, and the
    message must stay where it is, to come back. The caller deletes the original after a True:
    a crash in between leaves a duplicate in the DLQ, never a loss."""
    try:
        await dlq.send(message.body, reason_attributes(message, error))
    except ServiceError as exc:
        log.error("dead-letter send failed message_id=%s error=%s", message.id, exc)
        return False
    log.warning("dead-lettered message_id=%s code=%s reason=%s", message.id, error.code, error.message)
    metrics.DEAD_LETTERS.labels(error.code).inc()
    return True


def dead_letter_attributes(message_id: str, code: str, reason: str, attempts: int) -> dict[str, str]:
    return {
        "error_code": code,
        "error_message": reason[:1000],
        "source_message_id": message_id,
        "attempts": str(attempts),
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@dataclass(frozen=True)
class DeadLetter:
    """One DLQ message as the operator sees it."""

    message_id: str
    error_code: str
    error_message: str
    attempts: str
    failed_at: str
    keys: tuple[str, ...]
    #: The start of the body, for messages that name no object (poison, foreign events).
    body: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "message_id": self.message_id,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "failed_at": self.failed_at,
            "keys": list(self.keys),
            "body": self.body,
        }


def describe(message: Message) -> DeadLetter:
    """What an operator needs to see of any message, however malformed: it never raises."""
    try:
        keys = tuple(short(r.key, 300) for r in parse_message(message.body).created)
    except ServiceError:
        keys = ()
    return DeadLetter(
        message_id=message.id,
        **reason_of(message),
        keys=keys,
        body="" if keys else short(message.body, BODY_PREVIEW),
    )


def reason_of(message: Message) -> dict[str, str]:
    """Why a dead letter is one, as its attributes say (`dead_letter_attributes`); one moved by
    the queue's redrive policy has none, and is described as such."""
    attrs = message.attributes
    return {
        "error_code": short(attrs.get("error_code", "redrive_policy"), 100),
        "error_message": short(attrs.get("error_message", "moved by the queue's redrive policy"), 1000),
        "attempts": short(attrs.get("attempts", str(message.receive_count)), 20),
        "failed_at": short(attrs.get("failed_at", ""), 40),
    }


#: Characters of a body shown for a message that names no object.
BODY_PREVIEW = 200


def short(text: str, limit: int) -> str:
    """One printable line of at most `limit` characters."""
    line = "".join(c if c.isprintable() else " " for c in text[: limit + 1])
    return line if len(line) <= limit else line[: limit - 1] + "…"


async def list_dead_letters(dlq: MessageQueue, limit: int = 100, peek_seconds: int = 5) -> list[DeadLetter]:
    """Peek at up to `limit` messages. Each is hidden while the listing runs (so it is counted
    once) and made visible again as soon as it is listed: a redrive or another listing started
    right after sees them all."""
    return await peek(dlq, describe, limit, peek_seconds)


async def peek(
    dlq: MessageQueue, describe: Callable[[Message], T], limit: int = 100, peek_seconds: int = 5
) -> list[T]:
    """`list_dead_letters` with another way to `describe` each message."""
    seen: dict[str, T] = {}
    handles: list[str] = []
    try:
        while len(seen) < limit:
            batch = await dlq.receive(
                min(10, limit - len(seen)), wait_seconds=0, visibility_timeout=peek_seconds
            )
            if not batch:
                break
            for message in batch:
                handles.append(message.receipt_handle)
                seen.setdefault(message.id, describe(message))
    finally:
        for handle in handles:
            with contextlib.suppress(ServiceError):
                await dlq.change_visibility(handle, 0)
    return list(seen.values())


#: What is sent back for a dead letter (its body and attributes), or None to leave it in the DLQ.
Rewrite = Callable[[Message], tuple[str, dict[str, str]] | None]
#: How long a redrive hides each dead letter it holds: longer than any send and delete of one.
REDRIVE_LEASE_SECONDS = 300


def as_it_was(message: Message) -> tuple[str, dict[str, str]]:
    """The body alone: why it failed stays in the DLQ's history, not on the retried message."""
    return message.body, {}


async def redrive(
    dlq: MessageQueue, target: MessageQueue, limit: int | None = None, rewrite: Rewrite = as_it_was
) -> int:
    """Send dead letters back to `target` (all, or those `rewrite` keeps, as it rewrites them);
    returns how many. Each is sent first, then deleted: a crash in between repeats one, never
    loses one. Every message received and not moved is visible again at once when it ends. The
    S3 events' DLQ and the webhook outbox's (`pipeline.webhooks.undelivered`) are both redriven
    here.

    It takes at most the messages the DLQ held when it started: one that fails again at once
    (a corrupt image is dead-lettered on its first attempt, as a new message) waits for the next
    redrive instead of going round for ever. Receives are long polls: SQS answers one from all
    its servers, so an empty answer means an empty DLQ (a short receive samples a few and may
    come back empty while messages remain). A receive that brings only messages seen already
    (their hiding ended) has been round it all."""
    depth = await dlq.depth()
    budget = depth["visible"]
    moved, taken = 0, 0
    held: dict[str, Message] = {}  # received, not deleted: released at the end
    seen: set[str] = set()
    try:
        while taken < budget and (limit is None or moved < limit):
            lease = REDRIVE_LEASE_SECONDS
            batch = await dlq.receive(min(10, budget - taken), wait_seconds=1, visibility_timeout=lease)
            fresh = [message for message in batch if message.id not in seen]
            for message in batch:
                held[message.id] = message  # the newest receipt of each
            if not fresh:
                break
            seen.update(message.id for message in fresh)
            for message in fresh:
                taken += 1
                sent = None if limit is not None and moved >= limit else rewrite(message)
                if sent is None:
                    continue
                await target.send(*sent)
                await dlq.delete(message.receipt_handle)
                del held[message.id]
                moved += 1
    finally:
        for message in held.values():
            await release(dlq, message)
    log.info("redrove messages count=%d", moved)
    return moved
