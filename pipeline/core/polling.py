"""Long polls that shutdown can interrupt, and handing messages back: what the job consumer and
the webhook deliverer both need from a queue they read until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pipeline.core.errors import ServiceError, TransientError
from pipeline.core.ports import Message, MessageQueue

log = logging.getLogger(__name__)


async def receive_unless_stopped(
    queue: MessageQueue, count: int, wait_seconds: int, visibility: int, stop_wait: asyncio.Future[Any]
) -> list[Message] | None:
    """One long poll; None when `stop_wait` interrupted it. A `TransientError` is the caller's.

    A long poll must not hold up shutdown. A receive that is already answering (messages were
    waiting) gets a moment to finish, and what it brought is released at once; one still waiting
    on an empty queue is cancelled (should SQS hand it messages in that very instant, they
    reappear after their visibility timeout: delayed, never lost).
    """
    receive = asyncio.ensure_future(queue.receive(count, wait_seconds, visibility))
    await asyncio.wait({stop_wait, receive}, return_when=asyncio.FIRST_COMPLETED)
    if receive.done():
        return receive.result()
    await asyncio.wait({receive}, timeout=queue.stop_grace)
    if not receive.done():
        receive.cancel()
        return None
    with contextlib.suppress(TransientError):
        for message in receive.result():  # never started: hand back, not an outcome
            log.info("returned unstarted message at stop message_id=%s", message.id)
            await release(queue, message)
    return None


async def release(queue: MessageQueue, message: Message) -> None:
    """Make an unfinished message visible again at once, so another reader (or a restart) picks
    it up; it completes even if the caller is being cancelled."""
    try:
        await asyncio.shield(queue.change_visibility(message.receipt_handle, 0))
    except (ServiceError, asyncio.CancelledError) as exc:
        log.warning("release failed message_id=%s error=%r", message.id, exc)
