"""Per-client and per-user shares of what one API process holds: connections per client address
(and per forwarded client behind a trusted proxy), the time a slow reader may keep a response
waiting, and long polls per user. Each test tries the bound with small numbers on the local
backend; the flood-sized runs are `scripts/noisy_neighbour.py`'s."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import struct
import time
import zlib
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from config.settings import SEED_USER_IDS
from pipeline.core.changes import Changes
from pipeline.core.errors import CorruptImage
from pipeline.core.layout import ImageRef
from pipeline.core.records import RecordStore
from pipeline.imaging.variants import accepted_types, parse_variant
from tests.support.clients import ClientFactory, bearer, issue_key
from tests.support.images import jpeg_bytes
from tests.support.settings import OTHER_USER, USER, local_settings
from web.clients import Proxies, forwarded_hops
from web.keys import RECORDS, TABLES

Client = TestClient[Any, Any]


async def connect(
    client: Client, source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the test server from `source` (any 127/8 address is this machine's)."""
    return await asyncio.open_connection(client.host, client.port, local_addr=(source, 0))


async def status_of(reader: asyncio.StreamReader, timeout: float = 5) -> int:
    async with asyncio.timeout(timeout):
        line = await reader.readline()
    return int(line.split(b" ", 2)[1]) if line else 0


def head(client: Client, request_line: str, *headers: str) -> bytes:
    lines = [request_line, "Host: x", f"Authorization: {client.session.headers['Authorization']}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def busy_upload(client: Client, source: str = "127.0.0.1", *headers: str) -> asyncio.StreamWriter:
    """A connection whose request is under way (a body still arriving): it cannot be evicted."""
    _, writer = await connect(client, source)
    writer.write(head(client, "PUT /images/slow HTTP/1.1", "Content-Length: 100000", *headers) + b"\xff\xd8")
    await writer.drain()
    return writer


async def test_one_client_address_holds_at_most_its_share(tmp_path: Path, make_client: ClientFactory) -> None:
    api = await make_client(local_settings(tmp_path / "d", IMGSVC_MAX_CONNECTIONS_PER_CLIENT="3"))
    busy = [await busy_upload(api) for _ in range(3)]
    try:
        await asyncio.sleep(0.2)
        reader, writer = await connect(api)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status_of(reader) == 429
        body = (await reader.read()).decode()
        assert '"too_many_connections"' in body and "Retry-After" in body
        writer.close()
        # Another address is not affected.
        reader, writer = await connect(api, "127.0.0.2")
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status_of(reader) == 200
        writer.close()
    finally:
        for w in busy:
            w.close()


async def test_a_clients_own_idle_connection_makes_room(tmp_path: Path, make_client: ClientFactory) -> None:
    api = await make_client(local_settings(tmp_path / "d", IMGSVC_MAX_CONNECTIONS_PER_CLIENT="2"))
    idle = []
    for _ in range(2):
        reader, writer = await connect(api)
        writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await status_of(reader) == 200
        idle.append((reader, writer))
    reader, writer = await connect(api)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await status_of(reader) == 200
    # The oldest idle connection was closed for it.
    first_reader, _ = idle[0]
    async with asyncio.timeout(5):
        while await first_reader.read(65536):
            pass
    assert first_reader.at_eof()
    for _, w in [*idle, (reader, writer)]:
        w.close()


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_share(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    settings = local_settings(
        tmp_path / "d", IMGSVC_MAX_CONNECTIONS_PER_CLIENT="2", IMGSVC_TRUSTED_PROXIES="127.0.0.1/32"
    )
    api = await make_client(settings)
    # The proxy's own connections are not capped by address: four from it are fine.
    busy = [await busy_upload(api, "127.0.0.1", "X-Forwarded-For: 203.0.113.5") for _ in range(2)]
    busy.append(await busy_upload(api, "127.0.0.1", "X-Forwarded-For: 198.51.100.7"))
    try:
        await asyncio.sleep(0.2)
        reader, writer = await connect(api)
        writer.write(head(api, "GET /images/x HTTP/1.1", "X-Forwarded-For: 10.9.9.9, 203.0.113.5"))
        assert await status_of(reader) == 429  # 203.0.113.5 has two requests under way
        writer.close()
        reader, writer = await connect(api)
        # Its second request is within its share; a client's own `Forwarded` is never read.
        writer.write(
            head(api, "GET /images/x HTTP/1.1", "Forwarded: for=203.0.113.5", "X-Forwarded-For: 198.51.100.7")
        )
        assert await status_of(reader) == 404
        writer.close()
        # An untrusted peer's forwarding header is ignored: it is counted as itself.
        spoofed = [await busy_upload(api, "127.0.0.3", "X-Forwarded-For: 192.0.2.1") for _ in range(2)]
        await asyncio.sleep(0.2)
        reader, writer = await connect(api, "127.0.0.3")
        writer.write(head(api, "GET /images/x HTTP/1.1", "X-Forwarded-For: 192.0.2.2"))
        assert await status_of(reader) == 429
        writer.close()
        busy += spoofed
    finally:
        for w in busy:
            w.close()


def test_forwarded_client_is_the_nearest_untrusted_hop() -> None:
    proxies = Proxies(("10.0.0.0/8", "::1/128"))
    xff = {"X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.1.2.3"}
    assert proxies.client("10.0.0.1", xff) == "203.0.113.9"  # 6.6.6.6 is whatever the client wrote
    assert proxies.client("192.0.2.1", xff) == "192.0.2.1"  # an untrusted peer speaks for itself
    # Only the header the proxy writes is read: a client's own `Forwarded` passes through unread.
    assert proxies.client("10.0.0.1", {**xff, "Forwarded": "for=7.7.7.7"}) == "203.0.113.9"
    rfc = Proxies(("10.0.0.0/8", "::1/128"), "forwarded")
    assert rfc.client("::1", {"Forwarded": 'for="[2001:db8::1]:4711", for=10.0.0.9'}) == "2001:db8::/64"
    assert rfc.client("::1", {"X-Forwarded-For": "7.7.7.7"}) == "::1/128".replace("/128", "/64").replace(
        "::1", "::"
    )
    assert proxies.client("10.0.0.1", {}) == "10.0.0.1"
    assert proxies.client(None, xff) == "unknown"
    assert proxies.client("::ffff:10.0.0.1", xff) == "203.0.113.9"  # mapped IPv4 is IPv4
    assert (
        proxies.client("2001:db8:1:2::5", {}) == proxies.client("2001:db8:1:2::9", {}) == "2001:db8:1:2::/64"
    )
    assert forwarded_hops({"X-Forwarded-For": "192.0.2.1:80, ,bogus"}) == ["192.0.2.1", "bogus"]


@given(st.lists(st.text(max_size=80), max_size=20), st.sampled_from(["X-Forwarded-For", "Forwarded"]))
def test_any_forwarding_header_gives_a_short_client_name(hops: list[str], name: str) -> None:
    """Whatever a client writes into the header, the name it is counted under is bounded."""
    client = Proxies(("127.0.0.0/8",)).client("127.0.0.1", {name: ",".join(hops)})
    assert 0 < len(client) <= 64


def noise_png(width: int, height: int) -> bytes:
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    image.save(out, "PNG", compress_level=0)
    return out.getvalue()


async def read_slowly(client: Client, path: str, rate: int, seconds: float) -> tuple[int, bool]:
    """GET `path` on a socket with a small receive buffer, reading `rate` bytes a second for up to
    `seconds`: the bytes read, and whether the server cut the connection."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (client.host, client.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(head(client, f"GET {path} HTTP/1.1"))
    received, cut = 0, False
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            chunk = await reader.read(rate // 10)
            if not chunk:
                cut = True
                break
            received += len(chunk)
            await asyncio.sleep(0.1)
    except ConnectionError:  # reset: what was on its way is dropped
        cut = True
    writer.close()
    return received, cut


async def test_a_reader_slower_than_the_floor_is_cut_off(tmp_path: Path, make_client: ClientFactory) -> None:
    settings = local_settings(
        tmp_path / "d", IMGSVC_SEND_MIN_RATE="200000", IMGSVC_SEND_RATE_WINDOW="1", IMGSVC_SEND_TIMEOUT="60"
    )
    api = await make_client(settings)
    big = noise_png(2000, 1500)  # 9 MB: more than the socket buffers between us hold
    assert (await api.put("/images/big", data=io.BytesIO(big))).status == 202
    started = time.monotonic()
    received, cut = await read_slowly(api, "/download/image?image_id=big", rate=20_000, seconds=20)
    assert cut, f"a 20 KB/s reader kept the answer for {time.monotonic() - started:.1f}s"
    assert time.monotonic() - started < 12
    assert received < len(big)
    # A reader above the floor gets every byte.
    response = await api.get("/download/image?image_id=big")
    assert await response.read() == big


async def test_long_polls_are_shared_per_user(tmp_path: Path, make_client: ClientFactory) -> None:
    settings = local_settings(tmp_path / "d", IMGSVC_USER_MAX_WAITS="2")
    api = await make_client(settings)
    other = bearer(await issue_key(api.server.app, OTHER_USER))
    for headers in ({}, other):
        assert (await api.put("/images/p", data=jpeg_bytes(64, 48), headers=headers)).status == 202
    waits = [asyncio.ensure_future(api.get("/images/p?wait=3")) for _ in range(2)]
    await asyncio.sleep(0.3)
    refused = await api.get("/images/p?wait=3")
    assert refused.status == 429
    assert (await refused.json())["error"] == "too_many_waits"
    assert int(refused.headers["Retry-After"]) >= 1
    assert (await api.get("/images/p")).status == 200  # a poll that does not wait is not counted
    started = time.monotonic()
    assert (await api.get("/images/p?wait=1", headers=other)).status == 200  # another user's share
    assert time.monotonic() - started >= 0.9
    for wait in waits:
        assert (await wait).status == 200
    assert (await api.get("/images/p?wait=0.5")).status == 200  # the share came back


async def test_a_wait_is_woken_by_a_change_made_in_its_process(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    api = await make_client(local_settings(tmp_path / "d"))
    assert (await api.put("/images/w", data=jpeg_bytes(64, 48))).status == 202
    records = api.server.app[RECORDS]
    ref = ImageRef.of(USER, "w")
    record = await records.read(ref)
    assert record is not None and record.state == "pending"

    async def fail_soon() -> None:
        await asyncio.sleep(0.3)
        etag = record.source_etag
        await records.record_result(ref, etag, None, CorruptImage(), lambda: _etag(etag))

    started = time.monotonic()
    failing = asyncio.ensure_future(fail_soon())
    response = await api.get("/images/w?wait=10")
    await failing
    assert (await response.json())["status"] == "failed"
    assert time.monotonic() - started < 0.8  # woken, not found by a re-read a second later


async def _etag(etag: str) -> str:
    return etag


async def test_a_wait_on_a_change_made_elsewhere_reads_at_most_once_a_second(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    api = await make_client(local_settings(tmp_path / "d"))
    assert (await api.put("/images/e", data=jpeg_bytes(64, 48))).status == 202
    tables = api.server.app[TABLES]
    reads: list[float] = []
    get = tables.images.get

    async def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(time.monotonic())
        return await get(*args, **kwargs)

    # A store of its own (another process's): its writes wake nobody here.
    elsewhere = RecordStore(tables.images, tables.users, Changes())
    ref = ImageRef.of(USER, "e")
    record = await elsewhere.read(ref)
    assert record is not None
    waiting = RecordStore(counted_table(tables.images, counted), tables.users, Changes())
    started = time.monotonic()
    task = asyncio.ensure_future(waiting.wait(ref, 6))
    await asyncio.sleep(2.5)
    await elsewhere.record_result(
        ref, record.source_etag, None, CorruptImage(), lambda: _etag(record.source_etag)
    )
    found = await task
    assert found is not None and found.state == "failed"
    took = time.monotonic() - started
    assert 2.5 < took < 4.5  # seen by the re-read at 3 s (after 1 and 2)
    assert len(reads) <= 1 + took  # at most one read a second


class counted_table:
    """The table, with `get` replaced by `get`."""

    def __init__(self, table: Any, get: Any) -> None:
        self._table, self.get = table, get

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)


class RecordingLease:
    """A lease that notes each size asked for and how many bytes had been fed by then."""

    def __init__(self) -> None:
        self.fed = 0
        self.asks: list[tuple[int, int]] = []

    async def grow_to(self, size: int) -> None:
        self.asks.append((size, self.fed))


async def test_an_upload_buffer_is_reserved_as_its_bytes_arrive(backend: Any) -> None:
    """However an upload streams, it never holds more buffer than it has sent (plus one step of
    growth), and never more than a part: a trickling upload holds what it sent, not a part."""
    lease = RecordingLease()
    part = 5 * 1024 * 1024
    data = jpeg_bytes(64, 48) + os.urandom(12 * 1024 * 1024)

    async def chunks() -> Any:
        for start in range(0, len(data), 100_000):
            chunk = data[start : start + 100_000]
            lease.fed += len(chunk)
            yield chunk

    stored = await backend.storage.upload_stream(
        backend.settings.aws.source_bucket,
        f"{USER}/leased",
        chunks(),
        max_bytes=len(data),
        part_size=part,
        allowed_formats=frozenset({"jpeg"}),
        metadata={},
        lease=lease,
    )
    assert stored.size == len(data)
    sizes = [size for size, _ in lease.asks]
    assert sizes == sorted(sizes)
    assert all(size <= fed + 64 * 1024 for size, fed in lease.asks)
    assert max(sizes, default=0) <= part
    if backend.name == "aws":  # S3 parts are buffered; the local backend writes each chunk to a file
        assert max(sizes) == part


async def test_trickling_uploads_leave_the_buffer_to_others(
    make_settings: Any, make_client: ClientFactory
) -> None:
    """Eight uploads from two users that declared 3 MB each and trickle hold their first slices
    of a 5 MiB budget, not 3 MB each: another user's upload goes through at once."""
    settings = make_settings(
        IMGSVC_UPLOAD_BUFFER_BYTES=str(5 * 1024 * 1024),
        IMGSVC_UPLOAD_BUFFER_WAIT="1",
        IMGSVC_UPLOAD_PART_SIZE=str(5 * 1024 * 1024),
        IMGSVC_BODY_MIN_RATE="1",
        IMGSVC_MAX_CONNECTIONS_PER_CLIENT="0",
    )
    api = await make_client(settings)
    app = api.server.app
    tricklers = []
    for user in SEED_USER_IDS[3:5]:
        key = await issue_key(app, user)
        for n in range(4):
            _, writer = await connect(api)
            writer.write(
                f"PUT /images/t{n} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Length: {3_000_000}\r\n\r\n".encode()
                + jpeg_bytes(64, 48)[:2000]
            )
            await writer.drain()
            tricklers.append(writer)
    try:
        await asyncio.sleep(0.5)
        other = bearer(await issue_key(app, OTHER_USER))
        started = time.monotonic()
        response = await api.put("/images/fine", data=noise_png(300, 300), headers=other)
        assert response.status == 202, await response.text()
        assert time.monotonic() - started < 1
    finally:
        for writer in tricklers:
            writer.close()


def bomb_png(side: int) -> bytes:
    """A PNG whose header says `side` x `side` (its pixels are never sent: the upload is refused or
    charged from the header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))


async def test_uploads_are_paced_by_what_they_cost_to_decode(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    """A burst of 50 MP per second with 200 MP of room: two 100 MP images pass, a third is refused
    with the wait that refills the bucket, while small images of another user are not affected."""
    settings = local_settings(
        tmp_path / "d",
        IMGSVC_USER_UPLOAD_MEGAPIXELS_PER_SECOND="50",
        IMGSVC_USER_UPLOAD_MEGAPIXELS_BURST="200",
    )
    api = await make_client(settings)
    bomb = bomb_png(10_000)  # 100 MP from a few hundred bytes
    for n in range(2):
        assert (await api.put(f"/images/b{n}", data=bomb)).status == 202
    refused = await api.put("/images/b2", data=bomb)
    assert refused.status == 429
    assert (await refused.json())["error"] == "too_many_uploads"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3
    assert (await api.get("/images/b2")).status == 404  # nothing stored
    other = bearer(await issue_key(api.server.app, OTHER_USER))
    for n in range(5):
        assert (await api.put(f"/images/s{n}", data=jpeg_bytes(64, 48), headers=other)).status == 202


# Smaller points -----------------------------------------------------------------------------------


def test_a_format_refused_with_q_0_is_never_negotiated() -> None:
    limits = local_settings(Path("/tmp/unused-data-dir")).variants
    spec, negotiated = parse_variant({"w": "100", "format": "auto"}, "image/avif;q=0, image/webp;q=0", limits)
    assert negotiated and spec.format == "jpeg"
    spec, _ = parse_variant({"w": "100", "format": "auto"}, "image/avif;q=0, image/webp;q=0.5", limits)
    assert spec.format == "webp"
    assert accepted_types("image/avif;q=0.0,image/png;Q=0, image/webp;level=1") == {"image/webp"}


async def test_an_unknown_expectation_is_a_json_417(tmp_path: Path, make_client: ClientFactory) -> None:
    api = await make_client(local_settings(tmp_path / "d"))
    reader, writer = await connect(api)
    writer.write(head(api, "GET /images/x HTTP/1.1", "Expect: 202-weird"))
    assert await status_of(reader) == 417
    rest = (await reader.read(4096)).decode()
    assert "application/json" in rest and '"expectation_failed"' in rest
    writer.close()
    continued = await api.put("/images/c", data=jpeg_bytes(64, 48), headers={"Expect": "100-continue"})
    assert continued.status == 202


async def test_links_follow_only_allowed_hosts(tmp_path: Path, make_client: ClientFactory) -> None:
    api = await make_client(local_settings(tmp_path / "d"))
    assert (await api.put("/images/h", data=jpeg_bytes(64, 48))).status == 202
    evil = await api.get("/images/h/url?rendition=original", headers={"Host": "evil.example"})
    assert evil.status == 400 and (await evil.json())["error"] == "host_not_allowed"
    fine = await api.get("/images/h/url?rendition=original", headers={"Host": "localhost:8080"})
    assert (await fine.json())["url"].startswith("http://localhost:8080/links/")
    allowed = await make_client(local_settings(tmp_path / "e", IMGSVC_ALLOWED_HOSTS=".example.com"))
    assert (await allowed.put("/images/h", data=jpeg_bytes(64, 48))).status == 202
    sub = await allowed.get("/images/h/url?rendition=original", headers={"Host": "img.example.com"})
    assert (await sub.json())["url"].startswith("http://img.example.com/links/")
    public = await make_client(local_settings(tmp_path / "f", IMGSVC_PUBLIC_URL="https://cdn.example.org"))
    assert (await public.put("/images/h", data=jpeg_bytes(64, 48))).status == 202
    pinned = await public.get("/images/h/url?rendition=original", headers={"Host": "evil.example"})
    assert (await pinned.json())["url"].startswith("https://cdn.example.org/links/")
