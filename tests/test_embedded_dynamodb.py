"""The embedded endpoint's transactions back up the items they touch, not whole tables
(`pipeline.aws.embedded_dynamodb`): a refused one puts back exactly those, and leaves everything
else as it is, including writes that are not its own; moto's own copies of a table stay copies."""

from __future__ import annotations

import copy
import uuid

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends

from pipeline.core.items import Add, Equals, Missing, PutItem, Set, TransactionRefused, UpdateItem
from tests.support.backends import Backend

#: moto's DynamoDB, patched in this process (no moto server): the moto tier.
pytestmark = [pytest.mark.parametrize("backend", ["aws"], indirect=True), pytest.mark.moto]


async def test_a_refused_transaction_puts_back_what_it_touched_and_only_that(backend: Backend) -> None:
    users, images = backend.tables.users, backend.tables.images
    owner = f"tx-{uuid.uuid4()}"
    for n in range(300):  # a table of some size, which no transaction copies any more
        await images.put({"user_id": owner, "image_id": f"i{n}", "n": n})
    await users.put({"user_id": owner, "bytes_used": 10})
    refused = [
        UpdateItem(users, {"user_id": owner}, [Add("bytes_used", 5)]),  # applied by moto, then undone
        PutItem(images, {"user_id": owner, "image_id": "new", "n": -1}, Missing("user_id")),  # undone
        UpdateItem(images, {"user_id": owner, "image_id": "i7"}, [Set("n", 0)], Equals("n", 8)),  # fails
    ]
    with pytest.raises(TransactionRefused) as refusal:
        await users.transact(refused)
    assert refusal.value.index == 2
    assert (await users.get({"user_id": owner}) or {}).get("bytes_used") == 10
    assert await images.get({"user_id": owner, "image_id": "new"}) is None
    assert (await images.get({"user_id": owner, "image_id": "i7"}) or {}).get("n") == 7
    items, _ = await images.query(owner, limit=1000)
    assert len(items) == 300 and {int(i["n"]) for i in items} == set(range(300))


async def test_a_table_deep_copied_outside_a_transaction_is_still_a_copy(backend: Backend) -> None:
    await backend.tables.users.put({"user_id": f"c-{uuid.uuid4()}"})
    region = backend.settings.aws.region
    table = next(iter(dynamodb_backends[DEFAULT_ACCOUNT_ID][region].tables.values()))
    copied = copy.deepcopy(table)
    assert copied is not table and copied.items is not table.items
    assert copied.items.keys() == table.items.keys()
