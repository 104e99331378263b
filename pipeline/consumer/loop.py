"""The SQS consumer pool: long-polling receivers feeding a bounded set of in-flight jobs.

Semantics (docs/architecture.md, "The pipeline"): a message is deleted only after all its records
succeeded; permanent failures go to the DLQ at once; transient ones are retried with exponential
backoff through the message's visibility until `max_attempts`, then dead-lettered by us (send
first, then delete).
A heartbeat keeps long jobs invisible; shutdown drains, then releases what it could not finish.

Users share the consumer: one owner's messages run here up to `user_in_flight_limit` at once,
and past it only on slots no one else's message waits for; more are held briefly or deferred
(`pipeline.consumer.shares`). While an owner is at its share the
receivers read whole batches even with every slot taken (up to a batch past the in-flight limit),
so another user's message is found past a backlog, not left behind it; the workers then take the
owners' jobs in turn (`WorkerPool.run_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from pipeline.consumer.jobs import JobRunner
from pipeline.consumer.shares import HOLD_SECONDS, Shares, owner_of
from pipeline.consumer.verdicts import Verdict, judge
from pipeline.core import metrics
from pipeline.core.dlq import dead_letter
from pipeline.core.errors import LeaseLost, ServiceError, TransientError
from pipeline.core.logs import REQUEST_ID
from pipeline.core.polling import Room, poll, release
from pipeline.core.ports import Message, MessageQueue
from pipeline.core.timing import backoff

log = logging.getLogger(__name__)
#: Empty polls in a row, each with the queue reading empty, before a burst consumer stops.
DRAINED_CHECKS = 2
_DELETE_BATCH = 10
_DELETE_RETRIES = 3
#: The message attribute counting a message's deferrals (for operators).
DEFERRALS = "deferrals"


def backoff_seconds(receive_count: int, base: float, cap: float, rng: random.Random | None = None) -> int:
    """`pipeline.core.timing.backoff` in whole seconds, at most SQS's longest visibility timeout."""
    return int(min(43_200, math.ceil(backoff(receive_count, base, cap, rng))))


@dataclass
class ConsumerStats:
    """Counts of outcomes since start; `outcomes` keys are stable names used in logs and tests."""

    received: int = 0
    heartbeats: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


class Consumer:
    """Runs until `stop()` is called or, in burst mode, until the queue is drained."""

    def __init__(
        self,
        queue: MessageQueue,
        dlq: MessageQueue,
        jobs: JobRunner,
        settings: Settings,
        *,
        burst: bool = False,
    ) -> None:
        self._queue = queue
        self._dlq = dlq
        self._jobs = jobs
        self._cfg = settings.consumer
        self._burst = burst
        self._drained_checks = 0
        self._stopping = asyncio.Event()
        self._room = Room()
        self._in_flight: dict[asyncio.Task[None], Message] = {}
        #: The owner each job in flight counts under, and each owner's share.
        self._owner_of: dict[asyncio.Task[None], str | None] = {}
        self._shares = Shares(self._cfg.user_in_flight_limit, self._cfg.in_flight_limit)
        self._deferring: set[asyncio.Task[None]] = set()
        #: How long each finished job took (read by `_finished`, for the shares' pacing).
        self._job_times: dict[asyncio.Task[None], float] = {}
        self._reserved = 0
        self._deletes: asyncio.Queue[_Ack | None] = asyncio.Queue()
        self.stats = ConsumerStats()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def stop(self) -> None:
        """Stop receiving; `run` then drains in-flight work and returns."""
        self._stopping.set()

    async def run(self) -> ConsumerStats:
        """Receive and process until stopped; nothing received is left unaccounted for."""
        log.info(
            "consumer starting receivers=%d max_in_flight=%d max_attempts=%d burst=%s",
            self._cfg.receivers,
            self._cfg.in_flight_limit,
            self._cfg.max_attempts,
            self._burst,
        )
        # One group: a receiver or the deleter dying (a bug) stops the others and ends `run` with
        # the error, after in-flight work is drained: the caller (readiness) learns of it.
        async with asyncio.TaskGroup() as group:
            group.create_task(self._delete_loop(), name="sqs-deleter")
            try:
                async with asyncio.TaskGroup() as receivers:
                    for i in range(self._cfg.receivers):
                        receivers.create_task(self._receive_loop(), name=f"sqs-receiver-{i}")
            finally:
                await self._drain()
                self._deletes.put_nowait(None)  # flush what is queued, then exit
        log.info("consumer stopped outcomes=%s", dict(self.stats.outcomes))
        return self.stats

    # Receiving -----------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        # Long polls, except in burst mode, whose polls are brief unless all it has left to wait
        # for is out of view: it then drains a queue and exits without waiting out a long poll.
        long_poll = not self._burst
        try:
            while not self._stopping.is_set():
                # Slots other receivers asked SQS for count as taken: the bound holds across receivers.
                taken = len(self._in_flight) + self._shares.held + self._reserved
                free = self._cfg.in_flight_limit - taken
                # While an owner is at its share its further messages are held or deferred, not
                # run: whole batches are read to get past its backlog to the others' (which then
                # start even a batch past the limit).
                scanning = (
                    self._shares.anyone_full() and taken < self._cfg.in_flight_limit + self._cfg.batch_size
                )
                if free <= 0 and not scanning:  # back-pressure: no polling while the pool is full
                    await self._room.wait(stop_wait)
                    continue
                want = self._cfg.batch_size if scanning else min(free, self._cfg.batch_size)
                self._reserved += want
                try:
                    wait_seconds = self._cfg.wait_time_seconds if long_poll else 0
                    messages = await self._receive(want, stop_wait, wait_seconds)
                    for message in messages or ():
                        self._start(message)
                finally:
                    self._reserved -= want
                    self._room.freed()  # unused reservations are free slots for the others
                if messages is None:
                    break
                long_poll = not self._burst
                if messages:
                    self._drained_checks = 0
                elif self._burst and await self._queue_drained():
                    self._drained_checks += 1
                    if self._drained_checks >= DRAINED_CHECKS:
                        self.stop()
                elif self._burst and self._in_flight:
                    # Wait for a job to end (retries come back into view after a long poll's time
                    # at most), then poll briefly: its exit never waits out a long poll.
                    await self._room.wait(stop_wait, timeout=self._cfg.wait_time_seconds)
                elif self._burst:
                    long_poll = True  # what is left is out of view: backing off, or another reader's
        finally:
            stop_wait.cancel()

    async def _receive(
        self, count: int, stop_wait: asyncio.Future[Any], wait_seconds: int
    ) -> list[Message] | None:
        """One long poll; None when stopping interrupted it, [] after a logged failure."""
        return await poll(
            self._queue, count, wait_seconds, self._cfg.visibility_timeout, stop_wait, reader="consumer"
        )

    async def _queue_drained(self) -> bool:
        """SQS's counts are approximate (and eventually consistent): one empty reading is not
        enough to stop on, so burst mode wants `DRAINED_CHECKS` in a row, each after an empty poll."""
        if self._in_flight:
            return False
        # A message whose delete is still queued reads as in flight.
        await self._deletes.join()
        try:
            depth = await self._queue.depth()
        except TransientError:
            return False
        return depth["visible"] == 0 and depth["in_flight"] == 0

    def _start(self, message: Message) -> None:
        """Start a job for `message`; hold or defer it when its owner may not run one more."""
        self.stats.received += 1
        metrics.RECEIVED.inc()
        owner = owner_of(message)
        if owner is not None and not self._shares.may_run(owner):
            if self._shares.hold(owner, message):
                asyncio.get_running_loop().call_later(HOLD_SECONDS, self._defer_overdue)
            else:
                self._spawn_deferral(owner, message)
            return
        self._run(message, owner)

    def _run(self, message: Message, owner: str | None) -> None:
        metrics.IN_FLIGHT.inc()
        task = asyncio.create_task(self._run_job(message), name=f"job-{message.id}")
        self._in_flight[task] = message
        self._owner_of[task] = owner
        self._shares.started(owner)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        if self._in_flight.pop(task, None) is not None:
            metrics.IN_FLIGHT.dec()
        if task in self._owner_of:
            owner = self._owner_of.pop(task)
            self._shares.finished(owner, self._job_times.pop(task, 1.0))
        self._start_held()
        self._room.freed()

    def _start_held(self) -> None:
        """Run the held messages that may run now (released instead while stopping)."""
        while (held := self._shares.next_held()) is not None:
            owner, message = held
            if self._stopping.is_set():
                self._spawn_release(message)
            else:
                self._run(message, owner)

    def _defer_overdue(self) -> None:
        for owner, message in self._shares.overdue():
            self._spawn_deferral(owner, message)
        self._start_held()  # another owner's held messages gone may leave a slot idle
        self._room.freed()

    def _spawn_deferral(self, owner: str, message: Message) -> None:
        delay = self._shares.deferral(owner)
        deferring = asyncio.create_task(self._defer(message, delay), name=f"defer-{message.id}")
        self._deferring.add(deferring)
        deferring.add_done_callback(self._deferring.discard)

    def _spawn_release(self, message: Message) -> None:
        self.stats.outcomes["released"] += 1
        metrics.MESSAGES.labels("released").inc()
        releasing = asyncio.create_task(self._release(message), name=f"release-{message.id}")
        self._deferring.add(releasing)
        releasing.add_done_callback(self._deferring.discard)

    async def _defer(self, message: Message, delay: int) -> None:
        """Put an owner's message back for later: sent again with `delay` (and the count of its
        deferrals, for operators), then the one received deleted; a crash between the two
        repeats the event, which the job processes idempotently, never loses it."""
        deferrals = _count(message.attributes.get(DEFERRALS)) + 1
        attributes = {**message.attributes, DEFERRALS: str(deferrals)}
        try:
            await self._queue.send(message.body, attributes, delay_seconds=delay)
        except ServiceError as exc:  # hidden instead: it comes back, one receive the older
            log.warning("deferral failed message_id=%s error=%s", message.id, exc)
            with contextlib.suppress(ServiceError):
                await self._queue.change_visibility(message.receipt_handle, delay)
            return
        self._ack(message)
        self.stats.outcomes["deferred"] += 1
        metrics.MESSAGES.labels("deferred").inc()

    # One message -----------------------------------------------------------------------------------

    async def _run_job(self, message: Message) -> None:
        """Judge one message under a visibility heartbeat, stop the heartbeat, then carry the
        verdict out (so no heartbeat can overwrite a retry's backoff or touch a message being
        dead-lettered), and log one line with its outcome."""
        started = time.perf_counter()
        keys: list[str] = []
        request_ids: list[str] = []
        outcomes: tuple[str, ...] = ("unknown",)
        try:
            try:
                async with asyncio.TaskGroup() as group:
                    judging = group.create_task(
                        judge(message, self._jobs, self._cfg.max_attempts, keys, request_ids)
                    )
                    group.create_task(self._heartbeat(message, judging))
            except* LeaseLost:
                # Another consumer owns it now: the work was stopped, and nothing is deleted
                # with a stale handle.
                outcomes = ("lease_lost",)
            else:
                outcomes = await self._carry_out(message, judging.result())
        except asyncio.CancelledError:
            outcomes = ("released",)
            await self._release(message)
            raise
        finally:
            if (task := asyncio.current_task()) is not None:
                self._job_times[task] = time.perf_counter() - started
            for name in outcomes:
                self.stats.outcomes[name] += 1
                metrics.MESSAGES.labels(name).inc()
            if request_ids:  # the job ran in a task of its own: bring its request id here
                REQUEST_ID.set(request_ids[-1])
            log.info(
                "message processed message_id=%s keys=%s outcome=%s attempt=%d duration_ms=%.1f",
                message.id,
                ",".join(keys) or "-",
                ",".join(outcomes),
                message.receive_count,
                (time.perf_counter() - started) * 1000,
            )

    async def _heartbeat(self, message: Message, work: asyncio.Task[Verdict]) -> None:
        """Keep the message invisible while `work` runs; raises `LeaseLost` if it is no longer ours."""
        interval = max(0.2, self._cfg.visibility_timeout / 3)
        while True:
            await asyncio.wait({work}, timeout=interval)
            if work.done():
                return
            try:
                await self._queue.change_visibility(message.receipt_handle, self._cfg.visibility_timeout)
                self.stats.heartbeats += 1
            except TransientError as exc:
                if isinstance(exc, LeaseLost):
                    raise
                log.warning("heartbeat failed message_id=%s error=%s", message.id, exc)

    async def _carry_out(self, message: Message, verdict: Verdict) -> tuple[str, ...]:
        """Carry out the message's verdict; returns its outcome names."""
        if verdict.action == "ack":
            self._ack(message)
            return verdict.outcomes
        assert verdict.error is not None
        if verdict.action == "dead_letter":
            return (await self._dead_letter(message, verdict.error),)
        await self._schedule_retry(message)
        return ("retry",)

    async def _schedule_retry(self, message: Message) -> None:
        """Hide the message for the backoff delay; SQS then delivers it again with a higher count."""
        delay = backoff_seconds(message.receive_count, self._cfg.backoff_base, self._cfg.backoff_max)
        try:
            await self._queue.change_visibility(message.receipt_handle, delay)
        except ServiceError as exc:  # it reappears after its visibility timeout anyway
            log.warning("could not schedule retry message_id=%s error=%s", message.id, exc)

    async def _dead_letter(self, message: Message, error: ServiceError) -> str:
        """Send to the DLQ with the reason, then delete: a crash in between duplicates, never loses."""
        if not await dead_letter(self._dlq, message, error):
            await self._schedule_retry(message)
            return "retry"
        # Deleted at once, not batched: the window in which a crash leaves a copy in both queues
        # (a duplicate in the DLQ, never a loss) is one request long.
        try:
            await self._queue.delete(message.receipt_handle)
        except ServiceError:
            self._ack(message)  # let the batch deleter retry it
        return "dead_lettered"

    async def _release(self, message: Message) -> None:
        await release(self._queue, message)

    # Deleting ----------------------------------------------------------------------------------------

    def _ack(self, message: Message) -> None:
        self._deletes.put_nowait(_Ack(message.id, message.receipt_handle))

    async def _delete_loop(self) -> None:
        """Batch deletes (up to ten per call); exits on the `None` sentinel once all are done."""
        closing = False
        while not (closing and self._deletes.empty()):
            item = await self._deletes.get()
            if item is None:
                closing = True
                self._deletes.task_done()
                continue
            if not closing:
                await asyncio.sleep(self._cfg.delete_flush_seconds)  # let a fuller batch gather
            batch = [item]
            while len(batch) < _DELETE_BATCH and not self._deletes.empty():
                more = self._deletes.get_nowait()
                if more is None:
                    closing = True
                    self._deletes.task_done()
                else:
                    batch.append(more)
            try:
                await self._delete_batch(batch)  # what failed is queued again first
            finally:
                for _ in batch:
                    self._deletes.task_done()

    async def _delete_batch(self, batch: list[_Ack]) -> None:
        """Delete a batch; entries it reports as failed are retried, the others are done."""
        try:
            failed = await self._queue.delete_batch([(a.message_id, a.receipt_handle) for a in batch])
        except TransientError as exc:
            failed = {a.message_id: exc.code for a in batch}
        for ack in batch:
            code = failed.get(ack.message_id)
            if code is None:
                continue
            if code == "ReceiptHandleIsInvalid" or ack.tries + 1 >= _DELETE_RETRIES:
                # The message will be delivered again and processed idempotently: a duplicate, not a loss.
                log.warning(
                    "delete failed message_id=%s code=%s, it will be redelivered", ack.message_id, code
                )
            else:
                await asyncio.sleep(0.2 * (ack.tries + 1))
                self._deletes.put_nowait(_Ack(ack.message_id, ack.receipt_handle, ack.tries + 1))

    async def _drain(self) -> None:
        """Wait for in-flight jobs up to the drain timeout, then release the rest."""
        for message in self._shares.release_all():
            self._spawn_release(message)
        if self._deferring:  # a send and an ack each: short
            await asyncio.wait(set(self._deferring))
        pending = set(self._in_flight)
        if pending:
            log.info("draining in_flight=%d timeout=%.1fs", len(pending), self._cfg.drain_timeout)
            _, pending = await asyncio.wait(pending, timeout=self._cfg.drain_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.info("released unfinished messages count=%d", len(pending))


def _count(raw: str | None) -> int:
    return int(raw) if raw is not None and raw.isdigit() and len(raw) < 6 else 0


@dataclass(frozen=True)
class _Ack:
    """A message to delete; `tries` counts failed delete attempts."""

    message_id: str
    receipt_handle: str
    tries: int = 0
