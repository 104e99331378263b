"""This process's CPU per AWS call, through the service's own ports (aiobotocore), against the
embedded endpoint on a CPU of its own: what each call of a consumer job costs the event loop,
and their sum for one job, beside the worker's CPU for the same image; and the same for the
calls of an API upload of 95 KB, beside one direct put of those bytes.

The consumer's event loop cannot spend less per image than the calls its job must make, nor the
API per upload less than its calls, so these are floors of `bench_consumer.py`'s
"loop_vs_worker" and of `loadtest.py`'s API-to-direct CPU ratio on this machine.

    .venv/bin/python scripts/bench_calls.py --megapixels 12
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench_consumer import photo_jpeg, settings_for
from stack import endpoint_apart, free_port, start_endpoint

from config.settings import Settings
from pipeline.aws.clients import open_clients
from pipeline.aws.provision import provision
from pipeline.backends import aws_backend
from pipeline.core import runtime
from pipeline.core.items import Add, PutItem, UpdateItem
from pipeline.imaging.renditions import configure_worker, make_renditions

#: The calls of one job for an API upload of a new image (`pipeline.consumer.jobs`), each with its count:
#: the receive and the batched delete are shared by the ten messages of a batch. The event loop
#: makes these; the original's GET, its hash and the rendition's PUT are the worker's
#: (`pipeline.core.originals`), measured here through the same ports for comparison.
LOOP = {
    "receive 10 messages": 0.1,
    "delete 10 messages": 0.1,
    "get record": 1,
    "get note": 1,
    "put record": 1,
    "put note": 1,
}
WORKER_IO = {
    "get original + read": 1,
    "sha-256 of the original": 1,
    "put rendition": 1,
}
JOB = LOOP | WORKER_IO


#: The calls of an API upload of a new image below the part size (`pipeline/core/uploads.py`),
#: with the key remembered (`IMGSVC_KEY_CACHE_SECONDS`).
UPLOAD = {
    "get record (the previous one)": 1,
    "get user (quotas, webhook)": 1,
    "put original 95 KB": 1,
    "transaction (record + usage)": 1,
}


def cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def _timed(fn: Callable[[], Any]) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


async def per_call(fn: Callable[[], Awaitable[Any]], count: int) -> float:
    """Milliseconds of this process's CPU per call (threads included: pebble's, the hash's)."""
    for _ in range(5):
        await fn()
    before = cpu()
    for _ in range(count):
        await fn()
    return 1000 * (cpu() - before) / count


async def main(args: argparse.Namespace) -> dict[str, Any]:
    split = endpoint_apart()
    if split is not None:
        os.sched_setaffinity(0, split[1])
    port = free_port()
    endpoint, _ = await start_endpoint(port, split[0] if split else None)
    original = photo_jpeg(args.megapixels, 1)
    imaging = Settings.from_env({}).imaging
    configure_worker(1)
    rendition = make_renditions(original, imaging).renditions[0].data  # warm: imports, caches
    worker_ms = 1000 * min(_timed(lambda: make_renditions(original, imaging)) for _ in range(5))
    try:
        settings = settings_for(f"http://127.0.0.1:{port}")
        async with open_clients(settings.aws) as clients:
            await provision(clients, settings)
            backend = await aws_backend(clients, settings)
            storage, images, queue = backend.storage, backend.tables.images, backend.main
            source, dest = settings.aws.source_bucket, settings.aws.dest_bucket
            await storage.put(source, "bench/original", original, "image/jpeg")
            record = {"user_id": "bench", "image_id": "one", "file_name": "one.jpg", "bytes": len(original)}
            record |= {f"field_{n}": "x" * 20 for n in range(20)}  # about a real record's size
            await images.put(record)
            for _ in range(10):
                await queue.send(json.dumps({"Records": []}))

            async def receive_and_return() -> None:
                messages = await queue.receive(10, 0)
                await queue.delete_batch([(str(i), m.receipt_handle) for i, m in enumerate(messages)])
                for _ in messages:
                    await queue.send(json.dumps({"Records": []}))

            calls: dict[str, Callable[[], Awaitable[Any]]] = {
                "get original + read": lambda: storage.read(source, "bench/original", 1 << 30),
                "sha-256 of the original": lambda: asyncio.to_thread(hashlib.sha256, original),
                "get record": lambda: images.get({"user_id": "bench", "image_id": "one"}),
                "get note": lambda: images.get({"user_id": "bench", "image_id": "#sha"}),
                "put rendition": lambda: storage.put(dest, "bench/one/256.jpg", rendition, "image/jpeg"),
                "put record": lambda: images.put(record),
                "put note": lambda: images.put({"user_id": "bench", "image_id": "#sha", "of": "one"}),
            }
            upload = os.urandom(95_000)
            users = backend.tables.users
            await users.put({"user_id": "bench", "bytes_used": 0, "image_count": 0})
            new_record = record | {"image_id": "two"}
            calls |= {
                "get record (the previous one)": lambda: images.get({"user_id": "bench", "image_id": "two"}),
                "get user (quotas, webhook)": lambda: users.get({"user_id": "bench"}),
                "put original 95 KB": lambda: storage.put(source, "bench/two", upload, "image/jpeg"),
                "transaction (record + usage)": lambda: images.transact(
                    [
                        PutItem(images, new_record),
                        UpdateItem(
                            users, {"user_id": "bench"}, [Add("bytes_used", 0), Add("image_count", 0)]
                        ),
                    ]
                ),
            }
            ms = {name: await per_call(fn, args.count) for name, fn in calls.items()}
            exchange = await per_call(receive_and_return, args.count // 4)  # receive + delete + 10 sends
            send = await per_call(lambda: queue.send(json.dumps({"Records": []})), args.count)
            ms["receive 10 messages"] = ms["delete 10 messages"] = (exchange - 10 * send) / 2
    finally:
        endpoint.terminate()
        await endpoint.wait()
    loop = sum(ms[name] * share for name, share in LOOP.items())
    moved = sum(ms[name] * share for name, share in WORKER_IO.items())
    api = sum(ms[name] * share for name, share in UPLOAD.items())
    return {
        "megapixels": args.megapixels,
        "original_bytes": len(original),
        "client_cpu_ms_per_call": {name: round(ms[name], 2) for name in JOB},
        "calls_per_job": JOB,
        "loop_calls_cpu_ms": round(loop, 2),
        "worker_io_cpu_ms": round(moved, 2),
        "worker_cpu_ms_per_image": round(worker_ms, 1),  # make_renditions here, the best of 5
        # The loop's least CPU per image against the worker's, with the worker doing the I/O
        # of the original (and before, when the loop did it), and the most the consumer can
        # reach of a raw pool that does no I/O, wherever the I/O runs.
        "floor_loop_vs_worker": round(loop / (worker_ms + moved), 3),
        "floor_loop_vs_worker_loop_doing_io": round((loop + moved) / worker_ms, 3),
        "bound_consumer_vs_raw_pool": round(worker_ms / (worker_ms + loop + moved), 3),
        "upload_client_cpu_ms_per_call": {name: round(ms[name], 2) for name in UPLOAD},
        "upload_calls_cpu_ms": round(api, 2),
        "floor_api_upload_vs_direct_put": round(api / ms["put original 95 KB"], 2),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--count", type=int, default=100, help="calls timed of each kind")
    print(json.dumps(runtime.run(main(parser.parse_args())), indent=2))
