"""Consumer throughput against the embedded stack, beside the raw process pool and a naive consumer.

1. raw pool: `make_renditions` on the same images in a process pool, no S3 or SQS at all;
2. consumer: the source bucket is filled with N images of one owner (their events queue up),
   then the real consumer pool runs at its default settings until every image is ready; then
   again with the images spread over the five demo users (a lone owner's backlog against a
   mixed one: the per-owner share must not idle the pool);
3. naive: one message at a time, naive Pillow (full decode + resize) on the event loop, as the
   original Lambda-style code would.

Moto runs in a process of its own, as a real endpoint would.

    .venv/bin/python scripts/bench_consumer.py --images 120 --megapixels 12
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import io
import json
import multiprocessing
import os
import resource
import time
import uuid
import zlib
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from PIL import Image, ImageOps
from proccpu import tree_cpu
from stack import ROOT, endpoint_apart, free_port, start_endpoint

from config.settings import SEED_USER_IDS, Settings, usable_cpus
from pipeline.aws.clients import AwsClients, open_clients
from pipeline.aws.provision import provision
from pipeline.aws.queue import Queue
from pipeline.backends import aws_backend
from pipeline.consumer.service import open_consumer
from pipeline.core import runtime
from pipeline.core.layout import ImageRef
from pipeline.core.records import RecordStore
from pipeline.core.uploads import upload_metadata
from pipeline.imaging.renditions import configure_worker, make_renditions


def photo_jpeg(megapixels: float, seed: int) -> bytes:
    width = int((megapixels * 1e6 * 3 / 2) ** 0.5)
    height = int(width * 2 / 3)
    base = (
        Image.open(ROOT / "input" / "dog.jpg")
        .convert("RGB")
        .resize((width, height), Image.Resampling.BICUBIC)
    )
    noise = Image.effect_noise((width, height), 20 + seed % 7).convert("RGB")
    out = io.BytesIO()
    Image.blend(base, noise, 0.12).save(out, "JPEG", quality=90)
    return out.getvalue()


def settings_for(endpoint: str, overrides: dict[str, str] | None = None) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings.from_env(
        {
            **(overrides or {}),
            "AWS_ENDPOINT_URL": endpoint,
            "IMGSVC_MODE": "embedded",
            "IMGSVC_SOURCE_BUCKET": f"bench-src-{tag}",
            "IMGSVC_DEST_BUCKET": f"bench-dst-{tag}",
            "IMGSVC_QUEUE_NAME": f"bench-q-{tag}",
            "IMGSVC_DLQ_NAME": f"bench-dlq-{tag}",
            "IMGSVC_OUTBOX_NAME": f"bench-hooks-{tag}",
            "IMGSVC_OUTBOX_DLQ_NAME": f"bench-hooks-dlq-{tag}",
        }
    )


def unique(image: bytes, i: int) -> bytes:
    """`image` with a comment naming `i` where its format keeps one (a JPEG COM segment, a PNG
    tEXt chunk, a WebP chunk, an ISOBMFF `free` box): the same pixels and decoding work, other
    bytes, so the consumer's duplicate detection (same owner, same SHA-256) copies nothing."""
    note = f"bench {i}".encode()
    if image.startswith(b"\xff\xd8"):
        return image[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + image[2:]
    if image.startswith(b"\x89PNG"):
        chunk = b"tEXt" + b"bench\0" + note
        text = len(chunk[4:]).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big")
        return image[:33] + text + image[33:]  # after the signature and IHDR
    if image.startswith(b"RIFF") and image[8:12] == b"WEBP":
        body = image[12:] + b"BNCH" + len(note).to_bytes(4, "little") + note + b"\0" * (len(note) % 2)
        return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body
    return image + (len(note) + 8).to_bytes(4, "big") + b"free" + note  # ISOBMFF (AVIF, HEIC)


async def fill(
    clients: AwsClients,
    settings: Settings,
    images: list[bytes],
    count: int,
    *,
    direct: bool = False,
    owners: int = 1,
) -> None:
    """`count` originals in the source bucket, as API uploads store them (under demo users in
    turn, the first `owners` of them, naming the owner in the metadata, with the upload's
    record); `direct`: bare puts, with no record, as `aws s3 cp` would leave them."""
    semaphore = asyncio.Semaphore(8)
    backend = await aws_backend(clients, settings)
    records = None if direct else RecordStore(backend.tables.images)

    async def put(i: int) -> None:
        owner = SEED_USER_IDS[i % owners]
        ref = ImageRef.of(owner, f"bench-{i:05d}")
        body = unique(images[i % len(images)], i)
        async with semaphore:
            stored = await clients.s3.put_object(
                Bucket=settings.aws.source_bucket,
                Key=ref.source_key,
                Body=body,
                Metadata=upload_metadata(owner, f"bench-{i}.jpg"),
            )
            if records is not None:
                facts = {
                    "file_name": f"bench-{i}.jpg",
                    "content_type": "image/jpeg",
                    "format": "jpeg",
                    "bytes": len(body),
                    "sha256": hashlib.sha256(body).hexdigest(),
                }
                # The original's current ETag, as the API confirms it when a write races another
                # (the consumer of an earlier run, or of this one, writing the same record).
                source = settings.aws.source_bucket
                current = functools.partial(backend.storage.etag_of, source, ref.source_key)
                await records.record_upload(ref, stored["ETag"], facts, current, read=None)

    await asyncio.gather(*(put(i) for i in range(count)))
    queue = await Queue.named(clients.sqs, settings.aws.queue_name)
    while (await queue.depth())["visible"] < count:  # notifications are asynchronous in moto
        await asyncio.sleep(0.1)


def raw_pool(images: list[bytes], count: int, workers: int) -> float:
    imaging = Settings.from_env({}).imaging
    # Set up as the consumer's pool sets up its workers (decoder threads: usable CPUs ÷ workers).
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=configure_worker,
        initargs=(max(1, usable_cpus() // workers),),
    ) as pool:
        list(pool.map(make_renditions, images[:workers], [imaging] * workers))  # warm up
        started = time.perf_counter()
        list(pool.map(make_renditions, [images[i % len(images)] for i in range(count)], [imaging] * count))
        return count / (time.perf_counter() - started)


async def consumer_rate(
    endpoint: str,
    images: list[bytes],
    count: int,
    moto_pid: int,
    overrides: dict[str, str] | None = None,
    *,
    direct: bool = False,
    owners: int = 1,
) -> tuple[float, dict[str, float]]:
    """Images per second, and where the CPU went while the consumer worked."""
    settings = settings_for(endpoint, overrides)
    async with open_clients(settings.aws) as clients:
        await provision(clients, settings)
        await fill(clients, settings, images, count, direct=direct, owners=owners)
        async with open_consumer(await aws_backend(clients, settings), settings) as consumer:
            task = asyncio.create_task(consumer.run())
            while consumer.stats.outcomes["test_event"] < 1:  # the pool is up and receiving
                await asyncio.sleep(0.01)
            started = time.perf_counter()
            cpu_before = _cpu(moto_pid)
            while consumer.stats.outcomes["ready"] < count:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - started
            cpu_during = _cpu(moto_pid)
            consumer.stop()
            stats = await task
    cpu_after_pool = _cpu(moto_pid)  # workers are reaped now: their CPU shows under children
    cpu = {
        "moto": cpu_during["moto"] - cpu_before["moto"],
        "consumer_event_loop": cpu_during["self"] - cpu_before["self"],
        "imaging_workers": cpu_after_pool["children"] - cpu_before["children"],
        "wall": elapsed,
    }
    out = {k: round(v, 2) for k, v in cpu.items()}
    out["loop_ms_per_image"] = round(1000 * cpu["consumer_event_loop"] / count, 1)
    out["worker_ms_per_image"] = round(1000 * cpu["imaging_workers"] / count, 1)
    out["loop_vs_worker"] = round(cpu["consumer_event_loop"] / cpu["imaging_workers"], 3)
    out["deferrals"] = stats.outcomes["deferred"]
    return count / elapsed, out


def _cpu(moto_pid: int) -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "moto": tree_cpu(moto_pid) or 0.0,  # granian's worker, a grandchild, does moto's work
        "self": own.ru_utime + own.ru_stime,
        "children": children.ru_utime + children.ru_stime,
    }


def naive_thumbnail(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image = image.resize((256, round(256 * image.height / image.width)), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


async def naive_rate(endpoint: str, images: list[bytes], count: int) -> float:
    """One message at a time, resizing on the event loop: the per-message Lambda shape."""
    settings = settings_for(endpoint)
    async with open_clients(settings.aws) as clients:
        await provision(clients, settings)
        await fill(clients, settings, images, count, direct=True)
        queue = await Queue.named(clients.sqs, settings.aws.queue_name)
        done = 0
        started = time.perf_counter()
        while done < count:
            for message in await queue.receive(1, wait_seconds=1):
                records = json.loads(message.body).get("Records", [])
                for record in records:
                    key = record["s3"]["object"]["key"].replace("%2F", "/")
                    got = await clients.s3.get_object(Bucket=settings.aws.source_bucket, Key=key)
                    thumbnail = naive_thumbnail(await got["Body"].read())
                    await clients.s3.put_object(
                        Bucket=settings.aws.dest_bucket, Key=f"{key}/256.jpg", Body=thumbnail
                    )
                    done += 1
                await queue.delete(message.receipt_handle)
        return count / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    images = [photo_jpeg(args.megapixels, seed) for seed in range(4)]
    split = None if args.no_pin else endpoint_apart()
    if split is not None:  # the endpoint on a CPU of its own; the pools and the consumer on the rest
        os.sched_setaffinity(0, split[1])
    workers = len(os.sched_getaffinity(0))
    port = free_port()
    moto, _ = await start_endpoint(port, split[0] if split else None)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        overrides = dict(item.split("=", 1) for item in args.set)
        if args.consumer_only:
            consumer, cpu = await consumer_rate(
                endpoint, images, args.images, moto.pid, overrides, direct=args.direct_puts
            )
            return {"settings": overrides, "consumer_images_per_s": round(consumer, 2), "cpu_seconds": cpu}
        raw = raw_pool(images, args.images, workers)
        consumer, cpu = await consumer_rate(
            endpoint, images, args.images, moto.pid, overrides, direct=args.direct_puts
        )
        # The same backlog spread over every demo user: the per-owner share costs a lone owner
        # only what finding the others' messages costs (deferrals), never its idle slots.
        mixed, mixed_cpu = await consumer_rate(
            endpoint,
            images,
            args.images,
            moto.pid,
            overrides,
            direct=args.direct_puts,
            owners=len(SEED_USER_IDS),
        )
        naive = await naive_rate(endpoint, images, max(4, args.images // 4))
    finally:
        moto.terminate()
        await moto.wait()
    return {
        "images": args.images,
        "megapixels": args.megapixels,
        "image_bytes": len(images[0]),
        "workers": workers,
        "endpoint_cpus": sorted(split[0]) if split else "shared",
        "originals": "direct puts" if args.direct_puts else "as API uploads",
        "raw_pool_images_per_s": round(raw, 2),
        "consumer_images_per_s": round(consumer, 2),
        "naive_images_per_s": round(naive, 2),
        "consumer_vs_raw_pool": round(consumer / raw, 3),
        "consumer_images_per_s_5_owners": round(mixed, 2),
        "one_owner_vs_5_owners": round(consumer / mixed, 3),
        "consumer_vs_naive": round(consumer / naive, 2),
        "consumer_phase_cpu_seconds": cpu,
        "consumer_phase_cpu_seconds_5_owners": mixed_cpu,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--set", action="append", default=[], metavar="IMGSVC_X=V", help="a consumer setting")
    parser.add_argument(
        "--direct-puts",
        action="store_true",
        help="originals put with no record (as `aws s3 cp`), not as the API",
    )
    parser.add_argument("--consumer-only", action="store_true", help="only the consumer run (for tuning)")
    parser.add_argument(
        "--no-pin", action="store_true", help="let the endpoint share every CPU (default: a CPU of its own)"
    )
    print(json.dumps(runtime.run(main(parser.parse_args())), indent=2))
