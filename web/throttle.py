"""Failed-authentication limits per client address, shared by every web process through DynamoDB.

A fixed window per address: one counter item per (address, window), incremented atomically on
each failure and expiring by TTL after its window. A failure's own increment says where it
stands: past the limit the caller gets 429 with `Retry-After` until the window ends, instead of
401. One conditional-free atomic write decides, so however many failures race (several web
processes, hundreds of requests at once), at most `allowed` of a window are answered 401.
A valid key never reads the counter: keys carry 256 random bits, so the limit is there to bound
the work probing costs and to stand out in metrics, not to make guessing harder, and it must not
let a prober lock out the real users behind the same address.
"""

from __future__ import annotations

import hashlib
import time

from pipeline.errors import TooManyFailedAttempts
from pipeline.items import Add, SetDefault
from pipeline.ports import ItemTable


class FailureLimiter:
    def __init__(self, table: ItemTable, allowed: int, window_seconds: int) -> None:
        self._table = table
        self._allowed = allowed
        self._window = window_seconds

    def _slot(self, address: str) -> tuple[str, int]:
        window = int(time.time()) // self._window
        # Hashed: the table holds no client addresses in the clear.
        digest = hashlib.sha256(address.encode()).hexdigest()[:32]
        return f"auth-failures#{digest}#{window}", (window + 1) * self._window

    async def fail(self, address: str) -> None:
        """Count one failed attempt; raises `TooManyFailedAttempts` when it is past the limit."""
        slot, ends = self._slot(address)
        item = await self._table.update(
            {"id": slot}, [Add("failures", 1), SetDefault("expires_at", ends + self._window)]
        )
        if int(item.get("failures", 0)) > self._allowed:
            wait = max(1, ends - int(time.time()))
            raise TooManyFailedAttempts(headers={"Retry-After": str(wait)})
