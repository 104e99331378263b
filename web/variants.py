"""Making on-demand variants: once per variant, off the event loop, within bounds.

A variant is generated on its first request and stored in the destination bucket under the
image's prefix, keyed by its canonical name and the original's ETag; later requests stream it
from storage like any rendition. In this process, concurrent first requests for one variant
share one generation; across processes a duplicate is harmless (same key, same bytes).

Generation decodes untrusted bytes, so it runs in worker processes of its own (never on the
event loop, never in this process), with the consumer's decoding limits, a timeout per variant,
a bounded number waiting for a worker (503 beyond), at most `per_image` variants per original
(422 beyond) and a per-user rate of new variants (429 with `Retry-After` beyond).

The workers are shared fairly: each user waits in a line of its own and a free worker takes the
next user's variant in turn (`pipeline.imaging.fair`), one user has at most `user_max_pending` variants
made or waiting, and none may cost more than `max_cost` (`VariantSpec.cost`), so another user's
variant waits for at most one variant of each user ahead of it. Failures cost their user too: a
variant that failed or timed out is refused again at once for a while (a retry loop does no
work), counts against its image's `per_image`, and against its user's hourly failure budget.
A variant larger than its original by `max_growth` (or than the upload cap) is not stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cachetools import TTLCache

from config.settings import Settings
from pipeline.core import metrics
from pipeline.core.errors import (
    CorruptImage,
    FormatNotAllowed,
    ImageChanged,
    JobTimeout,
    NotAnImage,
    NotFound,
    ServiceError,
    TooManyFailedVariants,
    TooManyFrames,
    TooManyNewVariants,
    TooManyPendingVariants,
    TooManyPixels,
    TooManyVariants,
    VariantCrashed,
    VariantsBusy,
    VariantTimeout,
    VariantTooCostly,
    VariantTooLarge,
    WorkerCrashed,
)
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef
from pipeline.core.objects import source_tag
from pipeline.core.originals import Original
from pipeline.core.ports import ObjectStore
from pipeline.core.quotas import Usage
from pipeline.core.records import Counted, RecordStore, UsageRefused
from pipeline.imaging.fair import FairQueue
from pipeline.imaging.tasks import variant_of
from pipeline.imaging.variants import VariantSpec, from_mezzanine
from pipeline.imaging.workers import WorkerPool

log = logging.getLogger(__name__)
_WINDOW = 60.0  # seconds of the per-user rate
_FAILURE_WINDOW = 3600.0  # seconds of the per-user failure budget
_MAX_USERS = 10_000  # users whose rate windows one process keeps at once
#: Variants that failed lately, refused again at once (bounded), and for how long.
RECENTLY_FAILED = 4096
FAILED_FOR = 600
#: The smallest stored variant size `max_growth` refuses (a tiny original may have a larger
#: variant: a 2 KB icon made 400 px wide).
GROWTH_FLOOR = 256 * 1024


@dataclass(frozen=True)
class Made:
    """A variant just made, for the requests that waited for it: answered from memory while it
    is being stored (its first request pays no storage write)."""

    data: bytes
    etag: str  # what storage will say: the MD5 of the bytes, as S3 and the local store give it
    content_type: str
    last_modified: datetime
    metadata: dict[str, str]


@dataclass
class _Window:
    started: float
    count: int = 0


@dataclass
class _Flight:
    """One variant being made here: `made` resolves once its bytes are ready (and charged),
    `task` once they are stored and counted too."""

    made: asyncio.Future[Made]
    task: asyncio.Future[None]


#: Keys of variants stored lately that one process remembers (see `VariantMaker._stored`).
RECENTLY_STORED = 4096


class VariantMaker:
    """One per API process: its worker pool (started on first use), its flights and its rates."""

    def __init__(
        self,
        storage: ObjectStore,
        records: RecordStore,
        usage: Usage,
        settings: Settings,
        *,
        pool: WorkerPool | None = None,
        prepare_reads: Callable[[], object] | None = None,
    ) -> None:
        #: What the worker pool's processes run first (`Backend.prepare_reads`).
        self._prepare_reads = prepare_reads
        self._storage = storage
        self._records = records
        self._usage = usage
        self._settings = settings
        self._limits = settings.variants
        #: Started here on first use, and closed with the maker, unless one was lent.
        self._pool = pool
        self._owns_pool = pool is None
        self._queue = FairQueue(self._limits.workers)
        self._flights: dict[str, _Flight] = {}
        #: Variants whose making failed lately, with why: asked for again, they fail at once.
        self._failed: TTLCache[str, ServiceError] = TTLCache(RECENTLY_FAILED, FAILED_FOR)
        #: Each user's variants made or waiting here, and failures in the current hour.
        self._pending: Counter[str] = Counter()
        self._failures: dict[str, _Window] = {}
        #: Variants stored here lately: a request whose record was read before one of them was
        #: counted still sees it (bounded: the per-image limit needs only the last moments).
        self._stored: TTLCache[str, bool] = TTLCache(RECENTLY_STORED, 60)
        self._waiting = 0
        self._rates: dict[str, _Window] = {}

    async def ensure(
        self,
        ref: ImageRef,
        record: ImageRecord,
        spec: VariantSpec,
        key: str,
        *,
        stored: bool = False,
        overlay: bytes | None = None,
    ) -> Made | None:
        """Make the variant at `key` unless a generation of it is already under way here, and
        return its bytes as soon as they are made; with `stored`, return None once it is in
        storage instead (for a request that storage must answer: HEAD, ranges, conditionals).
        A caller that goes away does not cancel it for the others. One stored here lately is not
        made again (its request read the record before it was counted): None, storage has it."""
        if key not in self._flights and key in self._stored:
            if await self._storage.etag_of(self._settings.aws.dest_bucket, key) is not None:
                return None
            self._stored.pop(key, None)  # removed since (deleted, then the same bytes again)
        if (failure := self._failed.get(key)) is not None and key not in self._flights:
            # No work for a retry loop: the same answer, until the failure is forgotten.
            again = f"{failure.message} (it failed lately: not tried again for {FAILED_FOR // 60} minutes)"
            raise type(failure)(again, headers=failure.headers)
        if key not in self._flights:
            self._check_room(ref, record)
        flight = self._flights.get(key)  # looked at again: the check above waited
        if flight is None:
            info = record.item.get("info") or {}
            if isinstance(info.get("width"), int) and isinstance(info.get("height"), int):
                spec.check_cost(info["width"], info["height"], int(info.get("frames") or 1), self._limits)
            owner = record.owner
            self._admit(owner)
            made: asyncio.Future[Made] = asyncio.get_running_loop().create_future()
            making = asyncio.ensure_future(self._make(ref, record, spec, key, made, overlay))
            flight = self._flights[key] = _Flight(made, making)
            # The user's share is of variants being made: one made and being stored (after its
            # answer went out) no longer holds it, so a client asking one at a time is never
            # refused for the stores of the variants it already has. `_waiting` still counts
            # them until stored: the process's bound on work under way.
            made.add_done_callback(lambda _: self._release(owner))
            making.add_done_callback(lambda _: self._settle(key, owner, made, making))
        if stored:
            try:
                await asyncio.shield(flight.task)
            except asyncio.CancelledError:
                if flight.task.cancelled():  # the service is stopping, not this request
                    raise _interrupted() from None
                raise
            return None
        return await asyncio.shield(flight.made)

    def _check_room(self, ref: ImageRef, record: ImageRecord) -> None:
        """At most `per_image` variants of one original: those its record counts (as read for
        this request), and those being made here: one being stored may be on both lists."""
        prefix = ref.variants_prefix(record.source_etag)
        here = [*self._flights, *self._stored, *self._failed]
        making = {key.removeprefix(prefix) for key in here if key.startswith(prefix)}
        known = record.variant_names
        count = record.variant_count + len(making) if known is None else len(known | making)
        if count >= self._limits.per_image:
            raise TooManyVariants(
                f"this image has its {self._limits.per_image} variants already; use one of them"
            )

    def _settle(self, key: str, owner: str, made: asyncio.Future[Made], task: asyncio.Future[None]) -> None:
        self._flights.pop(key, None)
        self._waiting -= 1
        if task.cancelled():
            if not made.done():
                made.set_exception(_interrupted())
            return
        failure = task.exception()  # retrieved here: every waiter that is left gets it too
        if failure is None:
            self._stored[key] = True
        elif isinstance(failure, _IMAGE_FAILURES):
            self._failed[key] = failure
            self._count_failure(owner)
        if not made.done():
            made.set_exception(failure or VariantsBusy())
        elif failure is not None and made.exception() is None:
            log.warning("variant served but not stored key=%s error=%r", key, failure)
        if made.done() and not made.cancelled():
            made.exception()

    def _release(self, owner: str) -> None:
        self._pending[owner] -= 1
        if self._pending[owner] <= 0:
            del self._pending[owner]

    def _count_failure(self, user_id: str) -> None:
        now = time.monotonic()
        window = self._failures.get(user_id)
        if window is None or now - window.started >= _FAILURE_WINDOW:
            if window is None and len(self._failures) >= _MAX_USERS:
                self._failures = {
                    u: w for u, w in self._failures.items() if now - w.started < _FAILURE_WINDOW
                }
            window = self._failures[user_id] = _Window(now)
        window.count += 1

    def _admit(self, user_id: str) -> None:
        """Bound new work before any is started: the queue for workers, the user's share of it,
        its failures, then its rate. Counted here, synchronously, so a burst in one loop turn
        cannot slip past the bound."""
        retry_after = {"Retry-After": str(self._settings.web.retry_after)}
        if self._waiting >= self._limits.max_waiting + self._limits.workers:
            raise VariantsBusy(headers=retry_after)
        if self._pending[user_id] >= self._limits.user_max_pending:
            raise TooManyPendingVariants(
                f"at most {self._limits.user_max_pending} variants of one user are made at a time; "
                "wait for one to finish",
                headers=retry_after,
            )
        now = time.monotonic()
        failed = self._failures.get(user_id)
        budget = self._limits.user_failures_per_hour
        if failed is not None and now - failed.started < _FAILURE_WINDOW and failed.count >= budget:
            wait = max(1, round(_FAILURE_WINDOW - (now - failed.started)))
            raise TooManyFailedVariants(
                f"{failed.count} variants of this user failed or ran out of time in the last hour; "
                "new ones are refused until the hour is over",
                headers={"Retry-After": str(wait)},
            )
        window = self._rates.get(user_id)
        if window is None or now - window.started >= _WINDOW:
            if window is None and len(self._rates) >= _MAX_USERS:
                # Forget finished windows: the map stays bounded. While it is full of live ones,
                # each new user costs one pass over it (and gets 503 until windows end).
                self._rates = {u: w for u, w in self._rates.items() if now - w.started < _WINDOW}
                if len(self._rates) >= _MAX_USERS:
                    raise VariantsBusy(headers={"Retry-After": str(self._settings.web.retry_after)})
            window = self._rates[user_id] = _Window(now)
        if window.count >= self._limits.per_user_per_minute:
            wait = max(1, round(_WINDOW - (now - window.started)))
            raise TooManyNewVariants(headers={"Retry-After": str(wait)})
        window.count += 1
        self._waiting += 1
        self._pending[user_id] += 1

    async def _make(
        self,
        ref: ImageRef,
        record: ImageRecord,
        spec: VariantSpec,
        key: str,
        made: asyncio.Future[Made],
        overlay: bytes | None = None,
    ) -> None:
        """Read the original, make the variant in a worker, check the owner's byte quota (where one
        may refuse it), hand the bytes to the waiting requests, then store and count it. A
        duplicate made meanwhile in another process is stored again (same key, same bytes) and
        counted once."""
        aws, imaging = self._settings.aws, self._settings.imaging
        etag = record.source_etag
        # Only once a worker is free, in the owner's turn; the worker reads the original itself
        # (`pipeline.core.originals`): its bytes never pass through this process.
        async with self._queue.slot(record.owner):
            original = await self._storage.locate(aws.source_bucket, ref.source_key, imaging.max_bytes)
            mezzanine = await self._mezzanine(record, spec)
            started = time.perf_counter()
            try:
                variant = await self._workers().run(
                    self._limits.timeout,
                    variant_of,
                    original,
                    etag,
                    spec,
                    imaging,
                    self._limits,
                    overlay,
                    mezzanine,
                )
            except JobTimeout:
                raise VariantTimeout(f"the variant took longer than {self._limits.timeout:g}s") from None
            except WorkerCrashed as exc:
                raise VariantCrashed(exc.message) from None
        metrics.VARIANT_SECONDS.labels(spec.format).observe(time.perf_counter() - started)
        metrics.VARIANT_SOURCES.labels(variant.source).inc()
        size = len(variant.data)
        largest = min(imaging.max_bytes, max(GROWTH_FLOOR, int(record.bytes * self._limits.max_growth)))
        if size > largest:
            raise VariantTooLarge(
                f"this variant would be {size} bytes, more than the {largest} its original allows "
                f"({self._limits.max_growth:g} times its size); ask for a smaller size or quality"
            )
        metadata = source_tag(etag)
        answer = Made(
            variant.data,
            f'"{hashlib.md5(variant.data, usedforsecurity=False).hexdigest()}"',
            spec.content_type,
            datetime.now(UTC).replace(microsecond=0),  # what the store will say, to the second
            metadata,
        )
        if self._usage.limits_bytes:  # refused now, not after the answer, where it can be
            await self._usage.check(record.owner, new_image=False, incoming=size, replaced_bytes=0)
        made.set_result(answer)
        await self._store(ref, etag, key, spec, variant.data, metadata)
        log.info(
            "variant made key=%s bytes=%d seconds=%.3f source=%s", key, size, variant.seconds, variant.source
        )

    async def _mezzanine(self, record: ImageRecord, spec: VariantSpec) -> tuple[Original, VariantSpec] | None:
        """Where the image's mezzanine is and the spec that makes this variant of it, if it has
        one this variant fits inside (`from_mezzanine`); the worker checks it is of this original."""
        made, info = record.mezzanine, record.item.get("info") or {}
        if made is None or not isinstance(info.get("width"), int) or not isinstance(info.get("height"), int):
            return None
        try:
            size = (int(made["width"]), int(made["height"]))
            scaled = from_mezzanine(spec, (info["width"], info["height"]), size, self._limits)
            if scaled is None:
                return None
            bucket, max_bytes = self._settings.aws.dest_bucket, self._settings.imaging.max_bytes
            return await self._storage.locate(bucket, str(made["key"]), max_bytes), scaled
        except (KeyError, TypeError, ValueError, NotFound):  # an odd record, or the object gone
            return None

    async def _store(
        self, ref: ImageRef, etag: str, key: str, spec: VariantSpec, data: bytes, metadata: dict[str, str]
    ) -> None:
        """Store the variant, then count it on the image's record and in its owner's usage, in
        one transaction (only while the record counts variants of this original: a replaced or
        deleted image takes none; and within the byte quota, which the check before the answer
        may have passed by a hair). Stored first, so whoever deletes the image's variants after
        it is counted finds it. One counted already (made in another process too) stays as it is."""
        bucket = self._settings.aws.dest_bucket
        await self._storage.put(bucket, key, data, spec.content_type, metadata)
        try:
            counted = await self._records.add_variant(ref, etag, spec.name, len(data), self._usage.limit)
        except UsageRefused:
            await _undone(self._storage.delete_many(bucket, [key]), key)
            raise await self._usage.refusal(ref.owner_and_id[0], 0) from None
        except BaseException:
            await _undone(self._storage.delete_many(bucket, [key]), key)  # reconcile removes it else
            raise
        if counted is Counted.CHANGED:
            await _undone(self._storage.delete_many(bucket, [key]), key)
            raise ImageChanged()

    async def idle(self) -> None:
        """Return once nothing is being made or stored here (what was under way has ended)."""
        while self._flights:
            await asyncio.wait([flight.task for flight in self._flights.values()])

    def _workers(self) -> WorkerPool:
        if self._pool is None:  # pebble starts the processes on the first job, not before
            imaging = self._settings.imaging
            self._pool = WorkerPool(
                self._limits.workers,
                threads=1,
                prepare=self._prepare_reads,
                max_jobs=imaging.worker_max_jobs,
                max_rss=imaging.worker_max_rss,
            )
        return self._pool

    async def close(self) -> None:
        pending = [flight.task for flight in self._flights.values()]
        if pending:
            await asyncio.wait(pending, timeout=self._limits.timeout)
        if self._pool is not None and self._owns_pool:
            await asyncio.to_thread(self._pool.close)


#: Failures that say something about the image or the request, not about this process: the
#: variant is refused again at once for a while, and counts against its image and its user.
_IMAGE_FAILURES = (VariantTimeout, VariantCrashed, CorruptImage, TooManyPixels, TooManyFrames,
                   VariantTooCostly, VariantTooLarge, NotAnImage, FormatNotAllowed)  # fmt: skip


def _interrupted() -> VariantsBusy:
    return VariantsBusy("the variant was interrupted; ask again")


async def _undone(step: Coroutine[Any, Any, object], key: str) -> None:
    """Undo one step of a variant's storing; what cannot be undone is left to reconcile."""
    try:
        await step
    except Exception as exc:
        log.warning("variant not fully undone key=%s error=%r", key, exc)
