"""`Idempotency-Key` on the upload routes, on both backends: a retry gets the first answer and
stores and charges nothing; the same key for something else is a 422; a key held by a request
in progress is a 409 until its lease runs out."""

from __future__ import annotations

import asyncio
import io
import string
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.layout import ImageRef
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import jpeg_bytes
from tests.support.settings import OTHER_USER, USER
from web.idempotency import (
    Answer,
    Claim,
    IdempotencyKeyInUse,
    IdempotencyStore,
    InvalidIdempotencyKey,
    fingerprint,
    key_of,
)
from web.keys import IDEMPOTENCY, RECORDS

Client = TestClient[Any, Any]


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


async def usage_of(backend: Backend) -> tuple[int, int]:
    user = await backend.tables.users.get({"user_id": USER}) or {}
    return int(user.get("bytes_used", 0)), int(user.get("image_count", 0))


async def test_a_retried_upload_gets_the_first_answer_and_is_stored_and_charged_once(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    image = jpeg_bytes(64, 48)
    first = await api.put("/images/retried", data=image, headers=keyed("upload-1"))
    assert first.status == 202 and "Idempotent-Replayed" not in first.headers
    answer = await first.json()
    charged = await usage_of(backend)
    record = await api.server.app[RECORDS].read(ImageRef.of(USER, "retried"))
    assert record is not None
    for _ in range(2):
        again = await api.put("/images/retried", data=image, headers=keyed("upload-1"))
        assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
        assert await again.json() == answer and again.headers["Location"] == answer["status_url"]
    assert await usage_of(backend) == charged == (len(image), 1)
    still = await api.server.app[RECORDS].read(ImageRef.of(USER, "retried"))
    assert still is not None and still.item["updated_at"] == record.item["updated_at"]  # not written again
    done = await consume(backend)
    assert done.get("ready") == 1 and set(done) <= {"ready", "test_event"}  # one upload, one job

    # A POST's image id is made by the server: the retry learns the first one's.
    posted = [await api.post("/images", data=image, headers=keyed("post-1")) for _ in range(2)]
    ids = {(await response.json())["image_id"] for response in posted}
    assert len(ids) == 1 and posted[1].headers["Idempotent-Replayed"] == "true"
    listed = await (await api.get("/images")).json()
    assert sorted(i["image_id"] for i in listed["images"]) == sorted(["retried", *ids])

    # The original route, with its JSON body.
    compat = {"file_name": "cat.jpg", "user_id": USER}
    answers = [await api.post("/upload", json=compat, headers=keyed("compat-1")) for _ in range(2)]
    assert [a.status for a in answers] == [202, 202] and answers[1].headers["Idempotent-Replayed"] == "true"
    other = await api.post("/upload", json={"file_name": "dog.jpg"}, headers=keyed("compat-1"))
    assert other.status == 422 and (await other.json())["error"] == "idempotency_key_reused"


async def test_the_same_key_for_another_request_is_refused_and_changes_nothing(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    assert (await api.put("/images/one", data=jpeg_bytes(64, 48), headers=keyed("k"))).status == 202
    charged = await usage_of(backend)
    multipart_same = await api.put(  # the same bytes in a form: the bytes are what is compared
        "/images/one", data={"file": io.BytesIO(jpeg_bytes(64, 48))}, headers=keyed("k")
    )
    assert multipart_same.status == 202 and multipart_same.headers["Idempotent-Replayed"] == "true"
    for path, body in (("/images/one", jpeg_bytes(48, 64)), ("/images/two", jpeg_bytes(64, 48))):
        refused = await api.put(path, data=body, headers=keyed("k"))
        assert refused.status == 422, path
        assert (await refused.json())["error"] == "idempotency_key_reused"
    assert await usage_of(backend) == charged
    assert (await api.get("/images/two")).status == 404

    # Another user's key space is their own.
    other = await make_client(backend.settings, user=OTHER_USER)
    assert (await other.put("/images/one", data=jpeg_bytes(20, 20), headers=keyed("k"))).status == 202


async def test_a_failed_upload_releases_its_key(backend: Backend, make_client: ClientFactory) -> None:
    api = await make_client(backend.settings)
    refused = await api.put("/images/later", data=b"not an image at all", headers=keyed("try"))
    assert refused.status == 415
    retried = await api.put("/images/later", data=jpeg_bytes(32, 32), headers=keyed("try"))
    assert retried.status == 202 and "Idempotent-Replayed" not in retried.headers


async def test_a_key_in_use_is_409_until_its_lease_runs_out(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    store: IdempotencyStore = api.server.app[IDEMPOTENCY]
    claim = await store.begin(
        USER, "held", fingerprint("PUT", "/images/held")
    )  # another process's upload, in progress
    assert isinstance(claim, Claim)
    busy = await api.put("/images/held", data=jpeg_bytes(16, 16), headers=keyed("held"))
    assert busy.status == 409 and (await busy.json())["error"] == "idempotency_key_in_use"
    assert int(busy.headers["Retry-After"]) >= 1

    # A holder that died frees the key when its lease runs out; its late answer is not kept.
    short = IdempotencyStore(backend.tables.requests, lease=0.5)
    dead = await short.begin(USER, "dies", "route")
    assert isinstance(dead, Claim)
    with pytest.raises(IdempotencyKeyInUse):
        await short.begin(USER, "dies", "route")
    await asyncio.sleep(0.6)
    taker = await short.begin(USER, "dies", "route")
    assert isinstance(taker, Claim) and taker.token != dead.token
    await short.finish(dead, 202, {"image_id": "late"}, "x")
    await short.finish(taker, 202, {"image_id": "taken"}, "y")
    replay = await short.begin(USER, "dies", "route")
    assert isinstance(replay, Answer) and replay.body == {"image_id": "taken"}


async def test_a_claim_is_renewed_while_its_upload_runs(backend: Backend) -> None:
    store = IdempotencyStore(backend.tables.requests, lease=0.5)
    claim = await store.begin(USER, "long", "route")
    assert isinstance(claim, Claim)
    async with store.held(claim):
        await asyncio.sleep(1.25)  # two and a half leases
        with pytest.raises(IdempotencyKeyInUse):
            await store.begin(USER, "long", "route")
        await store.finish(claim, 202, {"image_id": "long"}, "z")
    assert isinstance(await store.begin(USER, "long", "route"), Answer)


@given(st.text(alphabet=string.printable, min_size=0, max_size=300))
def test_keys_are_1_to_255_printable_ascii_characters_without_spaces(key: str) -> None:
    try:
        request = make_mocked_request("PUT", "/images/x", headers={"Idempotency-Key": key})
    except ValueError:  # not sendable as a header at all (a line break)
        return
    valid = 1 <= len(key) <= 255 and all("!" <= c <= "~" for c in key)
    try:
        assert key_of(request) == key and valid
    except InvalidIdempotencyKey:
        assert not valid
