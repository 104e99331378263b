"""`python -m pipeline gc`: on both backends, a dry run counts the orphans and touches nothing, a
real run removes exactly them (live images keep every part), and a run racing live uploads
deletes nothing of theirs."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from pipeline.cli.gc import Collection, collect
from pipeline.core.layout import ImageRef
from pipeline.core.usage import reconcile_usage
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import decode, jpeg_bytes
from tests.support.processes import run
from tests.support.settings import USER
from web.keys import VARIANTS

Client = TestClient[Any, Any]


async def keys_in(backend: Backend, bucket: str) -> list[str]:
    found: list[str] = []
    async for page in backend.storage.list_objects(bucket):
        found += [o.key for o in page]
    return sorted(found)


async def stale_upload(backend: Backend) -> None:
    """An upload begun and never finished: an S3 multipart upload, or a local temporary file."""
    s3 = getattr(backend.storage, "_s3", None)
    if s3 is not None:
        await s3.create_multipart_upload(Bucket=backend.settings.aws.source_bucket, Key=f"{USER}/half")
    else:
        (Path(backend.storage._tmp) / "half-written").write_bytes(b"\xff\xd8\xff")  # type: ignore[attr-defined]


async def everything(backend: Backend) -> tuple[list[str], list[str]]:
    aws = backend.settings.aws
    return await keys_in(backend, aws.source_bucket), await keys_in(backend, aws.dest_bucket)


def counts(report: Collection) -> tuple[int, int, int, int]:
    return (
        report.orphaned_originals.count,
        report.orphaned_derivatives.count,
        report.records_without_original,
        report.stale_uploads,
    )


async def test_a_dry_run_counts_the_orphans_and_a_run_removes_only_them(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    aws, storage = backend.settings.aws, backend.storage
    for image_id in ("live", "lost"):
        assert (await api.put(f"/images/{image_id}", data=jpeg_bytes(64, 48))).status == 202
    assert (await consume(backend)).get("ready") == 2
    assert (await api.get("/images/live/variant", params={"w": "20"})).status == 200
    await api.server.app[VARIANTS].idle()
    live_parts = [k for k in await keys_in(backend, aws.dest_bucket) if k.startswith(f"{USER}/live/")]

    orphan = jpeg_bytes(30, 30)
    await storage.put(aws.source_bucket, f"{USER}/orphan", orphan, "image/jpeg", {})  # never recorded
    await storage.put(aws.dest_bucket, f"{USER}/gone/thumb.jpg", b"x" * 10, "image/jpeg", {})
    stale_variant = ImageRef.of(USER, "live").variant_key('"0123456789abcdef"', "w10-contain-q80.jpg")
    await storage.put(aws.dest_bucket, stale_variant, b"y" * 20, "image/jpeg", {})
    await storage.delete_many(aws.source_bucket, [f"{USER}/lost"])  # half a delete: the record stays
    lost_parts = [k for k in await keys_in(backend, aws.dest_bucket) if k.startswith(f"{USER}/lost/")]
    await stale_upload(backend)
    before = await everything(backend)

    dry = await collect(backend, backend.settings, dry_run=True, grace=0, stale_uploads_after=0)
    assert counts(dry) == (1, 2 + len(lost_parts), 1, 1)
    assert dry.orphaned_originals.bytes == len(orphan)
    assert await everything(backend) == before  # a dry run only counts
    assert (await api.get("/images/lost")).status == 200

    done = await collect(backend, backend.settings, grace=0, stale_uploads_after=0)
    assert counts(done) == counts(dry)
    sources, derived = await everything(backend)
    assert sources == [f"{USER}/live"] and derived == sorted(live_parts)
    assert (await api.get("/images/lost")).status == 404
    thumb = await api.get("/download/thumbnail", params={"image_id": "live"})
    assert thumb.status == 200 and decode(await thumb.read()).width > 0
    assert (await reconcile_usage(backend.tables, dry_run=True)).drifted == []  # uncounted with its record
    again = await collect(backend, backend.settings, dry_run=True, grace=0, stale_uploads_after=0)
    assert counts(again) == (0, 0, 0, 0)


@pytest.mark.slow
async def test_a_run_racing_live_uploads_deletes_nothing_of_theirs(
    backend: Backend, make_client: ClientFactory
) -> None:
    """Uploads, replacements and their processing go on while gc runs again and again with a
    one-second grace: it finds nothing to remove, and every image ends with its latest bytes."""
    api = await make_client(backend.settings)
    latest: dict[str, bytes] = {}
    swept: list[Collection] = []
    stop = asyncio.Event()

    async def uploads() -> None:
        for n in range(24):
            image_id = f"race{n % 6}"  # each id uploaded four times: replacements
            data = jpeg_bytes(32 + n, 24)
            response = await api.put(f"/images/{image_id}", data=data)
            assert response.status == 202
            latest[image_id] = data
            if n % 6 == 5:
                await consume(backend)
        stop.set()

    async def sweeping() -> None:
        while not stop.is_set():
            swept.append(await collect(backend, backend.settings, grace=1.0, stale_uploads_after=3600))

    await asyncio.gather(uploads(), sweeping())
    await consume(backend)
    assert swept and all(counts(r) == (0, 0, 0, 0) for r in swept)
    for image_id, data in latest.items():
        original = await api.get("/download/image", params={"image_id": image_id})
        assert await original.read() == data
        status = await (await api.get(f"/images/{image_id}")).json()
        assert status["status"] == "ready", status


@pytest.mark.e2e
def test_the_command_reports_json(tmp_path: Path) -> None:
    env = {"IMGSVC_LOG_LEVEL": "WARNING"}
    result = run(["-m", "pipeline", "--data-dir", str(tmp_path), "gc", "--dry-run", "--grace", "0"], env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dry_run"] is True and report["orphaned_originals"] == {"count": 0, "bytes": 0}
