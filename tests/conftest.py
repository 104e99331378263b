"""Shared fixtures: one real moto server per session, unique resources per test, real HTTP.
The helpers the tests import are in `tests/support/`; only pytest's hooks and fixtures are here."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from pipeline.aws.clients import AwsClients, open_clients
from pipeline.backends import open_backend
from pipeline.local.backend import open_local
from tests.support import ministack, seaweedfs
from tests.support.backends import Backend, aws_stack, provision_with_users, provisioned
from tests.support.browser import browser, make_session, ui_session  # noqa: F401 (the browser tier's fixtures)
from tests.support.clients import ClientFactory, bearer, issue_key
from tests.support.consumers import close_pools, shared_pool
from tests.support.servers import GuardedTestServer
from tests.support.settings import USER, env_for, local_settings, on_local
from tests.webhook_receiver import Receiver, serving
from web.app import create_app
from web.keys import PROVISIONED, VARIANT_POOL

# `make test-fast` (the inner loop) tries fewer examples of each property; `make test` and CI the
# default hundred.
hypothesis.settings.register_profile("fast", max_examples=30)

# moto keeps every test's buckets, queues and tables in this process: with the default thresholds
# the collector re-scans that growing heap so often that it took a fifth of the suite's time
# (45 s of 212 s in a measured subset; 19 s with these).
gc.set_threshold(100_000, 50, 1000)


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
    from pipeline.aws.embedded import embedded_aws  # moto: only in workers that run such a test

    with embedded_aws("127.0.0.1", 0, server="thread") as endpoint:  # in-process: inspectable
        yield endpoint


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


@pytest.fixture
async def clients(settings: Settings) -> AsyncIterator[AwsClients]:
    """Clients for the test's own resources, provisioned, with the demo users."""
    async with open_clients(settings.aws) as opened:
        await provision_with_users(opened, settings)
        yield opened


@pytest.fixture(scope="session")
def ministack_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MiniStack, the second AWS emulator (`tests.support.ministack`), one per test process."""
    if not ministack.available():
        pytest.fail(f"MiniStack is missing at {ministack.EXECUTABLE}: run `make ministack` (make test does)")
    with ministack.ministack(tmp_path_factory.mktemp("ministack") / "ministack.log") as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def seaweedfs_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SeaweedFS's S3 gateway (`tests.support.seaweedfs`), one per test process."""
    if not seaweedfs.available():
        pytest.fail(f"SeaweedFS is missing at {seaweedfs.EXECUTABLE}: run `make seaweedfs` (make test does)")
    with seaweedfs.seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint


@pytest.fixture(params=[pytest.param("aws", marks=pytest.mark.moto), "local"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Each contract test runs once against the AWS backend (moto) and once against the local one;
    the AWS backend's contract modules (`CONTRACT_TARGETS`) on MiniStack too."""
    if request.param in ("aws", "ministack"):
        # Its own settings, also in a module whose `settings` are the local backend's.
        emulator = "moto_endpoint" if request.param == "aws" else "ministack_endpoint"
        endpoint = request.getfixturevalue(emulator)
        async with aws_stack(request.param, endpoint) as stack:
            yield stack
        if request.param == "ministack":
            await asyncio.to_thread(ministack.reset, endpoint)
        return
    if request.param == "seaweedfs":  # its objects there, its queues and tables on moto
        objects = seaweedfs.settings_env(request.getfixturevalue("seaweedfs_endpoint"))
        async with aws_stack("seaweedfs", request.getfixturevalue("moto_endpoint"), **objects) as stack:
            yield stack
        return
    if request.param == "seaweedfs-local":  # its objects there, the rest in a data directory
        tag = uuid.uuid4().hex[:10]
        objects = seaweedfs.settings_env(request.getfixturevalue("seaweedfs_endpoint"), notifications=None)
        buckets = {"IMGSVC_SOURCE_BUCKET": f"src-{tag}", "IMGSVC_DEST_BUCKET": f"dst-{tag}"}
        settings = local_settings(tmp_path / "data", **objects, **buckets)
        async with open_backend(settings, provision_first=True) as ports:
            yield Backend(request.param, settings, ports.storage, ports.main, ports.dlq, ports.tables, ports)
        return
    settings = local_settings(tmp_path / "data")
    async with open_local(settings) as ports:
        yield Backend("local", settings, ports.storage, ports.main, ports.dlq, ports.tables, ports)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the session's moto server are marked `moto` (`make test-fast` leaves them out)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        callspec = getattr(item, "callspec", None)
        on_aws = callspec is not None and callspec.params.get("backend") == "aws"  # also when indirect
        if "moto_endpoint" in names or on_aws or ("make_settings" in names and not on_local(item)):
            item.add_marker(pytest.mark.moto)


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Start the real app on a real localhost port and return an HTTP client for it, sending an
    API key of `user` (default `USER`; None: no key) with every request."""
    started: list[TestClient[Any, Any]] = []

    async def make(app_settings: Settings, user: str | None = USER) -> TestClient[Any, Any]:
        app = create_app(app_settings)
        # Provisioning again what a fixture just provisioned costs ~20 requests to moto per test.
        app[PROVISIONED] = provisioned(app_settings)
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
    close_pools()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without tearing the interpreter down: freeing the heap moto built over the session
    (every test's buckets, queues and tables) took over a minute after the last test had run.
    Everything of ours is closed by then (fixtures, servers, child processes) and the report is
    written; the exit status is pytest's own."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[0])
