"""The worker pool survives crashed and stuck workers, and says so with transient errors."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from config.settings import ImagingSettings
from pipeline.errors import JobTimeout, WorkerCrashed
from pipeline.tasks import make_renditions
from pipeline.workers import WorkerPool
from tests.conftest import jpeg_bytes


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    workers = WorkerPool(1)
    yield workers
    workers.close()


async def test_runs_imaging_in_another_process(pool: WorkerPool) -> None:
    result = await pool.run(30, make_renditions, jpeg_bytes(800, 600), ImagingSettings())
    assert result.renditions[0].width == 256
    assert pool.pids() and os.getpid() not in pool.pids()


async def test_crashed_worker_is_replaced(pool: WorkerPool) -> None:
    with pytest.raises(WorkerCrashed):
        await pool.run(30, os._exit, 1)  # what a segfault or the OOM killer looks like from here
    assert pool.restarts == 1
    result = await pool.run(30, make_renditions, jpeg_bytes(300, 200), ImagingSettings())
    assert result.renditions[0].width == 256


async def test_stuck_worker_is_killed_on_timeout(pool: WorkerPool) -> None:
    await pool.run(30, time.sleep, 0)  # start the worker so there is a pid to watch
    (stuck_pid,) = pool.pids()
    started = time.monotonic()
    with pytest.raises(JobTimeout):
        await pool.run(0.5, time.sleep, 60)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(stuck_pid):
        await asyncio.sleep(0.05)
    assert not _alive(stuck_pid)
    assert (await pool.run(30, make_renditions, jpeg_bytes(300, 200), ImagingSettings())).engine


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
