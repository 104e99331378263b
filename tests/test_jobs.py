"""A job whose original changes under it: put straight into the bucket (no record, so its record
write asks S3 nothing first and the job asks after), then deleted or replaced between the job's
read and its record write. Nothing of a deleted image is left; a replaced one ends as the newer
original's result. And a stale event that times out never fails a newer result. Both backends."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pipeline.consumer.jobs import JobRunner
from pipeline.core.accounts import Accounts
from pipeline.core.errors import JobTimeout
from pipeline.core.events import ObjectCreated
from pipeline.core.layout import ImageRef
from pipeline.core.records import RecordStore
from tests.support.backends import Backend
from tests.support.consumers import shared_pool
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import USER


class _ChangedAfterRun:
    """The worker pool, running `then` once right after its first job (which read the original):
    what another client does while the job works."""

    stops_on_timeout = True

    def __init__(self, pool: Any, then: Callable[[], Awaitable[Any]]) -> None:
        self._pool, self._then = pool, [then]

    async def run_for(self, owner: str, timeout: float, fn: Any, *args: Any, **kwargs: Any) -> Any:
        got = await self._pool.run_for(owner, timeout, fn, *args, **kwargs)
        if self._then:
            await self._then.pop()()
        return got


@pytest.mark.parametrize("change", ["deleted", "replaced"])
async def test_an_original_put_straight_in_then_changed_mid_job(backend: Backend, change: str) -> None:
    settings, storage = backend.settings, backend.storage
    source, dest = settings.aws.source_bucket, settings.aws.dest_bucket
    key = f"{USER}/direct"
    # No record: as `aws s3 cp` leaves it (metadata naming the owner, as the API's would).
    await storage.put(source, key, jpeg_bytes(300, 200), "image/jpeg", {"user-id": USER})
    newer = jpeg_bytes(120, 90)

    async def changed() -> None:
        if change == "deleted":
            await storage.delete_many(source, [key])
        else:
            await storage.put(source, key, newer, "image/jpeg", {"user-id": USER})

    tables = backend.tables
    records = RecordStore(tables.images, tables.users)
    jobs = JobRunner(
        storage,
        records,
        _ChangedAfterRun(await shared_pool(settings), changed),
        settings,
        users=tables.users,
    )
    result = await jobs.process(ObjectCreated(source, key, "ObjectCreated:Put"))
    record = await records.read(ImageRef(key))
    renditions = [o.key async for page in storage.list_objects(dest, key) for o in page]
    if change == "deleted":
        assert result.outcome == "source_missing"
        assert record is None and renditions == []  # no record, no renditions of it left behind
        return
    assert result.outcome == "ready"
    assert record is not None and record.state == "ready"
    assert record.source_etag == await storage.etag_of(source, key)  # the newer original's result
    _, thumbnail = await storage.read(dest, renditions[0], 10_000_000)
    assert decode(thumbnail).size == (120, 90)  # made from the newer bytes (small: never upscaled)


class _TimesOut:
    """A worker pool whose every job runs out of time."""

    stops_on_timeout = True

    async def run_for(self, owner: str, timeout: float, fn: Any, *args: Any, **kwargs: Any) -> Any:
        raise JobTimeout(f"processing took longer than {timeout:g}s")


async def test_a_stale_event_timing_out_never_fails_the_newer_result(backend: Backend) -> None:
    """Timeouts are counted under the original S3 has when one happens, not the event's: a stale
    event of a replaced original, retried after one timeout of that original, must not add its
    next timeout (of the newer bytes, now current) to the old count, call the image too costly
    and overwrite the newer result with `failed`."""
    settings, storage = backend.settings, backend.storage
    source = settings.aws.source_bucket
    key = f"{USER}/stale-timeout"
    records = RecordStore(backend.tables.images, backend.tables.users)
    ref = ImageRef(key)
    first = await storage.put(source, key, jpeg_bytes(40, 30), "image/jpeg", {"user-id": USER})
    await records.record_upload(ref, first, {"file_name": "one.jpg"}, lambda: storage.etag_of(source, key))
    assert await records.count_timeout(ref, first) == 1  # the first original's job timed out once
    assert (await records.read(ref)).item["timeout_etag"] == first  # type: ignore[union-attr]
    await storage.put(source, key, jpeg_bytes(50, 40), "image/jpeg", {"user-id": USER})  # replaced
    ready = JobRunner(storage, records, await shared_pool(settings), settings, users=backend.tables.users)
    assert (await ready.process(ObjectCreated(source, key, "ObjectCreated:Put"))).outcome == "ready"
    stale = JobRunner(storage, records, _TimesOut(), settings, users=backend.tables.users)
    with pytest.raises(JobTimeout):  # transient: retried, the newer original's first timeout
        await stale.process(ObjectCreated(source, key, "ObjectCreated:Put", etag=first.strip('"')))
    record = await records.read(ref)
    assert record is not None and record.state == "ready" and record.error is None


async def test_an_original_replaced_outside_the_api_is_counted_at_its_own_size(backend: Backend) -> None:
    """An upload through the API recorded its bytes; `aws s3 cp` over it puts other bytes under the
    same key: the job counts those (the record and the owner's usage), and drops the digest of the
    bytes that are gone."""
    settings, storage, tables = backend.settings, backend.storage, backend.tables
    source, key = settings.aws.source_bucket, f"{USER}/replaced"
    first, second = jpeg_bytes(300, 200), jpeg_bytes(900, 600)
    records = RecordStore(tables.images, tables.users)
    jobs = JobRunner(storage, records, await shared_pool(settings), settings, users=tables.users)
    await Accounts(tables).create_user(USER)
    await storage.put(source, key, first, "image/jpeg", {"user-id": USER})
    assert (await jobs.process(ObjectCreated(source, key, "ObjectCreated:Put"))).outcome == "ready"
    before = await tables.users.get({"user_id": USER}) or {}
    await storage.put(source, key, second, "image/jpeg", {"user-id": USER})
    assert (await jobs.process(ObjectCreated(source, key, "ObjectCreated:Put"))).outcome == "ready"
    record = await records.read(ImageRef(key))
    assert record is not None and record.bytes == len(second)
    assert record.item.get("sha256") != hashlib.sha256(first).hexdigest()
    after = await tables.users.get({"user_id": USER}) or {}
    assert int(after.get("bytes_used", 0)) - int(before.get("bytes_used", 0)) == len(second) - len(first)
