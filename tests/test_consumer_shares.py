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
from pathlib import Path

import pytest

from config.settings import SEED_USER_IDS
from pipeline.consumer.service import open_consumer
from tests.conftest import ClientFactory, bearer, issue_key, jpeg_bytes, local_settings, shared_pool
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
