"""A worker reads the original itself (`pipeline.core.originals`): from what the store's `locate`
names, it gets the same metadata and bytes as the store's own `read`, refuses more than its
limit without reading it, and finds an original deleted since it was located gone. Both backends;
the reads run here, as they run in a worker (synchronously, with their own client)."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import NotFound
from pipeline.core.objects import OversizeObject
from pipeline.core.originals import read
from tests.support.backends import Backend
from tests.support.images import jpeg_bytes
from tests.support.settings import ROOT, USER


async def test_a_worker_reads_what_the_store_would(backend: Backend) -> None:
    storage, bucket = backend.storage, backend.settings.aws.source_bucket
    key, data = f"{USER}/located", jpeg_bytes(64, 48)
    await storage.put(bucket, key, data, "image/jpeg", {"user-id": USER})
    meta, stored = await storage.read(bucket, key, 10_000_000)
    where = await storage.locate(bucket, key, 10_000_000)
    read_meta, read_data = await asyncio.to_thread(read, pickle.loads(pickle.dumps(where)))
    assert read_data == stored == data
    assert (read_meta.size, read_meta.etag, read_meta.metadata) == (meta.size, meta.etag, meta.metadata)


async def test_more_than_the_limit_is_refused_unread_and_the_refusal_crosses_processes(
    backend: Backend,
) -> None:
    storage, bucket = backend.storage, backend.settings.aws.source_bucket
    key, data = f"{USER}/large", jpeg_bytes(64, 48)
    await storage.put(bucket, key, data, "image/jpeg")
    where = await storage.locate(bucket, key, len(data) - 1)
    with pytest.raises(OversizeObject) as raised:
        await asyncio.to_thread(read, where)
    back = pickle.loads(pickle.dumps(raised.value))  # as a worker's exception reaches the loop
    assert isinstance(back, OversizeObject) and back.meta.size == len(data) and back.code == "too_large"


async def test_an_original_deleted_after_it_was_located_is_gone(backend: Backend) -> None:
    storage, bucket = backend.storage, backend.settings.aws.source_bucket
    key = f"{USER}/fleeting"
    await storage.put(bucket, key, jpeg_bytes(32, 32), "image/jpeg")
    where = await storage.locate(bucket, key, 10_000_000)
    await storage.delete_many(bucket, [key])
    with pytest.raises(NotFound):
        await asyncio.to_thread(read, where)
    if backend.name == "local":  # it looks the object up already (S3's locate asks nothing)
        with pytest.raises(NotFound):
            await storage.locate(bucket, key, 10_000_000)


def test_a_worker_reading_local_blobs_loads_no_aws_library(tmp_path: Path) -> None:
    """A worker of the local backend stays as small as before workers read originals: the S3
    client and its libraries (35 MB) are loaded only where S3 is read."""
    blob = tmp_path / "blob"
    blob.write_bytes(b"0123456789")
    code = f"""
import sys
from datetime import UTC, datetime
from pipeline.core.objects import ObjectMeta
from pipeline.core.originals import FileOriginal, read
from pipeline.imaging.tasks import renditions_of  # what a worker imports to run a job
meta = ObjectMeta(10, '"e"', datetime.now(UTC), "image/jpeg", {{}})
assert read(FileOriginal({str(blob)!r}, meta, 100))[1] == b"0123456789"
loaded = sorted(m for m in ("aiobotocore", "botocore", "aiohttp") if m in sys.modules)
assert not loaded, loaded
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
