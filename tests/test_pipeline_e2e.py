"""End to end through the real app with its in-process consumer: upload, wait, download, decode."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from pipeline.core.dlq import describe
from tests.support.clients import ClientFactory
from tests.support.images import decode
from tests.support.settings import ROOT, USER
from tests.support.state import dlq_messages, record_of

Client = TestClient[Any, Any]


@pytest.fixture
def live_settings(make_settings: Any) -> Settings:
    return make_settings(IMGSVC_RUN_CONSUMER="true", IMGSVC_RENDITIONS="256,64:webp")


@pytest.fixture
async def live(live_settings: Settings, make_client: ClientFactory) -> Client:
    """The whole stack: API and consumer pool in one process, as `python -m web` runs it."""
    return await make_client(live_settings)


async def wait_until_done(api: Client, user_id: str, image_id: str, timeout: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            response = await api.get(f"/images/{image_id}?user_id={user_id}")
            if response.status == 404:  # put straight into the bucket: no record until processed
                await asyncio.sleep(0.2)
                continue
            assert response.status == 200, await response.text()
            body: dict[str, Any] = await response.json()
            if body["status"] != "pending":
                return body
            assert response.headers["Retry-After"]
            await asyncio.sleep(0.2)


async def test_compat_upload_then_thumbnail(live: Client) -> None:
    response = await live.post("/upload", json={"file_name": "cat.jpg", "user_id": USER})
    assert response.status == 202
    status = await wait_until_done(live, USER, "cat")
    assert status["status"] == "ready"
    assert status["width"] == 451 and status["height"] == 300 and status["format"] == "jpeg"
    assert set(status["renditions"]) == {"256", "64-webp"}

    thumb = await live.get(f"/download/thumbnail?user_id={USER}&image_id=cat")
    assert thumb.status == 200 and thumb.content_type == "image/jpeg"
    image = decode(await thumb.read())
    assert image.format == "JPEG" and image.size == (256, 170)

    small = await live.get(status["renditions"]["64-webp"]["url"])
    assert decode(await small.read()).format == "WEBP"

    original = await live.get(f"/download/image?user_id={USER}&image_id=cat")
    assert original.status == 200 and decode(await original.read()).size == (451, 300)


async def test_orientation_survives_the_pipeline(live: Client) -> None:
    image = Image.new("RGB", (600, 300), (220, 20, 20))
    exif = image.getexif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif)
    assert (await live.put(f"/images/rotated?user_id={USER}", data=out.getvalue())).status == 202
    status = await wait_until_done(live, USER, "rotated")
    assert status["renditions"]["256"]["width"] == 128 and status["renditions"]["256"]["height"] == 256
    thumb = decode(await (await live.get(f"/download/thumbnail?user_id={USER}&image_id=rotated")).read())
    assert thumb.size == (128, 256)
    assert not thumb.getexif()


async def test_object_put_straight_into_the_bucket_gets_thumbnails(
    live: Client, live_settings: Settings, clients: AwsClients
) -> None:
    """Anything that writes the source bucket (aws s3 cp, boto3, another service) under a key the
    API can address, `{user_id}/{image_id}` of a known user, gets renditions."""
    key = f"{USER}/imported-dog"
    data = (ROOT / "input" / "dog.jpg").read_bytes()
    await clients.s3.put_object(Bucket=live_settings.aws.source_bucket, Key=key, Body=data)
    async with asyncio.timeout(30):
        while (record := await record_of(clients, live_settings, key)) is None or record.state == "pending":
            await asyncio.sleep(0.2)
    assert record.state == "ready" and record.owner == USER
    rendition = await clients.s3.get_object(Bucket=live_settings.aws.dest_bucket, Key=f"{key}/256.jpg")
    assert rendition["Metadata"]["source-etag"]
    assert decode(await rendition["Body"].read()).size == (256, 192)
    assert (await live.get("/download/thumbnail?image_id=imported-dog")).status == 200


UNADDRESSABLE = {
    "nested path": f"{USER}/a/b.jpg",
    "leading dot": f"{USER}/.hidden",
    "space, plus, percent": f"{USER}/with space+plus%percent",
    "non-ASCII": f"{USER}/ünïcødé 猫",
    "empty owner": "/orphan",
    "no owner at all": "lonely.jpg",
    "owner not a user id": "imports/dog",
    "unknown user": "00000000-0000-4000-8000-000000000000/dog",
}


async def test_objects_under_keys_the_api_cannot_address_are_dead_lettered(
    live: Client, live_settings: Settings, clients: AwsClients
) -> None:
    """They would be records nobody could download or delete: none is made, each message goes to
    the DLQ at once with `invalid_key`. (SQS delivers at least once: a message received twice,
    moto's two receivers racing, is dead-lettered twice; its first letter still says attempt 1.)"""
    data = (ROOT / "input" / "dog.jpg").read_bytes()
    for key in UNADDRESSABLE.values():
        await clients.s3.put_object(Bucket=live_settings.aws.source_bucket, Key=key, Body=data)
    seen: dict[str, Any] = {}  # by id: each peek hides what it saw for a second
    attempts: dict[str, set[str]] = {}  # by the key each letter names
    async with asyncio.timeout(30):
        while len(attempts) < len(UNADDRESSABLE):
            seen |= {m.id: m for m in await dlq_messages(clients, live_settings)}
            attempts = {}
            for letter in seen.values():
                for key in describe(letter).keys:
                    attempts.setdefault(key, set()).add(letter.attributes["attempts"])
            await asyncio.sleep(0.2)
    assert {m.attributes["error_code"] for m in seen.values()} == {"invalid_key"}
    assert set(attempts) == set(UNADDRESSABLE.values())
    assert all(min(counts) == "1" for counts in attempts.values()), attempts
    for key in UNADDRESSABLE.values():
        if not key.startswith("/"):  # an empty owner could not even be a record's key
            assert await record_of(clients, live_settings, key) is None, key
    listed = await clients.s3.list_objects_v2(Bucket=live_settings.aws.dest_bucket)
    assert listed.get("KeyCount", 0) == 0  # no renditions either


async def test_failed_image_reports_reason_through_the_api(
    live: Client, live_settings: Settings, clients: AwsClients
) -> None:
    data = (ROOT / "input" / "cat.jpg").read_bytes()
    await clients.s3.put_object(
        Bucket=live_settings.aws.source_bucket, Key=f"{USER}/broken", Body=data[:5000]
    )
    status = await wait_until_done(live, USER, "broken")
    assert status["status"] == "failed"
    assert status["error"]["code"] == "corrupt_image"
    thumb = await live.get(f"/download/thumbnail?user_id={USER}&image_id=broken")
    assert thumb.status == 422
    body = await thumb.json()
    assert body["error"] == "thumbnail_failed" and body["status"] == "failed"
    assert body["reason"]["code"] == "corrupt_image"


async def test_reupload_replaces_renditions(live: Client) -> None:
    for colour in ((255, 0, 0), (0, 0, 255)):
        out = io.BytesIO()
        Image.new("RGB", (500, 500), colour).save(out, "PNG")
        assert (await live.put(f"/images/swap?user_id={USER}", data=out.getvalue())).status == 202
        status = await wait_until_done(live, USER, "swap")
        assert status["status"] == "ready"
        thumb = decode(await (await live.get(f"/download/thumbnail?user_id={USER}&image_id=swap")).read())
        pixel = thumb.convert("RGB").getpixel((5, 5))
        assert (pixel[0] > 200) == (colour[0] == 255) and (pixel[2] > 200) == (colour[2] == 255)


async def test_replacement_that_fails_leaves_no_old_renditions(
    live: Client, live_settings: Settings, clients: AwsClients
) -> None:
    good = (ROOT / "input" / "dog.jpg").read_bytes()
    assert (await live.put(f"/images/turns-bad?user_id={USER}", data=good)).status == 202
    assert (await wait_until_done(live, USER, "turns-bad"))["status"] == "ready"
    assert (await live.put(f"/images/turns-bad?user_id={USER}", data=good[:4000])).status == 202
    status = await wait_until_done(live, USER, "turns-bad")
    assert status["status"] == "failed" and status["error"]["code"] == "corrupt_image"
    listed = await clients.s3.list_objects_v2(
        Bucket=live_settings.aws.dest_bucket, Prefix=f"{USER}/turns-bad/"
    )
    assert "Contents" not in listed  # the predecessor's renditions are gone
    assert (await live.get(f"/download/thumbnail?user_id={USER}&image_id=turns-bad")).status == 422


async def test_health(live: Client) -> None:
    assert (await (await live.get("/health/live")).json()) == {"status": "alive"}
    ready = await live.get("/health/ready")
    assert ready.status == 200
    assert (await ready.json())["checks"] == {
        "source_bucket": "ok",
        "dest_bucket": "ok",
        "queue": "ok",
        "database": "ok",
        "disk": "ok",
    }


async def test_long_poll_returns_as_soon_as_ready(live: Client) -> None:
    assert (await live.post("/upload", json={"file_name": "dog.jpg", "user_id": USER})).status == 202
    started = asyncio.get_running_loop().time()
    response = await live.get(f"/images/dog?user_id={USER}&wait=20")
    assert (await response.json())["status"] == "ready"  # one call, no client-side polling
    assert asyncio.get_running_loop().time() - started < 15


@pytest.mark.parametrize("wait", ["-1", "21", "soon", "nan"])
async def test_bad_wait_is_400(live: Client, wait: str) -> None:
    assert (await live.post("/upload", json={"file_name": "cat.jpg", "user_id": USER})).status == 202
    response = await live.get(f"/images/cat?user_id={USER}&wait={wait}")
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_field"
