"""Presigned uploads on both backends: `POST /images/upload-url` reserves a new image (quota
charged), the bytes go to the URL it answers (moto's S3, or the local backend's `/uploads/...`)
without the API key, and the consumer completes the record from the object's event. Bytes that
are not what the URL was made for end `failed` with the reason and are removed; bytes whose
reservation is gone are removed and dead-lettered; gc releases a reservation never used."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from aiobotocore.session import get_session
from aiohttp.test_utils import TestClient
from PIL import Image

from config.settings import Settings
from pipeline.aws.clients import EMBEDDED_CREDENTIALS
from pipeline.cli.gc import collect
from pipeline.core.dlq import reason_of
from pipeline.core.layout import ImageRef
from pipeline.core.records import RecordStore
from pipeline.core.reservations import RELEASE_MARGIN_SECONDS
from tests.support.backends import Backend, aws_stack
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import OTHER_USER, USER
from web.keys import SWEEPER

Client = TestClient[Any, Any]
BOTH = frozenset({"api", "presigned"})


def presigned(settings: Settings, modes: frozenset[str] = BOTH) -> Settings:
    return dataclasses.replace(settings, web=dataclasses.replace(settings.web, upload_modes=modes))


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


async def usage_of(backend: Backend) -> tuple[int, int]:
    user = await backend.tables.users.get({"user_id": USER}) or {}
    return int(user.get("bytes_used", 0)), int(user.get("image_count", 0))


async def ask(api: Client, **body: Any) -> aiohttp.ClientResponse:
    return await api.post("/images/upload-url", json=body)


async def put_to(answer: dict[str, Any], data: bytes, **headers: str) -> aiohttp.ClientResponse:
    """PUT as a client holding only the answer would: no API key, the headers it names."""
    async with aiohttp.ClientSession() as session:
        response = await session.request(
            answer["method"], answer["url"], data=data, headers={**answer["headers"], **headers}
        )
        await response.read()
        return response


async def dead_letter_reasons(backend: Backend) -> list[str]:
    messages = await backend.dlq.receive(10, 0)
    return [reason_of(m)["error_code"] for m in messages]


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("aws", marks=pytest.mark.moto),
        "local",
        # The local backend's upload routes, its objects in an S3-compatible store.
        pytest.param("seaweedfs-local", marks=pytest.mark.seaweedfs),
    ],
    indirect=True,
)
async def test_an_upload_url_takes_the_bytes_straight_to_storage_and_the_consumer_completes_it(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(presigned(backend.settings))
    data = jpeg_bytes(640, 480)
    before = await usage_of(backend)
    response = await ask(api, content_length=len(data), content_type="image/jpeg", file_name="beach.jpg")
    assert response.status == 201, await response.text()
    answer = await response.json()
    assert answer["status"] == "awaiting_upload" and answer["method"] == "PUT"
    assert response.headers["Location"] == answer["status_url"]
    assert answer["headers"]["Content-Type"] == "image/jpeg"
    image_id = answer["image_id"]
    # The quota is charged at once, and nothing is served yet.
    assert await usage_of(backend) == (before[0] + len(data), before[1] + 1)
    pending = await api.get(f"/images/{image_id}/variant?w=100")
    assert pending.status == 404 and (await pending.json())["error"] == "upload_pending"
    assert (await api.get(f"/download/thumbnail?user_id={USER}&image_id={image_id}")).status == 404

    stored = await put_to(answer, data)
    assert stored.status == 200
    await consume(backend)

    status = await (await api.get(answer["status_url"])).json()
    assert status["status"] == "ready", status
    assert status["bytes"] == len(data) and status["format"] == "jpeg" and status["file_name"] == "beach.jpg"
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    assert "upload_expires_at" not in status
    thumbnail = await api.get(f"/download/thumbnail?user_id={USER}&image_id={image_id}")
    assert thumbnail.status == 200 and max(decode(await thumbnail.read()).size) == 256
    original = await api.get(f"/download/image?user_id={USER}&image_id={image_id}")
    assert await original.read() == data
    assert await usage_of(backend) == (before[0] + len(data), before[1] + 1)
    # The same URL again (a client retrying a PUT that worked) changes nothing.
    assert (await put_to(answer, data)).status == 200
    await consume(backend)
    assert (await (await api.get(answer["status_url"])).json())["status"] == "ready"
    assert await dead_letter_reasons(backend) == []


async def test_the_request_is_checked_before_anything_is_reserved(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(presigned(backend.settings))
    most = backend.settings.imaging.max_bytes
    cases = [
        ({"content_type": "image/jpeg"}, 400, "missing_field"),
        ({"content_length": 10}, 400, "missing_field"),
        ({"content_length": 0, "content_type": "image/jpeg"}, 400, "invalid_field"),
        ({"content_length": "10", "content_type": "image/jpeg"}, 400, "invalid_field"),
        ({"content_length": True, "content_type": "image/jpeg"}, 400, "invalid_field"),
        ({"content_length": most + 1, "content_type": "image/jpeg"}, 413, "too_large"),
        ({"content_length": 10, "content_type": "text/plain"}, 400, "invalid_field"),
        ({"content_length": 10, "content_type": "image/bmp"}, 415, "format_not_allowed"),
        ({"content_length": 10, "content_type": "image/jpeg", "image_id": "../x"}, 400, "invalid_field"),
        ({"content_length": 10, "content_type": "image/jpeg", "file_name": 5}, 400, "invalid_field"),
        ({"content_length": 10, "content_type": "image/jpeg", "expires_in_days": 0}, 400, "invalid_field"),
    ]
    for body, status, code in cases:
        response = await ask(api, **body)
        assert response.status == status, (body, await response.text())
        assert (await response.json())["error"] == code, body
    assert await usage_of(backend) == (0, 0)

    # An id in use: an image (PUT replaces it), or a reservation whose URL still works.
    assert (await api.put("/images/taken", data=jpeg_bytes(32, 32))).status == 202
    taken = await ask(api, image_id="taken", content_length=10, content_type="image/jpeg")
    assert taken.status == 409 and (await taken.json())["error"] == "image_exists"
    assert (await ask(api, image_id="held", content_length=10, content_type="image/jpeg")).status == 201
    again = await ask(api, image_id="held", content_length=10, content_type="image/jpeg")
    assert again.status == 409 and (await again.json())["error"] == "upload_pending"
    through_api = await api.put("/images/held", data=jpeg_bytes(32, 32))
    assert through_api.status == 409 and (await through_api.json())["error"] == "upload_pending"

    # A deployment offering one mode refuses the other.
    only_api = await make_client(presigned(backend.settings, frozenset({"api"})))
    refused = await ask(only_api, content_length=10, content_type="image/jpeg")
    assert refused.status == 403 and (await refused.json())["error"] == "upload_mode_disabled"
    only_presigned = await make_client(presigned(backend.settings, frozenset({"presigned"})))
    refused = await only_presigned.put("/images/x", data=jpeg_bytes(32, 32))
    assert refused.status == 403 and (await refused.json())["error"] == "upload_mode_disabled"


async def test_a_reservation_counts_against_the_quota(backend: Backend, make_client: ClientFactory) -> None:
    accounts = dataclasses.replace(backend.settings.accounts, quota_bytes=10_000, quota_images=2)
    api = await make_client(dataclasses.replace(presigned(backend.settings), accounts=accounts))
    assert (await ask(api, content_length=6_000, content_type="image/jpeg")).status == 201
    over = await ask(api, content_length=6_000, content_type="image/jpeg")
    assert over.status == 413 and (await over.json())["error"] == "quota_bytes_exceeded"
    assert (await ask(api, content_length=4_000, content_type="image/jpeg")).status == 201
    full = await ask(api, content_length=1, content_type="image/jpeg")
    assert full.status == 403 and (await full.json())["error"] == "quota_images_exceeded"
    assert await usage_of(backend) == (10_000, 2)


async def test_bytes_other_than_the_url_allows_end_failed_and_are_removed(
    backend: Backend, make_client: ClientFactory
) -> None:
    """What a client that ignores the signed headers could leave (the embedded endpoint checks
    no signatures; S3 checks length and type header, not what the bytes are)."""
    api = await make_client(presigned(backend.settings))
    aws = backend.settings.aws
    data = jpeg_bytes(64, 48)
    answers = {}
    garbage = b"no image at all " * 64  # of the URL's length: its worker fails to decode it
    cases = (
        ("short", len(data) + 5, "image/jpeg", data),
        ("other", len(data), "image/png", data),
        ("junk", len(garbage), "image/jpeg", garbage),
    )
    for name, declared, ctype, body in cases:
        response = await ask(api, image_id=name, content_length=declared, content_type=ctype)
        answers[name] = await response.json()
        token = parse_qs(urlsplit(answers[name]["url"]).query).get("token", [None])[0]
        metadata = {"user-id": USER, "reservation": token or _token_of(answers[name])}
        # Put as a client with the URL's metadata but other bytes would.
        await backend.storage.put(aws.source_bucket, f"{USER}/{name}", body, ctype, metadata)
    await consume(backend)
    checks = (("short", f"has {len(data)} bytes"), ("other", "is jpeg"), ("junk", "not an image format"))
    for name, words in checks:
        status = await (await api.get(f"/images/{name}")).json()
        assert status["status"] == "failed" and status["error"]["code"] == "upload_mismatch", status
        assert words in status["error"]["message"]
        assert await backend.storage.etag_of(aws.source_bucket, f"{USER}/{name}") is None
        # Their worker read, made and (on S3) stored renditions before the check: none is kept.
        prefix = f"{USER}/{name}/"
        assert [
            o.key async for page in backend.storage.list_objects(aws.dest_bucket, prefix) for o in page
        ] == []
    # Their bytes are given back; the failed images still count until deleted.
    assert await usage_of(backend) == (0, 3)
    assert sorted(await dead_letter_reasons(backend)) == ["upload_mismatch"] * 3
    # The URL is spent: right bytes put through it afterwards are removed, never counted (else a
    # refund, then a second PUT, would store bytes past the quota).
    token = parse_qs(urlsplit(answers["short"]["url"]).query).get("token", [None])[0]
    metadata = {"user-id": USER, "reservation": token or _token_of(answers["short"])}
    await backend.storage.put(aws.source_bucket, f"{USER}/short", data + b"\0" * 5, "image/jpeg", metadata)
    await consume(backend)
    assert await backend.storage.etag_of(aws.source_bucket, f"{USER}/short") is None
    assert await dead_letter_reasons(backend) == ["upload_not_reserved"]
    # Its worker decoded those bytes, but stored nothing of them: they were not checked yet.
    prefix = f"{USER}/short/"
    assert [o.key async for page in backend.storage.list_objects(aws.dest_bucket, prefix) for o in page] == []
    assert (await (await api.get("/images/short")).json())["status"] == "failed"
    assert await usage_of(backend) == (0, 3)
    for name in answers:
        assert (await api.delete(f"/images/{name}")).status == 204
    assert await usage_of(backend) == (0, 0)


def _token_of(answer: dict[str, Any]) -> str:
    """The reservation token an S3 presigned answer carries in its signed metadata headers."""
    return str(answer["headers"]["x-amz-meta-reservation"])


async def test_bytes_whose_reservation_is_gone_are_removed_and_dead_lettered(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(presigned(backend.settings))
    data = jpeg_bytes(64, 48)
    answer = await (
        await ask(api, image_id="gone", content_length=len(data), content_type="image/jpeg")
    ).json()
    assert (await api.delete("/images/gone")).status == 204
    assert await usage_of(backend) == (0, 0)
    put = await put_to(answer, data)
    if backend.name == "local":  # the API's own upload route knows at once
        assert put.status == 410 and (await put.json())["error"] == "upload_not_reserved"
        return
    assert put.status == 200  # S3 knows nothing of reservations: the consumer removes the bytes
    await consume(backend)
    assert await backend.storage.etag_of(backend.settings.aws.source_bucket, f"{USER}/gone") is None
    assert (await api.get("/images/gone")).status == 404
    assert await dead_letter_reasons(backend) == ["upload_not_reserved"]
    assert await usage_of(backend) == (0, 0)


async def test_gc_releases_a_reservation_never_used_once_its_url_has_expired(
    backend: Backend, make_client: ClientFactory
) -> None:
    settings = presigned(backend.settings)
    api = await make_client(settings)
    data = jpeg_bytes(64, 48)
    unused = await (await ask(api, image_id="unused", content_length=999, content_type="image/jpeg")).json()
    used = await (await ask(api, image_id="used", content_length=len(data), content_type="image/jpeg")).json()
    assert (await put_to(used, data)).status == 200
    await consume(backend)
    assert await usage_of(backend) == (999 + len(data), 2)

    # Before its URL (and the margin after it) has expired, gc leaves it.
    report = await collect(backend.ports, settings)
    assert report.released_reservations == 0
    later = datetime.now(UTC) + timedelta(
        seconds=settings.web.upload_url_seconds + RELEASE_MARGIN_SECONDS + 5
    )
    dry = await collect(backend.ports, settings, now=later, dry_run=True)
    assert dry.released_reservations == 1 and await usage_of(backend) == (999 + len(data), 2)
    report = await collect(backend.ports, settings, now=later)
    assert report.released_reservations == 1 and report.released_reservation_bytes == 999
    assert await usage_of(backend) == (len(data), 1)
    assert (await api.get("/images/unused")).status == 404
    assert (await (await api.get("/images/used")).json())["status"] == "ready"
    # Its URL is no good any more, and its id is free.
    if backend.name == "local":
        late = await put_to(unused, b"\xff" * 999)
        assert late.status == 410
    again = await ask(api, image_id="unused", content_length=10, content_type="image/jpeg")
    assert again.status == 201


async def test_an_expired_reservation_gives_its_id_to_a_new_upload_or_reservation(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(presigned(backend.settings))
    assert (await ask(api, image_id="late", content_length=999, content_type="image/jpeg")).status == 201
    records = RecordStore(backend.tables.images, backend.tables.users)
    ref = ImageRef.of(USER, "late")
    record = await records.read(ref)
    assert record is not None
    held = dict(record.item["awaiting_upload"], expires_at=1)  # as if its URL expired long ago
    await backend.tables.images.put({**record.item, "awaiting_upload": held})
    data = jpeg_bytes(64, 48)
    assert (await api.put("/images/late", data=data)).status == 202
    status = await (await api.get("/images/late")).json()
    assert status["status"] == "pending" and status["bytes"] == len(data)
    assert await usage_of(backend) == (len(data), 1)

    # A new reservation takes an expired one's id too, and its quota replaces the old one's.
    assert (await ask(api, image_id="again", content_length=500, content_type="image/png")).status == 201
    record = await records.read(ImageRef.of(USER, "again"))
    assert record is not None
    await backend.tables.images.put(
        {**record.item, "awaiting_upload": {**record.item["awaiting_upload"], "expires_at": 1}}
    )
    renewed = await ask(api, image_id="again", content_length=700, content_type="image/jpeg")
    assert renewed.status == 201, await renewed.text()
    assert (await renewed.json())["content_type"] == "image/jpeg"
    assert await usage_of(backend) == (len(data) + 700, 2)


@pytest.mark.parametrize("backend", ["local"], indirect=True)
async def test_the_local_upload_route_acts_as_s3_does_with_a_presigned_put(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(presigned(backend.settings))
    data = jpeg_bytes(64, 48)
    answer = await (await ask(api, content_length=len(data), content_type="image/jpeg")).json()
    url = answer["url"]
    for changed in (url.replace("sig=", "sig=0"), url.replace("expires=", "expires=1")):
        tampered = await put_to({**answer, "url": changed}, data)
        assert tampered.status == 403 and (await tampered.json())["error"] == "invalid_link"
    wrong_type = await put_to(answer, data, **{"Content-Type": "image/png"})
    assert wrong_type.status == 422 and (await wrong_type.json())["error"] == "upload_mismatch"
    wrong_length = await put_to(answer, data + b"extra")
    assert wrong_length.status == 422 and (await wrong_length.json())["error"] == "upload_mismatch"
    not_jpeg = await put_to(answer, png_bytes(8, 8)[: len(data)].ljust(len(data), b"\0"))
    assert not_jpeg.status == 415
    assert (await (await api.get(answer["status_url"])).json())["status"] == "awaiting_upload"
    assert (await put_to(answer, data)).status == 200
    await consume(backend)
    assert (await (await api.get(answer["status_url"])).json())["status"] == "ready"


@pytest.mark.parametrize("backend", ["aws"], indirect=True)
async def test_an_s3_upload_url_signs_the_length_type_and_metadata(
    backend: Backend, make_client: ClientFactory
) -> None:
    """What makes S3 refuse other bytes: its signature covers the length, the type and the
    metadata naming the owner and the reservation (moto does not check; S3 does)."""
    api = await make_client(presigned(backend.settings))
    answer = await (await ask(api, content_length=1234, content_type="image/png")).json()
    query = parse_qs(urlsplit(answer["url"]).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert int(query["X-Amz-Expires"][0]) == backend.settings.web.upload_url_seconds
    signed = set(query["X-Amz-SignedHeaders"][0].split(";"))
    assert {
        "content-length",
        "content-type",
        "host",
        "x-amz-meta-reservation",
        "x-amz-meta-user-id",
    } <= signed
    assert answer["headers"]["x-amz-meta-user-id"] == USER
    assert (
        urlsplit(answer["url"]).path == f"/{backend.settings.aws.source_bucket}/{USER}/{answer['image_id']}"
    )


async def test_allowed_bytes_that_fail_to_decode_are_kept_and_counted_as_any_upload(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(presigned(backend.settings))
    broken = jpeg_bytes(640, 480)[:3000]  # a JPEG's start: the right format, but no image in it
    answer = await (await ask(api, content_length=len(broken), content_type="image/jpeg")).json()
    assert (await put_to(answer, broken)).status == 200
    await consume(backend)
    status = await (await api.get(answer["status_url"])).json()
    assert status["status"] == "failed" and status["error"]["code"] != "upload_mismatch", status
    assert status["bytes"] == len(broken)
    original = await api.get(f"/download/image?user_id={USER}&image_id={answer['image_id']}")
    assert original.status == 200 and await original.read() == broken
    assert await usage_of(backend) == (len(broken), 1)


async def test_a_reservation_made_while_an_api_upload_streams_wins_and_the_upload_gives_way(
    backend: Backend, make_client: ClientFactory
) -> None:
    """The API's upload checked the id before its body arrived; the reservation came in between.
    Its record write sees the reservation and refuses (409), removing the bytes it stored, so
    the URL's PUT is the one that counts."""
    api = await make_client(presigned(backend.settings))
    data = jpeg_bytes(64, 48)
    reserved: list[dict[str, Any]] = []

    async def reserve() -> None:
        response = await ask(api, image_id="contested", content_length=len(data), content_type="image/jpeg")
        assert response.status == 201, await response.text()
        reserved.append(await response.json())

    reserving: list[asyncio.Task[None]] = []

    async def body() -> AsyncIterator[bytes]:
        yield data[:100]
        # A task of its own: the server may refuse the upload (and the client stop sending this
        # body) as soon as the reservation exists, before its answer is read here.
        reserving.append(asyncio.create_task(reserve()))
        await asyncio.shield(reserving[0])
        yield data[100:]

    refused = await api.put("/images/contested", data=body())
    await reserving[0]
    assert refused.status == 409 and (await refused.json())["error"] == "upload_pending"
    aws = backend.settings.aws
    assert await backend.storage.etag_of(aws.source_bucket, f"{USER}/contested") is None
    assert (await (await api.get("/images/contested")).json())["status"] == "awaiting_upload"
    assert await usage_of(backend) == (len(data), 1)
    assert (await put_to(reserved[0], data)).status == 200
    await consume(backend)
    assert (await (await api.get("/images/contested")).json())["status"] == "ready"
    assert await usage_of(backend) == (len(data), 1)


async def test_the_serving_process_releases_unused_reservations_itself(
    backend: Backend, make_client: ClientFactory
) -> None:
    """No gc needed: the API process watches the reservations it makes and releases each when it
    falls due, and its periodic sweep finds those another process made."""
    settings = presigned(backend.settings)
    api = await make_client(settings)
    sweeper = api.server.app[SWEEPER]
    assert (await ask(api, image_id="mine", content_length=999, content_type="image/jpeg")).status == 201
    assert await usage_of(backend) == (999, 1)
    later = settings.web.upload_url_seconds + RELEASE_MARGIN_SECONDS + 5
    sweeper.clock = lambda: time.time() + later
    sweeper.wake()
    async with asyncio.timeout(10):
        while await usage_of(backend) != (0, 0):
            await asyncio.sleep(0.05)
    assert (await api.get("/images/mine")).status == 404
    # One made elsewhere (not watched here): the sweep takes it.
    sweeper.clock = time.time
    assert (await ask(api, image_id="other", content_length=500, content_type="image/jpeg")).status == 201
    sweeper.clock = lambda: time.time() + later
    assert await sweeper.sweep() == 1 and await usage_of(backend) == (0, 0)


async def iam_key(endpoint: str) -> tuple[str, str]:
    """A key made through the emulator's IAM (MiniStack checks the signatures of such keys only),
    for a user allowed every S3 action."""
    session = get_session()
    async with session.create_client(
        "iam", endpoint_url=endpoint, region_name="us-east-1", **EMBEDDED_CREDENTIALS
    ) as iam:
        user = f"signer-{uuid.uuid4().hex[:8]}"
        await iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
        }
        await iam.put_user_policy(UserName=user, PolicyName="objects", PolicyDocument=json.dumps(policy))
        made = (await iam.create_access_key(UserName=user))["AccessKey"]
    return made["AccessKeyId"], made["SecretAccessKey"]


@pytest.mark.ministack
async def test_a_store_that_checks_signatures_refuses_every_other_use_of_the_url(
    ministack_endpoint: str, make_client: ClientFactory
) -> None:
    """What `test_an_s3_upload_url_signs_the_length_type_and_metadata` says S3 does, seen done:
    MiniStack refuses the URL used with another length, type or owner, with a signature changed
    and once expired (403, from the store itself: moto takes all five), and each refusal leaves
    the reservation and the owner's quota as they were; the URL used as made gives a ready image.
    The objects are reached with a key of their own (`IMGSVC_S3_ACCESS_KEY_ID`, made through
    MiniStack's IAM), the queues and tables with the root key: the URL, the consumer's worker and
    the API all sign with the store's."""
    key_id, secret = await iam_key(ministack_endpoint)
    keys = {"IMGSVC_S3_ACCESS_KEY_ID": key_id, "IMGSVC_S3_SECRET_ACCESS_KEY": secret}
    async with aws_stack("ministack", ministack_endpoint, **keys) as backend:
        api = await make_client(presigned(backend.settings))
        data = jpeg_bytes(320, 240)
        answer = await (await ask(api, content_length=len(data), content_type="image/jpeg")).json()
        charged = await usage_of(backend)
        assert charged[1] == 1
        query = parse_qs(urlsplit(answer["url"]).query)
        assert query["X-Amz-Credential"][0].startswith(key_id + "/")  # signed with the store's key
        signature = query["X-Amz-Signature"][0]
        forged = answer["url"].replace(signature, signature[::-1])
        metadata = {
            k.removeprefix("x-amz-meta-"): v for k, v in answer["headers"].items() if k.startswith("x-amz-")
        }
        source, key = backend.settings.aws.source_bucket, f"{USER}/{answer['image_id']}"
        expired, _ = await backend.ports.presign_put(source, key, 1, "image/jpeg", len(data), metadata)
        await asyncio.sleep(2)
        refusals = {
            "another length": await put_to(answer, data + b"\0"),
            "another type": await put_to(answer, data, **{"Content-Type": "image/png"}),
            "another owner": await put_to(answer, data, **{"x-amz-meta-user-id": OTHER_USER}),
            "a changed signature": await put_to({**answer, "url": forged}, data),
            "an expired URL": await put_to({**answer, "url": expired}, data),
        }
        for case, refused in refusals.items():
            assert refused.status == 403, case
            assert await backend.storage.etag_of(source, key) is None, case
            assert await usage_of(backend) == charged, case
            status = await (await api.get(answer["status_url"])).json()
            assert status["status"] == "awaiting_upload", case
        assert (await put_to(answer, data)).status == 200
        assert (await consume(backend)).get("ready") == 1
        assert (await (await api.get(answer["status_url"])).json())["status"] == "ready"
        assert await usage_of(backend) == charged
