"""Upload admission and bodies: a per-process buffer budget (503 + Retry-After after a bounded
wait), a per-user limit on uploads in progress (429), and multipart bodies bounded as a whole."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from config.settings import Settings
from pipeline.aws.clients import AwsClients
from pipeline.core.errors import UploadsBusy
from tests.support.clients import ClientFactory, bearer, issue_key
from tests.support.images import jpeg_bytes
from tests.support.settings import OTHER_USER
from tests.support.state import stored_nothing
from web.admission import ByteBudget

#: Admission and bodies are the service's own; the buffer budget bounds S3 multipart part
#: buffers, which the local backend does not hold (it streams to a file): those are marked below.
pytestmark = pytest.mark.backend("local")

MIB = 1024 * 1024
IMAGE = jpeg_bytes(300, 200)


async def held_open(release: asyncio.Event, tail: bytes = b"", sent: int = 0) -> AsyncIterator[bytes]:
    """A chunked body that starts (a real JPEG head, then `sent` more bytes) and then waits for
    `release`: it holds the buffer for what it sent (buffers are reserved as bytes arrive)."""
    yield IMAGE
    for _ in range(sent // (256 * 1024)):
        yield b"\0" * (256 * 1024)
    await release.wait()
    if tail:
        yield tail


async def test_a_user_may_have_only_so_many_uploads_in_progress(
    make_settings: Any, make_client: ClientFactory
) -> None:
    settings: Settings = make_settings(IMGSVC_USER_MAX_UPLOADS="2", IMGSVC_BODY_TIMEOUT="30")
    api = await make_client(settings)
    release = asyncio.Event()
    slow = [asyncio.ensure_future(api.put(f"/images/slow{i}", data=held_open(release))) for i in range(2)]
    await asyncio.sleep(0.5)
    refused = await api.put("/images/third", data=IMAGE)
    assert refused.status == 429
    assert (await refused.json())["error"] == "too_many_uploads"
    assert refused.headers["Retry-After"] == str(settings.web.retry_after)
    other = bearer(await issue_key(api.server.app, OTHER_USER))
    assert (await api.put("/images/theirs", data=IMAGE, headers=other)).status == 202  # only that user
    release.set()
    assert [(await r).status for r in slow] == [202, 202]
    assert (await api.put("/images/third", data=IMAGE)).status == 202  # a slot is free again


@pytest.mark.backend("aws")  # the budget is held by S3 multipart part buffers
async def test_past_the_buffer_budget_an_upload_waits_then_gets_503(
    make_settings: Any, make_client: ClientFactory, clients: AwsClients
) -> None:
    """A 6 MiB budget: a chunked upload that sent 4.5 MiB holds that much of its part buffer; a
    second upload needing 2 MiB waits its bounded time, is answered 503 with Retry-After, and
    nothing of it is stored."""
    settings: Settings = make_settings(
        IMGSVC_UPLOAD_BUFFER_BYTES=str(6 * MIB),
        IMGSVC_UPLOAD_PART_SIZE=str(5 * MIB),
        IMGSVC_UPLOAD_BUFFER_WAIT="0.5",
        IMGSVC_BODY_TIMEOUT="30",
    )
    api = await make_client(settings)
    release = asyncio.Event()
    holder = asyncio.ensure_future(api.put("/images/holder", data=held_open(release, sent=9 * MIB // 2)))
    await asyncio.sleep(0.5)
    refused = await api.put("/images/waiting", data=io.BytesIO(IMAGE + b"\0" * (2 * MIB)))
    assert refused.status == 503
    assert (await refused.json())["error"] == "uploads_busy"
    assert refused.headers["Retry-After"] == str(settings.web.retry_after)
    release.set()
    assert (await holder).status == 202
    listed = await clients.s3.list_objects_v2(Bucket=settings.aws.source_bucket)
    assert [o["Key"].split("/")[1] for o in listed["Contents"]] == ["holder"]
    again = await api.put("/images/waiting", data=io.BytesIO(IMAGE + b"\0" * (2 * MIB)))
    assert again.status == 202, await again.text()


@pytest.mark.backend("aws")  # the budget is held by S3 multipart part buffers
async def test_a_waiting_upload_gets_the_space_when_it_frees_in_time(
    make_settings: Any, make_client: ClientFactory
) -> None:
    settings: Settings = make_settings(
        IMGSVC_UPLOAD_BUFFER_BYTES=str(6 * MIB),
        IMGSVC_UPLOAD_PART_SIZE=str(5 * MIB),
        IMGSVC_UPLOAD_BUFFER_WAIT="10",
    )
    api = await make_client(settings)
    release = asyncio.Event()
    holder = asyncio.ensure_future(api.put("/images/holder", data=held_open(release, sent=9 * MIB // 2)))
    await asyncio.sleep(0.3)
    waiting = asyncio.ensure_future(api.put("/images/waiting", data=io.BytesIO(IMAGE + b"\0" * (2 * MIB))))
    await asyncio.sleep(0.5)
    assert not waiting.done()
    release.set()
    assert (await holder).status == 202 and (await waiting).status == 202


@hsettings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 100), st.floats(0, 0.003)), min_size=1, max_size=25))
def test_the_budget_never_lends_more_than_it_has(requests: list[tuple[int, float]]) -> None:
    """Any mix of reservations, held for a while or refused after a short wait: the reserved total
    never exceeds the capacity, and everything is given back at the end."""

    async def scenario() -> None:
        budget = ByteBudget(100)
        high = 0

        async def one(size: int, hold: float) -> None:
            nonlocal high
            try:
                async with budget.reserve(size, wait=0.002, retry_after=1):
                    high = max(high, budget.reserved)
                    await asyncio.sleep(hold)
            except UploadsBusy:
                pass

        await asyncio.gather(*(one(size, hold) for size, hold in requests))
        assert high <= 100 and budget.reserved == 0

    asyncio.run(scenario())


BOUNDARY = "bounds"


def form(*parts: tuple[str, str | None, bytes], preamble: bytes = b"") -> bytes:
    body = preamble
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


MULTIPART = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


async def chunked(data: bytes) -> AsyncIterator[bytes]:
    """No Content-Length: the cap must be enforced as the body arrives."""
    for start in range(0, len(data), 64 * 1024):
        yield data[start : start + 64 * 1024]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (form(("file", "a.jpg", IMAGE), preamble=b"preamble\r\n" * MIB), 413, "too_large"),
        (form(("note", None, b"n" * (3 * MIB)), ("file", "a.jpg", IMAGE)), 400, "bad_request"),
        (form(*[(f"f{i}", None, b"v") for i in range(17)], ("file", "a.jpg", IMAGE)), 400, "bad_request"),
        (form(("note", None, b"n" * 9000), ("file", "a.jpg", IMAGE)), 400, "bad_request"),
        (form(("file", "a.jpg", IMAGE), ("second", "b.jpg", IMAGE)), 400, "bad_request"),
        (form(("file", "a.jpg", IMAGE), ("note", None, b"n" * 9000)), 400, "bad_request"),
    ],
    ids=["huge-preamble", "huge-field", "17-fields", "9k-field", "second-file", "9k-field-after-file"],
)
async def test_multipart_bodies_are_bounded_as_a_whole(
    make_settings: Any,
    make_client: ClientFactory,
    body: bytes,
    status: int,
    code: str,
) -> None:
    settings: Settings = make_settings(IMGSVC_MAX_BYTES=str(2 * MIB))
    api = await make_client(settings)
    response = await api.put("/images/form", data=chunked(body), headers=MULTIPART)
    assert response.status == status, await response.text()
    assert (await response.json())["error"] == code
    await stored_nothing(settings)


async def test_a_multipart_upload_with_a_few_small_fields_is_stored(api: Any) -> None:
    body = form(("title", None, b"a dog"), ("file", "dog.jpg", IMAGE), ("tags", None, b"pets"))
    response = await api.put("/images/form", data=chunked(body), headers=MULTIPART)
    assert response.status == 202, await response.text()
    assert (await response.json())["file_name"] == "dog.jpg"
