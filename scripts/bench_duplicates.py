"""A duplicate upload against a fresh one: the job's time and the imaging workers' CPU.

On the local backend in this process (files + SQLite in a temporary directory), one worker
process, the default renditions: for each image of the generated set, a fresh upload's job (the
worker makes the renditions) and then jobs for the same bytes under new ids by the same owner
(the renditions are copied), each the median of `--runs`. Worker CPU is read from /proc for the
pool's processes around each job. Issue 16's targets: no worker CPU, under 20% of the time.

    .venv/bin/python scripts/bench_duplicates.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench_imaging import build_set

from config.settings import Settings
from pipeline.consumer.jobs import JobRunner
from pipeline.core.accounts import Accounts
from pipeline.core.events import ObjectCreated
from pipeline.core.layout import ImageRef
from pipeline.core.records import RecordStore
from pipeline.imaging.workers import WorkerPool
from pipeline.local.backend import open_local

#: Duplicates are per owner: each fresh run is the first upload of the bytes by another user.
USERS = [f"0b5e3f40-0000-4000-8000-00000000d0{n:02d}" for n in range(20)]
IMAGES = ("jpeg-2mp", "jpeg-12mp", "png-12mp")


def children_cpu_ms() -> float:
    """CPU (user + system) of this process's child processes that are alive: the workers."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / ticks * 1000
    return total


async def main(runs: int, names: list[str]) -> dict[str, object]:
    images = build_set(names)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({"IMGSVC_DATA_DIR": tmp})
        pool = WorkerPool(1, threads=1)
        await pool.warm_up()
        async with open_local(settings) as backend:
            for user in USERS:
                await Accounts(backend.tables).create_user(user)
            records = RecordStore(backend.tables.images, backend.tables.users)
            runner = JobRunner(backend.storage, records, pool, settings, None, backend.tables.users)

            async def job(user: str, image_id: str, data: bytes) -> tuple[float, float, str]:
                ref = ImageRef.of(user, image_id)
                bucket = settings.aws.source_bucket
                etag = await backend.storage.put(
                    bucket, ref.source_key, data, "image/jpeg", {"user-id": user}
                )
                facts = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

                async def current() -> str:
                    return etag

                await records.record_upload(ref, etag, facts, current)
                cpu, started = children_cpu_ms(), time.perf_counter()
                # As S3's event names it: the job trusts the record's SHA-256 (and so looks for a
                # duplicate) only for the original whose ETag the event gives.
                event = ObjectCreated(bucket, ref.source_key, "ObjectCreated:Put", len(data), etag.strip('"'))
                result = await runner.process(event)
                elapsed = (time.perf_counter() - started) * 1000
                assert result.outcome == "ready", result
                record = await records.read(ref)
                assert record is not None
                return elapsed, children_cpu_ms() - cpu, str(record.item.get("duplicate_of", ""))

            out: dict[str, object] = {}
            for name in names:
                data = images[name]
                fresh = [await job(USERS[i], name, data) for i in range(runs)]  # USERS[0]'s is the first
                copies = [await job(USERS[0], f"{name}-copy{i}", data) for i in range(runs)]
                first = name
                assert all(c[2] == first for c in copies), copies
                fresh_ms = statistics.median(f[0] for f in fresh)
                copy_ms = statistics.median(c[0] for c in copies)
                out[name] = {
                    "fresh_job_ms": round(fresh_ms, 1),
                    "duplicate_job_ms": round(copy_ms, 1),
                    "duplicate_over_fresh": round(copy_ms / fresh_ms, 3),
                    "fresh_worker_cpu_ms": round(statistics.median(f[1] for f in fresh), 1),
                    "duplicate_worker_cpu_ms": round(statistics.median(c[1] for c in copies), 1),
                }
        await asyncio.to_thread(pool.close)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help=f"jobs of each kind (at most {len(USERS)})")
    parser.add_argument(
        "--images",
        nargs="+",
        default=list(IMAGES),
        help=f"images of bench_imaging.py's set (default: {' '.join(IMAGES)})",
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.runs, args.images)), indent=2))
