"""Rebuild what can be rebuilt from the stored originals, on either backend.

Originals are the only state that cannot be made again; everything else follows from them. So
reconciliation walks the source bucket and:

- sends the event again for an original that has no record, or whose record holds no result
  for it (its event was lost: the rare S3 notification that never arrives, a queue purged by
  mistake); the consumer then processes it as any upload, idempotently;
- deletes renditions and variants whose original is gone (a deletion interrupted half-way),
  and variants of an original since replaced;
- reports records whose original is gone (left to the operator: deleting data is not guessed).

Originals younger than `min_age` are left alone: their own event may simply not be processed
yet. A duplicate event is harmless (processing is idempotent), so a run racing the consumer
costs work, never correctness. `dry_run` only reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from config.settings import Settings
from pipeline.core.accounts import Accounts
from pipeline.core.events import object_created
from pipeline.core.layout import ImageRef, source_key_of, valid_image_id, valid_user_id
from pipeline.core.objects import ListedObject
from pipeline.core.ports import Backend
from pipeline.core.records import RecordStore
from pipeline.core.removal import stale_derivative

log = logging.getLogger(__name__)


@dataclass
class Reconciliation:
    """What was found (and, unless a dry run, done)."""

    dry_run: bool
    originals: int = 0
    missing_records: list[str] = field(default_factory=list)
    lost_events: list[str] = field(default_factory=list)
    orphaned_renditions: list[str] = field(default_factory=list)
    records_without_original: list[str] = field(default_factory=list)
    too_recent: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


async def reconcile(
    backend: Backend, settings: Settings, *, dry_run: bool = False, min_age: float = 300.0
) -> Reconciliation:
    aws = settings.aws
    report = Reconciliation(dry_run)
    records = RecordStore(backend.tables.images)
    cutoff = datetime.now(UTC) - timedelta(seconds=min_age)
    originals: dict[str, str] = {}  # key -> ETag
    async for page in backend.storage.list_objects(aws.source_bucket):
        for original in page:
            originals[original.key] = original.etag
            report.originals += 1
            if original.last_modified > cutoff:
                report.too_recent += 1
                continue
            await _check_original(backend, records, aws.source_bucket, original, report)
    await _orphaned_renditions(backend, aws.dest_bucket, originals, cutoff, report)
    for user in await Accounts(backend.tables).users():
        cursor = None
        while True:
            page_records, cursor = await records.page(str(user["user_id"]), 100, cursor)
            report.records_without_original += [
                key
                for r in page_records
                if (key := f"{r.owner}/{r.image_id}") not in originals
                and r.state != "awaiting_upload"  # a presigned upload's bytes not sent (yet): gc's
                and datetime.fromisoformat(str(r.item.get("created_at"))) < cutoff
            ]
            if cursor is None:
                break
    log.info(
        "reconciled originals=%d missing_records=%d lost_events=%d orphaned_renditions=%d "
        "records_without_original=%d dry_run=%s",
        report.originals,
        len(report.missing_records),
        len(report.lost_events),
        len(report.orphaned_renditions),
        len(report.records_without_original),
        dry_run,
    )
    return report


async def _check_original(
    backend: Backend, records: RecordStore, bucket: str, original: ListedObject, report: Reconciliation
) -> None:
    ref = ImageRef(original.key)
    owner, image_id = ref.owner_and_id
    if not (valid_user_id(owner) and valid_image_id(image_id)):
        return  # its event dead-letters it as invalid_key; nothing to rebuild
    record = await records.read(ref)
    if record is not None and record.item.get("result_etag") == original.etag:
        return
    (report.missing_records if record is None else report.lost_events).append(original.key)
    if not report.dry_run:
        await backend.main.send(object_created(bucket, original.key, original.size, original.etag))


async def _orphaned_renditions(
    backend: Backend, bucket: str, originals: dict[str, str], cutoff: datetime, report: Reconciliation
) -> None:
    """Renditions (at `{source key}/{file}`) and variants whose original is gone, and variants
    of an earlier original; recent ones are spared, as their original may have been stored after
    the source bucket was listed."""
    doomed: list[str] = []
    async for page in backend.storage.list_objects(bucket):
        doomed += [
            r.key
            for r in page
            if r.last_modified < cutoff and stale_derivative(r.key, originals.get(source_key_of(r.key)))
        ]
    report.orphaned_renditions = doomed
    if not report.dry_run:
        await backend.storage.delete_many(bucket, doomed)
