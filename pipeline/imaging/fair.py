"""Slots handed out fairly across users: one user's backlog waits behind its own work only.

A plain semaphore serves waiters first come, first served: a user who asks for a hundred
expensive things ahead of another user's one makes that user wait for all hundred. Here each
user has a line of its own, and a freed slot goes to the waiting user served least recently
(fair queuing at the granularity of a whole job, as nginx's and Envoy's per-tenant schedulers
do with requests), so a user who arrives while another's backlog runs waits for the jobs
already running, not for the backlog.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

#: Users whose last turn is remembered at most (the oldest are forgotten first: they count as
#: never served, which only moves them ahead).
MAX_REMEMBERED = 10_000


class FairQueue:
    """`slots` things at once, granted to the waiting user served least recently."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        #: Each waiting user's line, in the order the users began waiting.
        self._lines: dict[str, deque[asyncio.Future[None]]] = {}
        #: When each user was last given a slot (a sequence number).
        self._served: dict[str, int] = {}
        self._clock = itertools.count(1)

    def waiting(self, user: str | None = None) -> int:
        """Waiters in all, or of one user."""
        if user is not None:
            return sum(not f.done() for f in self._lines.get(user, ()))
        return sum(not f.done() for line in self._lines.values() for f in line)

    @asynccontextmanager
    async def slot(self, user: str) -> AsyncIterator[None]:
        """Hold one slot for the block, waiting for `user`'s turn if none is free."""
        if self._free > 0 and not self._lines:
            self._free -= 1
            self._mark(user)
        else:
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._lines.setdefault(user, deque()).append(granted)
            try:
                await granted
            except BaseException:
                if granted.done() and not granted.cancelled():  # granted as we were cancelled
                    self._release()
                else:
                    granted.cancel()  # left in its line: skipped when its turn comes
                raise
        try:
            yield
        finally:
            self._release()

    def _mark(self, user: str) -> None:
        self._served.pop(user, None)
        self._served[user] = next(self._clock)
        if len(self._served) > MAX_REMEMBERED:
            del self._served[next(iter(self._served))]

    def _release(self) -> None:
        """Give the freed slot to the waiting user served least recently."""
        while self._lines:
            user = min(self._lines, key=lambda u: self._served.get(u, 0))
            line = self._lines[user]
            while line and line[0].done():  # cancelled while waiting
                line.popleft()
            if not line:
                del self._lines[user]
                continue
            granted = line.popleft()
            if not any(not f.done() for f in line):
                del self._lines[user]
            self._mark(user)
            granted.set_result(None)
            return
        self._free += 1
