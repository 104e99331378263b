"""Completion webhooks: the API to set one, signed deliveries with retries, and that a slow or
refused receiver never holds up the consumer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from config.settings import Settings, WebhookSettings
from pipeline.aws.clients import AwsClients
from pipeline.backends import open_backend
from pipeline.consumer import lambda_handler
from pipeline.core import metrics
from pipeline.core.errors import InvalidWebhookUrl
from pipeline.webhooks.delivery import (
    EVENT_HEADER,
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookStore,
    backoff,
    sign,
    verify,
)
from pipeline.webhooks.urls import PublicOnlyResolver, check_url
from tests.support.clients import ClientFactory
from tests.support.consumers import consumer_on, drain, sqs_event
from tests.support.settings import OTHER_USER, ROOT, USER
from tests.webhook_receiver import Receiver

Client = TestClient[Any, Any]
#: Webhooks are the service's own; only the Lambda variant's event sources are AWS's (marked).
pytestmark = pytest.mark.backend("local")
CAT = (ROOT / "input" / "cat.jpg").read_bytes()


@dataclass
class Streamer:
    """A receiver on 127.0.0.1 that accepts with a 200 and then streams a body: the first answer's is
    `size` bytes long (None: endless, trickled), later answers have none."""

    size: int | None
    url: str = ""
    sent: int = 0  # bytes of the first answer's body handed to the kernel
    finished: bool = False  # the whole first body was sent
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the first answer's handler is done
    took: float = 0.0  # from the first answer's headers to its end
    peers: list[int] = field(default_factory=list)  # the client port of every request

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        if len(self.peers) > 1:
            return web.Response()
        # Small kernel buffers, so what is sent is close to what the client takes in.
        request.transport.get_extra_info("socket").setsockopt(  # type: ignore[union-attr]
            socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10
        )
        answer = web.StreamResponse()
        answer.content_length = self.size
        await answer.prepare(request)
        started = time.monotonic()
        chunk = b"x" * (64 << 10)
        try:
            with contextlib.suppress(ConnectionError):  # the client hung up mid-body
                while self.size is None or self.sent < self.size:
                    await answer.write(chunk)
                    self.sent += len(chunk)
                    if self.size is None:
                        await asyncio.sleep(0.01)
                await answer.write_eof()
                self.finished = True
        finally:  # also when TestServer cancels the handler because its connection was closed
            self.took = time.monotonic() - started
            self.ended.set()
        return answer


@pytest.fixture
async def streamer(request: pytest.FixtureRequest) -> AsyncIterator[Streamer]:
    found = Streamer(request.param)
    app = web.Application()
    app.router.add_post("/hook", found.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    found.url = str(server.make_url("/hook"))
    yield found
    await server.close()


@pytest.fixture
def hook_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        IMGSVC_WEBHOOK_ALLOW_PRIVATE="true",  # the receiver is on loopback
        IMGSVC_WEBHOOK_BACKOFF_BASE="0.05",
        IMGSVC_WEBHOOK_BACKOFF_MAX="0.2",
    )


async def set_hook(api: Client, url: str) -> dict[str, Any]:
    response = await api.put("/webhook", json={"url": url})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def settle(settings: Settings) -> dict[str, int]:
    """The consumer's outcomes (without S3's test event), once every webhook is delivered."""
    outcomes = await drain(settings)
    outcomes.pop("test_event", None)
    return outcomes


def delivered(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(body) for _, _, body in receiver.calls]


# The API --------------------------------------------------------------------------------------------


async def test_set_read_rotate_and_remove(api: Client) -> None:
    assert (await api.get("/webhook")).status == 404
    first = await set_hook(api, "https://hooks.example.com/images")
    assert first["url"] == "https://hooks.example.com/images" and first["secret"].startswith("whsec_")
    assert await (await api.get("/webhook")).json() == first

    moved = await set_hook(api, "https://hooks.example.com/v2")
    assert moved["secret"] == first["secret"], "changing the URL keeps the secret"
    rotated = await (await api.put("/webhook", json={"url": moved["url"], "rotate_secret": True})).json()
    assert rotated["secret"] != first["secret"] and rotated["url"] == moved["url"]

    assert (await api.delete("/webhook")).status == 204
    gone = await api.get("/webhook")
    assert gone.status == 404 and (await gone.json())["error"] == "webhook_not_set"
    assert (await api.delete("/webhook")).status == 204
    again = await set_hook(api, "https://hooks.example.com/images")
    assert again["secret"] != rotated["secret"], "a removed webhook's secret is not reused"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"url": "ftp://hooks.example.com/x"}, 422, "invalid_webhook_url"),
        ({"url": "hooks.example.com/x"}, 422, "invalid_webhook_url"),
        ({"url": "https://user:pw@hooks.example.com/x"}, 422, "invalid_webhook_url"),
        ({"url": "https://hooks.example.com:99999/x"}, 422, "invalid_webhook_url"),
        ({"url": "https://hooks.example.com/" + "x" * 2048}, 422, "invalid_webhook_url"),
        ({"url": 7}, 422, "invalid_webhook_url"),
        ({}, 422, "invalid_webhook_url"),
        ({"url": "http://127.0.0.1:9000/x"}, 422, "invalid_webhook_url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, 422, "invalid_webhook_url"),
        ({"url": "http://localhost/x"}, 422, "invalid_webhook_url"),
        ({"url": "https://hooks.example.com/x", "rotate_secret": "yes"}, 400, "invalid_field"),
    ],
)
async def test_bad_webhooks_are_refused(api: Client, body: dict[str, Any], status: int, code: str) -> None:
    response = await api.put("/webhook", json=body)
    assert response.status == status
    assert (await response.json())["error"] == code
    assert (await api.get("/webhook")).status == 404


async def test_webhook_body_must_be_json(api: Client) -> None:
    response = await api.put(
        "/webhook", data=b"url=https://x.example", headers={"Content-Type": "text/plain"}
    )
    assert response.status == 415 and (await response.json())["error"] == "unsupported_media_type"


@pytest.mark.parametrize(
    "host",
    ["10.1.2.3", "192.168.0.1", "172.16.5.4", "100.64.0.1", "0.0.0.0", "[::1]", "[fd00::1]",
     "[fe80::1]", "[::ffff:127.0.0.1]", "224.0.0.1", "localhost", "printer.localhost"],
)  # fmt: skip
def test_inward_addresses_are_refused_unless_allowed(host: str) -> None:
    url = f"http://{host}/hook"
    with pytest.raises(InvalidWebhookUrl):
        check_url(url, allow_private=False)
    assert check_url(url, allow_private=True) == url


@pytest.mark.parametrize("host", ["93.184.215.14", "[2606:4700::1111]", "hooks.example.com"])
def test_public_addresses_are_accepted(host: str) -> None:
    assert check_url(f"https://{host}/hook", allow_private=False)


async def test_names_resolving_inward_are_refused_at_delivery() -> None:
    resolver = PublicOnlyResolver()
    try:
        with pytest.raises(OSError, match="no public address"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()


# Signatures -----------------------------------------------------------------------------------------

secrets_ = st.text(min_size=1, max_size=64)


@given(secret=secrets_, body=st.binary(max_size=512), stamp=st.integers(0, 2**40))
def test_signature_round_trip(secret: str, body: bytes, stamp: int) -> None:
    header = sign(secret, body, stamp)
    assert verify(secret, header, body, now=stamp)
    assert verify(secret, header, body, now=stamp + 299)
    assert not verify(secret, header, body, now=stamp + 301), "an old signature is refused (replay)"
    assert not verify(secret + "x", header, body, now=stamp)
    assert not verify(secret, header, body + b"x", now=stamp)


@given(header=st.text(max_size=120))
def test_garbage_signature_headers_never_verify(header: str) -> None:
    assert not verify("whsec_test", header, b"{}", now=0)


SECRET = "whsec_test"
SIGNED = sign(SECRET, b"{}", 1000)
MAC = SIGNED.removeprefix("t=1000,v1=")
ARABIC_1000 = "\u0661\u0660\u0660\u0660"  # int() reads these digits as 1000, and so did verify
FULLWIDTH_1000 = "\uff11\uff10\uff10\uff10"


@pytest.mark.parametrize(
    "header",
    [
        f"t=1000,v1={MAC[:-1]}é",  # hmac.compare_digest raises TypeError on non-ASCII text
        "t=1000,v1=\u0660\u0661",
        f"t={ARABIC_1000},v1={MAC}",
        f"t={FULLWIDTH_1000},v1={MAC}",
        f"t=+1000,v1={MAC}",
        f"t= 1000,v1={MAC}",
        f"t=1_000,v1={MAC}",
        f"t=1000,t=5,v1={MAC}",  # which timestamp was signed?
        f"t=5,t=1000,v1={MAC}",
        f"t={'9' * 400},v1={MAC}",  # overflows a float
        f"t={'9' * 5000},v1={MAC}",  # more digits than int() parses
        "t=1e3,v1=x",
        "t=-1000,v1=x",
        "t=1000",
        f"v1={MAC}",
        f"{MAC}",
        f"t=1000,,v1={MAC}",
        f"t=1000,v1={MAC},",
        f"t=1000,=x,v1={MAC}",
        "t=,v1=",
        "",
        ",",
        "=",
        f"t=1000,v1={MAC}," + "v1=0" * 2000,  # absurdly long
        None,
        b"t=1000,v1=\xff",
        b"\x80",
        bytearray(SIGNED.encode()),
        1000,
    ],
)
def test_malformed_signature_headers_are_false_not_errors(header: Any) -> None:
    assert verify(SECRET, header, b"{}", now=1000) is False


@pytest.mark.parametrize(
    "header",
    [SIGNED, SIGNED.encode(), f"t=1000, v1={MAC}", f"t=1000,v1=00,v1={MAC}", f"v0=x,t=1000,v1={MAC}"],
)
def test_well_formed_signature_headers_verify(header: str | bytes) -> None:
    assert verify(SECRET, header, b"{}", now=1000) is True


def test_an_empty_secret_verifies_nothing() -> None:
    """A receiver whose secret is unset must not accept headers anyone can make."""
    assert not verify("", sign("", b"{}", 1000), b"{}", now=1000)
    assert not verify("\ud800", f"t=1000,v1={MAC}", b"{}", now=1000)  # a secret UTF-8 cannot encode


any_text = st.text(st.characters(exclude_categories=()))  # every code point, lone surrogates too


@st.composite
def near_miss_headers(draw: st.DrawFn) -> str:
    """Headers built from `t=` and `v1=` parts, most of them almost right."""
    keys = st.sampled_from(["t", "v1", "v0", "T", " t", "t ", "", "v1 "]) | any_text
    values = (
        st.sampled_from(
            ["1000", MAC, "", "+1000", " 1000", "1_000", ARABIC_1000, "9" * 400, "-1", "1e3", "0x3e8"]
        )
        | st.integers().map(str)
        | st.text(st.characters(categories=["Nd"]), min_size=1, max_size=20)  # digits of any script
        | st.builds(lambda at, c: MAC[:at] + c + MAC[at + 1 :], st.integers(0, 63), any_text.filter(bool))
        | any_text
    )
    part = st.tuples(keys, st.sampled_from(["=", "", "=="]), values).map("".join)
    parts = draw(st.lists(part, max_size=6))
    return draw(st.sampled_from([",", ", ", ",,", ";"])).join(parts)


@given(
    header=any_text | near_miss_headers() | st.binary() | st.none(),
    body=st.binary(max_size=256),
    secret=any_text,
    now=st.floats(allow_nan=True) | st.integers(-(2**70), 2**70) | st.just(1000),
)
def test_verify_is_a_bool_for_any_header_body_and_secret(
    header: str | bytes | None, body: bytes, secret: str, now: float
) -> None:
    assert verify(secret, header, body, now=now) in (True, False)
    assert verify(SECRET, header, b"{}", now=1000) in (True, False)


@given(
    secret=st.text(min_size=1),
    body=st.binary(max_size=512),
    stamp=st.integers(0, 10**12),
    skew=st.floats(-300, 300),
)
def test_verify_accepts_what_sign_made_within_tolerance(
    secret: str, body: bytes, stamp: int, skew: float
) -> None:
    assert verify(secret, sign(secret, body, stamp), body, now=stamp + skew) is True


def test_backoff_grows_and_is_capped() -> None:
    settings = WebhookSettings(backoff_base=1, backoff_max=10)
    delays = [backoff(n, settings) for n in range(1, 8)]
    assert 0.5 <= delays[0] <= 1 and 1 <= delays[1] <= 2  # equal jitter: half fixed, half random
    assert all(d <= 10 for d in delays) and delays[-1] >= 5


# Delivery -------------------------------------------------------------------------------------------


async def test_ready_event_is_signed_and_retried_until_accepted(
    hook_settings: Settings, make_client: ClientFactory, receiver: Receiver
) -> None:
    api = await make_client(hook_settings)
    hook = await set_hook(api, receiver.url)
    receiver.statuses = [500, 503]  # two refusals, then 200
    assert (await api.put(f"/images/cat?user_id={USER}", data=CAT)).status == 202
    before = metrics.WEBHOOK_DELIVERIES.labels("delivered")._value.get()

    outcomes = await settle(hook_settings)  # leaves once delivered

    assert outcomes == {"ready": 1}
    assert len(receiver.calls) == 3
    ids = {headers[EVENT_ID_HEADER] for _, headers, _ in receiver.calls}
    assert len(ids) == 1, "retries carry the same event id"
    for _, headers, body in receiver.calls:
        assert headers[EVENT_HEADER] == "image.ready"
        assert headers["Content-Type"] == "application/json"
        assert verify(hook["secret"], headers[SIGNATURE_HEADER], body)
    event = delivered(receiver)[-1]
    assert event["type"] == "image.ready" and event["id"] == ids.pop()
    data = event["data"]
    assert (data["user_id"], data["image_id"], data["status"]) == (USER, "cat", "ready")
    assert (data["width"], data["height"], data["format"]) == (451, 300, "jpeg")
    assert data["placeholder"]["blurhash"]
    status = await (await api.get("/images/cat")).json()
    assert data["etag"] == status["etag"] and data["sha256"] == status["sha256"]
    gaps = [b[0] - a[0] for a, b in zip(receiver.calls, receiver.calls[1:], strict=False)]
    assert all(gap >= 0.03 for gap in gaps), f"retries back off: {gaps}"
    assert metrics.WEBHOOK_DELIVERIES.labels("delivered")._value.get() == before + 1


async def test_failed_event_carries_the_reason(
    hook_settings: Settings, make_client: ClientFactory, receiver: Receiver
) -> None:
    api = await make_client(hook_settings)
    await set_hook(api, receiver.url)
    assert (await api.put("/images/broken", data=CAT[:5000])).status == 202  # a JPEG that fails to decode

    assert await settle(hook_settings) == {"dead_lettered": 1}

    [event] = delivered(receiver)
    assert event["type"] == "image.failed"
    assert event["data"]["status"] == "failed" and event["data"]["error"]["code"] == "corrupt_image"


@pytest.mark.slow
async def test_only_images_uploaded_with_a_webhook_notify_and_a_refusing_receiver_is_given_up(
    hook_settings: Settings, make_client: ClientFactory, receiver: Receiver
) -> None:
    api = await make_client(hook_settings)
    assert (await api.put("/images/quiet", data=CAT)).status == 202
    await set_hook(api, receiver.url)  # after the upload: its owner had no webhook then
    assert await settle(hook_settings) == {"ready": 1}
    assert receiver.calls == []

    receiver.statuses = [500] * 50
    failed = metrics.WEBHOOK_DELIVERIES.labels("failed")._value.get()
    assert (await api.put("/images/loud", data=CAT)).status == 202
    assert await settle(hook_settings) == {"ready": 1}
    assert len(receiver.calls) == hook_settings.webhooks.attempts
    assert metrics.WEBHOOK_DELIVERIES.labels("failed")._value.get() == failed + 1


async def test_a_receiver_that_hangs_never_holds_up_the_consumer(
    make_settings: Callable[..., Settings], make_client: ClientFactory, receiver: Receiver
) -> None:
    settings = make_settings(
        IMGSVC_WEBHOOK_ALLOW_PRIVATE="true", IMGSVC_WEBHOOK_TIMEOUT="30", IMGSVC_WEBHOOK_PER_USER="3"
    )
    api = await make_client(settings)
    await set_hook(api, receiver.url)
    receiver.hold = asyncio.Event()
    for name in ("a", "b", "c"):
        assert (await api.put(f"/images/{name}", data=CAT)).status == 202

    async with consumer_on(settings) as consumer:
        stats = await asyncio.wait_for(consumer.run(), 30)
        # Every message is done and acknowledged while no POST has been answered; all three then
        # reach the receiver and hang there, with the consumer done.
        assert stats.outcomes["ready"] == 3 and stats.outcomes.keys() <= {"ready", "test_event"}
        assert receiver.answers == []
        async with asyncio.timeout(10):
            while receiver.waiting < 3:
                await asyncio.sleep(0.02)
        listed = await (await api.get("/images")).json()
        assert {i["status"] for i in listed["images"]} == {"ready"}
        receiver.hold.set()  # now the shutdown drain delivers them
    assert receiver.waiting == 0 and len(receiver.calls) == 3


@pytest.mark.slow
async def test_a_users_hanging_receiver_holds_up_only_its_own_events(
    make_settings: Callable[..., Settings],
    make_client: ClientFactory,
    receiver: Receiver,
    second_receiver: Receiver,
) -> None:
    """One user's receiver hangs with a backlog; another user's event is delivered meanwhile, and
    the backlog waits in the outbox (costing none of its attempts) until its receiver answers."""
    settings = make_settings(
        IMGSVC_WEBHOOK_ALLOW_PRIVATE="true",
        IMGSVC_WEBHOOK_TIMEOUT="30",
        IMGSVC_WEBHOOK_PER_USER="1",
        IMGSVC_WEBHOOK_ATTEMPTS="1",  # a deferral that cost an attempt would drop the event
        IMGSVC_WEBHOOK_DRAIN_TIMEOUT="30",
    )
    slow, fast = await make_client(settings), await make_client(settings, OTHER_USER)
    await set_hook(slow, receiver.url)
    await set_hook(fast, second_receiver.url)
    receiver.hold = asyncio.Event()
    for name in ("a", "b", "c", "d"):
        assert (await slow.put(f"/images/{name}", data=CAT)).status == 202
    assert (await fast.put("/images/quick", data=CAT)).status == 202
    deferred = metrics.WEBHOOK_DELIVERIES.labels("deferred")._value.get()

    async with consumer_on(settings) as consumer:
        await asyncio.wait_for(consumer.run(), 30)
        async with asyncio.timeout(20):
            while not second_receiver.calls:
                await asyncio.sleep(0.05)
        assert receiver.waiting == 1, "one POST at a time to the slow receiver"
        assert metrics.WEBHOOK_DELIVERIES.labels("deferred")._value.get() > deferred
        receiver.hold.set()  # it answers now: the backlog follows, one event at a time
    assert [json.loads(body)["data"]["image_id"] for _, _, body in second_receiver.calls] == ["quick"]
    assert sorted(e["data"]["image_id"] for e in delivered(receiver)) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("streamer", [50 << 20, None], ids=["50MiB", "endless"], indirect=True)
async def test_a_huge_or_endless_answer_is_not_read(
    make_settings: Callable[..., Settings],
    make_client: ClientFactory,
    streamer: Streamer,
) -> None:
    """Only the status counts: the body of a 2xx answer is neither awaited nor taken in."""
    settings = make_settings(
        IMGSVC_WEBHOOK_ALLOW_PRIVATE="true", IMGSVC_WEBHOOK_ATTEMPTS="1", IMGSVC_WEBHOOK_TIMEOUT="3"
    )
    api = await make_client(settings)
    await set_hook(api, streamer.url)
    delivered_before = metrics.WEBHOOK_DELIVERIES.labels("delivered")._value.get()
    assert (await api.put("/images/cat", data=CAT)).status == 202

    assert await settle(settings) == {"ready": 1}

    assert metrics.WEBHOOK_DELIVERIES.labels("delivered")._value.get() == delivered_before + 1
    await asyncio.wait_for(streamer.ended.wait(), 10)
    assert not streamer.finished
    assert streamer.took < 2, "the connection is closed as soon as the status is in"
    assert streamer.sent <= 4 << 20, f"{streamer.sent} bytes went out, far more than buffers hold"


@pytest.mark.parametrize("streamer", [50 << 20], indirect=True)
async def test_a_connection_with_an_unread_answer_is_not_reused(
    make_settings: Callable[..., Settings],
    make_client: ClientFactory,
    streamer: Streamer,
) -> None:
    """After an answer left unread the next POST opens a new connection; after a read one it reuses it."""
    settings = make_settings(IMGSVC_WEBHOOK_ALLOW_PRIVATE="true", IMGSVC_WEBHOOK_CONCURRENCY="1")
    api = await make_client(settings)
    await set_hook(api, streamer.url)
    for name in ("a", "b", "c"):
        assert (await api.put(f"/images/{name}", data=CAT)).status == 202

    assert await settle(settings) == {"ready": 3}

    first, second, third = streamer.peers  # no retries: every answer was a clean 200
    assert first != second == third


# 127.0.0.1 in fullwidth digits and ideographic full stops: aiohttp's IDNA mapping makes it 127.0.0.1
# and, as an IP address, connects to it without asking the resolver.
FULLWIDTH_LOOPBACK = "\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11"


@pytest.mark.parametrize("fullwidth", [False, True], ids=["literal", "idna-mapped"])
async def test_delivery_to_an_inward_address_is_refused_when_not_allowed(
    settings: Settings, make_client: ClientFactory, receiver: Receiver, fullwidth: bool
) -> None:
    """A URL stored before the rules changed (or written around the API) is still never called."""
    api = await make_client(settings)
    url = receiver.url.replace("127.0.0.1", FULLWIDTH_LOOPBACK) if fullwidth else receiver.url
    async with open_backend(settings) as ports:
        await WebhookStore(ports.tables.users).put(USER, url)
    failed = metrics.WEBHOOK_DELIVERIES.labels("failed")._value.get()
    assert (await api.put("/images/cat", data=CAT)).status == 202
    assert await settle(settings) == {"ready": 1}
    assert receiver.calls == []
    assert metrics.WEBHOOK_DELIVERIES.labels("failed")._value.get() == failed + 1


@pytest.mark.backend("aws")  # Lambda's SQS event sources
async def test_the_lambda_variant_delivers_from_the_outbox_too(
    hook_settings: Settings, make_client: ClientFactory, clients: AwsClients, receiver: Receiver
) -> None:
    """The function's job puts the event in the outbox; the outbox, its second event source, hands
    it back to the function for delivery: one attempt per record, a retry as a new record."""
    api = await make_client(hook_settings)
    hook = await set_hook(api, receiver.url)
    receiver.statuses = [502]
    assert (await api.put("/images/cat", data=CAT)).status == 202
    answer = await lambda_handler.handle_event(await sqs_event(clients, hook_settings, 1), hook_settings)
    assert answer == {"batchItemFailures": []} and receiver.calls == []
    outbox = hook_settings.aws.outbox_name
    for _ in range(2):  # refused, then (once its backoff has passed) delivered
        event = await sqs_event(clients, hook_settings, 1, queue_name=outbox)
        assert await lambda_handler.handle_event(event, hook_settings) == {"batchItemFailures": []}
    assert receiver.answers == [(receiver.answers[0][0], 502), (receiver.answers[0][0], 200)]
    _, headers, body = receiver.calls[-1]
    assert verify(hook["secret"], headers[SIGNATURE_HEADER], body)
    assert json.loads(body)["data"]["status"] == "ready"
