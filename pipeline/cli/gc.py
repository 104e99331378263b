"""`python -m pipeline gc [--dry-run]`: remove what nothing references any more, on either backend.

Garbage is what a crash, a lost event or an interrupted request leaves behind:

- originals without a record: an upload that stored its bytes and then failed (its client was
  answered 5xx and retries, or gives up), whose event never made a record either;
- renditions and variants without their current original: a delete interrupted half-way, or
  variants of an original since replaced;
- records without an original: the other half of an interrupted delete (removing one also
  uncounts it from its owner's usage, in one transaction);
- uploads abandoned mid-way: S3 multipart uploads never completed (their parts are billed as
  storage), the local store's unfinished temporary files;
- images past their expiry (`expires_in_days` on upload, or `IMGSVC_RETENTION_DAYS`): the
  original, its renditions and variants, and the record, as a delete would;
- presigned uploads' reservations never used: released (the record goes, its quota is given
  back) once their URL has been expired for `RELEASE_MARGIN_SECONDS`, whatever the grace.

Nothing younger than `grace` is touched (default one day: an upload's original exists without
its record for a moment, a new original's renditions for a moment without a finished record), and
an original is looked at again just before it goes (its ETag and time as listed, and still no
record; a re-upload of the same bytes changes the time), so a run racing live uploads deletes
only what was garbage when it looked (but for the one request between that look and the
delete). An expired image's record goes first, and only at the revision read, so a re-upload
meanwhile keeps it. Buckets are walked a page at a time, with nothing kept from one page to the
next: memory stays bounded whatever their size. `dry_run` only counts. `python -m pipeline
reconcile` is the other half: it rebuilds what can be rebuilt (lost events) and should run first.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from config.settings import Settings
from pipeline.core.accounts import Accounts
from pipeline.core.layout import ImageRef, source_key_of
from pipeline.core.objects import ListedObject
from pipeline.core.ports import Backend
from pipeline.core.records import RecordStore
from pipeline.core.removal import expire_image, stale_derivative
from pipeline.core.reservations import Reservation
from pipeline.core.sweeper import release_unused

log = logging.getLogger(__name__)

#: How old what gc removes must be, by default.
GRACE_SECONDS = 24 * 3600


@dataclass
class Swept:
    count: int = 0
    bytes: int = 0

    def add(self, objects: list[ListedObject]) -> None:
        self.count += len(objects)
        self.bytes += sum(o.size for o in objects)


@dataclass
class Collection:
    """What was found (and, unless a dry run, removed)."""

    dry_run: bool
    grace_seconds: float
    orphaned_originals: Swept = field(default_factory=Swept)
    orphaned_derivatives: Swept = field(default_factory=Swept)
    records_without_original: int = 0
    stale_uploads: int = 0
    #: Images past their `expires_at`, removed whole (original, renditions, variants, record).
    expired: int = 0
    #: Presigned uploads' reservations never used before their URL expired (quota given back).
    released_reservations: int = 0
    #: The quota those reservations held (their declared lengths), given back to their owners.
    released_reservation_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def collect(
    backend: Backend,
    settings: Settings,
    *,
    dry_run: bool = False,
    grace: float = GRACE_SECONDS,
    stale_uploads_after: float = GRACE_SECONDS,
    now: datetime | None = None,
) -> Collection:
    """`now` (default: now) is when images' expiry is judged, and what the grace counts back from."""
    report = Collection(dry_run, grace)
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=grace)
    records = RecordStore(backend.tables.images, backend.tables.users)
    await _originals(backend, settings, records, cutoff, report)
    await _derivatives(backend, settings, cutoff, report)
    await _records(backend, settings, records, cutoff, now, report)
    report.stale_uploads = await backend.storage.abort_stale_uploads(
        settings.aws.source_bucket, now - timedelta(seconds=stale_uploads_after), dry_run=dry_run
    )
    log.info(
        "gc originals=%d/%dB derivatives=%d/%dB records=%d reservations=%d stale_uploads=%d dry_run=%s",
        report.orphaned_originals.count,
        report.orphaned_originals.bytes,
        report.orphaned_derivatives.count,
        report.orphaned_derivatives.bytes,
        report.records_without_original,
        report.released_reservations,
        report.stale_uploads,
        dry_run,
    )
    return report


async def _originals(
    backend: Backend, settings: Settings, records: RecordStore, cutoff: datetime, report: Collection
) -> None:
    bucket, storage = settings.aws.source_bucket, backend.storage
    async for page in storage.list_objects(bucket):
        doomed = [o for o in page if o.last_modified < cutoff and await records.read(ImageRef(o.key)) is None]
        still = []
        for original in doomed:  # looked at again: replaced or recorded meanwhile, it stays
            try:
                meta = await storage.head(bucket, original.key)
            except Exception:  # gone already, or unreadable: not ours to delete now
                continue
            # (A listing and a HEAD give the time to different precisions: compared to the second.)
            same_time = int(meta.last_modified.timestamp()) == int(original.last_modified.timestamp())
            unchanged = meta.etag == original.etag and same_time
            if unchanged and await records.read(ImageRef(original.key)) is None:
                still.append(original)
        report.orphaned_originals.add(still)
        if still and not report.dry_run:
            await storage.delete_many(bucket, [o.key for o in still])


async def _derivatives(backend: Backend, settings: Settings, cutoff: datetime, report: Collection) -> None:
    """Renditions (at `{source key}/{file}`) and variants (`{source key}/variants/{etag}/...`) whose
    original is gone, and variants of another original than the current one."""
    aws, storage = settings.aws, backend.storage
    async for page in storage.list_objects(aws.dest_bucket):
        current: dict[str, str | None] = {}  # per page: one original's derivatives are adjacent
        doomed = []
        for derivative in page:
            if derivative.last_modified >= cutoff:
                continue
            source = source_key_of(derivative.key)
            if source not in current:
                current[source] = await storage.etag_of(aws.source_bucket, source)
            if stale_derivative(derivative.key, current[source]):
                doomed.append(derivative)
        report.orphaned_derivatives.add(doomed)
        if doomed and not report.dry_run:
            await storage.delete_many(aws.dest_bucket, [o.key for o in doomed])


async def _records(
    backend: Backend,
    settings: Settings,
    records: RecordStore,
    cutoff: datetime,
    now: datetime,
    report: Collection,
) -> None:
    """Records whose original is gone, and images past their expiry (removed whole)."""
    bucket = settings.aws.source_bucket
    for user in await Accounts(backend.tables).users():
        cursor = None
        while True:
            page, cursor = await records.page(str(user["user_id"]), 100, cursor)
            for record in page:
                updated = datetime.fromisoformat(str(record.item.get("updated_at")))
                ref = ImageRef.of(record.owner, record.image_id)
                if (reserved := Reservation.of(record.item)) is not None:
                    if await release_unused(
                        backend.storage, records, bucket, record, now.timestamp(), report.dry_run
                    ):
                        report.released_reservations += 1
                        report.released_reservation_bytes += reserved.content_length
                    continue
                expires = record.item.get("expires_at")
                if isinstance(expires, int | float) and expires <= now.timestamp():
                    if report.dry_run or await expire_image(backend.storage, records, settings, record):
                        report.expired += 1
                    continue
                if updated >= cutoff or await backend.storage.etag_of(bucket, ref.source_key) is not None:
                    continue
                report.records_without_original += 1
                if not report.dry_run:  # only as read: a record written since stays
                    await records.delete_if(ref, int(record.item.get("revision", 0)))
            if cursor is None:
                break
