"""Time as the service records it, and the one backoff policy every retry uses."""

from __future__ import annotations

import random
from datetime import UTC, datetime


def now_iso() -> str:
    """UTC, millisecond precision, ISO 8601: sorts as text, the way records and keys store it."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def epoch_iso(epoch: object) -> str | None:
    """Epoch seconds as clients see a moment: ISO 8601 to the second, `Z` for UTC; None for
    anything that is not a number."""
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def exponential(attempt: int, base: float, cap: float) -> float:
    """`base` doubled for every attempt after the first, at most `cap` (jitter is the caller's)."""
    return min(cap, base * 2.0 ** max(0, attempt - 1))


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retrying after `attempt` failures: the exponential delay with equal
    jitter, half fixed and half random (so retries that failed together spread out, and none comes
    back sooner than half its delay). The consumer's retries, webhook attempts and the outbox's
    deferrals all wait by it."""
    delay = exponential(attempt, base, cap)
    return delay / 2 + (rng or random).uniform(0, delay / 2)
