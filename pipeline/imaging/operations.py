"""What a variant does to the pixels besides the resize, parsed strictly into one canonical form.

Each operation is a query parameter with its range; the worker applies them in this order, so a
request means the same whatever order its parameters come in:

1. `crop=x,y,w,h`: a rectangle of the original, in its pixels as displayed (upright), before
   anything else. A rectangle running past the image's edge is cut at the edge.
2. `trim` (a threshold, 1-100; `true` is 10): a border of one colour (the top-left pixel's,
   within the threshold) removed.
3. The resize into the box (`fit`); `fit=pad` fits the whole image in and fills the rest of the
   box with `bg`.
4. `rotate` (90, 180 or 270, clockwise), then `flip` (top to bottom) and `flop` (left to right).
   `w` and `h` describe the result as delivered, turned or not.
5. `blur` or `sharpen` (a Gaussian sigma, in the output's pixels).
6. `watermark` (`true`: the owner's, uploaded with `PUT /watermark`; `site`: the deployment's,
   `IMGSVC_VARIANT_WATERMARK_FILE`) laid over the result at `gravity` (`centre`, `north`,
   `north-east`..., `south-east` by default), `opacity` (0.05-1, 0.5) and `scale` (its width as a
   fraction of the output's, 0.05-1, 0.25), a margin of 2% of the output's shorter side away from
   the edges it is placed against.
7. `bg` (`rrggbb`, `rgb`, `rrggbbaa` or `transparent`): what transparency is flattened onto for
   JPEG, and `fit=pad`'s filling. White unless given.

`dpr` (1-4) is no operation: it multiplies `w` and `h` (`pipeline.imaging.variants`), so
`w=200&dpr=2` is `w=400`, one variant. Pure, like the rest of the variant's parsing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from config.settings import VARIANT_OPERATIONS
from pipeline.core.errors import InvalidField
from pipeline.core.untrusted import ascii_flag, ascii_int

#: The operations' query parameters (besides `crop`, shared with the crop modes), `dpr` first.
PARAMETERS = VARIANT_OPERATIONS
ROTATIONS = (0, 90, 180, 270)
BLUR_RANGE = (0.3, 50.0)
SHARPEN_RANGE = (0.3, 10.0)
DPR_RANGE = (1.0, 4.0)
OPACITY_RANGE = (0.05, 1.0)
SCALE_RANGE = (0.05, 1.0)
#: Where a watermark goes, with the code its name is written with in a variant's name.
GRAVITIES = {
    "centre": "c", "north": "n", "north-east": "ne", "east": "e", "south-east": "se",
    "south": "s", "south-west": "sw", "west": "w", "north-west": "nw",
}  # fmt: skip
_GRAVITY_OF_CODE = {code: name for name, code in GRAVITIES.items()}
WATERMARKS = ("own", "site")
#: `trim=true`: libvips' own default threshold.
DEFAULT_TRIM = 10
WHITE = "ffffff"
TRANSPARENT = "ffffff00"
_REGION = re.compile(r"([0-9]{1,5}),([0-9]{1,5}),([0-9]{1,5}),([0-9]{1,5})")
_DECIMAL = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3})?")
_HEX = re.compile(r"[0-9a-f]{3}|[0-9a-f]{6}|[0-9a-f]{8}")
_TRUE, _FALSE = ("true", "1"), ("false", "0")
_SIGMA = " (a sigma, in pixels)"


@dataclass(frozen=True)
class Operations:
    """One variant's operations, canonical: each at its neutral value unless asked for."""

    #: `crop=x,y,w,h`: left, top, width and height in the original's displayed pixels.
    region: tuple[int, int, int, int] | None = None
    trim: int = 0
    rotate: int = 0
    flip: bool = False
    flop: bool = False
    #: Sigmas to one decimal; 0 is none.
    blur: float = 0.0
    sharpen: float = 0.0
    #: `rrggbb` or `rrggbbaa` (lower case; an opaque `rrggbbff` is written `rrggbb`).
    bg: str = WHITE
    #: Whose watermark (`own`, `site`), or None; where, how opaque, how wide (of the output's).
    watermark: str | None = None
    gravity: str = "south-east"
    opacity: float = 0.5
    scale: float = 0.25
    #: The watermark image's digest, from its owner's record when the variant is served (not
    #: the query): part of the name, so a new watermark makes new variants.
    watermark_digest: str = ""

    @property
    def turns_quarter(self) -> bool:
        """Whether the output's width is the source's height."""
        return self.rotate in (90, 270)

    @property
    def reshapes(self) -> bool:
        """Whether the pixels change place or value (not just the size): an animation keeps only
        its first frame then, as every output format but WebP does anyway."""
        return self != Operations(bg=self.bg)

    def with_watermark(self, digest: str) -> Operations:
        """These operations with the watermark image `digest` (the one the variant is made with)."""
        return replace(self, watermark_digest=digest) if self.watermark else self

    def tokens(self) -> list[str]:
        """The parts of the variant's canonical name, in the order the worker applies them."""
        parts = []
        if self.region:
            parts.append("crop" + "_".join(map(str, self.region)))
        if self.trim:
            parts.append(f"trim{self.trim}")
        if self.rotate:
            parts.append(f"rot{self.rotate}")
        parts += ["flip"] * self.flip + ["flop"] * self.flop
        if self.blur:
            parts.append(f"blur{self.blur:g}")
        if self.sharpen:
            parts.append(f"sharpen{self.sharpen:g}")
        if self.watermark:
            mark = "wm" if self.watermark == "own" else "wmsite"
            parts += [mark + self.watermark_digest, f"g{GRAVITIES[self.gravity]}"]
            parts += [f"op{self.opacity:g}", f"sc{self.scale:g}"]
        if self.bg != WHITE:
            parts.append(f"bg{self.bg}")
        return parts

    def source_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the resize starts from, for an original of `width` x `height` (displayed):
        the rectangle's, cut at the image's edge, and turned a quarter if rotated. `InvalidField`
        if the rectangle starts outside the image."""
        if self.region:
            x, y, w, h = self.region
            if x >= width or y >= height:
                raise InvalidField(f"crop={x},{y},{w},{h} starts outside the {width}x{height} image")
            width, height = min(w, width - x), min(h, height - y)
        return (height, width) if self.turns_quarter else (width, height)

    def rgba(self) -> list[int]:
        """`bg` as red, green, blue and alpha, 0-255 each."""
        full = self.bg if len(self.bg) == 8 else self.bg + "ff"
        return [int(full[i : i + 2], 16) for i in range(0, 8, 2)]


def parse_operations(query: Mapping[str, str], fmt: str) -> Operations:
    """The operations a query asks for (`crop` as a rectangle is parsed by `parse_region`).
    `InvalidField` names the parameter and what it takes."""
    blur = _decimal(query, "blur", BLUR_RANGE, default=0.0, places=1, unit=_SIGMA)
    sharpen = _decimal(query, "sharpen", SHARPEN_RANGE, default=0.0, places=1, unit=_SIGMA)
    if blur and sharpen:
        raise InvalidField("blur and sharpen cannot be combined: ask for one")
    rotate = whole_number(query, "rotate", 0, 0, 270)
    if rotate not in ROTATIONS:
        raise InvalidField(f"rotate must be one of {', '.join(map(str, ROTATIONS))} (degrees, clockwise)")
    bg = _colour(query.get("bg"))
    if len(bg) == 8 and fmt == "jpeg":
        raise InvalidField("bg with transparency needs format png, webp or avif: JPEG has no alpha")
    watermark = _watermark(query.get("watermark"))
    placed = [name for name in ("gravity", "opacity", "scale") if name in query]
    if placed and watermark is None:
        raise InvalidField(f"{placed[0]} places a watermark: it goes with watermark=true or site")
    gravity = query.get("gravity", "south-east").lower()
    gravity = _GRAVITY_OF_CODE.get(gravity, gravity)
    if gravity not in GRAVITIES:
        raise InvalidField(f"gravity must be one of {', '.join(GRAVITIES)}")
    return Operations(
        region=None,
        trim=_trim(query.get("trim")),
        rotate=rotate,
        flip=flag(query, "flip"),
        flop=flag(query, "flop"),
        blur=blur,
        sharpen=sharpen,
        bg=bg,
        watermark=watermark,
        gravity=gravity,
        opacity=_decimal(query, "opacity", OPACITY_RANGE, default=0.5, places=2),
        scale=_decimal(query, "scale", SCALE_RANGE, default=0.25, places=2),
    )


def parse_region(raw: str) -> tuple[int, int, int, int] | None:
    """`x,y,w,h` (whole pixels; width and height at least 1), or None if `raw` is not one."""
    found = _REGION.fullmatch(raw)
    if found is None:
        return None
    x, y, w, h = (int(v) for v in found.groups())
    if w < 1 or h < 1:
        raise InvalidField("crop=x,y,w,h needs a width and height of at least 1 pixel")
    return x, y, w, h


def parse_dpr(query: Mapping[str, str]) -> float:
    """`dpr`, 1 to 4, to two decimals."""
    return _decimal(query, "dpr", DPR_RANGE, default=1.0, places=2)


def _decimal(
    query: Mapping[str, str],
    name: str,
    bounds: tuple[float, float],
    *,
    default: float,
    places: int,
    unit: str = "",
) -> float:
    """Parameter `name` as a number within `bounds` to `places` decimals (`default` if absent)."""
    raw = query.get(name)
    if raw is None:
        return default
    value = _to_decimal(raw)
    lo, hi = bounds
    if value is None or not lo <= value <= hi:
        raise InvalidField(f"{name} must be a number from {lo:g} to {hi:g}{unit}")
    return round(value, places)


def _watermark(raw: str | None) -> str | None:
    if raw is None or raw.lower() in _FALSE:
        return None
    value = raw.lower()
    if value in _TRUE or value == "own":
        return "own"
    if value == "site":
        return "site"
    raise InvalidField("watermark must be true (yours, PUT /watermark), site (the deployment's) or false")


def _to_decimal(raw: str) -> float | None:
    return float(raw) if _DECIMAL.fullmatch(raw) else None


def whole_number(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """Parameter `name` as a whole number from `lo` to `hi` (`default` if absent)."""
    raw = query.get(name)
    if raw is None:
        return default
    value = ascii_int(raw, lo, hi)
    if value is None:
        raise InvalidField(f"{name} must be a whole number from {lo} to {hi}")
    return value


def flag(query: Mapping[str, str], name: str) -> bool:
    """Parameter `name` as `true`/`1` or `false`/`0` (false if absent)."""
    raw = query.get(name)
    value = False if raw is None else ascii_flag(raw)
    if value is None:
        raise InvalidField(f"{name} must be true or false")
    return value


def _trim(raw: str | None) -> int:
    if raw is None or raw.lower() in _FALSE:
        return 0
    if raw.lower() in _TRUE[:1]:
        return DEFAULT_TRIM
    value = ascii_int(raw, 1, 100)
    if value is None:
        raise InvalidField("trim must be true, false or a threshold from 1 to 100")
    return value


def _colour(raw: str | None) -> str:
    if raw is None:
        return WHITE
    value = raw.lower().removeprefix("#")
    if value == "transparent":
        return TRANSPARENT
    if not _HEX.fullmatch(value):
        raise InvalidField("bg must be a colour: rrggbb, rgb or rrggbbaa in hex, or transparent")
    if len(value) == 3:
        value = "".join(c * 2 for c in value)
    return value.removesuffix("ff") if len(value) == 8 and value.endswith("ff") else value
