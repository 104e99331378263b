"""The container image, built here with Debian's podman (`scripts/container.py`: the base from
debootstrap, no registry needed) and run as a user would: it serves on its volume as a non-root
user, reports healthy, and an image uploaded to it is still there, thumbnail and all, in a new
container on the same volume after the first was killed."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from scripts.container import build, podman, podman_env
from scripts.stack import free_port
from tests.support.clients import bearer
from tests.support.images import decode
from tests.support.settings import ROOT

pytestmark = [
    pytest.mark.container,
    pytest.mark.skipif(
        not (shutil.which("podman") and shutil.which("debootstrap")),
        reason="needs podman and debootstrap (make test installs them)",
    ),
    pytest.mark.timeout(900),
]
TAG = "localhost/image-service:test"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    environment = podman_env(tmp_path_factory.mktemp("podman"))
    build(TAG, environment)
    yield environment


async def run_container(env: dict[str, str], volume: str, port: int, admin: int) -> str:
    started = await asyncio.to_thread(
        podman,
        env,
        *("run", "-d", "--network", "host", "--volume", f"{volume}:/data"),
        *("--env", f"IMGSVC_PORT={port}", "--env", f"IMGSVC_ADMIN_PORT={admin}", "--env", "IMGSVC_WORKERS=1"),
        TAG,
    )
    assert started.returncode == 0, started.stderr
    name = started.stdout.strip()
    async with asyncio.timeout(60), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{admin}/health/ready") as ready:
                    if ready.status == 200:
                        return name
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)


async def test_the_image_serves_from_its_volume_and_keeps_what_it_took_across_a_kill(
    env: dict[str, str],
) -> None:
    volume = f"imgsvc-test-{uuid.uuid4().hex[:8]}"
    assert (await asyncio.to_thread(podman, env, "volume", "create", volume)).returncode == 0
    names: list[str] = []
    try:
        port, admin = free_port(), free_port()
        names.append(await run_container(env, volume, port, admin))
        user = await asyncio.to_thread(podman, env, "exec", names[0], "id", "-u")
        assert user.stdout.strip() == "10001"  # not root
        keys = json.loads(
            (await asyncio.to_thread(podman, env, "exec", names[0], "cat", "/data/demo-keys.json")).stdout
        )
        user_id, key = next(iter(keys["keys"].items()))
        cat = (ROOT / "input" / "cat.jpg").read_bytes()
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=bearer(key)) as api:
            assert (await api.put("/images/boxed", data=cat)).status == 202
            ready = await (await api.get("/images/boxed?wait=20")).json()
            assert ready.get("status") == "ready", ready
        assert (await asyncio.to_thread(podman, env, "kill", names[0])).returncode == 0  # SIGKILL

        names.append(await run_container(env, volume, port, admin))
        healthy = await asyncio.to_thread(podman, env, "healthcheck", "run", names[1])
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", headers=bearer(key)) as api:
            record = await (await api.get("/images/boxed")).json()
            assert record["status"] == "ready" and record["bytes"] == len(cat), record
            original = await api.get(f"/download/image?user_id={user_id}&image_id=boxed")
            assert await original.read() == cat
            thumbnail = await api.get(f"/download/thumbnail?user_id={user_id}&image_id=boxed")
            assert max(decode(await thumbnail.read()).size) == 256
    finally:
        for name in names:
            await asyncio.to_thread(podman, env, "rm", "--force", name)
        await asyncio.to_thread(podman, env, "volume", "rm", "--force", volume)
