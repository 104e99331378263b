"""The webhook outbox on both backends: events outlive a killed consumer, exhausted ones wait in
the outbox's DLQ with their reason, and `python -m pipeline webhooks list|redeliver` works them."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import math
import socket
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from config.settings import Settings
from pipeline.consumer.service import open_consumer
from pipeline.core.errors import PoisonMessage
from pipeline.webhooks.delivery import SIGNATURE_HEADER, Event, verify
from pipeline.webhooks.envelope import Envelope
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import shared_pool
from tests.support.processes import process_env, running, settings_env, start
from tests.support.settings import ROOT
from tests.webhook_receiver import Receiver

Client = TestClient[Any, Any]
CAT = (ROOT / "input" / "cat.jpg").read_bytes()
#: What the tests' webhooks need: the receivers are on loopback, and they want quick retries.
HOOKS = {
    "IMGSVC_WEBHOOK_ALLOW_PRIVATE": "true",
    "IMGSVC_WEBHOOK_TIMEOUT": "1",
    "IMGSVC_WEBHOOK_BACKOFF_BASE": "1",
    "IMGSVC_WEBHOOK_BACKOFF_MAX": "1",
}


def with_hooks(settings: Settings, **changes: Any) -> Settings:
    fast: dict[str, Any] = {"allow_private": True, "timeout": 1.0, "backoff_base": 1.0, "backoff_max": 1.0}
    hooks = dataclasses.replace(settings.webhooks, **(fast | changes))
    return dataclasses.replace(settings, webhooks=hooks)


def child_env(backend: Backend, settings: Settings | None = None) -> dict[str, str]:
    """The environment of a `python -m pipeline` child on the test's backend (and its consumer
    settings: a child provisioning the local backend again sets the queue's visibility too)."""
    settings = settings or backend.settings
    if backend.name == "local":
        visibility = str(settings.consumer.visibility_timeout)
        env = {
            "IMGSVC_DATA_DIR": str(settings.local.data_dir),
            "IMGSVC_CONSUMER_VISIBILITY_TIMEOUT": visibility,
        }
        return process_env(**env, **HOOKS)
    return settings_env(settings, **HOOKS)


async def set_hook(api: Client, url: str) -> str:
    response = await api.put("/webhook", json={"url": url})
    assert response.status == 200, await response.text()
    return str((await response.json())["secret"])


async def deliver(backend: Backend, settings: Settings) -> dict[str, int]:
    """A burst consumer: returns once the queue is drained and the outbox delivered (or given up)."""
    pool = await shared_pool(settings)
    async with open_consumer(backend.ports, settings, burst=True, pool=pool) as consumer:
        return dict((await consumer.run()).outcomes)


async def pipeline_cli(backend: Backend, *args: str) -> str:
    process = await start("-m", "pipeline", *args, env=child_env(backend))
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


@pytest.mark.e2e
async def test_a_killed_consumer_leaves_no_webhook_undelivered(
    backend: Backend, make_client: ClientFactory, receiver: Receiver, second_receiver: Receiver
) -> None:
    """SIGKILL while some events wait for a retry and others are mid-POST: after a restart every
    event arrives, signed, whatever state its delivery was in."""
    # Jobs the killed consumer had not acknowledged come back after 3 s.
    consumer = dataclasses.replace(backend.settings.consumer, visibility_timeout=3)
    settings = with_hooks(dataclasses.replace(backend.settings, consumer=consumer), drain_timeout=60.0)
    api = await make_client(settings)
    await set_hook(api, receiver.url)
    names = [f"p{i}" for i in range(6)]
    for name in names:
        assert (await api.put(f"/images/{name}", data=CAT)).status == 202
    receiver.statuses = [500] * 3  # the first three attempts refused: those events back off
    receiver.unheld = 3
    receiver.hold = asyncio.Event()  # every later POST hangs until the consumer is gone
    async with running("-m", "pipeline", "consumer", env=child_env(backend, settings)) as process:
        async with asyncio.timeout(60):
            while receiver.waiting < settings.webhooks.per_user:
                assert process.returncode is None, (await process.stderr.read()).decode()  # type: ignore[union-attr]
                await asyncio.sleep(0.05)
        process.kill()  # no drain, no hand-back: what it held must come back by itself
        await process.wait()
    assert not any(status == 200 for _, status in receiver.answers), "nothing was delivered before"

    secret = await set_hook(api, second_receiver.url)  # deliveries now go here: what arrives is new
    async with asyncio.timeout(90):
        await deliver(backend, settings)
    arrived = {}
    for _, headers, body in second_receiver.calls:
        assert verify(secret, headers[SIGNATURE_HEADER], body)
        event = json.loads(body)
        arrived[event["data"]["image_id"]] = event
    assert sorted(arrived) == names
    assert {event["data"]["status"] for event in arrived.values()} == {"ready"}
    assert await backend.ports.outbox.depth() == {"visible": 0, "in_flight": 0}
    assert await backend.ports.outbox_dlq.depth() == {"visible": 0, "in_flight": 0}


@pytest.mark.e2e
async def test_exhausted_events_are_listed_with_their_reason_and_redelivered(
    backend: Backend, make_client: ClientFactory, receiver: Receiver
) -> None:
    settings = with_hooks(backend.settings, attempts=2)
    api = await make_client(settings)
    await set_hook(api, receiver.url)
    receiver.statuses = [503] * 2
    assert (await api.put("/images/cat", data=CAT)).status == 202
    await backend.ports.outbox.send("not an event")  # written around the service: poison
    await deliver(backend, settings)
    assert len(receiver.calls) == 2

    listed = json.loads(await pipeline_cli(backend, "webhooks", "list", "--json"))
    by_code = {entry["error_code"]: entry for entry in listed}
    assert sorted(by_code) == ["poison_message", "webhook_failed"]
    failed = by_code["webhook_failed"]
    assert (failed["type"], failed["image_id"], failed["attempts"]) == ("image.ready", "cat", "2")
    assert failed["error_message"] == "HTTP 503" and failed["event_id"].startswith("evt_")
    assert by_code["poison_message"]["body"] == "not an event"
    text = await pipeline_cli(backend, "webhooks", "list")
    assert f"{failed['event_id']}  image.ready" in text and "2 event(s) not delivered" in text

    out = await pipeline_cli(backend, "webhooks", "redeliver", "--event-id", failed["event_id"])
    assert out.startswith("sent 1 event(s)")
    await deliver(backend, settings)
    assert len(receiver.calls) == 3 and receiver.answers[-1] == (failed["event_id"], 200)
    [left] = json.loads(await pipeline_cli(backend, "webhooks", "list", "--json"))
    assert left["error_code"] == "poison_message"  # not named, so not moved


async def test_a_stopping_consumer_hands_its_events_back(
    backend: Backend, make_client: ClientFactory, receiver: Receiver
) -> None:
    """A consumer told to stop (not a burst one) lets POSTs under way run for `drain_timeout`,
    then leaves the rest in the outbox, visible at once for the next consumer."""
    settings = with_hooks(backend.settings, timeout=30.0, drain_timeout=0.2)
    api = await make_client(settings)
    await set_hook(api, receiver.url)
    receiver.hold = asyncio.Event()
    assert (await api.put("/images/cat", data=CAT)).status == 202
    pool = await shared_pool(settings)
    async with open_consumer(backend.ports, settings, pool=pool) as consumer:
        running_consumer = asyncio.create_task(consumer.run())
        async with asyncio.timeout(30):
            while not receiver.waiting:
                await asyncio.sleep(0.05)
        consumer.stop()
        await running_consumer
    assert await backend.ports.outbox.depth() == {"visible": 1, "in_flight": 0}
    receiver.hold.set()
    await deliver(backend, with_hooks(backend.settings))
    assert [status for _, status in receiver.answers][-1] == 200
    assert await backend.ports.outbox.depth() == {"visible": 0, "in_flight": 0}


events = st.builds(
    Event,
    owner=st.text(max_size=40),
    id=st.text(max_size=40),
    type=st.sampled_from(["image.ready", "image.failed"]),
    body=st.text(max_size=200).map(str.encode),
)


@given(
    event=events,
    attempts=st.integers(0, 1000),
    not_before=st.floats(0, 1e12, allow_nan=False),
    error=st.text(max_size=100),
)
def test_an_envelope_reads_back_as_written(
    event: Event, attempts: int, not_before: float, error: str
) -> None:
    envelope = Envelope(event, attempts, not_before, error)
    assert Envelope.decode(envelope.encode()) == envelope


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)


@given(
    st.text(max_size=300) | json_values.map(json.dumps) | st.builds(lambda n: "[" * n, st.integers(0, 5000))
)
def test_anything_else_in_the_outbox_is_poison_never_a_crash(body: str) -> None:
    try:
        envelope = Envelope.decode(body)
    except PoisonMessage:
        return
    assert envelope.attempts >= 0 and math.isfinite(envelope.not_before)


def test_a_time_too_large_for_a_float_is_poison() -> None:
    body = (
        Envelope(Event("u", "evt_1", "image.ready", b"{}"))
        .encode()
        .replace('"not_before":0.0', '"not_before":1' + "0" * 400)
    )
    with pytest.raises(PoisonMessage):
        Envelope.decode(body)


async def test_a_host_resolving_to_a_private_address_is_dead_lettered_at_once(
    backend: Backend, make_client: ClientFactory, receiver: Receiver
) -> None:
    """A webhook whose name resolves inward is refused at delivery (SSRF protection), and no retry
    can change that: the event goes to the outbox's DLQ on its first attempt as `private_address`,
    not after six attempts as a DNS error."""
    host = socket.gethostname()
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        pytest.skip(f"this machine's name {host} does not resolve")
    if any(ipaddress.ip_address(str(a).split("%")[0]).is_global for a in found):
        pytest.skip(f"this machine's name {host} resolves to a public address")
    settings = with_hooks(backend.settings, allow_private=False, attempts=6)
    api = await make_client(settings)
    await set_hook(api, receiver.url.replace("127.0.0.1", host))
    assert (await api.put("/images/cat", data=CAT)).status == 202
    started = time.monotonic()
    await deliver(backend, settings)
    assert time.monotonic() - started < 15 and receiver.calls == []
    [buried] = json.loads(await pipeline_cli(backend, "webhooks", "list", "--json"))
    assert (buried["error_code"], buried["attempts"]) == ("private_address", "1")
    assert "no public address" in buried["error_message"]
