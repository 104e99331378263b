"""The local backend with its objects in an S3-compatible store (issue 30): the records, keys
and queues in the data directory, the images' bytes in SeaweedFS (as in MinIO, R2 or Garage,
`IMGSVC_S3_ENDPOINT_URL`). The contract suites run on it too (`seaweedfs-local` in
`STORAGE_TARGETS`); here, what differs: where the bytes are, the doctor, and the backup."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session

from config.settings import Settings
from pipeline.cli.main import run_backup, run_doctor
from tests.support import seaweedfs
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import decode, jpeg_bytes
from tests.support.settings import USER, local_settings

pytestmark = [
    pytest.mark.seaweedfs,
    pytest.mark.parametrize("backend", ["seaweedfs-local"], indirect=True),
]


def objects_elsewhere(data_dir: Path, endpoint: str) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return local_settings(
        data_dir,
        **seaweedfs.settings_env(endpoint, notifications=None),
        IMGSVC_SOURCE_BUCKET=f"src-{tag}",
        IMGSVC_DEST_BUCKET=f"dst-{tag}",
    )


def buckets(settings: Settings) -> tuple[str, str]:
    return settings.aws.source_bucket, settings.aws.dest_bucket


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Any]:
    """A plain client of the store, to see what is really there."""
    aws = backend.settings.aws
    async with get_session().create_client(
        "s3",
        endpoint_url=aws.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id=aws.s3_access_key_id,
        aws_secret_access_key=aws.s3_secret_access_key,
    ) as client:
        yield client


async def keys_in(store: Any, bucket: str) -> list[str]:
    listed = await store.list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


async def test_the_bytes_are_in_the_store_and_the_records_in_the_data_directory(
    backend: Backend, make_client: ClientFactory, store: Any
) -> None:
    api = await make_client(backend.settings)
    original = jpeg_bytes(800, 600)
    assert (await api.put("/images/photo", data=original)).status == 202
    assert (await consume(backend)).get("ready") == 1  # announced on the data directory's queue
    aws = backend.settings.aws
    assert await keys_in(store, aws.source_bucket) == [f"{USER}/photo"]
    thumbnails = await keys_in(store, aws.dest_bucket)
    assert thumbnails and all(k.startswith(f"{USER}/photo/") for k in thumbnails)
    served = await api.get("/download/thumbnail", params={"user_id": USER, "image_id": "photo"})
    assert served.status == 200 and decode(await served.read()).size == (256, 192)
    data_dir = backend.settings.local.data_dir
    assert data_dir is not None and (data_dir / "state.db").is_file()
    assert not list((data_dir / "objects").glob("blobs/*"))  # no byte of an image here
    assert (await api.delete("/images/photo")).status in (200, 204)
    assert await keys_in(store, aws.source_bucket) == []


async def test_the_doctor_checks_the_store_s_buckets(
    backend: Backend, seaweedfs_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_doctor(backend.settings) == 0
    said = capsys.readouterr().out
    assert f"bucket {backend.settings.aws.source_bucket}" in said and "0 failed" in said
    never_opened = objects_elsewhere(tmp_path / "other", seaweedfs_endpoint)
    assert await run_doctor(never_opened) == 1  # neither its directory nor its buckets were made
    said = capsys.readouterr().out.splitlines()
    failed = [line.split(":")[0] for line in said if line.startswith("FAIL")]
    assert failed == [
        "FAIL  data directory",
        *(f"FAIL  bucket {b}" for b in buckets(never_opened)),
        "FAIL  clock",
    ]
    assert all("NoSuchBucket" in line for line in said[1:4]), said


async def test_a_backup_holds_the_data_directory_and_says_the_bytes_are_not_in_it(
    backend: Backend, make_client: ClientFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    api = await make_client(backend.settings)
    assert (await api.put("/images/photo", data=jpeg_bytes(320, 240))).status == 202
    await consume(backend)
    assert run_backup(backend.settings, tmp_path / "backup") == 0
    report = json.loads(capsys.readouterr().out)
    assert backend.settings.aws.s3_endpoint_url in report["objects_not_included"]
    assert (tmp_path / "backup" / "state.db").is_file()
