"""Consumer scaling: 1, 2 and 3 `python -m pipeline consumer` processes on the same pre-filled queue.

Each round provisions fresh buckets and queues on one embedded endpoint (moto in a process of its
own, as a real endpoint would be), fills the source bucket with N images and waits until all N
events are queued, then starts K consumer processes (one imaging worker of one thread each,
`--burst`: they exit once the queue is drained) and times them until the last exits. The same K
processes are also timed on an empty queue, so start-up and drain detection are subtracted:

    throughput(K) = N / (time with N queued - time with an empty queue)

Every process reports its outcomes when it stops; images processed more than once (visibility
timeouts expiring under contention) show up as `duplicates`. CPU per image is split into the
imaging worker, the consumer's event loop and the endpoint (sampled from /proc, the empty run
subtracted). As the hardware's own reference, the same images are resized by K plain worker
processes with no AWS at all (`raw_speedup`): consumer scaling is judged against that.

    .venv/bin/python scripts/bench_scaling.py --images 60 --megapixels 12 --format avif
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import io
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench_consumer import fill, photo_jpeg, settings_for
from PIL import Image
from proccpu import CpuSampler, tree_cpu
from stack import ROOT, child_env, free_port, start_endpoint

from config.settings import Settings
from pipeline.aws.clients import open_clients
from pipeline.aws.provision import provision
from pipeline.imaging.renditions import configure_worker, make_renditions

OUTCOMES = re.compile(rb"consumer stopped outcomes=(\{.*\})")


def reencode(jpeg: bytes, fmt: str) -> bytes:
    """The same photo in another format: how much CPU an image costs depends mostly on it."""
    if fmt == "jpeg":
        return jpeg
    out = io.BytesIO()
    Image.open(io.BytesIO(jpeg)).save(out, fmt.upper(), quality=80)
    return out.getvalue()


def consumer_env(endpoint: str, settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    aws = settings.aws
    return child_env(
        endpoint,
        IMGSVC_SOURCE_BUCKET=aws.source_bucket,
        IMGSVC_DEST_BUCKET=aws.dest_bucket,
        IMGSVC_QUEUE_NAME=aws.queue_name,
        IMGSVC_DLQ_NAME=aws.dlq_name,
        IMGSVC_OUTBOX_NAME=aws.outbox_name,
        IMGSVC_OUTBOX_DLQ_NAME=aws.outbox_dlq_name,
        IMGSVC_CONSUMER_WORKERS="1",
        IMGSVC_CONSUMER_WORKER_THREADS="1",  # one core per process: the unit being scaled
        IMGSVC_CONSUMER_WAIT_TIME_SECONDS="1",
        **extra,
    )


@dataclass
class Run:
    """One timed run of K burst consumers, and where its CPU went (seconds)."""

    seconds: float
    made: int
    worker_cpu: float
    loop_cpu: float
    endpoint_cpu: float

    def minus(self, idle: Run) -> Run:
        return Run(
            self.seconds - idle.seconds,
            self.made,
            self.worker_cpu - idle.worker_cpu,
            self.loop_cpu - idle.loop_cpu,
            self.endpoint_cpu - idle.endpoint_cpu,
        )

    def cpu_ms_per_image(self, images: int) -> dict[str, float]:
        return {
            "worker": round(self.worker_cpu / images * 1000, 1),
            "consumer_loop": round(self.loop_cpu / images * 1000, 1),
            "endpoint": round(self.endpoint_cpu / images * 1000, 1),
        }


async def run_consumers(processes: int, env: dict[str, str], endpoint_pid: int) -> Run:
    """K burst consumers until they have all exited: time, images made, CPU by part."""
    # The endpoint's process tree: its granian worker, a grandchild, does moto's work.
    endpoint_before = tree_cpu(endpoint_pid) or 0.0
    sampler = CpuSampler(interval=0.1)
    started = time.perf_counter()
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "pipeline", "consumer", "--burst"),
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    sampler.watch(child.pid for child in children)
    logs = await asyncio.gather(*(child.communicate() for child in children))
    elapsed = time.perf_counter() - started
    await sampler.stop()
    made = 0
    for child, (_, err) in zip(children, logs, strict=True):
        if child.returncode != 0 or not (found := OUTCOMES.search(err)):
            raise RuntimeError(f"consumer failed ({child.returncode}): {err.decode()[-2000:]}")
        made += ast.literal_eval(found.group(1).decode()).get("ready", 0)
    endpoint_cpu = (tree_cpu(endpoint_pid) or 0.0) - endpoint_before
    return Run(elapsed, made, sampler.children, sampler.roots, endpoint_cpu)


async def one_round(
    endpoint: str, endpoint_pid: int, processes: int, images: list[bytes], count: int, extra: dict[str, str]
) -> dict[str, Any]:
    empty, full = settings_for(endpoint), settings_for(endpoint)
    async with open_clients(full.aws) as clients:
        await provision(clients, empty)
        await provision(clients, full)
        await fill(clients, full, images, count)
    idle = await run_consumers(processes, consumer_env(endpoint, empty, extra), endpoint_pid)
    busy = await run_consumers(processes, consumer_env(endpoint, full, extra), endpoint_pid)
    if busy.made < count:
        raise RuntimeError(f"{processes} consumers made {busy.made} of {count} images")
    work = busy.minus(idle)
    return {
        "processes": processes,
        "images_per_s": round(count / work.seconds, 2),
        "seconds_with_queue": round(busy.seconds, 2),
        "seconds_empty_queue": round(idle.seconds, 2),
        "duplicates": busy.made - count,
        "cpu_ms_per_image": work.cpu_ms_per_image(count),
    }


def raw_rate(images: list[bytes], processes: int, count: int) -> float:
    """Images per second of K one-thread worker processes resizing, with nothing else running."""
    imaging = Settings.from_env({}).imaging
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        processes, mp_context=context, initializer=configure_worker, initargs=(1,)
    ) as pool:
        list(pool.map(make_renditions, images[:processes], [imaging] * processes))  # warm up
        started = time.perf_counter()
        list(pool.map(make_renditions, [images[i % len(images)] for i in range(count)], [imaging] * count))
        return count / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    images = [reencode(photo_jpeg(args.megapixels, seed), args.format) for seed in range(4)]
    extra = dict(item.split("=", 1) for item in args.set)
    port = free_port()
    moto, _ = await start_endpoint(port)
    try:
        rounds = [  # interleaved (1, 2, 3, 1, 2, 3...) so drift in the machine hits every K alike
            await one_round(f"http://127.0.0.1:{port}", moto.pid, k, images, args.images, extra)
            for _ in range(args.repeat)
            for k in args.processes
        ]
    finally:
        moto.terminate()
        await moto.wait()
    rate = {
        k: round(statistics.median(r["images_per_s"] for r in rounds if r["processes"] == k), 2)
        for k in args.processes
    }
    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "images": args.images,
        "megapixels": args.megapixels,
        "format": args.format,
        "image_bytes": len(images[0]),
        "settings": extra,
        "cores": cores,
        "in_flight_per_process": Settings.from_env(
            {"IMGSVC_CONSUMER_WORKERS": "1", **extra}
        ).consumer.in_flight_limit,
        "rounds": rounds,
        "median_images_per_s": {str(k): v for k, v in rate.items()},
    }
    if 1 in rate:
        raw = {k: raw_rate(images, k, args.images) for k in args.processes}
        out["speedup_vs_one"] = {str(k): round(v / rate[1], 2) for k, v in rate.items()}
        out["raw_speedup"] = {str(k): round(v / raw[1], 2) for k, v in raw.items()}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--format", choices=["jpeg", "webp", "avif", "png"], default="avif")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--repeat", type=int, default=1, help="rounds per process count (median taken)")
    parser.add_argument("--set", action="append", default=[], metavar="IMGSVC_X=V", help="a consumer setting")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
