"""The admin listener: health, readiness and metrics answer apart from the API, so no client can
crowd the operator's probes out (`web.admin`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import WebProcess, process_env

pytestmark = pytest.mark.e2e

CAP = 8


async def test_probes_answer_on_the_admin_listener_while_the_api_is_full(tmp_path: Path) -> None:
    env = process_env(IMGSVC_MAX_CONNECTIONS=str(CAP), IMGSVC_MAX_CONNECTIONS_PER_CLIENT="0")
    async with WebProcess("--data-dir", str(tmp_path / "data"), env=env, log=tmp_path / "web.log") as web:
        busy: list[asyncio.StreamWriter] = []
        try:
            host, port = web.url.removeprefix("http://").split(":")
            key = web.demo_key()
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
        assert await web.stop() == 0


async def test_a_busy_port_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    async with WebProcess("--data-dir", str(tmp_path / "a"), log=tmp_path / "a.log") as first:
        admin_port = first.admin_url.rsplit(":", 1)[1]
        args = ("--data-dir", str(tmp_path / "b"), "--admin-port", admin_port)
        async with WebProcess(*args, log=tmp_path / "b.log", ready=None) as second:
            assert await second.exited() == 2
        lines = [line for line in second.lines if "level=" not in line]
        assert lines == [f"error: 127.0.0.1:{admin_port} is in use: choose another with --admin-port "
                         "(IMGSVC_ADMIN_PORT)"], second.text  # fmt: skip
