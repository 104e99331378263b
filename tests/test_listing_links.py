"""The listing's thumbnail links: one signed link per ready image, so a gallery needs no request per
image; they work without a key, expire, and stay pinned to the upload they were made for."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from tests.support.clients import ClientFactory
from tests.support.consumers import drain
from tests.support.images import decode, jpeg_bytes

Client = TestClient[Any, Any]
#: The service's own signed links; S3's presigned ones are marked below.
pytestmark = pytest.mark.backend("local")


async def listed(api: Client) -> dict[str, dict[str, Any]]:
    response = await api.get("/images")
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return {image["image_id"]: image for image in body["images"]}


async def fetch_without_key(url: str) -> tuple[int, str, bytes]:
    """Follow a link as `<img>` would: a fresh client, no Authorization header."""
    async with aiohttp.ClientSession() as anonymous, anonymous.get(url) as response:
        return response.status, response.content_type, await response.read()


async def test_ready_images_come_with_a_thumbnail_link_that_needs_no_key(
    api: Client, settings: Settings
) -> None:
    assert (await api.put("/images/wide", data=jpeg_bytes(400, 300))).status == 202
    assert (await api.put("/images/tall", data=jpeg_bytes(150, 600))).status == 202
    assert (await api.put("/images/broken", data=jpeg_bytes(400, 300)[:2000])).status == 202
    await drain(settings)
    assert (await api.put("/images/later", data=jpeg_bytes(40, 40))).status == 202  # stays pending

    images = await listed(api)
    assert images["broken"]["status"] == "failed" and images["later"]["status"] == "pending"
    assert "thumbnail_url" not in images["broken"] and "thumbnail_url" not in images["later"]
    first = settings.imaging.renditions[0].name
    for image_id, size in (("wide", (256, 192)), ("tall", (64, 256))):
        url = images[image_id]["thumbnail_url"]
        assert url.startswith(
            f"http://127.0.0.1:{api.port}/links/{images[image_id]['user_id']}/{image_id}/{first}?"
        )
        status, content_type, body = await fetch_without_key(url)
        assert status == 200 and content_type == "image/jpeg"
        rendition = images[image_id]["renditions"][first]
        assert decode(body).size == size == (rendition["width"], rendition["height"])
        # The same link the API hands out one by one, but for its expiry and signature.
        one = await (await api.get(f"/images/{image_id}/url", params={"rendition": first})).json()
        assert urlsplit(one["url"]).path == urlsplit(url).path
        assert parse_qs(urlsplit(one["url"]).query)["v"] == parse_qs(urlsplit(url).query)["v"]
        expires = int(parse_qs(urlsplit(url).query)["expires"][0])
        assert 3500 < expires - time.time() <= 3600


async def test_a_listing_link_is_pinned_to_its_upload(api: Client, settings: Settings) -> None:
    assert (await api.put("/images/again", data=jpeg_bytes(400, 300))).status == 202
    await drain(settings)
    old = (await listed(api))["again"]["thumbnail_url"]
    assert (await fetch_without_key(old))[0] == 200
    assert (await api.put("/images/again", data=jpeg_bytes(300, 400))).status == 202
    await drain(settings)
    new = (await listed(api))["again"]["thumbnail_url"]
    status, _, body = await fetch_without_key(new)
    assert status == 200 and decode(body).size == (192, 256)
    status, _, _ = await fetch_without_key(old)
    assert status == 404  # image_changed: never the later upload's bytes


async def test_listing_links_respect_the_link_maximum(make_settings: Any, make_client: ClientFactory) -> None:
    settings = make_settings(IMGSVC_RUN_CONSUMER="true", IMGSVC_LINK_MAX_SECONDS="60")
    api = await make_client(settings)
    assert (await api.put("/images/short", data=jpeg_bytes(200, 100))).status == 202
    assert (await (await api.get("/images/short", params={"wait": "20"})).json())["status"] == "ready"
    url = (await listed(api))["short"]["thumbnail_url"]
    assert 0 < int(parse_qs(urlsplit(url).query)["expires"][0]) - time.time() <= 60
    assert (await fetch_without_key(url))[0] == 200


@pytest.mark.backend("aws")  # presigned S3 URLs (the local backend has no S3 to sign for)
async def test_with_s3_links_the_listing_presigns_the_thumbnail(
    make_settings: Any, make_client: ClientFactory
) -> None:
    settings = make_settings(IMGSVC_RUN_CONSUMER="true", IMGSVC_LINKS="s3")
    api = await make_client(settings)
    assert (await api.put("/images/direct", data=jpeg_bytes(400, 300))).status == 202
    assert (await (await api.get("/images/direct", params={"wait": "20"})).json())["status"] == "ready"
    url = (await listed(api))["direct"]["thumbnail_url"]
    assert settings.aws.endpoint_url and url.startswith(settings.aws.endpoint_url) and "Signature" in url
    status, _, body = await fetch_without_key(url)  # straight from S3
    assert status == 200 and decode(body).size == (256, 192)
