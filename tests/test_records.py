"""Image records: fields, listing page by page, deletion, ids, quotas, and the consumer's writes."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from config.settings import Settings
from pipeline.backends import open_backend
from pipeline.core.errors import CorruptImage
from pipeline.core.layout import ImageRef
from pipeline.core.records import RecordStore, Superseded
from tests.support.clients import ClientFactory
from tests.support.consumers import drain
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import OTHER_USER, USER
from tests.support.state import dead_lettered, keys_in, record_in

Client = TestClient[Any, Any]
#: Records, listing, quotas and the record store's ordering are the service's own; the store's
#: conditional writes are contract-tested on both backends (`test_contract_tables`).
pytestmark = pytest.mark.backend("local")


async def listing(client: Client, **query: str) -> dict[str, Any]:
    response = await client.get("/images", params=query)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def usage_of(settings: Settings, user_id: str) -> tuple[int, int]:
    """The user's recorded usage (bytes, images), read consistently."""
    async with open_backend(settings) as ports:
        item = await ports.tables.users.get({"user_id": user_id}, consistent=True)
    assert item is not None, f"no user {user_id}"
    return int(item["bytes_used"]), int(item["image_count"])


@pytest.fixture
async def images(settings: Settings) -> AsyncIterator[Any]:
    """The images table of the test's own stack, open for the test."""
    async with open_backend(settings) as ports:
        yield ports.tables.images


async def test_record_has_the_uploads_facts_then_the_results(api: Client, settings: Settings) -> None:
    data = jpeg_bytes(640, 480)
    response = await api.put("/images/facts", data=data, headers={"X-File-Name": "holiday.jpg"})
    assert response.status == 202
    body = await response.json()
    assert body["status"] == "pending" and body["file_name"] == "holiday.jpg"
    assert body["bytes"] == len(data) and body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["content_type"] == "image/jpeg" and body["created_at"]
    await drain(settings)
    ready = await (await api.get("/images/facts")).json()
    assert ready["status"] == "ready" and (ready["width"], ready["height"]) == (640, 480)
    assert ready["created_at"] == body["created_at"] and ready["sha256"] == body["sha256"]
    assert len(ready["placeholder"]["blurhash"]) == 28 and ready["placeholder"]["color"].startswith("#")
    thumb = await api.get(ready["renditions"]["256"]["url"])
    assert decode(await thumb.read()).size == (256, 192)


async def test_server_generated_ids_are_unguessable_and_url_safe(api: Client) -> None:
    ids = set()
    for _ in range(3):
        response = await api.post("/images", data=jpeg_bytes(20, 20))
        assert response.status == 202
        ids.add((await response.json())["image_id"])
    assert len(ids) == 3
    assert all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{23,63}", i) for i in ids)


async def test_listing_is_newest_first_and_pages_hold_under_concurrent_inserts(
    api: Client, settings: Settings, make_client: ClientFactory
) -> None:
    for i in range(7):
        assert (await api.put(f"/images/a{i}", data=jpeg_bytes(16 + i, 16))).status == 202
    other = await make_client(settings, user=OTHER_USER)
    assert (await other.put("/images/theirs", data=jpeg_bytes(16, 16))).status == 202

    first = await listing(api, limit="3")
    assert [i["image_id"] for i in first["images"]] == ["a6", "a5", "a4"]
    # New images arrive between pages: they sort before page one, never into later pages.
    await asyncio.gather(*(api.put(f"/images/b{i}", data=jpeg_bytes(30, 30 + i)) for i in range(2)))
    second = await listing(api, limit="3", cursor=first["next_cursor"])
    third = await listing(api, limit="3", cursor=second["next_cursor"])
    assert [i["image_id"] for i in second["images"]] == ["a3", "a2", "a1"]
    assert [i["image_id"] for i in third["images"]] == ["a0"] and third["next_cursor"] is None
    fresh = await listing(api, limit="100")
    assert {i["image_id"] for i in fresh["images"]} == {f"a{i}" for i in range(7)} | {"b0", "b1"}
    assert "theirs" not in {i["image_id"] for i in fresh["images"]}
    # A re-upload keeps its place (creation time), so pagination never sees it twice.
    assert (await api.put("/images/a3", data=jpeg_bytes(50, 50))).status == 202
    again = await listing(api, limit="100")
    assert [i["image_id"] for i in again["images"]] == [i["image_id"] for i in fresh["images"]]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"limit": "0"}, "invalid_field"),
        ({"limit": "101"}, "invalid_field"),
        ({"limit": "ten"}, "invalid_field"),
        ({"cursor": "not a cursor"}, "invalid_field"),
        ({"cursor": "WyJ4IiwgInkiLCAieiJd"}, "invalid_field"),  # another user's key, base64
        ({"sort": "size"}, "invalid_field"),
        ({"order": "up"}, "invalid_field"),
        ({"status": "lost"}, "invalid_field"),
        ({"q": "x" * 101}, "invalid_field"),
    ],
)
async def test_bad_listing_parameters(api: Client, query: dict[str, str], code: str) -> None:
    response = await api.get("/images", params=query)
    assert response.status == 400 and (await response.json())["error"] == code


#: (id, file name, processed): what the listing tests hold, oldest first (the processed first:
#: a consumer run processes everything waiting).
LISTED = [
    ("beach-1", "Beach at dawn.jpg", True),
    ("cat", "cat.jpg", True),
    ("zebra", "beach ball.jpeg", True),
    ("m0", "", True),
    ("Beach-2", "IMG_0002.JPG", False),
    ("a-dog", "dog.jpg", False),
    ("beach-3", "x.jpg", False),
]


async def listed(api: Client, **query: str) -> tuple[list[str], int]:
    """Every id the listing gives, page after page, and how many requests that took."""
    ids: list[str] = []
    cursor, requests = None, 0
    while True:
        page = await listing(api, **query, **({"cursor": cursor} if cursor else {}))
        requests += 1
        ids += [i["image_id"] for i in page["images"]]
        assert len(page["images"]) <= int(query.get("limit", "20"))
        if (cursor := page["next_cursor"]) is None:
            return ids, requests


async def test_listing_sorts_by_date_or_id_and_filters_by_status_and_name(
    api: Client, settings: Settings
) -> None:
    for processed in (True, False):
        for image_id, file_name, done in LISTED:
            if done == processed:
                params = {"file_name": file_name} if file_name else {}
                sent = await api.put(f"/images/{image_id}", params=params, data=jpeg_bytes(20, 20))
                assert sent.status == 202
        if processed:
            assert (await drain(settings)).get("ready") == 4
    state = {i: "ready" if done else "pending" for i, _, done in LISTED}
    names = {i: n for i, n, _ in LISTED}
    oldest_first = [i for i, _, _ in LISTED]
    by_id = sorted(oldest_first)
    for sort, order, expected in [
        (None, None, oldest_first[::-1]),
        ("created", "asc", oldest_first),
        ("id", None, by_id),
        ("id", "desc", by_id[::-1]),
    ]:
        query = {k: v for k, v in (("sort", sort), ("order", order)) if v}
        for status in (None, "ready", "pending", "failed"):
            for q in (None, "beach", "CAT", "-", "nothing"):

                def kept(image_id: str, status: str | None = status, q: str | None = q) -> bool:
                    text = q.casefold() if q else ""
                    return (status is None or state[image_id] == status) and (
                        text in image_id.casefold() or text in names[image_id].casefold()
                    )

                want = [i for i in expected if kept(i)]
                filters = {k: v for k, v in (("status", status), ("q", q)) if v}
                for limit in ("2", "100"):
                    got, _ = await listed(api, **query, **filters, limit=limit)
                    assert got == want, (query, filters, limit)


async def test_a_filtered_page_reads_a_bounded_number_of_records_and_says_where_to_go_on(
    api: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A search through many images is many short requests, never one long one: each reads at
    most `SCAN_BUDGET` records (here 4, two at a time) and ends with a cursor to go on from."""
    from pipeline.core import records

    monkeypatch.setattr(records, "SCAN_BUDGET", 4)
    monkeypatch.setattr(records, "SCAN_CHUNK", 2)
    for i in range(10):
        assert (await api.put(f"/images/n{i}", data=jpeg_bytes(16, 16))).status == 202
    first = await listing(api, q="n0", limit="5")
    assert first["images"] == [] and first["next_cursor"] is not None  # read n9..n6, found nothing
    ids, requests = await listed(api, q="n0", limit="5")
    assert ids == ["n0"] and requests == 3  # 4 + 4 + 2 records read
    ids, requests = await listed(api, q="N", limit="3")  # a full page ends a request early
    assert ids == [f"n{i}" for i in range(9, -1, -1)] and requests == 4


async def test_a_cursor_works_only_in_the_order_it_was_made_for(api: Client) -> None:
    for i in range(3):
        assert (await api.put(f"/images/c{i}", data=jpeg_bytes(16, 16))).status == 202
    by_id = await listing(api, sort="id", limit="1")
    assert [i["image_id"] for i in by_id["images"]] == ["c0"]
    refused = await api.get("/images", params={"cursor": by_id["next_cursor"], "limit": "1"})
    assert refused.status == 400 and "another order" in (await refused.json())["message"]
    # A filter is not an order: the cursor of a filtered page works unfiltered too.
    assert [
        i["image_id"]
        for i in (await listing(api, sort="id", limit="1", cursor=by_id["next_cursor"]))["images"]
    ] == ["c1"]


async def test_delete_removes_everything_and_is_idempotent(api: Client, settings: Settings) -> None:
    data = jpeg_bytes(300, 200)
    assert (await api.put("/images/doomed", data=data)).status == 202
    await drain(settings)
    assert await usage_of(settings, USER) == (len(data), 1)
    for _ in range(2):
        assert (await api.delete("/images/doomed")).status == 204
    for bucket in (settings.aws.source_bucket, settings.aws.dest_bucket):
        assert await keys_in(settings, bucket) == []
    assert await record_in(settings, f"{USER}/doomed") is None
    assert (await api.get("/images/doomed")).status == 404
    assert (await api.get("/download/thumbnail?image_id=doomed")).status == 404
    assert await usage_of(settings, USER) == (0, 0)


async def test_delete_during_processing_is_acknowledged_not_dead_lettered(
    api: Client, settings: Settings
) -> None:
    assert (await api.put("/images/gone-soon", data=jpeg_bytes(300, 200))).status == 202
    assert (await api.delete("/images/gone-soon")).status == 204  # its event is still queued
    outcomes = await drain(settings)
    assert outcomes.get("source_missing") == 1 and "dead_lettered" not in outcomes
    assert await dead_lettered(settings) == []
    assert await keys_in(settings, settings.aws.dest_bucket) == []
    assert await record_in(settings, f"{USER}/gone-soon") is None


async def test_reupload_replaces_and_the_record_follows_the_newest(api: Client, settings: Settings) -> None:
    """Both uploads' events are queued before any is processed: the older event must not win."""
    for width in (400, 200):
        assert (await api.put("/images/twice", data=jpeg_bytes(width, 100))).status == 202
    await drain(settings)
    record = await record_in(settings, f"{USER}/twice")
    assert record is not None and record.state == "ready"
    async with open_backend(settings) as ports:
        head = await ports.storage.head(settings.aws.source_bucket, f"{USER}/twice")
    assert record.source_etag == head.etag and record.item["info"]["width"] == 200
    assert await usage_of(settings, USER) == (len(jpeg_bytes(200, 100)), 1)


@pytest.fixture
async def quota_api(make_settings: Any, make_client: ClientFactory) -> AsyncIterator[tuple[Client, Settings]]:
    size = len(jpeg_bytes(64, 64))
    settings = make_settings(IMGSVC_QUOTA_IMAGES="3", IMGSVC_QUOTA_BYTES=str(int(size * 2.5)))
    yield await make_client(settings), settings


async def test_image_count_quota(make_settings: Any, make_client: ClientFactory) -> None:
    api = await make_client(make_settings(IMGSVC_QUOTA_IMAGES="2"))
    for name in ("q1", "q2"):
        first = await api.put(f"/images/{name}", data=jpeg_bytes(20, 20))
        assert first.status == 202, await first.text()
    refused = await api.put("/images/q3", data=jpeg_bytes(20, 20))
    assert refused.status == 403 and (await refused.json())["error"] == "quota_images_exceeded"
    assert (await api.put("/images/q1", data=jpeg_bytes(30, 30))).status == 202  # a replacement
    assert (await api.delete("/images/q2")).status == 204
    assert (await api.put("/images/q3", data=jpeg_bytes(20, 20))).status == 202


async def test_byte_quota_refuses_before_storing_and_after_a_chunked_upload(
    quota_api: tuple[Client, Settings],
) -> None:
    api, settings = quota_api
    data = jpeg_bytes(64, 64)
    for name in ("b1", "b2"):
        assert (await api.put(f"/images/{name}", data=data)).status == 202
    refused = await api.put("/images/b3", data=data)  # Content-Length known: refused up front
    assert refused.status == 413 and (await refused.json())["error"] == "quota_bytes_exceeded"

    async def chunked() -> AsyncIterator[bytes]:
        yield data[:1000]
        yield data[1000:]

    late = await api.put("/images/b4", data=chunked())  # no length: counted after streaming
    assert late.status == 413 and (await late.json())["error"] == "quota_bytes_exceeded"
    keys = await keys_in(settings, settings.aws.source_bucket)
    assert sorted(keys) == [f"{USER}/b1", f"{USER}/b2"]  # nothing of the refused uploads is kept
    assert await usage_of(settings, USER) == (2 * len(data), 2)


class _AfterFirstRead:
    """The images table, running `then` once right after the first read through it: what
    another process does between a writer's read and its write."""

    def __init__(self, table: Any, then: Callable[[], Awaitable[None]]) -> None:
        self._table, self._then = table, [then]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._table, name)

    async def get(self, key: Any, **options: Any) -> Any:
        item = await self._table.get(key, **options)
        if self._then:
            await self._then.pop()()
        return item


async def test_a_newer_upload_landing_mid_write_wins_over_an_older_result(
    images: Any,
) -> None:
    """The consumer's record read names its original, so it asks S3 nothing; a newer upload
    recorded between that read and the write changes the revision, the write fails, and the
    retry sees the newer original on the record, asks S3, and gives way instead of overwriting
    it with an older result."""
    ref = ImageRef(f"{USER}/raced")
    await RecordStore(images).record_upload(ref, '"e1"', {"file_name": "one.jpg"}, lambda: _etag('"e1"'))
    s3_says = ['"e1"']
    asked: list[str] = []

    async def newer_upload() -> None:
        s3_says[0] = '"e2"'
        await RecordStore(images).record_upload(ref, '"e2"', {"file_name": "two.jpg"}, lambda: _etag('"e2"'))

    async def current() -> str | None:
        asked.append(s3_says[0])
        return s3_says[0]

    records = RecordStore(_AfterFirstRead(images, newer_upload))
    with pytest.raises(Superseded) as raised:
        await records.record_result(ref, '"e1"', None, CorruptImage("old"), current)
    assert raised.value.current == '"e2"' and asked == ['"e2"']  # asked once: on the retry
    record = await RecordStore(images).read(ref)
    assert record is not None and record.source_etag == '"e2"' and record.state == "pending"
    assert record.item["file_name"] == "two.jpg" and "result_etag" not in record.item


async def test_a_result_for_the_recorded_original_asks_s3_nothing_else_it_asks(
    images: Any,
) -> None:
    """One S3 request fewer per job: the record already names the original the job made its
    result from (its upload wrote it), so the write is ordered without a HEAD. A record naming
    another original leaves the order unknown: then the job asks S3. With none, the write
    creates it unasked: the job asks S3 after it (`test_consumer`), which is one HEAD, not two."""
    records = RecordStore(images)
    asked: list[str] = []

    def s3_says(etag: str | None) -> Callable[[], Awaitable[str | None]]:
        async def current() -> str | None:
            asked.append(str(etag))
            return etag

        return current

    ref = ImageRef(f"{USER}/ordered")
    await records.record_upload(ref, '"e1"', {"file_name": "one.jpg"}, s3_says('"e1"'))
    asked.clear()
    await records.record_result(ref, '"e1"', None, CorruptImage("x"), s3_says('"e1"'))
    assert asked == []
    # Another original on the record: S3 is asked.
    await records.record_upload(ref, '"e2"', {"file_name": "two.jpg"}, s3_says('"e2"'))
    asked.clear()
    with pytest.raises(Superseded):
        await records.record_result(ref, '"e1"', None, CorruptImage("x"), s3_says('"e2"'))
    assert asked == ['"e2"']
    # No record (an object put straight into the bucket): created at revision 1, S3 not asked.
    bare = ImageRef(f"{USER}/unrecorded")
    written = await records.record_result(bare, '"e9"', None, CorruptImage("x"), s3_says(None))
    assert asked == ['"e2"'] and written.item["revision"] == 1


async def _etag(value: str) -> str:
    return value


async def test_an_upload_that_read_the_record_before_storing_writes_without_a_head(
    images: Any,
) -> None:
    """One S3 request fewer per upload: a record read before the PUT orders the write as well as
    a HEAD would, so the first write asks S3 nothing; read after the PUT, it still asks."""
    records = RecordStore(images)
    asked: list[str] = []

    def s3_says(etag: str) -> Callable[[], Awaitable[str | None]]:
        async def current() -> str | None:
            asked.append(etag)
            return etag

        return current

    ref = ImageRef(f"{USER}/headless")
    before = await records.read(ref)  # the API's read, for the quota, before the PUT
    await records.record_upload(ref, '"e1"', {"file_name": "one.jpg"}, s3_says('"e1"'), read=before)
    assert asked == []
    await records.record_upload(ref, '"e2"', {"file_name": "two.jpg"}, s3_says('"e2"'))  # read afresh
    assert asked == ['"e2"']


async def test_a_newer_upload_recorded_between_an_uploads_read_and_write_wins(
    images: Any,
) -> None:
    """What makes skipping the HEAD safe: upload A reads the record, stores its original; B's
    original replaces it and B's record lands before A writes. A's write, conditional on the
    revision it read, fails; its retry asks S3, which names B's original, and A gives way."""
    records = RecordStore(images)
    ref = ImageRef(f"{USER}/overtaken")
    s3 = {"current": '"a"'}

    async def current() -> str | None:
        return s3["current"]

    a_read = await records.read(ref)  # A, before its PUT
    s3["current"] = '"b"'  # B's PUT replaces A's original...
    await records.record_upload(
        ref, '"b"', {"file_name": "b.jpg", "sha256": "b"}, current
    )  # ...and B records it
    with pytest.raises(Superseded) as raised:
        await records.record_upload(ref, '"a"', {"file_name": "a.jpg", "sha256": "a"}, current, read=a_read)
    assert raised.value.current == '"b"'
    record = await records.read(ref)
    assert record is not None and record.source_etag == '"b"' and record.item["file_name"] == "b.jpg"


async def test_a_wait_sees_a_result_written_by_another_process_within_a_tick(
    api: Client, settings: Settings
) -> None:
    """`?wait=` on the local backend: a result the consumer of another process writes (here: a
    database opened a second time, as that process's) wakes the wait within a probe's tick, not
    on the next once-a-second re-read; with nothing written, nothing is re-read."""
    assert (await api.put("/images/elsewhere", data=jpeg_bytes(64, 48))).status == 202
    ref = ImageRef.of(USER, "elsewhere")

    async def result_later() -> float:
        await asyncio.sleep(0.3)
        async with open_backend(settings) as other:  # another process's connection and Changes
            records = RecordStore(other.tables.images, other.tables.users)
            record = await records.read(ref)
            assert record is not None
            etag = record.source_etag
            await records.record_result(ref, etag, None, CorruptImage(), lambda: _current(etag))
        return asyncio.get_running_loop().time()

    writer = asyncio.ensure_future(result_later())
    response = await api.get("/images/elsewhere", params={"wait": "5"})
    seen = asyncio.get_running_loop().time()
    written = await writer
    assert response.status == 200 and (await response.json())["status"] == "failed"
    assert seen - written < 0.4, seen - written  # a tick (0.05 s) and the answer, not a second


async def _current(etag: str) -> str:
    return etag
