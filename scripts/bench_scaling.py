"""Consumer scaling: 1, 2 and 3 `python -m pipeline consumer` processes on the same pre-filled queue.

Each round provisions fresh buckets and queues on one embedded endpoint (moto in a process of its
own, as a real endpoint would be), fills the source bucket with N images and waits until all N
events are queued, then starts K consumer processes (one imaging worker each, `--burst`: they exit
once the queue is drained) and times them until the last exits. The same K processes are also
timed on an empty queue, so start-up and drain detection are subtracted:

    throughput(K) = N / (time with N queued - time with an empty queue)

Every process reports its outcomes when it stops; images processed more than once (visibility
timeouts expiring under contention) show up as `duplicates`. CPU seconds of moto and of the
consumer processes (with their workers) are read from /proc and rusage around each round.

    .venv/bin/python scripts/bench_scaling.py --images 150 --megapixels 12
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import re
import resource
import subprocess
import sys
import time
from typing import Any

from bench_consumer import fill, photo_jpeg, settings_for, start_moto
from stack import ROOT, child_env, free_port

from config.settings import Settings
from pipeline.aws import open_clients
from pipeline.provision import provision

OUTCOMES = re.compile(rb"consumer stopped outcomes=(\{.*\})")


def round_env(endpoint: str, settings: Settings, extra: dict[str, str]) -> dict[str, str]:
    aws = settings.aws
    return child_env(
        endpoint,
        IMGSVC_SOURCE_BUCKET=aws.source_bucket,
        IMGSVC_DEST_BUCKET=aws.dest_bucket,
        IMGSVC_QUEUE_NAME=aws.queue_name,
        IMGSVC_DLQ_NAME=aws.dlq_name,
        IMGSVC_CONSUMER_WORKERS="1",
        IMGSVC_CONSUMER_WAIT_TIME_SECONDS="1",
        IMGSVC_LOG_LEVEL="INFO",
        **extra,
    )


async def run_consumers(processes: int, env: dict[str, str]) -> tuple[float, int]:
    """Seconds until `processes` burst consumers have all exited, and the images they made."""
    started = time.perf_counter()
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pipeline",
            "consumer",
            "--burst",
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    logs = await asyncio.gather(*(child.communicate() for child in children))
    elapsed = time.perf_counter() - started
    made = 0
    for child, (_, err) in zip(children, logs, strict=True):
        if child.returncode != 0 or not (found := OUTCOMES.search(err)):
            raise RuntimeError(f"consumer failed ({child.returncode}): {err.decode()[-2000:]}")
        made += ast.literal_eval(found.group(1).decode()).get("ready", 0)
    return elapsed, made


def cpu_seconds(moto_pid: int) -> dict[str, float]:
    with open(f"/proc/{moto_pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "moto": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        "consumers": children.ru_utime + children.ru_stime,
    }


async def one_round(
    endpoint: str, moto_pid: int, processes: int, images: list[bytes], count: int, extra: dict[str, str]
) -> dict[str, Any]:
    empty, full = settings_for(endpoint), settings_for(endpoint)
    async with open_clients(full.aws) as clients:
        await provision(clients, empty)
        await provision(clients, full)
        await fill(clients, full, images, count)
    idle_seconds, _ = await run_consumers(processes, round_env(endpoint, empty, extra))
    before = cpu_seconds(moto_pid)
    busy_seconds, made = await run_consumers(processes, round_env(endpoint, full, extra))
    after = cpu_seconds(moto_pid)
    if made < count:
        raise RuntimeError(f"{processes} consumers made {made} of {count} images")
    work = busy_seconds - idle_seconds
    return {
        "processes": processes,
        "images_per_s": round(count / work, 2),
        "seconds_with_queue": round(busy_seconds, 2),
        "seconds_empty_queue": round(idle_seconds, 2),
        "duplicates": made - count,
        "cpu_seconds": {k: round(after[k] - before[k], 2) for k in after},
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    images = [photo_jpeg(args.megapixels, seed) for seed in range(4)]
    extra = dict(item.split("=", 1) for item in args.set)
    port = free_port()
    moto = start_moto(port)
    try:
        rounds = [
            await one_round(f"http://127.0.0.1:{port}", moto.pid, k, images, args.images, extra)
            for k in args.processes
        ]
    finally:
        moto.terminate()
        moto.wait()
    rate = {r["processes"]: r["images_per_s"] for r in rounds}
    base = rate.get(1)
    return {
        "images": args.images,
        "megapixels": args.megapixels,
        "image_bytes": len(images[0]),
        "settings": extra,
        "rounds": rounds,
        "speedup_vs_one": {str(k): round(v / base, 2) for k, v in rate.items()} if base else {},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--set", action="append", default=[], metavar="IMGSVC_X=V", help="a consumer setting")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
