"""The pure-Python header reader: right sizes for what Pillow writes, bombs refused, and no input
that makes it fail with anything but a `PermanentError` (or spin). Also: web processes never
load libvips."""

from __future__ import annotations

import contextlib
import io
import struct
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, features

from config.settings import ImagingSettings
from pipeline.core.errors import PermanentError, TooManyFrames, TooManyPixels
from pipeline.core.formats import ImageInfo, detect_format, read_header_prefix, screen_prefix
from tests.support.images import jpeg_bytes, png_header_only
from tests.support.settings import ROOT

#: What the upload handler screens (`pipeline.core.uploads.SCREEN_BYTES`).
PREFIX = 64 * 1024
FORMATS = ("jpeg", "png", "gif", "webp", "tiff", "heif", "avif")
HAVE_AVIF = features.check("avif")


def test_web_and_consumer_processes_never_import_libvips() -> None:
    code = (
        "import web.app, web.__main__, pipeline.consumer.service, pipeline.consumer.loop, "
        "pipeline.consumer.jobs, "
        "pipeline.imaging.workers, sys; "
        "assert 'pyvips' not in sys.modules and 'pipeline.imaging.renditions' not in sys.modules"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


# Images as Pillow writes them ------------------------------------------------------------------


def saved(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def frames(size: tuple[int, int], count: int, mode: str = "L") -> list[Image.Image]:
    """Frames that differ, so no encoder merges them."""
    return [Image.new(mode, size, (40 + 37 * index) % 256) for index in range(count)]


def exif_and_icc() -> dict[str, object]:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker " * 20  # pushes the frame header further into the file
    exif[0x0112] = 1
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return {"exif": exif, "icc_profile": icc}


def animated(fmt: str, size: tuple[int, int], count: int, **kwargs: object) -> bytes:
    first, *rest = frames(size, count)
    return saved(first, fmt, save_all=True, append_images=rest, duration=50, **kwargs)


#: name -> (format, what writes a (width, height) image, frames it has)
VARIANTS: dict[str, tuple[str, Callable[[tuple[int, int]], bytes], int]] = {
    "jpeg": ("jpeg", lambda s: saved(Image.new("L", s, 90), "JPEG", quality=30), 1),
    "jpeg-progressive": ("jpeg", lambda s: saved(Image.new("L", s, 90), "JPEG", progressive=True), 1),
    "jpeg-exif-icc": ("jpeg", lambda s: saved(Image.new("L", s, 90), "JPEG", **exif_and_icc()), 1),
    "jpeg-progressive-exif-icc": (
        "jpeg",
        lambda s: saved(Image.new("L", s, 90), "JPEG", progressive=True, **exif_and_icc()),
        1,
    ),
    "png": ("png", lambda s: saved(Image.new("L", s, 90), "PNG"), 1),
    "png-palette": ("png", lambda s: saved(Image.new("P", s, 3), "PNG"), 1),
    "apng": ("png", lambda s: animated("PNG", s, 3), 3),
    "gif": ("gif", lambda s: saved(Image.new("P", s, 3), "GIF"), 1),
    "gif-2-frames": ("gif", lambda s: animated("GIF", s, 2), 2),
    "gif-3-frames": ("gif", lambda s: animated("GIF", s, 3), 3),
    "webp-lossy": ("webp", lambda s: saved(Image.new("L", s, 90), "WEBP", quality=10, method=0), 1),
    "webp-lossless": ("webp", lambda s: saved(Image.new("L", s, 90), "WEBP", lossless=True, method=0), 1),
    "webp-alpha": (
        "webp",
        lambda s: saved(Image.new("LA", s, (90, 50)), "WEBP", quality=10, method=0, alpha_quality=10),
        1,
    ),
    "webp-animated": ("webp", lambda s: animated("WEBP", s, 3, lossless=True, method=0), 3),
    "tiff-little-endian": ("tiff", lambda s: saved(Image.new("L", s, 90), "TIFF", compression="tiff_lzw"), 1),
    # Uncompressed: Pillow then writes big-endian with the directory first (libtiff: little, last).
    "tiff-big-endian": ("tiff", lambda s: saved(Image.new("I;16B", s, 90), "TIFF"), 1),
}
if HAVE_AVIF:
    VARIANTS["avif"] = ("avif", lambda s: saved(Image.new("L", s, 90), "AVIF", quality=10, speed=10), 1)

#: The first chunk each WebP variant must have, so every branch of the reader is exercised.
WEBP_CHUNKS = {
    "webp-lossy": b"VP8 ",
    "webp-lossless": b"VP8L",
    "webp-alpha": b"VP8X",
    "webp-animated": b"VP8X",
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(VARIANTS)),
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
)
def test_sizes_match_pillow(name: str, width: int, height: int) -> None:
    fmt, make, count = VARIANTS[name]
    data = make((width, height))
    assert detect_format(data) == fmt
    if name in WEBP_CHUNKS:
        assert data[12:16] == WEBP_CHUNKS[name]
    info = read_header_prefix(data[:PREFIX], fmt)
    assert info is not None
    with Image.open(io.BytesIO(data)) as image:
        assert (info.width, info.height) == image.size == (width, height)
    # Frames are counted from what the prefix shows; Pillow-made headers show them all.
    assert info.frames == count if len(data) <= PREFIX or name == "apng" else 1 <= info.frames <= count


def test_jpeg_frame_header_beyond_the_prefix_is_not_judged() -> None:
    data = saved(Image.new("L", (50_000, 5), 0), "JPEG", icc_profile=b"\0" * 200_000)
    assert read_header_prefix(data[:PREFIX], "jpeg") is None
    screen_prefix(data[:PREFIX], ImagingSettings())  # not refused here: the consumer decides
    info = read_header_prefix(data, "jpeg")
    assert info is not None and (info.width, info.height) == (50_000, 5)


def test_jpeg_fill_bytes_and_junk_between_segments() -> None:
    data = jpeg_bytes(640, 480)
    assert data[2:4] == b"\xff\xe0" and data[20:22] == b"\xff\xdb"  # JFIF APP0, then tables
    # Fill bytes before a marker are allowed; so is junk, which libjpeg skips with a warning.
    padded = data[:2] + b"\xff\xff\xff" + data[2:20] + b"junk\x00" + data[20:]
    assert read_header_prefix(padded, "jpeg") == ImageInfo("jpeg", 640, 480)


# TIFF and HEIF headers written by hand, for what Pillow does not write -------------------------


def tiff_header(order: str, width: int, height: int, kind: int) -> bytes:
    prefix, fmt = (b"II*\x00", "<") if order == "little" else (b"MM\x00*", ">")
    value = "HH" if kind == 3 else "I"
    entries = [
        struct.pack(f"{fmt}HHI", 254, 4, 1) + struct.pack(f"{fmt}I", 0),
        struct.pack(f"{fmt}HHI", 256, kind, 1) + struct.pack(f"{fmt}{value}", width, *([0] * (kind == 3))),
        struct.pack(f"{fmt}HHI", 257, kind, 1) + struct.pack(f"{fmt}{value}", height, *([0] * (kind == 3))),
    ]
    return prefix + struct.pack(f"{fmt}I", 8) + struct.pack(f"{fmt}H", len(entries)) + b"".join(entries)


@pytest.mark.parametrize("order", ["little", "big"])
@pytest.mark.parametrize("kind", [3, 4])
def test_tiff_dimensions_as_short_or_long_in_either_byte_order(order: str, kind: int) -> None:
    width, height = (60_000, 700) if kind == 3 else (70_000, 80_000)
    info = read_header_prefix(tiff_header(order, width, height, kind), "tiff")
    assert info == ImageInfo("tiff", width, height)


def test_bigtiff_is_left_to_the_decoder() -> None:
    assert read_header_prefix(b"II+\x00\x08\x00\x00\x00" + b"\x00" * 40, "tiff") is None


def box(kind: bytes, payload: bytes, *, large: bool = False) -> bytes:
    if large:  # the 64-bit size form
        return struct.pack(">I", 1) + kind + struct.pack(">Q", 16 + len(payload)) + payload
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def full_box(kind: bytes, payload: bytes) -> bytes:
    return box(kind, b"\x00\x00\x00\x00" + payload)


def heif(extents: list[tuple[int, int]], brand: bytes = b"heic", *, large: bool = False) -> bytes:
    """ftyp, then meta with a handler, a primary item and the item properties, then mdat."""
    properties = b"".join(full_box(b"ispe", struct.pack(">II", w, h)) for w, h in extents)
    meta = full_box(
        b"meta",
        full_box(b"hdlr", b"\x00" * 4 + b"pict" + b"\x00" * 13)
        + full_box(b"pitm", b"\x00\x01")
        + box(
            b"iprp",
            box(b"ipco", box(b"colr", b"nclx" + b"\x00" * 7) + properties) + full_box(b"ipma", b"\0" * 4),
        ),
    )
    return (
        box(b"ftyp", brand + b"\x00" * 4 + b"mif1" + brand)
        + box(b"meta", meta[8:], large=large)
        + box(b"mdat", b"\x00" * 32)
    )


@pytest.mark.parametrize("large", [False, True])
def test_heif_takes_the_largest_spatial_extent(large: bool) -> None:
    # A grid image: the primary item is 4000x3000, its tiles 512x512.
    data = heif([(512, 512), (4000, 3000), (512, 512)], large=large)
    assert detect_format(data) == "heif"
    assert read_header_prefix(data, "heif") == ImageInfo("heif", 4000, 3000)


def test_heif_without_meta_in_the_prefix_is_not_judged() -> None:
    data = box(b"ftyp", b"heic\0\0\0\0mif1heic") + box(b"mdat", b"\0" * 100) + heif([(9, 9)])[24:]
    assert read_header_prefix(data[:80], "heif") is None


@pytest.mark.skipif(not HAVE_AVIF, reason="this Pillow has no AVIF encoder")
def test_avif_from_pillow() -> None:
    data = saved(Image.new("RGBA", (321, 123), (1, 2, 3, 4)), "AVIF", quality=10, speed=10)
    assert read_header_prefix(data, "avif") == ImageInfo("avif", 321, 123)


def test_heif_from_an_encoder() -> None:
    pyvips = pytest.importorskip("pyvips")
    try:
        data = bytes(pyvips.Image.black(321, 123).heifsave_buffer(compression="hevc"))
    except pyvips.Error:
        pytest.skip("no HEVC encoder here; hand-built HEIF is tested above")
    assert read_header_prefix(data, "heif") == ImageInfo("heif", 321, 123)


# Bombs ------------------------------------------------------------------------------------------


def gif_bytes(width: int, height: int, descriptors: int) -> bytes:
    """A GIF screen and `descriptors` 1x1 frames, each with one sub-block of LZW data."""
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x4c\x01\x00"
    return b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0) + frame * descriptors + b"\x3b"


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(jpeg_bytes(64, 48))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize(
    ("label", "data"),
    [
        ("png", png_header_only(50_000, 50_000)),
        ("gif", gif_bytes(65535, 65535, 1)),
        ("gif-frame", gif_bytes(10, 10, 0)[:13] + b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)),
        ("jpeg", jpeg_claiming(65500, 65500)),
        ("webp", b"RIFF\x00\x00\x00\x00WEBPVP8X\x0a\x00\x00\x00\x00\x00\x00\x00" + b"\xff" * 6),
        ("tiff", tiff_header("big", 100_000, 100_000, 4)),
        ("heif", heif([(60_000, 60_000)])),
    ],
)
def test_pixel_bombs_are_refused_from_the_prefix(label: str, data: bytes) -> None:
    with pytest.raises(TooManyPixels):
        screen_prefix(data[:PREFIX], ImagingSettings())


def test_jpeg_bomb_names_the_claimed_size() -> None:
    with pytest.raises(TooManyPixels, match="65500x65500"):
        screen_prefix(jpeg_claiming(65500, 65500), ImagingSettings())


def test_frames_seen_in_the_prefix_are_counted() -> None:
    data = animated("GIF", (20, 20), 30)
    with pytest.raises(TooManyFrames):
        screen_prefix(data[:PREFIX], ImagingSettings(max_frames=10))
    screen_prefix(data[:PREFIX], ImagingSettings(max_frames=30))
    many = gif_bytes(20, 20, 3000)  # 3000 frames in 45 KB
    with pytest.raises(TooManyFrames, match="3000 frames"):
        screen_prefix(many[:PREFIX], ImagingSettings())


# Hostile input: only ever a result, None or a PermanentError ----------------------------------


def survives(data: bytes, fmt: str) -> None:
    """Both entry points either answer or raise a PermanentError; anything else fails the test."""
    try:
        info = read_header_prefix(data, fmt)
    except PermanentError:
        info = None
    if info is not None:
        assert info.width > 0 and info.height > 0 and info.frames >= 1
    with contextlib.suppress(PermanentError):
        screen_prefix(data, ImagingSettings(max_pixels=1_000_000, max_frames=2))


def real_prefixes() -> dict[str, tuple[str, bytes]]:
    samples = {name: (fmt, make((300, 200))[:300]) for name, (fmt, make, _) in VARIANTS.items()}
    samples["heif"] = ("heif", heif([(300, 200), (64, 64)])[:300])
    samples["tiff-short"] = ("tiff", tiff_header("big", 300, 200, 3))
    return samples


SAMPLES = real_prefixes()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_truncation_of_a_real_header(name: str) -> None:
    fmt, sample = SAMPLES[name]
    for length in range(len(sample) + 1):
        survives(sample[:length], fmt)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(SAMPLES)),
    flips=st.lists(st.tuples(st.integers(0, 299), st.integers(0, 7)), min_size=1, max_size=4),
)
def test_bit_flipped_headers(name: str, flips: list[tuple[int, int]]) -> None:
    fmt, sample = SAMPLES[name]
    data = bytearray(sample)
    for position, bit in flips:
        data[position % len(data)] ^= 1 << bit
    survives(bytes(data), fmt)


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(SAMPLES)),
    at=st.integers(0, 299),
    junk=st.binary(min_size=1, max_size=12),
)
def test_overwritten_header_fields(name: str, at: int, junk: bytes) -> None:
    fmt, sample = SAMPLES[name]
    at %= len(sample)
    survives(sample[:at] + junk + sample[at + len(junk) :], fmt)


MAGIC = {
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "gif": b"GIF89a",
    "webp": b"RIFF\x00\x00\x00\x00WEBP",
    "tiff": b"MM\x00*",
    "heif": b"\x00\x00\x00\x18ftypheic",
    "avif": b"\x00\x00\x00\x18ftypavif",
}


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(FORMATS), magic=st.booleans(), tail=st.binary(max_size=600))
def test_random_bytes(fmt: str, magic: bool, tail: bytes) -> None:
    survives((MAGIC[fmt] if magic else b"") + tail, fmt)


@pytest.mark.parametrize(
    ("fmt", "data"),
    [
        ("jpeg", b"\xff\xd8" + b"\xff" * PREFIX),  # nothing but fill bytes
        ("jpeg", b"\xff\xd8" + b"\xff\x01" * (PREFIX // 2)),  # standalone markers
        ("gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00" + b"\x21\xf9" + b"\x01\x00" * (PREFIX // 2)),
        ("gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00" + b"\x00" * PREFIX),  # stray bytes
        ("png", png_header_only(10, 10)[:33] + b"\x00\x00\x00\x00tEXt\x00\x00\x00\x00" * (PREFIX // 12)),
        ("webp", b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\x02" + b"\0" * 9 + b"ANMF\0\0\0\0" * (PREFIX // 8)),
        ("tiff", b"II*\x00\x08\x00\x00\x00\xff\xff" + b"\x00" * PREFIX),
        ("heif", b"\x00\x00\x00\x10ftypheic\0\0\0\0" + b"\x00\x00\x00\x08free" * (PREFIX // 8)),
    ],
)
def test_worst_case_prefixes_finish_quickly(fmt: str, data: bytes) -> None:
    started = time.perf_counter()
    survives(data[:PREFIX], fmt)
    assert time.perf_counter() - started < 1
