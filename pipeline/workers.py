"""The process pool that runs imaging off the event loop, and the typed helper to call it."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import ParamSpec, TypeVar

from pipeline import metrics, tasks
from pipeline.errors import JobTimeout, WorkerCrashed

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
P = ParamSpec("P")
R = TypeVar("R")


class WorkerPool:
    """A `ProcessPoolExecutor` that replaces itself when a worker dies.

    A crashed worker (segfault, OOM kill) breaks the whole executor; the job that saw it fails
    as `WorkerCrashed` (transient, so retried) and later jobs get a fresh pool.
    """

    def __init__(self, workers: int, threads: int = 0) -> None:
        self._workers = workers
        # Decoder threads per worker: together the workers use the cores, not cores² threads.
        self._threads = threads or max(1, (os.cpu_count() or 1) // workers)
        # spawn: children never inherit the event loop's (or moto's) threads, and they are our
        # direct children, so they can be tied to our life (see `_init_worker`).
        self._context = multiprocessing.get_context("spawn")
        self._executor = self._new_executor()
        self.restarts = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(self._threads,),
        )

    async def run(self, timeout: float, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn(*args, **kwargs)` in a worker process, raising transient errors on crash or timeout."""
        executor = self._executor
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                return await loop.run_in_executor(executor, partial(fn, *args, **kwargs))
        except TimeoutError:
            # CPU work cannot be cancelled: the worker still grinds on, so its process is killed.
            # Jobs sharing that executor fail as WorkerCrashed and are retried.
            self._replace(executor, kill=True)
            raise JobTimeout(f"processing took longer than {timeout:g}s") from None
        except BrokenProcessPool:
            self._replace(executor)
            raise WorkerCrashed() from None

    async def warm_up(self) -> None:
        """Start every worker now (imports included), so the first jobs do not pay for it."""
        loop = asyncio.get_running_loop()
        executor = self._executor
        await asyncio.gather(*(loop.run_in_executor(executor, os.getpid) for _ in range(self._workers)))

    def pids(self) -> list[int]:
        """Process ids of the live workers (for operators and fault tests)."""
        processes = getattr(self._executor, "_processes", None) or {}
        return [p.pid for p in processes.values() if p.is_alive()]

    def _replace(self, broken: ProcessPoolExecutor, *, kill: bool = False) -> None:
        if broken is not self._executor:  # several jobs see the same failure; replace once
            return
        log.warning("replacing the worker pool restarts=%d killed=%s", self.restarts + 1, kill)
        self.restarts += 1
        metrics.POOL_RESTARTS.inc()
        self._executor = self._new_executor()
        if kill:
            # No public API stops a running worker; the executor's process table is the way in.
            for process in list((getattr(broken, "_processes", None) or {}).values()):
                process.kill()
        broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


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
