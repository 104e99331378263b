"""Making on-demand variants: once per variant, off the event loop, within bounds.

A variant is generated on its first request and stored in the destination bucket under the
image's prefix, keyed by its canonical name and the original's ETag; later requests stream it
from storage like any rendition. In this process, concurrent first requests for one variant
share one generation; across processes a duplicate is harmless (same key, same bytes).

Generation decodes untrusted bytes, so it runs in worker processes of its own (never on the
event loop, never in this process), with the consumer's decoding limits, a timeout per variant,
a bounded number waiting for a worker (503 beyond), at most `per_image` variants per original
(422 beyond) and a per-user rate of new variants (429 with `Retry-After` beyond).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings
from pipeline import metrics
from pipeline.errors import ImageChanged, JobTimeout, PermanentError, TransientError, WorkerCrashed
from pipeline.layout import ImageRef
from pipeline.ports import ObjectStore
from pipeline.records import ImageRecord, RecordStore
from pipeline.tasks import make_variant
from pipeline.variants import TooManyVariants, VariantSpec
from pipeline.workers import WorkerPool
from web.quotas import Usage

log = logging.getLogger(__name__)
_WINDOW = 60.0  # seconds of the per-user rate
_MAX_USERS = 10_000  # users whose rate windows one process keeps at once


class VariantsBusy(TransientError):
    code = "variants_busy"
    http_status = 503
    default_message = "too many variants are being made right now; retry shortly"


class VariantTimeout(TransientError):
    code = "variant_timeout"
    http_status = 503


class TooManyNewVariants(PermanentError):
    code = "too_many_new_variants"
    http_status = 429
    default_message = "too many new variants asked for in the last minute; retry later"


@dataclass(frozen=True)
class Made:
    """A variant just made and stored, for the requests that waited for it to be answered from
    memory (one storage round trip less for every first request)."""

    data: bytes
    etag: str
    content_type: str
    last_modified: datetime
    metadata: dict[str, str]


@dataclass
class _Window:
    started: float
    count: int = 0


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
    ) -> None:
        self._storage = storage
        self._records = records
        self._usage = usage
        self._settings = settings
        self._limits = settings.variants
        #: Started here on first use, and closed with the maker, unless one was lent.
        self._pool = pool
        self._owns_pool = pool is None
        self._slots: asyncio.Semaphore | None = None
        self._flights: dict[str, asyncio.Future[Made | None]] = {}
        self._waiting = 0
        self._rates: dict[str, _Window] = {}

    async def ensure(self, ref: ImageRef, record: ImageRecord, spec: VariantSpec, key: str) -> Made | None:
        """Make the variant at `key` unless a generation of it is already under way here; either
        way return once it is stored: with its bytes (None if another made it meanwhile: read it
        from storage). A caller that goes away does not cancel it for the others."""
        if key not in self._flights:
            self._check_room(ref, record)
        flight = self._flights.get(key)  # looked at again: the check above waited
        if flight is None:
            self._admit(record.owner)
            flight = asyncio.ensure_future(self._make(ref, record, spec, key))
            self._flights[key] = flight
            flight.add_done_callback(lambda done: self._settle(key, done))
        return await asyncio.shield(flight)

    def _check_room(self, ref: ImageRef, record: ImageRecord) -> None:
        """At most `per_image` variants of one original: those its record counts (as read for
        this request), and those being made here."""
        prefix = ref.variants_prefix(record.source_etag)
        count = record.variant_count + sum(1 for key in self._flights if key.startswith(prefix))
        if count >= self._limits.per_image:
            raise TooManyVariants(
                f"this image has its {self._limits.per_image} variants already; use one of them"
            )

    def _settle(self, key: str, flight: asyncio.Future[Made | None]) -> None:
        self._flights.pop(key, None)
        self._waiting -= 1
        if not flight.cancelled():
            flight.exception()  # retrieved here: every waiter that is left gets it too

    def _admit(self, user_id: str) -> None:
        """Bound new work before any is started: the queue for workers, then the user's rate.
        Counted here, synchronously, so a burst in one loop turn cannot slip past the bound."""
        if self._waiting >= self._limits.max_waiting + self._limits.workers:
            raise VariantsBusy(headers={"Retry-After": str(self._settings.web.retry_after)})
        now = time.monotonic()
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

    async def _make(self, ref: ImageRef, record: ImageRecord, spec: VariantSpec, key: str) -> Made | None:
        aws, imaging = self._settings.aws, self._settings.imaging
        etag = record.source_etag
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limits.workers)
        # The original is read only once a worker is free: at most `workers` of them in memory.
        async with self._slots:
            made_meanwhile, original = await asyncio.gather(
                self._storage.etag_of(aws.dest_bucket, key),
                self._storage.read(aws.source_bucket, ref.source_key, imaging.max_bytes),
                return_exceptions=True,  # both finish here: no read outlives the slot
            )
            for outcome in (made_meanwhile, original):
                if isinstance(outcome, BaseException):
                    raise outcome
            if made_meanwhile is not None:  # by a flight that ended just before this one began
                return None
            assert isinstance(original, tuple)
            meta, data = original
            if meta.etag != etag:
                raise ImageChanged()
            started = time.perf_counter()
            try:
                variant = await self._workers().run(
                    self._limits.timeout, make_variant, data, spec, imaging, self._limits
                )
            except JobTimeout:
                raise VariantTimeout(f"the variant took longer than {self._limits.timeout:g}s") from None
            except WorkerCrashed as exc:
                raise VariantsBusy(exc.message) from None
            del data
        metrics.VARIANT_SECONDS.labels(spec.format).observe(time.perf_counter() - started)
        stored_at = datetime.now(UTC).replace(microsecond=0)  # what the store will say, to the second
        stored_etag = await self._store(ref, etag, record.owner, key, spec, variant.data)
        log.info("variant made key=%s bytes=%d seconds=%.3f", key, len(variant.data), variant.seconds)
        return Made(variant.data, stored_etag, spec.content_type, stored_at, {"source-etag": etag})

    async def _store(
        self, ref: ImageRef, etag: str, owner: str, key: str, spec: VariantSpec, data: bytes
    ) -> str:
        """Store the variant, then count it: its bytes on the image's record (only while the record
        counts variants of this original: a replaced or deleted image takes none) and in the
        owner's usage (a byte quota may refuse it), those two at once. Stored first, so whoever
        deletes the image's variants after it is counted finds it. If a step fails, what the
        others did is undone. Returns the stored object's ETag."""
        bucket = self._settings.aws.dest_bucket
        stored = await self._storage.put(
            bucket, key, data, spec.content_type, {"source-etag": etag.strip('"')}
        )
        counted, charged = await asyncio.gather(
            self._records.add_variant(ref, etag, len(data)),
            self._usage.charge(owner, len(data), 0),
            return_exceptions=True,
        )
        failures = [r for r in (counted, charged) if isinstance(r, BaseException)]
        if counted is False:
            failures.append(ImageChanged())
        if not failures:
            return stored
        undo: list[Coroutine[Any, Any, object]] = [self._storage.delete_many(bucket, [key])]
        if counted is True:
            undo.append(self._records.add_variant(ref, etag, -len(data)))
        if not isinstance(charged, BaseException):
            undo.append(self._usage.release(owner, len(data), 0))
        for undone in await asyncio.gather(*undo, return_exceptions=True):
            if isinstance(undone, BaseException):  # reconcile removes what is left
                log.warning("variant not fully undone key=%s error=%r", key, undone)
        failure = failures[0]
        if isinstance(failure, asyncio.CancelledError):
            raise VariantsBusy("the variant was interrupted; ask again")
        raise failure

    def _workers(self) -> WorkerPool:
        if self._pool is None:  # pebble starts the processes on the first job, not before
            self._pool = WorkerPool(self._limits.workers, threads=1)
        return self._pool

    async def close(self) -> None:
        pending = list(self._flights.values())
        if pending:
            await asyncio.wait(pending, timeout=self._limits.timeout)
        if self._pool is not None and self._owns_pool:
            await asyncio.to_thread(self._pool.close)


async def drop_variants(
    storage: ObjectStore, settings: Settings, ref: ImageRef, *, keep_etag: str | None = None
) -> int:
    """Delete an image's variants (all, or all but those of the original `keep_etag`); returns
    how many went. Their bytes are given back by the caller, from the record it replaced or
    deleted (once, however many callers race). One listing when there are none."""
    keep = ref.variants_prefix(keep_etag) if keep_etag else None
    doomed: list[str] = []
    async for page in storage.list_objects(settings.aws.dest_bucket, ref.variants_prefix()):
        doomed += [listed.key for listed in page if keep is None or not listed.key.startswith(keep)]
    await storage.delete_many(settings.aws.dest_bucket, doomed)
    return len(doomed)
