"""The tables contract: conditional writes, atomic counters and index pages behave the same on
DynamoDB (moto) and on the local SQLite tables, so records, accounts and quotas are written once."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.digests import DIGEST_PREFIX
from pipeline.core.errors import NotFound
from pipeline.core.items import (
    Add,
    AllOf,
    AnyOf,
    AtMost,
    ConditionFailed,
    Contains,
    DeleteItem,
    Equals,
    Exclude,
    Include,
    Lacks,
    Missing,
    Present,
    PutItem,
    Remove,
    Set,
    SetDefault,
    TransactionRefused,
    UpdateItem,
)
from pipeline.core.layout import IMAGE_IDS_ABOVE
from pipeline.local.database import Database, _Reader
from pipeline.local.storage import LocalStorage, create_bucket
from pipeline.local.tables import LocalTables
from tests.support.backends import CONTRACT_TARGETS, Backend


@CONTRACT_TARGETS
async def test_conditional_puts_and_deletes(backend: Backend) -> None:
    users = backend.tables.users
    user = {
        "user_id": str(uuid.uuid4()),
        "name": "ann",
        "score": 2.5,
        "count": 3,
        "tags": ["a"],
        "d": {"x": 1},
    }
    await users.put(user, Missing("user_id"))
    with pytest.raises(ConditionFailed):
        await users.put({**user, "name": "bob"}, Missing("user_id"))
    assert await users.get({"user_id": user["user_id"]}) == user  # numbers and nesting round-trip
    with pytest.raises(ConditionFailed):
        await users.delete({"user_id": user["user_id"]}, Equals("name", "bob"))
    assert await users.delete({"user_id": user["user_id"]}, Equals("name", "ann")) == user
    assert await users.get({"user_id": user["user_id"]}) is None
    assert await users.delete({"user_id": user["user_id"]}) is None


@CONTRACT_TARGETS
async def test_updates_create_add_default_and_remove(backend: Backend) -> None:
    throttle = backend.tables.throttle
    key = {"id": f"slot-{uuid.uuid4()}"}
    first = await throttle.update(key, [Add("failures", 1), SetDefault("expires_at", 100)])
    assert first == {**key, "failures": 1, "expires_at": 100}  # created, a missing counter is 0
    second = await throttle.update(key, [Add("failures", 1), SetDefault("expires_at", 200), Set("note", "x")])
    assert second == {**key, "failures": 2, "expires_at": 100, "note": "x"}
    third = await throttle.update(key, [Remove("note"), Remove("never")], Present("id"))
    assert third == {**key, "failures": 2, "expires_at": 100}
    with pytest.raises(ConditionFailed):
        await throttle.update({"id": "absent"}, [Set("a", 1)], Present("id"))
    assert await throttle.get({"id": "absent"}) is None  # a failed condition writes nothing


@CONTRACT_TARGETS
async def test_a_transaction_writes_all_or_nothing_across_tables(backend: Backend) -> None:
    """Writes on two tables at once: committed together, or (one condition failing) none of
    them, with the failing write named."""
    users, images = backend.tables.users, backend.tables.images
    user = {"user_id": f"tx-{uuid.uuid4()}"}
    image = {"user_id": user["user_id"], "image_id": "one"}
    await users.put({**user, "bytes_used": 10})
    await backend.tables.images.transact(
        [
            PutItem(images, {**image, "revision": 1}, Missing("user_id")),
            UpdateItem(users, user, [Add("bytes_used", 5), Add("image_count", 1)], Present("user_id")),
        ]
    )
    assert (await images.get(image) or {}).get("revision") == 1
    assert (await users.get(user) or {}).get("bytes_used") == 15

    refused = [  # the second write's condition fails: the first is not kept either
        UpdateItem(users, user, [Add("bytes_used", 100)]),
        PutItem(images, {**image, "revision": 2}, Equals("revision", 7)),
        DeleteItem(users, {"user_id": "nobody"}),
    ]
    with pytest.raises(TransactionRefused) as refusal:
        await users.transact(refused)
    assert refusal.value.index == 1
    assert (await users.get(user) or {}).get("bytes_used") == 15
    assert (await images.get(image) or {}).get("revision") == 1

    await users.transact(
        [
            DeleteItem(images, image, Equals("revision", 1)),
            UpdateItem(
                users, user, [Add("bytes_used", -15), Add("image_count", -1)], AtMost("image_count", 1)
            ),
        ]
    )
    assert await images.get(image) is None
    assert (await users.get(user) or {}).get("bytes_used") == 0


@CONTRACT_TARGETS
async def test_string_sets_include_exclude_and_condition_on_membership(backend: Backend) -> None:
    """Variant names live in a string set: added once (a condition refuses a second), taken out,
    gone when emptied, and a whole-item write of what was read keeps it a set."""
    images = backend.tables.images
    key = {"user_id": f"u-{uuid.uuid4()}", "image_id": "i"}
    await images.update(key, [Include("names", "a"), Add("n", 1)], Lacks("names", "a"))
    with pytest.raises(ConditionFailed):
        await images.update(key, [Include("names", "a"), Add("n", 1)], Lacks("names", "a"))
    await images.update(key, [Include("names", "b")], Lacks("names", "b"))
    item = await images.get(key)
    assert item is not None and sorted(item["names"]) == ["a", "b"] and item["n"] == 1
    await images.put({**item, "created_key": "x"})  # a whole-record write passes the set back
    await images.update(key, [Include("names", "c")], AllOf((Contains("names", "a"), Lacks("names", "c"))))
    with pytest.raises(ConditionFailed):
        await images.update(key, [Exclude("names", "z")], Contains("names", "z"))
    for name in ("a", "b", "c"):
        await images.update(key, [Exclude("names", name)], Contains("names", name))
    assert "names" not in (await images.get(key) or {"names": 1})


@CONTRACT_TARGETS
@given(charges=st.lists(st.tuples(st.integers(-3, 5), st.integers(-1, 2)), max_size=12))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_quota_conditions_decide_like_a_model(backend: Backend, charges: list[tuple[int, int]]) -> None:
    """The quota's shape: ADD both counters only if each stays within its limit (or is absent)."""
    users, limit_b, limit_n = backend.tables.users, 10, 3
    key = {"user_id": str(uuid.uuid4())}
    await users.put({**key, "name": ""}, Missing("user_id"))
    model = {"bytes_used": None, "image_count": None}
    for delta_b, delta_n in charges:
        condition = AllOf(
            (
                Present("user_id"),
                AnyOf((Missing("bytes_used"), AtMost("bytes_used", limit_b - delta_b))),
                AnyOf((Missing("image_count"), AtMost("image_count", limit_n - delta_n))),
            )
        )
        allowed = all(
            model[name] is None or model[name] <= limit - delta  # type: ignore[operator]
            for name, limit, delta in (("bytes_used", limit_b, delta_b), ("image_count", limit_n, delta_n))
        )
        try:
            item = await users.update(
                key, [Add("bytes_used", delta_b), Add("image_count", delta_n)], condition
            )
        except ConditionFailed:
            assert not allowed
            continue
        assert allowed
        model = {
            "bytes_used": (model["bytes_used"] or 0) + delta_b,
            "image_count": (model["image_count"] or 0) + delta_n,
        }
        assert (item["bytes_used"], item["image_count"]) == (model["bytes_used"], model["image_count"])


@CONTRACT_TARGETS
async def test_index_pages_cover_everything_once_in_order(backend: Backend) -> None:
    images, owner, other = backend.tables.images, str(uuid.uuid4()), str(uuid.uuid4())
    made = []
    for i in range(7):
        created = f"2026-12-0{i % 3 + 1}T00:00:00Z"  # ties in time, broken by id
        item = {"user_id": owner, "image_id": f"img{i}", "created_key": f"{created}#img{i}"}
        made.append(item)
        await images.put(item)
    await images.put({"user_id": other, "image_id": "x", "created_key": "2026-12-09T00:00:00Z#x"})
    for forward in (True, False):
        seen, start = [], None
        while True:
            page, start = await images.query(owner, index="by_created", forward=forward, limit=3, start=start)
            assert len(page) <= 3
            seen += [item["image_id"] for item in page]
            if start is None:
                break
        expected = [i["image_id"] for i in sorted(made, key=lambda i: i["created_key"], reverse=not forward)]
        assert seen == expected
    everything, last = await images.query(owner)
    assert last is None and sorted(i["image_id"] for i in everything) == [f"img{i}" for i in range(7)]
    # A key condition on the range: what sorts at or before `above` is never read.
    await images.put({"user_id": owner, "image_id": "#note"})
    for forward in (True, False):
        seen, start = [], None
        while True:
            page, start = await images.query(owner, forward=forward, limit=1, above="img4", start=start)
            seen += [item["image_id"] for item in page]
            if start is None:
                break
        assert seen == (["img5", "img6"] if forward else ["img6", "img5"])
    ids, _ = await images.query(owner, above=IMAGE_IDS_ABOVE)
    assert "#note" not in [i["image_id"] for i in ids] and len(ids) == 7
    assert DIGEST_PREFIX + "f" * 64 < IMAGE_IDS_ABOVE < min("0", "A", "a")


@CONTRACT_TARGETS
async def test_keys_by_user_and_scans(backend: Backend) -> None:
    keys, user = backend.tables.keys, str(uuid.uuid4())
    for i in range(3):
        await keys.put({"key_id": f"{user[:8]}{i}", "user_id": user, "created_at": f"2026-01-0{3 - i}"})
    found, _ = await keys.query(user, index="by_user")
    assert [k["key_id"] for k in found] == [f"{user[:8]}{i}" for i in (2, 1, 0)]  # oldest first
    assert {k["key_id"] for k in await keys.scan_all()} >= {k["key_id"] for k in found}


async def test_local_tables_drop_expired_throttle_counters(tmp_path: Path) -> None:
    """DynamoDB's TTL removes expired throttle items by itself; the local tables on open."""
    db = await Database(tmp_path / "state.db").open()
    try:
        tables = LocalTables(db)
        await tables.throttle.update({"id": "old"}, [Add("failures", 1), SetDefault("expires_at", 100)])
        await tables.throttle.update({"id": "new"}, [Add("failures", 1), SetDefault("expires_at", 10**10)])
        assert await tables.expire(1000) == 1
        assert await tables.throttle.get({"id": "old"}) is None
        assert await tables.throttle.get({"id": "new"}) is not None
    finally:
        await db.close()


async def test_point_reads_run_on_the_loop_and_fall_back_to_the_thread(tmp_path: Path) -> None:
    """Lookups by key run on the event loop's thread (no hop to a thread and back); one whose
    reader fails (as one must not wait for another process recovering the WAL) is run again on
    the database's own thread, and answers the same."""
    db = await Database(tmp_path / "state.db").open()
    try:
        tables = LocalTables(db)
        await tables.config.put({"name": "k", "value": 1})
        threads: list[int] = []

        def read(conn: sqlite3.Connection) -> object:
            threads.append(threading.get_ident())
            return conn.execute("SELECT doc FROM items WHERE tbl = 'config'").fetchone()[0]

        assert await db.lookup(read) == '{"name": "k", "value": 1}'
        assert threads == [threading.get_ident()]
        # A reader whose statements fail (OperationalError, as a busy one's would): one on an
        # empty database, where the table is missing.
        failing = sqlite3.connect(tmp_path / "empty.db", isolation_level=None)
        db._reader_conns.append(failing)  # closed with the database's own readers
        db._readers.reader = _Reader(failing)
        assert await db.lookup(read) == '{"name": "k", "value": 1}'
        assert len(threads) == 3 and threads[2] != threading.get_ident()
        assert await tables.config.get({"name": "k"}) == {"name": "k", "value": 1}
    finally:
        await db.close()


async def test_remembered_point_reads_follow_every_commit_of_any_connection(tmp_path: Path) -> None:
    """A point read is remembered until the database changes: a write through this database, or
    through another opened on the same file (another process's), is seen by the next read, as
    an object replaced through either is; reads in between are answered from memory."""
    first = await Database(tmp_path / "state.db").open()
    second = await Database(tmp_path / "state.db").open()
    try:
        mine, theirs = LocalTables(first), LocalTables(second)
        storage = LocalStorage(first, tmp_path / "objects")
        other_storage = LocalStorage(second, tmp_path / "objects")
        await create_bucket(first, "b")
        await mine.config.put({"name": "k", "value": 1})
        await storage.put("b", "o", b"one", "text/plain")
        statements: list[str] = []
        reader = first._reader()
        reader.conn.set_trace_callback(statements.append)
        for _ in range(3):
            assert await mine.config.get({"name": "k"}) == {"name": "k", "value": 1}
            assert (await storage.head("b", "o")).size == 3
        assert sum("SELECT" in statement for statement in statements) == 2  # once each
        for value, tables in enumerate((mine, theirs, mine), start=2):
            await tables.config.put({"name": "k", "value": value})
            assert await mine.config.get({"name": "k"}) == {"name": "k", "value": value}
        await other_storage.put("b", "o", b"second", "text/plain")
        meta, chunks = await storage.stream("b", "o")
        assert meta.size == 6 and b"".join([chunk async for chunk in chunks]) == b"second"
        await other_storage.delete_many("b", ["o"])
        with pytest.raises(NotFound):
            await storage.head("b", "o")
        got = await mine.config.get({"name": "k"})
        assert got is not None
        got["value"] = "changed by a caller"  # every caller gets an item of its own
        assert await mine.config.get({"name": "k"}) == {"name": "k", "value": 4}
    finally:
        await first.close()
        await second.close()
