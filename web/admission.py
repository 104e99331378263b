"""Admission of uploads: a per-process budget of upload buffer bytes, and a per-user limit on
uploads in progress.

An upload holds one buffer (an S3 part in the making, up to `IMGSVC_UPLOAD_PART_SIZE`) while it
streams. Without a bound, 200 concurrent uploads take gigabytes and the process is killed.
Each upload reserves its buffer before reading its body: while there is no room it waits (its
connection is not read meanwhile, so a well-behaved client simply sends slower) up to
`IMGSVC_UPLOAD_BUFFER_WAIT`, then is answered 503 with `Retry-After`, before anything is stored.
Waiters are served first come, first served, so a large reservation is not starved by small ones.
The per-user limit keeps one user from taking the whole budget: past it, 429.

Both bounds are per process (memory is): N web processes admit N times as much in all.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pipeline import memory, metrics
from pipeline.errors import PermanentError, TransientError

#: Seconds without any upload buffer in use before freed memory is handed back to the system.
TRIM_AFTER_SECONDS = 1.0


class UploadsBusy(TransientError):
    code = "uploads_busy"
    default_message = "the server has no room for another upload right now; retry shortly"


class TooManyUploads(PermanentError):
    code = "too_many_uploads"
    http_status = 429
    default_message = "this user has too many uploads in progress; wait for one to finish"


class ByteBudget:
    """A semaphore counted in bytes, fair (FIFO) and with a bounded wait."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._trim: asyncio.TimerHandle | None = None

    @property
    def reserved(self) -> int:
        return self.capacity - self._free

    @asynccontextmanager
    async def reserve(self, size: int, wait: float, retry_after: int) -> AsyncIterator[None]:
        """Hold `size` bytes for the block; `UploadsBusy` if they are not free within `wait` s."""
        size = min(size, self.capacity)
        if not self._waiters and self._free >= size:
            self._take(size)
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append((size, granted))
            try:
                async with asyncio.timeout(wait):
                    await granted
            except BaseException as exc:
                if granted.done() and not granted.cancelled():  # granted at the last moment
                    self._give_back(size)
                else:
                    granted.cancel()
                    with contextlib.suppress(ValueError):  # `_grant` may have dropped it already
                        self._waiters.remove((size, granted))
                    self._grant()  # the head of the line may have been us: the next one may fit
                if isinstance(exc, TimeoutError):
                    metrics.UPLOADS_REFUSED.labels("buffer").inc()
                    raise UploadsBusy(headers={"Retry-After": str(retry_after)}) from None
                raise
        try:
            yield
        finally:
            self._give_back(size)

    def _take(self, size: int) -> None:
        self._free -= size
        metrics.UPLOAD_BUFFER_BYTES.set(self.reserved)
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None

    def _give_back(self, size: int) -> None:
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
        while self._waiters:
            size, granted = self._waiters[0]
            if granted.done():  # cancelled (its wait timed out): its owner is leaving the line
                self._waiters.popleft()
                continue
            if size > self._free:
                return
            self._waiters.popleft()
            self._take(size)
            granted.set_result(None)


class UploadGate:
    """Both admission rules of one process."""

    def __init__(self, budget_bytes: int, per_user: int, wait: float, retry_after: int) -> None:
        self.budget = ByteBudget(budget_bytes)
        self._per_user = per_user
        self._wait = wait
        self._retry_after = retry_after
        self._active: Counter[str] = Counter()

    @asynccontextmanager
    async def admit(self, user_id: str, buffer_bytes: int) -> AsyncIterator[None]:
        """One upload of `user_id` needing `buffer_bytes`: 429 past the user's limit, 503 when no
        buffer space comes free in time."""
        if self._per_user and self._active[user_id] >= self._per_user:
            metrics.UPLOADS_REFUSED.labels("user").inc()
            raise TooManyUploads(
                f"at most {self._per_user} uploads of one user at a time",
                headers={"Retry-After": str(self._retry_after)},
            )
        self._active[user_id] += 1
        try:
            async with self.budget.reserve(buffer_bytes, self._wait, self._retry_after):
                yield
        finally:
            self._active[user_id] -= 1
            if not self._active[user_id]:
                del self._active[user_id]
