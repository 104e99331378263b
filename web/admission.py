"""Admission of uploads: a per-process budget of upload buffer bytes, and a per-user limit on
uploads in progress.

An upload holds one buffer (an S3 part in the making, up to `IMGSVC_UPLOAD_PART_SIZE`) while it
streams. Without a bound, 200 concurrent uploads take gigabytes and the process is killed.
Each upload reserves a first slice of buffer before reading its body, and the rest as its bytes
arrive (`Lease.grow_to`), so an upload holds what it has sent, not what it may send: 32 uploads
trickling a byte a second hold 32 slices, not 32 parts. While there is no room an upload waits
(its connection is not read meanwhile, so a well-behaved client simply sends slower) up to
`IMGSVC_UPLOAD_BUFFER_WAIT`, then is answered 503 with `Retry-After` (a multipart upload begun
is aborted: nothing is stored). Waiters are served first come, first served, so a large
reservation is not starved by small ones. The per-user limit keeps one user from taking the
whole budget (8 uploads of an 8 MiB part are a quarter of the default): past it, 429.

Both bounds are per process (memory is): N web processes admit N times as much in all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pipeline.core import memory, metrics
from pipeline.core.errors import TooManyUploads, UploadsBusy
from web.shares import UserShare

#: Seconds without any upload buffer in use before freed memory is handed back to the system.
TRIM_AFTER_SECONDS = 1.0
#: Bytes an upload reserves before reading its body (one read from the connection).
FIRST_SLICE = 64 * 1024


class ByteBudget:
    """A semaphore counted in bytes, fair (FIFO) and with a bounded wait."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        #: Uploads under way waiting to grow: served before any new one, so memory goes to
        #: finishing what was begun rather than to beginning more.
        self._growers: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._trim: asyncio.TimerHandle | None = None

    @property
    def reserved(self) -> int:
        return self.capacity - self._free

    @asynccontextmanager
    async def reserve(self, size: int, wait: float, retry_after: int) -> AsyncIterator[None]:
        """Hold `size` bytes for the block; `UploadsBusy` if they are not free within `wait` s."""
        size = min(size, self.capacity)
        await self.acquire(size, wait, retry_after)
        try:
            yield
        finally:
            self.give_back(size)

    @asynccontextmanager
    async def lease(self, first: int, wait: float, retry_after: int) -> AsyncIterator[Lease]:
        """A reservation of `first` bytes that may grow (`Lease.grow_to`), all given back after
        the block."""
        held = Lease(self, wait, retry_after)
        await held.grow_to(first)
        try:
            yield held
        finally:
            held.release()

    async def acquire(self, size: int, wait: float, retry_after: int, *, growing: bool = False) -> None:
        """Take `size` bytes (the caller gives them back); `UploadsBusy` after `wait` s without.
        `growing`: for an upload under way, which goes before every new one."""
        line = self._growers if growing else self._waiters
        ahead = self._growers or (not growing and self._waiters)
        if not ahead and self._free >= size:
            self._take(size)
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            line.append((size, granted))
            try:
                async with asyncio.timeout(wait):
                    await granted
            except BaseException as exc:
                if granted.done() and not granted.cancelled():  # granted at the last moment
                    self.give_back(size)
                else:
                    granted.cancel()
                    with contextlib.suppress(ValueError):  # `_grant` may have dropped it already
                        line.remove((size, granted))
                    self._grant()  # the head of the line may have been us: the next one may fit
                if isinstance(exc, TimeoutError):
                    metrics.UPLOADS_REFUSED.labels("buffer").inc()
                    raise UploadsBusy(headers={"Retry-After": str(retry_after)}) from None
                raise

    def _take(self, size: int) -> None:
        self._free -= size
        metrics.UPLOAD_BUFFER_BYTES.set(self.reserved)
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None

    def give_back(self, size: int) -> None:
        self._free += size
        metrics.UPLOAD_BUFFER_BYTES.set(self.reserved)
        self._grant()
        if not self.reserved and self._trim is None:
            # A burst is over: hand the heap's spare memory back once it has stayed quiet a moment.
            self._trim = asyncio.get_running_loop().call_later(TRIM_AFTER_SECONDS, self._trimmed)

    def _trimmed(self) -> None:
        self._trim = None
        memory.trim()

    def _grant(self) -> None:
        for line in (self._growers, self._waiters):
            while line:
                size, granted = line[0]
                if granted.done():  # cancelled (its wait timed out): its owner is leaving the line
                    line.popleft()
                    continue
                if size > self._free:
                    return  # first come, first served: nobody overtakes the head of a line
                line.popleft()
                self._take(size)
                granted.set_result(None)


class Lease:
    """Bytes of a `ByteBudget` held by one upload, grown as its buffer needs them."""

    def __init__(self, budget: ByteBudget, wait: float, retry_after: int) -> None:
        self._budget = budget
        self._wait = wait
        self._retry_after = retry_after
        self.held = 0

    async def grow_to(self, size: int) -> None:
        """Hold `size` bytes in all (at most the budget); waits like a new reservation."""
        size = min(size, self._budget.capacity)
        if size > self.held:
            growing = self.held > 0
            await self._budget.acquire(size - self.held, self._wait, self._retry_after, growing=growing)
            self.held = size

    def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            self._budget.give_back(held)


class UploadGate:
    """Both admission rules of one process."""

    def __init__(self, budget_bytes: int, per_user: int, wait: float, retry_after: int) -> None:
        self.budget = ByteBudget(budget_bytes)
        self._wait = wait
        self._retry_after = retry_after

        def refusal(limit: int) -> TooManyUploads:
            metrics.UPLOADS_REFUSED.labels("user").inc()
            return TooManyUploads(
                f"at most {limit} uploads of one user at a time",
                headers={"Retry-After": str(retry_after)},
            )

        self._share = UserShare(per_user, refusal)

    @asynccontextmanager
    async def admit(self, user_id: str) -> AsyncIterator[Lease]:
        """One upload of `user_id`, holding a first slice of buffer: 429 past the user's limit, 503
        when no buffer space comes free in time (now, or as the lease grows)."""
        with self._share.hold(user_id):
            async with self.budget.lease(FIRST_SLICE, self._wait, self._retry_after) as lease:
                yield lease
