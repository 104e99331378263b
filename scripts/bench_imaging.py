"""Imaging engines side by side: naive Pillow, Pillow with draft, pyvips, and the pipeline's choice.

For every image of a generated test set and every rendition size it reports the median time of
`--runs` runs, the peak RSS each engine's worker process reached, and SSIM against a reference
(full decode + Lanczos), so speed is compared at equal quality. It also measures the decode floor
(JPEG decode with shrink-on-load, nothing else) and the 2-worker throughput of the pipeline against
that floor for 12 MP JPEG → 256.

    .venv/bin/pip install -e '.[bench]'    # scikit-image for SSIM
    .venv/bin/python scripts/bench_imaging.py --runs 5 [--json]

Machines are noisy: compare the ratios within one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pyvips
from PIL import Image, ImageOps

from config.settings import ImagingSettings, RenditionSpec
from pipeline.imaging.renditions import make_renditions, read_header

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench-cache"
SIDES = [256, 1024]
ENGINES = ("naive", "pillow", "pyvips", "chosen")
#: SSIM needs scikit-image, the bench extra (`make bench-install`); without it the rows have none.
HAVE_SSIM = importlib.util.find_spec("skimage") is not None
Image.MAX_IMAGE_PIXELS = None


# Test set -----------------------------------------------------------------------------------------


def photo(width: int, height: int) -> Image.Image:
    """Photo-like content: a real photograph scaled up, with sensor-like noise so it compresses
    like a camera image rather than a smooth upscale."""
    base = (
        Image.open(ROOT / "input" / "dog.jpg")
        .convert("RGB")
        .resize((width, height), Image.Resampling.BICUBIC)
    )
    noise = Image.effect_noise((width, height), 24).convert("RGB")
    return Image.blend(base, noise, 0.12)


def encode(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def build_set(names: Iterable[str] | None = None) -> dict[str, bytes]:
    """Generate (once, cached in .bench-cache/) the images the issue names, or only `names`."""
    CACHE.mkdir(exist_ok=True)
    makers = {
        "jpeg-2mp": lambda: encode(photo(1728, 1152), "JPEG", quality=90),
        "jpeg-12mp": lambda: encode(photo(4240, 2832), "JPEG", quality=90),
        "jpeg-24mp": lambda: encode(photo(6000, 4000), "JPEG", quality=90),
        "jpeg-50mp": lambda: encode(photo(8660, 5774), "JPEG", quality=90),
        "png-12mp": lambda: encode(photo(4240, 2832), "PNG", compress_level=6),
        "webp-12mp": lambda: encode(photo(4240, 2832), "WEBP", quality=85),
        "avif-12mp": lambda: bytes(
            pyvips.Image.new_from_buffer(
                encode(photo(4240, 2832), "PNG", compress_level=1), ""
            ).heifsave_buffer(compression="av1", Q=60, effort=0)
        ),
        "jpeg-12mp-exif-rotated": lambda: _rotated(photo(4240, 2832)),
        "jpeg-12mp-cmyk": lambda: encode(photo(4240, 2832).convert("CMYK"), "JPEG", quality=90),
        "png16-4mp": lambda: encode(
            photo(2448, 1632).convert("L").point(lambda v: v * 256, mode="I").convert("I;16"), "PNG"
        ),
        "gif-animated": _animated,
    }
    wanted = list(makers) if names is None else list(names)
    if unknown := [name for name in wanted if name not in makers]:
        raise SystemExit(f"no such image: {', '.join(unknown)} (the set: {', '.join(makers)})")
    images = {}
    for name in wanted:
        path = CACHE / name
        if not path.exists():  # written whole, then renamed: another run never reads half a file
            partial = path.with_name(f".{name}.{os.getpid()}")
            partial.write_bytes(makers[name]())
            partial.replace(path)
        images[name] = path.read_bytes()
    return images


def _rotated(image: Image.Image) -> bytes:
    exif = image.getexif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=90, exif=exif)


def _animated() -> bytes:
    frames = [photo(800, 600).rotate(angle) for angle in range(0, 40, 4)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80)


# Engines ------------------------------------------------------------------------------------------


def naive(data: bytes, side: int) -> bytes:
    """What the original Lambda did: decode everything at full size, then resize."""
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    image = image.resize(_fit(image.size, side), Image.Resampling.LANCZOS)
    return encode(image, "JPEG", quality=85)


def _fit(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def render(engine: str, data: bytes, side: int) -> bytes:
    if engine == "naive":
        return naive(data, side)
    imaging = ImagingSettings(renditions=(RenditionSpec(side),))
    forced = None if engine == "chosen" else engine
    return make_renditions(data, imaging, engine=forced).renditions[0].data  # type: ignore[arg-type]


def floor(data: bytes, side: int) -> int:
    """The decode floor: JPEG decode with the largest shrink-on-load the output allows, no resize."""
    header = pyvips.Image.new_from_buffer(data, "", access="sequential")
    shrink = 1
    while shrink < 8 and max(header.width, header.height) / (shrink * 2) >= side:
        shrink *= 2
    image = pyvips.Image.jpegload_buffer(data, shrink=shrink).copy_memory()
    return int(image.width)


def measure(engine: str, data: bytes, runs: int, sides: list[int]) -> dict[str, Any]:
    """Runs in a fresh worker process: median time per side, and the worker's peak RSS."""
    baseline = _peak_rss_mb()
    result: dict[str, Any] = {"sides": {}}
    for side in sides:
        try:
            render(engine, data, side)  # warm-up, and proof this engine can read it
        except Exception as exc:  # an engine that cannot read a format is reported, not fatal
            result["sides"][str(side)] = {"error": type(exc).__name__}
            continue
        times = []
        output = b""
        for _ in range(runs):
            started = time.perf_counter()
            output = render(engine, data, side)
            times.append(time.perf_counter() - started)
        result["sides"][str(side)] = {"ms": statistics.median(times) * 1000, "output": output}
    result["peak_rss_mb"] = _peak_rss_mb()
    result["rss_growth_mb"] = _peak_rss_mb() - baseline
    return result


def _peak_rss_mb() -> float:
    """This process's own high-water mark (ru_maxrss would include the parent's, kept over exec)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reference(data: bytes, size: tuple[int, int]) -> Any:
    import numpy as np  # the bench extra (make bench-install): only SSIM needs it

    with Image.open(io.BytesIO(data)) as opened:
        opened.seek(0)
        image = ImageOps.exif_transpose(opened)
        if image.mode in ("I;16", "I"):
            image = image.convert("I").point(lambda v: v * (1 / 256)).convert("L")
        if "A" in image.mode or image.mode == "P":
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)
        image = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image.convert("L"))


def ssim(data: bytes, output: bytes) -> float:
    import numpy as np
    from skimage.metrics import structural_similarity  # the bench extra (make bench-install)

    rendered = Image.open(io.BytesIO(output)).convert("L")
    return float(structural_similarity(reference(data, rendered.size), np.asarray(rendered), data_range=255))


def in_worker(fn: Any, *args: Any) -> Any:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def throughput(data: bytes, jobs: int, workers: int) -> dict[str, float]:
    """Images per second with `workers` processes: the pipeline's choice versus the decode floor."""
    imaging = ImagingSettings(renditions=(RenditionSpec(256),))
    rates = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name, fn, args in (("floor", floor, (data, 256)), ("pipeline", make_renditions, (data, imaging))):
            list(pool.map(fn, *zip(*[args] * workers, strict=True)))  # warm every worker
            started = time.perf_counter()
            list(pool.map(fn, *zip(*[args] * jobs, strict=True)))
            rates[name] = jobs / (time.perf_counter() - started)
    rates["ratio"] = rates["pipeline"] / rates["floor"]
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per image, engine and size (median)")
    parser.add_argument("--jobs", type=int, default=40, help="jobs for the 2-worker throughput run")
    parser.add_argument("--only", nargs="*", help="image names to run (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--sides", nargs="*", type=int, help="rendition sizes (default: 256 1024)")
    args = parser.parse_args()
    if args.sides:
        SIDES[:] = args.sides
    if not HAVE_SSIM:
        print("no SSIM: scikit-image is missing (make bench-install)", file=sys.stderr)
    images = build_set(args.only or None)
    names = list(images)
    rows = []
    for name in names:
        data = images[name]
        info = read_header(data, _format_of(name))
        choice = {
            side: make_renditions(data, ImagingSettings(renditions=(RenditionSpec(side),))).engine
            for side in SIDES
        }
        measured = {engine: in_worker(measure, engine, data, args.runs, SIDES) for engine in ENGINES}
        for side in SIDES:
            row: dict[str, Any] = {
                "image": name,
                "pixels": info.width * info.height,
                "side": side,
                "choice": choice[side],
            }
            for engine in ENGINES:
                cell = measured[engine]["sides"][str(side)]
                if "error" in cell:
                    row[engine] = {"error": cell["error"]}
                    continue
                row[engine] = {
                    "ms": round(cell["ms"], 1),
                    **({"ssim": round(ssim(data, cell["output"]), 4)} if HAVE_SSIM else {}),
                    "peak_rss_mb": round(measured[engine]["peak_rss_mb"], 1),
                }
            fastest = min((row[e]["ms"] for e in ("pillow", "pyvips") if "ms" in row[e]), default=None)
            if fastest and "ms" in row["chosen"]:
                row["chosen_vs_fastest"] = round(row["chosen"]["ms"] / fastest, 3)
            rows.append(row)
            print(_line(row), file=sys.stderr, flush=True)
    report: dict[str, Any] = {"rows": rows, "cpu_count": os.cpu_count(), "runs": args.runs}
    if "jpeg-12mp" in images:
        report["throughput_12mp_jpeg_256_2_workers"] = throughput(images["jpeg-12mp"], args.jobs, 2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_markdown(report))
    return 0


def _format_of(name: str) -> str:
    prefix = name.split("-", 1)[0]
    return {"png16": "png"}.get(prefix, prefix)


def _line(row: dict[str, Any]) -> str:
    cells = [f"{e}={row[e].get('ms', row[e].get('error'))}" for e in ENGINES]
    return f"{row['image']:>24} {row['side']:>5}  " + "  ".join(cells)


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "| image | side | naive ms | Pillow+draft ms | pyvips ms | chosen | chosen/fastest "
        "| SSIM naive/draft/vips | peak RSS MB naive/draft/vips |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for row in report["rows"]:

        def cell(engine: str, key: str, row: dict[str, Any] = row) -> str:
            return str(row[engine].get(key, "n/a"))

        lines.append(
            f"| {row['image']} | {row['side']} | {cell('naive', 'ms')} | {cell('pillow', 'ms')} | "
            f"{cell('pyvips', 'ms')} | {row['choice']} | {row.get('chosen_vs_fastest', 'n/a')} | "
            f"{cell('naive', 'ssim')} / {cell('pillow', 'ssim')} / {cell('pyvips', 'ssim')} | "
            f"{cell('naive', 'peak_rss_mb')} / {cell('pillow', 'peak_rss_mb')} / "
            f"{cell('pyvips', 'peak_rss_mb')} |"
        )
    if "throughput_12mp_jpeg_256_2_workers" in report:
        t = report["throughput_12mp_jpeg_256_2_workers"]
        lines.append("")
        lines.append(
            f"12 MP JPEG → 256, 2 workers: pipeline {t['pipeline']:.1f} img/s, "
            f"decode floor {t['floor']:.1f} img/s, ratio {t['ratio']:.2f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
