"""The HTTP API and the consumer, end to end, once on each backend: the same handlers, jobs,
verdicts and quotas against moto and against the local backend (files + SQLite)."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp.test_utils import TestClient

from tests.support.backends import STORAGE_TARGETS, Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import ROOT, USER

#: On moto, MiniStack, SeaweedFS (its objects) and the local backend.
pytestmark = STORAGE_TARGETS

Client = TestClient[Any, Any]


async def test_upload_process_list_download_and_delete(backend: Backend, make_client: ClientFactory) -> None:
    api: Client = await make_client(backend.settings)
    original = jpeg_bytes(640, 480)
    response = await api.put("/images/photo", data=original)
    assert response.status == 202, await response.text()
    assert (await response.json())["status"] == "pending"
    assert (await consume(backend)).get("ready") == 1
    status = await (await api.get("/images/photo")).json()
    assert status["status"] == "ready" and (status["width"], status["height"]) == (640, 480)
    listing = await (await api.get("/images")).json()
    assert [i["image_id"] for i in listing["images"]] == ["photo"]
    thumbnail = await api.get("/download/thumbnail", params={"user_id": USER, "image_id": "photo"})
    assert thumbnail.status == 200 and decode(await thumbnail.read()).size == (256, 192)
    whole = await api.get("/download/image", params={"user_id": USER, "image_id": "photo"})
    assert await whole.read() == original
    part = await api.get(
        "/download/image", params={"user_id": USER, "image_id": "photo"}, headers={"Range": "bytes=0-9"}
    )
    assert part.status == 206 and await part.read() == original[:10]
    cached = await api.get(
        "/download/image",
        params={"user_id": USER, "image_id": "photo"},
        headers={"If-None-Match": whole.headers["ETag"]},
    )
    assert cached.status == 304
    assert (await api.delete("/images/photo")).status in (200, 204)
    gone = await api.get("/download/thumbnail", params={"user_id": USER, "image_id": "photo"})
    assert gone.status == 404 and (await gone.json())["error"]


async def test_the_original_routes_and_demo_ids_work(backend: Backend, make_client: ClientFactory) -> None:
    api: Client = await make_client(backend.settings)
    response = await api.post("/upload", json={"file_name": "cat.jpg", "user_id": USER})
    assert response.status == 202, await response.text()
    await consume(backend)
    got = await api.get("/download/image", params={"user_id": USER, "image_id": "cat"})
    assert await got.read() == (ROOT / "input" / "cat.jpg").read_bytes()
    thumbnail = await api.get("/download/thumbnail", params={"user_id": USER, "image_id": "cat"})
    assert max(decode(await thumbnail.read()).size) == 256


async def test_a_broken_image_fails_with_its_reason_and_reaches_the_dlq(
    backend: Backend, make_client: ClientFactory
) -> None:
    api: Client = await make_client(backend.settings)
    broken = jpeg_bytes(400, 300)[:600]  # a real header, then nothing
    assert (await api.put("/images/broken", data=broken)).status == 202
    assert (await consume(backend)).get("dead_lettered") == 1
    status = await (await api.get("/images/broken")).json()
    assert status["status"] == "failed" and status["error"]["code"] == "corrupt_image"
    [letter] = await backend.dlq.receive(10, 1, visibility_timeout=30)
    assert letter.attributes["error_code"] == "corrupt_image"


async def test_quotas_and_keys_hold(backend: Backend, make_client: ClientFactory) -> None:
    accounts = dataclasses.replace(backend.settings.accounts, quota_images=1)
    api: Client = await make_client(dataclasses.replace(backend.settings, accounts=accounts))
    assert (await api.put("/images/first", data=jpeg_bytes(50, 50))).status == 202
    refused = await api.put("/images/second", data=jpeg_bytes(50, 50))
    assert refused.status in (403, 409, 413, 429) and (await refused.json())["error"].startswith("quota")
    assert (await api.put("/images/first", data=jpeg_bytes(60, 60))).status == 202  # a replacement
    nobody = await api.get("/images", headers={"Authorization": "Bearer isk_0123456789abcdef_" + "x" * 43})
    assert nobody.status == 401 and (await nobody.json())["error"] == "invalid_credentials"
    not_image = await api.put("/images/first", data=b"hello, I am text" * 10)
    assert not_image.status == 415 and (await not_image.json())["error"] == "not_an_image"


async def test_listing_in_each_order_and_filtered_pages_through(
    backend: Backend, make_client: ClientFactory
) -> None:
    """By id the table's own key is the order (no index), so its cursor is a key of another shape."""
    api: Client = await make_client(backend.settings)
    for image_id in ("b", "c", "a"):
        assert (await api.put(f"/images/{image_id}", data=jpeg_bytes(32, 32))).status == 202

    async def every(**query: str) -> list[str]:
        ids: list[str] = []
        cursor = None
        while True:
            params = {**query, "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = await (await api.get("/images", params=params)).json()
            ids += [i["image_id"] for i in page["images"]]
            if (cursor := page["next_cursor"]) is None:
                return ids

    assert await every() == ["a", "c", "b"]
    assert await every(sort="id") == ["a", "b", "c"]
    assert await every(sort="id", order="desc") == ["c", "b", "a"]
    assert await every(sort="created", order="asc", q="C", status="pending") == ["c"]
    assert await every(status="ready") == []
