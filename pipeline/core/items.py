"""Conditions and changes on items, as data rather than DynamoDB expression strings.

Records, accounts, quotas, webhooks and the auth throttle express their optimistic
concurrency with these few shapes; each backend's table carries them out: the DynamoDB table
compiles them to condition and update expressions (one atomic request), the local table
evaluates them with `holds` and `applied` inside one SQLite write transaction. So the domain code
is written once and cannot tell the backends apart. Pure: the standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Item = dict[str, Any]


class ConditionFailed(Exception):
    """A conditional write found the item in another state than it required."""


class TransactionRefused(ConditionFailed):
    """A write of a transaction found its item in another state than it required: nothing of
    the transaction was written. `index` says which write (in the order given)."""

    def __init__(self, index: int) -> None:
        super().__init__(f"write {index} of the transaction: condition failed")
        self.index = index


@dataclass(frozen=True)
class Present:
    """`attribute_exists(name)`; on a key attribute: the item exists."""

    name: str


@dataclass(frozen=True)
class Missing:
    """`attribute_not_exists(name)`; on a key attribute: the item does not exist."""

    name: str


@dataclass(frozen=True)
class Equals:
    name: str
    value: Any


@dataclass(frozen=True)
class AtMost:
    name: str
    value: int | float


@dataclass(frozen=True)
class AllOf:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    conditions: tuple[Condition, ...]


@dataclass(frozen=True)
class Lacks:
    """`NOT contains(name, element)`: the set `name` (missing counts as empty) lacks `element`."""

    name: str
    element: str


@dataclass(frozen=True)
class Contains:
    """`contains(name, element)`: the set `name` holds `element`."""

    name: str
    element: str


Condition = Present | Missing | Equals | AtMost | Lacks | Contains | AllOf | AnyOf


@dataclass(frozen=True)
class Set:
    name: str
    value: Any


@dataclass(frozen=True)
class SetDefault:
    """Set unless the attribute already has a value (`if_not_exists`)."""

    name: str
    value: Any


@dataclass(frozen=True)
class Add:
    """Add to a number, a missing one counting as zero (DynamoDB's `ADD`)."""

    name: str
    amount: int


@dataclass(frozen=True)
class Remove:
    name: str


@dataclass(frozen=True)
class Include:
    """Put `element` in the string set `name`, made if missing (DynamoDB's `ADD` on a set)."""

    name: str
    element: str


@dataclass(frozen=True)
class Exclude:
    """Take `element` out of the string set `name`; an emptied set goes (DynamoDB's `DELETE`)."""

    name: str
    element: str


Change = Set | SetDefault | Add | Remove | Include | Exclude


# Writes of a transaction (`ItemTable.transact`): each names its table, which is any object of
# the backend's table class (a `pipeline.aws.tables.Table` or a `pipeline.local.tables.LocalTable`).


@dataclass(frozen=True)
class PutItem:
    table: Any
    item: Mapping[str, Any]
    condition: Condition | None = None


@dataclass(frozen=True)
class UpdateItem:
    table: Any
    key: Mapping[str, Any]
    changes: Sequence[Change]
    condition: Condition | None = None


@dataclass(frozen=True)
class DeleteItem:
    table: Any
    key: Mapping[str, Any]
    condition: Condition | None = None


Write = PutItem | UpdateItem | DeleteItem


def holds(condition: Condition | None, item: Mapping[str, Any] | None) -> bool:
    """Whether `condition` holds for `item` (None: no such item), as DynamoDB decides it."""
    if condition is None:
        return True
    found = item or {}
    match condition:
        case Present(name):
            return name in found
        case Missing(name):
            return name not in found
        case Equals(name, value):
            return name in found and found[name] == value
        case AtMost(name, value):
            current = found.get(name)
            return isinstance(current, int | float) and not isinstance(current, bool) and current <= value
        case Lacks(name, element):
            return element not in found.get(name, ())
        case Contains(name, element):
            return element in found.get(name, ())
        case AllOf(conditions):
            return all(holds(c, item) for c in conditions)
        case AnyOf(conditions):
            return any(holds(c, item) for c in conditions)
    raise TypeError(f"not a condition: {condition!r}")


def applied(changes: Sequence[Change], item: Mapping[str, Any]) -> Item:
    """A new item with `changes` made to `item` (which is left as it was)."""
    out = dict(item)
    for change in changes:
        match change:
            case Set(name, value):
                out[name] = value
            case SetDefault(name, value):
                out.setdefault(name, value)
            case Add(name, amount):
                out[name] = out.get(name, 0) + amount
            case Remove(name):
                out.pop(name, None)
            case Include(name, element):
                out[name] = sorted({*out.get(name, ()), element})
            case Exclude(name, element):
                out[name] = sorted(set(out.get(name, ())) - {element}) or None
    return {k: v for k, v in out.items() if v is not None}
