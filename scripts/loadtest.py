"""Concurrent load test of the HTTP API, with direct S3 as the baseline measured in the same run.

By default it starts its own stack on 127.0.0.1 (`python -m web` with its embedded AWS endpoint,
and a `python -m pipeline consumer` process when thumbnails are wanted), then for each image
size in the mix:

1. direct S3 (aiobotocore) put and get of the same bytes, same concurrency: the baseline;
2. API uploads (`PUT /images/{id}`), presigned uploads (`POST /images/upload-url`, then the
   bytes straight to the S3 URL it answers) and API downloads (`GET /download/image`);
3. with the consumer running: time-to-thumbnail (upload → ready) under load and, one at a time,
   when idle, and thumbnail downloads.

It reports throughput, p50/p95/p99 latencies and error counts by status; `--json` for machines.
When it started the stack itself it also reports the CPU each request cost each process (the
endpoint, the API, this client), read from /proc around every phase: on one machine the
endpoint's share decides the ratios, and this says how much of it the API's own calls caused.

    .venv/bin/python scripts/loadtest.py --count 200 --concurrency 16 --mix 100k,4m
    .venv/bin/python scripts/loadtest.py --url http://127.0.0.1:8080 --s3-endpoint http://127.0.0.1:4566
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiobotocore.session import get_session
from PIL import Image
from proccpu import tree_cpu
from stack import ROOT, bearer, start_consumer, start_stack
from tqdm import tqdm

from config.settings import SEED_USER_IDS, ImagingSettings
from pipeline.core.demo import read_demo_keys
from pipeline.imaging.renditions import make_renditions

USER = SEED_USER_IDS[2]
SIZES = {"100k": 100_000, "1m": 1_000_000, "4m": 4_000_000}


def image_of_size(target: int) -> bytes:
    """A photo-like JPEG close to `target` bytes (noise makes JPEG size predictable)."""
    width = 320
    while True:
        height = width * 2 // 3
        base = Image.open(ROOT / "input" / "dog.jpg").convert("RGB").resize((width, height))
        data = io.BytesIO()
        Image.blend(base, Image.effect_noise((width, height), 40).convert("RGB"), 0.3).save(
            data, "JPEG", quality=92
        )
        if data.tell() >= target * 0.9:
            return data.getvalue()
        width = int(width * max(1.1, (target / data.tell()) ** 0.5))


@dataclass
class Phase:
    """Latencies and outcomes of one kind of request."""

    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    seconds: float = 0.0
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # process name -> CPU in the phase

    def summary(self) -> dict[str, Any]:
        ok = len(self.latencies)
        out: dict[str, Any] = {"requests": ok + sum(v for k, v in self.statuses.items() if k != "ok")}
        if self.seconds:
            out["per_s"] = round(ok / self.seconds, 1)
            out["mb_per_s"] = round(self.bytes / self.seconds / 1e6, 1)
        if ok:
            ordered = sorted(self.latencies)
            for p in (50, 95, 99):
                out[f"p{p}_ms"] = round(ordered[min(ok - 1, int(ok * p / 100))] * 1000, 1)
        errors = {k: v for k, v in self.statuses.items() if k != "ok"}
        if errors:
            out["errors"] = errors
        if self.cpu_seconds and ok:
            out["cpu_ms_per_request"] = {k: round(v / ok * 1000, 2) for k, v in self.cpu_seconds.items()}
        return out


#: Processes whose CPU each phase reads: name -> pid (filled when this script starts the stack).
WATCHED: dict[str, int] = {}


def _cpu_now() -> dict[str, float]:
    found = {name: tree_cpu(pid) for name, pid in WATCHED.items()}
    return {"client": time.process_time(), **{k: v for k, v in found.items() if v is not None}}


async def run_phase(
    phase: Phase, count: int, concurrency: int, one: Callable[[int], Awaitable[int]], quiet: bool
) -> Phase:
    """Run `one(i)` for i < count with `concurrency` in flight; `one` returns the bytes moved."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    bar = tqdm(total=count, desc=phase.name, disable=quiet, leave=False, file=sys.stderr)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            try:
                moved = await one(i)
                phase.bytes += moved
                phase.latencies.append(time.perf_counter() - started)
                phase.statuses["ok"] += 1
            except _Status as exc:
                phase.statuses[str(exc.status)] += 1
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                phase.statuses[type(exc).__name__] += 1
            bar.update()

    started, cpu_before = time.perf_counter(), _cpu_now()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    if WATCHED:
        cpu_after = _cpu_now()
        phase.cpu_seconds = {k: cpu_after[k] - v for k, v in cpu_before.items() if k in cpu_after}
    bar.close()
    return phase


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _check(status: int, *ok: int) -> None:
    if status not in ok:
        raise _Status(status)


async def measure_size(
    label: str, data: bytes, args: argparse.Namespace, api: str, s3_endpoint: str
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:6]
    quiet = args.json
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    kwargs: dict[str, Any] = {
        "endpoint_url": s3_endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    from aiobotocore.config import AioConfig

    config = AioConfig(max_pool_connections=args.concurrency, s3={"addressing_style": "path"})
    async with (
        aiohttp.ClientSession(connector=connector, headers=bearer(args.key)) as http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency)) as storage,
        get_session().create_client("s3", config=config, **kwargs) as s3,
        get_session().create_client("sqs", **kwargs) as sqs,
    ):
        bucket, notifying = f"loadtest-{tag}", f"loadtest-{tag}-notifying"
        await s3.create_bucket(Bucket=bucket)
        # The product's source bucket tells SQS of every put; so does this one (a fairer baseline
        # for presigned uploads, whose PUT goes there: the notification is S3's work, not ours).
        await s3.create_bucket(Bucket=notifying)
        queue = await sqs.create_queue(QueueName=f"loadtest-{tag}")
        arn = (await sqs.get_queue_attributes(QueueUrl=queue["QueueUrl"], AttributeNames=["QueueArn"]))[
            "Attributes"
        ]["QueueArn"]
        await s3.put_bucket_notification_configuration(
            Bucket=notifying,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )

        async def s3_put(i: int) -> int:
            await s3.put_object(Bucket=bucket, Key=f"o/{i}", Body=data)
            return len(data)

        async def s3_put_notifying(i: int) -> int:
            await s3.put_object(Bucket=notifying, Key=f"o/{i}", Body=data)
            return len(data)

        async def s3_get(i: int) -> int:
            got = await s3.get_object(Bucket=bucket, Key=f"o/{i}")
            return len(await got["Body"].read())

        async def api_put(i: int) -> int:
            async with http.put(f"{api}/images/lt{tag}{i}?user_id={USER}", data=data) as response:
                await response.read()
                _check(response.status, 202)
            return len(data)

        async def api_get(i: int) -> int:
            async with http.get(f"{api}/download/image?user_id={USER}&image_id=lt{tag}{i}") as response:
                body = await response.read()
                _check(response.status, 200)
            return len(body)

        async def presigned_put(i: int) -> int:
            """`POST /images/upload-url`, then the bytes straight to its URL (no API key)."""
            ask = {"image_id": f"ps{tag}{i}", "content_length": len(data), "content_type": "image/jpeg"}
            async with http.post(f"{api}/images/upload-url?user_id={USER}", json=ask) as response:
                answer = await response.json()
                _check(response.status, 201)
            async with storage.put(answer["url"], data=data, headers=answer["headers"]) as response:
                await response.read()
                _check(response.status, 200)
            return len(data)

        n, c = args.count, args.concurrency
        direct_put = await run_phase(Phase(f"{label} s3 put"), n, c, s3_put, quiet)
        upload = await run_phase(Phase(f"{label} api upload"), n, c, api_put, quiet)
        notified_put = await run_phase(Phase(f"{label} s3 put, notifying"), n, c, s3_put_notifying, quiet)
        presigned = await run_phase(Phase(f"{label} presigned upload"), n, c, presigned_put, quiet)
        await sqs.delete_queue(QueueUrl=queue["QueueUrl"])
        direct_get = await run_phase(Phase(f"{label} s3 get"), n, c, s3_get, quiet)
        download = await run_phase(Phase(f"{label} api download"), n, c, api_get, quiet)
    return {
        "bytes": len(data),
        "s3_put": direct_put.summary(),
        "api_upload": upload.summary(),
        "s3_put_notifying": notified_put.summary(),
        "presigned_upload": presigned.summary(),
        "s3_get": direct_get.summary(),
        "api_download": download.summary(),
        "upload_vs_s3_put": round(upload.seconds and direct_put.seconds / upload.seconds, 3),
        "presigned_vs_s3_put": round(presigned.seconds and direct_put.seconds / presigned.seconds, 3),
        "presigned_vs_notifying_put": round(
            presigned.seconds and notified_put.seconds / presigned.seconds, 3
        ),
        "download_vs_s3_get": round(download.seconds and direct_get.seconds / download.seconds, 3),
    }


async def time_to_thumbnail(
    api: str, key: str, data: bytes, count: int, concurrency: int, quiet: bool
) -> dict[str, Any]:
    """Upload, then long-poll the status until ready, then download the thumbnail."""
    tag = uuid.uuid4().hex[:6]
    ttt = Phase("time to thumbnail")
    thumbs = Phase("thumbnail download")
    async with aiohttp.ClientSession(headers=bearer(key)) as http:

        async def one(i: int) -> int:
            image = f"tt{tag}{i}"
            started = time.perf_counter()
            async with http.put(f"{api}/images/{image}?user_id={USER}", data=data) as response:
                _check(response.status, 202)
            while True:
                async with http.get(f"{api}/images/{image}?user_id={USER}&wait=20") as response:
                    status = (await response.json())["status"]
                if status != "pending":
                    break
            _check(200 if status == "ready" else 422, 200)
            ttt.latencies.append(time.perf_counter() - started)
            fetched = time.perf_counter()
            async with http.get(f"{api}/download/thumbnail?user_id={USER}&image_id={image}") as response:
                body = await response.read()
                _check(response.status, 200)
            thumbs.latencies.append(time.perf_counter() - fetched)
            return len(body)

        phase = await run_phase(Phase("time to thumbnail"), count, concurrency, one, quiet)
    ttt.seconds = thumbs.seconds = phase.seconds
    ttt.cpu_seconds = phase.cpu_seconds  # upload, status polls and thumbnail GET together
    return {
        "time_to_thumbnail": ttt.summary(),
        "thumbnail_download": thumbs.summary(),
        "errors": dict(phase.statuses - Counter({"ok": phase.statuses["ok"]})),
    }


def processing_ms(data: bytes, runs: int = 7) -> float:
    """Median time of the imaging work alone for this image, in this process."""
    imaging = ImagingSettings()
    make_renditions(data, imaging)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        make_renditions(data, imaging)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def main(args: argparse.Namespace) -> dict[str, Any]:
    stack = None
    api, s3_endpoint = args.url, args.s3_endpoint
    if api is None:
        stack = await start_stack(
            pin=not args.no_pin,
            IMGSVC_MAX_BYTES=str(200 * 1024 * 1024),
            IMGSVC_UPLOAD_MODES="api,presigned",
            IMGSVC_EMBEDDED_TRUSTED="true",  # the benchmark's own endpoint, on loopback
            IMGSVC_USER_MAX_UPLOADS="0",  # one user sends everything, `--concurrency` at once
            IMGSVC_USER_UPLOAD_MEGAPIXELS_PER_SECOND="0",
            IMGSVC_MAX_CONNECTIONS_PER_CLIENT="0",  # every request comes from this one address
        )
        api, s3_endpoint = stack.api, stack.endpoint
        args.key = stack.keys[USER]
        WATCHED.update(endpoint=stack.processes[0].pid, api=stack.processes[1].pid)
    elif args.key is None:
        args.key = read_demo_keys(args.keys_file)[USER]
    assert s3_endpoint, "--s3-endpoint is required with --url"
    report: dict[str, Any] = {
        "concurrency": args.concurrency,
        "count": args.count,
        "cpus": {"mine": sorted(os.sched_getaffinity(0))},
        "sizes": {},
    }
    try:
        images = {label: image_of_size(SIZES[label]) for label in args.mix}
        for label, data in images.items():
            report["sizes"][label] = await measure_size(label, data, args, api, s3_endpoint)
        if not args.no_thumbnails:
            if stack is not None:
                stack.processes.append(await start_consumer(s3_endpoint))
            small = images[args.mix[0]]
            # Warm up, and drain what the upload phases queued (never more than is measured).
            await time_to_thumbnail(api, args.key, small, min(4, args.count), 1, True)
            report["thumbnails_under_load"] = await time_to_thumbnail(
                api, args.key, small, args.count, args.concurrency, args.json
            )
            report["idle"] = {
                **await time_to_thumbnail(api, args.key, small, args.idle_count, 1, args.json),
                "processing_ms": round(processing_ms(small), 1),
                "bytes": len(small),
            }
            idle = report["idle"]
            idle["p50_minus_processing_ms"] = round(
                idle["time_to_thumbnail"]["p50_ms"] - idle["processing_ms"], 1
            )
    finally:
        if stack is not None:
            await stack.stop()
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="API to test (default: start a stack on 127.0.0.1)")
    parser.add_argument("--s3-endpoint", help="S3 endpoint for the baseline (default: the started stack's)")
    parser.add_argument("--key", help="API key of the demo user (with --url; default: from --keys-file)")
    parser.add_argument(
        "--keys-file", type=Path, default=Path("demo-keys.json"), help="the demo keys a running stack wrote"
    )
    parser.add_argument("--count", type=int, default=100, help="requests per phase and size")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--mix", type=lambda s: s.split(","), default=["100k", "4m"], help="sizes: 100k,1m,4m"
    )
    parser.add_argument("--idle-count", type=int, default=15, help="one-at-a-time uploads for idle latency")
    parser.add_argument("--no-thumbnails", action="store_true", help="skip the time-to-thumbnail phases")
    parser.add_argument("--json", action="store_true", help="JSON only, no progress bars")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="let the started endpoint share every CPU (default: a CPU of its own, the rest for the others)",
    )
    result = asyncio.run(main(parser.parse_args()))
    print(json.dumps(result, indent=2))
