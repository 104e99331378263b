"""Retention: `expires_in_days` on upload (or `IMGSVC_RETENTION_DAYS`) gives an image an expiry,
and `python -m pipeline gc` removes it whole once past it (original, renditions, variants,
record, and its bytes from the owner's usage); on both backends, judged at a later `now`."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.cli.gc import collect
from pipeline.core.usage import reconcile_usage
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import jpeg_bytes
from tests.support.settings import USER
from web.keys import VARIANTS


async def test_an_image_past_its_expiry_is_removed_whole_and_others_stay(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    aws = backend.settings.aws
    assert (await api.put("/images/keep", data=jpeg_bytes(40, 30))).status == 202
    short = await api.put("/images/short", params={"expires_in_days": "1"}, data=jpeg_bytes(40, 30))
    assert short.status == 202
    expires = datetime.fromisoformat((await short.json())["expires_at"].replace("Z", "+00:00"))
    assert abs((expires - datetime.now(UTC)) - timedelta(days=1)) < timedelta(minutes=1)
    compat = await api.post("/upload", json={"file_name": "cat.jpg", "expires_in_days": 2})
    assert compat.status == 202 and (await compat.json())["expires_at"]
    assert (await consume(backend)).get("ready") == 3
    assert (await api.get("/images/short/variant", params={"w": "20"})).status == 200
    await api.server.app[VARIANTS].idle()

    for bad in ("0", "36501", "x", "1.5", "-1"):
        refused = await api.put("/images/bad", params={"expires_in_days": bad}, data=jpeg_bytes(8, 8))
        assert refused.status == 400 and (await refused.json())["error"] == "invalid_field", bad
    refused = await api.post("/upload", json={"file_name": "dog.jpg", "expires_in_days": True})
    assert refused.status == 400

    later = datetime.now(UTC) + timedelta(days=1, hours=12)
    dry = await collect(backend, backend.settings, dry_run=True, now=later)
    assert dry.expired == 1 and (await api.get("/images/short")).status == 200
    done = await collect(backend, backend.settings, now=later)
    assert done.expired == 1
    assert (await api.get("/images/short")).status == 404
    for bucket in (aws.source_bucket, aws.dest_bucket):
        async for page in backend.storage.list_objects(bucket, f"{USER}/short"):
            assert page == []
    assert (await api.get("/images/keep")).status == 200 and (await api.get("/images/cat")).status == 200
    assert (await reconcile_usage(backend.tables, dry_run=True)).drifted == []
    assert (await collect(backend, backend.settings, now=later + timedelta(days=1))).expired == 1  # cat


async def test_the_deployment_retention_applies_when_an_upload_names_none(
    backend: Backend, make_client: ClientFactory
) -> None:
    accounts = dataclasses.replace(backend.settings.accounts, retention_days=3)
    api = await make_client(dataclasses.replace(backend.settings, accounts=accounts))
    answer = await (await api.put("/images/kept3", data=jpeg_bytes(16, 16))).json()
    expires = datetime.fromisoformat(answer["expires_at"].replace("Z", "+00:00")).timestamp()
    assert abs(expires - (time.time() + 3 * 86_400)) < 60
    too_long = await api.put("/images/own", params={"expires_in_days": "10"}, data=jpeg_bytes(16, 16))
    assert too_long.status == 400  # no longer than the deployment keeps anything
    own = await (
        await api.put("/images/own", params={"expires_in_days": "2"}, data=jpeg_bytes(16, 16))
    ).json()
    assert own["expires_at"] < answer["expires_at"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("ministack", marks=pytest.mark.ministack)], indirect=True)
async def test_the_table_itself_deletes_a_record_past_its_purge_time(
    backend: Backend, make_client: ClientFactory
) -> None:
    """DynamoDB's TTL, the last backstop (`purge_at`, a week past an expiry gc did not act on),
    seen deleting where an emulator runs it: moto never deletes an expired item; MiniStack's
    reaper looks every 60 s. Only the record past its time goes."""
    api = await make_client(backend.settings)
    for image_id in ("stays", "purged"):
        assert (await api.put(f"/images/{image_id}", data=jpeg_bytes(40, 30))).status == 202
    assert (await consume(backend)).get("ready") == 2
    key = {"user_id": USER, "image_id": "purged"}
    record = await backend.tables.images.get(key)
    assert record is not None and record.get("purge_at") is None  # kept for ever, as uploaded
    await backend.tables.images.put({**record, "purge_at": int(time.time()) - 1})
    deadline = time.monotonic() + TTL_SWEEP_SECONDS + 15
    while await backend.tables.images.get(key) is not None:
        assert time.monotonic() < deadline, f"still there after {TTL_SWEEP_SECONDS + 15} s"
        await asyncio.sleep(1)
    assert (await api.get("/images/purged")).status == 404
    assert (await api.get("/images/stays")).status == 200


#: How often MiniStack's DynamoDB looks for expired items (its `_ttl_reaper`).
TTL_SWEEP_SECONDS = 60
