"""A real cache in front: Debian's nginx with `proxy_cache` before `python -m web`, as
docs/delivery.md sets it up. Public URLs are fetched from the origin once each however many times
they are asked for; a replaced image's new URLs give the new bytes through the cache while the old
ones answer 404 at the origin; a pending answer (`no-store`) is never cached."""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from PIL import Image

from tests.support.images import jpeg_bytes
from tests.support.processes import WebProcess

pytestmark = pytest.mark.nginx

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CONF = """
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    proxy_cache_path {root}/cache levels=1:2 keys_zone=images:10m max_size=1g inactive=30d;
    server {{
        listen 127.0.0.1:{port};
        location /p/ {{
            proxy_pass http://{origin};
            proxy_cache images;
            proxy_cache_key "$uri$is_args$args";
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status;
        }}
        location / {{ proxy_pass http://{origin}; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def cached(tmp_path: Path) -> AsyncIterator[tuple[WebProcess, str]]:
    """`python -m web --data-dir`, and nginx caching it; their URLs."""
    if not Path(NGINX).exists():  # noqa: ASYNC240 - one stat, before anything starts
        pytest.skip("nginx is not installed (make test installs it)")
    async with WebProcess("--data-dir", str(tmp_path / "data"), log=tmp_path / "web.log") as web:
        root, port = tmp_path / "nginx", free_port()
        root.mkdir()
        user = "user root;" if os.geteuid() == 0 else ""  # its workers write the cache under tmp_path
        origin = web.url.removeprefix("http://")
        (root / "nginx.conf").write_text(CONF.format(user=user, root=root, port=port, origin=origin))
        nginx = await asyncio.create_subprocess_exec(
            NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;",
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            for _ in range(100):
                with socket.socket() as probe:
                    if probe.connect_ex(("127.0.0.1", port)) == 0:
                        break
                await asyncio.sleep(0.05)
            yield web, f"http://127.0.0.1:{port}"
        finally:
            nginx.send_signal(signal.SIGQUIT)
            await asyncio.wait_for(nginx.wait(), 10)


async def origin_hits(web: WebProcess) -> int:
    """Public GETs the origin answered (its own metrics, from the admin listener)."""
    async with aiohttp.ClientSession() as session, session.get(f"{web.admin_url}/metrics") as response:
        text = await response.text()
    route = re.escape('route="/p/{token}/{version}/{name}"')
    found = re.findall(rf'imgsvc_http_requests_total\{{method="GET",{route},status="\d+"\}} (\S+)', text)
    return int(sum(float(n) for n in found))


def noise(side: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG", compress_level=1)
    return out.getvalue()


async def test_a_cache_in_front_takes_the_load_and_serves_only_what_the_origin_allows(
    cached: tuple[WebProcess, str],
) -> None:
    web, cdn = cached
    headers = {"Authorization": f"Bearer {web.demo_key()}"}
    async with aiohttp.ClientSession(web.url, headers=headers) as api:
        urls = []
        for n in range(25):
            async with api.put(
                f"/images/c{n}", data=jpeg_bytes(200 + n, 150), params={"public": "true"}
            ) as r:
                assert r.status == 202
        for n in range(25):
            async with api.get(f"/images/c{n}?wait=20") as r:
                body = await r.json()
            assert body["status"] == "ready"
            urls += [body["public_urls"]["original"], body["public_urls"]["256"]]
    paths = [url.split("/", 3)[3] for url in urls]
    before = await origin_hits(web)

    async with aiohttp.ClientSession(cdn, connector=aiohttp.TCPConnector(limit=50)) as anyone:
        statuses: list[int] = []

        async def fetch(k: int) -> None:
            async with anyone.get(f"/{paths[k % len(paths)]}") as response:
                await response.read()
                statuses.append(response.status)

        for start in range(0, 10_000, 500):
            await asyncio.gather(*(fetch(k) for k in range(start, start + 500)))
    assert statuses == [200] * 10_000
    assert await origin_hits(web) - before <= len(paths)  # each URL from the origin at most once

    # A replaced image: new URLs with the new bytes through the cache; the old ones 404 at the origin.
    new_bytes = jpeg_bytes(333, 222)
    async with aiohttp.ClientSession(web.url, headers=headers) as api:
        async with api.put("/images/c0", data=new_bytes) as r:
            assert r.status == 202
        async with api.get("/images/c0?wait=20") as r:
            replaced = (await r.json())["public_urls"]
        new_path = "/" + replaced["original"].split("/", 3)[3]
        async with aiohttp.ClientSession(cdn) as anyone, anyone.get(new_path) as r:
            assert r.status == 200 and await r.read() == new_bytes
        async with api.get("/" + paths[0]) as r:
            assert r.status == 404 and r.headers["Cache-Control"] == "no-store"

        # A pending rendition: 404 no-store, not cached, so the rendition comes through once made.
        async with api.put("/images/slow", data=io.BytesIO(noise(2500)), params={"public": "true"}) as r:
            assert r.status == 202
            pending = (await r.json())["public_urls"]["original"].rsplit("/", 1)[0] + "/256.jpg"
        async with aiohttp.ClientSession(cdn) as anyone:
            async with anyone.get("/" + pending.split("/", 3)[3]) as r:
                early = r.status
            async with api.get("/images/slow?wait=20") as r:
                assert (await r.json())["status"] == "ready"
            async with anyone.get("/" + pending.split("/", 3)[3]) as r:
                assert r.status == 200 and r.headers["Cache-Control"].startswith("public")
    assert early in (404, 200)  # 404 while pending (a fast machine may have made it already)
