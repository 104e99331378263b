"""The image regression matrix, as imgproxy and imagor keep one: every variant operation on every
input format into every output format, and the renditions of every input, each compared with a
golden kept in the repository (`tests/goldens/variants.json`): its size and frames exactly, its
pixels by a perceptual hash (a 256-bit difference hash of the image on mid-grey) within
`TOLERANCE` bits, and its sharpness (the mean of its edges) within `SHARPNESS` of the golden's:
a perceptual hash is made not to see a blur, which a regression of `blur` or `sharpen` would be.
A Pillow or libvips upgrade that changes pixels shows here, by case.

`make goldens` writes the goldens again from what this code makes now and prints each case that
changed, by how many bits (review the diff of the JSON file before committing it). HEIC inputs
are not in the matrix: this machine's libheif has no HEVC decoder (tests/test_formats.py).

The hash is written here (twenty lines over Pillow) rather than taken from `imagehash`, whose
dependencies (NumPy, SciPy, PyWavelets) the suite would install for this alone.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from config.settings import Settings
from pipeline.imaging.renditions import make_renditions, make_variant
from pipeline.imaging.variants import parse_variant
from tests.support.settings import ROOT

pytestmark = pytest.mark.slow  # 400 variants: seconds, in the full suite

GOLDENS = ROOT / "tests" / "goldens" / "variants.json"
#: Bits of 256 two images' hashes may differ by and still be the same picture: another encoder
#: or quality moves 0-10 (a JPEG at quality 40 against a PNG: measured below); a blur of sigma 3
#: or a turned picture, 30 and more.
TOLERANCE = 12
#: The hash's grid: `SIDE` x `SIDE` differences.
SIDE = 16
#: How far the sharpness may move, as a fraction of the golden's (an encoder's rounding: under
#: 10%; a blur of sigma 3: -60%, a sharpen: +30% and more).
SHARPNESS = 0.15
UPDATE = os.environ.get("UPDATE_GOLDENS") == "1"
SETTINGS = Settings.from_env({})

OPERATIONS: dict[str, dict[str, str]] = {
    "contain": {"w": "160"},
    "cover-centre": {"w": "120", "h": "120", "fit": "cover"},
    "cover-attention": {"w": "120", "h": "80", "fit": "cover", "crop": "attention"},
    "cover-entropy": {"w": "80", "h": "120", "fit": "cover", "crop": "entropy"},
    "fill": {"w": "100", "h": "100", "fit": "fill"},
    "pad": {"w": "160", "h": "160", "fit": "pad", "bg": "3366cc"},
    "upscale": {"w": "480", "upscale": "true"},
    "rectangle": {"w": "100", "crop": "40,30,160,120"},
    "trim": {"w": "160", "trim": "20"},
    "rotate90": {"w": "120", "rotate": "90"},
    "rotate180": {"w": "120", "rotate": "180"},
    "flip": {"w": "120", "flip": "true"},
    "flop": {"w": "120", "flop": "true"},
    "blur": {"w": "160", "blur": "3"},
    "sharpen": {"w": "160", "sharpen": "1.5"},
    "dpr": {"w": "80", "dpr": "2"},
    "background": {"w": "160", "bg": "ff8000"},
    "watermark": {"w": "160", "watermark": "true", "opacity": "0.7", "scale": "0.4", "gravity": "north-east"},
}
OUTPUTS = ("jpeg", "png", "webp", "avif")


def _photo() -> Image.Image:
    """A real photograph (the demo dog) at 320 x 240, with a white frame to trim and a
    half-transparent band where the format keeps alpha."""
    image = Image.open(ROOT / "input" / "dog.jpg").convert("RGB").resize((280, 200), Image.Resampling.LANCZOS)
    framed = Image.new("RGB", (320, 240), (255, 255, 255))
    framed.paste(image, (20, 20))
    return framed


def _with_alpha(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    band = Image.new("L", rgba.size, 255)
    ImageDraw.Draw(band).rectangle((0, 200, 320, 240), fill=96)
    rgba.putalpha(band)
    return rgba


def _encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _overlay() -> bytes:
    """The watermark: a red disc on transparency."""
    mark = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(mark).ellipse((4, 4, 60, 60), fill=(220, 30, 30, 255))
    return _encoded(mark, "PNG")


def _animated() -> bytes:
    frames = [_photo().rotate(angle, fillcolor=(255, 255, 255)) for angle in (0, 8, 16)]
    return _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


INPUTS = {
    "jpeg": lambda: _encoded(_photo(), "JPEG", quality=92),
    "png": lambda: _encoded(_with_alpha(_photo()), "PNG"),
    "webp": lambda: _encoded(_with_alpha(_photo()), "WEBP", lossless=True),
    "avif": lambda: _encoded(_photo(), "AVIF", quality=90),
    "gif": _animated,
    "tiff": lambda: _encoded(_photo(), "TIFF", compression="tiff_deflate"),
}
CASES = [
    *(
        f"{source}-{operation}-{output}"
        for source in INPUTS
        for operation in OPERATIONS
        for output in OUTPUTS
    ),
    *(f"{source}-renditions" for source in INPUTS),
]

_inputs: dict[str, bytes] = {}
_found: dict[str, dict[str, Any]] = {}


def source(name: str) -> bytes:
    if name not in _inputs:
        _inputs[name] = INPUTS[name]()
    return _inputs[name]


def dhash(data: bytes) -> str:
    """A difference hash (each of `SIDE` x `SIDE` cells brighter than its right neighbour or not)
    of the first frame, transparency composited on mid-grey so alpha counts as a picture would."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGBA")
    flat = Image.new("RGBA", image.size, (128, 128, 128, 255))
    flat.alpha_composite(image)
    cells = flat.convert("L").resize((SIDE + 1, SIDE), Image.Resampling.LANCZOS)
    bits = 0
    for y in range(SIDE):
        for x in range(SIDE):
            left, right = cells.getpixel((x, y)), cells.getpixel((x + 1, y))
            bits = bits << 1 | int(left > right)  # type: ignore[operator]
    return f"{bits:0{SIDE * SIDE // 4}x}"


def made(case: str) -> dict[str, Any]:
    """What the code makes for `case` now: size, frames and hash of each output."""
    name, _, rest = case.partition("-")
    data = source(name)
    if rest == "renditions":
        result = make_renditions(data, SETTINGS.imaging)
        return {
            r.spec.name: {"size": [r.width, r.height], "hash": dhash(r.data), "sharpness": sharpness(r.data)}
            for r in result.renditions
        }
    operation, _, output = rest.rpartition("-")
    spec, _ = parse_variant({**OPERATIONS[operation], "format": output}, "", SETTINGS.variants)
    overlay = _overlay() if spec.ops.watermark else None
    variant = make_variant(data, spec, SETTINGS.imaging, SETTINGS.variants, overlay)
    return {
        "size": [variant.width, variant.height],
        "frames": variant.frames,
        "hash": dhash(variant.data),
        "sharpness": sharpness(variant.data),
    }


def sharpness(data: bytes) -> float:
    """The mean of the first frame's edges (Pillow's FIND_EDGES on its grey): what a blur lowers."""
    from PIL import ImageFilter, ImageStat

    with Image.open(io.BytesIO(data)) as opened:
        grey = opened.convert("L")
    return round(float(ImageStat.Stat(grey.filter(ImageFilter.FIND_EDGES)).mean[0]), 2)


def distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def _differences(golden: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between a case's golden and what is made now (empty: the same picture)."""
    if "hash" not in now:  # renditions: one entry each
        keys = golden.keys() | now.keys()
        return [f"{k}: {d}" for k in sorted(keys) for d in _differences(golden.get(k, {}), now.get(k, {}))]
    if not golden:
        return ["new"]
    out = [
        f"{k} {golden.get(k)} -> {now[k]}" for k in ("size", "frames") if k in now and golden.get(k) != now[k]
    ]
    bits = distance(golden["hash"], now["hash"])
    if bits > TOLERANCE:
        out.append(f"hash {bits} bits from the golden (tolerance {TOLERANCE})")
    was, sharp = golden.get("sharpness", 0.0), now["sharpness"]
    if abs(sharp - was) > max(0.5, SHARPNESS * was):
        out.append(f"sharpness {was} -> {sharp}")
    return out


@pytest.fixture(scope="module")
def goldens() -> Iterator[dict[str, Any]]:
    kept: dict[str, Any] = json.loads(GOLDENS.read_text()) if GOLDENS.exists() else {}
    yield kept
    if UPDATE and _found:
        changed = {case: _differences(kept.get(case, {}), now) for case, now in _found.items()}
        written = {**kept, **_found}
        GOLDENS.parent.mkdir(exist_ok=True)
        lines = [
            f"{json.dumps(case)}: {json.dumps(written[case], sort_keys=True)}" for case in sorted(written)
        ]
        GOLDENS.write_text("{\n" + ",\n".join(lines) + "\n}\n")  # a case a line: diffs read by case
        for case, why in changed.items():
            if why:
                print(f"changed {case}: {'; '.join(why)}")
        print(f"goldens: {sum(bool(w) for w in changed.values())} of {len(changed)} cases changed, {GOLDENS}")


@pytest.mark.parametrize("case", CASES)
def test_each_case_makes_the_picture_its_golden_recorded(case: str, goldens: dict[str, Any]) -> None:
    now = made(case)
    if UPDATE:
        _found[case] = now
        return
    assert case in goldens, f"{case} has no golden: run `make goldens` and review the change"
    assert not _differences(goldens[case], now), (case, _differences(goldens[case], now))


def test_the_hash_tells_a_changed_picture_from_a_recompressed_one() -> None:
    photo = _photo()
    lossless = dhash(_encoded(photo, "PNG"))
    assert distance(lossless, dhash(_encoded(photo, "JPEG", quality=40))) <= TOLERANCE
    assert distance(lossless, dhash(_encoded(photo, "WEBP", quality=50))) <= TOLERANCE
    assert distance(lossless, dhash(_encoded(photo.rotate(180), "PNG"))) > 5 * TOLERANCE
    # A blur barely moves the hash: the sharpness sees it.
    from PIL import ImageFilter

    plain, blurred = (
        sharpness(_encoded(photo, "PNG")),
        sharpness(_encoded(photo.filter(ImageFilter.GaussianBlur(3)), "PNG")),
    )
    assert blurred < (1 - SHARPNESS) * plain
    assert abs(sharpness(_encoded(photo, "JPEG", quality=90)) - plain) <= SHARPNESS * plain


def test_every_golden_is_a_case_still() -> None:
    kept = json.loads(Path(GOLDENS).read_text())
    assert set(kept) == set(CASES), sorted(set(kept) ^ set(CASES))
