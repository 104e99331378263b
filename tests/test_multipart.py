"""Resumable uploads (`web.handlers.multipart`) on each backend: the parts go to their URLs (S3
presigned `UploadPart` URLs on moto, the API's own part route on the local backend and beside
SeaweedFS), in any order and again after a failure; `upload-parts` says which arrived, with
fresh URLs; `upload-complete` joins them once every part is there at its exact length; the
consumer completes the image as for one PUT; deleting the image or its reservation running out
aborts the upload. Quotas are charged once, at the reservation."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from config.settings import Settings
from pipeline.cli.gc import collect
from pipeline.core.errors import NotFound
from pipeline.core.layout import ImageRef
from pipeline.core.records import RecordStore
from pipeline.core.reservations import RELEASE_MARGIN_SECONDS
from pipeline.core.sweeper import release_unused
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.settings import USER
from web.handlers.multipart import MIN_PART, part_size_for

Client = TestClient[Any, Any]
MIB = 1024 * 1024

#: On moto (S3's presigned part URLs), the local backend and the local backend beside SeaweedFS.
BACKENDS = pytest.mark.parametrize(
    "backend",
    [
        pytest.param("aws", marks=pytest.mark.moto),
        "local",
        pytest.param("seaweedfs-local", marks=pytest.mark.seaweedfs),
    ],
    indirect=True,
)


def resumable(settings: Settings, max_bytes: int = 64 * MIB) -> Settings:
    web = dataclasses.replace(settings.web, upload_modes=frozenset({"api", "presigned"}))
    imaging = dataclasses.replace(settings.imaging, max_bytes=max_bytes)
    return dataclasses.replace(settings, web=web, imaging=imaging)


def big_jpeg(size: int) -> bytes:
    """A real JPEG (decodes as 64x48) followed by filler to `size` bytes, as a camera's trailer
    would: large without costing the test a large decode."""
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 80, 20)).save(out, "JPEG")
    head = out.getvalue()
    filler = hashlib.shake_256(b"filler").digest(size - len(head))
    return head + filler


async def begin(api: Client, data: bytes, **extra: Any) -> dict[str, Any]:
    body = {"content_length": len(data), "content_type": "image/jpeg", "multipart": True, **extra}
    response = await api.post("/images/upload-url", json=body)
    assert response.status == 201, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


async def send(answer: dict[str, Any], number: int, data: bytes) -> aiohttp.ClientResponse:
    """PUT part `number` as a client holding only its URL would: no key."""
    return await send_bytes(answer["parts"][number - 1]["url"], chunk(answer, data, number))


async def send_bytes(url: str, body: bytes) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as session, session.put(url, data=io.BytesIO(body)) as response:
        await response.read()
        return response


def chunk(answer: dict[str, Any], data: bytes, number: int) -> bytes:
    size = answer["part_size"]
    return data[(number - 1) * size : number * size]


async def usage(backend: Backend) -> tuple[int, int]:
    user = await backend.tables.users.get({"user_id": USER}) or {}
    return int(user.get("bytes_used", 0)), int(user.get("image_count", 0))


@BACKENDS
async def test_parts_in_any_order_and_again_then_complete_make_the_image(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(resumable(backend.settings))
    data = big_jpeg(20 * MIB)
    before = await usage(backend)
    answer = await begin(api, data, file_name="big.jpg")
    assert answer["status"] == "awaiting_upload" and answer["part_size"] == MIN_PART
    assert [p["length"] for p in answer["parts"]] == [8 * MIB, 8 * MIB, 4 * MIB]
    assert await usage(backend) == (before[0] + len(data), before[1] + 1)  # charged once, now
    parts = answer["parts"]
    for number in (3, 1):
        sent = await send_bytes(parts[number - 1]["url"], chunk(answer, data, number))
        assert sent.status == 200 and sent.headers["ETag"]
    # Lost its place: which arrived, with fresh URLs for every part.
    listed = await api.get(answer["parts_url"])
    state = await listed.json()
    assert listed.status == 200, state
    assert [p["received"] for p in state["parts"]] == [True, False, True]
    early = await api.post(answer["complete_url"], json={})
    assert early.status == 422 and "part 2 has not arrived" in (await early.json())["message"]
    # A part sent again (a retry after a cut) replaces the first copy whole.
    for number in (2, 2):
        assert (
            await send_bytes(state["parts"][number - 1]["url"], chunk(answer, data, number))
        ).status == 200
    done = await api.post(answer["complete_url"], json={})
    assert done.status == 202, await done.text()
    again = await api.post(answer["complete_url"], json={})  # a client retrying: the same answer
    assert again.status == 202
    # moto announces a completed upload twice (ObjectCreated:Put and :CompleteMultipartUpload;
    # S3 sends the second alone): the second finds the image made.
    outcomes = await consume(backend)
    assert outcomes.get("ready", 0) >= 1 and not outcomes.get("dead_lettered"), outcomes
    status = await (await api.get(answer["status_url"])).json()
    assert status["status"] == "ready" and status["bytes"] == len(data) and status["file_name"] == "big.jpg"
    assert status["sha256"] == hashlib.sha256(data).hexdigest()
    original = await api.get(f"/download/image?user_id={USER}&image_id={answer['image_id']}")
    assert await original.read() == data
    assert await usage(backend) == (before[0] + len(data), before[1] + 1)


@BACKENDS
async def test_a_part_or_a_join_that_is_not_the_upload_is_refused(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(resumable(backend.settings))
    data = big_jpeg(9 * MIB)
    answer = await begin(api, data)
    first, second = answer["parts"]
    if backend.name != "aws":  # the API's part route checks the length (S3 does: moto does not)
        short = await send_bytes(first["url"], chunk(answer, data, 1)[:-1])
        assert short.status == 422 and (await short.json())["error"] == "upload_mismatch"
    tampered = first["url"].replace("sig=", "sig=0") if "sig=" in first["url"] else None
    if tampered:
        assert (await send_bytes(tampered, chunk(answer, data, 1))).status == 403
    assert (await send_bytes(first["url"], chunk(answer, data, 1))).status == 200
    assert (await send_bytes(second["url"], chunk(answer, data, 2))).status == 200
    wrong = await api.post(answer["complete_url"], json={"parts": [{"number": 1, "etag": '"0000"'}]})
    assert wrong.status == 422 and "part 1 is not the one named" in (await wrong.json())["message"]
    bad = await api.post(answer["complete_url"], json={"parts": "all"})
    assert bad.status == 400
    assert (await api.post(answer["complete_url"], json={})).status == 202
    assert (await consume(backend)).get("ready", 0) >= 1


@BACKENDS
async def test_deleting_the_image_aborts_the_upload_and_gives_the_quota_back(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(resumable(backend.settings))
    data = big_jpeg(9 * MIB)
    before = await usage(backend)
    answer = await begin(api, data)
    assert (await send(answer, 1, data)).status == 200
    assert (await api.delete(f"/images/{answer['image_id']}")).status == 204
    assert await usage(backend) == before
    key = ImageRef.of(USER, answer["image_id"]).source_key
    with pytest.raises(NotFound):
        await backend.storage.list_parts(backend.settings.aws.source_bucket, key, answer["upload_id"])
    gone = await api.get(answer["parts_url"])
    assert gone.status == 404
    late = await send_bytes(answer["parts"][1]["url"], chunk(answer, data, 2))
    # S3: 404 NoSuchUpload; the API: 410, its reservation gone; moto: 500 (its own fault).
    assert late.status in (403, 404, 410) or (backend.name == "aws" and late.status == 500), late.status


@BACKENDS
async def test_a_reservation_released_unused_takes_its_parts_with_it(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(resumable(backend.settings))
    data = big_jpeg(9 * MIB)
    answer = await begin(api, data)
    assert (await send(answer, 1, data)).status == 200
    records = RecordStore(backend.tables.images, backend.tables.users)
    ref = ImageRef.of(USER, answer["image_id"])
    record = await records.read(ref)
    assert record is not None
    far = record.item["awaiting_upload"]["expires_at"] + 3600
    bucket = backend.settings.aws.source_bucket
    assert await release_unused(backend.storage, records, bucket, record, far)
    with pytest.raises(NotFound):
        await backend.storage.list_parts(bucket, ref.source_key, answer["upload_id"])


def test_the_part_size_keeps_within_s3s_ten_thousand_parts() -> None:
    assert part_size_for(1) == MIN_PART
    assert part_size_for(200 * MIB) == MIN_PART
    huge = 5 * 1024**4  # S3's largest object
    size = part_size_for(huge)
    assert size % MIB == 0 and -(-huge // size) <= 10_000


@BACKENDS
async def test_its_bytes_are_noted_so_the_same_bytes_again_are_a_duplicate(
    backend: Backend, make_client: ClientFactory
) -> None:
    """As for any presigned upload, the API never sees the bytes, so the worker that makes the
    renditions hashes them: the digest is noted then, and the same bytes uploaded again through
    the API are found a duplicate (their renditions copied, nothing made again)."""
    api = await make_client(resumable(backend.settings))
    data = big_jpeg(9 * MIB)
    answer = await begin(api, data)
    for part in answer["parts"]:
        assert (await send(answer, part["number"], data)).status == 200
    assert (await api.post(answer["complete_url"], json={})).status == 202
    await consume(backend)
    assert (await api.put("/images/again", data=io.BytesIO(data))).status == 202
    await consume(backend)
    first = await (await api.get(f"/images/{answer['image_id']}")).json()
    again = await (await api.get("/images/again")).json()
    assert first["status"] == again["status"] == "ready" and "duplicate_of" not in first
    assert again["duplicate_of"] == answer["image_id"] and again["sha256"] == first["sha256"]


@BACKENDS
async def test_gc_releases_a_reservation_run_out_and_aborts_uploads_left_behind(
    backend: Backend, make_client: ClientFactory
) -> None:
    settings = resumable(backend.settings)
    api = await make_client(settings)
    data = big_jpeg(9 * MIB)
    answer = await begin(api, data)
    assert (await send(answer, 1, data)).status == 200
    bucket = settings.aws.source_bucket
    # An upload no reservation names (an API that crashed between beginning it and recording it).
    orphan = await backend.storage.start_parts(bucket, f"{USER}/orphan", "image/jpeg", {})
    if backend.name != "aws":  # moto dates every multipart upload 2010-11-10: all look stale
        assert (await collect(backend.ports, settings)).stale_uploads == 0  # too young to be stale
    later = datetime.now(UTC) + timedelta(
        seconds=settings.web.multipart_upload_seconds + RELEASE_MARGIN_SECONDS + 5
    )
    report = await collect(backend.ports, settings, now=later)
    assert report.released_reservations == 1 and report.stale_uploads >= 1
    for key, upload_id in (
        (ImageRef.of(USER, answer["image_id"]).source_key, answer["upload_id"]),
        (f"{USER}/orphan", orphan),
    ):
        with pytest.raises(NotFound):
            await backend.storage.list_parts(bucket, key, upload_id)


@BACKENDS
async def test_two_joins_at_once_make_one_image_and_neither_fails(
    backend: Backend, make_client: ClientFactory
) -> None:
    """A client retrying a join whose answer is slow: one request joins the parts, the other
    answers the same or asks to be asked again (503 `upload_completing`), never an error of ours."""
    api = await make_client(resumable(backend.settings))
    data = big_jpeg(17 * MIB)
    answer = await begin(api, data)
    for part in answer["parts"]:
        assert (await send(answer, part["number"], data)).status == 200
    joins = await asyncio.gather(*(api.post(answer["complete_url"], json={}) for _ in range(3)))
    statuses = sorted(j.status for j in joins)
    assert 202 in statuses and set(statuses) <= {202, 503}, statuses
    for join in joins:
        if join.status == 503:
            assert (await join.json())["error"] == "upload_completing" and join.headers["Retry-After"]
    assert (await api.post(answer["complete_url"], json={})).status == 202
    await consume(backend)
    status = await (await api.get(answer["status_url"])).json()
    assert status["status"] == "ready" and status["sha256"] == hashlib.sha256(data).hexdigest()
