"""What an original says about itself beyond its pixels, read once by the worker that makes its
renditions and kept on its record for `GET /images/{id}/info`: colour space, bit depth, the ICC
profile's name, the camera's EXIF fields, where it was taken (GPS), and which private metadata
it carries (EXIF, GPS, XMP, IPTC), so the owner sees what anyone else would have learnt from the
file as uploaded.

Header reads only (libvips opens lazily; Pillow parses the EXIF block libvips found), bounded in
what is kept: a handful of fields, each string cut short. A block that does not parse is left
out, never an error: the renditions are what the job is for.
"""

from __future__ import annotations

import io
import logging
import math
from fractions import Fraction
from typing import Any

from PIL import Image, ImageCms

log = logging.getLogger(__name__)

#: Longest string kept from a file (a camera's name, a lens, an ICC description).
MAX_TEXT = 96
#: libvips' band formats, as bits per sample.
_BITS = {"uchar": 8, "char": 8, "ushort": 16, "short": 16, "uint": 32, "int": 32, "float": 32, "double": 64}
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
#: IFD0 tags that say nothing about who, where or with what: the orientation a strip keeps, the
#: resolution and sampling, and the pointers to the other directories (judged on their own).
_HARMLESS = {0x0112, 0x011A, 0x011B, 0x0128, 0x0213, _EXIF_IFD, _GPS_IFD}
#: IFD0 and Exif IFD tags kept, by the name they are shown under.
_CAMERA = {"make": (0, 0x010F), "model": (0, 0x0110), "software": (0, 0x0131)}
_SHOT = {
    "lens": 0xA434,
    "taken_at": 0x9003,
    "exposure_time": 0x829A,
    "f_number": 0x829D,
    "iso": 0x8827,
    "focal_length_mm": 0x920A,
}


def describe(image: Any) -> dict[str, Any]:
    """The metadata of a libvips image opened on the original (its header: nothing decoded)."""
    fields = set(image.get_fields())
    found: dict[str, Any] = {
        "colour_space": str(image.interpretation),
        "bit_depth": _BITS.get(str(image.format), 8),
        "bands": int(image.bands),
        "alpha": bool(image.hasalpha()),
        "icc": _icc_name(image.get("icc-profile-data")) if "icc-profile-data" in fields else None,
        "orientation": int(image.get("orientation")) if "orientation" in fields else 1,
        "exif": None,
        "gps": None,
    }
    private = []
    if "exif-data" in fields and (exif := _exif(image.get("exif-data"))) is not None:
        camera = _camera(exif)
        found["exif"] = camera or None
        gps = _gps(exif.get_ifd(_GPS_IFD))
        if camera or gps or set(exif) - _HARMLESS:
            private.append("exif")
        if gps:
            found["gps"] = gps
            private.append("gps")
    for name, field in (("xmp", "xmp-data"), ("iptc", "iptc-data")):
        if field in fields and bytes(image.get(field)).strip(b" \t\r\n\x00"):  # stripped: blank
            private.append(name)
    found["private"] = private
    return found


def _icc_name(profile: bytes) -> str | None:
    try:
        name = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
    except (OSError, ImageCms.PyCMSError, TypeError, ValueError):
        return None
    return _text(name)


def _exif(block: bytes) -> Image.Exif | None:
    exif = Image.Exif()
    try:
        exif.load(bytes(block))
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError) as exc:
        log.info("an EXIF block did not parse: %s", exc)
        return None
    return exif


def _camera(exif: Image.Exif) -> dict[str, Any]:
    shot = exif.get_ifd(_EXIF_IFD)
    out: dict[str, Any] = {name: _plain(exif.get(tag)) for name, (_, tag) in _CAMERA.items()}
    out |= {name: _plain(shot.get(tag)) for name, tag in _SHOT.items()}
    if isinstance(exposure := _plain(shot.get(_SHOT["exposure_time"])), float | int) and exposure > 0:
        seconds = Fraction(exposure).limit_denominator(100_000)
        out["exposure_time"] = f"1/{round(1 / seconds)}" if seconds < 1 else f"{float(seconds):g}"
    return {k: v for k, v in out.items() if v is not None}


def _gps(gps: dict[int, Any]) -> dict[str, float] | None:
    """Decimal degrees (and metres) from the GPS IFD, or None if it holds no position."""
    lat, lon = _degrees(gps.get(2), gps.get(1), "S"), _degrees(gps.get(4), gps.get(3), "W")
    if lat is None or lon is None:
        return None
    out = {"latitude": round(lat, 6), "longitude": round(lon, 6)}
    try:
        altitude = float(gps[6])
        out["altitude_m"] = round(-altitude if gps.get(5) in (1, b"\x01") else altitude, 1)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        pass
    return out


def _degrees(value: Any, ref: Any, negative: str) -> float | None:
    try:
        d, m, s = (float(part) for part in value)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    degrees = d + m / 60 + s / 3600
    if not -180 <= degrees <= 180:
        return None
    return -degrees if str(ref).strip().upper() == negative else degrees


def _plain(value: Any) -> str | int | float | None:
    """A JSON-safe, bounded form of one EXIF value."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, int):
        return value
    if isinstance(value, tuple) and len(value) == 2:  # a rational as (numerator, denominator)
        value = value[0] / value[1] if value[1] else None
        if value is None:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        return _text(str(value))
    return round(number, 4) if math.isfinite(number) else None  # NaN from a 0/0 rational


def _text(value: str) -> str | None:
    cleaned = "".join(c for c in value if c.isprintable()).strip().strip("\x00")
    return cleaned[:MAX_TEXT] or None
