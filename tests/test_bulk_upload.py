"""`python -m pipeline upload`: folders in, a summary out, and a re-run resumes where it stopped."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image

from pipeline.cli.bulk import Summary, default_api
from tests.support.clients import ClientFactory, bearer, issue_key
from tests.support.consumers import run_consumer_until_drained
from tests.support.images import jpeg_bytes
from tests.support.processes import process_env
from tests.support.settings import OTHER_USER, ROOT
from tests.support.state import record_of

Client = TestClient[Any, Any]
pytestmark = pytest.mark.backend("local")


def url_of(api: Client) -> str:
    return str(api.make_url("")).rstrip("/")


async def run_upload(
    api: Client | str | None, key: str, *args: str, progress: bool = False, **env: str
) -> tuple[int, dict[str, Any]]:
    """The CLI as a process, against the test's real server (the loop keeps serving meanwhile).

    `api` None leaves `--api` out (its default applies); the summary carries the process's stderr.
    """
    api_args = () if api is None else ("--api", api if isinstance(api, str) else url_of(api))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "pipeline", "upload", *api_args, *(() if progress else ("--no-progress",)), *args),
        cwd=ROOT,
        env=process_env(IMGSVC_API_KEY=key, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    summary = json.loads(out) if out.strip() else {}
    return process.returncode, summary | {"stderr": err.decode()}


def folder(root: Path) -> Path:
    (root / "album" / "sub" / "deeper").mkdir(parents=True)
    (root / "album" / "a.jpg").write_bytes(jpeg_bytes(64, 48))
    Image.new("RGB", (32, 32), (0, 128, 255)).save(root / "album" / "sub" / "b.png")
    (root / "album" / "sub" / "deeper" / "c.jpeg").write_bytes(jpeg_bytes(48, 64))
    (root / "album" / "notes.txt").write_text("not an image, not even tried")
    (root / "album" / "fake.jpg").write_text("a text file named like a photo")
    return root / "album"


@pytest.mark.e2e
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


@pytest.mark.e2e
async def test_bulk_upload_needs_a_key_and_existing_paths(tmp_path: Path, api: Client) -> None:
    code, summary = await run_upload(api, "", str(tmp_path))
    assert code == 2 and "API key" in summary["stderr"]
    code, summary = await run_upload(api, "isk_x", str(tmp_path / "nope"))
    assert code == 2 and "no such file" in summary["stderr"]


async def listed_ids(api: Client, key: str) -> list[str]:
    listed = await (await api.get("/images?limit=100", headers=bearer(key))).json()
    return sorted(i["image_id"] for i in listed["images"])


def counts(summary: dict[str, Any]) -> tuple[int, int, int]:
    return summary["uploaded"], summary["skipped_already_uploaded"], summary["failed"]


@pytest.mark.e2e
async def test_the_journal_knows_which_api_and_user_a_file_went_to(
    tmp_path: Path, settings: Any, make_client: ClientFactory
) -> None:
    api = await make_client(settings)
    key = await issue_key(api.server.app, "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e")
    album, state = folder(tmp_path), tmp_path / "state.jsonl"
    (album / "fake.jpg").unlink()
    code, summary = await run_upload(api, key, str(album), "--state", str(state))
    assert code == 0 and counts(summary) == (3, 0, 0), summary
    assert key not in state.read_text()  # the journal names the user by a hash of the key
    code, summary = await run_upload(api, key, str(album), "--state", str(state))
    assert code == 0 and counts(summary) == (0, 3, 0)

    # Another user on the same API: uploaded again, into that user's images.
    other_key = await issue_key(api.server.app, OTHER_USER)
    code, summary = await run_upload(api, other_key, str(album), "--state", str(state))
    assert code == 0 and counts(summary) == (3, 0, 0), summary
    assert len(await listed_ids(api, other_key)) == 3

    # Another API (a second server on the same tables, where the same key works): uploaded again.
    second = await make_client(settings)
    code, summary = await run_upload(second, key, str(album), "--state", str(state))
    assert code == 0 and counts(summary) == (3, 0, 0), summary

    # The same API no longer has an image (a restarted in-memory stack has none): uploaded again.
    (gone,) = [i for i in await listed_ids(api, key) if i.startswith("a-")]
    assert (await api.delete(f"/images/{gone}", headers=bearer(key))).status == 204
    code, summary = await run_upload(api, key, str(album), "--state", str(state))
    assert code == 0 and counts(summary) == (1, 2, 0), summary

    # Lines of the older journal format (no API, no user) are not taken as done, and do not crash.
    old = tmp_path / "old.jsonl"
    old.write_text(
        "".join(
            json.dumps({"fingerprint": f"{p.resolve()}|{p.stat().st_size}|{p.stat().st_mtime_ns}"}) + "\n"
            for p in album.rglob("*.*")
        )
        + "[1, 2]\n"
    )
    code, summary = await run_upload(api, key, str(album), "--state", str(old))
    assert code == 0 and counts(summary) == (3, 0, 0), summary


def test_default_api_is_where_python_m_web_listens_by_the_same_variables() -> None:
    assert default_api("127.0.0.1", 8080) == "http://127.0.0.1:8080"
    assert default_api("0.0.0.0", 9000) == "http://127.0.0.1:9000"
    assert default_api("", 9000) == "http://127.0.0.1:9000"
    assert default_api("::", 9000) == "http://127.0.0.1:9000"
    assert default_api("::1", 9000) == "http://[::1]:9000"
    assert default_api("images.internal", 80) == "http://images.internal:80"


@pytest.mark.e2e
async def test_default_api_follows_imgsvc_port(tmp_path: Path, api: Client) -> None:
    key = await issue_key(api.server.app, OTHER_USER)
    album = folder(tmp_path)
    (album / "fake.jpg").unlink()
    port = str(api.make_url("").port)
    code, summary = await run_upload(None, key, str(album), "--state", str(tmp_path / "s"), IMGSVC_PORT=port)
    assert code == 0 and counts(summary) == (3, 0, 0), summary
    assert len(await listed_ids(api, key)) == 3


@pytest.mark.e2e
async def test_a_refused_key_is_one_short_line_and_the_bar_claims_nothing(
    tmp_path: Path, api: Client
) -> None:
    album, state = folder(tmp_path), tmp_path / "state.jsonl"
    wrong = "isk_0123456789abcdef_" + "A" * 43
    code, summary = await run_upload(api, wrong, str(album), "--state", str(state), progress=True)
    assert code == 1 and counts(summary) == (0, 0, 4), summary
    stderr = summary["stderr"]
    assert stderr.count("invalid_credentials") == 1 and "Traceback" not in stderr, stderr
    assert "stopped early, 4 file(s) not tried: 401 invalid_credentials: the API key is not valid" in stderr
    assert "100%" not in stderr
    assert set(summary["failures"].values()) == {
        "not tried: 401 invalid_credentials: the API key is not valid (unknown, malformed or revoked)"
    }
    assert not state.exists() or state.read_text() == ""


@pytest.mark.e2e
async def test_failed_files_keep_the_progress_bar_short_of_100(tmp_path: Path, api: Client) -> None:
    key = await issue_key(api.server.app, OTHER_USER)
    album = folder(tmp_path)
    code, summary = await run_upload(api, key, str(album), "--state", str(tmp_path / "s"), progress=True)
    assert code == 1 and counts(summary) == (3, 0, 1), summary
    stderr = summary["stderr"]
    assert "100%" not in stderr and "failed=1" in stderr, stderr
    assert "1 file(s) failed: 415 not_an_image: " in stderr
    (reason,) = summary["failures"].values()
    assert reason.startswith("415 not_an_image: ") and "\n" not in reason and len(reason) < 250


@pytest.mark.e2e
async def test_nothing_listening_is_said_once_and_nothing_is_tried(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    album = folder(tmp_path)
    url = f"http://127.0.0.1:{port}"
    code, summary = await run_upload(url, "isk_x", str(album), "--state", str(tmp_path / "s"), progress=True)
    assert code == 1 and counts(summary) == (0, 0, 4), summary
    stderr = summary["stderr"]
    assert stderr.count(f"cannot connect to {url}") == 1, stderr
    assert f"stopped early, 4 file(s) not tried: cannot connect to {url} (connection refused)" in stderr
    assert summary["errors"] == {"not_tried": 4} and summary["stopped"].startswith("cannot connect")
    assert "Error(" not in json.dumps(summary["failures"])  # reasons, not exception reprs


def test_report_groups_failures_by_reason() -> None:
    summary = Summary(
        failed={
            "a": "cannot connect to X",
            "b": "cannot connect to X",
            "c": "not tried: cannot connect to X",
        },
        stopped="cannot connect to X",
        not_tried=1,
    )
    assert summary.report() == ["2 file(s) failed: cannot connect to X (stopped early, 1 file(s) not tried)"]
    summary = Summary(failed={"a": "415 not_an_image: no", "b": "500 internal_error: oops"})
    assert sorted(summary.report()) == [
        "1 file(s) failed: 415 not_an_image: no",
        "1 file(s) failed: 500 internal_error: oops",
    ]


@pytest.mark.backend("aws")  # presigned uploads straight to S3
@pytest.mark.e2e
async def test_bulk_upload_goes_straight_to_s3_where_the_api_offers_it(
    tmp_path: Path, settings: Any, make_client: ClientFactory, clients: Any
) -> None:
    web = dataclasses.replace(settings.web, upload_modes=frozenset({"api", "presigned"}))
    api = await make_client(dataclasses.replace(settings, web=web))
    user = "ab11ed09-03da-4d77-9b8d-6d07b5db1e5e"
    key = await issue_key(api.server.app, user)
    album, state = folder(tmp_path), tmp_path / "state.jsonl"

    code, summary = await run_upload(api, key, str(album), "--state", str(state))
    # The text file named like a photo is no image format: the API is asked, and refuses it.
    assert code == 1 and (summary["uploaded"], summary["failed"]) == (3, 1)
    assert summary["errors"] == {"not_an_image": 1}
    await run_consumer_until_drained(clients, settings)
    listed = await (await api.get("/images", headers=bearer(key))).json()
    assert sorted(i["status"] for i in listed["images"]) == ["ready"] * 3
    for image in listed["images"]:
        record = await record_of(clients, settings, f"{user}/{image['image_id']}")
        assert record is not None and "presigned_upload" in record.item  # its bytes went to S3 directly

    # A changed file replaces its image: upload-url makes new images only, so the API takes it.
    (album / "a.jpg").write_bytes(jpeg_bytes(65, 48))
    os.utime(album / "a.jpg", ns=(1, 1))
    code, summary = await run_upload(api, key, str(album), "--state", str(state))
    assert code == 1 and (summary["uploaded"], summary["skipped_already_uploaded"]) == (1, 2)
    await run_consumer_until_drained(clients, settings)
    replaced = [i for i in (await (await api.get("/images", headers=bearer(key))).json())["images"]]
    assert {i["width"] for i in replaced if i["image_id"].startswith("a-")} == {65}
