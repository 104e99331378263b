"""Thousands of hostile connections against `python -m web` (API, embedded endpoint and consumer in
one process): health checks are answered, and an upload still becomes a thumbnail.

Observed before the connection cap: 20,000 half-open sockets took every file descriptor of the
process, and the API, the embedded endpoint and the consumer all failed until they closed.
"""

from __future__ import annotations

import asyncio
import resource
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.clients import bearer
from tests.support.images import decode
from tests.support.processes import WebProcess, process_env
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
    async with WebProcess(
        "--embedded-port", "0", env=env, log=tmp_path / "web.log", preexec_fn=_few_descriptors
    ) as web:
        api_url = web.url
        host, port = api_url.removeprefix("http://").split(":")

        # Half-open connections: each sends the start of a request line and then nothing.
        hostile = []
        for _ in range(HOSTILE):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            hostile.append(writer)
        try:
            async with aiohttp.ClientSession(api_url, headers=bearer(web.demo_key())) as session:
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
        assert await web.stop() == 0


def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))
