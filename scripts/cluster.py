"""Many processes, one system: several web servers and consumers on one endpoint, under chaos.

Starts the embedded AWS endpoint on its own (`python -m web --embedded-only`), `--web` API
processes and `--consumers` consumer processes sharing it, exactly as they would share real S3 and
SQS. A concurrent client uploads a mixed set (valid images of several formats and sizes, plus
corrupt ones) round-robin through every web server, then replaces a share of those images with a
different upload through a *different* web server. Along the way consumers are killed (SIGKILL
and SIGTERM in turn) and restarted. A final burst consumer drains the queue, then everything is
reconciled against the buckets and the DLQ:

- every accepted upload has exactly one set of renditions and a `ready` record, or a `failed`
  record and a DLQ entry with a reason, and the outcome its latest upload calls for;
- the renditions, the record and the original agree (same source ETag): duplicates processed by
  two consumers or stale events never leave a result that disagrees with the current original.

Exits 1 if anything is missing, duplicated or disagrees.

    .venv/bin/python scripts/cluster.py --web 2 --consumers 3 --uploads 600 --restarts 6
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
from stack import ROOT, Stack, bearer, start_consumer, start_stack

from config.settings import AwsSettings
from pipeline.aws.tables import Tables
from pipeline.core.layout import ImageRef
from pipeline.core.records import RecordStore

AWS = AwsSettings()

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
    web: int
    status: int = 0


@dataclass
class Report:
    started: float = field(default_factory=time.monotonic)
    attempted: int = 0
    accepted: int = 0
    replaced: int = 0
    accepted_by_web: Counter[int] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    ready: int = 0
    ready_with_dlq_entry: int = 0
    failed_with_reason: int = 0
    failed_without_dlq: int = 0
    missing: int = 0
    unexpected: int = 0
    duplicate_renditions: int = 0
    disagreeing: int = 0
    stale_renditions_after_failure: int = 0
    duplicate_dead_letters: int = 0
    dead_letter_reasons: Counter[str] = field(default_factory=Counter)
    consumer_restarts: Counter[str] = field(default_factory=Counter)


async def send_all(
    stack: Stack, data: dict[str, bytes], uploads: list[Upload], concurrency: int, report: Report
) -> None:
    """PUT every upload through the web server it names, `concurrency` at a time."""
    queue: asyncio.Queue[Upload] = asyncio.Queue()
    for upload in uploads:
        queue.put_nowait(upload)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            upload = queue.get_nowait()
            report.attempted += 1
            url = f"{stack.apis[upload.web]}/images/{upload.image_id}"
            headers = bearer(stack.keys[upload.user_id])  # the key names the user
            # A 503 (busy) and a 429 (more than IMGSVC_USER_MAX_UPLOADS of the user's uploads in
            # progress on that process: 16 senders and five users get there now and then) mean
            # "try again": a real client would.
            for attempt in range(5):
                async with session.put(url, data=data[upload.label], headers=headers) as response:
                    upload.status = response.status
                    answer = await response.read()
                if response.status not in (429, 503):
                    break
                await asyncio.sleep(0.2 * (attempt + 1))
            if upload.status == 202:
                report.accepted += 1
                report.accepted_by_web[upload.web] += 1
            else:  # by status and error code, so a refusal says what it was
                try:
                    code = json.loads(answer).get("error", "?")
                except (ValueError, AttributeError):
                    code = "?"
                report.refused[f"{upload.status} {code}"] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


async def upload_all(
    stack: Stack,
    corpus: list[tuple[str, bytes, str]],
    count: int,
    replace: float,
    concurrency: int,
    rng: random.Random,
    report: Report,
) -> dict[tuple[str, str], Upload]:
    """Upload `count` images round-robin over the web servers, then replace a `replace` share of
    them with different content through another web server. Returns the latest upload per image."""
    data = {label: blob for label, blob, _ in corpus}
    first = [
        Upload(rng.choice(USERS), f"img{i:05d}", label, expected, i % len(stack.apis))
        for i, (label, _, expected) in enumerate(rng.choice(corpus) for _ in range(count))
    ]
    await send_all(stack, data, first, concurrency, report)
    latest = {(u.user_id, u.image_id): u for u in first if u.status == 202}
    second = []
    for upload in rng.sample(list(latest.values()), int(len(latest) * replace)):
        label, _, expected = rng.choice([c for c in corpus if c[0] != upload.label])
        second.append(
            Upload(upload.user_id, upload.image_id, label, expected, (upload.web + 1) % len(stack.apis))
        )
    await send_all(stack, data, second, concurrency, report)
    for upload in second:
        if upload.status == 202:
            latest[upload.user_id, upload.image_id] = upload
            report.replaced += 1
    return latest


#: Chaos consumers: short polls and leases, so killed consumers' messages come back quickly.
CONSUMER_ENV = {
    "IMGSVC_CONSUMER_WAIT_TIME_SECONDS": "2",
    "IMGSVC_CONSUMER_VISIBILITY_TIMEOUT": "10",
    "IMGSVC_CONSUMER_BACKOFF_BASE": "1",
}


async def chaos(
    endpoint: str, consumers: int, restarts: int, interval: float, report: Report, stop: asyncio.Event
) -> None:
    """Keep `consumers` consumer processes running; `restarts` times, `interval` seconds apart,
    kill one of them (in turn; SIGKILL and SIGTERM alternately) and start a replacement; stop them
    all once `stop` is set."""
    fleet = [await start_consumer(endpoint, **CONSUMER_ENV) for _ in range(consumers)]
    for done in range(restarts):
        await asyncio.sleep(interval)
        how = signal.SIGKILL if done % 2 == 0 else signal.SIGTERM
        victim = done % consumers
        fleet[victim].send_signal(how)
        await fleet[victim].wait()
        report.consumer_restarts[how.name] += 1
        fleet[victim] = await start_consumer(endpoint, **CONSUMER_ENV)
    await stop.wait()
    for consumer in fleet:
        consumer.send_signal(signal.SIGTERM)
    for consumer in fleet:
        await consumer.wait()


async def dead_letters(sqs: Any, report: Report) -> Counter[tuple[str, str]]:
    """DLQ entries by (source key, ETag of the upload whose event it is)."""
    dlq_url = (await sqs.get_queue_url(QueueName=AWS.dlq_name))["QueueUrl"]
    dead: Counter[tuple[str, str]] = Counter()
    while True:
        got = await sqs.receive_message(
            QueueUrl=dlq_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=600,
            MessageAttributeNames=["All"],
            WaitTimeSeconds=1,
        )
        if not got.get("Messages"):
            return dead
        for message in got["Messages"]:
            code = message.get("MessageAttributes", {}).get("error_code", {}).get("StringValue", "none")
            for record in json.loads(message["Body"]).get("Records", []):
                obj = record["s3"]["object"]
                dead[unquote_plus(obj["key"]), obj.get("eTag", "")] += 1
                report.dead_letter_reasons[code] += 1


async def reconcile(
    endpoint: str, latest: dict[tuple[str, str], Upload], renditions: set[str], report: Report
) -> None:
    """Every accepted image: its renditions and status, all naming the current original, or a
    `failed` status and a DLQ entry with a reason."""
    kwargs: dict[str, Any] = {
        "endpoint_url": endpoint,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    dest = AWS.dest_bucket
    async with (
        get_session().create_client("s3", **kwargs) as s3,
        get_session().create_client("sqs", **kwargs) as sqs,
        get_session().create_client("dynamodb", **kwargs) as dynamodb,
    ):
        records = RecordStore(Tables(dynamodb, AWS).images)
        objects: dict[str, list[str]] = {}
        async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=dest):
            for item in page.get("Contents", []):
                source, _, name = item["Key"].rpartition("/")
                objects.setdefault(source, []).append(name)
        dead = await dead_letters(sqs, report)
        report.duplicate_dead_letters = sum(1 for n in dead.values() if n > 1)
        for upload in latest.values():
            key = f"{upload.user_id}/{upload.image_id}"
            etag = (await s3.head_object(Bucket=AWS.source_bucket, Key=key))["ETag"].strip('"')
            names = objects.get(key, [])
            record = await records.read(ImageRef(key))
            current = record is not None and record.source_etag.strip('"') == etag
            state = record.state if current and record and record.state != "pending" else None
            if len(names) != len(set(names)):
                report.duplicate_renditions += 1
            if state == "ready":
                report.ready += 1
                report.ready_with_dlq_entry += bool(dead[key, etag])
                if set(names) != renditions:
                    report.duplicate_renditions += 1
                for name in renditions:  # each rendition was made from the current original
                    head = await s3.head_object(Bucket=dest, Key=f"{key}/{name}")
                    if head["Metadata"].get("source-etag") != etag:
                        report.disagreeing += 1
            elif state == "failed":
                if dead[key, etag]:
                    report.failed_with_reason += 1
                else:
                    report.failed_without_dlq += 1
                report.stale_renditions_after_failure += bool(names)
            else:
                report.missing += 1
            if state is not None and state != upload.expected:
                report.unexpected += 1


async def main(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    corpus = make_corpus(rng)
    report = Report()
    stack = await start_stack(webs=args.web)
    stop = asyncio.Event()
    try:
        chaos_task = asyncio.create_task(
            chaos(stack.endpoint, args.consumers, args.restarts, args.restart_every, report, stop)
        )
        latest = await upload_all(stack, corpus, args.uploads, args.replace, args.concurrency, rng, report)
        upload_seconds = time.monotonic() - report.started
        stop.set()
        await chaos_task  # the restarts all happen, some while the backlog is worked off
        final = await start_consumer(stack.endpoint, burst=True, **CONSUMER_ENV)
        await asyncio.wait_for(final.wait(), args.drain_timeout)
        await reconcile(stack.endpoint, latest, {"256.jpg"}, report)
    finally:
        await stack.stop()
    result = {
        "web_processes": args.web,
        "consumer_processes": args.consumers,
        "uploads_attempted": report.attempted,
        "accepted": report.accepted,
        "accepted_by_web": {str(k): v for k, v in sorted(report.accepted_by_web.items())},
        "replaced": report.replaced,
        "images": len(latest),
        "refused_by_status": dict(report.refused),
        "ready": report.ready,
        "ready_with_dlq_entry": report.ready_with_dlq_entry,
        "failed_with_dlq_reason": report.failed_with_reason,
        "failed_without_dlq_entry": report.failed_without_dlq,
        "missing": report.missing,
        "duplicate_renditions": report.duplicate_renditions,
        "renditions_disagreeing_with_original": report.disagreeing,
        "stale_renditions_after_failure": report.stale_renditions_after_failure,
        "duplicate_dlq_entries": report.duplicate_dead_letters,
        "outcome_differs_from_expected": report.unexpected,
        "dlq_reasons": dict(report.dead_letter_reasons),
        "consumer_restarts": dict(report.consumer_restarts),
        "upload_seconds": round(upload_seconds, 1),
        "total_seconds": round(time.monotonic() - report.started, 1),
    }
    print(json.dumps(result, indent=2))
    bad = (
        report.missing
        + report.duplicate_renditions
        + report.disagreeing
        + report.failed_without_dlq
        + report.unexpected
        + report.stale_renditions_after_failure
    )
    return 1 if bad or report.accepted == 0 else 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--web", type=int, default=2, help="API processes")
    parser.add_argument("--consumers", type=int, default=3, help="consumer processes")
    parser.add_argument("--uploads", type=int, default=2000)
    parser.add_argument("--replace", type=float, default=0.1, help="share of images uploaded again")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--restarts", type=int, default=4, help="consumer kills/stops during the run")
    parser.add_argument("--restart-every", type=float, default=8.0, help="seconds between restarts")
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="seconds the final drain may take")
    parser.add_argument("--seed", type=int, default=1)
    return parser


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parser().parse_args())))
