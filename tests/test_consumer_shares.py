"""The consumer is shared fairly between users: one user's backlog of slow images delays another
user's upload by about one job, not by the backlog; the backlog's messages are deferred (sent
again with a delay, never counted as failed attempts) and all of them still end ready."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.settings import SEED_USER_IDS
from pipeline.consumer.service import open_consumer
from pipeline.consumer.shares import HOLD_LIMIT, Shares
from pipeline.core.ports import Message
from tests.support.clients import ClientFactory, bearer, issue_key
from tests.support.consumers import shared_pool
from tests.support.images import jpeg_bytes
from tests.support.settings import local_settings
from web.keys import BACKEND


def slow_png(side: int) -> bytes:
    """A 16-bit RGB PNG of noise under Paeth filters: small to send, slow to decode."""
    row = b"\x04" + (os.urandom(64) * (side * 6 // 64 + 1))[: side * 6]

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 16, 2, 0, 0, 0)
    idat = zlib.compress(row * side, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.slow
async def test_a_backlog_delays_another_users_upload_by_about_one_job(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    settings = local_settings(
        tmp_path / "d",
        IMGSVC_CONSUMER_USER_MAX_IN_FLIGHT="0",  # the default share: half the in-flight limit (2)
        IMGSVC_CONSUMER_MAX_ATTEMPTS="2",
        IMGSVC_CONSUMER_WAIT_TIME_SECONDS="1",
    )
    api = await make_client(settings)
    backlog = [slow_png(3000) for _ in range(24)]  # ~0.3 s each: 7 s of work
    for n, data in enumerate(backlog):
        assert (await api.put(f"/images/slow{n}", data=io.BytesIO(data))).status == 202
    other = bearer(await issue_key(api.server.app, SEED_USER_IDS[4]))
    pool = await shared_pool(settings)
    async with open_consumer(api.server.app[BACKEND], settings, pool=pool) as consumer:
        running = asyncio.create_task(consumer.run())
        try:
            await asyncio.sleep(1.0)  # the backlog is under way
            assert (await api.put("/images/quick", data=jpeg_bytes(640, 480), headers=other)).status == 202
            started = time.monotonic()
            body = await (await api.get("/images/quick?wait=20", headers=other)).json()
            took = time.monotonic() - started
            assert body["status"] == "ready"
            async with asyncio.timeout(90):
                for n in range(len(backlog)):
                    record = await (await api.get(f"/images/slow{n}?wait=20")).json()
                    while record["status"] == "pending":
                        record = await (await api.get(f"/images/slow{n}?wait=20")).json()
                    assert record["status"] == "ready", record
        finally:
            consumer.stop()
            stats = await running
    # Behind the jobs running and its own turn: a couple of seconds, not the backlog's.
    print("took", took, stats.outcomes)
    assert took < 2.5, (took, stats.outcomes)
    assert stats.outcomes["deferred"] > 0 and stats.outcomes["ready"] == len(backlog) + 1
    assert "retry" not in stats.outcomes and "dead_lettered" not in stats.outcomes


def _message(n: int) -> Message:
    return Message(id=f"m{n}", receipt_handle=f"h{n}", body="{}", receive_count=1, attributes={})


@given(
    share=st.integers(1, 4),
    extra=st.integers(0, 4),
    steps=st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=60),
)
def test_a_held_message_never_waits_beside_an_idle_slot(
    share: int, extra: int, steps: list[tuple[bool, str]]
) -> None:
    """Driven as the consumer drives it (a received message runs if its owner may run, else is
    held; each finished job lets held ones run): an owner within its share always runs at once,
    an owner alone borrows every idle slot, and nothing is held while a slot is idle or while
    the owner it waits for runs fewer than its share."""
    limit = share + extra
    shares = Shares(share, limit)
    running: Counter[str] = Counter()
    for n, (arrive, owner) in enumerate(steps):
        if arrive:
            others_waiting = any(o != owner for o in shares._held)
            if shares.may_run(owner):
                if running[owner] >= share:  # borrowed: only an idle slot no one else waits for
                    assert running.total() < limit and not others_waiting
                shares.started(owner)
                running[owner] += 1
            else:
                assert running[owner] >= share, "an owner within its share waits"
                assert running.total() >= limit or others_waiting, "a lone owner left a slot idle"
                shares.hold(owner, _message(n))  # or, the room full, deferred: gone from here
        elif running[owner]:
            shares.finished(owner, 0.1)
            running[owner] -= 1
            while (held := shares.next_held()) is not None:
                shares.started(held[0])
                running[held[0]] += 1
        assert shares.running == running.total()
        assert shares.held <= HOLD_LIMIT
        for waiting in shares._held:
            assert running[waiting] >= share and running.total() >= limit, (waiting, running)


def test_an_owner_past_its_share_gives_borrowed_slots_back_to_another() -> None:
    shares = Shares(2, 4)
    for _ in range(4):  # alone, "a" borrows every slot
        assert shares.may_run("a")
        shares.started("a")
    assert not shares.may_run("a")
    assert shares.hold("a", _message(1))
    assert shares.may_run("b")  # within its share: at once, even past the limit
    shares.started("b")
    shares.finished("a", 0.2)
    assert shares.next_held() is None  # 4 running again: "a"'s borrowed slot went to "b"
    shares.started("b")
    assert not shares.may_run("b")  # at its share, and no slot idle
    assert shares.hold("b", _message(2))
    shares.finished("a", 0.2)
    shares.finished("a", 0.2)
    # Both wait, "a" running 1 and "b" 2: the one with fewer running goes first.
    taken = shares.next_held()
    assert taken is not None and taken[0] == "a"
    shares.started("a")
    assert shares.next_held() is None  # "b" at its share, and the limit reached again


@pytest.mark.slow
async def test_a_lone_owners_backlog_fills_every_slot_not_only_its_share(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    settings = local_settings(
        tmp_path / "d", IMGSVC_CONSUMER_USER_MAX_IN_FLIGHT="0", IMGSVC_CONSUMER_WAIT_TIME_SECONDS="1"
    )
    assert settings.consumer.user_in_flight_limit < settings.consumer.in_flight_limit
    api = await make_client(settings)
    for n in range(12):
        assert (await api.put(f"/images/slow{n}", data=io.BytesIO(slow_png(1500)))).status == 202
    pool = await shared_pool(settings)
    most = 0
    async with open_consumer(api.server.app[BACKEND], settings, pool=pool) as consumer:
        running = asyncio.create_task(consumer.run())
        try:
            async with asyncio.timeout(60):
                while consumer.stats.outcomes["ready"] < 12:
                    most = max(most, consumer.in_flight)
                    await asyncio.sleep(0.005)
        finally:
            consumer.stop()
            stats = await running
    assert most == settings.consumer.in_flight_limit, (most, stats.outcomes)
    assert "retry" not in stats.outcomes and "dead_lettered" not in stats.outcomes
