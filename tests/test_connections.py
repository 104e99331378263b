"""Hostile connections: every read from a client has a deadline, connections are capped, and a
client that leaves is not a server error. Raw sockets against the real server stack."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import socket
import time
from collections.abc import Sequence
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import REGISTRY

from config.settings import Settings
from pipeline.core import metrics
from tests.support.clients import ClientFactory
from tests.support.images import jpeg_bytes
from tests.support.settings import USER

Client = TestClient[Any, Any]
#: Deadlines small enough for tests; each test overrides what it probes.
QUICK = {
    "IMGSVC_HEADER_TIMEOUT": "1",
    "IMGSVC_BODY_TIMEOUT": "1",
    "IMGSVC_BODY_MIN_RATE": "500",
    "IMGSVC_KEEPALIVE_TIMEOUT": "1",
}
Step = bytes | float
#: Connection handling is the server's own: nothing here depends on the backend.
pytestmark = pytest.mark.backend("local")


async def exchange(client: Client, steps: Sequence[Step], read_timeout: float = 15) -> tuple[bytes, float]:
    """Send `steps` (bytes, or seconds to pause) on a raw connection while reading, as a real client
    does; return everything the server sent until it closed, and how long that took. Sending stops
    once the server has answered or refuses more."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    started = time.monotonic()
    received = bytearray()

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.create_task(read_all())
    try:
        for step in steps:
            if reading.done() or received:
                break
            if isinstance(step, float):
                await asyncio.sleep(step)
                continue
            try:
                writer.write(step)
                await writer.drain()
            except ConnectionError:
                break
        async with asyncio.timeout(read_timeout):
            await reading
        return bytes(received), time.monotonic() - started
    finally:
        reading.cancel()
        writer.close()


def answer(data: bytes) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a raw HTTP answer."""
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


def auth(client: Client) -> str:
    return f"Authorization: {client.session.headers['Authorization']}\r\n"


def trickle(payload: bytes, pause: float) -> list[Step]:
    """`payload` one byte at a time, `pause` seconds apart: slower than any sane minimum rate."""
    steps: list[Step] = []
    for byte in payload:
        steps += [bytes([byte]), pause]
    return steps


@pytest.fixture
def quick(make_settings: Any) -> Settings:
    return make_settings(**QUICK)  # type: ignore[no-any-return]


async def test_headers_must_arrive_in_time(quick: Settings, make_client: ClientFactory) -> None:
    api = await make_client(quick)
    started = time.monotonic()
    data, took = await exchange(
        api, [b"GET /health/live HTTP/1.1\r\n", *trickle(b"Host: x\r\nX-A: b\r\n", 0.2)]
    )
    assert answer(data) == (
        408,
        {"error": "request_timeout", "message": "the request headers did not arrive within 1s"},
    )
    assert 0.9 < took < 3 and time.monotonic() - started < 5


async def test_a_connection_that_sends_nothing_is_closed(quick: Settings, make_client: ClientFactory) -> None:
    api = await make_client(quick)
    data, took = await exchange(api, [])
    assert answer(data)[0] == 408
    assert took < 3


async def test_idle_keep_alive_connection_is_closed(make_settings: Any, make_client: ClientFactory) -> None:
    api = await make_client(make_settings(IMGSVC_KEEPALIVE_TIMEOUT="1", IMGSVC_HEADER_TIMEOUT="30"))
    data, took = await exchange(api, [b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"])
    assert data.startswith(b"HTTP/1.1 200")
    assert 0.9 < took < 4  # closed by the server after a second of idling, not by the client


def put_head(api: Client, path: str, length: int, content_type: str = "application/octet-stream") -> bytes:
    return (
        f"PUT {path} HTTP/1.1\r\nHost: x\r\n{auth(api)}Content-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def test_a_body_that_never_starts_is_cut_off(quick: Settings, make_client: ClientFactory) -> None:
    api = await make_client(quick)
    data, took = await exchange(api, [put_head(api, "/images/never", 5000)])
    status, body = answer(data)
    assert (status, body["error"]) == (408, "request_timeout")
    assert "no request body data" in body["message"]
    assert took < 4


BOUNDARY = "deadlineboundary"


def multipart(fields: dict[str, str], file: bytes) -> bytes:
    out = b""
    for name, value in fields.items():
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    out += (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return out + file + f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("where", ["raw", "multipart-preamble", "multipart-field", "multipart-file", "json"])
async def test_a_body_trickling_below_the_minimum_rate_is_cut_off(
    quick: Settings, make_client: ClientFactory, where: str
) -> None:
    """One byte every 0.3 s never leaves a gap of a whole second, but averages far below 500 B/s:
    every body kind is cut off by the rate, and answered 408 while an answer can still be sent."""
    api = await make_client(quick)
    image = jpeg_bytes(64, 64)
    if where == "json":
        body = json.dumps({"file_name": "cat.jpg", "user_id": USER}).encode()
        head = (
            f"POST /upload HTTP/1.1\r\nHost: x\r\n{auth(api)}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        steps = [head, *trickle(body, 0.3)]
    elif where == "raw":
        steps = [put_head(api, "/images/slow", len(image)), image[:100], *trickle(image[100:200], 0.3)]
    else:
        body = multipart({"note": "x" * 40}, image)
        head = put_head(api, "/images/slow", len(body), f"multipart/form-data; boundary={BOUNDARY}")
        cut = {
            "multipart-preamble": 10,
            "multipart-field": body.index(b"x" * 40),
            "multipart-file": body.index(image) + 100,
        }[where]
        steps = [head, body[:cut], *trickle(body[cut : cut + 100], 0.3)]
    data, took = await exchange(api, steps)
    status, answered = answer(data)
    assert (status, answered["error"]) == (408, "request_timeout")
    assert "slower than 500 bytes/s" in answered["message"]
    assert took < 6


async def test_a_fast_body_is_not_penalised_for_a_slow_handler(
    quick: Settings, make_client: ClientFactory
) -> None:
    """Time in which the server does not read (its buffer full) is not the client's: an upload far
    larger than the read buffer, sent at full speed, passes even with one-second deadlines."""
    api = await make_client(quick)
    image = jpeg_bytes(600, 400) + b"\0" * (4 << 20)  # bytes after the end of a JPEG are stored as sent
    data, _ = await exchange(api, [put_head(api, "/images/fast", len(image)), image])
    assert answer(data)[0] == 202


async def test_the_cap_closes_idle_connections_to_admit_new_ones(
    make_settings: Any, make_client: ClientFactory
) -> None:
    settings = make_settings(IMGSVC_MAX_CONNECTIONS="20", IMGSVC_HEADER_TIMEOUT="60")
    api = await make_client(settings)
    hostile = [await asyncio.open_connection(api.host, api.port) for _ in range(200)]
    try:
        await asyncio.sleep(0.2)
        started = time.monotonic()
        for _ in range(5):
            response = await api.get("/health/live")
            assert response.status == 200
        assert time.monotonic() - started < 2
        assert metrics.HTTP_CONNECTIONS._value.get() <= 20
        closed = await asyncio.gather(*(_closed_by_server(reader) for reader, _ in hostile))
        assert sum(closed) >= 180  # the oldest half-open ones were answered 503 and closed
    finally:
        for _, writer in hostile:
            writer.close()


async def test_a_client_that_disconnects_is_not_a_server_error(
    make_settings: Any, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    api = await make_client(make_settings())
    before = _count("PUT", "/images/{image_id}", "client_closed")
    _reader, writer = await asyncio.open_connection(api.host, api.port)
    writer.write(put_head(api, "/images/gone", 10 * 1024 * 1024) + jpeg_bytes(300, 200) + b"\0" * 100_000)
    await writer.drain()
    await asyncio.sleep(0.3)
    with caplog.at_level(logging.INFO):
        writer.transport.abort()
        async with asyncio.timeout(5):
            while _count("PUT", "/images/{image_id}", "client_closed") == before:
                await asyncio.sleep(0.05)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any(r.exc_info for r in caplog.records)
    assert _count("PUT", "/images/{image_id}", "500") == 0


async def test_an_unparseable_request_gets_a_json_400(make_settings: Any, make_client: ClientFactory) -> None:
    api = await make_client(make_settings())
    data, _ = await exchange(api, [b"NOT HTTP AT ALL\r\n\r\n"])
    status, body = answer(data)
    assert (status, body["error"]) == (400, "bad_request")


def _count(method: str, route: str, status: str) -> float:
    sample = REGISTRY.get_sample_value(
        "imgsvc_http_requests_total", {"method": method, "route": route, "status": status}
    )
    return sample or 0.0


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        async with asyncio.timeout(1):
            await reader.read(65536)  # the 503 answer, or the end of the stream
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


async def test_a_client_that_stops_reading_a_download_is_cut_off(
    make_settings: Any, make_client: ClientFactory
) -> None:
    """A download nobody reads fills the socket buffers; after `IMGSVC_SEND_TIMEOUT` with the
    server's buffer full the connection is aborted, and its S3 stream closed."""
    api = await make_client(make_settings(IMGSVC_SEND_TIMEOUT="1"))
    original = jpeg_bytes(300, 200) + b"\0" * (24 << 20)  # far more than the socket buffers hold
    assert (await api.put("/images/big", data=io.BytesIO(original))).status == 202
    before = _closed("send_timeout")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (api.host, api.port))
    request = f"GET /download/image?image_id=big HTTP/1.1\r\nHost: x\r\n{auth(api)}\r\n"
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    try:
        async with asyncio.timeout(15):
            while _closed("send_timeout") == before:  # we never read a byte
                await asyncio.sleep(0.1)
    finally:
        sock.close()


def _closed(reason: str) -> float:
    return REGISTRY.get_sample_value("imgsvc_http_connections_closed_total", {"reason": reason}) or 0.0
