"""The embedded endpoint's DynamoDB transactions, at a cost that does not grow with the tables.

moto backs up every table a TransactWriteItems names, whole (`copy.deepcopy` of the table), so
that it can roll back a refused transaction. Every upload and every counted variant is a
transaction here, so the embedded endpoint's CPU per upload grew with the number of images
stored: 8 ms per presigned reservation on a fresh stack, 13 ms a few hundred images later.
DynamoDB's own cost does not grow so. This backs up only the items the transaction touches (a
deep copy of each, taken before any is written) and puts those back when moto gives up; moto's
whole-table copy becomes the table itself while a transaction runs (its "rollback" is then a
no-op, and ours does the work). Restoring items (or, before, tables) is only right if nothing
else wrote them in between: moto serves requests on many threads, so every DynamoDB write of
the endpoint (put, update, delete, and a transaction as a whole) takes one lock here, as a
transaction's writes are isolated from other writes in DynamoDB.

Applied by `pipeline.aws.embedded.embedded_aws` (the embedded endpoint, and the tests' moto server),
once per process, to moto's class: the pinned moto version's `transact_write_items` is what it
wraps (`tests/test_contract_tables.py` checks all-or-nothing on every backend).
"""

from __future__ import annotations

import copy
import functools
import threading
from collections.abc import Callable
from typing import Any

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

_IN_TRANSACTION = threading.local()
#: One backed-up item: its table, its key, and a deep copy of it (None: it did not exist).
Backup = tuple[Table, DynamoType, DynamoType | None, Any]


#: Held by every write of the endpoint's DynamoDB (re-entered by a transaction's own writes).
_WRITES = threading.RLock()


def install() -> None:
    if getattr(DynamoDBBackend.transact_write_items, "_item_backups", False):
        return
    original: Callable[[DynamoDBBackend, list[dict[str, Any]]], None] = DynamoDBBackend.transact_write_items

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        with _WRITES:
            backups = _back_up(self, transact_items)
            _IN_TRANSACTION.active = True
            try:
                original(self, transact_items)
            except BaseException:
                _restore(backups)
                raise
            finally:
                _IN_TRANSACTION.active = False

    transact_write_items._item_backups = True  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    for name in ("put_item", "update_item", "delete_item"):
        setattr(DynamoDBBackend, name, _serialised(getattr(DynamoDBBackend, name)))
    Table.__deepcopy__ = _table_deepcopy  # type: ignore[attr-defined]


def _serialised(write: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(write)
    def serialised(*args: Any, **kwargs: Any) -> Any:
        with _WRITES:
            return write(*args, **kwargs)

    return serialised


def _table_deepcopy(self: Table, memo: dict[int, Any]) -> Table:
    """Within a transaction, moto's backup of a whole table is the table itself; elsewhere
    (moto's own backups and restores) a deep copy as before."""
    if getattr(_IN_TRANSACTION, "active", False):
        return self
    return copy._reconstruct(self, memo, *self.__reduce_ex__(4))  # type: ignore[attr-defined,no-any-return]


def _back_up(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> list[Backup]:
    backups: list[Backup] = []
    for entry in transact_items:
        operation = next(iter(entry.values()), None) if isinstance(entry, dict) else None
        if not isinstance(operation, dict):
            continue  # moto refuses it before writing anything
        try:
            table = backend.get_table(str(operation.get("TableName")))  # a name or an ARN
            source = operation["Key"] if "Key" in operation else operation["Item"]
            hash_value = DynamoType(source[table.hash_key_attr])
            range_value = DynamoType(source[table.range_key_attr]) if table.range_key_attr else None
            current = table.get_item(hash_value, range_value)
        except Exception:  # no such table, no key, or a malformed one: moto refuses the operation
            continue
        backups.append((table, hash_value, range_value, copy.deepcopy(current)))
    return backups


def _restore(backups: list[Backup]) -> None:
    """Put every touched item back as it was, last backup first (an item named twice is refused
    by moto before anything is written, but the order is right either way)."""
    for table, hash_value, range_value, item in reversed(backups):
        if range_value is None:
            if item is None:
                table.items.pop(hash_value, None)
            else:
                table.items[hash_value] = item
        elif item is None:
            table.items.get(hash_value, {}).pop(range_value, None)
        else:
            table.items[hash_value][range_value] = item
