"""Pure imaging: both engines, every awkward mode, limits checked before decoding."""

from __future__ import annotations

import io
import struct
from typing import Any

import blurhash
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from config.settings import ImagingSettings, RenditionSpec
from pipeline.core.errors import CorruptImage, FormatNotAllowed, NotAnImage, TooManyPixels
from pipeline.core.formats import ImageInfo, detect_format, read_header_prefix
from pipeline.core.results import RenditionResult
from pipeline.imaging import renditions as imaging
from pipeline.imaging.renditions import make_renditions
from tests.support.images import decode, jpeg_bytes, png_header_only
from tests.support.settings import ROOT

ENGINES = ("pillow", "pyvips")
SPEC = (RenditionSpec(256),)


def render(
    data: bytes, engine: str, specs: tuple[RenditionSpec, ...] = SPEC, **limits: Any
) -> RenditionResult:
    imaging = ImagingSettings(renditions=specs, **limits)
    result = make_renditions(data, imaging, engine=engine)  # type: ignore[arg-type]
    assert result.engine == engine
    return result


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "png"),
        (b"GIF89a\x01\x00", "gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"II*\x00\x08\x00", "tiff"),
        (b"\x00\x00\x00\x1cftypavif", "avif"),
        (b"\x00\x00\x00\x18ftypheic", "heif"),
        (b"<svg xmlns=", None),
        (b"%PDF-1.7", None),
        (b"8BPS\x00\x01", None),
        (b"", None),
    ],
)
def test_detect_format_by_magic_bytes(head: bytes, expected: str | None) -> None:
    assert detect_format(head) == expected


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["cat.jpg", "dog.jpg"])
def test_demo_photos(engine: str, name: str) -> None:
    data = (ROOT / "input" / name).read_bytes()
    result = render(data, engine)
    (thumb,) = result.renditions
    image = decode(thumb.data)
    assert image.format == "JPEG" and image.mode == "RGB"
    assert max(image.size) == 256 and image.size == (thumb.width, thumb.height)
    original = Image.open(io.BytesIO(data))
    assert abs(image.width / image.height - original.width / original.height) < 0.02


@pytest.mark.parametrize("engine", ENGINES)
def test_exif_orientation_applied_and_metadata_stripped(engine: str) -> None:
    # A landscape 400x200 image whose EXIF says "rotate 90° clockwise": upright it is portrait.
    image = Image.new("RGB", (400, 200), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, 200, 200))  # left half blue
    exif = image.getexif()
    exif[0x0112] = 6
    exif[0x8825] = {1: "N", 2: (1.0, 2.0, 3.0)}  # GPS info that must not survive
    result = render(encode(image, "JPEG", exif=exif, quality=95), engine, (RenditionSpec(100),))
    thumb = decode(result.renditions[0].data)
    assert thumb.size == (50, 100)
    # Rotated clockwise, the blue left half becomes the top half.
    assert thumb.getpixel((25, 10))[2] > 150 and thumb.getpixel((25, 90))[0] > 150
    assert not thumb.getexif() and "icc_profile" not in thumb.info and "exif" not in thumb.info


@pytest.mark.parametrize("decoder", ["pyvips", "pillow"])
@pytest.mark.parametrize("engine", ENGINES)
def test_dimensions_are_reported_as_displayed(
    engine: str, decoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stored 600x300, EXIF "rotate 90° clockwise": the record must describe the upright image.
    if decoder == "pillow":  # the header as read without libvips
        monkeypatch.setattr(imaging, "HAVE_VIPS", False)
    exif = Image.new("RGB", (1, 1)).getexif()
    exif[0x0112] = 6
    result = render(jpeg_bytes(600, 300, exif=exif), engine, (RenditionSpec(200),))
    assert (result.info.width, result.info.height) == (300, 600)
    thumb = result.renditions[0]
    assert (thumb.width, thumb.height) == decode(thumb.data).size == (100, 200)


@pytest.mark.parametrize("engine", ENGINES)
def test_never_upscales(engine: str) -> None:
    result = render(jpeg_bytes(120, 80), engine)
    assert (result.renditions[0].width, result.renditions[0].height) == (120, 80)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize(
    ("label", "make"),
    [
        ("cmyk", lambda: encode(Image.new("CMYK", (600, 400), (255, 0, 0, 0)), "JPEG")),
        ("palette-alpha", lambda: encode(Image.new("P", (600, 400), 0), "PNG", transparency=0)),
        ("rgba-webp", lambda: encode(Image.new("RGBA", (600, 400), (255, 0, 0, 0)), "WEBP")),
        ("grey16", lambda: encode(Image.new("I;16", (600, 400), 0x8000), "PNG")),
        ("gif", lambda: encode(Image.new("P", (600, 400), 3), "GIF")),
        ("tiff", lambda: encode(Image.new("RGB", (600, 400), (0, 0, 255)), "TIFF")),
    ],
)
def test_awkward_modes_become_plain_jpeg(engine: str, label: str, make: object) -> None:
    data = make()  # type: ignore[operator]
    thumb = decode(render(data, engine).renditions[0].data)
    assert thumb.format == "JPEG" and thumb.mode in ("RGB", "L") and thumb.size == (256, 171)
    pixel = thumb.convert("RGB").getpixel((128, 85))
    if label == "cmyk":  # pure cyan ink
        assert pixel[0] < 90 and pixel[1] > 150 and pixel[2] > 150
    if label in ("palette-alpha", "rgba-webp"):  # fully transparent → flattened on white
        assert min(pixel) > 240
    if label == "grey16":  # half of 16-bit range is mid grey, not clipped white
        assert 110 < pixel[0] < 150


@pytest.mark.parametrize("engine", ENGINES)
def test_first_frame_of_animation(engine: str) -> None:
    frames = [Image.new("RGB", (300, 200), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    thumb = decode(render(out.getvalue(), engine).renditions[0].data)
    red, green, _ = thumb.convert("RGB").getpixel((10, 10))
    assert red > 200 and green < 60


@pytest.mark.parametrize("engine", ENGINES)
def test_truncated_jpeg_is_corrupt(engine: str) -> None:
    data = (ROOT / "input" / "dog.jpg").read_bytes()
    with pytest.raises(CorruptImage):
        render(data[: len(data) // 2], engine)


def test_text_is_not_an_image() -> None:
    with pytest.raises(NotAnImage):
        render(b"hello, I am text pretending to be cat.jpg\n" * 4, "pillow")


def test_format_outside_allow_list() -> None:
    with pytest.raises(FormatNotAllowed):
        make_renditions(jpeg_bytes(10, 10), ImagingSettings(allowed_formats=frozenset({"png"})))


@pytest.mark.parametrize("engine", ENGINES)
def test_pixel_limit_checked_from_header_before_decoding(engine: str) -> None:
    with pytest.raises(TooManyPixels, match="50000x50000"):
        render(png_header_only(50_000, 50_000), engine)


@pytest.mark.parametrize("engine", ENGINES)
def test_several_renditions_from_one_decode(engine: str) -> None:
    specs = (RenditionSpec(64, "webp", 80), RenditionSpec(256), RenditionSpec(128, "png"))
    result = render(jpeg_bytes(1200, 900), engine, specs)
    assert [r.spec for r in result.renditions] == list(specs)
    formats = [decode(r.data).format for r in result.renditions]
    assert formats == ["WEBP", "JPEG", "PNG"]
    assert [max(r.width, r.height) for r in result.renditions] == [64, 256, 128]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 1500),
    height=st.integers(1, 1500),
    side=st.integers(8, 600),
    engine=st.sampled_from(sorted(ENGINES)),
)
def test_size_and_aspect_for_any_dimensions(width: int, height: int, side: int, engine: str) -> None:
    result = render(
        encode(Image.new("RGB", (width, height), (9, 99, 199)), "PNG"), engine, (RenditionSpec(side),)
    )
    out = result.renditions[0]
    assert max(out.width, out.height) == min(side, max(width, height))
    assert decode(out.data).size == (out.width, out.height)
    if min(width, height) * side >= 50 * max(width, height):  # skip slivers, where rounding dominates
        assert abs(out.width / out.height - width / height) / (width / height) < 0.05


@pytest.mark.parametrize(
    ("make", "side", "expected"),
    [
        (lambda: jpeg_bytes(1600, 1200), 256, "pillow"),
        (lambda: jpeg_bytes(1600, 1200), 1024, "pyvips"),
        (lambda: encode(Image.new("CMYK", (800, 600)), "JPEG"), 1024, "pillow"),
        (lambda: encode(Image.new("RGB", (800, 600)), "PNG"), 256, "pyvips"),
        (lambda: encode(Image.new("RGB", (800, 600)), "WEBP"), 256, "pyvips"),
        (lambda: encode(Image.new("RGB", (800, 600)), "GIF"), 1024, "pillow"),
    ],
)
def test_engine_choice_follows_the_measured_rule(make: Any, side: int, expected: str) -> None:
    result = make_renditions(make(), ImagingSettings(renditions=(RenditionSpec(side),)))
    assert result.engine == expected


def test_avif_decodes_through_the_pipeline() -> None:
    import pyvips

    avif = bytes(pyvips.Image.black(640, 480).heifsave_buffer(compression="av1", effort=0))
    result = make_renditions(avif, ImagingSettings())
    assert result.info.format == "avif" and result.renditions[0].width == 256


def test_placeholder_is_a_blurhash_and_the_mean_colour() -> None:
    out = io.BytesIO()
    Image.new("RGB", (400, 200), (200, 30, 40)).save(out, "PNG")
    result = make_renditions(out.getvalue(), ImagingSettings())
    assert result.placeholder is not None
    assert len(result.placeholder["blurhash"]) == 4 + 2 * 4 * 3  # 4 x 3 components
    red, green, blue = (int(result.placeholder["color"][i : i + 2], 16) for i in (1, 3, 5))
    assert abs(red - 200) <= 4 and abs(green - 30) <= 4 and abs(blue - 40) <= 4
    decoded = blurhash.decode(result.placeholder["blurhash"], 8, 4)
    assert all(abs(channel - want) <= 12 for channel, want in zip(decoded[2][4], (200, 30, 40), strict=True))


@pytest.mark.parametrize("engine", ["pillow", "pyvips"])
def test_avif_renditions_from_either_engine(engine: Any) -> None:
    imaging = ImagingSettings(renditions=(RenditionSpec(128, "avif"), RenditionSpec(64, "webp")))
    result = make_renditions(jpeg_bytes(400, 300), imaging, engine=engine)
    avif, webp = (decode(r.data) for r in result.renditions)
    assert (avif.format, avif.size) == ("AVIF", (128, 96))
    assert (webp.format, webp.size) == ("WEBP", (64, 48))


def _avif(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, "AVIF")
    return out.getvalue()


def test_an_avif_whose_stream_is_larger_than_its_header_says_is_corrupt() -> None:
    """A 64 x 64 `ispe` over a larger AV1 stream: the decoder would allocate for the stream. The
    pixel limit and the record must see what is decoded, so the file is refused before decoding,
    at upload screening's header read and in the worker."""
    real = _avif(300, 200)
    assert read_header_prefix(real, "avif") == ImageInfo("avif", 300, 200)
    assert make_renditions(real, ImagingSettings()).info.width == 300
    at = real.find(b"ispe")
    forged = real[: at + 8] + struct.pack(">II", 64, 64) + real[at + 16 :]
    with pytest.raises(CorruptImage, match="codes frames of up to 300x200"):
        read_header_prefix(forged, "avif")
    with pytest.raises(CorruptImage, match="64x64"):
        make_renditions(forged, ImagingSettings())


def test_a_jpeg_too_short_for_the_pixels_it_claims_is_corrupt() -> None:
    """A 700-byte JPEG whose frame header says 10000 x 10000 was decoded as grey and recorded
    ready at that size: the whole file is now held against what it claims."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 100, 50)).save(out, "JPEG", quality=50)
    data = bytearray(out.getvalue())
    frame = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, frame + 5, 10000, 10000)
    with pytest.raises(CorruptImage, match="cannot code that many pixels"):
        make_renditions(bytes(data[:700]), ImagingSettings())
    assert make_renditions(out.getvalue(), ImagingSettings()).info.width == 64  # the real one
