"""Image dimensions from the first bytes of a file, read by walking the container in pure Python.

The API screens every upload for decompression bombs from its first 64 KiB. A decoder library
would do that by running its parsers on untrusted bytes inside the web process (and loading it
there at all); these readers only follow lengths and offsets, check every one against the data
they have, and give up on anything they do not need. Each reader returns a `Header`, or None
when the prefix ends before the answer, and raises only `CorruptImage` or `NotAnImage` when the
bytes contradict themselves. Every loop is bounded by the data and by a count, so no input can
make one spin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Literal, NamedTuple

from pipeline.errors import CorruptImage, NotAnImage

#: Most segments, chunks, blocks or boxes one reader walks; real headers need a few dozen.
MAX_ITEMS = 100_000
#: Most entries of the first TIFF directory looked at; width and length are among the first.
MAX_IFD_ENTRIES = 4096
#: End of the top-level BMFF container: the file, whose length the prefix does not tell.
_TO_THE_END = 1 << 64

ByteOrder = Literal["big", "little"]


class Header(NamedTuple):
    """Dimensions, and how many frames the prefix shows (a lower bound)."""

    width: int
    height: int
    frames: int = 1


class PrefixTooShort(Exception):
    """The prefix ends before the header does: not enough to tell, which is not an error."""


#: A reader for one format: a `Header`, or None when the prefix is not enough to tell.
Reader = Callable[[bytes], Header | None]


def _take(data: bytes, pos: int, size: int) -> bytes:
    if pos < 0 or pos + size > len(data):
        raise PrefixTooShort()
    return data[pos : pos + size]


def _uint(data: bytes, pos: int, size: int, order: ByteOrder = "big") -> int:
    return int.from_bytes(_take(data, pos, size), order)


def _signed(data: bytes, signatures: tuple[bytes, ...], name: str) -> bytes:
    """The magic bytes (of those the format may start with) that `data` starts with."""
    for signature in signatures:
        if data.startswith(signature):
            return signature
    if any(len(data) < len(sig) and sig.startswith(data) for sig in signatures):
        raise PrefixTooShort()
    raise NotAnImage(f"the data does not start like {name}")


def _sized(width: int, height: int, frames: int = 1) -> Header:
    if width <= 0 or height <= 0:
        raise CorruptImage("the image has no pixels")
    return Header(width, height, max(1, frames))


# JPEG --------------------------------------------------------------------------------------------

#: Start-of-frame markers (DHT, JPG and DAC share the range but are not frames).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: Markers without a length: TEM, RST0-7, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})


def jpeg(data: bytes) -> Header | None:
    """Walk the markers to the frame header, skipping APPn, COM, tables by their length."""
    _signed(data, (b"\xff\xd8",), "JPEG")
    pos = 2
    for _ in range(MAX_ITEMS):
        # As libjpeg does: bytes before a marker are skipped, and so are 0xFF fill bytes.
        pos = data.find(b"\xff", pos)
        if pos < 0:
            return None
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            return None
        marker = data[pos]
        pos += 1
        if marker == 0x00 or marker in _STANDALONE:  # 0xFF00 is a stuffed byte, not a marker
            continue
        if marker in (0xD9, 0xDA):
            raise CorruptImage("the JPEG has no frame header before its image data")
        length = _uint(data, pos, 2)
        if length < 2:
            raise CorruptImage("a JPEG segment is shorter than its own length field")
        if marker in _SOF:
            if length < 8:
                raise CorruptImage("the JPEG frame header is too short")
            return _sized(_uint(data, pos + 5, 2), _uint(data, pos + 3, 2))
        pos += length
    return None


# PNG ---------------------------------------------------------------------------------------------

_PNG_MAX = (1 << 31) - 1


def png(data: bytes) -> Header | None:
    """IHDR for the size; an APNG's acTL (before the image data) for its frame count."""
    _signed(data, (b"\x89PNG\r\n\x1a\n",), "PNG")
    if _uint(data, 8, 4) != 13 or _take(data, 12, 4) != b"IHDR":
        raise CorruptImage("the PNG does not start with a valid IHDR chunk")
    width, height = _uint(data, 16, 4), _uint(data, 20, 4)
    if width > _PNG_MAX or height > _PNG_MAX:
        raise CorruptImage("the PNG's dimensions are out of range")
    frames = 1
    pos = 8 + 12 + 13
    for _ in range(MAX_ITEMS):
        if pos + 8 > len(data):
            break
        length, kind = _uint(data, pos, 4), data[pos + 4 : pos + 8]
        if length > _PNG_MAX:
            raise CorruptImage("a PNG chunk length is out of range")
        if kind in (b"IDAT", b"IEND"):  # acTL must come before the image data
            break
        if kind == b"acTL":
            if length != 8:
                raise CorruptImage("the APNG animation control chunk has the wrong length")
            if pos + 12 <= len(data):
                frames = _uint(data, pos + 8, 4)
            break
        pos += 12 + length
    return _sized(width, height, frames)


# GIF ---------------------------------------------------------------------------------------------


def _colour_table(flags: int) -> int:
    return 3 << ((flags & 0x07) + 1) if flags & 0x80 else 0


def _after_sub_blocks(data: bytes, pos: int) -> int:
    """Position after a chain of data sub-blocks (or the end of the data, if it ends first)."""
    for _ in range(MAX_ITEMS):
        if pos >= len(data):
            return len(data)
        size = data[pos]
        pos += 1 + size
        if size == 0:
            return pos
    return len(data)


def gif(data: bytes) -> Header | None:
    """The logical screen, grown to every image descriptor seen, and how many there were."""
    _signed(data, (b"GIF87a", b"GIF89a"), "GIF")
    width, height = _uint(data, 6, 2, "little"), _uint(data, 8, 2, "little")
    pos = 13 + _colour_table(_take(data, 10, 1)[0])
    frames = 0
    complete = False
    for _ in range(MAX_ITEMS):
        if pos >= len(data):
            break
        block = data[pos]
        if block == 0x3B:  # trailer
            complete = True
            break
        if block == 0x2C:  # image descriptor
            if pos + 10 > len(data):
                break
            left, top = _uint(data, pos + 1, 2, "little"), _uint(data, pos + 3, 2, "little")
            frame_width, frame_height = _uint(data, pos + 5, 2, "little"), _uint(data, pos + 7, 2, "little")
            # Decoders grow the canvas to a frame that does not fit: so must the pixel count.
            width, height = max(width, left + frame_width), max(height, top + frame_height)
            frames += 1
            # The descriptor, its local colour table, the LZW code size, then the data.
            pos = _after_sub_blocks(data, pos + 10 + _colour_table(data[pos + 9]) + 1)
        elif block == 0x21:  # extension: label, then sub-blocks
            pos = _after_sub_blocks(data, pos + 2)
        else:
            pos += 1  # a stray byte between blocks: skipped, as Pillow does
    if (width == 0 or height == 0) and not complete and frames == 0:
        return None  # a zero screen may still be grown by a frame beyond the prefix
    return _sized(width, height, frames)


# WebP --------------------------------------------------------------------------------------------


def webp(data: bytes) -> Header | None:
    """The first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended: canvas, animation)."""
    _signed(data, (b"RIFF",), "WebP")
    if _take(data, 8, 4) != b"WEBP":
        raise NotAnImage("the data does not start like WebP")
    kind, payload = _take(data, 12, 4), 20
    if kind == b"VP8 ":
        if _uint(data, payload, 3, "little") & 0x01:
            raise CorruptImage("the WebP does not start with a key frame")
        if _take(data, payload + 3, 3) != b"\x9d\x01\x2a":
            raise CorruptImage("the WebP key frame has no start code")
        width = _uint(data, payload + 6, 2, "little") & 0x3FFF  # the top two bits are a scale
        height = _uint(data, payload + 8, 2, "little") & 0x3FFF
        return _sized(width, height)
    if kind == b"VP8L":
        if _take(data, payload, 1) != b"\x2f":
            raise CorruptImage("the lossless WebP has no signature")
        bits = _uint(data, payload + 1, 4, "little")
        return _sized((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if kind == b"VP8X":
        width = _uint(data, payload + 4, 3, "little") + 1
        height = _uint(data, payload + 7, 3, "little") + 1
        return _sized(width, height, _webp_frames(data, 12))
    raise CorruptImage("the WebP starts with an unknown chunk")


def _webp_frames(data: bytes, pos: int) -> int:
    """ANMF chunks whose header lies in the prefix: a lower bound on the frame count."""
    frames = 0
    for _ in range(MAX_ITEMS):
        if pos + 8 > len(data):
            break
        size = _uint(data, pos + 4, 4, "little")
        if data[pos : pos + 4] == b"ANMF":
            frames += 1
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return frames


# TIFF --------------------------------------------------------------------------------------------

_TIFF_ORDERS: dict[bytes, ByteOrder | None] = {
    b"II*\x00": "little",
    b"MM\x00*": "big",
    b"II+\x00": None,  # BigTIFF
    b"MM\x00+": None,
}
_SHORT, _LONG = 3, 4
_WIDTH, _LENGTH = 256, 257


def tiff(data: bytes) -> Header | None:
    """ImageWidth and ImageLength of the first directory (BigTIFF is left to the decoder)."""
    order = _TIFF_ORDERS[_signed(data, tuple(_TIFF_ORDERS), "TIFF")]
    if order is None:
        return None
    directory = _uint(data, 4, 4, order)
    if directory < 8:
        raise CorruptImage("the TIFF directory offset points into its header")
    count = _uint(data, directory, 2, order)
    found: dict[int, int] = {}
    for index in range(min(count, MAX_IFD_ENTRIES)):
        entry = directory + 2 + 12 * index
        tag = _uint(data, entry, 2, order)
        if tag not in (_WIDTH, _LENGTH):
            continue
        kind, values = _uint(data, entry + 2, 2, order), _uint(data, entry + 4, 4, order)
        if kind not in (_SHORT, _LONG) or values != 1:
            raise CorruptImage("a TIFF image dimension has the wrong type")
        # A value that fits in the entry is stored at its start, in the file's byte order.
        found[tag] = _uint(data, entry + 8, 2 if kind == _SHORT else 4, order)
        if len(found) == 2:
            return _sized(found[_WIDTH], found[_LENGTH])
    if count > MAX_IFD_ENTRIES:
        return None
    raise CorruptImage("the first TIFF directory has no image width or length")


# HEIF and AVIF (ISO base media file format) ----------------------------------------------------


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, end) of each box in [start, end); PrefixTooShort past the data."""
    pos = start
    for _ in range(MAX_ITEMS):
        if pos >= end:
            return
        size, kind, header = _uint(data, pos, 4), _take(data, pos + 4, 4), 8
        if size == 1:  # a 64-bit size follows the type
            size, header = _uint(data, pos + 8, 8), 16
        elif size == 0:  # the box extends to the end of its container
            size = end - pos
        if size < header or pos + size > end:
            raise CorruptImage("an ISO media box does not fit in its container")
        yield kind, pos + header, pos + size
        pos += size
    raise PrefixTooShort()


def _child(data: bytes, start: int, end: int, wanted: bytes) -> tuple[int, int]:
    for kind, payload, stop in _boxes(data, start, end):
        if kind == wanted:
            return payload, stop
    raise CorruptImage(f"the HEIF metadata has no {wanted.decode()} box")


def bmff(data: bytes) -> Header | None:
    """The largest image spatial extent (ispe) among the item properties in meta/iprp/ipco."""
    if _take(data, 4, 4) != b"ftyp":
        raise NotAnImage("the data does not start like HEIF")
    for kind, payload, stop in _boxes(data, 0, _TO_THE_END):
        if kind == b"meta":  # a full box: version and flags come before its children
            properties, end = _child(data, payload + 4, stop, b"iprp")
            return _largest_extent(data, *_child(data, properties, end, b"ipco"))
    return None  # not reached: the walk stops with PrefixTooShort at the end of the data


def _largest_extent(data: bytes, start: int, end: int) -> Header:
    """The largest ispe: the primary image's, or a grid's that its tiles make up."""
    largest: tuple[int, int] | None = None
    for kind, payload, stop in _boxes(data, start, end):
        if kind != b"ispe":
            continue
        if payload + 12 > stop:  # version and flags, then width and height
            raise CorruptImage("an image spatial extent box is too short")
        extent = _uint(data, payload + 4, 4), _uint(data, payload + 8, 4)
        if largest is None or extent[0] * extent[1] > largest[0] * largest[1]:
            largest = extent
    if largest is None:
        raise CorruptImage("the HEIF item properties have no image size")
    return _sized(*largest)
