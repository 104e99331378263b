"""The queue contract: what the consumer relies on, held by SQS (moto) and the local queue alike."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.core.errors import LeaseLost
from tests.support.backends import CONTRACT_TARGETS, Backend

#: On moto, MiniStack and the local backend.
pytestmark = CONTRACT_TARGETS


async def test_a_received_message_is_leased_then_comes_back_counted(backend: Backend) -> None:
    sent = await backend.main.send("hello", {"reason": "testing", "empty": ""})
    [message] = await backend.main.receive(10, 0, visibility_timeout=30)
    assert (message.id, message.body, message.receive_count) == (sent, "hello", 1)
    assert message.attributes == {"reason": "testing"}  # empty attributes are not sent
    assert await backend.main.receive(10, 0) == []  # leased: invisible to others
    assert await backend.main.depth() == {"visible": 0, "in_flight": 1}
    await backend.main.change_visibility(message.receipt_handle, 0)
    [again] = await backend.main.receive(10, 0, visibility_timeout=30)
    assert (again.id, again.receive_count) == (sent, 2)
    assert again.receipt_handle != message.receipt_handle


async def test_deleted_messages_are_gone_and_a_stale_handle_cannot_extend_a_lease(backend: Backend) -> None:
    for i in range(3):
        await backend.main.send(f"m{i}")
    received = await backend.main.receive(10, 0, visibility_timeout=30)
    while len(received) < 3:  # SQS may hand out fewer than asked
        received += await backend.main.receive(10, 1, visibility_timeout=30)
    assert sorted(m.body for m in received) == ["m0", "m1", "m2"]
    failed = await backend.main.delete_batch([(m.id, m.receipt_handle) for m in received[:2]])
    assert failed == {}
    await backend.main.delete(received[2].receipt_handle)
    assert await backend.main.depth() == {"visible": 0, "in_flight": 0}
    with pytest.raises(LeaseLost):
        await backend.main.change_visibility(received[0].receipt_handle, 10)


async def test_a_message_received_too_often_moves_to_the_dead_letter_queue(backend: Backend) -> None:
    limit = backend.settings.consumer.redrive_max_receive_count
    await backend.main.send("poison")
    for attempt in range(1, limit + 1):
        [message] = await backend.main.receive(1, 1, visibility_timeout=30)
        assert message.receive_count == attempt
        await backend.main.change_visibility(message.receipt_handle, 0)
    assert await backend.main.receive(1, 1) == []  # the next receive moves it instead
    [dead] = await backend.dlq.receive(1, 1, visibility_timeout=30)
    assert dead.body == "poison"


async def test_a_long_poll_returns_as_soon_as_a_message_arrives(backend: Backend) -> None:
    started = time.monotonic()
    poll = asyncio.create_task(backend.main.receive(1, 10, visibility_timeout=30))
    await asyncio.sleep(0.3)
    await backend.main.send("late")
    [message] = await poll
    assert message.body == "late"
    assert time.monotonic() - started < 5
    started = time.monotonic()
    assert await backend.main.receive(1, 1) == []
    assert 0.9 < time.monotonic() - started < 5  # an empty long poll waits its whole time


async def test_purge_empties_the_queue(backend: Backend) -> None:
    for i in range(4):
        await backend.main.send(f"m{i}")
    await backend.main.purge()
    await asyncio.sleep(0.1)
    assert await backend.main.receive(10, 0) == []
    assert await backend.main.depth() == {"visible": 0, "in_flight": 0}
