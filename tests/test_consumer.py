"""The consumer: outcomes, retries, the DLQ, and stopping safely. On the local backend, but for
what is AWS's own (S3's test event, a bucket deleted under the consumer, DynamoDB's refusals)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import zlib
from typing import Any

import pytest
from PIL import Image

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from pipeline.aws.tables import Tables
from pipeline.backends import open_backend
from pipeline.consumer.loop import backoff_seconds
from pipeline.core.accounts import Accounts
from pipeline.core.dlq import list_dead_letters, redrive
from pipeline.core.errors import InvalidRecord, PermanentError, StorageUnavailable
from pipeline.core.layout import ImageRef
from pipeline.core.ports import Backend
from pipeline.core.records import RecordStore
from tests.support.clients import ClientFactory
from tests.support.consumers import consumer_on, drain
from tests.support.faults import Failing
from tests.support.images import decode
from tests.support.settings import ROOT, USER
from tests.support.state import dead_lettered, object_in, state_in

DOG = (ROOT / "input" / "dog.jpg").read_bytes()
pytestmark = pytest.mark.backend("local")


async def put(clients: AwsClients, settings: Settings, key: str, data: bytes) -> None:
    await clients.s3.put_object(Bucket=settings.aws.source_bucket, Key=key, Body=data)


async def put_all(settings: Settings, objects: dict[str, bytes]) -> None:
    """Objects put straight into the source bucket (each queues its event), by a known user."""
    async with open_backend(settings) as ports:
        accounts = Accounts(ports.tables)
        for key, data in objects.items():
            await accounts.create_user(key.split("/", 1)[0])
            await ports.storage.put(settings.aws.source_bucket, key, data, "application/octet-stream")


async def queue_depth(settings: Settings) -> dict[str, int]:
    async with open_backend(settings) as ports:
        return await ports.main.depth()


async def test_good_images_become_renditions_and_messages_are_deleted(settings: Settings) -> None:
    await put_all(settings, {f"{USER}/dog{i}": DOG for i in range(5)})
    outcomes = await drain(settings)
    assert outcomes == {"ready": 5}
    for i in range(5):
        assert (await state_in(settings, f"{USER}/dog{i}"))["state"] == "ready"
        _, thumb = await object_in(settings, f"{USER}/dog{i}/256.jpg", settings.aws.dest_bucket)
        assert decode(thumb).size == (256, 192)
    assert await queue_depth(settings) == {"visible": 0, "in_flight": 0}
    assert await dead_lettered(settings) == []


async def test_corrupt_and_fake_images_go_to_dlq_at_once_with_reason(settings: Settings) -> None:
    await put_all(
        settings,
        {
            f"{USER}/corrupt": DOG[: len(DOG) // 3],
            f"{USER}/fake": b"I am a text file renamed to cat.jpg\n" * 10,
        },
    )
    outcomes = await drain(settings)
    assert outcomes["dead_lettered"] == 2 and "retry" not in outcomes
    letters = {m.attributes["error_code"]: m for m in await dead_lettered(settings)}
    assert set(letters) == {"corrupt_image", "not_an_image"}
    for message in letters.values():
        assert message.attributes["attempts"] == "1"  # permanent: no retries
        assert message.attributes["error_message"]
        assert json.loads(message.body)["Records"][0]["eventName"].startswith("ObjectCreated:")
    for key, code in ((f"{USER}/corrupt", "corrupt_image"), (f"{USER}/fake", "not_an_image")):
        status = await state_in(settings, key)
        assert status["state"] == "failed" and status["error"]["code"] == code


async def test_poison_and_other_events(settings: Settings) -> None:
    async with open_backend(settings) as queues:
        await queues.main.send("this is not json")
        await queues.main.send(
            json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectRemoved:Delete"}]})
        )
        await queues.main.send(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    outcomes = await drain(settings)
    assert outcomes == {"dead_lettered": 1, "ignored": 1, "test_event": 1}
    (letter,) = await dead_lettered(settings)
    assert letter.body == "this is not json"
    assert letter.attributes["error_code"] == "poison_message"


async def test_source_deleted_before_processing_is_acknowledged(settings: Settings) -> None:
    await put_all(settings, {f"{USER}/gone": DOG})
    async with open_backend(settings) as ports:
        await ports.storage.delete_many(settings.aws.source_bucket, [f"{USER}/gone"])
    outcomes = await drain(settings)
    assert outcomes == {"source_missing": 1}
    assert await dead_lettered(settings) == []


def failing_puts() -> Failing:
    """What a job writes its renditions with fails (as if the bucket were gone) until cleared."""
    return Failing({"put"}, lambda: StorageUnavailable("dest bucket: NoSuchBucket (injected)"))


async def test_transient_failure_is_retried_then_succeeds(settings: Settings) -> None:
    await put_all(settings, {f"{USER}/later": DOG})
    fault = failing_puts()
    async with consumer_on(settings, burst=False, wrap=fault.storage_of) as consumer:
        task = asyncio.create_task(consumer.run())
        async with asyncio.timeout(20):
            while consumer.stats.outcomes["retry"] < 1:
                await asyncio.sleep(0.1)
        fault.failing = False  # the operator fixes it
        async with asyncio.timeout(20):
            while consumer.stats.outcomes["ready"] < 1:
                await asyncio.sleep(0.1)
        consumer.stop()
        await task
    assert fault.calls >= 1
    assert (await state_in(settings, f"{USER}/later"))["state"] == "ready"
    assert await dead_lettered(settings) == []


async def test_always_failing_message_reaches_dlq_after_exactly_max_attempts(settings: Settings) -> None:
    assert settings.consumer.max_attempts == 3
    await put_all(settings, {f"{USER}/never": DOG})
    fault = failing_puts()
    outcomes = await drain(settings, timeout=40, wrap=fault.storage_of)
    assert outcomes == {"retry": 2, "dead_lettered": 1}
    (letter,) = await dead_lettered(settings)
    assert letter.attributes["error_code"] == "storage_unavailable"
    assert letter.attributes["attempts"] == "3"
    assert "NoSuchBucket" in letter.attributes["error_message"]
    # The original is untouched, ready to be redriven once the bucket is back.
    meta, data = await object_in(settings, f"{USER}/never")
    assert meta.size == len(data) == len(DOG)


@pytest.mark.slow
async def test_consumer_stopped_mid_batch_loses_nothing(make_settings: Any) -> None:
    settings: Settings = make_settings(
        IMGSVC_CONSUMER_DRAIN_TIMEOUT="0", IMGSVC_CONSUMER_VISIBILITY_TIMEOUT="30"
    )
    big = io.BytesIO()
    Image.frombytes("RGB", (2400, 1800), os.urandom(2400 * 1800 * 3)).save(big, "JPEG", quality=95)
    keys = [f"{USER}/batch{i}" for i in range(8)]
    await put_all(settings, dict.fromkeys(keys, big.getvalue()))

    async with consumer_on(settings, burst=False) as consumer:
        task = asyncio.create_task(consumer.run())
        async with asyncio.timeout(20):
            # Some done, some still in flight: stopping must release those, not lose them.
            while consumer.stats.outcomes["ready"] < 1 or consumer.in_flight < 2:
                await asyncio.sleep(0.01)
        consumer.stop()  # drain timeout 0: whatever is in flight is released at once
        first = await task
    assert first.outcomes["released"] >= 1, first.outcomes
    done_first = first.outcomes["ready"]

    # Released messages are visible again at once, not after the 30 s visibility timeout.
    outcomes = await drain(settings, timeout=60)
    assert done_first + outcomes.get("ready", 0) >= len(keys)
    for key in keys:
        assert (await state_in(settings, key))["state"] == "ready"
    assert await dead_lettered(settings) == []


async def test_dlq_list_redrive_purge(settings: Settings) -> None:
    await put_all(
        settings,
        {f"{USER}/bad1": b"not an image at all, no magic" * 3, f"{USER}/bad2": b"GIF89a but nothing else"},
    )
    await drain(settings)
    async with open_backend(settings) as queues:
        await dlq_round_trip(settings, queues)


async def dlq_round_trip(settings: Settings, queues: Backend) -> None:

    letters = await list_dead_letters(queues.dlq, peek_seconds=1)
    assert sorted(k for letter in letters for k in letter.keys) == [f"{USER}/bad1", f"{USER}/bad2"]
    assert {letter.error_code for letter in letters} == {"not_an_image", "corrupt_image"}
    await asyncio.sleep(1.1)  # let the peeked messages become visible again

    moved = await redrive(queues.dlq, queues.main)
    assert moved == 2
    assert await queue_depth(settings) == {"visible": 2, "in_flight": 0}
    assert await dead_lettered(settings) == []

    # They fail again (still not images) and come back to the DLQ exactly once each.
    await drain(settings)
    assert len(await dead_lettered(settings)) == 2
    await asyncio.sleep(1.1)
    await queues.dlq.purge()
    assert await dead_lettered(settings) == []


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    import random

    rng = random.Random(7)
    delays = [backoff_seconds(n, base=2, cap=60, rng=rng) for n in range(1, 10)]
    for attempt, delay in enumerate(delays, start=1):
        full = min(60, 2 * 2 ** (attempt - 1))
        assert full / 2 <= delay <= full + 1
    assert backoff_seconds(50, base=2, cap=60) <= 60


@pytest.mark.slow
async def test_heartbeat_keeps_waiting_jobs_invisible(make_settings: Any) -> None:
    """With one worker, the last jobs wait far longer than the 2 s visibility timeout; the
    heartbeat must keep their messages hidden, so nothing is delivered (or processed) twice.
    (At 1 s, a heartbeat delayed by a loaded machine let a lease lapse now and then.)"""
    settings: Settings = make_settings(
        IMGSVC_CONSUMER_VISIBILITY_TIMEOUT="2",
        IMGSVC_CONSUMER_WORKERS="1",
        IMGSVC_CONSUMER_MAX_IN_FLIGHT="20",
    )
    out = io.BytesIO()  # tiny to store, slow to decode: PNG has no shrink-on-load
    Image.new("RGB", (6000, 6000), (10, 120, 200)).save(out, "PNG")
    count = 20
    await put_all(settings, {f"{USER}/slow{i}": out.getvalue() for i in range(count)})
    async with consumer_on(settings) as consumer:
        async with asyncio.timeout(90):
            stats = await consumer.run()
    assert stats.heartbeats > 0  # the jobs did outlive their lease
    assert stats.outcomes["ready"] == count
    assert stats.received == count  # no redelivery
    assert await dead_lettered(settings) == []


async def test_in_flight_bound_holds_across_receivers(make_settings: Any) -> None:
    settings: Settings = make_settings(
        IMGSVC_CONSUMER_MAX_IN_FLIGHT="3", IMGSVC_CONSUMER_RECEIVERS="3", IMGSVC_CONSUMER_BATCH_SIZE="10"
    )
    await put_all(settings, {f"{USER}/bound{i}": DOG for i in range(12)})
    peak = 0
    async with consumer_on(settings, burst=False) as consumer:
        task = asyncio.create_task(consumer.run())
        async with asyncio.timeout(60):
            while consumer.stats.outcomes["ready"] < 12:
                peak = max(peak, consumer.in_flight)
                await asyncio.sleep(0.005)
        consumer.stop()
        await task
    assert 1 <= peak <= 3


def slow_png(side: int) -> bytes:
    """A 16-bit RGB PNG of noise under Paeth filters: little to store, ~1 s to decode at 8960²."""
    row = b"\x04" + os.urandom(64) * (side * 6 // 64)
    raw = zlib.compress(row * side, 1)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.slow
async def test_one_slow_image_never_hurts_the_others(make_settings: Any, make_client: ClientFactory) -> None:
    """One image that takes longer than the job timeout among eight that do not, on two workers:
    the timeout starts when each job starts and kills only the slow job's worker, so all eight are
    ready on their first attempt; the slow one times out twice and is dead-lettered with
    `processing_timeout` (a repeat timeout of the same original is the image, not the machine)."""
    settings: Settings = make_settings(
        IMGSVC_CONSUMER_WORKERS="2",
        # A normal image takes ~0.05 s here (0.3 s on a loaded CI machine), the slow one 1 to
        # 2.4 s: the timeout sits between, with room either side (at 1.2 s a fast machine made
        # the slow one in time).
        IMGSVC_CONSUMER_JOB_TIMEOUT="0.6",
        IMGSVC_CONSUMER_BACKOFF_BASE="0",
        IMGSVC_CONSUMER_MAX_ATTEMPTS="5",
    )
    api = await make_client(settings)
    assert (await api.put("/images/slow", data=io.BytesIO(slow_png(8960)))).status == 202
    # ~0.05 s each: the other worker works through them while the slow one runs. Small, so that
    # even a CI machine running four suites' workers beside it (a 6 MP one took 1.3 s there) stays
    # far below the timeout.
    for i in range(8):
        assert (await api.put(f"/images/normal{i}", data=slow_png(1600))).status == 202
    outcomes = await drain(settings, timeout=60)
    assert outcomes == {"ready": 8, "retry": 1, "dead_lettered": 1}, outcomes
    for i in range(8):
        status = await state_in(settings, f"{USER}/normal{i}")
        assert status["state"] == "ready" and status["info"]["width"] == 1600
    (letter,) = await dead_lettered(settings)
    assert letter.attributes["error_code"] == "processing_timeout"
    assert letter.attributes["attempts"] == "2"
    failed = await (await api.get("/images/slow")).json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "processing_timeout"


async def test_nested_or_malformed_bodies_are_poison_at_once(settings: Settings) -> None:
    """`json.loads` of a deeply nested body raises RecursionError, `unquote_plus` of a key that is
    not text AttributeError: both used to be retried as unexpected errors, max_attempts times.
    They are poison at once (oversized bodies too: `tests/test_events.py`)."""
    key_not_text = {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": "b"}, "object": {"key": ["k"]}},
    }
    async with open_backend(settings) as queues:
        await queues.main.send("[" * 100_000 + "]" * 100_000)
        await queues.main.send(json.dumps({"Records": [key_not_text]}))
        await queues.main.send('{"Records": [' + '{"a":' * 40 + "1" + "}" * 40 + "]}")
    outcomes = await drain(settings)
    assert outcomes == {"dead_lettered": 3}
    letters = await dead_lettered(settings)
    assert {m.attributes["error_code"] for m in letters} == {"poison_message"}
    assert {m.attributes["attempts"] for m in letters} == {"1"}


@pytest.mark.backend("aws")
async def test_a_request_the_database_refuses_is_permanent(clients: AwsClients, settings: Settings) -> None:
    """A DynamoDB ValidationException (an empty key, an item too large) cannot succeed on retry."""
    records = RecordStore(Tables(clients.dynamodb, settings.aws).images)
    with pytest.raises(InvalidRecord) as refused:
        await records.read(ImageRef("/no-owner"))
    assert isinstance(refused.value, PermanentError) and refused.value.code == "invalid_record"


async def test_a_redrive_takes_only_what_the_dlq_held_when_it_began(settings: Settings) -> None:
    """Messages that fail again at once (dead-lettered anew, under new ids) wait for the next
    redrive instead of going round for ever; and a redrive that fails half way leaves every
    message it held visible again at once, not hidden for its lease."""
    async with open_backend(settings) as queues:
        for i in range(3):
            await queues.dlq.send(f"poison {i}")

        class FailingAtOnce:
            async def send(self, body: str, attributes: Any = None) -> str:
                return await queues.dlq.send(body)  # its consumer dead-letters it straight back

        assert await asyncio.wait_for(redrive(queues.dlq, FailingAtOnce()), 20) == 3  # type: ignore[arg-type]
        assert (await queues.dlq.depth())["visible"] == 3

        def broken(message: Any) -> Any:
            raise RuntimeError("the rewrite failed")

        with pytest.raises(RuntimeError):
            await redrive(queues.dlq, queues.main, rewrite=broken)
        assert await queues.dlq.depth() == {"visible": 3, "in_flight": 0}
