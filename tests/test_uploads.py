"""The upload service without HTTP (`pipeline.core.uploads`), on the local backend: what an
upload stores and records, and that each refusal leaves nothing behind."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings
from pipeline.backends import open_backend
from pipeline.core.accounts import Accounts
from pipeline.core.errors import ImageQuotaExceeded, InvalidField, TooManyPixels, UploadPending
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef
from pipeline.core.ports import Backend, BufferLease
from pipeline.core.quotas import Usage
from pipeline.core.records import RecordStore
from pipeline.core.reservations import Reservation
from pipeline.core.uploads import Upload, Uploads
from tests.support.images import jpeg_bytes, png_header_only
from tests.support.settings import USER, local_settings
from tests.support.state import keys_in


@asynccontextmanager
async def admitted(user_id: str) -> AsyncIterator[BufferLease | None]:
    yield None  # no buffer to share here: the API's gate is tested through HTTP


async def chunks_of(data: bytes, size: int = 7_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def keep(user: Mapping[str, Any], previous: ImageRecord | None) -> dict[str, object]:
    return {}


def refuse(user: Mapping[str, Any], previous: ImageRecord | None) -> dict[str, object]:
    raise InvalidField("public must be true or false")


class Stack:
    def __init__(self, settings: Settings, ports: Backend) -> None:
        self.settings, self.ports = settings, ports
        self.records = RecordStore(ports.tables.images, ports.tables.users, ports.changes)
        self.uploads = Uploads(
            settings, ports.storage, self.records, Usage(ports.tables.users, settings.accounts), admitted
        )
        self.charged: list[float] = []

    async def store(
        self, image_id: str, data: bytes, visibility: Any = keep, declared: int | None = None
    ) -> Any:
        upload = Upload(ImageRef.of(USER, image_id), chunks_of(data), "holiday.jpg", declared, None)
        return await self.uploads.store(upload, charge=self.charged.append, visibility=visibility)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    settings = local_settings(tmp_path / "data", IMGSVC_QUOTA_IMAGES="2")
    async with open_backend(settings) as ports:
        await Accounts(ports.tables).create_user(USER)
        yield Stack(settings, ports)


async def test_an_upload_is_stored_charged_and_recorded(stack: Stack) -> None:
    data = jpeg_bytes(640, 480)
    stored = await stack.store("holiday", data, declared=len(data))
    record = stored.record
    assert record.state == "pending" and record.bytes == len(data)
    assert record.item["sha256"] == stored.sha256 and record.item["file_name"] == "holiday.jpg"
    assert stack.charged and stack.charged[0] > 0  # the decode budget saw the header
    meta, chunks = await stack.ports.storage.stream(stack.settings.aws.source_bucket, f"{USER}/holiday")
    assert b"".join([c async for c in chunks]) == data and meta.metadata["user-id"] == USER
    user = await stack.ports.tables.users.get({"user_id": USER})
    assert user is not None and (int(user["bytes_used"]), int(user["image_count"])) == (len(data), 1)


async def test_a_bomb_is_refused_from_its_header_and_nothing_is_kept(stack: Stack) -> None:
    with pytest.raises(TooManyPixels):
        await stack.store("bomb", png_header_only(50_000, 50_000))
    assert await keys_in(stack.settings) == []
    assert await stack.records.read(ImageRef.of(USER, "bomb")) is None


async def test_a_refused_option_takes_a_new_image_back_but_not_a_replacement(stack: Stack) -> None:
    with pytest.raises(InvalidField):
        await stack.store("new", jpeg_bytes(64, 48), visibility=refuse)
    assert await keys_in(stack.settings) == []
    await stack.store("kept", jpeg_bytes(64, 48))
    replaced = await stack.store("kept", jpeg_bytes(80, 60), visibility=refuse)  # the bytes stand
    assert replaced.record.bytes == len(jpeg_bytes(80, 60))
    assert await keys_in(stack.settings) == [f"{USER}/kept"]


async def test_past_the_image_quota_nothing_is_recorded_or_kept(stack: Stack) -> None:
    for name in ("one", "two"):
        await stack.store(name, jpeg_bytes(64, 48))  # no Content-Length: checked at the record
    with pytest.raises(ImageQuotaExceeded):
        await stack.store("three", jpeg_bytes(64, 48))
    assert sorted(await keys_in(stack.settings)) == [f"{USER}/one", f"{USER}/two"]
    assert await stack.records.read(ImageRef.of(USER, "three")) is None


async def test_an_id_reserved_for_an_upload_url_is_not_overwritten(stack: Stack) -> None:
    held = Reservation("t" * 32, 10, "image/jpeg", int(time.time()) + 3600)
    await stack.records.reserve(ImageRef.of(USER, "reserved"), held, {"file_name": "x.jpg"})
    with pytest.raises(UploadPending):
        await stack.store("reserved", jpeg_bytes(64, 48))
    assert await keys_in(stack.settings) == []
