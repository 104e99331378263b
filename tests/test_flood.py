"""Thousands of hostile connections against `python -m web` (API, embedded endpoint and consumer in
one process): health checks are answered, and an upload still becomes a thumbnail.

Observed before the connection cap: 20,000 half-open sockets took every file descriptor of the
process, and the API, the embedded endpoint and the consumer all failed until they closed.
"""

from __future__ import annotations

import asyncio
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from config.settings import SEED_USER_IDS
from pipeline.core.demo import read_demo_keys
from tests.support.clients import bearer
from tests.support.images import decode
from tests.support.processes import process_env, stops_cleanly
from tests.support.settings import ROOT

pytestmark = pytest.mark.e2e

HOSTILE = 3000
CAP = 400
#: The file descriptors `python -m web` may have here: fewer than the hostile connections, as
#: 20,000 were fewer than the connections that exhausted them.
DESCRIPTORS = 2048


async def test_health_and_the_pipeline_survive_thousands_of_hostile_connections(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, HOSTILE + 1024)), hard))
    keys_file = tmp_path / "keys.json"
    env = process_env(
        IMGSVC_DEMO_KEYS_FILE=str(keys_file),
        IMGSVC_MAX_CONNECTIONS=str(CAP),
        IMGSVC_HEADER_TIMEOUT="60",  # the hostile connections stay half-open for the whole test
    )
    web = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "web", "--port", "0", "--embedded-port", "0"),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_few_descriptors,
    )
    try:
        assert web.stderr is not None
        async with asyncio.timeout(60):
            while not (match := re.search(rb"API listening url=(\S+)", await web.stderr.readline())):
                pass
        api_url = match.group(1).decode()
        host, port = api_url.removeprefix("http://").split(":")
        asyncio.create_task(_drain(web.stderr))  # noqa: RUF006 - ends with the process

        # Half-open connections: each sends the start of a request line and then nothing.
        hostile = []
        for _ in range(HOSTILE):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            hostile.append(writer)
        try:
            key = read_demo_keys(keys_file)[SEED_USER_IDS[2]]
            async with aiohttp.ClientSession(api_url, headers=bearer(key)) as session:
                started = time.monotonic()
                for path in ("/health/live", "/health/ready"):
                    async with session.get(path) as response:
                        assert response.status == 200, await response.text()
                assert time.monotonic() - started < 5
                # The embedded endpoint and the consumer in the same process still work.
                image = (ROOT / "input" / "dog.jpg").read_bytes()
                async with session.put("/images/flooded", data=image) as response:
                    assert response.status == 202, await response.text()
                async with asyncio.timeout(30):
                    while True:
                        async with session.get("/download/thumbnail?image_id=flooded") as thumb:
                            if thumb.status == 200:
                                assert decode(await thumb.read()).size == (256, 192)
                                break
                            assert thumb.status == 404
                        await asyncio.sleep(0.2)
        finally:
            for writer in hostile:
                writer.close()
        assert await stops_cleanly(web)
    finally:
        if web.returncode is None:
            web.kill()
            await web.wait()


def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass
