"""Variants share the workers fairly: round-robin across users, a per-user cap on variants in
progress, a cost bound per variant, failures that count and are not retried at once, bounded
upscaling, quality and stored size. Small numbers on the local backend; the flood-sized run is
`scripts/noisy_neighbour.py`'s."""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from config.settings import SEED_USER_IDS
from pipeline.imaging.fair import FairQueue
from tests.support.clients import ClientFactory, bearer, issue_key
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import local_settings


def noise(width: int, height: int, fmt: str = "PNG", **save: Any) -> bytes:
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


async def ready(api: Any, image_id: str, data: bytes, headers: dict[str, str] | None = None) -> None:
    assert (await api.put(f"/images/{image_id}", data=io.BytesIO(data), headers=headers)).status == 202
    async with asyncio.timeout(60):
        while True:
            body = await (await api.get(f"/images/{image_id}?wait=5", headers=headers)).json()
            if body["status"] != "pending":
                assert body["status"] == "ready", body
                return


async def test_an_expensive_variant_is_refused_before_any_work(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    api = await make_client(
        local_settings(tmp_path / "d", IMGSVC_RUN_CONSUMER="true", IMGSVC_VARIANT_MAX_COST="50")
    )
    await ready(api, "photo", jpeg_bytes(800, 600))
    refused = await api.get("/images/photo/variant?w=400&format=avif")  # ~165 ms of a worker
    assert refused.status == 422
    body = await refused.json()
    assert body["error"] == "variant_too_costly" and "0.1s" in body["message"]
    made = await api.get("/images/photo/variant?w=400&format=jpeg")  # ~8 ms
    assert made.status == 200 and decode(await made.read()).size == (400, 300)


async def test_upscaling_is_bounded_and_quality_is_capped(tmp_path: Path, make_client: ClientFactory) -> None:
    api = await make_client(local_settings(tmp_path / "d", IMGSVC_RUN_CONSUMER="true"))
    await ready(api, "small", jpeg_bytes(64, 48))
    up = await api.get("/images/small/variant?w=1000&upscale=true")
    assert up.status == 200 and decode(await up.read()).size == (128, 96)  # twice, not 15 times
    link = await (await api.get("/images/small/url?w=100&q=100")).json()
    assert "-q90" in link["url"] and "q100" not in link["url"]


async def test_a_variant_larger_than_its_original_allows_is_not_stored_nor_retried(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    settings = local_settings(tmp_path / "d", IMGSVC_RUN_CONSUMER="true", IMGSVC_VARIANT_MAX_GROWTH="1")
    api = await make_client(settings)
    original = noise(500, 500, "JPEG", quality=70)  # ~200 KB; a PNG of it is ~750 KB
    await ready(api, "grain", original)
    for attempt in range(2):
        started = time.monotonic()
        response = await api.get("/images/grain/variant?w=500&format=png")
        assert response.status == 422
        body = await response.json()
        assert body["error"] == "variant_too_large"
        if attempt:  # refused at once, from memory: a retry loop costs nothing
            assert "failed lately" in body["message"] and time.monotonic() - started < 0.2
    record = await (await api.get("/images/grain")).json()
    assert record.get("variant_count", 0) == 0


@pytest.mark.slow
async def test_a_users_variants_wait_their_turn_behind_other_users(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    """One worker; one user asks for three slow variants, then another user for a small one:
    the small one is made after the first slow one, not after all three."""
    api = await make_client(local_settings(tmp_path / "d", IMGSVC_RUN_CONSUMER="true"))
    other = bearer(await issue_key(api.server.app, SEED_USER_IDS[4]))
    await ready(api, "heavy", noise(1600, 1600))
    await ready(api, "light", jpeg_bytes(400, 300), other)
    finished: dict[str, float] = {}

    async def get(name: str, path: str, headers: dict[str, str] | None = None) -> None:
        response = await api.get(path, headers=headers)
        assert response.status == 200, await response.text()
        await response.read()
        finished[name] = time.monotonic()

    heavy = [
        asyncio.ensure_future(get(f"heavy{n}", f"/images/heavy/variant?w={1600 - n}&format=webp&q=90"))
        for n in range(3)
    ]
    await asyncio.sleep(0.3)
    await get("light", "/images/light/variant?w=100", other)
    await asyncio.gather(*heavy)
    order = sorted(finished, key=finished.__getitem__)
    assert order.index("light") <= 1, order  # after the heavy user's variant being made, not its backlog


async def test_a_user_has_a_few_variants_in_progress_at_most(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    settings = local_settings(tmp_path / "d", IMGSVC_RUN_CONSUMER="true", IMGSVC_VARIANT_USER_MAX_PENDING="2")
    api = await make_client(settings)
    await ready(api, "heavy", noise(1200, 1200))
    asks = [api.get(f"/images/heavy/variant?w={1200 - n}&format=webp") for n in range(3)]
    statuses = sorted([r.status for r in await asyncio.gather(*asks)])
    assert statuses == [200, 200, 429]


@pytest.mark.slow
async def test_failures_count_against_the_image_and_the_user(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    settings = local_settings(
        tmp_path / "d",
        IMGSVC_RUN_CONSUMER="true",
        IMGSVC_VARIANT_TIMEOUT="0.1",
        IMGSVC_VARIANT_USER_FAILURES_PER_HOUR="2",
        IMGSVC_VARIANT_PER_IMAGE="3",
    )
    api = await make_client(settings)
    await ready(api, "heavy", noise(2000, 2000))
    for n in range(2):  # each takes more than 0.1 s: timed out
        response = await api.get(f"/images/heavy/variant?w={2000 - n}&format=webp")
        assert (response.status, (await response.json())["error"]) == (503, "variant_timeout")
    refused = await api.get("/images/heavy/variant?w=10")
    assert refused.status == 429
    assert (await refused.json())["error"] == "too_many_failed_variants"
    assert int(refused.headers["Retry-After"]) > 3000


async def test_the_fair_queue_serves_users_in_turn() -> None:
    queue = FairQueue(1)
    served: list[str] = []
    gate = asyncio.Event()

    async def job(user: str) -> None:
        async with queue.slot(user):
            served.append(user)
            await gate.wait()

    first = asyncio.ensure_future(job("a"))
    await asyncio.sleep(0)
    jobs = [asyncio.ensure_future(job(u)) for u in ("a", "a", "a", "b", "c", "b")]
    await asyncio.sleep(0)
    assert queue.waiting() == 6 and queue.waiting("a") == 3
    jobs[1].cancel()  # a waiter that leaves is skipped
    gate.set()
    await asyncio.gather(first, *jobs, return_exceptions=True)
    # The user served least recently goes next: "a" has just been, so "b" and "c" go first.
    assert served == ["a", "b", "c", "a", "b", "a"]
    async with queue.slot("z"):  # every slot came back
        pass
