"""`GET /images/{id}/info`: what an original is and says about itself, for its owner alone, on
both backends."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import CAMERA_GPS, camera_jpeg
from tests.support.settings import OTHER_USER

Client = TestClient[Any, Any]


async def test_the_owner_reads_camera_gps_and_colour_of_an_original(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    assert (await api.put("/images/trip", data=camera_jpeg(64, 48, orientation=6))).status == 202
    pending = await api.get("/images/trip/info")
    assert pending.status == 404 and (await pending.json())["error"] == "thumbnail_pending"
    assert (await consume(backend)).get("ready") == 1
    response = await api.get("/images/trip/info")
    assert response.status == 200, await response.text()
    info = await response.json()
    # As displayed: the EXIF orientation turns it a quarter.
    assert (info["format"], info["width"], info["height"], info["frames"]) == ("jpeg", 48, 64, 1)
    assert info["bytes"] > 0 and info["colour_space"] == "srgb" and info["bit_depth"] == 8
    assert info["icc"] == "sRGB built-in" and info["orientation"] == 6 and info["alpha"] is False
    assert info["exif"] == {
        "make": "Canon",
        "model": "EOS 5D",
        "lens": "EF 50mm",
        "taken_at": "2024:05:01 12:00:00",
        "exposure_time": "1/250",
        "f_number": 2.8,
        "iso": 200,
    }
    assert (info["gps"]["latitude"], info["gps"]["longitude"]) == CAMERA_GPS
    assert info["private"] == ["exif", "gps", "xmp"]
    assert info["dominant_color"].startswith("#") and info["blurhash"]
    # Nobody else finds it.
    other = await make_client(backend.settings, user=OTHER_USER)
    assert (await other.get("/images/trip/info")).status == 404


async def test_an_original_without_metadata_says_so(backend: Backend, make_client: ClientFactory) -> None:
    api = await make_client(backend.settings)
    plain = await api.post("/upload", json={"file_name": "cat.jpg"})
    assert plain.status in (200, 201, 202), await plain.text()
    assert (await consume(backend)).get("ready") == 1
    info = await (await api.get("/images/cat/info")).json()
    assert info["exif"] is None and info["gps"] is None and info["private"] == []
    assert info["format"] == "jpeg" and info["width"] > 0
    assert (await api.get("/images/nothing/info")).status == 404
