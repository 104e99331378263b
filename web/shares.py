"""Per-user shares of something a process does at once (uploads streaming, long polls waiting).

A process-wide bound alone lets one user take all of it: a thousand long polls of one key held
every connection of the process. A share bounds what one user holds, so the rest is left for
the others; past it the user is refused at once (429 with `Retry-After`), nobody else is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.core.errors import ServiceError


class UserShare:
    """At most `limit` (0: no limit) of one user's things at once in this process."""

    def __init__(self, limit: int, refusal: Callable[[int], ServiceError]) -> None:
        self._limit = limit
        self._refusal = refusal
        self._held: Counter[str] = Counter()

    def held(self, user_id: str) -> int:
        return self._held[user_id]

    @contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        """One of `user_id`'s things for the block; the refusal when the user has its share."""
        if self._limit and self._held[user_id] >= self._limit:
            raise self._refusal(self._limit)
        self._held[user_id] += 1
        try:
            yield
        finally:
            self._held[user_id] -= 1
            if not self._held[user_id]:
                del self._held[user_id]
