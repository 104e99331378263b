"""What an upload is and whether it is a bomb, decided from its first bytes in pure Python.

The web tier uses this on every upload, and the consumer's parent process handles its types,
so it imports no image library: untrusted bytes are decoded only in worker processes
(`pipeline.imaging.renditions`), where a crash or a hang costs one job and not the API.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from config.settings import ImagingSettings
from pipeline.core import headers
from pipeline.core.errors import FormatNotAllowed, NotAnImage, PermanentError, TooManyFrames, TooManyPixels

#: How many leading bytes `detect_format` needs.
MAGIC_BYTES_NEEDED = 32
CONTENT_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "tiff": "image/tiff",
    "heif": "image/heif",
    "avif": "image/avif",
}
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_READERS: dict[str, headers.Reader] = {
    "jpeg": headers.jpeg,
    "png": headers.png,
    "gif": headers.gif,
    "webp": headers.webp,
    "tiff": headers.tiff,
    "heif": headers.bmff,
    "avif": headers.bmff,
}


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without decoding pixels."""

    format: str
    width: int
    height: int
    frames: int = 1
    cmyk: bool = False
    #: The EXIF orientation (1-8) the dimensions above are displayed with, where it was read.
    orientation: int = 1
    #: Whether it has an alpha channel (read by the decoder's header; False where unknown).
    alpha: bool = False


def detect_format(head: bytes) -> str | None:
    """Name the image format from its leading bytes, or None; never trusts names or headers."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            return "avif"
        if brand in _HEIF_BRANDS:
            return "heif"
    return None


def check_format(head: bytes, allowed: Iterable[str]) -> str:
    """Return the detected format or raise the permanent error a client or the DLQ should see."""
    fmt = detect_format(head)
    if fmt is None:
        raise NotAnImage()
    if fmt not in allowed:
        raise FormatNotAllowed(f"{fmt} images are not accepted")
    return fmt


def read_header_prefix(data: bytes, fmt: str) -> ImageInfo | None:
    """Dimensions (and frames seen, a lower bound) from the first bytes of a `fmt` image.

    None when the prefix is not enough to tell; `CorruptImage` or `NotAnImage` when the header
    contradicts itself or `fmt`. Nothing is decoded: see `pipeline.core.headers`.
    """
    reader = _READERS.get(fmt)
    if reader is None:
        return None
    try:
        header = reader(data)
    except headers.PrefixTooShort:
        return None
    if header is None:
        return None
    return ImageInfo(fmt, header.width, header.height, header.frames)


def check_limits(info: ImageInfo, imaging: ImagingSettings) -> None:
    """Refuse decompression bombs: too many pixels or frames, judged from the header."""
    if info.width * info.height > imaging.max_pixels:
        raise TooManyPixels(
            f"{info.width}x{info.height} is more than the {imaging.max_pixels} pixels allowed"
        )
    if info.frames > imaging.max_frames:
        raise TooManyFrames(f"{info.frames} frames is more than the {imaging.max_frames} allowed")


def screen_prefix(prefix: bytes, imaging: ImagingSettings) -> ImageInfo | None:
    """Refuse a bomb at upload time from the first bytes, when they hold a readable header; the
    header read (None where there is none to read), for what the image will cost to decode.

    A header that cannot be read from the prefix alone (a JPEG with large metadata before its
    frame header, a partial GIF) or that contradicts itself is not judged here: the consumer
    reads the whole image with the decoder anyway, and refuses it with the precise reason.
    """
    fmt = detect_format(prefix[:MAGIC_BYTES_NEEDED])
    if fmt is None or fmt not in imaging.allowed_formats:
        return None  # refused by the type check, with its own error
    try:
        info = read_header_prefix(prefix, fmt)
    except PermanentError:
        return None
    if info is not None:
        check_limits(info, imaging)
    return info


def decode_megapixels(info: ImageInfo | None) -> float:
    """What decoding an image costs, in megapixels: width x height x frames (at least one)."""
    if info is None:
        return 1.0
    return max(1.0, info.width * info.height * info.frames / 1e6)
