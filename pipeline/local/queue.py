"""A durable message queue in SQLite with SQS's semantics, for the local backend.

What the consumer relies on behaves as in SQS: a received message is invisible for its
visibility timeout and comes back if not deleted; each receive counts; a message received
more often than the queue's `max_receive_count` moves to its dead-letter queue (the redrive
safety net); deleting with a stale receipt handle succeeds without deleting (as SQS does), while
changing visibility with one is `LeaseLost`. Long polls wake at once for messages sent by this
process and look again every `POLL_SECONDS` for those sent by others sharing the directory.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence

from pipeline.core.errors import LeaseLost, QueueUnavailable
from pipeline.core.ports import MAX_DELAY_SECONDS, Message
from pipeline.core.topology import QueueSpec
from pipeline.local.database import Database

#: How often a long poll looks for messages sent by another process.
POLL_SECONDS = 0.2
#: SQS's own bounds on one receive.
MAX_BATCH = 10
MAX_WAIT_SECONDS = 20


async def create_queue(db: Database, spec: QueueSpec) -> None:
    """Create or update a queue (idempotent, like SQS's CreateQueue + SetQueueAttributes)."""

    def upsert(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO queues (name, dead_letter, max_receive_count, visibility_timeout)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET dead_letter = excluded.dead_letter,"
            " max_receive_count = excluded.max_receive_count,"
            " visibility_timeout = excluded.visibility_timeout",
            (spec.name, spec.dead_letter, spec.max_receive_count, spec.visibility_timeout),
        )

    await db.write(upsert)


def enqueue(
    conn: sqlite3.Connection, queue: str, body: str, attributes: Mapping[str, str], delay_seconds: int = 0
) -> str:
    """Insert a message inside the caller's transaction (so storing an object and announcing it
    commit together); returns its id. A delayed one is received no sooner than `delay_seconds`."""
    message_id = str(uuid.uuid4())
    now = time.time()
    conn.execute(
        "INSERT INTO messages (id, queue, body, attributes, sent_at, visible_at) VALUES (?, ?, ?, ?, ?, ?)",
        (message_id, queue, body, json.dumps(dict(attributes)), now, now + delay_seconds),
    )
    return message_id


class LocalQueue:
    """One queue of the local backend; the same methods as `pipeline.aws.queue.Queue`."""

    #: A receive claims in one short transaction, then waits for a change: one not done this soon
    #: after its reader stops is waiting on an empty queue, and is cancelled at once (a stop took a
    #: second per reader, every shutdown and every test, when it waited as long as for SQS).
    stop_grace = 0.1

    def __init__(self, db: Database, spec: QueueSpec) -> None:
        self._db = db
        self._spec = spec
        self.url = f"local:{spec.name}"

    @classmethod
    async def named(cls, db: Database, name: str) -> LocalQueue:
        def find(conn: sqlite3.Connection) -> tuple[str, str | None, int | None, int] | None:
            row = conn.execute(
                "SELECT name, dead_letter, max_receive_count, visibility_timeout FROM queues WHERE name = ?",
                (name,),
            ).fetchone()
            return None if row is None else (row[0], row[1], row[2], row[3])

        row = await db.read(find)
        if row is None:
            raise QueueUnavailable(f"no queue named {name!r} in {db.path} (not provisioned)")
        return cls(db, QueueSpec(row[0], row[3], row[1], row[2]))

    async def receive(
        self, max_messages: int, wait_seconds: int, visibility_timeout: int | None = None
    ) -> list[Message]:
        count = max(1, min(max_messages, MAX_BATCH))
        lease = self._spec.visibility_timeout if visibility_timeout is None else visibility_timeout
        deadline = time.monotonic() + max(0, min(wait_seconds, MAX_WAIT_SECONDS))
        while True:
            messages = await self._db.write(lambda conn: self._claim(conn, count, lease))
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                return messages
            await self._db.changes.wait(self._spec.name, min(POLL_SECONDS, remaining))

    def _claim(self, conn: sqlite3.Connection, count: int, lease: int) -> list[Message]:
        now = time.time()
        rows = conn.execute(
            "SELECT id, body, attributes, receive_count FROM messages"
            " WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, sent_at LIMIT ?",
            (self._spec.name, now, count * 2),
        ).fetchall()
        claimed: list[Message] = []
        limit, dead_letter = self._spec.max_receive_count, self._spec.dead_letter
        for message_id, body, attributes, receive_count in rows:
            if dead_letter is not None and limit is not None and receive_count >= limit:
                # Received too often without being deleted: the redrive policy moves it on.
                conn.execute(
                    "UPDATE messages SET queue = ?, receive_count = 0, receipt = NULL, visible_at = ?"
                    " WHERE id = ?",
                    (dead_letter, now, message_id),
                )
                continue
            if len(claimed) == count:
                break
            receipt = f"{message_id}:{uuid.uuid4().hex}"
            conn.execute(
                "UPDATE messages SET receive_count = receive_count + 1, receipt = ?, visible_at = ?"
                " WHERE id = ?",
                (receipt, now + lease, message_id),
            )
            claimed.append(Message(message_id, receipt, body, receive_count + 1, json.loads(attributes)))
        return claimed

    async def delete_batch(self, handles: Sequence[tuple[str, str]]) -> dict[str, str]:
        """Delete (id, receipt handle) pairs; none fails short of the database failing as a whole."""
        await self._db.write(
            lambda conn: conn.executemany(
                "DELETE FROM messages WHERE receipt = ?", [(handle,) for _, handle in handles]
            )
        )
        return {}

    async def delete(self, receipt_handle: str) -> None:
        await self.delete_batch([("", receipt_handle)])

    async def change_visibility(self, receipt_handle: str, seconds: int) -> None:
        def change(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE messages SET visible_at = ? WHERE receipt = ? AND queue = ?",
                (time.time() + seconds, receipt_handle, self._spec.name),
            ).rowcount

        if not await self._db.write(change):
            raise LeaseLost("the message was deleted or received again under another handle")

    async def send(
        self, body: str, attributes: Mapping[str, str] | None = None, *, delay_seconds: int = 0
    ) -> str:
        kept = {k: v for k, v in (attributes or {}).items() if v}
        delay = max(0, min(delay_seconds, MAX_DELAY_SECONDS))
        message_id = await self._db.write(lambda conn: enqueue(conn, self._spec.name, body, kept, delay))
        self._db.changes.notify(self._spec.name)
        return message_id

    async def depth(self) -> dict[str, int]:
        """Visible messages, and those not visible now (leased, backing off or delayed)."""

        def count(conn: sqlite3.Connection) -> dict[str, int]:
            now = time.time()
            visible, in_flight = conn.execute(
                "SELECT COALESCE(SUM(visible_at <= ?), 0), COALESCE(SUM(visible_at > ?), 0)"
                " FROM messages WHERE queue = ?",
                (now, now, self._spec.name),
            ).fetchone()
            return {"visible": int(visible), "in_flight": int(in_flight)}

        return await self._db.read(count)

    async def purge(self) -> None:
        await self._db.write(
            lambda conn: conn.execute("DELETE FROM messages WHERE queue = ?", (self._spec.name,))
        )
