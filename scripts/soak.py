"""Soak run: many uploads against the embedded stack while consumers are killed and restarted.

Starts `python -m web` (API + embedded AWS, no in-process consumer) and a `python -m pipeline
consumer` process, uploads a mixed set (valid images of several formats and sizes, plus corrupt
ones) with a concurrent client, kills or stops the consumer a few times along the way, drains with
a final burst consumer, then reconciles: every accepted upload must have exactly its renditions or
a DLQ entry with a reason. Exits 1 if anything is missing or duplicated.

    .venv/bin/python scripts/soak.py --uploads 2000 --concurrency 16 --restarts 4
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
from aiobotocore.session import get_session
from PIL import Image
from stack import ROOT, start_consumer, start_stack

USERS = [
    "eb2128f2-5c0a-4dd1-90a5-2f0e39db7aa3",
    "ebe7b1c9-951b-4f92-aa42-9d65c19a8fc5",
    "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e",
]


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def make_corpus(rng: random.Random) -> list[tuple[str, bytes, str]]:
    """(label, bytes, expected outcome: ready | failed)."""
    photo = Image.open(ROOT / "input" / "dog.jpg").convert("RGB")
    corpus = []
    for size in ((320, 240), (768, 576), (1600, 1200), (3000, 2000)):
        image = photo.resize(size)
        corpus.append((f"jpeg-{size[0]}", encode(image, "JPEG", quality=88), "ready"))
    corpus.append(("png-800", encode(photo.resize((800, 600)), "PNG"), "ready"))
    corpus.append(("webp-1024", encode(photo.resize((1024, 768)), "WEBP", quality=80), "ready"))
    frames = [photo.resize((300, 225)).rotate(a) for a in (0, 10, 20)]
    corpus.append(("gif-anim", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), "ready"))
    exif = photo.getexif()
    exif[0x0112] = 6
    corpus.append(("jpeg-rotated", encode(photo, "JPEG", exif=exif), "ready"))
    good = encode(photo, "JPEG", quality=90)
    corpus.append(("truncated-jpeg", good[: len(good) // 3], "failed"))
    png = bytearray(encode(photo.resize((640, 480)), "PNG"))
    at = png.index(b"IDAT") + 40
    png[at : at + 16] = bytes(rng.randrange(256) for _ in range(16))
    corpus.append(("flipped-png", bytes(png), "failed"))
    corpus.append(("gif-header-only", b"GIF89a" + b"\x00" * 30, "failed"))
    return corpus


@dataclass
class Upload:
    user_id: str
    image_id: str
    label: str
    expected: str
    status: int = 0


@dataclass
class Report:
    started: float = field(default_factory=time.monotonic)
    attempted: int = 0
    accepted: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    ready: int = 0
    failed_with_reason: int = 0
    failed_without_dlq: int = 0
    missing: int = 0
    unexpected: int = 0
    duplicate_renditions: int = 0
    duplicate_dead_letters: int = 0
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    consumer_restarts: Counter[str] = field(default_factory=Counter)


async def upload_all(
    api: str,
    corpus: list[tuple[str, bytes, str]],
    count: int,
    concurrency: int,
    rng: random.Random,
    report: Report,
) -> list[Upload]:
    uploads = [
        Upload(rng.choice(USERS), f"soak{i:05d}", label, expected)
        for i, (label, _, expected) in enumerate(rng.choice(corpus) for _ in range(count))
    ]
    data = {label: blob for label, blob, _ in corpus}
    queue: asyncio.Queue[Upload] = asyncio.Queue()
    for upload in uploads:
        queue.put_nowait(upload)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            upload = queue.get_nowait()
            report.attempted += 1
            url = f"{api}/images/{upload.image_id}?user_id={upload.user_id}"
            for attempt in range(5):  # a 503 means "try again": a real client would
                async with session.put(url, data=data[upload.label]) as response:
                    upload.status = response.status
                    await response.read()
                if response.status != 503:
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
            if upload.status == 202:
                report.accepted += 1
            else:
                report.refused[upload.status] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return uploads


#: Soak consumers: short polls and leases, so killed consumers' messages come back quickly.
CONSUMER_ENV = {
    "IMGSVC_CONSUMER_WAIT_TIME_SECONDS": "2",
    "IMGSVC_CONSUMER_VISIBILITY_TIMEOUT": "10",
    "IMGSVC_CONSUMER_BACKOFF_BASE": "1",
}


async def chaos(endpoint: str, restarts: int, interval: float, report: Report, stop: asyncio.Event) -> None:
    """Keep one consumer running; `restarts` times, `interval` seconds apart, kill it (SIGKILL and
    SIGTERM in turn) and start a new one; stop the last one once `stop` is set."""
    consumer = await start_consumer(endpoint, **CONSUMER_ENV)
    for done in range(restarts):
        await asyncio.sleep(interval)
        how = "SIGKILL" if done % 2 == 0 else "SIGTERM"
        consumer.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGTERM)
        await consumer.wait()
        report.consumer_restarts[how] += 1
        consumer = await start_consumer(endpoint, **CONSUMER_ENV)
    await stop.wait()
    consumer.send_signal(signal.SIGTERM)
    await consumer.wait()


async def reconcile(endpoint: str, uploads: list[Upload], renditions: set[str], report: Report) -> None:
    """Every accepted upload: its renditions and status exactly, or a DLQ entry with a reason."""
    kwargs: dict[str, Any] = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    async with (
        get_session().create_client("s3", **kwargs) as s3,
        get_session().create_client("sqs", **kwargs) as sqs,
    ):
        objects: dict[str, list[str]] = {}
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket="image-service-thumbnails"):
            for item in page.get("Contents", []):
                source, _, name = item["Key"].rpartition("/")
                objects.setdefault(source, []).append(name)
        dlq_url = (await sqs.get_queue_url(QueueName="image-service-dlq"))["QueueUrl"]
        dead: Counter[str] = Counter()
        while True:
            got = await sqs.receive_message(
                QueueUrl=dlq_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=600,
                MessageAttributeNames=["All"],
                WaitTimeSeconds=1,
            )
            if not got.get("Messages"):
                break
            for message in got["Messages"]:
                code = message.get("MessageAttributes", {}).get("error_code", {}).get("StringValue", "none")
                for record in json.loads(message["Body"]).get("Records", []):
                    dead[unquote_plus(record["s3"]["object"]["key"])] += 1
                    report.dead_letter_reasons[code] += 1
        for upload in uploads:
            if upload.status != 202:
                continue
            key = f"{upload.user_id}/{upload.image_id}"
            names = objects.get(key, [])
            document = None
            if "status.json" in names:
                body = await (
                    await s3.get_object(Bucket="image-service-thumbnails", Key=f"{key}/status.json")
                )["Body"].read()
                document = json.loads(body)
            state = document["state"] if document else None
            if len(names) != len(set(names)) or (
                state == "ready" and set(names) != renditions | {"status.json"}
            ):
                report.duplicate_renditions += 1
            if dead[key] > 1:
                report.duplicate_dead_letters += 1
            if state == "ready" and not dead[key]:
                report.ready += 1
            elif state == "failed" and dead[key]:
                report.failed_with_reason += 1
            elif state == "failed":
                report.failed_without_dlq += 1
            else:
                report.missing += 1
            if state is not None and state != upload.expected:
                report.unexpected += 1


async def main(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    corpus = make_corpus(rng)
    report = Report()
    stack = await start_stack()
    stop = asyncio.Event()
    try:
        chaos_task = asyncio.create_task(
            chaos(stack.endpoint, args.restarts, args.restart_every, report, stop)
        )
        uploads = await upload_all(stack.api, corpus, args.uploads, args.concurrency, rng, report)
        upload_seconds = time.monotonic() - report.started
        stop.set()
        await chaos_task  # the restarts all happen, some while the backlog is worked off
        final = await start_consumer(stack.endpoint, burst=True, **CONSUMER_ENV)
        await asyncio.wait_for(final.wait(), args.drain_timeout)
        await reconcile(stack.endpoint, uploads, {"256.jpg"}, report)
    finally:
        await stack.stop()
    result = {
        "uploads_attempted": report.attempted,
        "accepted": report.accepted,
        "refused_by_status": dict(report.refused),
        "ready": report.ready,
        "failed_with_dlq_reason": report.failed_with_reason,
        "failed_without_dlq_entry": report.failed_without_dlq,
        "missing": report.missing,
        "duplicate_renditions": report.duplicate_renditions,
        "duplicate_dlq_entries": report.duplicate_dead_letters,
        "outcome_differs_from_expected": report.unexpected,
        "dlq_reasons": dict(report.dead_letter_reasons),
        "consumer_restarts": dict(report.consumer_restarts),
        "upload_seconds": round(upload_seconds, 1),
        "total_seconds": round(time.monotonic() - report.started, 1),
    }
    print(json.dumps(result, indent=2))
    bad = report.missing + report.duplicate_renditions + report.failed_without_dlq + report.unexpected
    return 1 if bad or report.accepted == 0 else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uploads", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--restarts", type=int, default=4, help="consumer kills/stops during the run")
    parser.add_argument("--restart-every", type=float, default=8.0, help="seconds between restarts")
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="seconds the final drain may take")
    parser.add_argument("--seed", type=int, default=1)
    sys.exit(asyncio.run(main(parser.parse_args())))
