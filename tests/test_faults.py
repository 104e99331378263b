"""Faults between the service and AWS, injected by a proxy in front of the real moto server.

Every test ends with each upload accounted for: renditions made, or a DLQ entry with a reason.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from PIL import Image

from config.settings import Settings
from pipeline.aws.clients import AwsClients, open_clients
from pipeline.consumer.loop import Consumer, ConsumerStats
from scripts.awsproxy import FaultProxy, Rule
from tests.support.backends import provision_with_users
from tests.support.consumers import run_consumer_until_drained, shared_consumer
from tests.support.images import decode
from tests.support.settings import ROOT, USER
from tests.support.state import dlq_messages, status_of

DOG = (ROOT / "input" / "dog.jpg").read_bytes()


@pytest.fixture
async def proxy(moto_endpoint: str) -> AsyncIterator[FaultProxy]:
    fault_proxy = FaultProxy(moto_endpoint)
    await fault_proxy.start()
    yield fault_proxy
    await fault_proxy.close()


@pytest.fixture
async def faulty(make_settings: Callable[..., Settings], proxy: FaultProxy, clients: AwsClients) -> Settings:
    """Settings whose AWS traffic goes through the proxy; resources provisioned directly."""
    settings = make_settings(AWS_ENDPOINT_URL=proxy.url)
    await provision_with_users(clients, settings)
    return settings


async def put(clients: AwsClients, settings: Settings, key: str, data: bytes = DOG) -> None:
    await clients.s3.put_object(Bucket=settings.aws.source_bucket, Key=key, Body=data)


async def consume_until(
    settings: Settings,
    done: Callable[[Consumer], bool],
    timeout: float = 40,
    on_start: Callable[[Consumer], Awaitable[None]] | None = None,
) -> ConsumerStats:
    """Run a consumer (through the proxy) until `done(consumer)`, then stop it cleanly."""
    async with open_clients(settings.aws) as proxied, shared_consumer(proxied, settings) as consumer:
        task = asyncio.create_task(consumer.run())
        try:
            if on_start is not None:
                await on_start(consumer)
            async with asyncio.timeout(timeout):
                while not done(consumer):
                    if task.done():
                        return task.result()
                    await asyncio.sleep(0.05)
        finally:
            consumer.stop()
            stats = await task
    return stats


def ready(n: int) -> Callable[[Consumer], bool]:
    return lambda c: c.stats.outcomes["ready"] >= n


async def test_transient_s3_errors_are_retried_then_succeed(
    proxy: FaultProxy, faulty: Settings, clients: AwsClients
) -> None:
    # More consecutive 500s/503s than botocore's own retries absorb, so our backoff is exercised too.
    proxy.add(Rule("PutObject", status=503, code="SlowDown", bucket=faulty.aws.dest_bucket, times=4))
    proxy.add(Rule("GetObject", status=500, code="InternalError", times=2))
    await put(clients, faulty, f"{USER}/flaky")
    stats = await consume_until(faulty, ready(1))
    assert stats.outcomes["retry"] >= 1
    assert (await status_of(clients, faulty, f"{USER}/flaky"))["state"] == "ready"
    assert await dlq_messages(clients, faulty) == []


async def test_sqs_throttling_latency_and_malformed_answers_are_survived(
    proxy: FaultProxy, faulty: Settings, clients: AwsClients
) -> None:
    throttled = proxy.add(Rule("ReceiveMessage", status=400, code="ThrottlingException", times=3))
    malformed = proxy.add(Rule("ReceiveMessage", action="malformed", times=2))
    proxy.add(Rule("ReceiveMessage", action="delay", delay=0.5, times=3))
    for i in range(3):
        await put(clients, faulty, f"{USER}/q{i}")
    stats = await consume_until(faulty, ready(3))
    assert stats.outcomes["ready"] == 3
    assert throttled.hits == 3 and malformed.hits == 2
    assert await dlq_messages(clients, faulty) == []


async def test_endpoint_down_for_a_while_loses_and_duplicates_nothing(
    proxy: FaultProxy, faulty: Settings, clients: AwsClients
) -> None:
    keys = [f"{USER}/outage{i}" for i in range(4)]
    for key in keys:
        await put(clients, faulty, key)

    async def outage(consumer: Consumer) -> None:
        rule = proxy.add(Rule("*", action="drop"))
        await asyncio.sleep(3)
        proxy.rules.remove(rule)

    stats = await consume_until(faulty, ready(len(keys)), timeout=60, on_start=outage)
    for key in keys:
        assert (await status_of(clients, faulty, key))["state"] == "ready"
    assert stats.outcomes["ready"] == len(keys)
    assert "dead_lettered" not in stats.outcomes
    assert await dlq_messages(clients, faulty) == []


async def test_partial_delete_batch_failures_are_retried_not_reprocessed(
    make_settings: Callable[..., Settings], proxy: FaultProxy, clients: AwsClients
) -> None:
    # A short visibility timeout: an entry that was never deleted would be received again quickly.
    settings = make_settings(
        AWS_ENDPOINT_URL=proxy.url,
        IMGSVC_CONSUMER_VISIBILITY_TIMEOUT="2",
        IMGSVC_CONSUMER_DELETE_FLUSH_SECONDS="0.5",
    )
    await provision_with_users(clients, settings)
    proxy.add(Rule("DeleteMessageBatch", action="partial_batch", times=1))
    keys = [f"{USER}/del{i}" for i in range(6)]
    for key in keys:
        await put(clients, settings, key)
    stats = await consume_until(settings, ready(len(keys)))
    await asyncio.sleep(3)  # longer than the visibility timeout
    queue_depth = await clients.sqs.get_queue_attributes(
        QueueUrl=(await clients.sqs.get_queue_url(QueueName=settings.aws.queue_name))["QueueUrl"],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    assert proxy.rules[0].hits == 1 and proxy.seen["DeleteMessageBatch"] >= 2
    assert stats.received == len(keys) + 1  # + moto's test event: nothing came back to be redone
    assert queue_depth["Attributes"] == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


async def test_lost_lease_stops_the_job_without_a_stale_delete(
    make_settings: Callable[..., Settings], proxy: FaultProxy, clients: AwsClients
) -> None:
    settings = make_settings(AWS_ENDPOINT_URL=proxy.url, IMGSVC_CONSUMER_VISIBILITY_TIMEOUT="1")
    await provision_with_users(clients, settings)
    # A slow read makes the job outlive its 1 s lease; the first heartbeat finds the lease gone.
    proxy.add(Rule("GetObject", action="delay", delay=1.5, bucket=settings.aws.source_bucket, times=1))
    proxy.add(Rule("ChangeMessageVisibility", status=400, code="ReceiptHandleIsInvalid", times=1))
    await put(clients, settings, f"{USER}/lease")
    stats = await consume_until(settings, ready(1))
    assert stats.outcomes["lease_lost"] == 1
    # Test event + the lost delivery + the redelivery: the job with the lost lease deleted nothing.
    assert stats.received == 3 and stats.outcomes["ready"] == 1
    assert (await status_of(clients, settings, f"{USER}/lease"))["state"] == "ready"


async def test_access_denied_on_destination_dead_letters_after_max_attempts(
    proxy: FaultProxy, faulty: Settings, clients: AwsClients
) -> None:
    proxy.add(Rule("PutObject", status=403, code="AccessDenied", bucket=faulty.aws.dest_bucket))
    await put(clients, faulty, f"{USER}/denied")
    stats = await consume_until(faulty, lambda c: c.stats.outcomes["dead_lettered"] >= 1)
    assert stats.outcomes["retry"] == faulty.consumer.max_attempts - 1
    (letter,) = await dlq_messages(clients, faulty)
    assert letter.attributes["error_code"] == "storage_unavailable"
    assert "AccessDenied" in letter.attributes["error_message"]
    head = await clients.s3.head_object(Bucket=faulty.aws.source_bucket, Key=f"{USER}/denied")
    assert head["ContentLength"] == len(DOG)


async def test_duplicate_and_stale_events_leave_one_set_matching_the_latest_object(
    settings: Settings, clients: AwsClients
) -> None:
    key = f"{USER}/overwritten"
    for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255)):  # three versions: three events, one object
        out = io.BytesIO()
        Image.new("RGB", (400, 300), colour).save(out, "PNG")
        await put(clients, settings, key, out.getvalue())
    queue_url = (await clients.sqs.get_queue_url(QueueName=settings.aws.queue_name))["QueueUrl"]
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": settings.aws.source_bucket}, "object": {"key": key}},
            }
        ]
    }
    await clients.sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(event))  # a duplicate

    outcomes = await run_consumer_until_drained(clients, settings)
    assert outcomes["ready"] == 4
    listed = await clients.s3.list_objects_v2(Bucket=settings.aws.dest_bucket)
    assert sorted(o["Key"] for o in listed["Contents"]) == [f"{key}/256.jpg"]
    head = await clients.s3.head_object(Bucket=settings.aws.source_bucket, Key=key)
    assert (await status_of(clients, settings, key))["source_etag"] == head["ETag"]
    thumb = await clients.s3.get_object(Bucket=settings.aws.dest_bucket, Key=f"{key}/256.jpg")
    red, green, blue = decode(await thumb["Body"].read()).getpixel((10, 10))
    assert blue > 200 and red < 60 and green < 60
