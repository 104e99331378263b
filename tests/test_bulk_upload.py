"""`python -m pipeline upload`: folders in, a summary out, and a re-run resumes where it stopped."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from PIL import Image

from tests.conftest import ROOT, ClientFactory, issue_key, jpeg_bytes, process_env

Client = TestClient[Any, Any]


async def run_upload(api: Client, key: str, *args: str) -> tuple[int, dict[str, Any]]:
    """The CLI as a process, against the test's real server (the loop keeps serving meanwhile)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "pipeline", "upload", "--api", str(api.make_url("")).rstrip("/"), "--no-progress", *args),
        cwd=ROOT,
        env=process_env(IMGSVC_API_KEY=key),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, json.loads(out) if out.strip() else {"stderr": err.decode()}


def folder(root: Path) -> Path:
    (root / "album" / "sub" / "deeper").mkdir(parents=True)
    (root / "album" / "a.jpg").write_bytes(jpeg_bytes(64, 48))
    Image.new("RGB", (32, 32), (0, 128, 255)).save(root / "album" / "sub" / "b.png")
    (root / "album" / "sub" / "deeper" / "c.jpeg").write_bytes(jpeg_bytes(48, 64))
    (root / "album" / "notes.txt").write_text("not an image, not even tried")
    (root / "album" / "fake.jpg").write_text("a text file named like a photo")
    return root / "album"


async def test_bulk_upload_summarises_and_resumes(
    tmp_path: Path, settings: Any, make_client: ClientFactory
) -> None:
    api = await make_client(settings)
    key = await issue_key(api.server.app, "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e")
    album, state = folder(tmp_path), tmp_path / "state.jsonl"

    code, summary = await run_upload(api, key, str(album), "--state", str(state))
    assert code == 1  # one file failed
    assert (summary["uploaded"], summary["failed"], summary["skipped_already_uploaded"]) == (3, 1, 0)
    assert summary["errors"] == {"not_an_image": 1} and "fake.jpg" in next(iter(summary["failures"]))
    listed = await (await api.get("/images", headers={"Authorization": f"Bearer {key}"})).json()
    ids = sorted(i["image_id"] for i in listed["images"])
    assert len(ids) == 3 and any(i.startswith("sub-deeper-c-") for i in ids)

    # Interrupted mid-write: a torn last line is ignored; done files are skipped, changed ones redone.
    with state.open("a") as journal:
        journal.write('{"fingerprint": "torn')
    (album / "a.jpg").write_bytes(jpeg_bytes(65, 48))
    os.utime(album / "a.jpg", ns=(1, 1))
    code, summary = await run_upload(api, key, str(album), "--state", str(state))
    assert (summary["uploaded"], summary["skipped_already_uploaded"], summary["failed"]) == (1, 2, 1)
    again = await (await api.get("/images", headers={"Authorization": f"Bearer {key}"})).json()
    assert sorted(i["image_id"] for i in again["images"]) == ids  # the same ids: replaced, not added


async def test_bulk_upload_needs_a_key_and_existing_paths(tmp_path: Path, api: Client) -> None:
    code, summary = await run_upload(api, "", str(tmp_path))
    assert code == 2 and "API key" in summary["stderr"]
    code, summary = await run_upload(api, "isk_x", str(tmp_path / "nope"))
    assert code == 2 and "no such file" in summary["stderr"]
