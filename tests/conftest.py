"""Shared fixtures: one real moto server per session, unique resources per test, real HTTP."""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import os
import signal
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from config.settings import SEED_USER_IDS, Settings
from pipeline.aws.clients import AwsClients, open_clients
from pipeline.aws.embedded import embedded_aws
from pipeline.aws.provision import provision
from pipeline.aws.queue import Message, Queue
from pipeline.aws.tables import Tables
from pipeline.backends import aws_backend, open_backend
from pipeline.consumer.loop import Consumer
from pipeline.consumer.service import open_consumer
from pipeline.core.accounts import Accounts
from pipeline.core.events import parse_message
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef
from pipeline.core.objects import ObjectMeta
from pipeline.core.records import RecordStore
from pipeline.imaging.workers import WorkerPool
from pipeline.local.backend import open_local
from tests.support.servers import GuardedTestServer
from tests.webhook_receiver import Receiver, serving
from web.app import create_app
from web.keys import ACCOUNTS, PROVISIONED, VARIANT_POOL

ROOT = Path(__file__).resolve().parent.parent
# moto keeps every test's buckets, queues and tables in this process: with the default thresholds
# the collector re-scans that growing heap so often that it took a fifth of the suite's time
# (45 s of 212 s in a measured subset; 19 s with these).
gc.set_threshold(100_000, 50, 1000)
USER = SEED_USER_IDS[2]
OTHER_USER = SEED_USER_IDS[0]
#: Fast consumer settings for tests; every test can override any of them.
FAST = {
    "IMGSVC_CONSUMER_WAIT_TIME_SECONDS": "1",
    "IMGSVC_CONSUMER_VISIBILITY_TIMEOUT": "20",
    "IMGSVC_CONSUMER_MAX_ATTEMPTS": "3",
    "IMGSVC_CONSUMER_BACKOFF_BASE": "1",
    "IMGSVC_CONSUMER_BACKOFF_MAX": "2",
    "IMGSVC_CONSUMER_WORKERS": "1",
    "IMGSVC_CONSUMER_DRAIN_TIMEOUT": "5",
    "IMGSVC_RUN_CONSUMER": "false",
    # One user's messages are never deferred for its share, unless a test asks: most tests upload
    # as one user and count what the consumer received (`tests/test_consumer_shares.py`).
    "IMGSVC_CONSUMER_USER_MAX_IN_FLIGHT": "1000",
}


@pytest.fixture(scope="session", autouse=True)
def _isolated_aws_env() -> Iterator[None]:
    """Nobody's ~/.aws or AWS_* variables may change what the tests see."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "IMGSVC_"))}
    for key in saved:
        del os.environ[key]
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    yield
    os.environ.pop("AWS_CONFIG_FILE")
    os.environ.pop("AWS_SHARED_CREDENTIALS_FILE")
    os.environ.update(saved)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with embedded_aws("127.0.0.1", 0, server="thread") as endpoint:  # in-process: inspectable
        yield endpoint


def env_for(endpoint: str, **overrides: str) -> dict[str, str]:
    """An environment with unique bucket and queue names, so tests never see each other's data."""
    tag = uuid.uuid4().hex[:10]
    env = {
        "IMGSVC_MODE": "embedded",
        "AWS_ENDPOINT_URL": endpoint,
        "IMGSVC_SOURCE_BUCKET": f"src-{tag}",
        "IMGSVC_DEST_BUCKET": f"dst-{tag}",
        "IMGSVC_QUEUE_NAME": f"events-{tag}",
        "IMGSVC_DLQ_NAME": f"dlq-{tag}",
        "IMGSVC_OUTBOX_NAME": f"hooks-{tag}",
        "IMGSVC_OUTBOX_DLQ_NAME": f"hooks-dlq-{tag}",
        "IMGSVC_TABLE_PREFIX": f"t-{tag}",
        "IMGSVC_INPUT_DIR": str(ROOT / "input"),
        # The session's moto is reached by the tests alone: it may take presigned uploads.
        "IMGSVC_EMBEDDED_TRUSTED": "true",
        **FAST,
    }
    env.update(overrides)
    return env


def on_local(node: pytest.Item | pytest.Collector) -> bool:
    """Whether a test runs on the local backend: `@pytest.mark.backend("local")` on it, its class
    or its module (what needs AWS's own behaviour is marked `backend("aws")` inside such a module)."""
    marker = node.get_closest_marker("backend")
    return marker is not None and marker.args == ("local",)


@pytest.fixture
def make_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a stack of the test's own: each call names new resources (on moto) or a new
    data directory (on the local backend), so two calls never share data."""
    if on_local(request.node):
        count = itertools.count()
        return lambda **overrides: local_settings(tmp_path / f"data-{next(count)}", **overrides)
    endpoint: str = request.getfixturevalue("moto_endpoint")
    return lambda **overrides: Settings.from_env(env_for(endpoint, **overrides))


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


#: The resources (by source bucket name) this session has provisioned already.
_PROVISIONED: set[str] = set()


async def provision_with_users(clients: AwsClients, settings: Settings) -> None:
    """Provision, and create the demo users as the embedded stack does: an object put straight
    into the source bucket is processed only under a known user's id."""
    await provision(clients, settings)
    _PROVISIONED.add(settings.aws.source_bucket)
    accounts = Accounts(Tables(clients.dynamodb, settings.aws))
    for user_id in SEED_USER_IDS:
        await accounts.create_user(user_id)


@pytest.fixture
async def clients(settings: Settings) -> AsyncIterator[AwsClients]:
    """Clients for the test's own resources, provisioned, with the demo users."""
    async with open_clients(settings.aws) as opened:
        await provision_with_users(opened, settings)
        yield opened


ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@dataclass
class Backend:
    """The storage and queues of one backend, provisioned with a test's unique names."""

    name: str
    settings: Settings
    storage: Any  # Storage | LocalStorage: the same methods
    main: Any  # Queue | LocalQueue
    dlq: Any
    tables: Any  # Tables | LocalTables
    ports: Any  # the pipeline.backends.Backend the others come from


def local_settings(data_dir: Path, **overrides: str) -> Settings:
    """Settings for the local backend on `data_dir` (no moto), with the tests' fast consumer."""
    return Settings.from_env(
        {"IMGSVC_DATA_DIR": str(data_dir), "IMGSVC_INPUT_DIR": str(ROOT / "input"), **FAST, **overrides}
    )


@pytest.fixture(params=[pytest.param("aws", marks=pytest.mark.moto), "local"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each contract test runs once against the AWS backend (moto) and once against the local one."""
    if request.param == "aws":
        # Its own moto settings, also in a module whose `settings` are the local backend's.
        settings = Settings.from_env(env_for(request.getfixturevalue("moto_endpoint")))
        async with open_clients(settings.aws) as clients:
            await provision(clients, settings)
            ports = await aws_backend(clients, settings)
            for message in await ports.main.receive(10, 0):  # S3's test event for the notification
                await ports.main.delete(message.receipt_handle)
            yield Backend("aws", settings, ports.storage, ports.main, ports.dlq, ports.tables, ports)
        return
    settings = local_settings(tmp_path / "data")
    async with open_local(settings) as ports:
        yield Backend("local", settings, ports.storage, ports.main, ports.dlq, ports.tables, ports)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the session's moto server are marked `moto` (`make test-fast` leaves them out)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "moto_endpoint" in names or ("make_settings" in names and not on_local(item)):
            item.add_marker(pytest.mark.moto)


async def issue_key(app: web.Application, user_id: str) -> str:
    """A fresh API key for `user_id` (created if need be), through the app's own account store."""
    accounts = app[ACCOUNTS]
    await accounts.create_user(user_id)
    return (await accounts.issue_key(user_id)).key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Start the real app on a real localhost port and return an HTTP client for it, sending an
    API key of `user` (default `USER`; None: no key) with every request."""
    started: list[TestClient[Any, Any]] = []

    async def make(app_settings: Settings, user: str | None = USER) -> TestClient[Any, Any]:
        app = create_app(app_settings)
        # Provisioning again what a fixture just provisioned costs ~20 requests to moto per test.
        app[PROVISIONED] = app_settings.aws.source_bucket in _PROVISIONED
        app[VARIANT_POOL] = await shared_pool(app_settings, variants=True)
        server = GuardedTestServer(app, app_settings.web, host="127.0.0.1")
        await server.start_server()  # provisions (embedded mode) if need be, so keys can be issued
        headers = bearer(await issue_key(server.app, user)) if user else {}
        client: TestClient[Any, Any] = TestClient(server, headers=headers)
        await client.start_server()
        started.append(client)
        return client

    yield make
    for client in reversed(started):
        await client.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """A webhook receiver on 127.0.0.1 (`tests.webhook_receiver`)."""
    async with serving() as found:
        yield found


@pytest.fixture
async def second_receiver() -> AsyncIterator[Receiver]:
    async with serving() as found:
        yield found


@pytest.fixture
async def api(settings: Settings, make_client: ClientFactory) -> TestClient[Any, Any]:
    """The API without an in-process consumer (tests drive the consumer themselves)."""
    return await make_client(settings)


_POOLS: dict[tuple[int, int], WorkerPool] = {}


async def shared_pool(settings: Settings, *, variants: bool = False) -> WorkerPool:
    """One worker pool per shape for the whole session: starting worker processes (imports of
    pyvips and Pillow included) for every short consumer, or every app's variants, cost seconds
    per test. `variants`: the shape of the app's variant pool rather than the consumer's."""
    consumer = settings.consumer
    shape = (settings.variants.workers, 1) if variants else (consumer.workers, consumer.worker_threads)
    if shape not in _POOLS:
        _POOLS[shape] = WorkerPool(*shape)
        await _POOLS[shape].warm_up()
    return _POOLS[shape]


async def consume(backend: Backend) -> dict[str, int]:
    """Run a short consumer on `backend` until its queue is drained; the outcomes it counted."""
    pool = await shared_pool(backend.settings)
    async with open_consumer(backend.ports, backend.settings, burst=True, pool=pool) as consumer:
        return dict((await consumer.run()).outcomes)


@asynccontextmanager
async def shared_consumer(
    clients: AwsClients, settings: Settings, *, burst: bool = False
) -> AsyncIterator[Consumer]:
    """A consumer on the session's shared worker pool (tests that kill workers open their own)."""
    backend = await aws_backend(clients, settings)
    async with open_consumer(backend, settings, burst=burst, pool=await shared_pool(settings)) as consumer:
        yield consumer


async def run_consumer_until_drained(
    clients: AwsClients, settings: Settings, timeout: float = 30
) -> dict[str, int]:
    """Run a burst consumer: returns once the queue is empty and nothing is in flight."""
    async with shared_consumer(clients, settings, burst=True) as consumer:
        async with asyncio.timeout(timeout):
            stats = await consumer.run()
    return dict(stats.outcomes)


async def record_of(clients: AwsClients, settings: Settings, key: str) -> ImageRecord | None:
    """The image record of a source key, as every process sees it."""
    return await RecordStore(Tables(clients.dynamodb, settings.aws).images).read(ImageRef(key))


async def status_of(clients: AwsClients, settings: Settings, key: str) -> dict[str, Any]:
    """The record of a source key as a plain dict: `state`, `source_etag`, `error`, `renditions`."""
    return _status(key, await record_of(clients, settings, key))


def _status(key: str, record: ImageRecord | None) -> dict[str, Any]:
    assert record is not None, f"no record for {key}"
    return {
        "state": record.state,
        "source_etag": record.source_etag,
        "error": record.error,
        "renditions": record.renditions,
        "info": record.item.get("info"),
    }


async def dlq_messages(clients: AwsClients, settings: Settings) -> list[Message]:
    """Everything in the DLQ (peeked with a short visibility timeout)."""
    dlq = await Queue.named(clients.sqs, settings.aws.dlq_name)
    seen: dict[str, Message] = {}
    for _ in range(5):
        for message in await dlq.receive(10, wait_seconds=0, visibility_timeout=1):
            seen[message.id] = message
    return list(seen.values())


@asynccontextmanager
async def consumer_on(
    settings: Settings, *, burst: bool = True, wrap: Callable[[Any], Any] | None = None
) -> AsyncIterator[Consumer]:
    """A consumer on `settings`' stack (either backend), on the session's shared worker pool;
    `wrap` changes its ports first (`tests.support.faults`)."""
    pool = await shared_pool(settings)
    async with open_backend(settings) as opened:
        ports = wrap(opened) if wrap is not None else opened
        async with open_consumer(ports, settings, burst=burst, pool=pool) as consumer:
            yield consumer


async def drain(
    settings: Settings, timeout: float = 30, wrap: Callable[[Any], Any] | None = None
) -> dict[str, int]:
    """Run a burst consumer on `settings`' stack (either backend) until its queue is drained; the
    outcomes it counted."""
    async with consumer_on(settings, wrap=wrap) as consumer:
        async with asyncio.timeout(timeout):
            return dict((await consumer.run()).outcomes)


async def record_in(settings: Settings, key: str) -> ImageRecord | None:
    """The image record of a source key (None: there is none), on either backend."""
    async with open_backend(settings) as ports:
        return await RecordStore(ports.tables.images).read(ImageRef(key))


async def state_in(settings: Settings, key: str) -> dict[str, Any]:
    """`status_of` on `settings`' stack, either backend."""
    return _status(key, await record_in(settings, key))


async def object_in(settings: Settings, key: str, bucket: str | None = None) -> tuple[ObjectMeta, bytes]:
    """An object's metadata and bytes on `settings`' stack, either backend (the source bucket's
    unless `bucket` is named)."""
    async with open_backend(settings) as ports:
        meta, chunks = await ports.storage.stream(bucket or settings.aws.source_bucket, key)
        return meta, b"".join([chunk async for chunk in chunks])


async def keys_in(settings: Settings, bucket: str | None = None, prefix: str = "") -> list[str]:
    """Every key in a bucket of `settings`' stack (the source bucket's unless named)."""
    keys: list[str] = []
    async with open_backend(settings) as ports:
        async for page in ports.storage.list_objects(bucket or settings.aws.source_bucket, prefix):
            keys += [listed.key for listed in page]
    return keys


async def stored_nothing(settings: Settings) -> None:
    """Nothing in the source bucket and no event queued, on `settings`' stack (either backend);
    on AWS no multipart upload left open either (the local backend has none to leave)."""
    async with open_backend(settings) as ports:
        async for page in ports.storage.list_objects(settings.aws.source_bucket, ""):
            assert [listed.key for listed in page] == []
        queued = await ports.main.receive(10, 0)
        events = [parse_message(message.body) for message in queued]
        assert all(event.test_event for event in events), events
    if settings.aws.data_dir is None:
        async with open_clients(settings.aws) as clients:
            uploads = await clients.s3.list_multipart_uploads(Bucket=settings.aws.source_bucket)
            assert uploads.get("Uploads", []) == []


async def dead_lettered(settings: Settings) -> list[Message]:
    """Everything in the DLQ of `settings`' stack, either backend (peeked: briefly invisible)."""
    seen: dict[str, Message] = {}
    async with open_backend(settings) as ports:
        for _ in range(5):
            for message in await ports.dlq.receive(10, 0, visibility_timeout=1):
                seen[message.id] = message
    return list(seen.values())


def process_env(**extra: str) -> dict[str, str]:
    """A clean environment for a child process: no AWS profile of the machine, fast polling."""
    return {
        "PATH": os.environ["PATH"],
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "IMGSVC_CONSUMER_WAIT_TIME_SECONDS": "1",
        "IMGSVC_CONSUMER_WORKERS": "1",
        "IMGSVC_METRICS_PORT": "0",
        "IMGSVC_ADMIN_PORT": "0",
        "IMGSVC_WORKERS": "1",  # one process, consumer included, unless a test asks for more
        "IMGSVC_LOG_FORMAT": "text",
        **extra,
    }


def settings_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes a child process use `settings`' endpoint and resources."""
    aws = settings.aws
    assert aws.endpoint_url is not None
    return process_env(
        AWS_ENDPOINT_URL=aws.endpoint_url,
        IMGSVC_MODE="embedded",
        IMGSVC_SOURCE_BUCKET=aws.source_bucket,
        IMGSVC_DEST_BUCKET=aws.dest_bucket,
        IMGSVC_QUEUE_NAME=aws.queue_name,
        IMGSVC_DLQ_NAME=aws.dlq_name,
        IMGSVC_OUTBOX_NAME=aws.outbox_name,
        IMGSVC_OUTBOX_DLQ_NAME=aws.outbox_dlq_name,
        IMGSVC_TABLE_PREFIX=aws.table_prefix,
        IMGSVC_CONSUMER_VISIBILITY_TIMEOUT=str(settings.consumer.visibility_timeout),
        **extra,
    )


async def start(*args: str, env: dict[str, str], stdout: int = subprocess.PIPE) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.PIPE
    )


@asynccontextmanager
async def running(
    *args: str, env: dict[str, str], stdout: int = subprocess.PIPE
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process that is killed if the test leaves it running."""
    process = await start(*args, env=env, stdout=stdout)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def stops_cleanly(process: asyncio.subprocess.Process, timeout: float = 30) -> bool:
    """SIGTERM the process; True when it exits 0 within `timeout`."""
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(timeout):
        return await process.wait() == 0


def run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        env=process_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def sqs_event(
    clients: AwsClients,
    settings: Settings,
    count: int,
    receive_count: int | None = None,
    *,
    queue_name: str | None = None,
) -> dict[str, Any]:
    """What Lambda's SQS event source hands the function: the queue's real messages (the S3
    events' queue, or the one named)."""
    name = queue_name or settings.aws.queue_name
    queue = await Queue.named(clients.sqs, name)
    messages: dict[str, Any] = {}
    async with asyncio.timeout(20):
        while len(messages) < count:
            for m in await queue.receive(10, wait_seconds=1, visibility_timeout=60):
                if "TestEvent" not in m.body:
                    messages[m.id] = m
    return {
        "Records": [
            {
                "messageId": m.id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": {"ApproximateReceiveCount": str(receive_count or m.receive_count)},
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{settings.aws.region}:123456789012:{name}",
            }
            for m in messages.values()
        ]
    }


async def queued_events(clients: AwsClients, settings: Settings) -> list[str]:
    """Event names of everything now in the queue (peeked)."""
    url = (await clients.sqs.get_queue_url(QueueName=settings.aws.queue_name))["QueueUrl"]
    found = await clients.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0)
    names = []
    for message in found.get("Messages", []):
        parsed = parse_message(message["Body"])
        names += ["TestEvent"] if parsed.test_event else [r.event_name for r in parsed.created]
    return names


async def nothing_stored(clients: AwsClients, settings: Settings) -> None:
    listed = await clients.s3.list_objects_v2(Bucket=settings.aws.source_bucket)
    assert listed.get("KeyCount", 0) == 0
    uploads = await clients.s3.list_multipart_uploads(Bucket=settings.aws.source_bucket)
    assert uploads.get("Uploads", []) == []
    assert all(name == "TestEvent" for name in await queued_events(clients, settings))


def sync_s3(endpoint: str) -> Any:
    """A plain boto3 S3 client on `endpoint`, as any other tool would use the service's buckets."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def jpeg_bytes(width: int, height: int, **save: Any) -> bytes:
    """A JPEG with a gradient, so resizing has something to average."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions but has no pixel data: a decompression bomb's header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.fixture(scope="session", autouse=True)
def _quiet_libraries() -> None:
    """moto's request log drowns the service's own lines in failure reports."""
    import logging

    for name in ("werkzeug", "botocore", "aiobotocore", "moto"):
        logging.getLogger(name).setLevel(logging.WARNING)


@pytest.fixture(scope="session", autouse=True)
async def _event_loop_debug() -> AsyncIterator[None]:
    """With IMGSVC_TEST_LOOP_DEBUG=1, run the session loop in asyncio debug mode and log every
    callback that holds the loop for more than 100 ms (`Executing ... took ...`).

    The loop is switched to debug mode directly, not through PYTHONASYNCIODEBUG, because that
    variable also makes aiohttp's HTTP parser strict, and moto's error responses repeat `Server`.
    """
    if os.environ.get("IMGSVC_TEST_LOOP_DEBUG") == "1":
        loop = asyncio.get_running_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = 0.1
    yield


_EXIT_STATUS: list[int] = [0]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _EXIT_STATUS[0] = int(exitstatus)
    for pool in _POOLS.values():
        pool.close()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without tearing the interpreter down: freeing the heap moto built over the session
    (every test's buckets, queues and tables) took over a minute after the last test had run.
    Everything of ours is closed by then (fixtures, servers, child processes) and the report is
    written; the exit status is pytest's own."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[0])
