"""`python -m pipeline reconcile`: lost events sent again, orphans removed, on either backend."""

from __future__ import annotations

import uuid

from pipeline.cli.reconcile import reconcile
from pipeline.consumer.service import open_consumer
from pipeline.core.accounts import Accounts
from pipeline.core.events import object_created
from pipeline.core.layout import ImageRef
from pipeline.core.records import RecordStore
from tests.support.backends import Backend
from tests.support.consumers import shared_pool
from tests.support.images import jpeg_bytes
from tests.support.settings import USER


async def drain(backend: Backend) -> None:
    """Drop every queued message: the events that 'got lost'."""
    while messages := await backend.main.receive(10, 0, visibility_timeout=60):
        for message in messages:
            await backend.main.delete(message.receipt_handle)


async def test_lost_events_and_orphans_are_rebuilt_from_the_originals(backend: Backend) -> None:
    settings, aws = backend.settings, backend.settings.aws
    await Accounts(backend.tables).create_user(USER)
    records = RecordStore(backend.tables.images)
    for image_id in ("lost", "done"):
        await backend.storage.put(aws.source_bucket, f"{USER}/{image_id}", jpeg_bytes(300, 200), "image/jpeg")
    await drain(backend)  # both events lost...
    await backend.main.send(
        await _event_for(backend, f"{USER}/done")
    )  # ...but one is found again and processed
    pool = await shared_pool(settings)
    async with open_consumer(backend.ports, settings, burst=True, pool=pool) as consumer:
        await consumer.run()
    orphan = f"{USER}/{uuid.uuid4().hex[:8]}/256.jpg"  # a rendition whose original is gone
    await backend.storage.put(aws.dest_bucket, orphan, b"x", "image/jpeg")

    dry = await reconcile(backend.ports, settings, dry_run=True, min_age=0)
    assert dry.missing_records == [f"{USER}/lost"] and dry.lost_events == []
    assert dry.orphaned_renditions == [orphan] and dry.originals == 2
    assert await backend.main.depth() == {"visible": 0, "in_flight": 0}  # a dry run sends nothing
    assert await backend.storage.etag_of(aws.dest_bucket, orphan) is not None

    done = await reconcile(backend.ports, settings, min_age=0)
    assert done.missing_records == [f"{USER}/lost"]
    assert await backend.storage.etag_of(aws.dest_bucket, orphan) is None
    async with open_consumer(backend.ports, settings, burst=True, pool=pool) as consumer:
        stats = await consumer.run()
    assert stats.outcomes["ready"] == 1
    record = await records.read(ImageRef(f"{USER}/lost"))
    assert record is not None and record.state == "ready"
    again = await reconcile(backend.ports, settings, min_age=0)  # nothing left to do
    assert (again.missing_records, again.lost_events, again.orphaned_renditions) == ([], [], [])


async def test_recent_originals_are_left_to_their_own_events(backend: Backend) -> None:
    aws = backend.settings.aws
    await backend.storage.put(aws.source_bucket, f"{USER}/new", jpeg_bytes(30, 20), "image/jpeg")
    await drain(backend)
    report = await reconcile(backend.ports, backend.settings, min_age=300)
    assert report.too_recent == 1 and report.missing_records == []
    assert await backend.main.depth() == {"visible": 0, "in_flight": 0}


async def _event_for(backend: Backend, key: str) -> str:
    meta = await backend.storage.head(backend.settings.aws.source_bucket, key)
    return object_created(backend.settings.aws.source_bucket, key, meta.size, meta.etag)


async def test_variants_of_the_current_original_stay_and_others_go(backend: Backend) -> None:
    aws = backend.settings.aws
    await backend.storage.put(aws.source_bucket, f"{USER}/kept", jpeg_bytes(30, 20), "image/jpeg")
    await drain(backend)
    ref = ImageRef(f"{USER}/kept")
    etag = await backend.storage.etag_of(aws.source_bucket, ref.source_key)
    assert etag is not None
    current = ref.variant_key(etag, "w10-contain-q80.jpg")
    stale = ref.variant_key('"0123456789abcdef"', "w10-contain-q80.jpg")  # of a replaced original
    gone = ImageRef(f"{USER}/gone").variant_key(etag, "w10-contain-q80.jpg")  # of a deleted one
    for key in (current, stale, gone):
        await backend.storage.put(aws.dest_bucket, key, b"x", "image/jpeg")
    report = await reconcile(backend.ports, backend.settings, min_age=0)
    assert sorted(report.orphaned_renditions) == sorted([stale, gone])
    assert await backend.storage.etag_of(aws.dest_bucket, current) is not None
    assert await backend.storage.etag_of(aws.dest_bucket, stale) is None
