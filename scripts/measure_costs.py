"""Measure what one image costs the service, by format and size, for the capacity model.

For each workload (a format and a size) it starts fresh processes on 127.0.0.1: the embedded AWS
endpoint, the API and one consumer (one imaging worker, one decoder thread), the API and the
consumer each behind a counting proxy (`awsproxy.py`), so every S3 and SQS request and every body
byte is attributed to the part of the service that made it. It then uploads N images through the
API, waits until the consumer has made them all, downloads each thumbnail once, and divides:

- requests and bytes per image, by phase (upload, processing, one thumbnail download);
- CPU milliseconds per image: imaging worker, consumer event loop, API per upload and per download;
- how long the consumer held each message (receive to done: what the visibility timeout covers);
- the imaging worker's peak resident memory (what a Lambda function's memory must hold).

The result (JSON) is what `scripts/capacity.py` turns into fleet sizes, request rates and prices.

    .venv/bin/python scripts/measure_costs.py --images 24 --out docs/capacity-costs.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import statistics
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from awsproxy import FaultProxy
from bench_consumer import photo_jpeg
from bench_scaling import reencode
from proccpu import CpuSampler, cpu_of
from stack import bearer, child_env, free_port, start, start_consumer, start_endpoint

from config.settings import SEED_USER_IDS, Settings

USER = SEED_USER_IDS[0]
#: label: (format, megapixels)
WORKLOADS = {
    "jpeg-2mp": ("jpeg", 2.0),
    "jpeg-12mp": ("jpeg", 12.0),
    "jpeg-24mp": ("jpeg", 24.0),
    "png-4mp": ("png", 4.0),
    "webp-12mp": ("webp", 12.0),
    "avif-12mp": ("avif", 12.0),
}
SQS_OPERATIONS = {
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
    "SendMessage",
    "GetQueueUrl",
    "GetQueueAttributes",
}
PROCESSED = re.compile(rb"message processed .* outcome=ready .* duration_ms=([0-9.]+)")


def service_of(operation: str) -> str:
    if operation.startswith("dynamodb:"):
        return operation
    return f"sqs:{operation}" if operation in SQS_OPERATIONS else f"s3:{operation}"


class Meter:
    """What a proxy saw between two points, per image."""

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy
        self._seen, self._received, self._sent = Counter[str](), Counter[str](), Counter[str]()
        self.mark()

    def mark(self) -> None:
        self._seen = self._proxy.seen.copy()
        self._received = self._proxy.received.copy()
        self._sent = self._proxy.sent.copy()

    def per_image(self, images: int) -> dict[str, Any]:
        seen = self._proxy.seen - self._seen
        received = sum((self._proxy.received - self._received).values())
        sent = sum((self._proxy.sent - self._sent).values())
        self.mark()
        return {
            "requests": {service_of(op): round(n / images, 3) for op, n in sorted(seen.items())},
            "bytes_to_aws": round(received / images),
            "bytes_from_aws": round(sent / images),
        }


@dataclass
class Services:
    """The processes of one measurement, each AWS client behind a counting proxy of its own."""

    api_url: str
    api_pid: int
    consumer_pid: int
    api_proxy: FaultProxy
    consumer_proxy: FaultProxy
    key: str
    held_ms: list[float] = field(default_factory=list)  # per message the consumer finished


@asynccontextmanager
async def services() -> AsyncIterator[Services]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    aws, keys = await start_endpoint(port)
    api_proxy, consumer_proxy = FaultProxy(endpoint), FaultProxy(endpoint)
    await api_proxy.start()
    await consumer_proxy.start()
    api_port = free_port()
    api = await start(
        ["-m", "web", "--port", str(api_port)],
        # Every request reads its key (no key cache): the worst case, and whole numbers to compare.
        # Readiness is worked out once, at start: a later round (every 2 s by default) would fall
        # into whichever phase was under way, in a slow run (docs/capacity.md gives it its own line).
        child_env(
            api_proxy.url,
            IMGSVC_MAX_BYTES=str(512 * 1024 * 1024),
            IMGSVC_KEY_CACHE_SECONDS="0",
            IMGSVC_READINESS_SECONDS="3600",
        ),
        rb"API listening",
    )
    held: list[float] = []

    def on_log(line: bytes) -> None:
        if found := PROCESSED.search(line):
            held.append(float(found.group(1)))

    consumer = await start_consumer(
        consumer_proxy.url, log=on_log, IMGSVC_CONSUMER_WORKERS="1", IMGSVC_CONSUMER_WORKER_THREADS="1"
    )
    try:
        await asyncio.sleep(1.0)  # the consumer's start-up requests are not an image's
        yield Services(
            f"http://127.0.0.1:{api_port}", api.pid, consumer.pid, api_proxy, consumer_proxy, keys[USER], held
        )
    finally:
        for process in (consumer, api):
            process.terminate()
            await process.wait()
        await api_proxy.close()  # before the endpoint, so no forwarded long poll is cut off
        await consumer_proxy.close()
        aws.terminate()
        await aws.wait()


async def measure(label: str, count: int) -> dict[str, Any]:
    fmt, megapixels = WORKLOADS[label]
    # Every upload other bytes: the same bytes again by the same user are a duplicate, whose
    # renditions are copied, not made (`scripts/bench_duplicates.py` measures those).
    images = [reencode(photo_jpeg(megapixels, seed), fmt) for seed in range(count)]
    sampler = CpuSampler(interval=0.1)
    async with services() as svc, aiohttp.ClientSession(headers=bearer(svc.key)) as http:
        sampler.watch([svc.consumer_pid])
        api_meter, consumer_meter = Meter(svc.api_proxy), Meter(svc.consumer_proxy)
        sampler.sample()
        loop0, worker0, api0 = sampler.roots, sampler.children, cpu_of(svc.api_pid) or 0.0
        semaphore = asyncio.Semaphore(4)

        async def upload(i: int) -> None:
            async with semaphore:
                url = f"{svc.api_url}/images/{label}-{i}?user_id={USER}"
                async with http.put(url, data=images[i % len(images)]) as response:
                    assert response.status == 202, await response.text()

        await asyncio.gather(*(upload(i) for i in range(count)))
        api1 = cpu_of(svc.api_pid) or 0.0
        upload_cost = api_meter.per_image(count)
        async with asyncio.timeout(600):
            while len(svc.held_ms) < count:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the batched deletes of the last messages
        await sampler.stop()
        process_cost = consumer_meter.per_image(count)
        api_meter.mark()
        for i in range(count):
            url = f"{svc.api_url}/download/thumbnail?user_id={USER}&image_id={label}-{i}"
            async with http.get(url) as response:
                assert response.status == 200, await response.text()
                await response.read()
        api2 = cpu_of(svc.api_pid) or 0.0
        download_cost = api_meter.per_image(count)
    held = sorted(svc.held_ms)
    return {
        "format": fmt,
        "megapixels": megapixels,
        "images": count,
        "source_bytes": round(statistics.mean(len(images[i % len(images)]) for i in range(count))),
        "cpu_ms": {
            "worker": round((sampler.children - worker0) / count * 1000, 1),
            "consumer_loop": round((sampler.roots - loop0) / count * 1000, 1),
            "api_upload": round((api1 - api0) / count * 1000, 1),
            "api_thumbnail_download": round((api2 - api1) / count * 1000, 1),
        },
        "hold_ms": {
            "p50": round(held[len(held) // 2], 1),
            "p95": round(held[min(len(held) - 1, int(len(held) * 0.95))], 1),
        },
        "worker_peak_rss_mb": round(sampler.children_peak_rss_mb, 1),
        "upload": upload_cost,
        "process": process_cost,
        "thumbnail_download": download_cost,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env({})
    workloads = {}
    for label in args.workloads:
        print(f"measuring {label} ({args.images} images)", file=sys.stderr)
        workloads[label] = await measure(label, args.images)
    return {
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "renditions": [spec.name for spec in settings.imaging.renditions],
        "consumer": {
            "batch_size": settings.consumer.batch_size,
            "visibility_timeout": settings.consumer.visibility_timeout,
        },
        "workloads": workloads,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=24, help="images per workload")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--out", type=Path, help="write the JSON here as well as to stdout")
    result = asyncio.run(main(parser.parse_args()))
    text = json.dumps(result, indent=2)
    print(text)
    if (out := parser.parse_args().out) is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
