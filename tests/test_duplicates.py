"""The same bytes uploaded again by the same owner are not resized again: the job copies the
renditions of the image already made from them, and the record says which one. Never across
owners, and never from an image since replaced or deleted. Both backends."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from pipeline.core.layout import ImageRef
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import OTHER_USER, USER

Client = TestClient[Any, Any]


def resized() -> float:
    """Images the worker pool has made renditions of, in this process (the tests' consumer)."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "imgsvc_processing_seconds":
            total += sum(s.value for s in metric.samples if s.name.endswith("_count"))
    return total


async def upload(api: Client, backend: Backend, image_id: str, data: bytes) -> dict[str, Any]:
    assert (await api.put(f"/images/{image_id}", data=data)).status == 202
    assert (await consume(backend)).get("ready") == 1
    status: dict[str, Any] = await (await api.get(f"/images/{image_id}")).json()
    assert status["status"] == "ready", status
    return status


async def thumbnail(api: Client, image_id: str) -> bytes:
    response = await api.get("/download/thumbnail", params={"image_id": image_id})
    assert response.status == 200
    return await response.read()


async def test_the_same_bytes_again_are_copied_not_resized(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    photo = jpeg_bytes(640, 480)
    before = resized()
    first = await upload(api, backend, "first", photo)
    assert resized() == before + 1 and "duplicate_of" not in first

    again = await upload(api, backend, "again", photo)
    assert resized() == before + 1  # no worker ran
    assert again["duplicate_of"] == "first" and again["sha256"] == first["sha256"]
    assert again["renditions"].keys() == first["renditions"].keys()
    assert (again["width"], again["height"]) == (first["width"], first["height"])
    copy = await thumbnail(api, "again")
    assert copy == await thumbnail(api, "first") and decode(copy).size[0] > 0
    for spec in backend.settings.imaging.renditions:  # the copy names its own original
        meta = await backend.storage.head(
            backend.settings.aws.dest_bucket, ImageRef.of(USER, "again").rendition_key(spec)
        )
        assert meta.metadata["source-etag"] == again["etag"].strip('"')

    # Another owner's upload of the same bytes is never linked to this one.
    other = await make_client(backend.settings, user=OTHER_USER)
    theirs = await upload(other, backend, "theirs", photo)
    assert "duplicate_of" not in theirs and resized() == before + 2

    # Replaced by other bytes, or deleted: what was noted of it is not used.
    await upload(api, backend, "first", jpeg_bytes(300, 200))
    assert resized() == before + 3
    fresh = await upload(api, backend, "fresh", photo)
    assert "duplicate_of" not in fresh and resized() == before + 4
    assert (await api.delete("/images/fresh")).status == 204
    later = await upload(api, backend, "later", photo)
    assert "duplicate_of" not in later and resized() == before + 5
