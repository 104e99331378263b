"""On-demand variants: what a request may ask for, in one canonical form.

A variant is an original resized to a box (`w`, `h`, times `dpr`), fitted (`contain`, `cover`,
`fill`, `pad`), cropped (`centre`, `attention`, `entropy`, `focal`), operated on
(`pipeline.imaging.operations`: a rectangle, trim, rotation, mirrors, blur, sharpen, background)
and encoded (`jpeg`, `webp`, `avif`, `png`) at a quality. The parameters a client sends are
parsed strictly here (an unknown name or value is a 400 naming the allowed ones) and brought to
one canonical form, so that every spelling of the same request finds the same stored object.
Pure: the web tier imports it, no decoder does.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

from config.settings import VARIANT_CROPS, VARIANT_FITS, VariantSettings
from pipeline.core.errors import InvalidField, VariantTooCostly
from pipeline.imaging import faces, operations
from pipeline.imaging.operations import Operations, parse_dpr, parse_operations, parse_region, whole_number

FITS = VARIANT_FITS
CROPS = VARIANT_CROPS
FORMATS = ("jpeg", "webp", "avif", "png")
#: Formats a client gets from `format=auto` only by naming them in `Accept`, best first.
NEGOTIATED = ("avif", "webp")
PARAMETERS = ("w", "h", "fit", "crop", "format", "q", "upscale", *operations.PARAMETERS, "preset")
#: A signed link's name, read back token by token (`parse_link_name`): each token's pattern and
#: the query parameter it stands for (None: a part the link leaves to the image, its focal point).
_LINK_TOKENS: tuple[tuple[re.Pattern[str], str | None], ...] = tuple(
    (re.compile(pattern), parameter)
    for pattern, parameter in (
        (r"w([1-9][0-9]{0,4})", "w"),
        (r"h([1-9][0-9]{0,4})", "h"),
        (f"({'|'.join(VARIANT_FITS)})", "fit"),
        (f"({'|'.join(VARIANT_CROPS)})", "crop"),
        (r"crop([0-9]{1,5}_[0-9]{1,5}_[0-9]{1,5}_[0-9]{1,5})", "crop"),
        (r"trim([0-9]{1,3})", "trim"),
        (r"rot([0-9]{2,3})", "rotate"),
        (r"(flip)", "flip"),
        (r"(flop)", "flop"),
        (r"blur([0-9.]{1,5})", "blur"),
        (r"sharpen([0-9.]{1,5})", "sharpen"),
        (r"bg([0-9a-f]{6}(?:[0-9a-f]{2})?)", "bg"),
        (r"wm(site)?", "watermark"),
        (r"g(c|n|ne|e|se|s|sw|w|nw)", "gravity"),
        (r"op([0-9.]{1,4})", "opacity"),
        (r"sc([0-9.]{1,4})", "scale"),
        (r"q([1-9][0-9]?|100)", "q"),
        (r"(up)", "upscale"),
        (r"x[0-9]{1,4}y[0-9]{1,4}", None),
    )
)
_EXTENSIONS = {"jpg": "jpeg", "webp": "webp", "avif": "avif", "png": "png", "auto": "auto"}
_SPELLINGS = {"center": "centre", "jpg": "jpeg"}
NO_OPERATIONS = Operations()


#: How far `upscale` may enlarge an original, at most (each side).
MAX_UPSCALE = 2.0
#: Milliseconds of one worker a megapixel costs: decoded (any format, measured for PNG, the
#: slowest common one per pixel), and encoded in each output format, measured here at quality 100
#: on noise, the worst case (AVIF with libvips' effort 2, as variants are made).
DECODE_MS_PER_MP = 10
ENCODE_MS_PER_MP = {"jpeg": 20, "png": 60, "webp": 250, "avif": 1000}
#: The operations' own cost, measured by `scripts/bench_operations.py` (BENCHMARKS.md) and
#: rounded up: blur per unit of sigma and sharpen per megapixel of output, a turn or mirror per
#: megapixel of output (made whole in memory first), trim per megapixel of the original.
BLUR_MS_PER_MP_SIGMA = 10
SHARPEN_MS_PER_MP = 70
TURN_MS_PER_MP = 60
WATERMARK_MS_PER_MP = 30
TRIM_MS_PER_MP = 35


@dataclass(frozen=True)
class VariantSpec:
    """One variant, canonical: a box of at most `width` x `height` (either may be None: keep the
    aspect ratio), and how the image is fitted in it and encoded."""

    width: int | None
    height: int | None
    fit: str = "contain"
    crop: str = "centre"
    format: str = "jpeg"
    quality: int = 80
    upscale: bool = False
    #: With `crop=focal`: the image's focal point, in thousandths of its width and height (from
    #: its record, not the query); part of the name, so moving the point makes new variants.
    focal: tuple[int, int] = (500, 500)
    ops: Operations = NO_OPERATIONS

    def with_watermark(self, digest: str) -> VariantSpec:
        """This spec made with the watermark image `digest` (where it uses one)."""
        return replace(self, ops=self.ops.with_watermark(digest)) if self.ops.watermark else self

    def at_focal_point(self, point: object) -> VariantSpec:
        """This spec with the record's focal point (`{"x": 0.3, "y": 0.6}`) where it uses one."""
        if self.crop != "focal" or not isinstance(point, dict):
            return self
        x, y = (min(max(float(point.get(axis, 0.5)), 0.0), 1.0) for axis in ("x", "y"))
        return replace(self, focal=(round(x * 1000), round(y * 1000)))

    @functools.cached_property
    def name(self) -> str:
        """The canonical name, also the stored object's file name: every spelling of one request
        gives the same name (a crop only where it changes the pixels, sides only when given)."""
        parts = [f"w{self.width}" if self.width else "", f"h{self.height}" if self.height else ""]
        parts.append(self.fit)
        if self.fit == "cover" and self.width and self.height:
            parts.append(self.crop)
            if self.crop == "focal":
                parts.append(f"x{self.focal[0]}y{self.focal[1]}")
        parts += self.ops.tokens()
        if self.format != "png":  # lossless: every quality gives the same pixels
            parts.append(f"q{self.quality}")
        if self.upscale:
            parts.append("up")
        extension = "jpg" if self.format == "jpeg" else self.format
        return "-".join(p for p in parts if p) + "." + extension

    def link_name(self, negotiated: bool) -> str:
        """The name a signed link carries (`parse_link_name` reads it back): the format `auto` if
        it was negotiated (each follower's `Accept` decides), and no focal point or watermark
        digest (the image's own, and its owner's current watermark, apply when it is followed)."""
        plain = replace(self, focal=(500, 500), ops=self.ops.with_watermark(""))
        name = plain.name.replace("-x500y500", "")
        return name.rpartition(".")[0] + ".auto" if negotiated else name

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"

    def box(
        self, width: int, height: int, max_side: int = 1 << 30, max_pixels: int = 1 << 62
    ) -> tuple[int, int]:
        """The output size for an original of `width` x `height` (as displayed): never larger
        than the original unless `upscale`, never a side under one pixel, and never more than
        `max_side` or `max_pixels` however long the side the request left to the aspect ratio.
        The operations' rectangle and rotation come first (`Operations.source_size`)."""
        return self.fitted(*self.ops.source_size(width, height), max_side, max_pixels)

    def fitted(
        self, width: int, height: int, max_side: int = 1 << 30, max_pixels: int = 1 << 62
    ) -> tuple[int, int]:
        """`box` for a source already cut and turned (the worker's, after `trim` too)."""
        w, h = self._box(width, height)
        shrink = min(1.0, max_side / max(w, h), (max_pixels / (w * h)) ** 0.5)
        if shrink < 1.0:
            w, h = max(1, int(w * shrink)), max(1, int(h * shrink))
        return w, h

    def animates(self, width: int, height: int, frames: int, max_pixels: int) -> bool:
        """Whether every frame is made (an animated WebP), for an output of `width` x `height`:
        only while the frames together stay within the pixel bound (else the first frame only)."""
        animated = frames > 1 and self.format == "webp" and self.fit in ("contain", "fill")
        animated = animated and not self.ops.reshapes
        return animated and width * height * frames <= max_pixels

    def cost(self, width: int, height: int, frames: int, limits: VariantSettings) -> int:
        """Estimated milliseconds of a worker to make this variant of an original of `width` x
        `height` with `frames` frames: its decode plus the encode of every frame it outputs."""
        w, h = self.box(width, height, limits.max_side, limits.max_pixels)
        made = frames if self.animates(w, h, frames, limits.max_pixels) else 1
        decoded = width * height * made / 1e6 * DECODE_MS_PER_MP
        out = w * h * made / 1e6
        operated = out * (BLUR_MS_PER_MP_SIGMA * self.ops.blur + SHARPEN_MS_PER_MP * bool(self.ops.sharpen))
        operated += out * TURN_MS_PER_MP * bool(self.ops.rotate or self.ops.flip)
        operated += out * WATERMARK_MS_PER_MP * bool(self.ops.watermark)
        if self.ops.trim:  # a pass over the decoded source
            operated += width * height / 1e6 * TRIM_MS_PER_MP
        return round(decoded + out * ENCODE_MS_PER_MP[self.format] + operated)

    def check_cost(self, width: int, height: int, frames: int, limits: VariantSettings) -> None:
        """`VariantTooCostly` when the variant costs more than `limits.max_cost`."""
        cost = self.cost(width, height, frames, limits)
        if cost > limits.max_cost:
            raise VariantTooCostly(
                f"this variant would take a worker about {cost / 1000:.1f}s, more than the "
                f"{limits.max_cost / 1000:g}s allowed; ask for a smaller size or another format"
            )

    def _box(self, width: int, height: int) -> tuple[int, int]:
        most = MAX_UPSCALE if self.upscale else 1.0  # of the source's size
        if self.width and self.height and self.fit != "contain":
            if self.fit == "pad":  # the canvas is the box; the image inside is contained
                return self.width, self.height
            # cover and fill keep the box's shape: a box larger than the source allows is
            # scaled down whole (768x576 in a 1000x500 cover: 768x384, not 768x500).
            scale = min(1.0, most * width / self.width, most * height / self.height)
            return max(1, round(self.width * scale)), max(1, round(self.height * scale))
        scales = [side / whole for side, whole in ((self.width, width), (self.height, height)) if side]
        scale = min(*scales, most)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def inside(self, width: int, height: int, box: tuple[int, int]) -> tuple[int, int]:
        """`fit=pad`: the size of the image inside its canvas `box` (contained, upscaled only if
        asked)."""
        w, h = replace(self, fit="contain", width=box[0], height=box[1]).fitted(width, height)
        return min(w, box[0]), min(h, box[1])


@dataclass(frozen=True)
class StrippedOriginal(VariantSpec):
    """The original without its private metadata (`pipeline.imaging.strip`), served in its place
    (`IMGSVC_STRIP_ORIGINALS`): made once by a variant worker, stored and counted like a variant
    of the original, so it is bounded and shared as they are and goes with the image."""

    #: The original's own content type: a stripped file is of the same format.
    original_type: str = "application/octet-stream"

    @functools.cached_property
    def name(self) -> str:
        return f"original-stripped.{'jpg' if self.format == 'jpeg' else self.format}"

    @property
    def content_type(self) -> str:
        return self.original_type

    def animates(self, width: int, height: int, frames: int, max_pixels: int) -> bool:
        return frames > 1  # every frame is kept: the image data is not touched

    def cost(self, width: int, height: int, frames: int, limits: VariantSettings) -> int:
        """A rewrite of the file's structure (no decode), except TIFF's pixels saved again."""
        if self.format != "tiff":
            return 1
        return round(width * height / 1e6 * (DECODE_MS_PER_MP + ENCODE_MS_PER_MP["png"]))


def from_mezzanine(
    spec: VariantSpec, original: tuple[int, int], mezzanine: tuple[int, int], limits: VariantSettings
) -> VariantSpec | None:
    """The spec that makes from the mezzanine (`ImagingSettings.mezzanine`, of `mezzanine`
    pixels) the variant `spec` makes from the original (`original`, as displayed), or None where
    the mezzanine cannot: the variant needs more pixels than the mezzanine has (its box would
    come out another size, or its picture inside a padded box), a trim (what it cuts is found in
    the pixels, so the box it leaves depends on which image is read), or an original as stored.
    A rectangle is scaled to the mezzanine's pixels; every other parameter is relative already."""
    if isinstance(spec, StrippedOriginal) or spec.ops.trim or not all(original + mezzanine):
        return None
    ops = spec.ops
    if ops.region:
        scale = mezzanine[0] / original[0]
        x, y, w, h = (round(v * scale) for v in ops.region)
        ops = replace(ops, region=(x, y, max(1, w), max(1, h)))
    made = replace(spec, upscale=False, ops=ops)
    try:
        wanted = spec.box(*original, limits.max_side, limits.max_pixels)
        box = made.box(*mezzanine, limits.max_side, limits.max_pixels)
        if box != wanted:
            return None
        if spec.fit == "pad" and spec.inside(*spec.ops.source_size(*original), wanted) != made.inside(
            *made.ops.source_size(*mezzanine), box
        ):
            return None
    except InvalidField:  # a rectangle off the image: the original's read says so
        return None
    return made


def parse_variant(query: Mapping[str, str], accept: str, limits: VariantSettings) -> tuple[VariantSpec, bool]:
    """The canonical spec of a request's query, and whether it depends on `Accept` (`format=auto`).

    Raises `InvalidField` (400) for anything unknown, repeated or out of range, naming what is
    allowed: a hostile query costs a dictionary lookup, never a decode.
    """
    counts = Counter(name for name, _ in query.items())  # a multidict gives a repeat twice
    if repeated := sorted(n for n, times in counts.items() if times > 1):
        raise InvalidField(f"{repeated[0]} must be given once")
    unknown = sorted(set(query) - set(PARAMETERS))
    if "preset" in query:
        return parse_preset(query, accept, limits)
    if limits.presets_only:
        raise InvalidField(f"this deployment serves presets only: ?preset={'|'.join(_names(limits))}")
    if unknown:
        raise InvalidField(f"unknown parameter {unknown[0]!r}; variants take {', '.join(PARAMETERS)}")
    width = _side(query, "w", limits.max_side)
    height = _side(query, "h", limits.max_side)
    if width is None and height is None:
        raise InvalidField("a variant needs w or h (or both), in pixels")
    if width and height and width * height > limits.max_pixels:
        raise InvalidField(f"w x h may be at most {limits.max_pixels} pixels")
    width, height = _at_dpr(width, height, parse_dpr(query), limits)
    fit = _word(query, "fit", "contain", FITS)
    region = parse_region(query.get("crop", ""))
    crop = "centre" if region else _word(query, "crop", "centre", CROPS)
    if "crop" in query and not region and fit != "cover":
        raise InvalidField("crop applies to fit=cover only, unless it is a rectangle (crop=x,y,w,h)")
    if crop == "faces" and not faces.available():
        raise InvalidField("crop=faces needs OpenCV, which this installation lacks (the faces extra)")
    negotiated = query.get("format", "").lower() == "auto"
    fmt = _best(accept) if negotiated else _word(query, "format", "jpeg", FORMATS)
    # Stored at most at `max_quality`: a higher one is the same variant (and the same object).
    quality = min(whole_number(query, "q", limits.quality, 1, 100), limits.max_quality)
    upscale = _word(query, "upscale", "false", ("true", "false", "1", "0")) in ("true", "1")
    # A negotiated format may be JPEG for one client: a transparent bg is refused for all alike.
    ops = replace(parse_operations(query, "jpeg" if negotiated else fmt), region=region)
    if not (width and height):
        fit, crop = "contain", "centre"  # one side given: every fit is the same scaling
    return VariantSpec(width, height, fit, crop, fmt, quality, upscale, ops=ops), negotiated


def _at_dpr(
    width: int | None, height: int | None, dpr: float, limits: VariantSettings
) -> tuple[int | None, int | None]:
    """`w` and `h` times `dpr`, both scaled down together as far as the limits need."""
    if dpr == 1.0:
        return width, height
    sides = [side * dpr for side in (width, height) if side]
    area = sides[0] * sides[1] if len(sides) == 2 else sides[0] ** 2
    fit = min(dpr, dpr * limits.max_side / max(sides), dpr * (limits.max_pixels / area) ** 0.5)
    return tuple(max(1, round(side * fit)) if side else None for side in (width, height))  # type: ignore[return-value]


def parse_preset(query: Mapping[str, str], accept: str, limits: VariantSettings) -> tuple[VariantSpec, bool]:
    """`?preset=card`, alone: the query the deployment's preset stands for."""
    if len(query) > 1:
        raise InvalidField("preset takes no other parameter")
    preset = limits.preset(query["preset"])
    if preset is None:
        raise InvalidField(f"preset must be one of {', '.join(_names(limits)) or '(none configured)'}")
    return parse_variant(preset, accept, replace(limits, presets_only=False))


def preset_problem(limits: VariantSettings) -> str | None:
    """What is wrong with a configured preset's values (the syntax was checked with the rest of
    the settings; a value out of its range is found here, as the API starts), or None."""
    for name, query in limits.presets:
        try:
            spec, _ = parse_variant(dict(query), "", replace(limits, presets_only=False))
        except InvalidField as exc:
            return f"IMGSVC_VARIANT_PRESETS: {name}: {exc.message}"
        if spec.ops.watermark == "site" and not limits.watermark_file:
            return f"IMGSVC_VARIANT_PRESETS: {name}: watermark=site needs IMGSVC_VARIANT_WATERMARK_FILE"
    return None


@functools.lru_cache(maxsize=256)
def preset_variant(name: str, best: str, limits: VariantSettings) -> tuple[VariantSpec, bool] | None:
    """Preset `name`'s spec for a client whose best format is `best` (`best_format`), or None if
    no such preset. Remembered: a public preset's URL is asked for again and again, and the
    answers are few (presets x formats)."""
    preset = limits.preset(name)
    if preset is None:
        return None
    return parse_variant(preset, f"image/{best}", replace(limits, presets_only=False))


@functools.lru_cache(maxsize=256)
def best_format(accept: str) -> str:
    """The format `format=auto` sends a client with this `Accept` (remembered: clients send few)."""
    return _best(accept)


def parse_link_name(name: str, accept: str, limits: VariantSettings) -> tuple[VariantSpec, bool] | None:
    """The variant a signed link's name stands for, or None if it names no variant."""
    stem, _, extension = name.rpartition(".")
    if extension not in _EXTENSIONS or not stem:
        return None
    query = {"format": _EXTENSIONS[extension]}
    for token in stem.split("-"):
        found = next(((p, parameter) for p, parameter in _LINK_TOKENS if p.fullmatch(token)), None)
        if found is None:
            return None
        pattern, parameter = found
        if parameter is None:
            continue
        if parameter in query:
            return None
        value = pattern.fullmatch(token).group(1)  # type: ignore[union-attr]
        # Flags are named by their token; a rectangle's commas are underscores in a name.
        if parameter == "watermark":
            value = value or "true"
        query[parameter] = "true" if parameter in ("flip", "flop", "upscale") else value.replace("_", ",")
    try:  # signed by us, so valid when made; limits may have changed since
        return parse_variant(query, accept, replace(limits, presets_only=False))
    except InvalidField:
        return None


def _names(limits: VariantSettings) -> list[str]:
    return [name for name, _ in limits.presets]


def _side(query: Mapping[str, str], name: str, most: int) -> int | None:
    if name not in query:
        return None
    return whole_number(query, name, 0, 1, most)


def _word(query: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = query.get(name)
    if raw is None:
        return default
    value = raw.lower() if raw.isascii() else raw
    value = _SPELLINGS.get(value, value)
    if value not in allowed:
        extra = ", auto" if name == "format" else ""
        raise InvalidField(f"{name} must be one of {', '.join(allowed)}{extra}")
    return value


def accepted_types(accept: str) -> set[str]:
    """The media types an `Accept` header names as acceptable: those with `q=0` ("not
    acceptable", RFC 9110) are left out, other weights kept alike (we prefer smaller files)."""
    accepted = set()
    for part in accept.split(",")[:MAX_ACCEPT_PARTS]:
        media_type, *parameters = part.split(";")
        if not any(_refused(p) for p in parameters):
            accepted.add(media_type.strip().lower())
    return accepted


#: Media ranges of one `Accept` header looked at (a real browser sends about five).
MAX_ACCEPT_PARTS = 64


def _refused(parameter: str) -> bool:
    name, _, value = parameter.partition("=")
    if name.strip().lower() != "q":
        return False
    try:
        return float(value.strip()) == 0
    except ValueError:
        return False


def _best(accept: str) -> str:
    """The smallest-file format the client explicitly accepts (`image/*` is no promise of AVIF)."""
    accepted = accepted_types(accept)
    return next((fmt for fmt in NEGOTIATED if f"image/{fmt}" in accepted), "jpeg")
