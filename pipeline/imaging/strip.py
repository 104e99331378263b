"""An original without its private metadata (EXIF, GPS, XMP, IPTC, comments), losslessly: the
file's own structure is rewritten, its image data never decoded or encoded again.

- JPEG: the APPn segments but JFIF (APP0), the ICC profile and multi-picture index (APP2) and
  Adobe's colour transform (APP14) are dropped, and comments; the scan data is copied as is.
- PNG: the text chunks (`tEXt`, `zTXt`, `iTXt`, where XMP lives), `eXIf` and `tIME` are dropped.
- WebP: the `EXIF` and `XMP ` chunks are dropped and the VP8X flags and RIFF size follow.
- AVIF and HEIF: the EXIF and XMP items are overwritten where they lie, with an empty EXIF
  block and an empty XMP packet (removing their boxes would mean rewriting every offset in the
  file): nothing private is left, and decoders read empty metadata. Orientation lives in the
  file's own boxes (`irot`, `imir`), untouched.
- TIFF keeps its metadata in the directory its pixels are found through: it is not stripped
  here (`None`); the worker saves its pixels again, losslessly, without it. GIF carries no EXIF.

The orientation is kept as the one EXIF tag left (JPEG, PNG, WebP): a browser turns the image
as its camera meant, and the pixels stay as they were stored (applying the rotation instead would
mean decoding and encoding a JPEG again, which loses quality). The ICC profile is kept: without
it the colours would change. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from pipeline.core import headers
from pipeline.core.errors import CorruptImage

#: APP2 segments kept (by their identifier): the colour profile, and the index of the pictures a
#: multi-picture JPEG carries after the first.
_KEPT_APP2 = (b"ICC_PROFILE\x00", b"MPF\x00")
_PNG_DROPPED = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
_WEBP_EXIF_FLAG, _WEBP_XMP_FLAG = 0x08, 0x04
#: A TIFF-structured EXIF block with no tags at all (big-endian).
_EMPTY_EXIF = b"MM\x00\x2a" + struct.pack(">IHI", 8, 0, 0)


@dataclass(frozen=True)
class Stripped:
    data: bytes
    #: What was taken out: `exif`, `xmp`, `iptc`, `comment`, `text`, `other` (sorted).
    removed: tuple[str, ...]


def strip(data: bytes, fmt: str, orientation: int = 1) -> Stripped | None:
    """`data` without its private metadata, or None for a format not stripped here (TIFF; GIF
    has nothing to strip and comes back unchanged). `CorruptImage` if the structure is broken."""
    orientation = orientation if 1 <= orientation <= 8 else 1
    try:
        if fmt == "jpeg":
            return _jpeg(data, orientation)
        if fmt == "png":
            return _png(data, orientation)
        if fmt == "webp":
            return _webp(data, orientation)
        if fmt in ("avif", "heif"):
            return _bmff(data)
        if fmt == "gif":
            return Stripped(data, ())
    except (IndexError, struct.error) as exc:
        raise CorruptImage(f"the {fmt} structure ends too early to be read ({exc})") from None
    return None


def orientation_exif(orientation: int) -> bytes:
    """A TIFF-structured EXIF block with the one Orientation tag (big-endian)."""
    entry = struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    return b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + entry + struct.pack(">I", 0)


def _jpeg(data: bytes, orientation: int) -> Stripped:
    if data[:2] != b"\xff\xd8":
        raise CorruptImage("the data does not start like a JPEG")
    kept, removed, pos = [b"\xff\xd8"], set(), 2
    exif_at = 1  # after SOI, or after JFIF's APP0 when there is one
    while True:
        while data[pos] == 0xFF and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        if data[pos] != 0xFF:
            raise CorruptImage("a JPEG segment does not start with a marker")
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # the scan (or the end): the rest is image data
            kept.append(data[pos:])
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # standalone markers
            kept.append(data[pos : pos + 2])
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise CorruptImage("a JPEG segment runs past the end of the file")
        segment, payload = data[pos:end], data[pos + 4 : end]
        kind = _jpeg_segment_kind(marker, payload)
        if kind is None:
            kept.append(segment)
            if marker == 0xE0 and exif_at == len(kept) - 1:
                exif_at = len(kept)
        else:
            removed.add(kind)
        pos = end
    if orientation != 1:
        block = b"Exif\x00\x00" + orientation_exif(orientation)
        kept.insert(exif_at, b"\xff\xe1" + struct.pack(">H", len(block) + 2) + block)
    return Stripped(b"".join(kept), tuple(sorted(removed)))


def _jpeg_segment_kind(marker: int, payload: bytes) -> str | None:
    """What a segment holds if it is to go (None: kept)."""
    if marker == 0xFE:
        return "comment"
    if not 0xE0 <= marker <= 0xEF or marker in (0xE0, 0xEE):  # not APPn, or JFIF, or Adobe
        return None
    if marker == 0xE2:
        return None if payload.startswith(_KEPT_APP2) else "other"
    if marker == 0xE1:
        return "exif" if payload.startswith(b"Exif\x00") else "xmp" if b"adobe" in payload[:64] else "other"
    return "iptc" if marker == 0xED else "other"


def _png(data: bytes, orientation: int) -> Stripped:
    signature = b"\x89PNG\r\n\x1a\n"
    if not data.startswith(signature):
        raise CorruptImage("the data does not start like a PNG")
    kept, removed, pos = [signature], set(), len(signature)
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise CorruptImage("a PNG chunk runs past the end of the file")
        if kind in _PNG_DROPPED:
            removed.add("exif" if kind == b"eXIf" else "text" if kind != b"tIME" else "other")
        else:
            if kind in (b"IDAT", b"fdAT", b"acTL") and orientation != 1 and "exif-kept" not in removed:
                kept.append(_png_chunk(b"eXIf", orientation_exif(orientation)))
                removed.add("exif-kept")
            kept.append(data[pos:end])
        pos = end
        if kind == b"IEND":
            break
    removed.discard("exif-kept")
    return Stripped(b"".join(kept), tuple(sorted(removed)))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _webp(data: bytes, orientation: int) -> Stripped:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise CorruptImage("the data does not start like a WebP")
    chunks, removed, pos = [], set(), 12
    end_of_riff = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    while pos + 8 <= end_of_riff:
        kind, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        end = pos + 8 + size + (size & 1)
        if end > len(data) + (size & 1):
            raise CorruptImage("a WebP chunk runs past the end of the file")
        if kind in (b"EXIF", b"XMP "):
            removed.add("exif" if kind == b"EXIF" else "xmp")
        else:
            chunks.append(bytearray(data[pos:end]))
        pos = end
    if chunks and chunks[0][:4] == b"VP8X":  # the extended format: its flags say what follows
        flags = chunks[0][8] & ~(_WEBP_EXIF_FLAG | _WEBP_XMP_FLAG)
        if orientation != 1:
            flags |= _WEBP_EXIF_FLAG
            block = orientation_exif(orientation)
            chunks.append(bytearray(b"EXIF" + struct.pack("<I", len(block)) + block))
        chunks[0][8] = flags
    body = b"WEBP" + b"".join(chunks)
    return Stripped(b"RIFF" + struct.pack("<I", len(body)) + body, tuple(sorted(removed)))


def _bmff(data: bytes) -> Stripped:
    """Each EXIF item overwritten in place with an empty EXIF block (decoders such as libavif
    refuse an item that is not one), each XMP item with spaces (an empty packet)."""
    out = bytearray(data)
    kinds = set()
    for kind, spans in headers.bmff_metadata_items(data):
        # HEIF's EXIF item: the offset of the TIFF header (here 0), then the TIFF structure.
        fill = struct.pack(">I", 0) + _EMPTY_EXIF if kind == "exif" else b""
        room = sum(end - start for start, end in spans)
        if len(fill) > room:
            raise CorruptImage("an EXIF item is too short to hold EXIF")
        fill = fill.ljust(room, b"\x00" if kind == "exif" else b" ")
        for start, end in spans:
            out[start:end], fill = fill[: end - start], fill[end - start :]
        kinds.add(kind)
    return Stripped(bytes(out), tuple(sorted(kinds)))
