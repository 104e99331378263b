"""`python -m pipeline users reconcile`: usage counters recomputed from the image records, on
either backend; a dry run only reports the drift."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.items import Add
from pipeline.core.usage import reconcile_usage
from tests.support.backends import Backend
from tests.support.clients import ClientFactory
from tests.support.consumers import consume
from tests.support.images import jpeg_bytes
from tests.support.settings import ROOT, USER
from web.keys import VARIANTS


async def test_drifted_counters_are_recomputed_from_the_records(
    backend: Backend, make_client: ClientFactory
) -> None:
    api = await make_client(backend.settings)
    users = backend.tables.users
    for image_id, size in (("one", (640, 480)), ("two", (300, 200))):
        assert (await api.put(f"/images/{image_id}", data=jpeg_bytes(*size))).status == 202
    await consume(backend)
    assert (await api.get("/images/one/variant", params={"w": "100"})).status == 200
    await api.server.app[VARIANTS].idle()  # counted in the record once stored, after the answer
    clean = await reconcile_usage(backend.tables, dry_run=True)
    assert clean.users >= 1 and [d.user_id for d in clean.drifted] == []  # the API kept them true
    truth = await users.get({"user_id": USER})
    assert truth is not None

    # A crash between storing and counting, say: the counters are off from the records.
    await users.update({"user_id": USER}, [Add("bytes_used", 12_345), Add("image_count", -1)])
    dry = await reconcile_usage(backend.tables, dry_run=True)
    [drift] = dry.drifted
    assert (drift.counted_bytes - drift.actual_bytes, drift.counted_images - drift.actual_images) == (
        12_345,
        -1,
    )
    assert drift.actual_bytes == truth["bytes_used"] and drift.actual_images == truth["image_count"] == 2
    assert (await users.get({"user_id": USER}))["bytes_used"] == truth["bytes_used"] + 12_345  # untouched

    fixed = await reconcile_usage(backend.tables)
    assert [d.user_id for d in fixed.drifted] == [USER]
    after = await users.get({"user_id": USER})
    assert after is not None and (after["bytes_used"], after["image_count"]) == (truth["bytes_used"], 2)
    assert (await reconcile_usage(backend.tables)).drifted == []


@pytest.mark.e2e
def test_the_command_reports_json(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "IMGSVC_LOG_LEVEL": "WARNING"}
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "--data-dir",
        str(tmp_path),
        "users",
        "reconcile",
        "--dry-run",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(done.stdout)
    assert report == {"dry_run": True, "users": report["users"], "drifted": []}


async def test_the_caller_reads_their_usage_against_their_quotas(
    backend: Backend, make_client: ClientFactory
) -> None:
    accounts = dataclasses.replace(backend.settings.accounts, quota_bytes=10_000_000, quota_images=5)
    api = await make_client(dataclasses.replace(backend.settings, accounts=accounts))
    empty = await api.get("/usage")
    assert empty.status == 200
    assert await empty.json() == {"images": 0, "bytes": 0, "quota_images": 5, "quota_bytes": 10_000_000}
    photo = jpeg_bytes(300, 200)
    assert (await api.put("/images/photo", data=photo)).status == 202
    assert (await consume(backend)).get("ready") == 1
    assert (await api.get("/images/photo/variant", params={"w": "100"})).status == 200
    await api.server.app[VARIANTS].idle()
    usage = await (await api.get("/usage")).json()
    assert usage["images"] == 1 and usage["bytes"] > len(photo)  # the original and its variant
    # Without quotas: null; without a key: 401.
    unlimited = await make_client(backend.settings)
    assert (await (await unlimited.get("/usage")).json())["quota_bytes"] is None
    nobody = await make_client(backend.settings, user=None)
    assert (await nobody.get("/usage")).status == 401
