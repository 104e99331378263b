"""The operations of a variant (`pipeline.imaging.operations`) done to its pixels with libvips:
`cut` before the resize (the rectangle, the trim), `finish` after it (the pad's canvas, the
rotation and mirrors, blur or sharpen). `pipeline.imaging.renditions.make_variant` runs them
around its resize; only worker processes import this (it loads libvips).
"""

from __future__ import annotations

from typing import Any

try:  # as in `pipeline.imaging.renditions`: without libvips, variants are refused there
    import pyvips
except (ImportError, OSError):  # pragma: no cover - depends on the installation
    pyvips = None

from pipeline.core.formats import ImageInfo
from pipeline.imaging.variants import VariantSpec

_ROTATIONS = {90: "d90", 180: "d180", 270: "d270"}


def cut(data: bytes, info: ImageInfo, spec: VariantSpec, box: tuple[int, int], load: str) -> Any:
    """The original upright, cut to the rectangle and trimmed, in memory. A JPEG is decoded at
    a reduced scale when the output needs no more (never when trimming: what is left of a
    trimmed image may need every pixel)."""
    ops = spec.ops
    src_w, src_h = ops.source_size(info.width, info.height)
    if ops.turns_quarter:
        src_w, src_h = src_h, src_w
    turned = (box[1], box[0]) if ops.turns_quarter else box
    shrink = 1 if ops.trim else jpeg_shrink(info, max(turned[0] / src_w, turned[1] / src_h))
    options = {"shrink": shrink} if shrink > 1 else {}
    image = pyvips.Image.new_from_buffer(data, load, **options).autorot()
    if ops.region:
        x, y, w, h = (round(v * image.width / info.width) for v in ops.region)
        x, y = min(x, image.width - 1), min(y, image.height - 1)
        image = image.crop(x, y, max(1, min(w, image.width - x)), max(1, min(h, image.height - y)))
    if ops.trim:
        image = _trimmed(image, ops.trim)
    return image.copy_memory()


def _trimmed(image: Any, threshold: int) -> Any:
    """Without the border of the top-left pixel's colour (within `threshold`); an image all of
    one colour is kept whole."""
    colour = image.getpoint(0, 0)[: image.bands - 1 if image.hasalpha() else image.bands]
    left, top, width, height = image.find_trim(threshold=threshold, background=colour)
    if width <= 0 or height <= 0:
        return image
    return image.crop(left, top, width, height)


def finish(image: Any, spec: VariantSpec, box: tuple[int, int]) -> Any:
    """The resized image set on the pad's canvas (`box`, the output's size), turned, mirrored,
    blurred or sharpened."""
    ops = spec.ops
    if spec.fit == "pad":
        turned = (box[1], box[0]) if ops.turns_quarter else box
        image = _on_canvas(to_display(image, grey_ok=False), turned, ops.rgba())
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
