"""The systemd unit (config/image-service.service) is one systemd accepts, and `python -m web`
tells systemd when it is ready and when it stops (`Type=notify`), in one process or supervising
several."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import WebProcess, process_env
from tests.support.settings import ROOT

UNIT = ROOT / "config" / "image-service.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_is_valid_and_hardened(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for setting in (
        "Type=notify", "DynamicUser=yes", "StateDirectory=image-service", "ProtectSystem=strict",
        "NoNewPrivileges=yes", "MemoryMax=", "CapabilityBoundingSet=\n", "UMask=0077",
    ):  # fmt: skip
        assert setting in text, setting
    # As installed where this checkout is (`systemd-analyze` checks that ExecStart can run).
    unit = tmp_path / "image-service.service"
    unit.write_text(text.replace("/opt/image-service", str(ROOT)))
    checked = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0 and not checked.stderr.strip(), checked.stderr
    # A misspelt hardening setting would be ignored by systemd with a warning: the check sees it.
    unit.write_text(
        text.replace("/opt/image-service", str(ROOT)).replace("NoNewPrivileges", "NoNewPrivilege")
    )
    misspelt = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert "Unknown key" in misspelt.stderr


async def _messages(sock: socket.socket, count: int, timeout: float = 60) -> list[str]:
    loop = asyncio.get_running_loop()
    got = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            got.append((await loop.sock_recv(sock, 4096)).decode())
    return got


@pytest.mark.e2e
@pytest.mark.parametrize("workers", ["1", "2"])
async def test_it_tells_systemd_when_it_is_ready_and_when_it_stops(tmp_path: Path, workers: str) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        env = process_env(NOTIFY_SOCKET=str(path), IMGSVC_WORKERS=workers)
        web = WebProcess("--data-dir", str(tmp_path / "data"), env=env, log=tmp_path / "web.log")
        async with web:
            assert await _messages(sock, 1) == ["READY=1"]
            async with aiohttp.ClientSession() as session, session.get(f"{web.url}/health/ready") as ready:
                assert ready.status == 200  # ready when it said so
            assert await web.stop() == 0
        assert await _messages(sock, 1) == ["STOPPING=1"]  # from the supervisor alone, not each worker
        with pytest.raises(TimeoutError):
            await _messages(sock, 1, timeout=0.5)
