"""Each owner's share of one consumer's in-flight messages, and what happens past it.

The owner of a message is the first part of its events' keys (`{user_id}/{image_id}`), read
without a request. At most `share` of an owner's messages run at once here. One more of an
owner at its share is held here briefly (a few, in all) and started the moment the owner has
room, so a lone user's backlog keeps the workers busy; one that waited too long, or that finds
the holding room full, is deferred: sent to the queue again with a delay and the one received
deleted (`Consumer._defer`). The delays pace the owner's messages back at the rate its share gets
through them (a job's measured time over the share, one after another), so each is deferred
about once and comes back as room frees (a backlog longer than SQS's longest delay, 15 minutes
of the owner's work, is deferred again, once per 15 minutes). A re-sent message starts with a
fresh receive count: waiting its turn never counts as a failed attempt.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Iterator

from pipeline.core.errors import PoisonMessage
from pipeline.core.events import parse_message
from pipeline.core.ports import Message

#: Messages one consumer holds for owners at their share, in all, and for how long at most (s).
HOLD_LIMIT = 10
HOLD_SECONDS = 2.0
#: The longest delay a deferral gets (SQS's).
MAX_DEFERRAL_SECONDS = 900
#: Owners whose deferral schedule is kept at once (those in the past are dropped).
MAX_PACED_OWNERS = 10_000


def owner_of(message: Message) -> str | None:
    """The user whose images a message's events are about, or None when it names none, or
    several (such a message is not anyone's share)."""
    try:
        parsed = parse_message(message.body)
    except PoisonMessage:
        return None
    owners = {event.key.partition("/")[0] for event in parsed.created}
    return owners.pop() if len(owners) == 1 else None


class Shares:
    """Who runs how many here, who waits in the holding room, and when deferred ones are due."""

    def __init__(self, share: int) -> None:
        self.share = share
        self._running: Counter[str] = Counter()
        self._held: dict[str, deque[tuple[Message, float]]] = {}
        self.held = 0
        #: When each owner's next deferred message is due back, and a job's time (moving average).
        self._next_turn: dict[str, float] = {}
        self._job_seconds = 1.0

    def full(self, owner: str | None) -> bool:
        return owner is not None and self._running[owner] >= self.share

    def anyone_full(self) -> bool:
        return any(count >= self.share for count in self._running.values())

    def started(self, owner: str | None) -> None:
        if owner is not None:
            self._running[owner] += 1

    def finished(self, owner: str | None, seconds: float) -> Message | None:
        """A job of `owner` ended after `seconds`: the message held for it, if any, to start now."""
        self._job_seconds += (seconds - self._job_seconds) * 0.2
        if owner is None:
            return None
        self._running[owner] -= 1
        if self._running[owner] <= 0:
            del self._running[owner]
        line = self._held.get(owner)
        if not line:
            return None
        message, _ = line.popleft()
        if not line:
            del self._held[owner]
        self.held -= 1
        return message

    def hold(self, owner: str, message: Message) -> bool:
        """Keep `message` until `owner` has room; False when the holding room is full."""
        if self.held >= HOLD_LIMIT:
            return False
        self._held.setdefault(owner, deque()).append((message, time.monotonic()))
        self.held += 1
        return True

    def overdue(self) -> Iterator[tuple[str, Message]]:
        """Held messages that waited `HOLD_SECONDS`, taken out of the room (to be deferred)."""
        cutoff = time.monotonic() - HOLD_SECONDS
        for owner in list(self._held):
            line = self._held[owner]
            while line and line[0][1] <= cutoff:
                message, _ = line.popleft()
                self.held -= 1
                yield owner, message
            if not line:
                del self._held[owner]

    def release_all(self) -> list[Message]:
        """Every held message, taken out (the consumer is stopping)."""
        messages = [message for line in self._held.values() for message, _ in line]
        self._held.clear()
        self.held = 0
        return messages

    def deferral(self, owner: str) -> int:
        """Seconds to defer `owner`'s message by: its turn, one pace (a job's time over the
        share) after the owner's last deferred message's."""
        now = time.monotonic()
        pace = self._job_seconds / self.share
        # Never scheduled past what one delay reaches: a longer backlog comes back within it and
        # is deferred again (each such message once per `MAX_DEFERRAL_SECONDS`).
        turn = min(max(now, self._next_turn.get(owner, 0.0)) + pace, now + MAX_DEFERRAL_SECONDS)
        if owner not in self._next_turn and len(self._next_turn) >= MAX_PACED_OWNERS:
            self._next_turn = {o: t for o, t in self._next_turn.items() if t > now}
        self._next_turn[owner] = turn
        return max(1, min(MAX_DEFERRAL_SECONDS, math.ceil(turn - now)))
