"""Signed links: work without a key until they expire; tampering or expiry is 403; S3 presigning."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from tests.support.clients import ClientFactory
from tests.support.consumers import drain
from tests.support.images import decode, jpeg_bytes

Client = TestClient[Any, Any]
#: The service's own signed links; S3's presigned ones are marked below.
pytestmark = pytest.mark.backend("local")
DATA = jpeg_bytes(400, 300)


@pytest.fixture
async def ready(api: Client, settings: Settings) -> Client:
    assert (await api.put("/images/shared", data=DATA)).status == 202
    await drain(settings)
    return api


async def link(api: Client, **query: str) -> dict[str, Any]:
    response = await api.get("/images/shared/url", params=query)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def relative(url: str) -> str:
    """The path and query of an absolute link, to follow it on another process's port."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_links_work_without_a_key_from_any_process(
    ready: Client, settings: Settings, make_client: ClientFactory
) -> None:
    anonymous = await make_client(settings, user=None)  # another web process, no key
    thumb = await link(ready, rendition="256", expires_in="60")
    original = await link(ready, rendition="original")
    assert thumb["url"].startswith(f"http://127.0.0.1:{ready.port}/links/")  # absolute, from the request
    got = await anonymous.get(relative(thumb["url"]))
    assert got.status == 200 and decode(await got.read()).size == (256, 192)
    assert await (await anonymous.get(relative(original["url"]))).read() == DATA
    assert thumb["expires_at"] and thumb["rendition"] == "256"


async def test_links_use_the_configured_public_url(make_settings: Any, make_client: ClientFactory) -> None:
    settings = make_settings(IMGSVC_PUBLIC_URL="https://images.example.com/")
    api = await make_client(settings)
    assert (await api.put("/images/shared", data=DATA)).status == 202
    url = (await link(api, rendition="original"))["url"]
    assert url.startswith("https://images.example.com/links/")
    assert await (await api.get(relative(url))).read() == DATA


@pytest.mark.parametrize("how", ["replaced", "deleted and re-created"])
async def test_a_link_never_serves_a_later_upload(ready: Client, settings: Settings, how: str) -> None:
    """A link is for the bytes it was made for: once the image is replaced (or deleted and made
    again under the same id), the old link answers 404 `image_changed`, never the new picture."""
    thumb = relative((await link(ready, rendition="256"))["url"])
    original = relative((await link(ready, rendition="original"))["url"])
    if how != "replaced":
        assert (await ready.delete("/images/shared")).status == 204
    newer = jpeg_bytes(500, 300, subsampling=0)
    assert (await ready.put("/images/shared", data=newer)).status == 202
    await drain(settings)
    for url in (thumb, original):
        response = await ready.get(url)
        assert response.status == 404, url
        assert (await response.json())["error"] == "image_changed"
    fresh = relative((await link(ready, rendition="original"))["url"])
    assert await (await ready.get(fresh)).read() == newer


def tampered(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return f"{parts.path}?{'&'.join(f'{k}={v}' for k, v in query.items())}"


async def test_tampered_links_are_refused(
    ready: Client, settings: Settings, make_client: ClientFactory
) -> None:
    anonymous = await make_client(settings, user=None)
    url = relative((await link(ready, rendition="256"))["url"])
    expires = parse_qs(urlsplit(url).query)["expires"][0]
    for bad in (
        tampered(url, expires=str(int(expires) + 3600)),  # a longer life
        tampered(url, sig="0" * 64),
        url.replace("/256?", "/original?"),  # another rendition
        url.replace("/shared/", "/other/"),  # another image
        tampered(url, expires="soon"),
        tampered(url, expires="١٧٩٦١٩٤٨٨٧"),  # digits to str.isdigit(), not ASCII
        tampered(url, expires="²"),  # a digit to str.isdigit() that int() refuses
        tampered(url, sig="é" * 64),  # non-ASCII: hmac.compare_digest refuses str like this
        tampered(url, v="0" * 16),  # another upload's version
        tampered(url, v="ü"),
        urlsplit(url).path,  # no signature at all
    ):
        response = await anonymous.get(bad)
        assert response.status == 403, bad
        assert (await response.json())["error"] == "invalid_link"


async def test_expired_links_are_refused(
    ready: Client, settings: Settings, make_client: ClientFactory
) -> None:
    anonymous = await make_client(settings, user=None)
    url = relative((await link(ready, rendition="256", expires_in="1"))["url"])
    assert (await anonymous.get(url)).status == 200
    await asyncio.sleep(2.1)
    response = await anonymous.get(url)
    assert response.status == 403 and (await response.json())["error"] == "link_expired"


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ({"rendition": "9999"}, 400, "invalid_field"),
        ({"expires_in": "0"}, 400, "invalid_field"),
        ({"expires_in": "604801"}, 400, "invalid_field"),
        ({"expires_in": "-5"}, 400, "invalid_field"),
        ({"expires_in": "²"}, 400, "invalid_field"),
        ({"expires_in": "٣٦٠٠"}, 400, "invalid_field"),
        ({"expires_in": "9" * 40}, 400, "invalid_field"),
    ],
)
async def test_bad_link_requests(ready: Client, query: dict[str, str], status: int, code: str) -> None:
    response = await ready.get("/images/shared/url", params=query)
    assert response.status == status and (await response.json())["error"] == code


async def test_no_link_for_a_missing_or_pending_image(api: Client) -> None:
    assert (await api.get("/images/nothing/url")).status == 404
    assert (await api.put("/images/later", data=DATA)).status == 202
    pending = await api.get("/images/later/url")
    assert pending.status == 404 and (await pending.json())["error"] == "thumbnail_pending"
    assert (await api.get("/images/later/url?rendition=original")).status == 200


@pytest.mark.backend("aws")  # presigned S3 URLs (the local backend has no S3 to sign for)
async def test_s3_presigned_links(
    make_settings: Any, make_client: ClientFactory, clients: AwsClients
) -> None:
    # Stripping off: S3 hands out the original itself (with it on, an original that may carry
    # private metadata is linked through the API, which serves its stripped copy: test_strip.py).
    settings = make_settings(IMGSVC_LINKS="s3", IMGSVC_STRIP_ORIGINALS="false")
    api = await make_client(settings)
    assert (await api.put("/images/shared", data=DATA)).status == 202
    url = (await link(api, rendition="original", expires_in="60"))["url"]
    assert url.startswith(settings.aws.endpoint_url) and "Signature" in url
    async with aiohttp.ClientSession() as session, session.get(url) as response:  # straight from S3
        assert response.status == 200 and await response.read() == DATA
