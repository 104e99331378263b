"""The process pool that runs imaging off the event loop, and the typed helper to call it.

Built on pebble's `ProcessPool`, because a job's timeout must start when the job starts (not
when it was queued behind others) and must kill only the worker running it: with
`concurrent.futures`, a stuck job can only be stopped by killing the whole pool, which fails
every job running beside it and cancels the queued ones, so one bad image hurts innocent ones.
Here a crashed or timed-out worker is replaced alone and only its own job fails.

Workers also age: each runs at most `max_jobs` jobs (pebble's `max_tasks`) and hands the heap's
free memory back to the system after any job that left it large. A worker still above `max_rss`
after that (a decoder's arenas, fragmentation) gets the pool replaced gracefully: a new pool
takes the next jobs, the old one finishes what it runs and exits (nothing is killed).

pebble is not safe against every SIGKILL, though: a worker killed between taking a job off the
shared pipe and acknowledging it loses the job, and one killed while holding the pipe's lock
stalls the other workers. So jobs are handed to pebble only when a worker is free (never queued
inside it), and a job no worker picks up within `pickup_timeout` means the pool is wedged: it is
replaced and the job fails as transient, to be retried.
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
import weakref
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ParamSpec, TypeVar

from pebble import ProcessExpired, ProcessPool

from config.settings import usable_cpus
from pipeline.core import memory, metrics
from pipeline.core.errors import JobTimeout, WorkerCrashed
from pipeline.imaging import tasks
from pipeline.imaging.fair import FairQueue

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1
_POOL_POLL = 0.5  # seconds between looks at a job's pool while it is not done
_PICKUP_TIMEOUT = 30.0  # seconds a free worker may take to start a job (spawn + imports included)
P = ParamSpec("P")
R = TypeVar("R")


class PoolBroke(WorkerCrashed):
    """The whole pool failed, not the job's own worker: the job may run again on a new pool."""


class WorkerPool:
    """Worker processes for imaging; each job has its own timeout and its own failure."""

    #: A job that runs out of time is stopped (its worker killed): it writes nothing afterwards.
    stops_on_timeout = True

    def __init__(
        self,
        workers: int,
        threads: int = 0,
        pickup_timeout: float = _PICKUP_TIMEOUT,
        *,
        prepare: Callable[[], object] | None = None,
        max_jobs: int = 0,
        max_rss: int = 0,
    ) -> None:
        """`prepare`: run first in each worker, picklable (`Backend.prepare_reads`: the S3 client
        it reads originals with). `max_jobs`, `max_rss`: when a worker is replaced (0: never)."""
        self._workers = workers
        self._prepare = prepare
        self._max_jobs = max_jobs
        self._max_rss = max_rss
        self._pickup_timeout = pickup_timeout
        # One slot per worker and per event loop (tests run one pool under many loops), handed
        # out fairly across the jobs' owners (`pipeline.imaging.fair`).
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FairQueue] = (
            weakref.WeakKeyDictionary()
        )
        # Decoder threads per worker: together the workers use the cores, not cores² threads.
        self._threads = threads or max(1, usable_cpus() // workers)
        self._pool = self._new_pool()
        self._retired: set[asyncio.Task[None]] = set()
        #: Workers replaced because their job crashed them or ran out of time.
        self.restarts = 0

    def _new_pool(self) -> ProcessPool:
        # spawn: children never inherit the event loop's (or moto's) threads.
        return ProcessPool(
            max_workers=self._workers,
            max_tasks=self._max_jobs,
            initializer=_init_worker,
            initargs=(self._threads, self._prepare, os.getpid()),
            context=multiprocessing.get_context("spawn"),
        )

    async def run(self, timeout: float, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run `fn(*args, **kwargs)` in a worker process within `timeout` seconds of its start.

        Raises `JobTimeout` (the worker is killed) or `WorkerCrashed` (it died), both transient;
        cancelling the caller stops the job's worker too, so cancelled work does not grind on.
        """
        return await self.run_for("", timeout, fn, *args, **kwargs)

    async def run_for(
        self, owner: str, timeout: float, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """`run`, for a job of `owner`: while every worker is busy, the owners waiting take the
        next free worker in turn, so one owner's backlog delays another's job by at most one job."""
        loop = asyncio.get_running_loop()
        slots = self._slots.setdefault(loop, FairQueue(self._workers))
        async with slots.slot(owner):
            try:
                return await self._run_now(timeout, _settled, fn, *args, **kwargs)
            except PoolBroke:
                # Not this job's doing (a job that kills its worker is `ProcessExpired`): pebble
                # also declares its pool broken when a worker it killed for another job's timeout
                # leaves no acknowledged job behind. The job runs once more, on the new pool.
                return await self._run_now(timeout, _settled, fn, *args, **kwargs)
            finally:
                self._recycle_if_bloated()

    async def _run_now(self, timeout: float, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        pool = self._pool
        try:
            future: concurrent.futures.Future[R] = pool.schedule(
                fn, args=args, kwargs=kwargs, timeout=timeout
            )
        except RuntimeError:  # pebble's "Unexpected error within the Pool": it broke (see below)
            self._replace_broken(pool)
            raise PoolBroke("the image worker pool broke; a new one takes the next jobs") from None
        try:
            return await self._outcome(pool, future)
        except TimeoutError:
            self._replaced("timeout")
            raise JobTimeout(f"processing took longer than {timeout:g}s") from None
        except ProcessExpired as exc:
            self._replaced("crash")
            raise WorkerCrashed(f"the image worker process died (exit code {exc.exitcode})") from None
        except BrokenProcessPool as exc:
            # pebble gives up on the whole pool when every worker dies at once with no job to
            # blame (the OOM killer taking them all while idle), and a job lost or stalled by a
            # killed worker never starts: a new pool replaces it.
            self._replace_broken(pool)
            raise PoolBroke(
                f"the image worker pool failed: {str(exc) or 'every worker died at once'}"
            ) from None
        except asyncio.CancelledError:
            future.cancel()  # pebble stops the worker if the job is running
            raise

    async def _outcome(self, pool: ProcessPool, future: concurrent.futures.Future[R]) -> R:
        """The job's result, or `BrokenProcessPool` if its pool broke or wedged before resolving it.

        A broken pebble pool aborts the jobs it had registered but forgets the ones it had not
        handed out, and a wedged one never starts them: their futures would never resolve, so the
        pool is looked at while waiting and such a job fails like the aborted ones.
        """
        wrapped = asyncio.wrap_future(future)
        loop = asyncio.get_running_loop()
        pickup_deadline = loop.time() + self._pickup_timeout
        while not wrapped.done():
            await asyncio.wait({wrapped}, timeout=_POOL_POLL)
            if wrapped.done():
                break
            if not pool._context.alive:  # broken or stopped (no public API)
                why = "the pool broke before running it"
            elif not future.running() and loop.time() > pickup_deadline:
                why = f"no worker started it within {self._pickup_timeout:g}s"
            else:
                continue
            # Cancelled, not failed here: pebble's own threads may still resolve it, and a
            # future resolved twice raises in them; a cancelled one they expect.
            future.cancel()
            wrapped.add_done_callback(_retrieve)  # a late outcome is nobody's to log
            raise BrokenProcessPool(why)
        return wrapped.result()

    def _recycle_if_bloated(self) -> None:
        """Replace the pool, gracefully, when a worker holds more than `max_rss` after its job
        (and after giving back what it could)."""
        if not self._max_rss:
            return
        for pid in self.pids():
            if (rss := resident_bytes(pid)) > self._max_rss:
                log.info("imaging workers recycled pid=%d rss=%d max_rss=%d", pid, rss, self._max_rss)
                metrics.POOL_RESTARTS.inc()
                retiring, self._pool = self._pool, self._new_pool()
                retiring.close()  # type: ignore[no-untyped-call]  # its running jobs finish; it takes no more, then its workers exit
                self._join_later(retiring)
                return

    def _join_later(self, pool: ProcessPool) -> None:
        retiring = asyncio.get_running_loop().create_task(asyncio.to_thread(pool.join))
        self._retired.add(retiring)  # joined off the loop; kept referenced until done
        retiring.add_done_callback(self._retired.discard)

    def _replaced(self, why: str) -> None:
        self.restarts += 1
        metrics.POOL_RESTARTS.inc()
        log.warning("imaging worker replaced reason=%s replacements=%d", why, self.restarts)

    def _replace_broken(self, broken: ProcessPool) -> None:
        if broken is not self._pool:  # several jobs see the same failure; replace once
            return
        self._replaced("pool broken")
        self._pool = self._new_pool()
        broken.stop()  # type: ignore[no-untyped-call]
        self._join_later(broken)

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


#: Resident bytes above which a worker hands the heap's free memory back after a job (a few
#: milliseconds: not worth it after the small jobs that are the rule).
TRIM_ABOVE = 128 * 1024 * 1024


def _settled(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a job in the worker, then give back what a large one left on the heap."""
    try:
        return fn(*args, **kwargs)
    finally:
        if resident_bytes(os.getpid()) > TRIM_ABOVE:
            # libvips caches no operations here (`pipeline.imaging.renditions`): the heap is all
            memory.trim()


def resident_bytes(pid: int) -> int:
    """A process's resident memory (Linux's /proc; 0 where that cannot be read)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _init_worker(threads: int, prepare: Callable[[], object] | None, parent: int) -> None:
    """Runs first in every worker: die with the parent (process `parent`), then set up the imaging
    libraries and what the worker reads originals with (`Backend.prepare_reads`)."""
    die_with_parent(parent)
    tasks.configure_worker(threads)
    if prepare is not None:
        prepare()


#: Set in each child's environment by `python -m web --workers`'s supervisor: its pid, which the
#: child ties its life to at start.
SUPERVISED = "_IMGSVC_SUPERVISED"


def supervisor_pid() -> int | None:
    """The supervisor that started this process (`SUPERVISED`), if one did."""
    supervisor = os.environ.get(SUPERVISED)
    return int(supervisor) if supervisor else None


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when its parent (process `parent`) dies, even by SIGKILL.

    Without it a killed consumer leaves its workers blocked forever on the task queue, holding
    memory and the parent's stdout/stderr. Other systems keep the default behaviour. The parent
    is named, not assumed not to be process 1: in a container it is (tests/test_container.py).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        log.warning("cannot tie worker %d to its parent's life", os.getpid())
        return
    if os.getppid() != parent:  # the parent died before prctl took effect: we were re-parented
        os._exit(1)


class InlineRunner:
    """Runs imaging in a thread of this process, for AWS Lambda, where process pools cannot run
    (no /dev/shm) and one invocation is one container anyway. Lambda's own timeout bounds it."""

    #: A thread cannot be killed: a job that ran out of time may still run, and must not write.
    stops_on_timeout = False

    def __init__(self, threads: int = 1, prepare: Callable[[], object] | None = None) -> None:
        tasks.configure_worker(threads)  # imports imaging into this process: here, by design
        if prepare is not None:
            prepare()  # what reads originals (S3's client), before the first job's time starts

    async def run(self, timeout: float, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.run_for("", timeout, fn, *args, **kwargs)

    async def run_for(
        self, owner: str, timeout: float, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(fn, *args, **kwargs)
        except TimeoutError:
            raise JobTimeout(f"processing took longer than {timeout:g}s") from None
