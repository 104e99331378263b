"""Downloads: caching headers, conditional GET, byte ranges, pending and missing images."""

from __future__ import annotations

from email.utils import formatdate
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.support.clients import ClientFactory
from tests.support.consumers import drain
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import OTHER_USER, ROOT, USER

Client = TestClient[Any, Any]
pytestmark = pytest.mark.backend("local")
CAT = (ROOT / "input" / "cat.jpg").read_bytes()
ORIGINAL = f"/download/image?user_id={USER}&image_id=cat"


@pytest.fixture
async def uploaded(api: Client) -> Client:
    response = await api.post("/upload", json={"file_name": "cat.jpg", "user_id": USER})
    assert response.status == 202
    return api


async def test_full_download_headers(uploaded: Client) -> None:
    response = await uploaded.get(ORIGINAL)
    assert response.status == 200
    assert await response.read() == CAT
    headers = response.headers
    assert headers["Content-Type"] == "image/jpeg"
    assert int(headers["Content-Length"]) == len(CAT)
    assert headers["ETag"].startswith('"') and headers["Last-Modified"].endswith("GMT")
    assert headers["Cache-Control"] == "private, max-age=3600"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Accept-Ranges"] == "bytes"


async def test_head_has_headers_and_no_body(uploaded: Client) -> None:
    response = await uploaded.head(ORIGINAL)
    assert response.status == 200
    assert int(response.headers["Content-Length"]) == len(CAT)
    assert await response.read() == b""


async def test_if_none_match_gives_304(uploaded: Client) -> None:
    etag = (await uploaded.get(ORIGINAL)).headers["ETag"]
    response = await uploaded.get(ORIGINAL, headers={"If-None-Match": etag})
    assert response.status == 304
    assert response.headers["ETag"] == etag
    assert await response.read() == b""
    changed = await uploaded.get(ORIGINAL, headers={"If-None-Match": '"something-else"'})
    assert changed.status == 200


async def test_if_modified_since(uploaded: Client) -> None:
    last_modified = (await uploaded.get(ORIGINAL)).headers["Last-Modified"]
    assert (await uploaded.get(ORIGINAL, headers={"If-Modified-Since": last_modified})).status == 304
    long_ago = formatdate(0, usegmt=True)
    assert (await uploaded.get(ORIGINAL, headers={"If-Modified-Since": long_ago})).status == 200


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, len(CAT) - 1),
        ("bytes=-50", len(CAT) - 50, len(CAT) - 1),
        (f"bytes=10-{len(CAT) + 500}", 10, len(CAT) - 1),
    ],
)
async def test_byte_ranges(uploaded: Client, header: str, start: int, end: int) -> None:
    response = await uploaded.get(ORIGINAL, headers={"Range": header})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(CAT)}"
    assert int(response.headers["Content-Length"]) == end - start + 1
    assert await response.read() == CAT[start : end + 1]


async def test_unsatisfiable_range_is_416(uploaded: Client) -> None:
    response = await uploaded.get(ORIGINAL, headers={"Range": f"bytes={len(CAT)}-"})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(CAT)}"
    assert (await response.json())["error"] == "range_not_satisfiable"


async def test_stale_if_range_gets_whole_object(uploaded: Client) -> None:
    response = await uploaded.get(ORIGINAL, headers={"Range": "bytes=0-9", "If-Range": '"old"'})
    assert response.status == 200 and await response.read() == CAT


async def test_thumbnail_pending_until_processed(uploaded: Client) -> None:
    response = await uploaded.get(f"/download/thumbnail?user_id={USER}&image_id=cat")
    assert response.status == 404
    assert int(response.headers["Retry-After"]) >= 1
    body = await response.json()
    assert body["error"] == "thumbnail_pending" and body["status"] == "pending"
    status = await uploaded.get(f"/images/cat?user_id={USER}")
    assert (await status.json())["status"] == "pending"


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (f"/download/image?user_id={USER}&image_id=dog", 404, "image_not_found"),
        (f"/download/image?user_id={OTHER_USER}&image_id=cat", 403, "forbidden"),
        (f"/download/image?user_id={OTHER_USER}&image_id=nothing-here", 403, "forbidden"),
        (f"/download/thumbnail?user_id={USER}&image_id=dog", 404, "image_not_found"),
        (f"/images/dog?user_id={USER}", 404, "image_not_found"),
        (f"/download/image?user_id={USER}", 400, "missing_field"),
        (f"/download/image?user_id={USER}&image_id=../../etc", 400, "invalid_field"),
        (f"/download/thumbnail?user_id={USER}&image_id=cat&size=999", 400, "invalid_field"),
        (
            "/download/thumbnail?user_id=00000000-0000-0000-0000-000000000000&image_id=cat",
            403,
            "forbidden",
        ),
    ],
)
async def test_download_errors(uploaded: Client, path: str, status: int, code: str) -> None:
    response = await uploaded.get(path)
    assert response.status == status
    assert (await response.json())["error"] == code


async def test_thumbnail_format_is_negotiated_with_accept(
    make_settings: Any, make_client: ClientFactory
) -> None:
    settings = make_settings(IMGSVC_RENDITIONS="256,256:webp,256:avif,64")
    api = await make_client(settings)
    assert (await api.put("/images/formats", data=jpeg_bytes(400, 300))).status == 202
    await drain(settings)
    for accept, fmt in (
        ("image/avif,image/webp,*/*;q=0.8", "AVIF"),
        ("image/webp,image/*;q=0.8", "WEBP"),
        ("image/*,*/*", "JPEG"),
        ("", "JPEG"),
    ):
        response = await api.get(
            "/download/thumbnail?image_id=formats&size=256&format=auto", headers={"Accept": accept}
        )
        assert response.status == 200 and response.headers["Vary"] == "Accept"
        image = decode(await response.read())
        assert image.format == fmt and image.size == (256, 192), accept
    small = await api.get(
        "/download/thumbnail?image_id=formats&size=64&format=auto", headers={"Accept": "image/avif"}
    )
    assert decode(await small.read()).size == (64, 48)  # only a JPEG at that size: that is the best
    plain = await api.get("/download/thumbnail?image_id=formats&size=256-avif")
    assert plain.content_type == "image/avif" and "Vary" not in plain.headers


@pytest.mark.parametrize(
    "header",
    ["bytes=-0", "bytes=999999999-", "bytes = -0"],
    ids=["empty-suffix", "past-the-end", "empty-suffix-spaced"],
)
async def test_ranges_that_select_nothing_are_416(uploaded: Client, header: str) -> None:
    """RFC 9110: a suffix of zero bytes selects nothing (aiohttp's parser made it the whole file)."""
    response = await uploaded.get(ORIGINAL, headers={"Range": header})
    assert response.status == 416, header
    assert response.headers["Content-Range"] == f"bytes */{len(CAT)}"


@pytest.mark.parametrize(
    "header", ["bytes=²-5", "bytes=٣-9", "bytes=0-1,4-5", "items=0-5", "bytes=5-2", "bytes=" + "9" * 40]
)
async def test_malformed_or_multiple_ranges_get_the_whole_object(uploaded: Client, header: str) -> None:
    response = await uploaded.get(ORIGINAL, headers={"Range": header})
    assert response.status == 200 and await response.read() == CAT


async def test_thumbnail_formats_are_checked(make_settings: Any, make_client: ClientFactory) -> None:
    """An unknown format is a 400 naming the allowed ones; a known format without such a rendition
    is a 404 naming the renditions there are (it used to answer the JPEG with 200)."""
    settings = make_settings(IMGSVC_RENDITIONS="256,256:webp,64")
    api = await make_client(settings)
    assert (await api.put("/images/formats", data=jpeg_bytes(400, 300))).status == 202
    await drain(settings)
    bogus = await api.get("/download/thumbnail?image_id=formats&format=bogus")
    assert bogus.status == 400
    assert "auto, jpeg, png, webp, avif" in (await bogus.json())["message"]
    missing = await api.get("/download/thumbnail?image_id=formats&size=64&format=webp")
    assert missing.status == 404
    body = await missing.json()
    assert body["error"] == "rendition_not_found" and "256, 256-webp, 64" in body["message"]
    webp = await api.get("/download/thumbnail?image_id=formats&format=webp")
    assert webp.status == 200 and decode(await webp.read()).format == "WEBP"
    jpeg = await api.get("/download/thumbnail?image_id=formats&size=256-webp&format=jpeg")
    assert jpeg.status == 200 and decode(await jpeg.read()).format == "JPEG"
