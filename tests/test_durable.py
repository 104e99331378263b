"""`python -m web --data-dir`: every piece of state survives `kill -9` (the local backend)."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from scripts.durability import USER, image_for, run
from tests.support.processes import WebProcess, process_env
from tests.support.settings import ROOT

pytestmark = pytest.mark.e2e


async def test_an_image_and_its_key_survive_kill_9(tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "web.log"
    data, _, _ = image_for(7)
    async with WebProcess("--data-dir", str(data_dir), log=log) as web:
        key = web.demo_key()
        async with aiohttp.ClientSession(web.url, headers={"Authorization": f"Bearer {key}"}) as api:
            async with api.put("/images/kept", data=data) as response:
                assert response.status == 202
            async with api.get("/images/kept", params={"wait": "10"}) as response:
                assert (await response.json())["status"] == "ready"
            async with api.get("/download/thumbnail", params={"user_id": USER, "image_id": "kept"}) as got:
                thumbnail = await got.read()
        await web.kill()
    async with WebProcess("--data-dir", str(data_dir), log=log) as web:  # the same directory again
        assert "keeping the 5 users and their keys" in web.text
        assert web.demo_key() == key  # the file is not rewritten, and the key still works
        async with aiohttp.ClientSession(web.url, headers={"Authorization": f"Bearer {key}"}) as api:
            async with api.get("/images") as response:
                assert [i["image_id"] for i in (await response.json())["images"]] == ["kept"]
            async with api.get("/download/image", params={"user_id": USER, "image_id": "kept"}) as got:
                assert hashlib.sha256(await got.read()).digest() == hashlib.sha256(data).digest()
            async with api.get("/download/thumbnail", params={"user_id": USER, "image_id": "kept"}) as got:
                assert await got.read() == thumbnail


async def test_concurrent_uploads_cut_by_kill_9_are_all_accounted_for(tmp_path: Path) -> None:
    """The small version of `scripts/durability.py` (300 uploads there)."""
    report = await run(tmp_path / "data", tmp_path / "web.log", uploads=40, kill_after=0.5, timeout=60)
    assert report.accepted >= 10
    assert report.missing == [] and report.disagreeing == [] and report.left_pending == []
    assert report.ready + len(report.failed) == report.accepted


async def test_an_api_process_and_a_consumer_process_share_one_data_directory(tmp_path: Path) -> None:
    """More consumers on one machine: `python -m pipeline --data-dir` beside an API-only process."""
    data_dir = tmp_path / "data"
    env = process_env(IMGSVC_RUN_CONSUMER="false")
    async with WebProcess("--data-dir", str(data_dir), env=env, log=tmp_path / "web.log") as web:
        key = web.demo_key()
        consumer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline", "--data-dir", str(data_dir), "consumer",
            cwd=ROOT, env=process_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession(web.url, headers={"Authorization": f"Bearer {key}"}) as api:
                for number in range(3):
                    data = image_for(number)[0]
                    async with api.put(f"/images/p{number}", data=data) as response:
                        assert response.status == 202
                for number in range(3):
                    async with api.get(f"/images/p{number}", params={"wait": "15"}) as response:
                        body = await response.json()
                    assert body["status"] == "ready", body
                    assert (body["width"], body["height"]) == image_for(number)[1]
        finally:
            if consumer.returncode is None:
                consumer.terminate()
                await consumer.wait()
