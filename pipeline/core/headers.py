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

from pipeline.core.errors import CorruptImage, NotAnImage

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
    found = _jpeg_frame(data)
    return found[1] if found else None


#: Huffman-coded frames (arithmetic coding, C9-CF, can code a block in under a bit).
_HUFFMAN_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7})
#: Pixels a byte of Huffman-coded JPEG data can cover at most: every 8 x 8 block costs at least
#: one bit (a DC difference; two in a baseline scan, with the end of block), so 512 pixels a byte
#: is the floor; half of that leaves room for any encoder.
JPEG_PIXELS_PER_BYTE = 1024


def jpeg_too_short(data: bytes) -> str | None:
    """Why a whole JPEG file cannot hold the pixels its frame header claims (a truncated file, or
    a forged header over a few bytes, which decoders fill with grey), or None."""
    found = _jpeg_frame(data)
    if found is None:
        return None
    marker, header = found
    pixels = header.width * header.height
    if marker in _HUFFMAN_SOF and len(data) * JPEG_PIXELS_PER_BYTE < pixels:
        return (
            f"the JPEG says it is {header.width}x{header.height}, but its {len(data)} bytes cannot "
            "code that many pixels (truncated?)"
        )
    return None


def _jpeg_frame(data: bytes) -> tuple[int, Header] | None:
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
            return marker, _sized(_uint(data, pos + 5, 2), _uint(data, pos + 3, 2))
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
            header = _largest_extent(data, *_child(data, properties, end, b"ipco"))
            _check_coded_frames(data, payload + 4, stop, header)
            return header
    return None  # not reached: the walk stops with PrefixTooShort at the end of the data


#: Bytes of an AV1 item read for its sequence header (padding OBUs may come first).
AV1_HEAD_BYTES = 64 * 1024


def _check_coded_frames(data: bytes, start: int, end: int, header: Header) -> None:
    """`CorruptImage` when an AV1 item's sequence header codes frames larger than every extent the
    file declares: that is what a decoder would really allocate for, whatever `ispe` claims (a
    64 x 64 `ispe` over a 16000 x 16000 stream decoded at 497 MB). Each `av01` item's data (found
    through `iinf` and `iloc`, in the file or in `idat`, over all its extents) starts with its
    OBUs. An item whose data goes past the bytes at hand (an upload's prefix) is judged where its
    data is whole (the worker's whole file); a whole one with no sequence header is corrupt."""
    boxes = {kind: (payload, stop) for kind, payload, stop in _boxes(data, start, end)}
    if b"iinf" not in boxes or b"iloc" not in boxes:
        return
    av1_items = _items_of_type(data, *boxes[b"iinf"], b"av01")
    idat = boxes.get(b"idat")
    for item, method, extents in _item_extents(data, *boxes[b"iloc"]):
        if item not in av1_items:
            continue
        base, limit = 0, len(data)
        if method == 1:
            if idat is None:
                raise CorruptImage("an AV1 item is in an idat box the file does not have")
            base, limit = idat
        head, whole = bytearray(), True
        for offset, length in extents:
            first = base + offset
            last = limit if length == 0 else first + length  # 0: to the end of its container
            if first > limit or last > limit:
                whole = False  # past the bytes at hand
                last = min(last, limit)
            head += data[first:last][: AV1_HEAD_BYTES - len(head)]
            if len(head) >= AV1_HEAD_BYTES:
                break
        coded = av1_max_frame(bytes(head))
        if coded is None:
            if whole and len(head) < AV1_HEAD_BYTES:
                raise CorruptImage("an AV1 image item has no sequence header")
            continue
        if coded[0] > header.width or coded[1] > header.height:
            raise CorruptImage(
                f"the image says it is {header.width}x{header.height}, but its AV1 stream codes "
                f"frames of up to {coded[0]}x{coded[1]}"
            )


def bmff_metadata_items(data: bytes) -> list[tuple[str, list[tuple[int, int]]]]:
    """Where a whole HEIF or AVIF file keeps its EXIF and XMP items: (`exif` or `xmp`, the
    (start, end) of each of the item's extents in `data`) for each item
    (`pipeline.imaging.strip` overwrites them)."""
    for kind, payload, stop in _boxes(data, 0, len(data)):
        if kind != b"meta":
            continue
        boxes = {name: (start, end) for name, start, end in _boxes(data, payload + 4, stop)}
        if b"iinf" not in boxes or b"iloc" not in boxes:
            return []
        exif = _items_of_type(data, *boxes[b"iinf"], b"Exif")
        xmp = _items_of_type(data, *boxes[b"iinf"], b"mime")  # XMP is the mime item HEIF writers add
        items = []
        for item, method, extents in _item_extents(data, *boxes[b"iloc"]):
            if item not in exif and item not in xmp:
                continue
            base, limit = (0, len(data)) if method == 0 else boxes.get(b"idat", (0, 0))
            spans = []
            for offset, length in extents:
                first = base + offset
                last = limit if length == 0 else first + length
                if not base <= first <= last <= limit:
                    raise CorruptImage("a metadata item lies outside its container")
                spans.append((first, last))
            items.append(("exif" if item in exif else "xmp", spans))
        return items
    return []


def _items_of_type(data: bytes, start: int, end: int, wanted: bytes) -> set[int]:
    """The ids of the items `iinf` lists with type `wanted` (item info entries of version 2 or 3)."""
    version = _uint(data, start, 1)
    first = start + (6 if version == 0 else 8)  # version and flags, then a 16- or 32-bit count
    found = set()
    for kind, payload, _ in _boxes(data, first, end):
        if kind != b"infe":
            continue
        entry_version = _uint(data, payload, 1)
        if entry_version < 2:
            continue
        id_size = 2 if entry_version == 2 else 4
        item = _uint(data, payload + 4, id_size)
        if _take(data, payload + 4 + id_size + 2, 4) == wanted:
            found.add(item)
    return found


def _item_extents(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, list[tuple[int, int]]]]:
    """(item id, construction method, [(offset, length), ...]) of each item `iloc` places in the
    file (method 0) or in `idat` (method 1), offsets with the item's base offset added."""
    version = _uint(data, start, 1)
    sizes = _uint(data, start + 4, 1)
    offset_size, length_size = sizes >> 4, sizes & 0xF
    more = _uint(data, start + 5, 1)
    base_size, index_size = more >> 4, (more & 0xF) if version in (1, 2) else 0
    pos = start + 6
    count_size = 4 if version == 2 else 2
    count = _uint(data, pos, count_size)
    pos += count_size
    for _ in range(min(count, MAX_ITEMS)):
        item = _uint(data, pos, 4 if version == 2 else 2)
        pos += 4 if version == 2 else 2
        method = 0
        if version in (1, 2):
            method = _uint(data, pos, 2) & 0xF
            pos += 2
        pos += 2  # data_reference_index
        base = _uint(data, pos, base_size) if base_size else 0
        pos += base_size
        count = _uint(data, pos, 2)
        pos += 2
        extents = []
        for _ in range(min(count, MAX_ITEMS)):
            pos += index_size
            offset = _uint(data, pos, offset_size) if offset_size else 0
            length = _uint(data, pos + offset_size, length_size) if length_size else 0
            pos += offset_size + length_size
            extents.append((base + offset, length))
        if pos > end:
            raise CorruptImage("the item locations overrun their box")
        if method in (0, 1):
            yield item, method, extents


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


class _Bits:
    """Reads big-endian bit fields, as the AV1 specification's f(n) and uvlc() do."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def f(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._pos >> 3
            if byte >= len(self._data):
                raise PrefixTooShort()
            value = (value << 1) | ((self._data[byte] >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.f(1):
            zeros += 1
            if zeros >= 32:
                raise CorruptImage("an AV1 sequence header has a malformed number")
        return self.f(zeros) + (1 << zeros) - 1


_SEQUENCE_HEADER = 1


def av1_max_frame(obus: bytes) -> tuple[int, int] | None:
    """The largest frame (width, height) the sequence header among `obus` allows, or None when
    there is none (an `av1C` may carry no configuration OBUs)."""
    pos = 0
    for _ in range(64):
        if pos >= len(obus):
            return None
        header = obus[pos]
        kind, extension, sized = (header >> 3) & 0xF, header >> 2 & 1, header >> 1 & 1
        pos += 1 + extension
        size = len(obus) - pos
        if sized:
            size, pos = _leb128(obus, pos)
        if kind == _SEQUENCE_HEADER:
            try:
                return _sequence_max_frame(_Bits(obus[pos : pos + size]))
            except PrefixTooShort:
                raise CorruptImage("an AV1 sequence header is truncated") from None
        pos += size
    return None


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos >= len(data):
            raise CorruptImage("an AV1 OBU size is truncated")
        byte = data[pos]
        value |= (byte & 0x7F) << (7 * i)
        pos += 1
        if not byte & 0x80:
            return value, pos
    raise CorruptImage("an AV1 OBU size is too long")


def _sequence_max_frame(bits: _Bits) -> tuple[int, int]:
    """AV1 specification 5.5.1, as far as max_frame_width_minus_1 and max_frame_height_minus_1."""
    bits.f(3)  # seq_profile
    bits.f(1)  # still_picture
    if bits.f(1):  # reduced_still_picture_header
        bits.f(5)  # seq_level_idx[0]
    else:
        decoder_model = False
        buffer_delay_bits = 0
        if bits.f(1):  # timing_info_present_flag
            bits.f(32)  # num_units_in_display_tick
            bits.f(32)  # time_scale
            if bits.f(1):  # equal_picture_interval
                bits.uvlc()  # num_ticks_per_picture_minus_1
            decoder_model = bool(bits.f(1))
            if decoder_model:
                buffer_delay_bits = bits.f(5) + 1
                bits.f(32)  # num_units_in_decoding_tick
                bits.f(5)  # buffer_removal_time_length_minus_1
                bits.f(5)  # frame_presentation_time_length_minus_1
        display_delay = bool(bits.f(1))
        for _ in range(bits.f(5) + 1):  # operating points
            bits.f(12)  # operating_point_idc
            if bits.f(5) > 7:  # seq_level_idx
                bits.f(1)  # seq_tier
            if decoder_model and bits.f(1):
                bits.f(buffer_delay_bits)  # decoder_buffer_delay
                bits.f(buffer_delay_bits)  # encoder_buffer_delay
                bits.f(1)  # low_delay_mode_flag
            if display_delay and bits.f(1):
                bits.f(4)  # initial_display_delay_minus_1
    width_bits, height_bits = bits.f(4) + 1, bits.f(4) + 1
    return bits.f(width_bits) + 1, bits.f(height_bits) + 1
