"""Pure imaging: bytes in, renditions out.

Nothing here knows about asyncio or AWS, so it runs unchanged in a process-pool worker, in a
benchmark or in a unit test. Type is decided by magic bytes, dimensions are checked from the
header before any pixel is decoded, and renditions carry no metadata (EXIF, GPS, XMP, ICC).
Importing this module loads libvips: only worker processes (through `pipeline.imaging.tasks`), the
Lambda handler and tools do; the web tier and the consumer's parent use `pipeline.core.formats`.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import replace
from typing import Any

import blurhash
from PIL import AvifImagePlugin, Image, ImageFile, ImageOps, features

from config.settings import ImagingSettings, Mezzanine, RenditionSpec, VariantSettings
from pipeline.core import headers
from pipeline.core.errors import CorruptImage, FormatNotAllowed, NotAnImage, TooManyPixels
from pipeline.core.formats import (
    MAGIC_BYTES_NEEDED,
    ImageInfo,
    check_format,
    check_limits,
    read_header_prefix,
)
from pipeline.core.results import Engine, Rendition, RenditionResult, VariantImage
from pipeline.imaging import faces, metadata, operate
from pipeline.imaging.operate import jpeg_shrink, to_display
from pipeline.imaging.strip import strip
from pipeline.imaging.variants import StrippedOriginal, VariantSpec

log = logging.getLogger(__name__)

_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "tiff": "TIFF"}
if features.check("avif"):  # Pillow 11.3+ wheels decode AVIF, faster than libvips' libheif
    _PILLOW_FORMATS["avif"] = "AVIF"
_WHITE = (255, 255, 255)
#: EXIF orientations that turn the stored image a quarter turn, so displayed it is the other way up.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})

# Our own limits are checked from the header before any decode; Pillow's global guess is set per
# call to the same limit, and its bomb warning is raised as an error (defence in depth).
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: The libvips loader each accepted format must be read by; any other loader means the bytes are
#: not what their magic says (a polyglot, or a format we do not accept).
_VIPS_LOADERS = {
    "jpeg": ("jpegload_buffer", "VipsForeignLoadJpeg"),
    "png": ("pngload_buffer", "VipsForeignLoadPng"),
    "webp": ("webpload_buffer", "VipsForeignLoadWebp"),
    "gif": ("gifload_buffer", "VipsForeignLoadNsgif"),
    "tiff": ("tiffload_buffer", "VipsForeignLoadTiff"),
    "heif": ("heifload_buffer", "VipsForeignLoadHeif"),
    "avif": ("heifload_buffer", "VipsForeignLoadHeif"),
}

try:  # pyvips is the fast path; without a usable libvips the Pillow path does everything.
    import pyvips

    pyvips.cache_set_max(0)  # each job decodes different bytes: caching only costs memory
    pyvips.block_untrusted_set(True)  # no loaders libvips itself marks as unfuzzed
    pyvips.operation_block_set("VipsForeignLoad", True)  # then allow exactly the accepted formats
    for _, _loader_class in _VIPS_LOADERS.values():
        pyvips.operation_block_set(_loader_class, False)
    HAVE_VIPS = True
except (ImportError, OSError):  # pragma: no cover - depends on the installation
    HAVE_VIPS = False


def configure_worker(threads: int) -> None:
    """Process-pool initializer: bound the decoders' own threads (libvips, and libavif through
    Pillow, which otherwise takes every core) so workers do not oversubscribe the machine."""
    AvifImagePlugin.DEFAULT_MAX_THREADS = max(1, threads)
    if HAVE_VIPS:
        pyvips.concurrency_set(max(1, threads))


def make_renditions(data: bytes, imaging: ImagingSettings, engine: Engine | None = None) -> RenditionResult:
    """Check type and limits from the header, then decode once and encode every rendition.

    `engine` overrides the choice (benchmarks and tests compare engines on the same input).
    Raises only `PermanentError` subclasses: whatever is wrong with these bytes stays wrong.
    """
    started = time.perf_counter()
    fmt = check_format(data[:MAGIC_BYTES_NEEDED], imaging.allowed_formats)
    info = read_header(data, fmt)
    check_limits(info, imaging)
    check_stream(data, fmt)
    specs = imaging.made_for(max(info.width, info.height), info.frames == 1 and not info.alpha)
    engine = engine or choose_engine(info, max(s.max_side for s in specs), imaging.pillow_max_side)
    if engine == "pyvips":
        outputs = _vips_renditions(data, info, specs)
    else:
        outputs = _pillow_renditions(data, fmt, specs, imaging.max_pixels)
    seconds = time.perf_counter() - started
    return RenditionResult(info, engine, outputs, seconds, placeholder(outputs[0].data), _metadata(data))


def _metadata(data: bytes) -> dict[str, Any] | None:
    """The original's own metadata, from its header (None without libvips or if unreadable)."""
    if not HAVE_VIPS:  # pragma: no cover - pyvips-binary is a dependency
        return None
    try:
        return metadata.describe(pyvips.Image.new_from_buffer(data, "", access="sequential"))
    except pyvips.Error:
        return None


def make_variant(
    data: bytes,
    spec: VariantSpec,
    imaging: ImagingSettings,
    limits: VariantSettings,
    overlay: bytes | None = None,
) -> VariantImage:
    """One variant of an original, under the consumer's checks (type from magic bytes, limits
    from the header before any decode). Animated originals stay animated in WebP, the only
    output format here that holds animation; other formats get the first frame.

    Always libvips: its `thumbnail` shrinks on load, and has the smart crops (`attention`,
    `entropy`) that Pillow lacks. `overlay`: the watermark's bytes, where the spec names one.
    Raises only `PermanentError` subclasses.
    """
    if not HAVE_VIPS:  # pragma: no cover - pyvips-binary is a dependency
        raise FormatNotAllowed("variants need libvips, which this installation lacks")
    started = time.perf_counter()
    fmt = check_format(data[:MAGIC_BYTES_NEEDED], imaging.allowed_formats)
    info = read_header(data, fmt)
    check_limits(info, imaging)
    check_stream(data, fmt)
    if isinstance(spec, StrippedOriginal):
        return _stripped(data, info, started)
    width, height = spec.box(info.width, info.height, limits.max_side, limits.max_pixels)
    # Every frame is a picture to make: an animation whose frames together would pass the pixel
    # bound gives its first frame only (like any other output format).
    animated = spec.animates(width, height, info.frames, limits.max_pixels)
    # Checked again here, from this header's frames (the web process checked the record's).
    spec.check_cost(info.width, info.height, info.frames, limits)
    load = "fail_on=error" + (",n=-1" if animated else "")
    try:
        if spec.ops.region or spec.ops.trim:  # cut first, then size the box from what is left
            cut = operate.cut(data, info, spec, (width, height), load)
            width, height = spec.fitted(
                *_turned(spec, cut.width, cut.height), limits.max_side, limits.max_pixels
            )
            source: bytes | Any = cut.image
            size = (cut.width, cut.height)
        else:
            source, size = data, (info.width, info.height)
        # Made upright in the source's orientation, then turned: the box describes the result.
        image = _resized(source, size, info, spec, _turned(spec, width, height), load)
        image = operate.finish(image, spec, (width, height))
        if spec.ops.watermark and overlay is not None:
            image = operate.watermark(image, overlay, spec.ops)
        image = _vips_to_display(image, spec.format, spec.ops.rgba())
        out = RenditionSpec(max(width, height), spec.format, spec.quality)
        encoded = _vips_encode(image, out, variant=True)
        frames = int(image.get("n-pages")) if animated and image.get_typeof("n-pages") else 1
        page_height = image.get("page-height") if animated and image.get_typeof("page-height") else 0
    except pyvips.Error as exc:
        raise CorruptImage(_short(str(exc))) from None
    shown_height = page_height or image.height
    return VariantImage(encoded, image.width, shown_height, frames, time.perf_counter() - started)


def _stripped(data: bytes, info: ImageInfo, started: float) -> VariantImage:
    """The original without its private metadata: its structure rewritten (`strip`), or, for a
    TIFF, its pixels saved again losslessly (upright, with the ICC profile alone)."""
    try:
        done = strip(data, info.format, info.orientation)
        if done is not None:
            out = done.data
        else:
            image = pyvips.Image.new_from_buffer(data, "fail_on=error").autorot()
            out = bytes(image.tiffsave_buffer(compression="deflate", keep="icc"))
    except pyvips.Error as exc:
        raise CorruptImage(_short(str(exc))) from None
    return VariantImage(out, info.width, info.height, info.frames, time.perf_counter() - started)


def _turned(spec: VariantSpec, width: int, height: int) -> tuple[int, int]:
    return (height, width) if spec.ops.turns_quarter else (width, height)


def _resized(
    source: bytes | Any,
    size: tuple[int, int],
    info: ImageInfo,
    spec: VariantSpec,
    box: tuple[int, int],
    load: str,
) -> Any:
    """The source (the original's bytes, or an image already cut, of `size` in the original's
    pixels) fitted to `box`."""
    width, height = box
    if spec.fit == "pad":  # contained, then set on its canvas by `operate.finish`
        width, height = spec.inside(*size, box)
    if spec.fit == "cover" and spec.crop in ("focal", "faces"):
        covering = _covering(source, info, width, height, load)
        if spec.crop == "focal":
            return _around(covering, width, height, (spec.focal[0] / 1000, spec.focal[1] / 1000))
        # Faces are looked for in the image already scaled to cover the box: no second decode.
        if (centre := faces.focal_point(covering)) is not None:
            return _around(covering, width, height, centre)
        return covering.thumbnail_image(width, height=height, crop="attention")  # no face found
    # The box keeps the aspect ratio already (rounded as `VariantSpec.box` says): forced, libvips
    # makes exactly it, where its own rounding of a contained side could be a pixel short.
    fit: dict[str, Any] = {"crop": spec.crop} if spec.fit == "cover" else {"size": "force"}
    if not isinstance(source, bytes):
        return source.thumbnail_image(width, height=height, **fit)
    return _thumbnail(source, info, width, height, load, **fit)


def _thumbnail(data: bytes, info: ImageInfo, width: int, height: int, load: str, **fit: Any) -> Any:
    """libvips `thumbnail` into a `width` x `height` box, a JPEG decoded at the smallest 1/2^n
    scale still at least as large as the output (as Pillow's `draft` does).

    libvips' own shrink-on-load leaves a factor of two for its final reduce, so a 2 MP JPEG made
    512 px wide is decoded whole: measured here, 14 ms against 9 ms at 1/2 scale, and 31 against
    about 12 ms for 12 MP at 1/8, for an SSIM against a full decode within 0.01 (see
    BENCHMARKS.md). Other formats have no such scales and go to `thumbnail_buffer` unchanged."""
    shrink = jpeg_shrink(info, max(width / info.width, height / info.height))
    if shrink == 1:
        return pyvips.Image.thumbnail_buffer(data, width, height=height, option_string=load, **fit)
    loaded = pyvips.Image.new_from_buffer(data, load, shrink=shrink, access="sequential")
    return loaded.thumbnail_image(width, height=height, **fit)


def _covering(source: bytes | Any, info: ImageInfo, box_w: int, box_h: int, load: str) -> Any:
    """The source scaled to cover the box (each side at least the box's), in memory."""
    width, height = (info.width, info.height) if isinstance(source, bytes) else (source.width, source.height)
    scale = max(box_w / width, box_h / height)
    cover_w, cover_h = max(box_w, round(width * scale)), max(box_h, round(height * scale))
    if isinstance(source, bytes):
        return _thumbnail(source, info, cover_w, cover_h, load, size="force").copy_memory()
    return source.thumbnail_image(cover_w, height=cover_h, size="force").copy_memory()


def _around(image: Any, box_w: int, box_h: int, focal: tuple[float, float]) -> Any:
    """The box cut out of `image` around the focal point (fractions; the box kept inside)."""
    fx, fy = (min(max(v, 0.0), 1.0) for v in focal)
    left = min(max(round(fx * image.width - box_w / 2), 0), image.width - box_w)
    top = min(max(round(fy * image.height - box_h / 2), 0), image.height - box_h)
    return image.crop(left, top, box_w, box_h)


def placeholder(rendition: bytes) -> dict[str, str] | None:
    """A BlurHash and the average colour, from a rendition we just encoded (so: small, trusted;
    ~1 ms): enough for a gallery to lay out and tint a tile before its thumbnail arrives."""
    try:
        with Image.open(io.BytesIO(rendition)) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError):
        return None
    image.thumbnail((16, 16))
    width, height = image.size
    raw = image.tobytes()  # RGB, row by row
    pixels = [
        [list(raw[(row * width + col) * 3 : (row * width + col) * 3 + 3]) for col in range(width)]
        for row in range(height)
    ]
    across, down = (4, 3) if width >= height else (3, 4)
    red, green, blue = image.resize((1, 1), Image.Resampling.BOX).tobytes()  # the mean colour
    return {
        "blurhash": blurhash.encode(pixels, components_x=across, components_y=down),
        "color": f"#{red:02x}{green:02x}{blue:02x}",
    }


def check_stream(data: bytes, fmt: str) -> None:
    """`CorruptImage` when the whole file contradicts its header before anything is decoded: an
    AVIF whose AV1 stream codes larger frames than its `ispe` declares (what the decoder would
    really allocate for), a Huffman-coded JPEG with too few bytes for the pixels it claims (a
    decoder fills the rest with grey, and the record would keep the claim)."""
    if fmt in ("avif", "heif"):
        read_header_prefix(data, fmt)  # its container walk checks every AV1 item's sequence header
    elif fmt == "jpeg" and (why := headers.jpeg_too_short(data)):
        raise CorruptImage(why)


def read_header(data: bytes, fmt: str) -> ImageInfo:
    """Dimensions and frame count from the header alone, read by the loader `fmt` must use.

    Width and height are as displayed: the renditions apply the EXIF orientation, so the
    image record must describe the upright image too (a 600x300 photo taken upright is 300x600).
    """
    if not HAVE_VIPS:  # pragma: no cover - pyvips-binary is a dependency
        return _pillow_header(data, fmt)
    try:
        header = pyvips.Image.new_from_buffer(data, "", access="sequential")
        loader = header.get("vips-loader")
        frames = header.get("n-pages") if header.get_typeof("n-pages") else 1
        orientation = header.get("orientation") if header.get_typeof("orientation") else 1
    except pyvips.Error as exc:
        raise CorruptImage(_short(str(exc))) from None
    if loader != _VIPS_LOADERS[fmt][0]:
        raise NotAnImage(f"the data starts like {fmt} but reads as something else ({loader})")
    if header.width <= 0 or header.height <= 0:
        raise CorruptImage("the image has no pixels")
    cmyk = header.interpretation == "cmyk"
    info = ImageInfo(fmt, header.width, header.height, max(1, int(frames)), cmyk, alpha=header.hasalpha())
    return _displayed(info, orientation)


def _pillow_header(data: bytes, fmt: str) -> ImageInfo:
    if fmt not in _PILLOW_FORMATS:
        raise FormatNotAllowed(f"{fmt} images cannot be decoded here")
    try:
        with Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]]) as im:
            alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
            info = ImageInfo(fmt, im.width, im.height, alpha=alpha)
            return _displayed(info, im.getexif().get(0x0112))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(_short(str(exc))) from None


def _displayed(info: ImageInfo, orientation: object) -> ImageInfo:
    """Swap width and height when the EXIF orientation turns the image a quarter turn, and keep
    the orientation (a stripped original keeps it)."""
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        return info
    if orientation in _QUARTER_TURNS:
        info = replace(info, width=info.height, height=info.width)
    return replace(info, orientation=orientation)


def choose_engine(info: ImageInfo, largest_side: int, pillow_max_side: int) -> Engine:
    """The engine measured faster for this format and output size (BENCHMARKS.md, `bench_imaging`).

    - JPEG to small outputs: Pillow's draft (DCT scaling) plus a short Lanczos beats libvips'
      shrink-on-load pipeline; for larger outputs libvips is 1.2-2x faster.
    - CMYK JPEG: Pillow at every size (libvips' ICC transform costs ~2x).
    - GIF and AVIF: Pillow's decoders are faster (AVIF ~1.6x).
    - PNG, WebP, TIFF, 16-bit, HEIF: libvips (1.2-3x faster, WebP with a third of the memory).
    """
    if not HAVE_VIPS:
        return "pillow"
    if info.format not in _PILLOW_FORMATS:
        return "pyvips"
    if info.format == "jpeg":
        return "pillow" if info.cmyk or largest_side <= pillow_max_side else "pyvips"
    return "pillow" if info.format in ("gif", "avif") else "pyvips"


# pyvips ------------------------------------------------------------------------------------------


def _vips_renditions(data: bytes, info: ImageInfo, specs: tuple[RenditionSpec, ...]) -> tuple[Rendition, ...]:
    try:
        largest = max(specs, key=lambda s: s.max_side)
        if isinstance(largest, Mezzanine):
            # A JPEG decoded at the DCT scale the mezzanine allows (as variants are): 50 against
            # 70 ms for 12 MP. Never larger than the original (`made_for` saw to that).
            scale = largest.max_side / max(info.width, info.height)
            side_w, side_h = max(1, round(info.width * scale)), max(1, round(info.height * scale))
            base = _thumbnail(data, info, side_w, side_h, "fail_on=error", size="force")
        else:
            # thumbnail_buffer shrinks on load, applies EXIF orientation, takes the first frame.
            base = pyvips.Image.thumbnail_buffer(
                data, largest.max_side, height=largest.max_side, size="down", option_string="fail_on=error"
            )
        base = base.copy_memory()  # small, and every rendition reads it again
        outputs = []
        for spec in sorted(specs, key=lambda s: -s.max_side):
            image = (
                base
                if spec is largest
                else base.thumbnail_image(spec.max_side, height=spec.max_side, size="down")
            )
            image = _vips_to_display(image, spec.format)
            outputs.append(Rendition(spec, _vips_encode(image, spec), image.width, image.height))
    except pyvips.Error as exc:
        raise CorruptImage(_short(str(exc))) from None
    return _in_spec_order(outputs, specs)


def _vips_to_display(image: Any, out_format: str, background: list[int] | None = None) -> Any:
    """8-bit sRGB (or grey), alpha flattened for JPEG onto `background` (RGBA; white unless
    given): what browsers show the same everywhere."""
    colour = list(_WHITE) if background is None else background[:3]
    image = to_display(image, grey_ok=len(set(colour)) == 1)
    if image.hasalpha() and out_format == "jpeg":
        image = image.flatten(background=colour[0] if image.bands == 2 else colour)
    return image


#: libvips' efforts for variants (its defaults, 4, for renditions, made in the background). A
#: variant is made while its first request waits, with other users' variants queued behind it:
#: its time is bounded first. Measured here: AVIF (0-9) at 2 encodes a photo 6x and noise 12x
#: faster for files about a fifth larger; WebP (0-6) at 2 an 800 px photo in 23 ms against 51
#: (3 and 4 take the same time) for files 3-4% larger, which brings a first 800 px WebP of a 2 MP
#: JPEG from even with thumbor to 1.2x (BENCHMARKS.md, "Side by side with thumbor").
VARIANT_AVIF_EFFORT = 2
VARIANT_WEBP_EFFORT = 2


def _vips_encode(image: Any, spec: RenditionSpec, *, variant: bool = False) -> bytes:
    if isinstance(spec, Mezzanine):
        # Read by workers only, never sent: no Huffman tables optimised (40 of the 50 ms of a
        # 2048 px encode, for 1% of its bytes), and chroma halved as variants have it (libvips
        # keeps it whole from quality 90): 11 ms and a fifth fewer bytes, decoded faster.
        return bytes(image.jpegsave_buffer(Q=spec.quality, subsample_mode="on", keep="none"))
    if spec.format == "jpeg":
        return bytes(image.jpegsave_buffer(Q=spec.quality, optimize_coding=True, keep="none"))
    if spec.format == "webp":
        return bytes(
            image.webpsave_buffer(Q=spec.quality, effort=VARIANT_WEBP_EFFORT if variant else 4, keep="none")
        )
    if spec.format == "avif":
        effort = VARIANT_AVIF_EFFORT if variant else 4
        return bytes(image.heifsave_buffer(compression="av1", Q=spec.quality, effort=effort, keep="none"))
    return bytes(image.pngsave_buffer(keep="none"))


# Pillow ------------------------------------------------------------------------------------------


def _pillow_renditions(
    data: bytes, fmt: str, specs: tuple[RenditionSpec, ...], max_pixels: int
) -> tuple[Rendition, ...]:
    largest = max(specs, key=lambda s: s.max_side)
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[fmt]])
        with im:
            if im.width * im.height > max_pixels:  # checked before load, whatever the header path said
                raise TooManyPixels(f"{im.width}x{im.height} is more than the {max_pixels} pixels allowed")
            if im.format == "JPEG":
                # Decode at the smallest 1/2^n scale still at least as large as the output.
                im.draft("RGB", (largest.max_side, largest.max_side))
            upright = ImageOps.exif_transpose(im)
            upright.load()
            base = _pillow_to_display(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(_short(str(exc))) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(_short(str(exc))) from None
    outputs = []
    current = base
    for spec in sorted(specs, key=lambda s: -s.max_side):
        current = current.copy()
        # thumbnail() keeps the aspect ratio and never upscales.
        current.thumbnail((spec.max_side, spec.max_side), Image.Resampling.LANCZOS, reducing_gap=3.0)
        outputs.append(Rendition(spec, _pillow_encode(current, spec), current.width, current.height))
    return _in_spec_order(outputs, specs)


def _pillow_to_display(im: Image.Image) -> Image.Image:
    """Normalise any mode to L, LA, RGB or RGBA with 8 bits per channel."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # Scale 16-bit grey down instead of clipping it to white.
        return im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if im.mode in {"P", "PA"}:
        return im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
    if im.mode == "1":
        return im.convert("L")
    if im.mode in ("L", "LA", "RGB", "RGBA"):
        return im
    return im.convert("RGBA" if "A" in im.mode else "RGB")


def _pillow_encode(im: Image.Image, spec: RenditionSpec) -> bytes:
    out = io.BytesIO()
    if spec.format == "jpeg":
        if im.mode in ("RGBA", "LA"):
            background = Image.new("RGB" if im.mode == "RGBA" else "L", im.size, _WHITE[: len(im.mode) - 1])
            background.paste(im, mask=im.getchannel("A"))
            im = background
        # No exif= and no icc_profile= arguments: nothing of the original's metadata is written.
        im.save(out, "JPEG", quality=spec.quality, optimize=not isinstance(spec, Mezzanine))
    else:
        im.save(out, spec.format.upper(), quality=spec.quality)
    return out.getvalue()


def _in_spec_order(outputs: list[Rendition], specs: tuple[RenditionSpec, ...]) -> tuple[Rendition, ...]:
    by_spec = {r.spec: r for r in outputs}
    return tuple(by_spec[s] for s in specs)


def _short(text: str, limit: int = 300) -> str:
    """Library messages can be long and multi-line; DLQ attributes and JSON want one short line."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
