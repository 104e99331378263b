"""The process pool that runs imaging off the event loop, and the typed helper to call it.

Built on pebble's `ProcessPool`, because a job's timeout must start when the job starts (not
when it was queued behind others) and must kill only the worker running it: with
`concurrent.futures`, a stuck job can only be stopped by killing the whole pool, which fails
every job running beside it and cancels the queued ones, so one bad image hurts innocent ones.
Here a crashed or timed-out worker is replaced alone and only its own job fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from pebble import ProcessExpired, ProcessPool

from pipeline import metrics, tasks
from pipeline.errors import JobTimeout, WorkerCrashed

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
P = ParamSpec("P")
R = TypeVar("R")


class WorkerPool:
    """Worker processes for imaging; each job has its own timeout and its own failure."""

    def __init__(self, workers: int, threads: int = 0) -> None:
        self._workers = workers
        # Decoder threads per worker: together the workers use the cores, not cores² threads.
        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        # spawn: children never inherit the event loop's (or moto's) threads.
        self._pool = ProcessPool(
            max_workers=workers,
            initializer=_init_worker,
            initargs=(threads,),
            context=multiprocessing.get_context("spawn"),
        )
        #: Workers replaced because their job crashed them or ran out of time.
        self.restarts = 0

    async def run(self, timeout: float, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn(*args, **kwargs)` in a worker process within `timeout` seconds of its start.

        Raises `JobTimeout` (the worker is killed) or `WorkerCrashed` (it died), both transient;
        cancelling the caller stops the job's worker too, so cancelled work does not grind on.
        """
        future: concurrent.futures.Future[R] = self._pool.schedule(
            fn, args=args, kwargs=kwargs, timeout=timeout
        )
        try:
            return await asyncio.wrap_future(future)
        except TimeoutError:
            self._replaced("timeout")
            raise JobTimeout(f"processing took longer than {timeout:g}s") from None
        except ProcessExpired as exc:
            self._replaced("crash")
            raise WorkerCrashed(f"the image worker process died (exit code {exc.exitcode})") from None
        except asyncio.CancelledError:
            future.cancel()  # pebble stops the worker if the job is running
            raise

    def _replaced(self, why: str) -> None:
        self.restarts += 1
        metrics.POOL_RESTARTS.inc()
        log.warning("imaging worker replaced reason=%s replacements=%d", why, self.restarts)

    async def warm_up(self) -> None:
        """Start every worker now (imports included), so the first jobs do not pay for it."""
        await asyncio.gather(*(self.run(120, os.getpid) for _ in range(self._workers)))

    def pids(self) -> list[int]:
        """Process ids of the live workers (for operators and fault tests)."""
        workers: dict[int, Any] = self._pool._pool_manager.worker_manager.workers  # no public API
        return [pid for pid, process in list(workers.items()) if process.is_alive()]

    def close(self) -> None:
        """Stop the workers; jobs still running are killed (callers drain before closing)."""
        self._pool.stop()  # type: ignore[no-untyped-call]
        self._pool.join(timeout=10)


def _init_worker(threads: int) -> None:
    """Runs first in every worker: die with the parent, then set up the imaging libraries."""
    _die_with_parent()
    tasks.configure_worker(threads)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when its parent dies, even by SIGKILL.

    Without it a killed consumer leaves its workers blocked forever on the task queue, holding
    memory and the parent's stdout/stderr. Other systems keep the default behaviour.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        log.warning("cannot tie worker %d to its parent's life", os.getpid())
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


class InlineRunner:
    """Runs imaging in a thread of this process, for AWS Lambda, where process pools cannot run
    (no /dev/shm) and one invocation is one container anyway. Lambda's own timeout bounds it."""

    def __init__(self, threads: int = 1) -> None:
        tasks.configure_worker(threads)  # imports imaging into this process: here, by design

    async def run(self, timeout: float, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(fn, *args, **kwargs)
        except TimeoutError:
            raise JobTimeout(f"processing took longer than {timeout:g}s") from None
