"""Uploads through real HTTP into the real moto S3: happy paths, streaming, and every refusal."""

from __future__ import annotations

import io
import os
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from tests.support.clients import ClientFactory
from tests.support.images import jpeg_bytes
from tests.support.settings import OTHER_USER, ROOT, USER
from tests.support.state import keys_in, object_in

Client = TestClient[Any, Any]
pytestmark = pytest.mark.backend("local")


async def test_compat_upload_stores_input_file_as_image(api: Client, settings: Settings) -> None:
    response = await api.post("/upload", json={"file_name": "cat.jpg", "user_id": USER})
    assert response.status == 202
    body = await response.json()
    assert body["image_id"] == "cat" and body["status"] == "pending" and body["format"] == "jpeg"
    assert response.headers["Location"] == body["status_url"] == f"/images/cat?user_id={USER}"
    head, data = await object_in(settings, f"{USER}/cat")
    assert head.content_type == "image/jpeg"
    assert head.size == len(data) == (ROOT / "input" / "cat.jpg").stat().st_size
    assert head.metadata["original-filename"] == "cat.jpg"


async def test_put_streams_raw_body(api: Client, settings: Settings) -> None:
    data = jpeg_bytes(640, 480)
    response = await api.put(
        f"/images/holiday-1?user_id={USER}", data=data, headers={"X-File-Name": "beach.jpg"}
    )
    assert response.status == 202, await response.text()
    assert (await object_in(settings, f"{USER}/holiday-1"))[1] == data


async def test_put_multipart_with_one_file_part(api: Client, settings: Settings) -> None:
    data = (ROOT / "input" / "dog.jpg").read_bytes()
    form = aiohttp.FormData(quote_fields=False)  # raw UTF-8 file name, as browsers send it
    form.add_field("note", "ignored form field")
    form.add_field("file", data, filename="mein hünd.jpg", content_type="application/octet-stream")
    response = await api.put(f"/images/dog2?user_id={USER}", data=form)
    assert response.status == 202, await response.text()
    meta, stored = await object_in(settings, f"{USER}/dog2")
    assert stored == data
    assert meta.content_type == "image/jpeg"  # from the magic bytes, not the client's claim
    assert meta.metadata["original-filename"] == "mein h%C3%BCnd.jpg"


async def test_post_generates_unguessable_ids(api: Client) -> None:
    ids = set()
    for _ in range(2):
        response = await api.post(f"/images?user_id={USER}", data=jpeg_bytes(50, 50))
        assert response.status == 202
        ids.add((await response.json())["image_id"])
    assert len(ids) == 2 and all(len(i) == 24 for i in ids)


@pytest.mark.backend("aws")  # S3's multipart upload, in parts
async def test_large_upload_goes_through_multipart_in_parts(
    make_settings: Any, make_client: ClientFactory, clients: AwsClients
) -> None:
    settings = make_settings(IMGSVC_UPLOAD_PART_SIZE=str(5 * 1024 * 1024))
    api = await make_client(settings)
    noise = Image.frombytes("RGB", (2000, 2000), os.urandom(2000 * 2000 * 3))
    out = io.BytesIO()
    noise.save(out, "PNG", compress_level=0)
    data = out.getvalue()
    assert len(data) > 2 * 5 * 1024 * 1024

    async def chunks() -> Any:  # a chunked body with no Content-Length, as a streaming client sends
        for i in range(0, len(data), 1 << 20):
            yield data[i : i + (1 << 20)]

    response = await api.put(f"/images/noise?user_id={USER}", data=chunks())
    assert response.status == 202, await response.text()
    stored = await clients.s3.get_object(Bucket=settings.aws.source_bucket, Key=f"{USER}/noise")
    assert stored["ContentLength"] == len(data)
    assert await stored["Body"].read() == data
    assert "-" in stored["ETag"]  # a multipart ETag: the body went up in parts


async def test_declared_content_length_over_cap_is_refused_before_reading(
    make_settings: Any, make_client: ClientFactory
) -> None:
    api = await make_client(make_settings(IMGSVC_MAX_BYTES="1000"))
    response = await api.put(f"/images/x?user_id={USER}", data=jpeg_bytes(200, 200))
    assert response.status == 413
    assert (await response.json())["error"] == "too_large"


GOOD = {"file_name": "cat.jpg", "user_id": USER}


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [
        (
            "POST",
            "/upload",
            {"data": "{not json", "headers": {"Content-Type": "application/json"}},
            400,
            "invalid_json",
        ),
        ("POST", "/upload", {"json": ["cat.jpg"]}, 400, "invalid_json"),
        ("POST", "/upload", {"data": "file_name=cat.jpg"}, 415, "unsupported_media_type"),
        ("POST", "/upload", {"json": {"user_id": USER}}, 400, "missing_field"),
        ("POST", "/upload", {"json": {**GOOD, "user_id": "not-a-uuid"}}, 400, "invalid_field"),
        ("POST", "/upload", {"json": {**GOOD, "user_id": 42}}, 400, "invalid_field"),
        (
            "POST",
            "/upload",
            {"json": {**GOOD, "user_id": "00000000-0000-0000-0000-000000000000"}},
            403,
            "forbidden",
        ),
        ("POST", "/upload", {"json": {**GOOD, "file_name": "../pyproject.toml"}}, 400, "invalid_field"),
        ("POST", "/upload", {"json": {**GOOD, "file_name": "/etc/passwd"}}, 400, "invalid_field"),
        ("POST", "/upload", {"json": {**GOOD, "file_name": "sub\\cat.jpg"}}, 400, "invalid_field"),
        ("POST", "/upload", {"json": {**GOOD, "file_name": ["cat.jpg"]}}, 400, "invalid_field"),
        ("POST", "/upload", {"json": {**GOOD, "file_name": "cow.jpg"}}, 404, "file_not_found"),
        ("POST", "/upload", {"json": {**GOOD, "file_name": "README.md"}}, 415, "not_an_image"),
        ("POST", "/upload", {"json": {**GOOD, "pad": "x" * 70_000}}, 413, "too_large"),
        (
            "PUT",
            f"/images/ok?user_id={USER}",
            {"data": b"just some text, named cat.jpg"},
            415,
            "not_an_image",
        ),
        (
            "PUT",
            f"/images/ok?user_id={USER}",
            {"data": b"<svg xmlns='http://www.w3.org/2000/svg'/>" * 3},
            415,
            "not_an_image",
        ),
        ("PUT", f"/images/ok?user_id={USER}", {"data": b"%PDF-1.7\n" + b"0" * 64}, 415, "not_an_image"),
        ("PUT", f"/images/ok?user_id={USER}", {"data": b""}, 400, "empty_upload"),
        ("PUT", f"/images/ok?user_id={USER}", {"data": b"\x89PNG"}, 415, "not_an_image"),
        ("PUT", f"/images/-bad?user_id={USER}", {"data": b"x"}, 400, "invalid_field"),
        ("PUT", f"/images/{'a' * 65}?user_id={USER}", {"data": b"x"}, 400, "invalid_field"),
        ("PUT", f"/images/ok?user_id={OTHER_USER}", {"data": b"x"}, 403, "forbidden"),
        (
            "PUT",
            f"/images/ok?user_id={USER}",
            {"data": b"--x--", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
            400,
            "bad_request",
        ),
        (  # found by schemathesis: was a 500
            "PUT",
            f"/images/ok?user_id={USER}",
            {"data": b"x", "headers": {"Content-Type": "multipart/form-data"}},
            400,
            "bad_request",
        ),
        ("GET", "/upload", {}, 405, "method_not_allowed"),
        ("GET", "/nope", {}, 404, "not_found"),
        ("POST", f"/images/cat?user_id={USER}", {}, 405, "method_not_allowed"),
    ],
)
async def test_bad_input_gets_documented_json_error(
    api: Client, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    response = await api.request(method, path, **kwargs)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in body["message"]


async def test_users_are_isolated_by_key(api: Client, settings: Settings, make_client: ClientFactory) -> None:
    other = await make_client(settings, user=OTHER_USER)
    for client, user in ((api, USER), (other, OTHER_USER)):
        response = await client.put("/images/same", data=jpeg_bytes(30 if user == USER else 40, 30))
        assert response.status == 202
        assert (await response.json())["user_id"] == user  # the key names the user
    assert sorted(await keys_in(settings)) == sorted([f"{USER}/same", f"{OTHER_USER}/same"])
