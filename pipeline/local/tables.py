"""The service's tables (users, keys, images, throttle, config, requests) in the local SQLite database.

Each item is a JSON document in one row, under its table's key; a table's secondary index
(each has at most one) is two columns filled on every write, so a query by index is an index
range scan. Conditions and changes are `pipeline.core.items` data, evaluated in Python inside the
write transaction: what DynamoDB does atomically in one request, this does atomically in one
transaction, with the same outcomes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.core.items import (
    Change,
    Condition,
    ConditionFailed,
    DeleteItem,
    Item,
    PutItem,
    TransactionRefused,
    UpdateItem,
    Write,
    applied,
    holds,
)
from pipeline.core.topology import SPECS, TableSpec
from pipeline.local.database import Database


def _sorted_set(value: object) -> list[object]:
    """A string set (as a whole-record write passes one back) is kept as a sorted list."""
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


class LocalTable:
    """The same methods as `pipeline.aws.tables.Table`."""

    def __init__(self, db: Database, spec: TableSpec) -> None:
        if len(spec.indexes) > 1:
            raise ValueError(f"table {spec.name}: the local backend keeps one secondary index")
        self._db = db
        self._spec = spec
        self.name = spec.name
        self._index = next(iter(spec.indexes.items()), None)

    def _key(self, key: Mapping[str, Any]) -> tuple[str, str]:
        parts = [str(key[attribute]) for attribute in self._spec.key]
        return parts[0], parts[1] if len(parts) > 1 else ""

    def _row(self, conn: sqlite3.Connection, key: Mapping[str, Any]) -> Item | None:
        doc = self._doc(conn, self._key(key))
        return None if doc is None else dict(json.loads(doc))

    def _doc(self, conn: sqlite3.Connection, key: tuple[str, str]) -> str | None:
        row = conn.execute(
            "SELECT doc FROM items WHERE tbl = ? AND hash = ? AND range = ?", (self.name, *key)
        ).fetchone()
        return None if row is None else str(row[0])

    def _store(self, conn: sqlite3.Connection, item: Item) -> None:
        ix_hash = ix_range = None
        # A sparse index, as DynamoDB's: an item lacking any of its attributes is not in it.
        if self._index is not None and all(a in item for a in self._index[1]):
            attributes = self._index[1]
            ix_hash = item.get(attributes[0])
            ix_range = item.get(attributes[1]) if len(attributes) > 1 else ""
        conn.execute(
            "INSERT OR REPLACE INTO items (tbl, hash, range, ix_hash, ix_range, doc)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                self.name,
                *self._key(item),
                ix_hash,
                ix_range,
                json.dumps(item, sort_keys=True, default=_sorted_set),
            ),
        )

    async def get(self, key: Mapping[str, Any], *, consistent: bool = True) -> Item | None:
        at = self._key(key)
        # The document's text is what is remembered (immutable); each caller gets its own item.
        doc = await self._db.lookup(lambda conn: self._doc(conn, at), cache_key=("item", self.name, at))
        return None if doc is None else dict(json.loads(doc))

    def _put(self, conn: sqlite3.Connection, item: Mapping[str, Any], condition: Condition | None) -> None:
        new = {k: v for k, v in item.items() if v is not None}
        if not holds(condition, self._row(conn, new)):
            raise ConditionFailed()
        self._store(conn, new)

    def _update(
        self,
        conn: sqlite3.Connection,
        key: Mapping[str, Any],
        changes: Sequence[Change],
        condition: Condition | None,
    ) -> Item:
        old = self._row(conn, key)
        if not holds(condition, old):
            raise ConditionFailed()
        new = applied(changes, old or dict(key))
        self._store(conn, new)
        return new

    def _delete(
        self, conn: sqlite3.Connection, key: Mapping[str, Any], condition: Condition | None
    ) -> Item | None:
        old = self._row(conn, key)
        if not holds(condition, old):
            raise ConditionFailed()
        conn.execute(
            "DELETE FROM items WHERE tbl = ? AND hash = ? AND range = ?", (self.name, *self._key(key))
        )
        return old

    async def put(self, item: Mapping[str, Any], condition: Condition | None = None) -> None:
        await self._db.write(lambda conn: self._put(conn, item, condition))

    async def update(
        self, key: Mapping[str, Any], changes: Sequence[Change], condition: Condition | None = None
    ) -> Item:
        """Apply `changes` (creating the item if there is none, as DynamoDB does) and return it."""
        return await self._db.write(lambda conn: self._update(conn, key, changes, condition))

    async def delete(self, key: Mapping[str, Any], condition: Condition | None = None) -> Item | None:
        return await self._db.write(lambda conn: self._delete(conn, key, condition))

    async def transact(self, writes: Sequence[Write]) -> None:
        """All of `writes` in one SQLite transaction: a failed condition rolls back the others."""

        def transact(conn: sqlite3.Connection) -> None:
            for index, write in enumerate(writes):
                try:
                    match write:
                        case PutItem(table, item, condition):
                            table._put(conn, item, condition)
                        case UpdateItem(table, key, changes, condition):
                            table._update(conn, key, changes, condition)
                        case DeleteItem(table, key, condition):
                            table._delete(conn, key, condition)
                except ConditionFailed:
                    raise TransactionRefused(index) from None

        await self._db.write(transact)

    async def query(
        self,
        hash_value: str,
        *,
        index: str | None = None,
        forward: bool = True,
        limit: int | None = None,
        start: Mapping[str, Any] | None = None,
        above: str | None = None,
    ) -> tuple[list[Item], Item | None]:
        """One page of the items under `hash_value` (of the table, or of its index), in range
        order, and the key to continue from (None at the end); `above`: only range keys after it."""
        if index is not None and (self._index is None or index != self._index[0]):
            raise ValueError(f"table {self.name} has no index {index!r}")
        hash_column, order = ("ix_hash", "ix_range, hash, range") if index else ("hash", "range")
        sql = f"SELECT doc FROM items WHERE tbl = ? AND {hash_column} = ?"
        args: list[Any] = [self.name, hash_value]
        if above is not None:
            sql += f" AND {'ix_range' if index else 'range'} > ?"
            args.append(above)
        if start is not None:
            sql += f" AND ({order}) {'>' if forward else '<'} ({', '.join('?' * len(order.split(',')))})"
            args += self._position(start, bool(index))
        direction = "ASC" if forward else "DESC"
        sql += " ORDER BY " + ", ".join(f"{column.strip()} {direction}" for column in order.split(","))
        if limit:
            sql += " LIMIT ?"
            args.append(limit + 1)
        rows = await self._db.read(lambda conn: conn.execute(sql, args).fetchall())
        items = [dict(json.loads(row[0])) for row in rows]
        if not limit or len(items) <= limit:
            return items, None
        items = items[:limit]
        return items, self._last_key(items[-1], bool(index))

    def _position(self, start: Mapping[str, Any], by_index: bool) -> list[str]:
        hash_value, range_value = self._key(start)
        if not by_index or self._index is None:
            return [range_value]
        attributes = self._index[1]
        return [str(start.get(attributes[1], "")) if len(attributes) > 1 else "", hash_value, range_value]

    def _last_key(self, item: Item, by_index: bool) -> Item:
        attributes = list(self._spec.key) + (list(self._index[1]) if by_index and self._index else [])
        return {attribute: item[attribute] for attribute in attributes if attribute in item}

    async def expire(self, now: float) -> int:
        """Delete items whose TTL attribute is past `now` (DynamoDB's TTL does this by itself);
        returns how many. A no-op for tables without one."""
        attribute = self._spec.ttl_attribute
        if attribute is None:
            return 0
        return await self._db.write(
            lambda conn: (
                conn.execute(
                    "DELETE FROM items WHERE tbl = ? AND json_extract(doc, ?) < ?",
                    (self.name, f"$.{attribute}", now),
                ).rowcount
            )
        )

    async def scan_all(self) -> list[Item]:
        rows = await self._db.read(
            lambda conn: conn.execute("SELECT doc FROM items WHERE tbl = ?", (self.name,)).fetchall()
        )
        return [dict(json.loads(row[0])) for row in rows]


class LocalTables:
    """The service's tables, by role (as `pipeline.aws.tables.Tables`)."""

    def __init__(self, db: Database) -> None:
        tables = {spec.name: LocalTable(db, spec) for spec in SPECS}
        self.users = tables["users"]
        self.keys = tables["keys"]
        self.images = tables["images"]
        self.throttle = tables["throttle"]
        self.config = tables["config"]
        self.requests = tables["requests"]
        self._all = list(tables.values())

    async def expire(self, now: float) -> int:
        """Drop expired items of every table with a TTL: the auth throttle's counters, idempotency
        keys, and image records a week past an expiry gc did not act on (`purge_at`, a backstop
        that bypasses the usage counters: `users reconcile` repairs them)."""
        return sum([await table.expire(now) for table in self._all])
