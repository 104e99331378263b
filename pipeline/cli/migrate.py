"""`python -m pipeline migrate --from-data-dir DIR`: move a single box's images to AWS.

Copies every item of every table (users, key hashes, image records, the link secret in
`config`, ...) and every object of both buckets from a data directory into the configured AWS
backend (real, or any endpoint speaking its APIs), under the same keys, so the same keys open the
same images and signed links stay valid. Items first, then the renditions and variants, then the
originals: an original's S3 event then finds its record ready for the same bytes (a local ETag is
the MD5 S3 gives a single PUT) and the job has nothing to do. An object already there with the
same ETag is skipped, so an interrupted run is started again, not undone. What is queued in the
directory (jobs, webhook events) is not copied: the originals' events stand in for jobs.

Objects are read whole, one at a time (at most `IMGSVC_MAX_BYTES`, the largest an upload may be).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from config.settings import Settings
from pipeline.core.ports import Backend, ItemTable
from pipeline.core.topology import SPECS

log = logging.getLogger(__name__)
#: Largest object copied, beyond the largest upload: renditions and variants of it are smaller.
SLACK_BYTES = 1024 * 1024


@dataclass
class MigrationReport:
    items: int = 0
    objects: int = 0
    bytes: int = 0
    already_there: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


async def migrate(source: Backend, target: Backend, settings: Settings) -> MigrationReport:
    """Copy `source` (a data directory) into `target` (AWS); see the module's docstring."""
    report = MigrationReport()
    for spec in SPECS:  # every table the service has: a new one is copied too
        from_table: ItemTable = getattr(source.tables, spec.name)
        to_table: ItemTable = getattr(target.tables, spec.name)
        for item in await from_table.scan_all():
            await to_table.put(item)
            report.items += 1
    aws = settings.aws
    limit = settings.imaging.max_bytes + SLACK_BYTES
    for bucket in (aws.dest_bucket, aws.source_bucket):  # originals last: their events find records
        async for page in source.storage.list_objects(bucket):
            for listed in page:
                if await _same_there(target, bucket, listed.key, listed.etag):
                    report.already_there += 1
                    continue
                meta, data = await source.storage.read(bucket, listed.key, limit)
                await target.storage.put(bucket, listed.key, data, meta.content_type, meta.metadata)
                report.objects += 1
                report.bytes += len(data)
    log.info("migrated %s", report.as_dict())
    return report


async def _same_there(target: Backend, bucket: str, key: str, etag: str) -> bool:
    return await target.storage.etag_of(bucket, key) == etag
