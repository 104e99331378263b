"""The storage contract: what uploads, downloads and jobs rely on, held by S3 (moto) and the local
object store alike, including the event a stored original sends to the queue."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from pipeline.core.errors import (
    EmptyUpload,
    FormatNotAllowed,
    ImageChanged,
    NotAnImage,
    NotFound,
    StorageUnavailable,
    TooLarge,
)
from pipeline.core.events import parse_message
from pipeline.core.objects import OversizeObject
from tests.support.backends import STORAGE_TARGETS, Backend
from tests.support.images import jpeg_bytes
from tests.support.settings import USER

#: On moto, MiniStack, SeaweedFS (its objects) and the local backend.
pytestmark = STORAGE_TARGETS

IMAGE = jpeg_bytes(64, 48)
FORMATS = frozenset({"jpeg", "png"})


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def upload(backend: Backend, key: str, data: bytes, *, max_bytes: int = 10_000_000) -> str:
    stored = await backend.storage.upload_stream(
        backend.settings.aws.source_bucket,
        key,
        chunks_of(data, 1000),
        max_bytes=max_bytes,
        part_size=5 * 1024 * 1024,
        allowed_formats=FORMATS,
        metadata={"file-name": "cat.jpg"},
    )
    assert (stored.key, stored.size, stored.format) == (key, len(data), "jpeg")
    return str(stored.etag)


async def test_an_upload_is_stored_whole_and_announced_once(backend: Backend) -> None:
    key = f"{USER}/cat"
    etag = await upload(backend, key, IMAGE)
    assert etag == f'"{hashlib.md5(IMAGE).hexdigest()}"'  # a single PUT's ETag, as S3 gives
    meta, data = await backend.storage.read(backend.settings.aws.source_bucket, key, 10_000_000)
    assert data == IMAGE
    assert (meta.size, meta.etag, meta.content_type) == (len(IMAGE), etag, "image/jpeg")
    assert meta.metadata == {"file-name": "cat.jpg"}
    bodies = []
    while messages := await backend.main.receive(10, 1, visibility_timeout=30):
        bodies += [m.body for m in messages]
    created = [event for body in bodies for event in parse_message(body).created]
    assert [(e.bucket, e.key, e.size, e.etag) for e in created] == [
        (backend.settings.aws.source_bucket, key, len(IMAGE), etag.strip('"'))
    ]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyUpload),
        (b"not an image at all, just text" * 10, NotAnImage),
        (b"GIF89a" + bytes(100), FormatNotAllowed),
    ],
)
async def test_a_refused_upload_leaves_nothing(backend: Backend, data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        await upload(backend, f"{USER}/refused", data)
    await _nothing_at(backend, f"{USER}/refused")


async def test_an_upload_over_the_cap_leaves_nothing(backend: Backend) -> None:
    with pytest.raises(TooLarge):
        await upload(backend, f"{USER}/big", IMAGE, max_bytes=len(IMAGE) - 1)
    await _nothing_at(backend, f"{USER}/big")


async def _nothing_at(backend: Backend, key: str) -> None:
    with pytest.raises(NotFound):
        await backend.storage.head(backend.settings.aws.source_bucket, key)
    assert await backend.main.receive(10, 0) == []


async def test_streams_ranges_and_pinned_versions(backend: Backend) -> None:
    bucket = backend.settings.aws.dest_bucket
    data = bytes(range(256)) * 4000
    await backend.storage.put(bucket, "a/b", data, "application/octet-stream", {"k": "v"})
    meta, chunks = await backend.storage.stream(bucket, "a/b", chunk_size=65536)
    assert b"".join([c async for c in chunks]) == data
    _, chunks = await backend.storage.stream(bucket, "a/b", (10, 19), if_match=meta.etag)
    assert b"".join([c async for c in chunks]) == data[10:20]
    _, chunks = await backend.storage.stream(bucket, "a/b", (len(data) - 5, len(data) + 100))
    assert b"".join([c async for c in chunks]) == data[-5:]  # an end past the object is clamped
    with pytest.raises(ImageChanged):
        await backend.storage.stream(bucket, "a/b", if_match='"0123"')
    with pytest.raises(OversizeObject):
        await backend.storage.read(bucket, "a/b", max_bytes=100)


async def test_a_replaced_object_streams_whole_to_a_reader_that_opened_it(backend: Backend) -> None:
    bucket = backend.settings.aws.dest_bucket
    old, new = b"o" * 600_000, b"n" * 10
    await backend.storage.put(bucket, "x", old, "text/plain")
    _, chunks = await backend.storage.stream(bucket, "x", chunk_size=1024)
    first = await anext(chunks)
    await backend.storage.put(bucket, "x", new, "text/plain")
    assert first + b"".join([c async for c in chunks]) == old
    assert (await backend.storage.read(bucket, "x", 100))[1] == new


async def test_deleting_is_idempotent_and_json_documents_round_trip(backend: Backend) -> None:
    bucket = backend.settings.aws.dest_bucket
    await backend.storage.put_json(bucket, "doc", {"b": [1, 2], "a": "é"})
    assert await backend.storage.get_json(bucket, "doc") == {"a": "é", "b": [1, 2]}
    await backend.storage.delete_many(bucket, ["doc", "never-was"])
    await backend.storage.delete_many(bucket, ["doc"])
    assert await backend.storage.get_json(bucket, "doc") is None
    assert await backend.storage.etag_of(bucket, "doc") is None
    await backend.storage.check_bucket(bucket)
    with pytest.raises(StorageUnavailable):
        await backend.storage.check_bucket("no-such-bucket-here")


async def test_one_delete_takes_more_keys_than_one_s3_request_can(backend: Backend) -> None:
    """S3's DeleteObjects takes 1,000 keys: the store splits a longer list, so no caller must."""
    bucket = backend.settings.aws.dest_bucket
    keys = [f"many/{i:04d}" for i in range(1001)]
    for start in range(0, len(keys), 50):
        await asyncio.gather(
            *(backend.storage.put(bucket, k, b"x", "image/jpeg") for k in keys[start : start + 50])
        )
    await backend.storage.delete_many(bucket, [*keys, "never-was"])
    left = [o.key async for page in backend.storage.list_objects(bucket, "many/") for o in page]
    assert left == []


@given(key=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=60))
# What S3 events escape (URL-encoded, a space as `+`): each emulator's encoding is met.
@example(key="a photo.jpg").via("a space")
@example(key="1+1=2").via("a plus")
@example(key="100%25 sure %").via("a percent sign, and what reads as an escape")
@example(key="été/日本/ü ü").via("non-ASCII, and slashes")
@example(key="+ +/%2B").via("all at once")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
async def test_any_key_round_trips_through_the_event(backend: Backend, key: str) -> None:
    """Keys are URL-encoded in S3 events (moto escapes a slash too, MiniStack and AWS do not);
    whatever a key holds, the consumer reads it back. Each example's bytes are its own (a JPEG
    ends at its end marker), so its event is told from a late one of the example before:
    MiniStack sends them after the PUT has been answered. SeaweedFS refuses a `.` or `..` path
    segment (`tests/test_emulator_gaps.py`); the service never makes one (ids have no dots)."""
    assume(not (backend.name.startswith("seaweedfs") and {".", ".."} & set(key.split("/"))))
    etag = (await upload(backend, key, IMAGE + key.encode())).strip('"')
    found = None
    async with asyncio.timeout(10):
        while found is None:
            for message in await backend.main.receive(10, 1, visibility_timeout=30):
                await backend.main.delete(message.receipt_handle)
                found = next((c for c in parse_message(message.body).created if c.etag == etag), found)
    assert found is not None and found.key == key


async def test_listing_gives_every_object_under_a_prefix_in_key_order(backend: Backend) -> None:
    bucket = backend.settings.aws.dest_bucket
    for key in ("b/2", "a/1", "b/1", "b_/x", "c"):
        await backend.storage.put(bucket, key, key.encode(), "text/plain")
    listed = [o async for page in backend.storage.list_objects(bucket, "b/") for o in page]
    assert [o.key for o in listed] == ["b/1", "b/2"]  # "_" is no wildcard
    assert [o.size for o in listed] == [3, 3] and all(o.etag.startswith('"') for o in listed)
    everything = [o.key async for page in backend.storage.list_objects(bucket) for o in page]
    assert everything == ["a/1", "b/1", "b/2", "b_/x", "c"]


async def test_a_copy_has_its_own_metadata_and_outlives_its_source(backend: Backend) -> None:
    """S3 copies server-side; the local store gives the same bytes a second name (a hard link):
    either way the copy stands alone."""
    bucket, storage = backend.settings.aws.dest_bucket, backend.storage
    data = jpeg_bytes(20, 20)
    etag = await storage.put(bucket, "c/source", data, "image/jpeg", {"source-etag": "one"})
    await storage.copy(bucket, "c/source", "c/copy", "image/jpeg", {"source-etag": "two"})
    await storage.delete_many(bucket, ["c/source"])
    meta, copied = await storage.read(bucket, "c/copy", 10**6)
    assert copied == data and meta.etag == etag and meta.metadata == {"source-etag": "two"}
    assert meta.content_type == "image/jpeg"
    with pytest.raises(NotFound):
        await storage.copy(bucket, "c/source", "c/again", "image/jpeg", {})
