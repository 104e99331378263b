"""Time as the service records it, and the exponential delay every retry policy starts from."""

from __future__ import annotations

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
