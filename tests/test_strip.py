"""Originals without their private metadata: the strip itself (every format, structured inputs,
broken ones), then what every way out of the service serves, on both backends."""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from pipeline.core.errors import CorruptImage
from pipeline.imaging.metadata import describe
from pipeline.imaging.strip import strip
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import camera_jpeg, decode, jpeg_bytes
from tests.support.settings import OTHER_USER
from web.keys import VARIANTS

Client = TestClient[Any, Any]
GPS_EXIF = Image.Exif()
GPS_EXIF[0x010F], GPS_EXIF[0x0112] = "Phone", 3
_gps = GPS_EXIF.get_ifd(0x8825)
_gps[1], _gps[2], _gps[3], _gps[4] = "N", (48.0, 51.0, 29.6), "E", (2.0, 17.0, 40.2)


def header(data: bytes) -> dict[str, Any]:
    import pyvips

    return describe(pyvips.Image.new_from_buffer(data, ""))


def pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGBA").tobytes()


def saved(fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    Image.linear_gradient("L").resize((40, 30)).convert("RGB").save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "data", "orientation"),
    [
        ("jpeg", camera_jpeg(64, 48, orientation=6), 6),
        ("png", saved("PNG", exif=GPS_EXIF.tobytes()), 3),
        (
            "webp",
            saved("WEBP", exif=GPS_EXIF.tobytes(), xmp=b"<x:xmpmeta>where</x:xmpmeta>", lossless=True),
            3,
        ),
        ("avif", saved("AVIF", exif=GPS_EXIF.tobytes(), xmp=b"<x:xmpmeta>where</x:xmpmeta>"), 1),
    ],
)
def test_each_format_loses_its_private_metadata_and_keeps_pixels_orientation_and_profile(
    fmt: str, data: bytes, orientation: int
) -> None:
    before = header(data)
    assert "gps" in before["private"] and before["gps"] is not None, before
    done = strip(data, fmt, before["orientation"])
    assert done is not None and "exif" in done.removed
    after = header(done.data)
    assert after["private"] == [] and after["gps"] is None and after["exif"] is None, after
    assert after["orientation"] == orientation and after["icc"] == before["icc"]
    assert pixels(done.data) == pixels(data)  # nothing decoded and encoded again
    again = strip(done.data, fmt, orientation)
    assert again is not None and again.data == done.data  # a stripped file has nothing left to lose


def test_a_jpeg_keeps_its_profile_and_adobe_segment_and_loses_the_rest() -> None:
    done = strip(camera_jpeg(), "jpeg", 1)
    assert done is not None and done.removed == ("comment", "exif", "xmp")
    assert b"ICC_PROFILE" in done.data and b"Exif" not in done.data and b"holiday" not in done.data


#: Segments a strip drops, with what they start with: EXIF, XMP, other APPn, IPTC, comments. (The
#: kept ones, JFIF, ICC, MPF and Adobe, are parsed by decoders: random bodies there would break
#: the file before any strip.)
segments = st.lists(
    st.tuples(
        st.sampled_from([0xE1, 0xE2, 0xE3, 0xEC, 0xED, 0xEF, 0xFE]),
        st.sampled_from([b"Exif\x00\x00", b"http://ns.adobe.com/xap/1.0/\x00", b"FPXR\x00", b""]),
        st.binary(max_size=40),
    ),
    max_size=8,
)


@given(segments, st.integers(1, 8))
def test_any_arrangement_of_segments_keeps_the_scan_and_only_what_is_kept(
    chosen: list[tuple[int, bytes, bytes]], orientation: int
) -> None:
    plain = jpeg_bytes(16, 8)
    scan = plain.index(b"\xff\xdb")  # the tables and scan Pillow wrote after its APP0
    inserted = b"".join(
        b"\xff" + bytes([marker]) + struct.pack(">H", len(tag + body) + 2) + tag + body
        for marker, tag, body in chosen
    )
    data = plain[:scan] + inserted + plain[scan:]
    done = strip(data, "jpeg", orientation)
    assert done is not None and done.data.endswith(plain[scan:])
    assert len(done.removed) == len({_kind(marker, tag) for marker, tag, _ in chosen})
    assert pixels(done.data) == pixels(plain)
    kept = header(done.data)
    assert kept["private"] == [] and kept["orientation"] == orientation


def _kind(marker: int, tag: bytes) -> str:
    if marker == 0xFE:
        return "comment"
    if marker == 0xED:
        return "iptc"
    if marker == 0xE1 and tag.startswith(b"Exif"):
        return "exif"
    return "xmp" if marker == 0xE1 and b"adobe" in tag else "other"


@given(st.integers(3, 400))
def test_a_cut_off_file_is_corrupt_never_a_crash(cut: int) -> None:
    for fmt, data in (("jpeg", camera_jpeg()), ("png", saved("PNG")), ("webp", saved("WEBP"))):
        try:
            done = strip(data[:cut], fmt, 1)
        except CorruptImage:
            continue
        assert done is not None


async def _ready(api: Client, backend: Backend, image_id: str, data: bytes) -> None:
    assert (await api.put(f"/images/{image_id}", data=data)).status == 202
    assert (await consume(backend)).get("ready") == 1


async def test_every_way_out_serves_the_stripped_original_and_the_owner_may_ask_for_it_as_uploaded(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    uploaded = camera_jpeg(64, 48, orientation=6)
    await _ready(api, backend, "trip", uploaded)
    served = await api.get("/download/image", params={"image_id": "trip"})
    assert served.status == 200, await served.text()
    body = await served.read()
    assert served.content_type == "image/jpeg" and int(served.headers["Content-Length"]) == len(body)
    facts = header(body)
    assert facts["private"] == [] and facts["gps"] is None and facts["orientation"] == 6
    assert pixels(body) == pixels(uploaded) and len(body) < len(uploaded)
    raw = await api.get("/download/image", params={"image_id": "trip", "as_uploaded": "true"})
    assert await raw.read() == uploaded and raw.headers["ETag"] != served.headers["ETag"]
    # A range and a conditional of the stripped copy are answered from storage.
    part = await api.get("/download/image?image_id=trip", headers={"Range": "bytes=0-9"})
    assert part.status == 206 and await part.read() == body[:10]
    cached = await api.get("/download/image?image_id=trip", headers={"If-None-Match": served.headers["ETag"]})
    assert cached.status == 304
    # A signed link and the public URL: the same stripped bytes.
    link = await (await api.get("/images/trip/url", params={"rendition": "original"})).json()
    async with api.session.get(link["url"]) as followed:
        assert await followed.read() == body
    made_public = await api.patch("/images/trip", json={"public": True})
    public = (await made_public.json())["public_urls"]["original"]
    async with api.session.get(public) as anonymous:
        assert anonymous.status == 200 and await anonymous.read() == body
    # Made once, counted once on the record, like a variant.
    await api.server.app[VARIANTS].idle()
    status = await (await api.get("/images/trip")).json()
    assert status["status"] == "ready"
    assert (
        await api.get("/download/image", params={"image_id": "trip", "as_uploaded": "maybe"})
    ).status == 400
    other = await make_client(backend.settings, user=OTHER_USER)
    assert (await other.get("/download/image", params={"image_id": "trip", "as_uploaded": "1"})).status == 404


async def test_an_original_with_nothing_private_is_served_as_uploaded_and_no_copy_is_made(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    plain = jpeg_bytes(64, 48)
    await _ready(api, backend, "plain", plain)
    served = await api.get("/download/image", params={"image_id": "plain"})
    assert await served.read() == plain
    await api.server.app[VARIANTS].idle()
    made = backend.settings.aws.dest_bucket
    keys = [o.key async for page in backend.storage.list_objects(made, "") for o in page]
    assert not any("original-stripped" in key for key in keys)
    assert decode(plain).size == (64, 48)
