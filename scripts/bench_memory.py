"""Memory while streaming: a 1 GiB upload and a 1 GiB download through the API process.

Starts the embedded AWS endpoint and the API in processes of their own, samples the API
process's RSS every 50 ms while it streams the upload into S3 (multipart) and the object back
out, and reports the growth over its RSS before the transfers. Target: ≤ 64 MiB.

    .venv/bin/python scripts/bench_memory.py --mib 1024
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator

import aiohttp
from loadtest import USER, image_of_size
from stack import bearer, child_env, free_port, start, start_endpoint

CHUNK = 1 << 20


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def sample(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mib(pid))
        await asyncio.sleep(0.05)


async def main(mib: int) -> dict[str, float]:
    port, embedded = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{embedded}"
    env = {**child_env(endpoint), "IMGSVC_MAX_BYTES": str((mib + 64) * 1024 * 1024)}
    aws, keys = await start_endpoint(embedded)
    api = await start(["-m", "web", "--port", str(port)], env, rb"API listening")
    url = f"http://127.0.0.1:{port}"
    head = image_of_size(100_000)  # real JPEG magic bytes, then filler
    try:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None), headers=bearer(keys[USER])
        ) as http:
            # Warm the API process up with a small round trip so the baseline is its working size.
            async with http.put(f"{url}/images/warm?user_id={USER}", data=head) as response:
                assert response.status == 202, await response.text()
            async with http.get(f"{url}/download/image?user_id={USER}&image_id=warm") as response:
                await response.read()
            baseline = rss_mib(api.pid)
            peak = [baseline]
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample(api.pid, peak, stop))

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
            stop.set()
            await sampler
    finally:
        for process in (api, aws):
            process.terminate()
            await process.wait()
    return {
        "mib": mib,
        "api_rss_before_mib": round(baseline, 1),
        "upload_peak_growth_mib": round(upload_peak - baseline, 1),
        "download_peak_growth_mib": round(peak[0] - baseline, 1),
        "upload_mib_per_s": round(mib / upload_s, 1),
        "download_mib_per_s": round(received / 2**20 / download_s, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=1024, help="size of the upload and download")
    print(json.dumps(asyncio.run(main(parser.parse_args().mib)), indent=2))
