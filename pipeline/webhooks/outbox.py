"""The webhook outbox: events owed to users' webhooks, kept in a queue until they are delivered.

A job sends its record's event to the outbox before its own message is acknowledged, and every
consumer delivers from the outbox. So an event outlives the consumer that made it: one killed
mid-POST or between attempts leaves the event in the queue, and the next consumer delivers it.
Delivery is at least once (a receiver deduplicates by the event id), with the signing, backoff
and SSRF rules of `pipeline.webhooks.delivery`.

Attempts are counted in the message, not by the queue's receive count: a failed attempt sends
the event again with its attempt number raised and its backoff as the message's delay, then
deletes the one it received. Deferring an event therefore costs it no attempt, which is what
keeps users apart: at most `per_user` POSTs to one user's webhook are under way per process, and
their other events wait in the queue (hidden for a moment), not in a slot someone else needs.
An event that exhausts its attempts, or whose URL the rules refuse, goes to the outbox's DLQ with
the reason; `python -m pipeline webhooks list|redeliver` shows and resends those. The queue's own
redrive policy (`MAX_RECEIVES`) is only the net under a bug that fails every receive of one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import aiohttp

from config.settings import WebhookSettings
from pipeline.core import metrics, timing
from pipeline.core.dlq import dead_letter_attributes
from pipeline.core.errors import (
    InvalidWebhookUrl,
    PoisonMessage,
    ServiceError,
    TransientError,
    WebhookAddressRefused,
)
from pipeline.core.image_record import ImageRecord
from pipeline.core.polling import Room, poll, release
from pipeline.core.ports import MAX_DELAY_SECONDS, Message, MessageQueue
from pipeline.core.topology import lease_seconds
from pipeline.webhooks.delivery import (
    WebhookStore,
    backoff,
    event_for,
    find_hook,
    post,
)
from pipeline.webhooks.envelope import Envelope

log = logging.getLogger(__name__)

#: Deferrals of one message (each a receive) before it is sent again as a new one.
_RESEND_AFTER = 20
#: The pause between empty short polls (a deliverer with `poll_seconds=0`).
_IDLE_SECONDS = 0.5


def _deferral(receive_count: int) -> int:
    """Seconds an event whose owner has its share of POSTs waits: short while its owner's backlog
    is (a few events wait a moment), longer the more often it waited, so a long backlog costs
    few receives per event (and reaches `MAX_RECEIVES` only after hours)."""
    return math.ceil(timing.backoff(receive_count, 1.0, 120.0))


class Outbox:
    """The sending side: what a job calls with the record it wrote."""

    def __init__(self, queue: MessageQueue) -> None:
        self._queue = queue

    async def notify(self, record: ImageRecord) -> None:
        """Put the event of a finished record in the outbox; a `TransientError` if it cannot be,
        so the job is retried rather than acknowledged with the event lost."""
        if record.state == "pending":
            return
        event = event_for(record)
        await self._queue.send(Envelope(event).encode(), {"event_id": event.id, "type": event.type})


class Deliverer:
    """Reads the outbox until stopped and delivers each event once per receive: at most
    `concurrency` events held at once, `per_user` POSTs per user. `poll_seconds` is its long
    poll; 0 polls briefly, pausing between empty polls (the Lambda function never polls)."""

    def __init__(
        self,
        outbox: MessageQueue,
        dead: MessageQueue,
        store: WebhookStore,
        settings: WebhookSettings,
        session: aiohttp.ClientSession,
        *,
        poll_seconds: int,
    ) -> None:
        self._outbox = outbox
        self._dead = dead
        self._store = store
        self._settings = settings
        self._session = session
        self._poll = poll_seconds
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._held: dict[asyncio.Task[bool], Message] = {}
        self._owners: Counter[str] = Counter()
        self._room = Room()
        self._stopping = asyncio.Event()
        self._settle_by: float | None = None

    def stop(self, *, settle_within: float | None = None) -> None:
        """Stop receiving; with `settle_within`, first deliver until the outbox is empty (retries
        included) or that many seconds pass (a burst consumer's way out)."""
        if settle_within is not None:
            self._settle_by = time.monotonic() + settle_within
        self._stopping.set()

    async def run(self) -> None:
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                settling = self._stopping.is_set()
                if settling and (self._settle_by is None or await self._settled()):
                    return
                free = self._settings.concurrency - len(self._held)
                if free <= 0:  # back-pressure: no receiving while every slot holds an event
                    await self._room.wait(stop_wait)
                    continue
                # Settling, short polls: the loop looks at the clock and the queue between.
                messages = await poll(
                    self._outbox,
                    min(10, free),
                    1 if settling else self._poll,
                    lease_seconds(self._settings),
                    None if settling else stop_wait,
                    reader="outbox",
                )
                for message in messages or ():
                    self._start(message)
                if not messages and not self._poll and not settling:  # short polls: pause between
                    await asyncio.wait({stop_wait}, timeout=_IDLE_SECONDS)
        finally:
            stop_wait.cancel()

    async def _settled(self) -> bool:
        """Settling is over: the time is up, or nothing is held here and the outbox reads empty."""
        assert self._settle_by is not None
        if time.monotonic() >= self._settle_by:
            log.info("webhook outbox not settled in time: its events wait for the next consumer")
            return True
        if self._held:
            await asyncio.wait(set(self._held), timeout=max(0.0, self._settle_by - time.monotonic()))
            return False
        try:
            depth = await self._outbox.depth()
        except TransientError:
            return False
        if depth["visible"] or depth["in_flight"]:
            return False
        log.info("webhook outbox delivered")
        return True

    async def close(self, timeout: float) -> int:
        """Let the deliveries under way finish for up to `timeout` s, then hand the rest back to the
        queue (visible at once, for another consumer). Returns how many were handed back."""
        if self._held:
            await asyncio.wait(set(self._held), timeout=timeout)
        cut = list(self._held.items())
        for task, _ in cut:
            task.cancel()
        await asyncio.gather(*(task for task, _ in cut), return_exceptions=True)
        for _, message in cut:
            await release(self._outbox, message)
        if cut:
            log.info("webhook deliveries handed back to the outbox at shutdown count=%d", len(cut))
        return len(cut)

    def _start(self, message: Message) -> None:
        task = asyncio.create_task(self.deliver(message), name=f"webhook-{message.id}")
        self._held[task] = message
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[bool]) -> None:
        self._held.pop(task, None)
        self._room.freed()
        if not task.cancelled() and (exc := task.exception()) is not None:
            # A bug, not a delivery outcome: the message comes back after its lease, nothing lost.
            log.error("webhook delivery crashed error=%r", exc, exc_info=exc)

    async def deliver(self, message: Message) -> bool:
        """One receive of one outbox message: True once it is done with here (delivered, retried
        as a new message, dead-lettered, or owed to nobody any more: deleted from the outbox),
        False when it is left in the queue to come back (deferred, or a step failed). The Lambda
        function reports the False ones as batch item failures, so SQS keeps them."""
        try:
            envelope = Envelope.decode(message.body)
        except PoisonMessage as exc:
            return await self._done(self._bury(message, exc.code, exc.message, message.receive_count))
        wait = envelope.not_before - time.time()
        if wait > 1:  # a backoff longer than a delay can be: sent again for the rest of it
            return await self._done(self._requeue(message, envelope, math.ceil(wait)))
        owner = envelope.event.owner
        if self._owners[owner] >= self._settings.per_user:
            # Its owner's receiver has its share of this process already: back in a moment, at
            # no cost to its attempts (so a slow receiver holds up only its own events). One
            # deferred often is sent again instead, so that the queue's redrive net, which counts
            # receives, never dead-letters an event that waited without an attempt.
            metrics.WEBHOOK_DELIVERIES.labels("deferred").inc()
            later = _deferral(message.receive_count)
            if message.receive_count >= _RESEND_AFTER:
                return await self._done(self._requeue(message, envelope, later))
            await self._hide(message, later)
            return False
        self._owners[owner] += 1
        try:
            return await self._done(self._attempt(message, envelope))
        finally:
            self._owners[owner] -= 1
            if not self._owners[owner]:
                del self._owners[owner]

    async def _done(self, step: Coroutine[Any, Any, None]) -> bool:
        try:
            await step
        except ServiceError as exc:  # the queue failed a step: the event comes back after its lease
            log.warning("outbox step failed error=%r", exc)
            return False
        return True

    async def _attempt(self, message: Message, envelope: Envelope) -> None:
        event, attempt = envelope.event, envelope.attempts + 1
        try:
            # Within the POST's own time: the lease covers both, so no other consumer starts on it.
            async with asyncio.timeout(self._settings.timeout):
                hook = await find_hook(self._store, event, self._settings.allow_private)
        except TimeoutError:
            error: str | None = "the webhook could not be looked up in time"
        except InvalidWebhookUrl as exc:  # no retry can help: the DLQ says why
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            await self._bury(message, exc.code, exc.message, attempt)
            return
        except ServiceError as exc:  # the users table cannot say: an attempt like any other
            error = f"the webhook could not be looked up: {exc.message}"
        else:
            if hook is None:  # the owner removed it since: nobody is owed this event any more
                log.info("webhook gone, event not delivered event_id=%s", event.id)
                await self._outbox.delete(message.receipt_handle)
                return
            try:
                error = await post(self._session, self._slots, hook, event)
            except WebhookAddressRefused as exc:  # no retry can help while the name points there
                metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
                log.warning("webhook refused event_id=%s error=%s", event.id, exc.message)
                await self._bury(message, exc.code, exc.message, attempt)
                return
        if error is None:
            metrics.WEBHOOK_DELIVERIES.labels("delivered").inc()
            log.info("webhook delivered event_id=%s type=%s attempt=%d", event.id, event.type, attempt)
            await self._outbox.delete(message.receipt_handle)
            return
        if attempt >= self._settings.attempts:
            metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
            log.warning("webhook failed event_id=%s attempts=%d error=%s", event.id, attempt, error)
            await self._bury(message, "webhook_failed", error, attempt)
            return
        metrics.WEBHOOK_DELIVERIES.labels("retried").inc()
        log.info("webhook attempt failed event_id=%s attempt=%d error=%s", event.id, attempt, error)
        delay = backoff(attempt, self._settings)
        again = Envelope(event, attempt, time.time() + delay, error[:1000])
        await self._requeue(message, again, math.ceil(delay))

    async def _requeue(self, message: Message, envelope: Envelope, seconds: int) -> None:
        """Replace the message received with `envelope`, delayed by `seconds` (as far as a delay
        goes: one still early on arrival is sent again for the rest). Sent before the one received
        is deleted: a crash between the two repeats it, never loses it."""
        event = envelope.event
        await self._outbox.send(
            envelope.encode(),
            {"event_id": event.id, "type": event.type},
            delay_seconds=min(MAX_DELAY_SECONDS, seconds),
        )
        await self._outbox.delete(message.receipt_handle)

    async def _hide(self, message: Message, seconds: int) -> None:
        try:
            await self._outbox.change_visibility(message.receipt_handle, seconds)
        except ServiceError as exc:  # it comes back when its lease ends instead
            log.warning("outbox visibility change failed message_id=%s error=%r", message.id, exc)

    async def _bury(self, message: Message, code: str, reason: str, attempts: int) -> None:
        """Move an event to the outbox's DLQ with why (sent first, then deleted: at least once)."""
        await self._dead.send(message.body, dead_letter_attributes(message.id, code, reason, attempts))
        await self._outbox.delete(message.receipt_handle)
