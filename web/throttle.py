"""Failed-authentication limits per client address, shared by every web process through DynamoDB.

A fixed window per address: one counter item per (address, window), incremented atomically on
each failure and expiring by TTL after its window. A failure's own increment says where it
stands: past the limit the caller gets 429 with `Retry-After` until the window ends, instead of
401. One conditional-free atomic write decides, so however many failures race (several web
processes, hundreds of requests at once), at most `allowed` of a window are answered 401.
A valid key never reads the counter: keys carry 256 random bits, so the limit is there to bound
the work probing costs and to stand out in metrics, not to make guessing harder, and it must not
let a prober lock out the real users behind the same address.

Once an address is past the limit, this process remembers it until the window ends and refuses
its failures without a write, and the caller verifies its keys only against the keys it verified
lately (`Accounts.authenticate(only_remembered=True)`), without a read: a flood of wrong keys
from one address then costs a dictionary lookup each, not two database round trips, while keys
already in use from that address keep working.
"""

from __future__ import annotations

import hashlib
import time
from typing import NoReturn

from cachetools import TTLCache

from pipeline.core.errors import TooManyFailedAttempts
from pipeline.core.items import Add, SetDefault
from pipeline.core.ports import ItemTable

#: Refused addresses one process remembers at once (past it, the oldest are forgotten early and
#: cost a write again).
MAX_REFUSED = 10_000


class FailureLimiter:
    def __init__(self, table: ItemTable, allowed: int, window_seconds: int) -> None:
        self._table = table
        self._allowed = allowed
        self._window = window_seconds
        #: Addresses past the limit, until their window ends (epoch seconds).
        self._refused: TTLCache[str, int] = TTLCache(MAX_REFUSED, window_seconds)

    def refusing(self, address: str) -> int:
        """Seconds this address stays refused here (0: it is not), with no I/O."""
        ends = self._refused.get(address)
        return max(0, ends - int(time.time())) if ends is not None else 0

    def refuse(self, address: str) -> NoReturn:
        """`TooManyFailedAttempts` for an address already refused, with no write."""
        raise TooManyFailedAttempts(headers={"Retry-After": str(max(1, self.refusing(address)))})

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
            self._refused[address] = ends
            wait = max(1, ends - int(time.time()))
            raise TooManyFailedAttempts(headers={"Retry-After": str(wait)})
