"""CPU per upload and per job: the local backend (files + SQLite) against the embedded moto stack.

Each round starts one stack, uploads N images through the API with no consumer running (CPU of
the API process, plus moto's for the embedded stack: the upload's whole cost on this machine),
then drains the queue with `python -m pipeline consumer --burst` (CPU of the consumer's event
loop, of its imaging workers, and again of moto). Rounds alternate between the two backends,
so both see the same machine noise; compare the ratios.

    python scripts/bench_backends.py --images 200 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scripts.proccpu import CpuSampler, tree_cpu
from scripts.stack import bearer, child_env, free_port, start, start_endpoint

ROOT = Path(__file__).resolve().parent.parent
USER = "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e"
IMAGE = (ROOT / "input" / "cat.jpg").read_bytes()


async def upload_all(api: str, key: str, images: int, concurrency: int) -> None:
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(api, headers=bearer(key)) as session:

        async def one(number: int) -> None:
            async with gate, session.put(f"/images/b{number}", data=IMAGE) as response:
                assert response.status == 202, await response.text()

        await asyncio.gather(*(one(n) for n in range(images)))


async def measure(kind: str, images: int, concurrency: int) -> dict[str, float]:
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    processes = []
    port = free_port()
    if kind == "embedded":  # moto in a process of its own, so its CPU is seen apart
        embedded_port = free_port()
        endpoint_process, keys = await start_endpoint(embedded_port)
        processes.append(endpoint_process)
        env = child_env(f"http://127.0.0.1:{embedded_port}")
        backend_pids = [endpoint_process.pid]
    else:
        env = child_env(IMGSVC_DATA_DIR=str(scratch / "data"))
        del env["IMGSVC_MODE"]
        backend_pids = []
    consumer_args = ["-m", "pipeline", "consumer", "--burst"]
    # A burst consumer's first empty poll is a whole long poll: a short one, so that it exits
    # once the queue is drained instead of idling 20 s more (as `bench_scaling.py`'s consumers).
    consumer_env = {**env, "IMGSVC_CONSUMER_WAIT_TIME_SECONDS": "1"}
    web = await start(["-m", "web", "--port", str(port)], env, rb"API listening")
    processes.append(web)
    if kind == "local":
        keys = json.loads((scratch / "data" / "demo-keys.json").read_text())["keys"]

    def serving_cpu() -> float:
        """The API's and the endpoint's CPU, their children's included (granian's worker, a
        grandchild of the endpoint's process, does moto's work)."""
        return sum(tree_cpu(pid) or 0.0 for pid in (web.pid, *backend_pids))

    try:
        api = f"http://127.0.0.1:{port}"
        await asyncio.sleep(0.5)
        before = serving_cpu()
        await upload_all(api, keys[USER], images, concurrency)
        await asyncio.sleep(0.5)
        upload_cpu = serving_cpu() - before

        serving_before = serving_cpu()
        consumer = await start(consumer_args, consumer_env, rb"consumer starting")
        jobs = CpuSampler()
        jobs.watch([consumer.pid])
        await consumer.wait()
        await jobs.stop()
        serving = serving_cpu() - serving_before
        return {
            "upload_ms": 1000 * upload_cpu / images,
            "job_loop_ms": 1000 * jobs.roots / images,
            "job_workers_ms": 1000 * jobs.children / images,
            "job_backend_ms": 1000 * serving / images,
            "job_total_ms": 1000 * (jobs.roots + jobs.children + serving) / images,
        }
    finally:
        for process in reversed(processes):
            if process.returncode is None:
                process.terminate()
                await process.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"embedded": [], "local": []}
    for round_number in range(args.rounds):
        for kind in ("embedded", "local") if round_number % 2 == 0 else ("local", "embedded"):
            results[kind].append(await measure(kind, args.images, args.concurrency))
            print(kind, json.dumps({k: round(v, 2) for k, v in results[kind][-1].items()}), flush=True)
    print(f"\nCPU ms per image, median of {args.rounds} rounds of {args.images} images")
    print(f"{'':16}{'embedded (moto)':>17}{'local':>10}{'local/embedded':>16}")
    for metric in results["local"][0]:
        moto = statistics.median(r[metric] for r in results["embedded"])
        local = statistics.median(r[metric] for r in results["local"])
        print(f"{metric:16}{moto:17.2f}{local:10.2f}{local / moto if moto else float('nan'):16.2f}")


if __name__ == "__main__":
    asyncio.run(main())
