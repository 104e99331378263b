"""The operations of a variant (`pipeline.imaging.operations`) done to its pixels with libvips:
`cut` before the resize (the rectangle, the trim), `finish` after it (the pad's canvas, the
rotation and mirrors, blur or sharpen). `pipeline.imaging.renditions.make_variant` runs them
around its resize; only worker processes import this (it loads libvips).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

try:  # as in `pipeline.imaging.renditions`: without libvips, variants are refused there
    import pyvips
except (ImportError, OSError):  # pragma: no cover - depends on the installation
    pyvips = None

from pipeline.core.formats import ImageInfo
from pipeline.imaging.operations import Operations
from pipeline.imaging.variants import VariantSpec

_ROTATIONS = {90: "d90", 180: "d180", 270: "d270"}


@dataclass(frozen=True)
class Cut:
    """The original upright, cut to the rectangle and trimmed (`image`, in memory, perhaps at a
    reduced scale), and what that is in the original's pixels (`width`, `height`)."""

    image: Any
    width: int
    height: int


def cut(data: bytes, info: ImageInfo, spec: VariantSpec, box: tuple[int, int], load: str) -> Cut:
    """Decode, cut and trim. A JPEG is decoded at the smallest scale the output allows (as a
    plain resize is); a trim is found at that scale, and the JPEG decoded again at a larger one
    only if what the trim leaves needs more pixels than that scale kept."""
    ops = spec.ops
    src_w, src_h = ops.source_size(info.width, info.height)
    if ops.turns_quarter:
        src_w, src_h = src_h, src_w
    turned = (box[1], box[0]) if ops.turns_quarter else box
    shrink = jpeg_shrink(info, max(turned[0] / src_w, turned[1] / src_h))
    image = _cut(data, info, ops.region, shrink, load)
    if not ops.trim or (found := _trim_box(image, ops.trim)) is None:
        return Cut(image.copy_memory(), src_w, src_h)
    left, top, width, height = found
    kept_w, kept_h = width * shrink, height * shrink  # in the original's pixels
    wanted = spec.fitted(*((kept_h, kept_w) if ops.turns_quarter else (kept_w, kept_h)))
    if ops.turns_quarter:
        wanted = (wanted[1], wanted[0])
    finer = jpeg_shrink(info, max(wanted[0] / kept_w, wanted[1] / kept_h))
    if finer < shrink:  # the trim left little: decode again at the scale it needs
        image, factor = _cut(data, info, ops.region, finer, load), shrink // finer
        left, top, width, height = left * factor, top * factor, width * factor, height * factor
        width, height = min(width, image.width - left), min(height, image.height - top)
    return Cut(image.crop(left, top, width, height).copy_memory(), kept_w, kept_h)


def _cut(
    data: bytes, info: ImageInfo, region: tuple[int, int, int, int] | None, shrink: int, load: str
) -> Any:
    options = {"shrink": shrink} if shrink > 1 else {}
    image = pyvips.Image.new_from_buffer(data, load, **options).autorot()
    if region:
        x, y, w, h = (round(v * image.width / info.width) for v in region)
        x, y = min(x, image.width - 1), min(y, image.height - 1)
        image = image.crop(x, y, max(1, min(w, image.width - x)), max(1, min(h, image.height - y)))
    return image


def _trim_box(image: Any, threshold: int) -> tuple[int, int, int, int] | None:
    """The box inside the border of the top-left pixel's colour (within `threshold`); None for
    an image all of one colour (kept whole)."""
    colour = image.getpoint(0, 0)[: image.bands - 1 if image.hasalpha() else image.bands]
    left, top, width, height = image.find_trim(threshold=threshold, background=colour)
    if width <= 0 or height <= 0:
        return None
    return left, top, width, height


def finish(image: Any, spec: VariantSpec, box: tuple[int, int]) -> Any:
    """The resized image set on the pad's canvas (`box`, the output's size), turned, mirrored,
    blurred or sharpened."""
    ops = spec.ops
    if spec.fit == "pad":
        turned = (box[1], box[0]) if ops.turns_quarter else box
        image = _on_canvas(to_display(image, grey_ok=False), turned, ops.rgba())
    if ops.rotate or ops.flip:
        # Read bottom to top: a source decoded sequentially (shrink-on-load) must be whole first.
        image = image.copy_memory()
    if ops.rotate:
        image = image.rot(_ROTATIONS[ops.rotate])
    if ops.flip:
        image = image.flip("vertical")
    if ops.flop:
        image = image.flip("horizontal")
    if ops.blur:
        image = image.gaussblur(ops.blur)
    if ops.sharpen:
        image = image.sharpen(sigma=ops.sharpen)
    return image


#: A watermark's distance from the edges it is placed against, as a fraction of the output's
#: shorter side.
MARGIN = 0.02


def watermark(image: Any, overlay: bytes, ops: Operations) -> Any:
    """`overlay` laid over `image` as `ops` places it: `scale` of its width (never taller than
    it), `opacity` times its own alpha, at `gravity`, `MARGIN` from the edges it is against."""
    mark = to_display(pyvips.Image.new_from_buffer(overlay, "fail_on=error"), grey_ok=False)
    if not mark.hasalpha():
        mark = mark.bandjoin(255)
    mark = mark.thumbnail_image(max(1, round(image.width * ops.scale)), height=image.height)
    mark = mark[0:3].bandjoin((mark[3] * ops.opacity).cast("uchar"))
    base = to_display(image, grey_ok=False)
    opaque = not base.hasalpha()
    if opaque:
        base = base.bandjoin(255)
    margin = round(min(base.width, base.height) * MARGIN)
    x, y = _placed(ops.gravity, (base.width, base.height), (mark.width, mark.height), margin)
    out = base.composite2(mark, "over", x=x, y=y).cast("uchar")
    return out[0:3] if opaque else out


def _placed(gravity: str, size: tuple[int, int], mark: tuple[int, int], margin: int) -> tuple[int, int]:
    """The top-left corner of a `mark`-sized overlay at `gravity` in an image of `size`."""
    (width, height), (w, h) = size, mark
    x = margin if "west" in gravity else width - w - margin if "east" in gravity else (width - w) // 2
    y = margin if "north" in gravity else height - h - margin if "south" in gravity else (height - h) // 2
    return max(0, x), max(0, y)


def _on_canvas(image: Any, size: tuple[int, int], rgba: list[int]) -> Any:
    """`image` in the middle of a canvas of `size` filled with `rgba` (an alpha band added when
    the colour is not opaque)."""
    if rgba[3] < 255 and not image.hasalpha():
        image = image.bandjoin(255)
    colour = rgba if image.hasalpha() else rgba[:3]
    return image.gravity("centre", size[0], size[1], extend="background", background=colour)


def jpeg_shrink(info: ImageInfo, scale: float) -> int:
    """The largest JPEG decode scale (1/8, 1/4, 1/2) still at least `scale` of the original."""
    return next((k for k in (8, 4, 2) if scale * k <= 1), 1) if info.format == "jpeg" else 1


def to_display(image: Any, *, grey_ok: bool = True) -> Any:
    """8-bit sRGB, or grey where `grey_ok` (a colour to be set on a grey image needs sRGB)."""
    grey = grey_ok and image.interpretation in ("b-w", "grey16")
    if image.interpretation != ("b-w" if grey else "srgb") or image.format != "uchar":
        image = image.colourspace("b-w" if grey else "srgb")
        if image.format != "uchar":
            image = image.cast("uchar")
    return image
