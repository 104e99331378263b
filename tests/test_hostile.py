"""Hostile input: each case answers a documented status with a JSON error, or lands in the DLQ
with its reason. Nothing crashes, hangs, or is stored half-way."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from pipeline.backends import open_backend
from pipeline.core.accounts import Accounts
from pipeline.core.errors import PoisonMessage
from pipeline.core.events import parse_message
from tests.support.clients import ClientFactory
from tests.support.consumers import drain
from tests.support.images import decode, png_header_only
from tests.support.settings import USER, local_settings
from tests.support.state import dead_lettered, nothing_stored, state_in, stored_nothing

Client = TestClient[Any, Any]
#: Nothing here is AWS's own behaviour but an S3 multipart upload left open, marked below.
pytestmark = pytest.mark.backend("local")


def encoded(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def gradient(fmt: str, size: tuple[int, int] = (600, 400)) -> bytes:
    return encoded(Image.linear_gradient("L").resize(size).convert("RGB"), fmt)


def patched(data: bytes, marker: bytes, offset: int, replacement: bytes) -> bytes:
    """Overwrite bytes at `offset` after the first `marker`: a targeted bit-flip."""
    out = bytearray(data)
    at = out.index(marker) + offset
    out[at : at + len(replacement)] = replacement
    return bytes(out)


def gif_bomb() -> bytes:
    """A 10x10 GIF whose screen and frame claim 65535x65535."""
    data = bytearray(encoded(Image.new("P", (10, 10)), "GIF"))
    data[6:10] = b"\xff\xff\xff\xff"
    return patched(bytes(data), b"\x2c", 5, b"\xff\xff\xff\xff")


def png_bomb() -> bytes:
    return png_header_only(50_000, 50_000)


def many_frames(count: int) -> bytes:
    frames = [Image.new("RGB", (20, 20), (i * 8 % 256, 0, 0)) for i in range(count)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40)


def polyglot() -> bytes:
    return encoded(Image.new("RGB", (300, 200), (0, 200, 0)), "JPEG") + POLYGLOT_PAYLOAD


POLYGLOT_PAYLOAD = b"<html><script>alert('owned')</script></html>"
SVG_XXE = b"""<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>"""
SVG_SCRIPT = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'

# --- Refused at upload: status and code --------------------------------------------------------

UPLOAD_REFUSALS = {
    "text-as-jpeg": (
        b"plain text pretending to be a JPEG" * 3,
        {"Content-Type": "image/jpeg"},
        415,
        "not_an_image",
    ),
    "svg-xxe": (SVG_XXE, {"Content-Type": "image/svg+xml"}, 415, "not_an_image"),
    "svg-script": (SVG_SCRIPT, {"Content-Type": "image/svg+xml"}, 415, "not_an_image"),
    "html": (
        b"<!doctype html><html><body>hi</body></html>",
        {"Content-Type": "image/png"},
        415,
        "not_an_image",
    ),
    "pdf": (b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n" * 2, {}, 415, "not_an_image"),
    "psd": (b"8BPS\x00\x01" + b"\x00" * 40, {}, 415, "not_an_image"),
    "fits": (b"SIMPLE  =                    T" + b" " * 50, {}, 415, "not_an_image"),
    "zip": (b"PK\x03\x04" + b"\x00" * 40, {}, 415, "not_an_image"),
    "elf": (b"\x7fELF\x02\x01\x01" + b"\x00" * 40, {}, 415, "not_an_image"),
    "bmp": (encoded(Image.new("RGB", (8, 8)), "BMP"), {}, 415, "not_an_image"),
    "ico": (encoded(Image.new("RGB", (16, 16)), "ICO"), {}, 415, "not_an_image"),
    "one-byte": (b"\xff", {}, 415, "not_an_image"),
    "empty": (b"", {}, 400, "empty_upload"),
}


@pytest.mark.parametrize("case", UPLOAD_REFUSALS)
async def test_refused_at_upload(api: Client, case: str) -> None:
    body, headers, status, code = UPLOAD_REFUSALS[case]
    response = await api.put(f"/images/hostile?user_id={USER}", data=body, headers=headers)
    assert response.status == status
    assert (await response.json())["error"] == code


@pytest.mark.parametrize(
    ("image_id", "status", "code"),
    [
        ("a%2Fb", 400, "invalid_field"),
        ("..", 405, "method_not_allowed"),  # normalised before routing: /images/.. is /, GET only
        ("a%00b", 400, "invalid_field"),
        ("%C3%BCber", 400, "invalid_field"),
        (".hidden", 400, "invalid_field"),
        ("a.b", 400, "invalid_field"),
    ],
)
async def test_image_ids_with_path_characters(api: Client, image_id: str, status: int, code: str) -> None:
    response = await api.put(f"/images/{image_id}?user_id={USER}", data=gradient("JPEG"))
    assert response.status == status
    assert (await response.json())["error"] == code


@pytest.mark.parametrize(
    "user_id",
    ["../etc", "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e/../x", "AB11ED09-03DA-4D77-9B8D-6D07B5DB1E5E", "%00"],
)
async def test_user_ids_with_path_characters(api: Client, user_id: str) -> None:
    response = await api.get("/download/image", params={"user_id": user_id, "image_id": "cat"})
    assert response.status == 400
    assert (await response.json())["error"] == "invalid_field"


@pytest.mark.parametrize(
    "file_name",
    ["../../etc/passwd", "x" * 5000 + ".jpg", "кошка 猫 🐈.jpg", "..\\..\\win.ini", "a\tb;c=d.jpg"],
)
async def test_hostile_upload_file_names_are_only_metadata(
    api: Client, settings: Settings, file_name: str
) -> None:
    # Built by hand: client libraries refuse to send some of these names at all.
    boundary = "hostile-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + gradient("JPEG")
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = await api.put(
        f"/images/named?user_id={USER}",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status == 202, await response.text()
    async with open_backend(settings) as ports:
        head = await ports.storage.head(settings.aws.source_bucket, f"{USER}/named")
    stored = head.metadata["original-filename"]
    assert stored.isascii() and "/" not in stored and "\\" not in stored and "\x00" not in stored
    assert len(stored) <= 255 * 9  # each of at most 255 characters percent-encoded


async def test_control_characters_in_a_part_header_are_a_bad_request(api: Client) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.jpg"\r\n\r\nxx\r\n--b--\r\n'
    response = await api.put(
        f"/images/nul?user_id={USER}", data=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert response.status == 400
    assert (await response.json())["error"] == "bad_request"


@pytest.mark.parametrize("file_name", ["cat.jpg\x00.png", "cat.jpg/", "%2e%2e%2fcat.jpg", "CAT.JPG"])
async def test_hostile_compat_file_names(api: Client, file_name: str) -> None:
    response = await api.post("/upload", json={"file_name": file_name, "user_id": USER})
    assert response.status in (400, 404)
    assert (await response.json())["error"] in ("invalid_field", "file_not_found")


async def test_format_outside_the_allow_list_is_refused(
    make_settings: Any, make_client: ClientFactory
) -> None:
    api = await make_client(make_settings(IMGSVC_ALLOWED_FORMATS="jpeg"))
    response = await api.put(f"/images/png?user_id={USER}", data=gradient("PNG"))
    assert response.status == 415
    assert (await response.json())["error"] == "format_not_allowed"


async def test_over_the_cap_mid_stream_leaves_no_object_no_upload_no_event(
    make_settings: Any, make_client: ClientFactory
) -> None:
    settings = make_settings(
        IMGSVC_MAX_BYTES=str(7 * 1024 * 1024), IMGSVC_UPLOAD_PART_SIZE=str(5 * 1024 * 1024)
    )
    api = await make_client(settings)

    async def body() -> AsyncIterator[bytes]:
        yield gradient("JPEG")
        for _ in range(10):
            yield b"\0" * (1 << 20)

    response = await api.put(f"/images/big?user_id={USER}", data=body())
    assert response.status == 413
    assert (await response.json())["error"] == "too_large"
    await stored_nothing(settings)


async def test_slow_loris_upload_times_out(make_settings: Any, make_client: ClientFactory) -> None:
    settings = make_settings(IMGSVC_BODY_TIMEOUT="0.5")
    api = await make_client(settings)

    async def trickle() -> AsyncIterator[bytes]:
        yield gradient("JPEG")[:100]
        await asyncio.sleep(3)
        yield b"never mind"

    response = await api.put(f"/images/slow?user_id={USER}", data=trickle())
    assert response.status == 408
    assert (await response.json())["error"] == "request_timeout"
    await stored_nothing(settings)


@pytest.mark.backend("aws")  # an S3 multipart upload under way is aborted
async def test_client_disconnect_mid_upload_stores_nothing(
    make_settings: Any, make_client: ClientFactory, clients: AwsClients
) -> None:
    settings = make_settings(IMGSVC_UPLOAD_PART_SIZE=str(5 * 1024 * 1024))
    api = await make_client(settings)
    _, writer = await asyncio.open_connection(api.host, api.port)
    length = 20 * 1024 * 1024
    writer.write(
        f"PUT /images/gone?user_id={USER} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    writer.write(gradient("JPEG"))
    for _ in range(7):  # more than one part: a multipart upload is under way when we vanish
        writer.write(b"\0" * (1 << 20))
        await writer.drain()
    await asyncio.sleep(0.5)
    writer.transport.abort()
    async with asyncio.timeout(10):
        while True:
            uploads = await clients.s3.list_multipart_uploads(Bucket=settings.aws.source_bucket)
            if not uploads.get("Uploads"):
                break
            await asyncio.sleep(0.1)
    await nothing_stored(clients, settings)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (png_bomb, "too_many_pixels"),
        (lambda: patched(gradient("JPEG"), b"\xff\xc0", 5, b"\xff\xdc\xff\xdc"), "too_many_pixels"),
        (gif_bomb, "too_many_pixels"),
        (lambda: many_frames(30), "too_many_frames"),
    ],
)
async def test_bombs_are_refused_at_upload_before_storing(
    make_settings: Any, make_client: ClientFactory, make: Any, code: str
) -> None:
    settings = make_settings(IMGSVC_MAX_FRAMES="10")
    api = await make_client(settings)
    response = await api.put(f"/images/bomb?user_id={USER}", data=make())
    assert response.status == 413
    assert (await response.json())["error"] == code
    await stored_nothing(settings)


# --- Accepted bytes that the consumer must refuse: DLQ with the reason -------------------------

DLQ_CASES: dict[str, tuple[bytes, str]] = {
    "png-bomb": (png_bomb(), "too_many_pixels"),
    "jpeg-bomb": (patched(gradient("JPEG"), b"\xff\xc0", 5, b"\xff\xdc\xff\xdc"), "too_many_pixels"),
    "gif-bomb": (gif_bomb(), "too_many_pixels"),
    "too-many-frames": (many_frames(30), "too_many_frames"),
    "truncated-jpeg": (gradient("JPEG")[:2000], "corrupt_image"),
    "truncated-png": (gradient("PNG")[:300], "corrupt_image"),
    "truncated-webp": (gradient("WEBP")[:200], "corrupt_image"),
    "flipped-jpeg": (patched(gradient("JPEG"), b"\xff\xc4", 5, b"\xff" * 16), "corrupt_image"),
    "flipped-png": (patched(gradient("PNG"), b"IDAT", 16, b"\xde\xad\xbe\xef"), "corrupt_image"),
    "flipped-webp": (patched(gradient("WEBP"), b"VP8", 32, b"\x00" * 20), "corrupt_image"),
    "heic-junk": (b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100, "corrupt_image"),
    "svg-direct": (SVG_XXE, "not_an_image"),
    "text-direct": (b"hello\n" * 20, "not_an_image"),
    "pdf-direct": (b"%PDF-1.4\n" + b"0" * 100, "not_an_image"),
    "psd-direct": (b"8BPS\x00\x01" + b"\x00" * 100, "not_an_image"),
    "fits-direct": (b"SIMPLE  =                    T" + b" " * 100, "not_an_image"),
}


@pytest.fixture(scope="module")
async def dead_letters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Put every hostile object straight into a bucket, run the consumer once, collect the DLQ."""
    settings = local_settings(tmp_path_factory.mktemp("dead-letters"), IMGSVC_MAX_FRAMES="10")
    async with open_backend(settings) as ports:
        await Accounts(ports.tables).create_user(USER)  # objects put straight into a bucket need a known user
        for name, (data, _) in DLQ_CASES.items():
            await ports.storage.put(
                settings.aws.source_bucket, f"{USER}/{name}", data, "application/octet-stream"
            )
    outcomes = await drain(settings, timeout=60)
    assert outcomes["dead_lettered"] == len(DLQ_CASES), outcomes
    letters = {}
    for message in await dead_lettered(settings):
        key = parse_message(message.body).created[0].key
        letters[key.split("/", 1)[1]] = {
            **message.attributes,
            "status": (await state_in(settings, key))["state"],
        }
    return letters


@pytest.mark.parametrize("case", DLQ_CASES)
def test_dead_lettered_with_reason(dead_letters: dict[str, dict[str, str]], case: str) -> None:
    letter = dead_letters[case]
    assert letter["error_code"] == DLQ_CASES[case][1]
    assert letter["error_message"] and letter["attempts"] == "1"
    assert letter["status"] == "failed"


async def test_polyglot_is_served_inert_and_rendered_clean(
    make_settings: Any, make_client: ClientFactory
) -> None:
    api = await make_client(make_settings(IMGSVC_RUN_CONSUMER="true"))
    assert (await api.put(f"/images/poly?user_id={USER}", data=polyglot())).status == 202
    original = await api.get(f"/download/image?user_id={USER}&image_id=poly")
    assert original.headers["Content-Type"] == "image/jpeg"
    assert original.headers["X-Content-Type-Options"] == "nosniff"
    async with asyncio.timeout(30):
        while (thumb := await api.get(f"/download/thumbnail?user_id={USER}&image_id=poly")).status == 404:
            await asyncio.sleep(0.2)
    data = await thumb.read()
    assert thumb.status == 200 and POLYGLOT_PAYLOAD not in data and b"script" not in data
    assert decode(data).format == "JPEG"


async def test_gps_and_rotation_through_the_pipeline(make_settings: Any, make_client: ClientFactory) -> None:
    api = await make_client(make_settings(IMGSVC_RUN_CONSUMER="true"))
    image = Image.new("RGB", (400, 200), (250, 250, 0))
    exif = image.getexif()
    exif[0x0112] = 6
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}
    assert (
        await api.put(f"/images/gps?user_id={USER}", data=encoded(image, "JPEG", exif=exif))
    ).status == 202
    async with asyncio.timeout(30):
        while (thumb := await api.get(f"/download/thumbnail?user_id={USER}&image_id=gps")).status == 404:
            await asyncio.sleep(0.2)
    rendition = decode(await thumb.read())
    assert rendition.size == (128, 256)
    assert not rendition.getexif() and rendition.getexif().get_ifd(0x8825) == {}


# --- Fuzzing the parsers and validators ----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
records = st.fixed_dictionaries(
    {},
    optional={
        "eventSource": st.sampled_from(["aws:s3", "aws:sqs"]) | st.text(max_size=5),
        "eventName": st.sampled_from(["ObjectCreated:Put", "ObjectRemoved:Delete"]) | json_values,
        "s3": st.fixed_dictionaries(
            {},
            optional={
                "bucket": st.fixed_dictionaries({}, optional={"name": json_values}),
                "object": json_values,
            },
        ),
    },
)


@given(
    st.one_of(
        json_values.map(json.dumps),
        st.lists(records, max_size=3).map(lambda r: json.dumps({"Records": r})),
        st.text(max_size=50),
    )
)
def test_event_parser_never_fails_unexpectedly(body: str) -> None:
    try:
        parsed = parse_message(body)
    except PoisonMessage:
        return
    assert all(isinstance(r.key, str) and r.key for r in parsed.created)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image_id=st.text(min_size=1, max_size=80), user_id=st.text(max_size=40))
async def test_request_validators_answer_4xx_never_5xx(api: Client, image_id: str, user_id: str) -> None:
    path = "/images/" + quote(image_id, safe="")
    response = await api.put(path, params={"user_id": user_id}, data=b"not an image")
    body = await response.json(content_type=None)
    assert response.status in (400, 403, 404, 405, 415), (response.status, body)
    assert body["error"] and body["message"]


async def test_a_header_too_large_to_parse_is_a_400_also_for_head_without_a_body(api: Client) -> None:
    """aiohttp refuses a header over 8190 bytes before any handler runs: the answer is JSON for a
    GET, and bodiless for a HEAD (a body there would be read as the start of the next answer)."""
    huge = {"If-Modified-Since": "a" * 9000}
    got = await api.get("/download/image?image_id=cat", headers=huge)
    assert got.status == 400 and (await got.json())["error"] == "bad_request"
    head = await api.head("/download/image?image_id=cat", headers=huge)
    assert head.status == 400 and head.content_type == "application/json"
    assert await head.read() == b""
