"""Each owner's share of one consumer's in-flight messages, and what happens past it.

The owner of a message is the first part of its events' keys (`{user_id}/{image_id}`), read
without a request. An owner may always run `share` messages at once here. Past its share it
borrows idle slots: a slot of the in-flight limit that no other owner's message waits for. So a
lone user's backlog keeps every worker busy (the share only bites when owners contend), and an
owner that borrowed gives the slots back as its jobs end: a freed slot goes to the waiting owner
with the fewest running. One more message of an owner that may not run is held here briefly (a
few, in all) and started the moment there is room; one that waited too long, or that finds the
holding room full, is deferred: sent to the queue again with a delay and the one received deleted
(`Consumer._defer`). The delays pace the owner's messages back at the rate it gets through them
(a job's measured time over the owner's running jobs, one after another), so each is deferred
about once and comes back as room frees (a backlog longer than SQS's longest delay, 15 minutes of
the owner's work, is deferred again, once per 15 minutes). A re-sent message starts with a fresh
receive count: waiting its turn never counts as a failed attempt.
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
#: A job's time assumed before one was measured: short, as a message back too early is only
#: deferred again, where one back too late leaves a worker idle.
UNMEASURED_JOB_SECONDS = 0.1
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

    def __init__(self, share: int, limit: int) -> None:
        self.share = share
        #: The in-flight limit whose idle slots an owner past its share may borrow.
        self.limit = limit
        self._running: Counter[str] = Counter()
        self.running = 0
        self._held: dict[str, deque[tuple[Message, float]]] = {}
        self.held = 0
        #: When each owner's next deferred message is due back, and a job's time (moving average).
        self._next_turn: dict[str, float] = {}
        self._job_seconds: float | None = None

    def may_run(self, owner: str | None) -> bool:
        """Within its share, or past it on a slot that is idle: under the limit, and no other
        owner's message held for it."""
        if owner is None or self._running[owner] < self.share:
            return True
        return self.running < self.limit and not any(other != owner for other in self._held)

    def anyone_full(self) -> bool:
        return any(count >= self.share for count in self._running.values())

    def started(self, owner: str | None) -> None:
        self.running += 1
        if owner is not None:
            self._running[owner] += 1

    def finished(self, owner: str | None, seconds: float) -> None:
        """A job of `owner` ended after `seconds`."""
        if self._job_seconds is None:
            self._job_seconds = seconds
        self._job_seconds += (seconds - self._job_seconds) * 0.2
        self.running -= 1
        if owner is None:
            return
        self._running[owner] -= 1
        if self._running[owner] <= 0:
            del self._running[owner]

    def next_held(self) -> tuple[str, Message] | None:
        """A held message that may run now, taken out of the room: the first of the waiting
        owner with the fewest running, if that owner is within its share or a slot is idle."""
        if not self._held:
            return None
        owner = min(self._held, key=lambda o: self._running[o])
        if self._running[owner] >= self.share and self.running >= self.limit:
            return None
        line = self._held[owner]
        message, _ = line.popleft()
        if not line:
            del self._held[owner]
        self.held -= 1
        return owner, message

    def hold(self, owner: str, message: Message) -> bool:
        """Keep `message` until `owner` may run; False when the holding room is full."""
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
        """Seconds to defer `owner`'s message by: its turn, one pace (a job's time over the jobs
        the owner runs, at least its share) after the owner's last deferred message's."""
        now = time.monotonic()
        pace = (self._job_seconds or UNMEASURED_JOB_SECONDS) / max(self.share, self._running[owner])
        # Never scheduled past what one delay reaches: a longer backlog comes back within it and
        # is deferred again (each such message once per `MAX_DEFERRAL_SECONDS`).
        turn = min(max(now, self._next_turn.get(owner, 0.0)) + pace, now + MAX_DEFERRAL_SECONDS)
        if owner not in self._next_turn and len(self._next_turn) >= MAX_PACED_OWNERS:
            self._next_turn = {o: t for o, t in self._next_turn.items() if t > now}
        self._next_turn[owner] = turn
        return max(1, min(MAX_DEFERRAL_SECONDS, math.ceil(turn - now)))
