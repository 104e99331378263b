"""The admin listener: health, readiness and metrics answer apart from the API, so no client can
crowd the operator's probes out (`web.admin`)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from scripts.durability import Web, demo_key
from tests.support.processes import process_env
from tests.support.settings import ROOT

pytestmark = pytest.mark.e2e

CAP = 8


async def test_probes_answer_on_the_admin_listener_while_the_api_is_full(tmp_path: Path) -> None:
    web = Web(
        tmp_path / "data",
        tmp_path / "web.log",
        process_env(IMGSVC_MAX_CONNECTIONS=str(CAP), IMGSVC_MAX_CONNECTIONS_PER_CLIENT="0"),
    )
    await web.start()
    busy: list[asyncio.StreamWriter] = []
    try:
        host, port = web.url.removeprefix("http://").split(":")
        key = demo_key(web.data_dir)
        # Every slot busy with a request whose body is under way: none can be evicted for a newcomer.
        for n in range(CAP):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                f"PUT /images/busy{n} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                "Content-Length: 100000\r\n\r\n".encode()
                + b"\xff\xd8\xff"
            )
            await writer.drain()
            busy.append(writer)
        await asyncio.sleep(0.5)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{web.url}/health/live") as refused:
                assert refused.status == 503
                assert (await refused.json())["error"] == "too_many_connections"
            started = time.monotonic()
            for path in ("/health/live", "/health/ready", "/metrics"):
                async with session.get(f"{web.admin_url}{path}") as response:
                    assert response.status == 200, await response.text()
                    if path == "/metrics":
                        assert "imgsvc_http_connections" in await response.text()
                    else:
                        assert (await response.json())["status"] in ("alive", "ready")
            assert time.monotonic() - started < 1.0
    finally:
        for writer in busy:
            writer.close()
        await web.stop()
    assert web.process is not None and web.process.returncode == 0


async def test_a_busy_port_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    first = Web(tmp_path / "a", tmp_path / "a.log", process_env())
    await first.start()
    try:
        admin_port = first.admin_url.rsplit(":", 1)[1]
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "web", "--data-dir", str(tmp_path / "b"), "--port", "0"),
            *("--admin-port", admin_port),
            env=process_env(),
            cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 2
        lines = [line for line in err.decode().splitlines() if "level=" not in line]
        assert lines == [f"error: 127.0.0.1:{admin_port} is in use: choose another with --admin-port "
                         "(IMGSVC_ADMIN_PORT)"], err.decode()  # fmt: skip
    finally:
        await first.stop()
