"""In-process notice that an image's record changed, for the requests long-polling it.

A long poll that re-reads the record on a timer costs a strongly consistent read per tick per
waiter: a thousand waiters on DynamoDB are thousands of reads a second. When the change happens
in this process (the API's own upload or delete, the in-process consumer's result) the waiter is
woken at once instead; a change made elsewhere (another API process, a consumer on another
machine) is found by the waiter's own re-reads, once a second.
"""

from __future__ import annotations

import asyncio
import contextlib


class Changes:
    """Futures waiting for a change of a key, woken by `notify` (one event loop's)."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def notify(self, key: str) -> None:
        for waiter in self._waiters.pop(key, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, key: str, seconds: float) -> bool:
        """Wait up to `seconds` for `key` to change here; whether it did."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, set())
        waiters.add(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await waiter
            return waiter.done() and not waiter.cancelled()
        finally:
            waiters.discard(waiter)
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]

    def __len__(self) -> int:
        """Waits under way."""
        return sum(len(w) for w in self._waiters.values())
