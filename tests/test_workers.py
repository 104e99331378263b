"""The worker pool survives crashed and stuck workers, and says so with transient errors."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterator

import pytest

from config.settings import ImagingSettings
from pipeline.core.errors import JobTimeout, WorkerCrashed
from pipeline.imaging.tasks import make_renditions
from pipeline.imaging.workers import WorkerPool, resident_bytes
from tests.support.images import jpeg_bytes

pytestmark = pytest.mark.e2e


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


async def test_a_timeout_kills_only_the_worker_of_its_own_job() -> None:
    """A stuck job and a slow-but-fine job side by side: the stuck one times out and its worker
    is killed; the other, on the other worker, finishes unharmed."""
    pool = WorkerPool(2)
    try:
        await pool.warm_up()
        stuck = asyncio.ensure_future(pool.run(1, time.sleep, 60))
        fine = asyncio.ensure_future(pool.run(30, _slow_square, 7, 2.5))
        with pytest.raises(JobTimeout):
            await stuck
        assert await fine == 49
        assert pool.restarts == 1
    finally:
        pool.close()


async def test_a_job_timeout_starts_when_the_job_starts(pool: WorkerPool) -> None:
    """One worker, three jobs of 0.8 s each queued at once, each with a 1.5 s timeout: the last
    one waits 1.6 s for the worker before it starts, and still must not time out."""
    await pool.warm_up()
    results = await asyncio.gather(*(pool.run(1.5, _slow_square, n, 0.8) for n in range(3)))
    assert results == [0, 1, 4]
    assert pool.restarts == 0


def _slow_square(n: int, seconds: float) -> int:
    time.sleep(seconds)
    return n * n


async def test_a_pool_whose_workers_all_die_while_idle_is_replaced() -> None:
    """pebble declares its whole pool broken when every worker dies with no job to blame (the OOM
    killer taking them all at once): at most one job sees that (transient), the next get a new pool."""
    pool = WorkerPool(2)
    try:
        await pool.warm_up()
        for pid in pool.pids():
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)  # pebble notices
        outcomes: list[int | None] = []
        for _ in range(3):
            try:
                result = await pool.run(30, make_renditions, jpeg_bytes(300, 200), ImagingSettings())
                outcomes.append(result.renditions[0].width)
            except WorkerCrashed:
                outcomes.append(None)
        assert outcomes[1:] == [256, 256] and outcomes.count(None) <= 1
    finally:
        pool.close()


async def _width_or_crash(pool: WorkerPool) -> int | None:
    try:
        return (
            (await pool.run(30, make_renditions, jpeg_bytes(300, 200), ImagingSettings())).renditions[0].width
        )
    except WorkerCrashed:
        return None


async def test_jobs_queued_when_the_whole_pool_dies_all_resolve() -> None:
    """A broken pebble pool aborts only the jobs it had registered; the ones still in its queue
    must fail too (and so be retried), not hang their messages until the visibility timeout.

    A race, so tried in rounds: jobs arrive at random moments around the kill of every worker
    (before the fix, about one round in twelve left a job hanging forever). A worker killed
    between taking a job and acknowledging it loses the job inside pebble (about one round in
    fifty beside a busy neighbour): the pickup deadline fails it instead."""
    pool = WorkerPool(2, pickup_timeout=5)
    rng = random.Random(12)

    async def later(delay: float) -> int | None:
        await asyncio.sleep(delay)
        return await _width_or_crash(pool)

    try:
        await pool.warm_up()
        for _ in range(16):
            jobs = [asyncio.create_task(later(rng.random() * 0.3)) for _ in range(8)]
            await asyncio.sleep(rng.random() * 0.3)
            for pid in pool.pids():
                os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(20):
                outcomes = await asyncio.gather(*jobs)
            assert set(outcomes) <= {256, None}
        assert await _width_or_crash(pool) == 256  # and the pool serves again
    finally:
        pool.close()


#: A job that leaves 300 MB of the heap free but scattered (every 100th of 300,000 1 KB blocks
#: kept): without handing free pages back, the worker would keep them resident.
SCATTERED = "import builtins; x = [bytes(1000) for _ in range(300_000)]; builtins.kept = x[::100]; del x"
#: A job that keeps 300 MB alive in the worker (a leak).
LEAK = "import builtins; builtins.leak = [bytes(1000) for _ in range(300_000)]"


async def test_a_worker_gives_back_what_a_large_job_freed() -> None:
    pool = WorkerPool(1)
    try:
        await pool.run(30, exec, SCATTERED)
        (pid,) = pool.pids()
        assert resident_bytes(pid) < 150 * 1024 * 1024
    finally:
        pool.close()


async def test_a_worker_above_its_memory_bound_is_replaced_and_no_job_fails() -> None:
    pool = WorkerPool(1, max_rss=200 * 1024 * 1024)
    try:
        await pool.run(30, time.sleep, 0)
        (bloated,) = pool.pids()
        await pool.run(30, exec, LEAK)
        # The next job runs in a new worker; the bloated one exits once idle.
        assert await pool.run(30, os.getpid) != bloated
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(bloated):
            await asyncio.sleep(0.1)
        assert not _alive(bloated)
    finally:
        pool.close()


async def test_a_worker_is_replaced_after_its_jobs() -> None:
    pool = WorkerPool(1, max_jobs=3)
    try:
        pids = [await pool.run(30, os.getpid) for _ in range(7)]
        assert len(set(pids)) == 3 and pids[:3] == [pids[0]] * 3
    finally:
        pool.close()
