"""What each variant operation costs beside a plain resize, measured side by side in one run.

For each image of the generated set (`bench_imaging.build_set`), in this process, libvips as a
variant worker runs it: the median of `--runs` of `make_variant` for a plain `w=800` JPEG, then
for the same with each operation added, the stripped original, and face detection alone (on the
image scaled to cover the box, as `crop=faces` runs it: its small grey copy, then OpenCV).
Prints a Markdown table: the milliseconds, the ratio to the plain resize, and the milliseconds
per megapixel of the original beyond the resize (what `pipeline.imaging.variants`' cost constants estimate).

    .venv/bin/python scripts/bench_operations.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from bench_imaging import build_set

from config.settings import Settings
from pipeline.imaging import faces, renditions
from pipeline.imaging.variants import StrippedOriginal, VariantSpec, parse_variant

#: The operations measured, as the query that adds each to `w=800`.
OPERATIONS: dict[str, dict[str, str]] = {
    "resize": {},
    "blur=2": {"blur": "2"},
    "blur=10": {"blur": "10"},
    "sharpen=1": {"sharpen": "1"},
    "rotate=90": {"rotate": "90"},
    "flip+flop": {"flip": "1", "flop": "1"},
    "crop=rect": {"crop": "400,300,1200,800"},
    "trim": {"trim": "10"},
    "fit=pad": {"h": "800", "fit": "pad", "bg": "000000"},
    "cover, attention": {"h": "600", "fit": "cover", "crop": "attention"},
    "cover, faces": {"h": "600", "fit": "cover", "crop": "faces"},
    "dpr=2": {"dpr": "2"},
}


def timed(data: bytes, spec: VariantSpec, settings: Settings, runs: int) -> float:
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        renditions.make_variant(data, spec, settings.imaging, settings.variants)
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


def detection_ms(data: bytes, runs: int) -> float:
    """Face detection as `crop=faces` runs it: on the image already scaled to cover an 800 x 600
    box (made here untimed), its small grey copy made and searched."""
    import pyvips

    covering = pyvips.Image.thumbnail_buffer(data, 800, height=600, crop="centre").copy_memory()
    took = []
    for _ in range(runs):
        started = time.perf_counter()
        faces.focal_point(covering)
        took.append((time.perf_counter() - started) * 1000)
    return statistics.median(took)


def measure(names: list[str], runs: int) -> dict[str, dict[str, dict[str, float]]]:
    settings = Settings.from_env({})
    report: dict[str, dict[str, dict[str, float]]] = {}
    for name, data in build_set(names).items():
        info = renditions.read_header(data, "jpeg" if name.startswith("jpeg") else name.split("-")[0])
        megapixels = info.width * info.height / 1e6
        rows: dict[str, dict[str, float]] = {}
        for label, extra in OPERATIONS.items():
            spec, _ = parse_variant({"w": "800", **extra}, "", settings.variants)
            rows[label] = {"ms": timed(data, spec, settings, runs)}
        stripped = StrippedOriginal(None, None, format=info.format, original_type=f"image/{info.format}")
        rows["strip original"] = {"ms": timed(data, stripped, settings, runs)}
        rows["faces: detection alone"] = {"ms": detection_ms(data, runs)}
        plain = rows["resize"]["ms"]
        for row in rows.values():
            row["ratio"] = round(row["ms"] / plain, 2)
            row["extra_ms_per_mp"] = round((row["ms"] - plain) / megapixels, 1)
            row["ms"] = round(row["ms"], 1)
        report[name] = rows
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per cell, the median kept (default 5)")
    parser.add_argument("--images", nargs="+", default=["jpeg-2mp", "jpeg-12mp"], help="from bench_imaging")
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    args = parser.parse_args()
    report = measure(args.images, args.runs)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print("| image | operation | ms | x resize | extra ms per MP |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, rows in report.items():
        for label, row in rows.items():
            print(f"| {name} | {label} | {row['ms']} | {row['ratio']} | {row['extra_ms_per_mp']} |")


if __name__ == "__main__":
    main()
