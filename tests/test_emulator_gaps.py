"""What AWS does that an emulator does not (issue 30): each gap an expected failure on the
emulator that has it, with the reason, strict, so that the emulator's fix shows up as a failure
to remove the mark. The service relies on none of them at run time; the doctor and the
multipart upload do, on AWS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from pipeline.aws.clients import EMBEDDED_CREDENTIALS
from tests.support.backends import Backend

MIB = 1024 * 1024


def target(name: str, *, gap: str | None = None) -> Any:
    marks: list[Any] = {
        "aws": [pytest.mark.moto],
        "ministack": [pytest.mark.ministack],
        "seaweedfs": [pytest.mark.seaweedfs, pytest.mark.moto],
    }[name]
    if gap is not None:
        marks.append(pytest.mark.xfail(reason=gap, strict=True))
    return pytest.param(name, marks=marks)


def client(backend: Backend, service: str, **credentials: str) -> Any:
    """A plain client of the emulator (the service's own would translate the errors looked for)."""
    return get_session().create_client(
        service,
        endpoint_url=backend.settings.aws.endpoint_url,
        region_name="us-east-1",
        **(credentials or EMBEDDED_CREDENTIALS),
    )


@pytest.fixture
async def s3(backend: Backend) -> AsyncIterator[Any]:
    async with client(backend, "s3") as opened:
        yield opened


@pytest.mark.parametrize(
    "backend",
    [target("aws"), target("ministack", gap="MiniStack accepts multipart parts under 5 MiB")],
    indirect=True,
)
async def test_a_part_under_5_mib_but_the_last_is_refused(backend: Backend, s3: Any) -> None:
    """S3's `EntityTooSmall`: the API's streamed upload sends parts of `IMGSVC_UPLOAD_PART_SIZE`
    (at least 5 MiB, checked at start) for this."""
    bucket, key = backend.settings.aws.source_bucket, "parts/small"
    upload = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
    parts = []
    for number, size in ((1, MIB), (2, MIB)):
        sent = await s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=b"x" * size
        )
        parts.append({"PartNumber": number, "ETag": sent["ETag"]})
    with pytest.raises(ClientError) as refused:
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    assert refused.value.response["Error"]["Code"] == "EntityTooSmall"


@pytest.mark.parametrize(
    "backend",
    [target("aws"), target("ministack", gap="MiniStack has no ListDeadLetterSourceQueues")],
    indirect=True,
)
async def test_a_dead_letter_queue_names_the_queue_it_serves(backend: Backend) -> None:
    """What the doctor reads to tell a DLQ is wired to the main queue."""
    async with client(backend, "sqs") as sqs:
        sources = await sqs.list_dead_letter_source_queues(QueueUrl=backend.dlq.url)
    assert backend.main.url in sources.get("queueUrls", [])


@pytest.mark.parametrize(
    "backend",
    [
        target("aws", gap="moto checks no request signatures"),
        target("ministack", gap="MiniStack checks ordinary signatures only for keys made through its IAM"),
    ],
    indirect=True,
)
async def test_a_request_signed_with_the_wrong_secret_is_refused(backend: Backend) -> None:
    """AWS refuses a request whose signature its secret did not make (`SignatureDoesNotMatch`)."""
    wrong = {**EMBEDDED_CREDENTIALS, "aws_secret_access_key": "not-the-secret"}
    async with client(backend, "s3", **wrong) as forged:
        with pytest.raises(ClientError) as refused:
            await forged.list_objects_v2(Bucket=backend.settings.aws.source_bucket)
    assert refused.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId")


@pytest.mark.parametrize(
    "backend",
    [target("aws"), target("seaweedfs", gap="SeaweedFS refuses a key with a . or .. segment (a filer path)")],
    indirect=True,
)
async def test_a_key_with_a_dot_segment_is_stored_as_named(backend: Backend) -> None:
    """S3 keys are names, not paths: `a/./b` and `a/../b` are keys of their own. The service's
    own keys have no dots (ids are `[A-Za-z0-9_-]`); an object put by other means may."""
    bucket = backend.settings.aws.dest_bucket
    for key in ("a/./b", "a/../b", "."):
        await backend.storage.put(bucket, key, key.encode(), "text/plain")
    listed = [o.key async for page in backend.storage.list_objects(bucket) for o in page]
    assert sorted(listed) == [".", "a/../b", "a/./b"]
