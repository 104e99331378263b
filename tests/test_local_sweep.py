"""What an interrupted write leaves on the local backend (a blob no row names, a temporary file)
is removed by the serving process once it is old enough, and never while it may still be in use."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.local.backend import open_local
from pipeline.local.storage import ORPHAN_AGE_SECONDS
from tests.support.settings import local_settings


def _stray(path: Path, age: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half an upload")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


async def test_only_the_serving_process_sweeps_and_only_old_unnamed_files(tmp_path: Path) -> None:
    settings = local_settings(tmp_path / "data")
    bucket = settings.aws.source_bucket
    async with open_local(settings) as backend:
        await backend.storage.put_json(bucket, "u/kept", {"n": 1})
    objects = tmp_path / "data" / "objects"
    named = [p for p in (objects / "blobs").rglob("*") if p.is_file()]
    for path in named:  # a stored object as old as any orphan: its row still protects it
        os.utime(path, (time.time() - 2 * ORPHAN_AGE_SECONDS,) * 2)
    old_blob = _stray(objects / "blobs" / "ab" / "orphan", 2 * ORPHAN_AGE_SECONDS)
    old_tmp = _stray(objects / "tmp" / "stale", 2 * ORPHAN_AGE_SECONDS)
    young_blob = _stray(objects / "blobs" / "cd" / "being-named", 5)
    young_tmp = _stray(objects / "tmp" / "being-written", 5)

    async with open_local(settings) as backend:  # a short command: leaves everything alone
        assert old_blob.exists() and old_tmp.exists()
    async with open_local(settings, sweep=True) as backend:
        assert not old_blob.exists() and not old_tmp.exists()
        assert young_blob.exists() and young_tmp.exists()
        assert await backend.storage.get_json(bucket, "u/kept") == {"n": 1}
    assert named and all(p.exists() for p in named)
