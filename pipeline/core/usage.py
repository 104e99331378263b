"""Recompute each user's usage counters from their image records (`python -m pipeline users
reconcile`).

The counters (`bytes_used`, `image_count` on the user's item) change with the records, in one
transaction (`RecordStore`), so no crash between steps leaves them apart; what still can is
anything that bypasses the records' writes: a record removed by DynamoDB's TTL (`purge_at`, a
backstop for an expired image gc did not remove), an item edited by hand, data from before the
transactions. The records are the truth: an image counts
its original's bytes and the variants its record counts. The difference is applied as an atomic
increment, so uploads racing the run are not undone; a run racing them can still misjudge an
image in flight, which the next quiet run corrects. `dry_run` only reports.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.accounts import Accounts
from pipeline.core.items import Add, ConditionFailed, Present
from pipeline.core.ports import TableSet
from pipeline.core.records import RecordStore, counted

_PAGE = 100


@dataclass
class UsageDrift:
    """One user whose counters disagree with their records, and by how much."""

    user_id: str
    counted_bytes: int
    actual_bytes: int
    counted_images: int
    actual_images: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class UsageReport:
    dry_run: bool
    users: int = 0
    drifted: list[UsageDrift] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "users": self.users, "drifted": [d.as_dict() for d in self.drifted]}


async def reconcile_usage(tables: TableSet, *, dry_run: bool = False) -> UsageReport:
    """Compare every user's counters with their records; unless `dry_run`, correct them. Pages
    through the records (bounded memory whatever the user's image count)."""
    report = UsageReport(dry_run)
    records = RecordStore(tables.images)
    for user in await Accounts(tables).users():
        report.users += 1
        user_id = str(user["user_id"])
        actual_bytes = actual_images = 0
        cursor = None
        while True:
            page, cursor = await records.page(user_id, _PAGE, cursor)
            for record in page:  # what the record writes add to the counters, added up
                size, images = counted(record.item)
                actual_bytes, actual_images = actual_bytes + size, actual_images + images
            if cursor is None:
                break
        drift = UsageDrift(
            user_id,
            int(user.get("bytes_used", 0)),
            actual_bytes,
            int(user.get("image_count", 0)),
            actual_images,
        )
        if (drift.counted_bytes, drift.counted_images) == (actual_bytes, actual_images):
            continue
        report.drifted.append(drift)
        if not dry_run:
            changes = [
                Add("bytes_used", actual_bytes - drift.counted_bytes),
                Add("image_count", actual_images - drift.counted_images),
            ]
            with contextlib.suppress(ConditionFailed):  # deleted meanwhile: nothing to correct
                await tables.users.update({"user_id": user_id}, changes, Present("user_id"))
    return report
