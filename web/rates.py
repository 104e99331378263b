"""Per-user rates of work as token buckets: a burst is allowed, a sustained flood is paced.

Uploads are charged by what they will cost the consumer, estimated from the header the upload
is screened with anyway: megapixels times frames (at least one), so a 2.6 KB AVIF that decodes
to 100 megapixels costs a hundred small photos. Past the bucket, 429 with the `Retry-After` that
refills it; nothing is stored. Per process, like the other admission rules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from cachetools import TTLCache

from pipeline.core.errors import ServiceError

#: Users whose buckets one process keeps at once (a full bucket forgotten is a full bucket).
MAX_USERS = 100_000


class Buckets:
    """A bucket per user: `burst` tokens at most, refilled at `rate` a second (0: no limit)."""

    def __init__(self, rate: float, burst: float, refusal: Callable[[int], ServiceError]) -> None:
        self._rate = rate
        self._burst = burst
        self._refusal = refusal
        # (tokens, when) per user; a bucket idle long enough to refill is the same as none.
        ttl = burst / rate if rate else 1.0
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(MAX_USERS, max(1.0, ttl))

    def take(self, user: str, amount: float) -> None:
        """Take `amount` from `user`'s bucket; the refusal (with seconds to wait) if it lacks it."""
        if not self._rate:
            return
        now = time.monotonic()
        tokens, then = self._buckets.get(user, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        amount = min(amount, self._burst)  # one big enough upload still passes on a full bucket
        if tokens < amount:
            self._buckets[user] = (tokens, now)
            raise self._refusal(max(1, math.ceil((amount - tokens) / self._rate)))
        self._buckets[user] = (tokens - amount, now)
