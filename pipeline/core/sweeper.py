"""The serving process releases presigned uploads' reservations that were never used.

A reservation holds its image id and its owner's quota until its URL has expired (and a margin
for a PUT under way): `pipeline gc` releases such leftovers, but embedded and single-box
deployments have no scheduler to run it, so quota stayed taken until someone did. Each API
process now watches the reservations it makes and releases each one when it falls due, and
sweeps every reservation now and then (`IMGSVC_RESERVATION_SWEEP_SECONDS`), which also catches
those of processes that died before theirs fell due. Releasing is gc's own step
(`release_unused`, which gc shares): never one whose bytes arrived, never one written since it was read.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable

from config.settings import Settings
from pipeline.core.accounts import Accounts
from pipeline.core.errors import ServiceError
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef
from pipeline.core.ports import Backend, ObjectStore
from pipeline.core.records import RecordStore
from pipeline.core.reservations import RELEASE_MARGIN_SECONDS, Reservation

log = logging.getLogger(__name__)
#: Reservations one process watches at once (past it, the periodic sweep or gc takes the rest).
MAX_WATCHED = 100_000
#: The longest the sweeper sleeps between looks (s).
MAX_SLEEP = 60.0


class ReservationSweeper:
    def __init__(
        self,
        backend: Backend,
        records: RecordStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`clock`: the wall clock reservations are judged by (tests move it forward)."""
        self.clock = clock
        self._backend = backend
        self._records = records
        self._bucket = settings.aws.source_bucket
        self._every = settings.web.reservation_sweep_seconds
        self._due: list[tuple[float, str]] = []  # (when it may be released, source key)
        self._changed = asyncio.Event()
        self.released = 0

    def watch(self, ref: ImageRef, reservation: Reservation) -> None:
        """Release `reservation` of `ref` when it falls due, if it is still unused then."""
        if len(self._due) < MAX_WATCHED:
            heapq.heappush(self._due, (reservation.expires_at + RELEASE_MARGIN_SECONDS, ref.source_key))
            self._changed.set()

    def wake(self) -> None:
        """Look again now (the clock moved, in tests)."""
        self._changed.set()

    async def run(self) -> None:
        """Forever: release what falls due, and sweep everything every `_every` seconds."""
        next_sweep = time.monotonic() + (self._every or float("inf"))
        while True:
            now = self.clock()
            try:
                while self._due and self._due[0][0] <= now:
                    _, key = heapq.heappop(self._due)
                    await self._release(ImageRef(key), now)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self._every
                    await self.sweep()
            except Exception:  # a bug: logged, and the next round goes on (gc is the backstop)
                log.exception("reservation sweep failed")
            wait = min(MAX_SLEEP, next_sweep - time.monotonic())
            if self._due:
                wait = min(wait, self._due[0][0] - self.clock())
            self._changed.clear()
            try:
                async with asyncio.timeout(max(0.05, wait)):
                    await self._changed.wait()
            except TimeoutError:
                pass

    async def sweep(self) -> int:
        """Release every unused reservation that is due, whoever made it; how many."""
        released, now = 0, self.clock()
        try:
            for user in await Accounts(self._backend.tables).users():
                cursor = None
                while True:
                    page, cursor = await self._records.page(str(user["user_id"]), 100, cursor)
                    for record in page:
                        if Reservation.of(record.item) is not None and await release_unused(
                            self._backend.storage, self._records, self._bucket, record, now
                        ):
                            released += 1
                    if cursor is None:
                        break
        except ServiceError as exc:  # the next sweep tries again
            log.warning("reservation sweep stopped early error=%s", exc)
        self.released += released
        if released:
            log.info("reservations released=%d (their URLs expired unused)", released)
        return released

    async def _release(self, ref: ImageRef, now: float) -> None:
        try:
            record = await self._records.read(ref)
            if record is not None and await release_unused(
                self._backend.storage, self._records, self._bucket, record, now
            ):
                self.released += 1
                log.info("reservation released key=%s (its URL expired unused)", ref.source_key)
        except ServiceError as exc:  # the periodic sweep, or gc, takes it later
            log.warning("reservation not released key=%s error=%s", ref.source_key, exc)


async def release_unused(
    storage: ObjectStore,
    records: RecordStore,
    bucket: str,
    record: ImageRecord,
    now: float,
    dry_run: bool = False,
) -> bool:
    """Release a presigned upload's reservation never used before its URL expired: the id and the
    quota it holds are free again (the record goes, uncounted, in one transaction). One whose
    bytes arrived waits for their event, or for reconcile. Whether it was (or would be) released."""
    reserved = Reservation.of(record.item)
    if reserved is None or not reserved.released_by(now):
        return False
    ref = ImageRef.of(record.owner, record.image_id)
    if await storage.etag_of(bucket, ref.source_key) is not None:
        return False
    if dry_run:
        return True
    if not await records.delete_if(ref, int(record.item.get("revision", 0))):
        return False
    if reserved.upload_id is not None:  # a resumable upload's parts go with it
        await storage.abort_parts(bucket, ref.source_key, reserved.upload_id)
    return True
