"""Images made for the tests, and decoding what the service hands back."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from PIL import Image


def jpeg_bytes(width: int, height: int, **save: Any) -> bytes:
    """A JPEG with a gradient, so resizing has something to average."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims huge dimensions but has no pixel data: a decompression bomb's header."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


#: Where `camera_jpeg` says it was taken (the Eiffel Tower), in decimal degrees.
CAMERA_GPS = (48.858222, 2.2945)


def camera_jpeg(width: int = 64, height: int = 48, orientation: int = 1) -> bytes:
    """A JPEG as a phone writes one: EXIF with the camera, the exposure and a GPS position, an
    XMP packet, an sRGB ICC profile and a comment."""
    from PIL import ImageCms

    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0112] = "Canon", "EOS 5D", orientation
    shot = exif.get_ifd(0x8769)
    shot[0x829A], shot[0x829D], shot[0x8827] = (1, 250), 2.8, 200
    shot[0x9003], shot[0xA434] = "2024:05:01 12:00:00", "EF 50mm"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (48.0, 51.0, 29.6), "E", (2.0, 17.0, 40.2)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta>'
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, exif=exif, icc_profile=profile, xmp=xmp, comment=b"holiday")
    return out.getvalue()
