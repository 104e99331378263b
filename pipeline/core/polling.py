"""The bounded receive loop's parts, shared by the job consumer and the webhook deliverer (the
Lambda function is fed by SQS and receives nothing): back-pressure while every slot is held
(`Room`), long polls that shutdown can interrupt and whose failures pause the loop (`poll`), and
handing messages back (`release`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from pipeline.core.errors import ServiceError, TransientError
from pipeline.core.ports import Message, MessageQueue

log = logging.getLogger(__name__)
#: The pause after a failed receive, so a queue that is down is not polled in a tight loop.
FAILED_RECEIVE_PAUSE = 1.0


class Room:
    """Back-pressure for a receive loop: it waits here, without polling, while every slot holds a
    message, until one is done with (`freed`) or the loop is told to stop."""

    def __init__(self) -> None:
        self._freed = asyncio.Event()

    def freed(self) -> None:
        self._freed.set()

    async def wait(self, stop_wait: asyncio.Future[Any], timeout: float | None = None) -> None:
        """Until a slot is freed after this call, the loop is told to stop, or `timeout`."""
        self._freed.clear()
        freed = asyncio.ensure_future(self._freed.wait())
        try:
            await asyncio.wait({stop_wait, freed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            freed.cancel()


async def poll(
    queue: MessageQueue,
    count: int,
    wait_seconds: int,
    visibility: int,
    stop_wait: asyncio.Future[Any] | None,
    *,
    reader: str,
) -> list[Message] | None:
    """One receive of up to `count` messages: `receive_unless_stopped`, or a plain receive with no
    `stop_wait` (a reader already stopping, that polls briefly to settle). A failed receive is
    logged under `reader` and answers [] after `FAILED_RECEIVE_PAUSE` (cut short by a stop)."""
    try:
        if stop_wait is None:
            return await queue.receive(count, wait_seconds, visibility)
        return await receive_unless_stopped(queue, count, wait_seconds, visibility, stop_wait)
    except TransientError as exc:
        log.warning("%s receive failed error=%s", reader, exc)
        if stop_wait is None:
            await asyncio.sleep(FAILED_RECEIVE_PAUSE)
        else:
            await asyncio.wait({stop_wait}, timeout=FAILED_RECEIVE_PAUSE)
        return []


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
