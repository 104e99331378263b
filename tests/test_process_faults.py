"""Consumer processes killed or stopped mid-batch: nothing is lost, nothing is left hanging."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
from collections.abc import Callable

import pytest
from PIL import Image

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from pipeline.aws.queue import Queue
from pipeline.backends import aws_backend
from pipeline.consumer.service import open_consumer
from tests.support.backends import provision_with_users
from tests.support.consumers import run_consumer_until_drained
from tests.support.processes import settings_env, start
from tests.support.settings import USER
from tests.support.state import dlq_messages, status_of

pytestmark = pytest.mark.e2e


async def fill(clients: AwsClients, settings: Settings, count: int) -> list[str]:
    """Queue `count` images that take a noticeable moment each (noise defeats JPEG shrink-on-load)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (2400, 1800), os.urandom(2400 * 1800 * 3)).save(out, "JPEG", quality=95)
    keys = [f"{USER}/p{i}" for i in range(count)]
    for key in keys:
        await clients.s3.put_object(Bucket=settings.aws.source_bucket, Key=key, Body=out.getvalue())
    return keys


async def wait_for_line(process: asyncio.subprocess.Process, pattern: str, timeout: float = 30) -> str:
    assert process.stderr is not None
    async with asyncio.timeout(timeout):
        while True:
            line = (await process.stderr.readline()).decode()
            assert line, "the process exited early"
            if re.search(pattern, line):
                return line


async def all_ready(clients: AwsClients, settings: Settings, keys: list[str]) -> None:
    for key in keys:
        assert (await status_of(clients, settings, key))["state"] == "ready", key


async def test_sigkill_mid_batch_then_restart_loses_nothing(
    make_settings: Callable[..., Settings], clients: AwsClients
) -> None:
    settings = make_settings(IMGSVC_CONSUMER_VISIBILITY_TIMEOUT="3")
    await provision_with_users(clients, settings)
    keys = await fill(clients, settings, 10)
    process = await start("-m", "pipeline", "consumer", env=settings_env(settings))
    await wait_for_line(process, r"outcome=ready")
    process.kill()  # SIGKILL: no drain, no release; in-flight messages must come back by themselves
    await process.wait()

    # The restarted consumer sees the killed one's messages again once their visibility expires.
    outcomes = await run_consumer_until_drained(clients, settings, timeout=90)
    assert outcomes.get("ready", 0) >= 1
    await all_ready(clients, settings, keys)
    assert await dlq_messages(clients, settings) == []


@pytest.mark.parametrize(
    ("drain_timeout", "count"),
    [("60", 6), ("0", 10)],  # time to finish everything; no time at all: release at once
)
async def test_sigterm_drains_or_releases_in_flight_work(
    make_settings: Callable[..., Settings], clients: AwsClients, drain_timeout: str, count: int
) -> None:
    # A visibility timeout far longer than the test: anything not released would stay hidden.
    settings = make_settings(IMGSVC_CONSUMER_VISIBILITY_TIMEOUT="120")
    await provision_with_users(clients, settings)
    keys = await fill(clients, settings, count)
    # One user's messages all run here (none deferred for its share: a deferred one is delayed
    # in the queue, on purpose, which this test would take for one left invisible).
    env = settings_env(
        settings, IMGSVC_CONSUMER_DRAIN_TIMEOUT=drain_timeout, IMGSVC_CONSUMER_USER_MAX_IN_FLIGHT="100"
    )
    process = await start("-m", "pipeline", "consumer", env=env)
    await wait_for_line(process, r"outcome=ready")
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode == 0
    released = json.loads(out.decode().strip().splitlines()[-1])["outcomes"].get("released", 0)
    assert (released >= 1) if drain_timeout == "0" else (released == 0)
    depth = await (await Queue.named(clients.sqs, settings.aws.queue_name)).depth()
    assert depth["in_flight"] == 0  # nothing left invisible by a process that is gone
    async with asyncio.timeout(30):
        await run_consumer_until_drained(clients, settings, timeout=30)
    await all_ready(clients, settings, keys)
    assert await dlq_messages(clients, settings) == []


def worker_pids() -> list[int]:
    """Our imaging workers: spawned children of this test process."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                is_worker = b"spawn_main" in cmdline.read()
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if parent == os.getpid() and is_worker:
            found.append(int(entry))
    return found


async def test_killed_worker_is_replaced_and_its_job_retried(
    make_settings: Callable[..., Settings], clients: AwsClients
) -> None:
    settings = make_settings(IMGSVC_CONSUMER_BACKOFF_BASE="0")
    await provision_with_users(clients, settings)
    keys = await fill(clients, settings, 6)
    async with open_consumer(await aws_backend(clients, settings), settings) as consumer:
        task = asyncio.create_task(consumer.run())
        async with asyncio.timeout(30):
            while consumer.stats.outcomes["ready"] < 1 or not worker_pids():
                await asyncio.sleep(0.02)
        # What the OOM killer does. A worker may be between jobs when it is killed (the job's
        # own reads and writes happen outside it): killed again until a job was cut.
        for _ in range(40):
            for pid in worker_pids():
                os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.05)
            if consumer.stats.outcomes["retry"] or consumer.stats.outcomes["ready"] >= len(keys):
                break
        async with asyncio.timeout(60):
            while consumer.stats.outcomes["ready"] < len(keys):
                await asyncio.sleep(0.05)
        consumer.stop()
        stats = await task
    assert stats.outcomes["retry"] >= 1  # the jobs on the killed worker failed as transient
    await all_ready(clients, settings, keys)
    assert await dlq_messages(clients, settings) == []
