"""Faults of our own storage: a full or read-only data directory, throttled AWS, and who may read
the data directory. A full disk answers 507 with `Retry-After` and never a traceback, deletes
still work, readiness says why; a directory that cannot be written stops the start with one line.
The disks here are small tmpfs mounts (root only; skipped elsewhere)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from config.settings import ConfigError, Settings
from pipeline.aws.clients import aws_errors
from pipeline.core.errors import StorageUnavailable
from tests.support.clients import ClientFactory
from tests.support.processes import WebProcess
from tests.support.settings import local_settings


def noise_png(side: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG", compress_level=0)
    return out.getvalue()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs of its own, unmounted afterwards."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(where)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def fill(api: Any, image: bytes, most: int = 40) -> tuple[list[str], Any]:
    """Upload `image` under new ids until one is refused; the ids stored and the refusal."""
    stored = []
    for n in range(most):
        response = await api.put(f"/images/fill{n}", data=io.BytesIO(image))
        if response.status != 202:
            return stored, response
        stored.append(f"fill{n}")
    raise AssertionError(f"{most} uploads fitted on a 32 MiB disk")


async def test_a_disk_under_its_free_space_floor_refuses_uploads_and_still_deletes(
    small_disk: Path, make_client: ClientFactory
) -> None:
    settings = local_settings(small_disk / "data", IMGSVC_MIN_FREE_BYTES=str(6 * 1024 * 1024))
    api = await make_client(settings)
    stored, refused = await fill(api, noise_png(700))  # ~1.5 MB each
    assert refused.status == 507
    body = await refused.json()
    assert body["error"] == "insufficient_storage" and "disk_low" in body["message"]
    assert int(refused.headers["Retry-After"]) > 0
    readiness = await api.get("/health/ready")
    assert readiness.status == 503 and (await readiness.json())["checks"]["disk"] == "disk_low"
    for image_id in stored[:4]:
        assert (await api.delete(f"/images/{image_id}")).status == 204
    assert (await api.put("/images/again", data=noise_png(64))).status == 202


async def test_a_full_disk_answers_507_and_deletes_go_on(
    small_disk: Path, make_client: ClientFactory
) -> None:
    settings = local_settings(small_disk / "data", IMGSVC_MIN_FREE_BYTES="0")
    api = await make_client(settings)
    assert (small_disk / "data" / "reserve").exists()
    stored, refused = await fill(api, noise_png(1000))  # ~3 MB each: the disk runs out mid-write
    assert refused.status == 507
    assert (await refused.json())["error"] == "insufficient_storage"
    assert "Retry-After" in refused.headers
    assert not (small_disk / "data" / "reserve").exists()  # given back, for the deletes
    for image_id in stored:
        assert (await api.delete(f"/images/{image_id}")).status == 204
    assert (await api.put("/images/after", data=noise_png(64))).status == 202
    readiness = await (await api.get("/health/ready")).json()
    assert readiness["checks"]["disk"] == "ok"
    assert (small_disk / "data" / "reserve").exists()  # made again once there was room


async def start_web(data_dir: Path, log: Path) -> tuple[int, str]:
    """`python -m web --data-dir` that must stop at its start: its exit status and its output."""
    async with WebProcess("--data-dir", str(data_dir), log=log, ready=None) as web:
        return await web.exited(), web.text


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only 1 MiB tmpfs of its own, unmounted afterwards."""
    where = tmp_path / "ro"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.e2e
async def test_a_read_only_data_directory_is_one_line_and_exit_code_2(
    read_only_dir: Path, tmp_path: Path
) -> None:
    returncode, output = await start_web(read_only_dir, tmp_path / "web.log")
    assert returncode == 2
    lines = [line for line in output.splitlines() if "level=" not in line and line.strip()]
    assert lines == [f"error: the data directory {read_only_dir} cannot be written: Read-only file system"]


@pytest.mark.e2e
async def test_a_data_directory_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    returncode, output = await start_web(blocker / "data", tmp_path / "web.log")
    assert returncode == 2
    assert output.strip().splitlines() == [
        f"error: the data directory {blocker / 'data'} cannot be created: Not a directory"
    ]


async def test_the_data_directory_is_the_owners_alone(tmp_path: Path, make_client: ClientFactory) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    (data / "demo-keys.json").write_text("{}")
    (data / "demo-keys.json").chmod(0o644)
    api = await make_client(local_settings(data))
    assert (await api.put("/images/private", data=noise_png(64))).status == 202
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(data) == 0o700  # narrowed at start
    assert mode(data / "demo-keys.json") == 0o600
    assert mode(data / "state.db") == 0o600
    for path in (data / "objects").rglob("*"):
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert any(p.is_file() for p in (data / "objects" / "blobs").rglob("*"))


def test_embedded_mode_refuses_presigned_uploads_unless_trusted() -> None:
    with pytest.raises(ConfigError, match="checks no signatures"):
        Settings.from_env({"IMGSVC_UPLOAD_MODES": "api,presigned"})
    trusted = Settings.from_env({"IMGSVC_UPLOAD_MODES": "api,presigned", "IMGSVC_EMBEDDED_TRUSTED": "true"})
    assert "presigned" in trusted.web.upload_modes
    local = Settings.from_env({"IMGSVC_UPLOAD_MODES": "api,presigned", "IMGSVC_DATA_DIR": "/tmp/x"})
    assert "presigned" in local.web.upload_modes  # the local backend checks its own signatures


@pytest.mark.parametrize(
    "code", ["SlowDown", "Throttling", "ThrottlingException", "ProvisionedThroughputExceededException"]
)
def test_aws_throttling_is_a_transient_error(code: str) -> None:
    """Retried by the consumer, and answered 503 with `Retry-After` by the API (the middleware
    answers every transient error so), never a 500."""
    error = ClientError({"Error": {"Code": code, "Message": "slow down"}}, "PutObject")
    with pytest.raises(StorageUnavailable, match=code), aws_errors(StorageUnavailable):
        raise error
    assert StorageUnavailable.http_status == 503
