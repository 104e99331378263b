"""Resumable uploads from the command line over a bad network (issue 29, point 5): a 200 MB file
goes up in parts through a proxy that cuts the connection three times mid-part, on each backend
(on AWS the parts go to S3's presigned URLs, on the local backend to the API's part routes), and
arrives byte for byte; a run killed half-way is picked up by the next, which sends only the
parts that had not arrived."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from pipeline.aws.clients import open_clients
from pipeline.cli.bulk import image_id_for
from tests.support.backends import provision_with_users
from tests.support.clients import ClientFactory, bearer, issue_key
from tests.support.consumers import drain
from tests.support.cutting import CuttingProxy, cutting_proxy
from tests.support.processes import process_env
from tests.support.settings import ROOT, USER, env_for, local_settings
from tests.test_multipart import big_jpeg

Client = TestClient[Any, Any]
MIB = 1024 * 1024
RESUMABLE = {"IMGSVC_UPLOAD_MODES": "api,presigned", "IMGSVC_MAX_BYTES": str(256 * MIB)}


async def start_cli(api: str, key: str, path: Path, state: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "pipeline", "upload", "--api", api, "--no-progress", "--state", str(state), str(path)),
        cwd=ROOT,
        env=process_env(IMGSVC_API_KEY=key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli(api: str, key: str, path: Path, state: Path) -> dict[str, Any]:
    process = await start_cli(api, key, path, state)
    async with asyncio.timeout(300):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()[-2000:]
    summary: dict[str, Any] = json.loads(out)
    return summary


async def original_digest(api: Client, key: str, image_id: str) -> str:
    """The SHA-256 of the original as the API serves it, read as a stream."""
    digest = hashlib.sha256()
    response = await api.get(f"/download/image?image_id={image_id}", headers=bearer(key))
    assert response.status == 200
    async for chunk in response.content.iter_chunked(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


async def completed(api: Client, key: str, settings: Settings, image_id: str) -> dict[str, Any]:
    await drain(settings, timeout=120)
    status: dict[str, Any] = await (await api.get(f"/images/{image_id}", headers=bearer(key))).json()
    return status


@pytest.mark.slow
@pytest.mark.parametrize("where", [pytest.param("aws", marks=pytest.mark.moto), "local"])
async def test_a_200_mb_upload_cut_three_times_arrives_whole(
    where: str, request: pytest.FixtureRequest, make_client: ClientFactory, tmp_path: Path
) -> None:
    data = big_jpeg(200 * MIB)
    path = tmp_path / "huge.jpg"
    path.write_bytes(data)
    if where == "aws":  # the parts go to S3's presigned URLs: the proxy stands before moto
        async with cutting_proxy(request.getfixturevalue("moto_endpoint")) as proxy:
            settings = Settings.from_env(env_for(proxy.url, **RESUMABLE))
            async with open_clients(settings.aws) as clients:
                await provision_with_users(clients, settings)
            api = await make_client(settings)
            key = await issue_key(api.server.app, USER)
            summary = await run_cli(str(api.make_url("")).rstrip("/"), key, path, tmp_path / "state.jsonl")
            await check(api, key, settings, proxy, summary, path, data)
        return
    settings = local_settings(tmp_path / "data", **RESUMABLE)
    api = await make_client(settings)
    key = await issue_key(api.server.app, USER)
    async with cutting_proxy(str(api.make_url("")).rstrip("/")) as proxy:  # before the API's part routes
        summary = await run_cli(proxy.url, key, path, tmp_path / "state.jsonl")
        await check(api, key, settings, proxy, summary, path, data)


async def check(
    api: Client,
    key: str,
    settings: Settings,
    proxy: CuttingProxy,
    summary: dict[str, Any],
    path: Path,
    data: bytes,
) -> None:
    assert summary["uploaded"] == 1 and summary["failed"] == 0, summary
    assert proxy.cut == 3  # three parts lost mid-way, each sent again
    image_id = image_id_for(Path(path.name))
    status = await completed(api, key, settings, image_id)
    assert status["status"] == "ready" and status["bytes"] == len(data), status
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    assert await original_digest(api, key, image_id) == status["sha256"]


@pytest.mark.e2e
@pytest.mark.backend("local")
async def test_a_run_killed_half_way_is_finished_by_the_next_sending_only_the_rest(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    data = big_jpeg(48 * MIB)  # six parts
    path, state = tmp_path / "big.jpg", tmp_path / "state.jsonl"
    path.write_bytes(data)
    settings = local_settings(tmp_path / "data", **RESUMABLE)
    api = await make_client(settings)
    key = await issue_key(api.server.app, USER)
    image_id = image_id_for(Path(path.name))
    async with cutting_proxy(str(api.make_url("")).rstrip("/"), cuts=0, pace=0.005) as proxy:  # ~13 MB/s
        first = await start_cli(proxy.url, key, path, state)
        async with asyncio.timeout(60):  # killed once two parts are in
            while True:
                listed = await api.get(f"/images/{image_id}/upload-parts", headers=bearer(key))
                if listed.status == 200 and sum(p["received"] for p in (await listed.json())["parts"]) >= 2:
                    break
                await asyncio.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        # What the killed run's socket still held drains through the proxy first: not counted.
        settled = -1
        while settled != proxy.sent:
            settled = proxy.sent
            await asyncio.sleep(0.5)
        listed = await api.get(f"/images/{image_id}/upload-parts", headers=bearer(key))
        arrived = sum(p["received"] for p in (await listed.json())["parts"])
        summary = await run_cli(proxy.url, key, path, state)  # the same API: its journal line counts
        resent = proxy.sent - settled
    assert summary["uploaded"] == 1, summary
    assert 2 <= arrived < 6 and resent <= len(data) - arrived * 8 * MIB + MIB  # the rest, and talk
    status = await completed(api, key, settings, image_id)
    assert status["status"] == "ready" and status["sha256"] == hashlib.sha256(data).hexdigest()
