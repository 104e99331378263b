"""Memory of the API process: one huge transfer each way, or a burst of concurrent uploads.

Starts the embedded AWS endpoint and the API in processes of their own and samples the API
process's RSS every 50 ms.

- Streaming (default): a 1 GiB upload into S3 (multipart) and the object back out; reports the
  growth over the RSS before the transfers. Target: ≤ 64 MiB.
- Concurrent (`--concurrent N`): N uploads of `--mib-each` MiB at once, from N different users
  (so the per-user limit is not what bounds them); reports the peak growth, the growth left a
  few seconds after the burst, and how the uploads were answered (202, or 503 when no buffer
  space came free in time). Target for 150 x 8 MiB: peak growth ≤ 512 MiB.

    .venv/bin/python scripts/bench_memory.py --mib 1024
    .venv/bin/python scripts/bench_memory.py --concurrent 150 --mib-each 8
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from loadtest import USER, image_of_size
from stack import ROOT, bearer, child_env, free_port, start, start_endpoint

CHUNK = 1 << 20


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@asynccontextmanager
async def rss_peak(pid: int) -> AsyncIterator[list[float]]:
    """Sample the process's RSS every 50 ms for the block; `peak[0]` is the highest seen so far."""
    peak = [rss_mib(pid)]
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        stop.set()
        await sampler


@asynccontextmanager
async def api_stack(env: dict[str, str] | None = None) -> AsyncIterator[tuple[str, str, Any, dict[str, str]]]:
    """The embedded endpoint and an API-only process: (API url, endpoint, API process, demo keys)."""
    port, embedded = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{embedded}"
    aws, keys = await start_endpoint(embedded)
    api = await start(
        ["-m", "web", "--port", str(port)], {**child_env(endpoint), **(env or {})}, rb"API listening"
    )
    try:
        yield f"http://127.0.0.1:{port}", endpoint, api, keys
    finally:
        for process in (api, aws):
            process.terminate()
            await process.wait()


async def main(mib: int) -> dict[str, float]:
    head = image_of_size(100_000)  # real JPEG magic bytes, then filler
    async with (
        api_stack({"IMGSVC_MAX_BYTES": str((mib + 64) * 1024 * 1024)}) as (url, _, api, keys),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None), headers=bearer(keys[USER])) as http,
    ):
        # Warm the API process up with a small round trip so the baseline is its working size.
        async with http.put(f"{url}/images/warm?user_id={USER}", data=head) as response:
            assert response.status == 202, await response.text()
        async with http.get(f"{url}/download/image?user_id={USER}&image_id=warm") as response:
            await response.read()
        baseline = rss_mib(api.pid)
        async with rss_peak(api.pid) as peak:

            async def body() -> AsyncIterator[bytes]:
                yield head
                filler = b"\0" * CHUNK
                for _ in range(mib):
                    yield filler

            started = time.perf_counter()
            async with http.put(f"{url}/images/huge?user_id={USER}", data=body()) as response:
                assert response.status == 202, await response.text()
            upload_s = time.perf_counter() - started
            upload_peak = peak[0]
            started = time.perf_counter()
            received = 0
            async with http.get(f"{url}/download/image?user_id={USER}&image_id=huge") as response:
                async for chunk in response.content.iter_chunked(CHUNK):
                    received += len(chunk)
            download_s = time.perf_counter() - started
    return {
        "mib": mib,
        "api_rss_before_mib": round(baseline, 1),
        "upload_peak_growth_mib": round(upload_peak - baseline, 1),
        "download_peak_growth_mib": round(peak[0] - baseline, 1),
        "upload_mib_per_s": round(mib / upload_s, 1),
        "download_mib_per_s": round(received / 2**20 / download_s, 1),
    }


async def concurrent(count: int, mib_each: int, settle: float) -> dict[str, object]:
    head = image_of_size(100_000)  # real JPEG magic bytes, then filler: exactly `mib_each` MiB
    body = head + b"\0" * (mib_each * 1024 * 1024 - len(head))
    async with api_stack() as (url, endpoint, api, _):
        keys = await user_keys(endpoint, count)
        connector = aiohttp.TCPConnector(limit=count)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as http:
            async with http.put(f"{url}/images/warm", data=head, headers=bearer(keys[0])) as warm:
                assert warm.status == 202, await warm.text()
            baseline = rss_mib(api.pid)
            async with rss_peak(api.pid) as peak:
                retries = [0]

                async def upload(i: int) -> int:
                    """As a well-behaved client: a 503 is retried after its Retry-After."""
                    while True:
                        async with http.put(
                            f"{url}/images/burst{i}", data=io.BytesIO(body), headers=bearer(keys[i])
                        ) as response:
                            await response.read()
                            if response.status != 503:
                                return response.status
                            retries[0] += 1
                            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))

                started = time.perf_counter()
                statuses = await asyncio.gather(*(upload(i) for i in range(count)))
                burst_s = time.perf_counter() - started
                burst_peak = peak[0]
                await asyncio.sleep(settle)
                after = rss_mib(api.pid)
    return {
        "uploads": count,
        "mib_each": mib_each,
        "api_rss_before_mib": round(baseline, 1),
        "peak_growth_mib": round(burst_peak - baseline, 1),
        f"growth_{settle:g}s_after_mib": round(after - baseline, 1),
        "answers": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "retried_after_503": retries[0],
        "burst_seconds": round(burst_s, 1),
    }


async def user_keys(endpoint: str, count: int) -> list[str]:
    """One new user (and key) per upload, made with the service's own CLI."""
    env = child_env(endpoint)

    async def create() -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pipeline", "users", "create", cwd=ROOT, env=env, stdout=subprocess.PIPE
        )
        out, _ = await process.communicate()
        return str(json.loads(out)["key"])

    keys: list[str] = []
    for start_at in range(0, count, 8):  # a few processes at a time: two cores
        keys += await asyncio.gather(*(create() for _ in range(min(8, count - start_at))))
    return keys


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=1024, help="size of the upload and download")
    parser.add_argument("--concurrent", type=int, default=0, help="this many uploads at once instead")
    parser.add_argument("--mib-each", type=int, default=8, help="size of each concurrent upload")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the burst to measure")
    args = parser.parse_args()
    if args.concurrent:
        result = asyncio.run(concurrent(args.concurrent, args.mib_each, args.settle))
    else:
        result = asyncio.run(main(args.mib))
    print(json.dumps(result, indent=2))
