"""Public delivery, side by side in one run: one serving process against N, and per core against
thumbor 7.8 (result storage on) and a bare static file server (nginx `sendfile`).

Everything runs on the local backend (`python -m web --data-dir`), with the same public image
(`input/dog.jpg`), and is driven by `wrk` (Debian's load generator in C, so measuring costs the
machine little) for `--seconds` a phase:

1. **workers**: `--workers 1` against `--workers N`, the whole machine shared with `wrk`: a public
   rendition URL, a public preset (a variant, made once and then served from storage) and the
   API's download route with a key. Requests a second, and the ratio N / one.
2. **per core**: each server pinned to CPU 0 and `wrk` to CPU 1 (`--pin`, on by default when the
   machine has two CPUs or more): ours with one worker, thumbor serving the same 256 px fit from
   its result storage, and nginx sending the same rendition's bytes from a file with `sendfile`.
   Requests a second and the server's CPU milliseconds per request (its process tree, read from
   /proc around the phase).

    python scripts/bench_delivery.py                       # 1 against 2 workers, 10 s a phase
    python scripts/bench_delivery.py --workers 4 --seconds 20 --connections 128

Needs `wrk` and `nginx` (`apt-get install wrk nginx-light`) and thumbor's virtualenv
(`make bench-peers-install`); a missing peer is left out of the report, not faked.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from proccpu import children_of, tree_cpu  # noqa: E402
from stack import free_port  # noqa: E402

from config.settings import SEED_USER_IDS  # noqa: E402
from scripts.durability import Web  # noqa: E402

USER = SEED_USER_IDS[2]
IMAGE = ROOT / "input" / "dog.jpg"
PRESET = "card=400x300:cover:webp"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAVE_NGINX = os.path.exists(NGINX)
NGINX_CONF = """
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root}/files;
        location / {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
    }}
}}
"""
THUMBOR_CONF = """
LOADER = 'thumbor.loaders.file_loader'
FILE_LOADER_ROOT_PATH = '{root}'
STORAGE = 'thumbor.storages.file_storage'
FILE_STORAGE_ROOT_PATH = '{root}/storage'
RESULT_STORAGE = 'thumbor.result_storages.file_storage'
RESULT_STORAGE_FILE_STORAGE_ROOT_PATH = '{root}/results'
RESULT_STORAGE_STORES_UNSAFE = True
ALLOW_UNSAFE_URL = True
QUALITY = 85
"""


def pin(pid: int, cpus: set[int] | None) -> None:
    """Run a process and every descendant it has now on `cpus` (None: leave them be)."""
    if cpus is None:
        return
    try:
        os.sched_setaffinity(pid, cpus)
    except OSError:
        return
    for child in children_of(pid):
        pin(child, cpus)


async def wrk(
    url: str, args: argparse.Namespace, server: int, cpus: set[int] | None, *headers: str
) -> dict[str, Any]:
    """Drive one URL for `args.seconds`: requests a second, latency and the server's CPU per request."""
    command = ["wrk", f"-t{1 if cpus else 2}", f"-c{args.connections}", f"-d{args.seconds:g}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    if cpus:
        command = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *command]
    before = tree_cpu(server) or 0.0
    process = await asyncio.create_subprocess_exec(*command, url, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    cpu = (tree_cpu(server) or 0.0) - before
    text = out.decode()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", text)
    if rate is None or total is None or "Non-2xx" in text or "Socket errors" in text:
        raise RuntimeError(f"wrk failed or got errors on {url}:\n{text}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    return {
        "per_s": float(rate.group(1)),
        "p99_ms": round(float(p99.group(1)) * scale[p99.group(2)], 2) if p99 else None,
        "cpu_ms_per_request": round(cpu * 1000 / int(total.group(1)), 3),
    }


@asynccontextmanager
async def ours(scratch: Path, workers: int) -> AsyncIterator[tuple[Web, dict[str, str], str]]:
    """`python -m web --workers N` with a public `dog.jpg`: the server, the URLs to drive, the key."""
    env = {
        "PATH": "/usr/bin:/bin",
        "IMGSVC_WORKERS": str(workers),
        "IMGSVC_ADMIN_PORT": "0",
        "IMGSVC_METRICS_PORT": "0",
        "IMGSVC_LOG_LEVEL": "INFO",  # the start-up lines name the ports; requests are not logged
        "IMGSVC_LOG_FORMAT": "text",
        "IMGSVC_VARIANT_PRESETS": PRESET,
        # wrk's connections all come from 127.0.0.1, on purpose: no per-client share applies.
        "IMGSVC_MAX_CONNECTIONS_PER_CLIENT": "0",
    }
    web = Web(scratch / f"data-{workers}", scratch / f"web-{workers}.log", env)
    await web.start()
    try:
        key = json.loads((web.data_dir / "demo-keys.json").read_text())["keys"][USER]
        auth = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(web.url, headers=auth) as api:
            async with api.put("/images/bench", data=IMAGE.read_bytes(), params={"public": "true"}) as r:
                assert r.status == 202, await r.text()
            async with api.get("/images/bench", params={"wait": "20"}) as r:
                record = await r.json()
            assert record["status"] == "ready", record
            urls = {
                "public_rendition": record["public_urls"]["256"],
                "public_preset": record["public_urls"]["card"],
                "api_download": web.url + "/download/thumbnail?image_id=bench",
            }
            for url in urls.values():  # the preset is made here, before anything is timed
                async with api.get(url) as r:
                    assert r.status == 200, (url, r.status, await r.text())
        yield web, urls, key
    finally:
        await web.stop()


async def workers_phase(scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[int, dict[str, Any]] = {}
    for count in dict.fromkeys((1, args.workers)):  # `--workers 1`: one server, measured once
        async with ours(scratch, count) as (web, urls, key):
            assert web.process is not None
            auth = f"Authorization: Bearer {key}"
            rows[count] = {
                name: await wrk(url, args, web.process.pid, None, *([auth] if name == "api_download" else []))
                for name, url in urls.items()
            }
    one, many = rows[1], rows[args.workers]
    return {
        "one": one,
        "many": many,
        "ratio": {name: round(many[name]["per_s"] / one[name]["per_s"], 2) for name in one},
    }


@asynccontextmanager
async def nginx(scratch: Path, body: bytes) -> AsyncIterator[tuple[int, str]]:
    root = scratch / "nginx"
    (root / "files").mkdir(parents=True)
    (root / "files" / "256.jpg").write_bytes(body)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(NGINX_CONF.format(user=user, root=root, port=port))
    process = await asyncio.create_subprocess_exec(
        NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/256.jpg"
        await _until_ok(url)
        yield process.pid, url
    finally:
        process.send_signal(signal.SIGQUIT)
        await process.wait()


@asynccontextmanager
async def thumbor(scratch: Path, binary: Path) -> AsyncIterator[tuple[int, str]]:
    root = scratch / "thumbor"
    root.mkdir()
    shutil.copy(IMAGE, root / "bench.jpg")
    (root / "thumbor.conf").write_text(THUMBOR_CONF.format(root=root))
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        str(binary), "-p", str(port), "-i", "127.0.0.1", "-c", str(root / "thumbor.conf"), "-l", "warning",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/unsafe/fit-in/256x256/bench.jpg"
        await _until_ok(url)  # the first request makes it; every later one is a result-storage hit
        yield process.pid, url
    finally:
        process.terminate()
        await process.wait()


async def _until_ok(url: str) -> bytes:
    async with aiohttp.ClientSession() as http, asyncio.timeout(60):
        while True:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return await response.read()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


async def per_core_phase(scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    server_cpus, client_cpus = ({0}, {1}) if args.pin else (None, None)
    out: dict[str, Any] = {"pinned": args.pin}
    async with ours(scratch, 1) as (web, urls, _key):
        assert web.process is not None
        pin(web.process.pid, server_cpus)
        for name in ("public_rendition", "public_preset"):
            out[f"ours_{name}"] = await wrk(urls[name], args, web.process.pid, client_cpus)
        body = await _until_ok(urls["public_rendition"])
    if HAVE_NGINX:
        async with nginx(scratch, body) as (pid, url):
            pin(pid, server_cpus)
            out["nginx_sendfile"] = await wrk(url, args, pid, client_cpus)
        ours_cpu, floor = (
            out["ours_public_rendition"]["cpu_ms_per_request"],
            out["nginx_sendfile"]["cpu_ms_per_request"],
        )
        out["ours_cpu_over_nginx"] = round(ours_cpu / floor, 1) if floor else None
    if args.thumbor.exists():
        async with thumbor(scratch, args.thumbor) as (pid, url):
            pin(pid, server_cpus)
            out["thumbor_result_storage"] = await wrk(url, args, pid, client_cpus)
        theirs = out["thumbor_result_storage"]["per_s"]
        out["ours_over_thumbor"] = {
            name: round(out[f"ours_{name}"]["per_s"] / theirs, 1)
            for name in ("public_rendition", "public_preset")
        }
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-delivery-") as tmp:
        scratch = Path(tmp)
        return {
            "seconds": args.seconds,
            "connections": args.connections,
            "workers": await workers_phase(scratch, args),
            "per_core": await per_core_phase(scratch, args),
        }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="serving processes against one (1: one only)")
    parser.add_argument("--seconds", type=int, default=10, help="each phase's length (whole seconds: wrk's)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--thumbor", type=Path, default=ROOT / ".venv-thumbor" / "bin" / "thumbor")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2)
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=1))
