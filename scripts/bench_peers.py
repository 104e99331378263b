"""Side by side with thumbor 7.8, on 127.0.0.1, on the same images.

(a) rendition time per image: thumbor's on-the-fly 256 px `fit-in` (one request at a time, median)
    against our `make_renditions` to 256 px (median, same images);
(b) thumbnail GET throughput at the same concurrency: ours (pre-generated, streamed from S3 by
    `GET /download/thumbnail`) against thumbor's (made on every request, result storage off);
(c) on-demand variants, the same transforms in both (fit inside 512x512; 300x300 cover with a
    smart crop; 800 px wide WebP): the first request's latency (ours makes and stores it, thumbor
    makes it; each run a new quality, so every request is a first one), repeated requests'
    throughput (ours streamed from storage, thumbor made again), and the SSIM of both against a
    full decode resized with Lanczos (the smart crops choose their own regions: no reference).

thumbor lives in a virtualenv of its own (`make bench-peers-install` creates `.venv-thumbor`);
without it the report has our side only (thumbor's figures are left out, not faked).

    .venv/bin/python scripts/bench_peers.py --requests 200 --concurrency 8 [--backend local]
        [--mezzanine 2048]

With `--mezzanine`, ours makes a mezzanine of each large original at upload (`IMGSVC_MEZZANINE`)
and the report adds (d): what it costs each upload in time and bytes.

SSIM needs the bench extra (`make bench-install`: scikit-image).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from bench_imaging import build_set
from loadtest import processing_ms
from stack import ROOT, bearer, free_port, start_consumer, start_local, start_stack

from config.settings import MEZZANINE, SEED_USER_IDS, ImagingSettings
from pipeline.core import runtime
from pipeline.imaging.renditions import make_renditions

USER = SEED_USER_IDS[2]
IMAGES = ("jpeg-2mp", "jpeg-12mp", "png-12mp", "webp-12mp")
#: name: (our variant query, thumbor's path before its filters, thumbor's filters, SSIM reference?)
TRANSFORMS: dict[str, tuple[dict[str, str], str, list[str], bool]] = {
    "fit-512": ({"w": "512", "h": "512"}, "fit-in/512x512", [], True),
    "cover-300-smart": (
        {"w": "300", "h": "300", "fit": "cover", "crop": "attention"},
        "300x300/smart",
        [],
        False,
    ),
    "webp-800w": ({"w": "800", "format": "webp"}, "800x0", ["format(webp)"], True),
}


def ours_url(api: str, name: str, transform: str, quality: int) -> str:
    query = TRANSFORMS[transform][0] | {"q": str(quality)}
    return f"{api}/images/{name}/variant?" + "&".join(f"{k}={v}" for k, v in query.items())


def thumbor_url_of(thumbor: str, name: str, transform: str, quality: int) -> str:
    _, path, filters, _ = TRANSFORMS[transform]
    return f"{thumbor}/unsafe/{path}/filters:{':'.join([*filters, f'quality({quality})'])}/{name}"


async def variants(
    api: str, key: str, thumbor: str | None, images: dict[str, bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """(c): first requests one at a time, then repeated ones at the throughput concurrency.
    `thumbor`: None when there is none (ours only)."""
    out: dict[str, Any] = {"first_request_ms": {}, "repeated_throughput": {}, "ssim": {}}
    names = list(images)
    for transform in TRANSFORMS:
        rows: dict[str, dict[str, Any]] = {}
        for name in images:
            runs = range(80, 80 + args.variant_runs)  # a new quality each run: always a first request
            ours = await timed_gets(
                lambda i, n=name, t=transform: ours_url(api, n, t, 80 + i), len(runs), 1, bearer(key)
            )
            rows[name] = {"ours_p50": ours["p50_ms"], "failures": ours["failures"]}
            if thumbor is not None:
                theirs = await timed_gets(
                    lambda i, n=name, t=transform: thumbor_url_of(thumbor, n, t, 80 + i), len(runs), 1
                )
                rows[name] = {
                    "ours_p50": ours["p50_ms"],
                    "thumbor_p50": theirs["p50_ms"],
                    "thumbor_over_ours": round(theirs["p50_ms"] / ours["p50_ms"], 2),
                    "failures": ours["failures"] + theirs["failures"],
                }
        out["first_request_ms"][transform] = rows
        ours_get = await timed_gets(
            lambda i, t=transform: ours_url(api, names[i % len(names)], t, 80),
            args.requests,
            args.concurrency,
            bearer(key),
        )
        repeated: dict[str, Any] = {"ours_stored": ours_get}
        if thumbor is not None:
            thumbor_get = await timed_gets(
                lambda i, t=transform: thumbor_url_of(thumbor, names[i % len(names)], t, 80),
                args.requests,
                args.concurrency,
            )
            repeated["thumbor_on_the_fly"] = thumbor_get
            repeated["ours_over_thumbor"] = round(ours_get["per_s"] / thumbor_get["per_s"], 1)
        out["repeated_throughput"][transform] = repeated
        if TRANSFORMS[transform][3]:
            out["ssim"][transform] = await _ssim(api, key, thumbor, images, transform)
    return out


def mezzanine_cost(images: dict[str, bytes], side: int, runs: int) -> dict[str, Any]:
    """(d) What a mezzanine costs each upload: the renditions' job with and without one (median
    of `runs`, taken in turns, so both see the same machine), and its bytes beside the original's."""
    plain, with_one = ImagingSettings(), ImagingSettings(mezzanine=side)
    rows: dict[str, Any] = {}
    for name, data in images.items():
        times: dict[str, list[float]] = {"without_ms": [], "with_ms": []}
        for _ in range(runs + 1):  # the first of each warms up
            for label, imaging in (("without_ms", plain), ("with_ms", with_one)):
                started = time.perf_counter()
                result = make_renditions(data, imaging)
                times[label].append((time.perf_counter() - started) * 1000)
        made = next((r for r in result.renditions if r.spec.name == MEZZANINE), None)
        row = {label: round(statistics.median(t[1:]), 1) for label, t in times.items()}
        row["original_bytes"] = len(data)
        row["mezzanine_bytes"] = made.size if made is not None else 0
        row["mezzanine_size"] = f"{made.width}x{made.height}" if made is not None else "none"
        rows[name] = row
    return rows


async def _ssim(
    api: str, key: str, thumbor: str | None, images: dict[str, bytes], transform: str
) -> dict[str, Any]:
    from bench_imaging import HAVE_SSIM, ssim

    if not HAVE_SSIM:  # scikit-image is in the bench extra
        return {"skipped": "make bench-install for scikit-image"}
    rows = {}
    async with aiohttp.ClientSession() as http:
        for name, data in images.items():
            async with http.get(ours_url(api, name, transform, 80), headers=bearer(key)) as response:
                ours = await response.read()
            rows[name] = {"ours": round(ssim(data, ours), 4)}
            if thumbor is not None:
                async with http.get(thumbor_url_of(thumbor, name, transform, 80)) as response:
                    theirs = await response.read()
                rows[name]["thumbor"] = round(ssim(data, theirs), 4)
    return rows


async def start_thumbor(binary: Path, root: Path) -> tuple[str, asyncio.subprocess.Process]:
    port = free_port()
    config = root / "thumbor.conf"
    config.write_text(
        f"LOADER = 'thumbor.loaders.file_loader'\nFILE_LOADER_ROOT_PATH = '{root}'\n"
        "STORAGE = 'thumbor.storages.no_storage'\nRESULT_STORAGE = None\nQUALITY = 85\n"
        "ALLOW_UNSAFE_URL = True\nMAX_AGE = 0\n"
    )
    process = await asyncio.create_subprocess_exec(
        str(binary), "-p", str(port), "-i", "127.0.0.1", "-c", str(config), "-l", "warning",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http, asyncio.timeout(60):
        while True:
            try:
                async with http.get(f"{url}/healthcheck") as response:
                    if response.status == 200:
                        return url, process
            except aiohttp.ClientError:
                await asyncio.sleep(0.2)


async def timed_gets(
    url_of: Any, count: int, concurrency: int, headers: dict[str, str] | None = None
) -> dict[str, float]:
    latencies: list[float] = []
    failures = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    async with aiohttp.ClientSession(headers=headers) as http:

        async def worker() -> None:
            nonlocal failures
            while not queue.empty():
                i = queue.get_nowait()
                started = time.perf_counter()
                async with http.get(url_of(i)) as response:
                    await response.read()
                    if response.status != 200:
                        failures += 1
                        continue
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return {
        "per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "failures": failures,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    images = build_set(args.images)
    root = Path(tempfile.mkdtemp(prefix="thumbor-"))
    for name, data in images.items():
        (root / name).write_bytes(data)
    thumbor_url, thumbor = None, None
    if args.thumbor.exists():
        thumbor_url, thumbor = await start_thumbor(args.thumbor, root)
    else:
        print(f"no thumbor at {args.thumbor} (make bench-peers-install): ours only", file=sys.stderr)
    local = args.backend == "local"
    env = {"IMGSVC_MEZZANINE": str(args.mezzanine)}
    stack = await start_local(root / "data", **env) if local else await start_stack(**env)
    report: dict[str, Any] = {"thumbor": thumbor_url is not None, "rendition_ms": {}, "get_throughput": {}}
    try:
        # (a) one rendition at a time.
        for name, data in images.items():
            ours = processing_ms(data, args.runs)
            report["rendition_ms"][name] = {"ours": round(ours, 1)}
            if thumbor_url is not None:
                thumbor_side = await timed_gets(
                    lambda _i, n=name: f"{thumbor_url}/unsafe/fit-in/256x256/{n}", args.runs, 1
                )
                report["rendition_ms"][name] |= {
                    "thumbor_request_p50": thumbor_side["p50_ms"],
                    "thumbor_over_ours": round(thumbor_side["p50_ms"] / ours, 2),
                }
        # (b) GET throughput: ours pre-generated, thumbor on the fly.
        if not local:  # the local backend's API runs its consumer in-process
            stack.processes.append(await start_consumer(stack.endpoint, **env))
        async with aiohttp.ClientSession(headers=bearer(stack.keys[USER])) as http:
            for name, data in images.items():
                async with http.put(f"{stack.api}/images/{name}?user_id={USER}", data=data) as response:
                    assert response.status == 202, await response.text()
                async with http.get(f"{stack.api}/images/{name}?user_id={USER}&wait=20") as response:
                    assert (await response.json())["status"] == "ready"
        names = list(images)
        ours_get = await timed_gets(
            lambda i: f"{stack.api}/download/thumbnail?user_id={USER}&image_id={names[i % len(names)]}",
            args.requests,
            args.concurrency,
            bearer(stack.keys[USER]),
        )
        report["get_throughput"] = {"ours_pregenerated": ours_get}
        if thumbor_url is not None:
            thumbor_get = await timed_gets(
                lambda i: f"{thumbor_url}/unsafe/fit-in/256x256/{names[i % len(names)]}",
                args.requests,
                args.concurrency,
            )
            report["get_throughput"] |= {
                "thumbor_on_the_fly": thumbor_get,
                "ours_over_thumbor": round(ours_get["per_s"] / thumbor_get["per_s"], 1),
            }
        # (c) on-demand variants.
        report["variants"] = await variants(stack.api, stack.keys[USER], thumbor_url, images, args)
        if args.mezzanine:
            report["mezzanine"] = mezzanine_cost(images, args.mezzanine, args.runs)
    finally:
        await stack.stop()
        if thumbor is not None:
            thumbor.terminate()
            await thumbor.wait()
        shutil.rmtree(root, ignore_errors=True)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--thumbor",
        type=Path,
        default=ROOT / ".venv-thumbor" / "bin" / "thumbor",
        help="thumbor's executable (when there is none, the report has our side only)",
    )
    parser.add_argument("--runs", type=int, default=7, help="sequential renditions per image (median)")
    parser.add_argument("--requests", type=int, default=200, help="GETs for the throughput comparison")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--variant-runs", type=int, default=5, help="first requests per image and transform")
    parser.add_argument(
        "--images",
        nargs="+",
        default=list(IMAGES),
        help=f"images of bench_imaging.py's set (default: {' '.join(IMAGES)})",
    )
    parser.add_argument(
        "--mezzanine",
        type=int,
        default=0,
        metavar="SIDE",
        help="IMGSVC_MEZZANINE for our stack (0: none), and its cost per upload in the report",
    )
    parser.add_argument(
        "--backend",
        choices=("embedded", "local"),
        default="embedded",
        help="ours on the embedded AWS endpoint (moto), or on the local backend (files and SQLite,"
        " as thumbor's file loader reads files)",
    )
    parsed = parser.parse_args()
    if parsed.variant_runs > 11:  # qualities 80 to 90: above IMGSVC_VARIANT_MAX_QUALITY, one variant
        parser.error("--variant-runs is at most 11: each run asks a new quality, from 80 to 90")
    print(json.dumps(runtime.run(main(parsed)), indent=2))
