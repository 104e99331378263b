"""In-process notice that an image's record changed, for the requests long-polling it.

A long poll that re-reads the record on a timer costs a strongly consistent read per tick per
waiter: a thousand waiters on DynamoDB are thousands of reads a second. When the change happens
in this process (the API's own upload or delete, the in-process consumer's result) the waiter is
woken at once instead; a change made elsewhere (another API process, a consumer on another
machine) is found by the waiter's own re-reads, once a second.

Where a change anywhere can be noticed cheaply, the backend gives a `probe`: a number that moves
whenever anything is written, by any process (the local backend's SQLite `data_version`, a
statement that reads no table). While waits are under way, one ticker per process reads it every
`PROBE_SECONDS` and wakes every waiter when it moves, so a thumbnail made by a consumer in another
process is seen within a tick, not a second; when nothing is written, nobody re-reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)
#: How often a probe is read while waits are under way: also the most often a wait is woken by
#: changes made elsewhere (each wake is one read of its record).
PROBE_SECONDS = 0.1


class Changes:
    """Futures waiting for a change of a key, woken by `notify` (one event loop's)."""

    def __init__(self, probe: Callable[[], int] | None = None) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._probe = probe
        self._ticker: asyncio.Task[None] | None = None
        #: The probe's last value: a ticker started later wakes waiters for a change made while
        #: none ran (between a wake and the next wait), not only for those after it starts.
        self._seen: int | None = None

    def notify(self, key: str) -> None:
        for waiter in self._waiters.pop(key, ()):
            if not waiter.done():
                waiter.set_result(None)

    def version(self) -> int | None:
        """The probe's value now, to pass to `wait` as `since` (None without a probe, or when it
        fails): taken before a read, it makes a change between the read and the wait count."""
        if self._probe is None:
            return None
        try:
            return self._probe()
        except Exception as exc:
            log.debug("change probe failed error=%r", exc)
            return None

    async def wait(self, key: str, seconds: float, since: int | None = None) -> bool:
        """Wait up to `seconds` for `key` to change here (or, with a probe, for anything to be
        written anywhere after `version()` gave `since`); whether it did."""
        if since is not None and self.version() not in (None, since):
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, set())
        waiters.add(waiter)
        if self._probe is not None and (self._ticker is None or self._ticker.done()):
            self._ticker = asyncio.ensure_future(self._tick())
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await waiter
            return waiter.done() and not waiter.cancelled()
        finally:
            waiters.discard(waiter)
            if not waiters and self._waiters.get(key) is waiters:
                del self._waiters[key]
            if not self._waiters and self._ticker is not None:
                self._ticker.cancel()  # nobody waits: no probe reads
                self._ticker = None

    async def _tick(self) -> None:
        """Wake every waiter when the probe moves; ends when nobody waits. A probe that fails (the
        database busy for a moment, or closed) is read again on the next tick; meanwhile the
        waits re-read on their own timer."""
        while self._waiters:
            now = self.version()
            if now is not None:
                if self._seen is not None and now != self._seen:
                    for key in list(self._waiters):
                        self.notify(key)
                self._seen = now
            await asyncio.sleep(PROBE_SECONDS)

    def __len__(self) -> int:
        """Waits under way."""
        return sum(len(w) for w in self._waiters.values())
