"""`python -m web --workers N`: N serving processes on one port under one supervisor, the consumer
and the embedded endpoint started once, a dead worker started again, SIGTERM draining all; on
both backends."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from config.settings import SEED_USER_IDS
from pipeline.core.demo import read_demo_keys
from tests.support.images import jpeg_bytes
from tests.support.processes import process_env
from tests.support.settings import ROOT

pytestmark = pytest.mark.e2e


def children(pid: int) -> dict[int, str]:
    """The processes `pid` started, with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            continue
    return found


def workers_of(pid: int) -> list[int]:
    return sorted(p for p, cmd in children(pid).items() if "--serve-fds" in cmd)


async def started(tmp_path: Path, *args: str) -> tuple[asyncio.subprocess.Process, str, str, Path]:
    keys = tmp_path / "keys.json"
    env = process_env(IMGSVC_WORKERS="2", IMGSVC_DEMO_KEYS_FILE=str(keys))
    with (tmp_path / "web.log").open("wb") as log:  # the children keep their own copies of it
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "web", "--port", "0", *args, cwd=ROOT, env=env, stdout=log, stderr=log
        )
    async with asyncio.timeout(60):
        while True:
            text = (tmp_path / "web.log").read_text(errors="replace")
            api, admin = (
                re.search(r"API listening url=(\S+)", text),
                re.search(r"admin listening url=(\S+)", text),
            )
            if api and admin and len(workers_of(process.pid)) == 2 and "worker serving" in text:
                return process, api.group(1), admin.group(1), keys
            assert process.returncode is None, text
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("backend", ["local", "moto"])
async def test_workers_share_a_port_and_a_dead_one_is_replaced(tmp_path: Path, backend: str) -> None:
    args = ("--data-dir", str(tmp_path / "data")) if backend == "local" else ("--embedded-port", "0")
    process, api, admin, keys = await started(tmp_path, *args)
    try:
        key = read_demo_keys(keys)[SEED_USER_IDS[2]]
        headers = {"Authorization": f"Bearer {key}"}
        kinds = sorted(
            kind
            for cmd in children(process.pid).values()
            if " -m " in cmd and (kind := cmd.split(" -m ")[1].split()[0]) in ("web", "pipeline")
        )
        assert kinds == ["pipeline", "web", "web"]  # two workers, the consumer once
        async with aiohttp.ClientSession(api, headers=headers) as session:
            async with session.put("/images/cat", data=jpeg_bytes(640, 480), params={"public": "true"}) as r:
                assert r.status == 202
            async with session.get("/images/cat?wait=20") as r:
                body = await r.json()
            assert body["status"] == "ready"
            public = body["public_urls"]["256"]

            failures: list[int] = []

            async def load(seconds: float) -> int:
                answered, deadline = 0, time.monotonic() + seconds
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as anyone:
                    while time.monotonic() < deadline:
                        try:
                            async with anyone.get(public) as r:
                                await r.read()
                                answered += r.status == 200
                                if r.status != 200:
                                    failures.append(r.status)
                        except aiohttp.ClientError:
                            failures.append(0)
                return answered

            running = asyncio.ensure_future(load(4.0))
            await asyncio.sleep(1.0)
            first, second = workers_of(process.pid)
            os.kill(first, signal.SIGKILL)
            answered = await running
            # Only what the killed worker held at that moment can fail; new connections go on.
            assert answered > 50 and len(failures) <= 2, failures
            async with asyncio.timeout(20):
                while len(workers_of(process.pid)) < 2:
                    await asyncio.sleep(0.1)
            assert first not in workers_of(process.pid) and second in workers_of(process.pid)
            failures.clear()
            assert await load(1.0) > 10 and failures == []
        async with aiohttp.ClientSession() as probe, probe.get(f"{admin}/health/ready") as r:
            assert r.status == 200
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            assert await process.wait() == 0
        assert children(process.pid) == {}
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
