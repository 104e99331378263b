"""DynamoDB tables: their schema, provisioning, and a thin typed layer over the low-level client.

Items go in and out as plain Python values (boto3's attribute-value serializer does the typing);
botocore errors become `DatabaseUnavailable`, a failed condition becomes `ConditionFailed`, so
callers express optimistic concurrency without seeing botocore.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from config.settings import AwsSettings
from pipeline.aws.clients import aws_errors, error_code
from pipeline.core.errors import DatabaseUnavailable
from pipeline.core.items import (
    Add,
    AllOf,
    AnyOf,
    AtMost,
    Change,
    Condition,
    ConditionFailed,
    Contains,
    DeleteItem,
    Equals,
    Exclude,
    Include,
    Item,
    Lacks,
    Missing,
    Present,
    PutItem,
    Remove,
    Set,
    SetDefault,
    TransactionRefused,
    UpdateItem,
    Write,
)
from pipeline.core.topology import SPECS, TableSpec

log = logging.getLogger(__name__)
_serializer = TypeSerializer()
#: Tries of a transaction that lost a race with another one on the same item.
TRANSACTION_ATTEMPTS = 3
_deserializer = TypeDeserializer()

__all__ = ["ConditionFailed", "Item", "Table", "Tables"]


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(_plain(v)) for k, v in values.items() if v is not None}


def from_item(item: Mapping[str, Any]) -> Item:
    return {k: _python(_deserializer.deserialize(v)) for k, v in item.items()}


def _plain(value: Any) -> Any:
    """DynamoDB numbers are Decimals; floats are converted through their repr (no binary noise)."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _python(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _python(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_python(v) for v in value]
    return value


class Table:
    """One table: get, put, update, delete and query, with `pipeline.core.items` conditions and changes
    compiled to DynamoDB expressions, so each write is one atomic request."""

    def __init__(self, client: Any, name: str, spec: TableSpec) -> None:
        self._client = client
        self.name = name
        self._spec = spec

    async def get(self, key: Mapping[str, Any], *, consistent: bool = True) -> Item | None:
        with aws_errors(DatabaseUnavailable):
            got = await self._client.get_item(
                TableName=self.name, Key=to_item(key), ConsistentRead=consistent
            )
        return from_item(got["Item"]) if "Item" in got else None

    async def put(self, item: Mapping[str, Any], condition: Condition | None = None) -> None:
        expression = _Expression()
        kwargs = expression.condition_kwargs(condition)
        await self._write(self._client.put_item(TableName=self.name, Item=to_item(item), **kwargs))

    async def update(
        self, key: Mapping[str, Any], changes: Sequence[Change], condition: Condition | None = None
    ) -> Item:
        """Apply `changes` (creating the item if there is none) and return it as it is afterwards."""
        expression = _Expression()
        update = expression.update(changes)
        kwargs = expression.condition_kwargs(condition)
        response = await self._write(
            self._client.update_item(
                TableName=self.name,
                Key=to_item(key),
                UpdateExpression=update,
                ReturnValues="ALL_NEW",
                **kwargs,
            )
        )
        return from_item(response.get("Attributes", {}))

    async def delete(self, key: Mapping[str, Any], condition: Condition | None = None) -> Item | None:
        """Delete and return the item as it was (None if there was none)."""
        kwargs = _Expression().condition_kwargs(condition)
        response = await self._write(
            self._client.delete_item(TableName=self.name, Key=to_item(key), ReturnValues="ALL_OLD", **kwargs)
        )
        return from_item(response["Attributes"]) if response.get("Attributes") else None

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
        """One page of the items under `hash_value` (of the table, or of `index`), in range
        order, and the key to continue from (None at the end); `above`: only range keys after it."""
        key = self._spec.indexes[index] if index else self._spec.key
        expression = _Expression()
        condition = f"{expression.name(key[0])} = {expression.value(hash_value)}"
        if above is not None:
            condition += f" AND {expression.name(key[1])} > {expression.value(above)}"
        kwargs: dict[str, Any] = expression.kwargs()
        kwargs.update(TableName=self.name, KeyConditionExpression=condition, ScanIndexForward=forward)
        if index:
            kwargs["IndexName"] = index
        if limit:
            kwargs["Limit"] = limit
        if start:
            kwargs["ExclusiveStartKey"] = to_item(start)
        with aws_errors(DatabaseUnavailable):
            response = await self._client.query(**kwargs)
        last = response.get("LastEvaluatedKey")
        return [from_item(i) for i in response.get("Items", [])], from_item(last) if last else None

    async def scan_all(self) -> list[Item]:
        """Every item (small administrative tables only: users, keys)."""
        items: list[Item] = []
        kwargs: dict[str, Any] = {"TableName": self.name}
        while True:
            with aws_errors(DatabaseUnavailable):
                response = await self._client.scan(**kwargs)
            items.extend(from_item(i) for i in response.get("Items", []))
            if not response.get("LastEvaluatedKey"):
                return items
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    async def transact(self, writes: Sequence[Write]) -> None:
        """One TransactWriteItems: all of `writes` or none. A write that lost a race with another
        transaction on its item (`TransactionConflict`) is tried again, twice, before the
        database counts as unavailable: that is contention, not a condition that failed."""
        request = [_transact_item(write) for write in writes]
        for attempt in range(TRANSACTION_ATTEMPTS):
            with aws_errors(DatabaseUnavailable):
                try:
                    await self._client.transact_write_items(TransactItems=request)
                    return
                except ClientError as exc:
                    if error_code(exc) != "TransactionCanceledException":
                        raise
                    codes = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                    if "ConditionalCheckFailed" in codes:
                        raise TransactionRefused(codes.index("ConditionalCheckFailed")) from None
                    if "TransactionConflict" not in codes or attempt == TRANSACTION_ATTEMPTS - 1:
                        raise
            await asyncio.sleep(0.05 * 2**attempt)

    async def _write(self, call: Any) -> dict[str, Any]:
        with aws_errors(DatabaseUnavailable):
            try:
                response: dict[str, Any] = await call
            except ClientError as exc:
                if error_code(exc) == "ConditionalCheckFailedException":
                    raise ConditionFailed() from None
                raise
        return response


def _transact_item(write: Write) -> dict[str, Any]:
    """One write of a TransactWriteItems request, with its own placeholders."""
    expression = _Expression()
    match write:
        case PutItem(table, item, condition):
            kwargs = expression.condition_kwargs(condition)
            return {"Put": {"TableName": table.name, "Item": to_item(item), **kwargs}}
        case UpdateItem(table, key, changes, condition):
            update = expression.update(changes)
            kwargs = expression.condition_kwargs(condition)
            return {
                "Update": {"TableName": table.name, "Key": to_item(key), "UpdateExpression": update, **kwargs}
            }
        case DeleteItem(table, key, condition):
            kwargs = expression.condition_kwargs(condition)
            return {"Delete": {"TableName": table.name, "Key": to_item(key), **kwargs}}
    raise TypeError(f"not a write: {write!r}")


def _flattened(group: AllOf | AnyOf) -> list[Condition]:
    """The members of `group`, with those of nested groups of its own kind in their place."""
    out: list[Condition] = []
    for member in group.conditions:
        if type(member) is type(group):
            assert isinstance(member, AllOf | AnyOf)
            out.extend(_flattened(member))
        else:
            out.append(member)
    return out


class _Expression:
    """Compiles conditions and changes to DynamoDB expressions; every name and value becomes a
    placeholder, so no attribute name can collide with a reserved word."""

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._values: dict[str, Any] = {}

    def name(self, attribute: str) -> str:
        for placeholder, known in self._names.items():
            if known == attribute:
                return placeholder
        placeholder = f"#n{len(self._names)}"
        self._names[placeholder] = attribute
        return placeholder

    def value(self, value: Any) -> str:
        placeholder = f":v{len(self._values)}"
        self._values[placeholder] = value
        return placeholder

    def condition(self, condition: Condition) -> str:
        match condition:
            case Present(name):
                return f"attribute_exists({self.name(name)})"
            case Missing(name):
                return f"attribute_not_exists({self.name(name)})"
            case Equals(name, value):
                return f"{self.name(name)} = {self.value(value)}"
            case AtMost(name, value):
                return f"{self.name(name)} <= {self.value(value)}"
            case Lacks(name, element):
                return f"NOT contains({self.name(name)}, {self.value(element)})"
            case Contains(name, element):
                return f"contains({self.name(name)}, {self.value(element)})"
            case AllOf() | AnyOf():
                # DynamoDB refuses redundant parentheses: nested groups of one kind are flattened
                # and a group of one is its member.
                flat = _flattened(condition)
                if len(flat) == 1:
                    return self.condition(flat[0])
                joiner = " AND " if isinstance(condition, AllOf) else " OR "
                return "(" + joiner.join(self.condition(c) for c in flat) + ")"
        raise TypeError(f"not a condition: {condition!r}")

    def update(self, changes: Sequence[Change]) -> str:
        sets: list[str] = []
        adds: list[str] = []
        removes: list[str] = []
        deletes: list[str] = []
        for change in changes:
            match change:
                case Set(name, value):
                    sets.append(f"{self.name(name)} = {self.value(value)}")
                case SetDefault(name, value):
                    placeholder = self.name(name)
                    sets.append(f"{placeholder} = if_not_exists({placeholder}, {self.value(value)})")
                case Add(name, amount):
                    adds.append(f"{self.name(name)} {self.value(amount)}")
                case Remove(name):
                    removes.append(self.name(name))
                case Include(name, element):
                    adds.append(f"{self.name(name)} {self.value({element})}")
                case Exclude(name, element):
                    deletes.append(f"{self.name(name)} {self.value({element})}")
        clauses = [("SET", sets), ("ADD", adds), ("REMOVE", removes), ("DELETE", deletes)]
        return " ".join(f"{verb} {', '.join(parts)}" for verb, parts in clauses if parts)

    def condition_kwargs(self, condition: Condition | None) -> dict[str, Any]:
        if condition is None:
            return self.kwargs()
        text = self.condition(condition)
        return {"ConditionExpression": text, **self.kwargs()}

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._names:
            out["ExpressionAttributeNames"] = dict(self._names)
        if self._values:
            out["ExpressionAttributeValues"] = to_item(self._values)
        return out


class Tables:
    """The service's tables, by role."""

    def __init__(self, client: Any, aws: AwsSettings) -> None:
        tables = {spec.name: Table(client, aws.table(spec.name), spec) for spec in SPECS}
        self.users = tables["users"]
        self.keys = tables["keys"]
        self.images = tables["images"]
        self.throttle = tables["throttle"]
        self.config = tables["config"]
        self.requests = tables["requests"]


async def provision_tables(client: Any, aws: AwsSettings) -> list[str]:
    """Create the tables that do not exist yet (on-demand capacity), wait until they are active."""
    created = []
    for spec in SPECS:
        name = aws.table(spec.name)
        with aws_errors(DatabaseUnavailable):
            try:
                await client.describe_table(TableName=name)
                continue
            except ClientError as exc:
                if error_code(exc) != "ResourceNotFoundException":
                    raise
            await client.create_table(**_create_args(name, spec))
            await client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1})
            if spec.ttl_attribute:
                await client.update_time_to_live(
                    TableName=name,
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute},
                )
        created.append(name)
    if created:
        log.info("created tables %s", ", ".join(created))
    return created


def _create_args(name: str, spec: TableSpec) -> dict[str, Any]:
    def schema(key: tuple[str, ...]) -> list[dict[str, str]]:
        return [
            {"AttributeName": attribute, "KeyType": kind}
            for attribute, kind in zip(key, ("HASH", "RANGE"), strict=False)
        ]

    attributes = {a for key in (spec.key, *spec.indexes.values()) for a in key}
    args: dict[str, Any] = {
        "TableName": name,
        "BillingMode": "PAY_PER_REQUEST",
        "KeySchema": schema(spec.key),
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in sorted(attributes)],
        # Tables hold users, key hashes and image records: encrypted at rest with AWS's key.
        "SSESpecification": {"Enabled": True},
    }
    if spec.indexes:
        args["GlobalSecondaryIndexes"] = [
            {"IndexName": index, "KeySchema": schema(key), "Projection": {"ProjectionType": "ALL"}}
            for index, key in spec.indexes.items()
        ]
    return args
