"""The process pool that runs imaging off the event loop, and the typed helper to call it."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import ParamSpec, TypeVar

from pipeline.errors import JobTimeout, WorkerCrashed

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


class WorkerPool:
    """A `ProcessPoolExecutor` that replaces itself when a worker dies.

    A crashed worker (segfault, OOM kill) breaks the whole executor; the job that saw it fails
    as `WorkerCrashed` (transient, so retried) and later jobs get a fresh pool.
    """

    def __init__(self, workers: int) -> None:
        self._workers = workers
        # forkserver: children never inherit the event loop's or moto's threads; imaging is preloaded.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["pipeline.imaging"])
        self._executor = self._new_executor()
        self.restarts = 0

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self._workers, mp_context=self._context)

    async def run(self, timeout: float, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn(*args, **kwargs)` in a worker process, raising transient errors on crash or timeout."""
        executor = self._executor
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                return await loop.run_in_executor(executor, partial(fn, *args, **kwargs))
        except TimeoutError:
            raise JobTimeout(f"processing took longer than {timeout:g}s") from None
        except BrokenProcessPool:
            self._replace(executor)
            raise WorkerCrashed() from None

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        if broken is self._executor:  # several jobs see the same crash; replace once
            log.warning("worker pool broken, replacing it restarts=%d", self.restarts + 1)
            self.restarts += 1
            self._executor = self._new_executor()
            broken.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
