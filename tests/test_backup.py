"""Backups of a data directory taken while it serves, restored into a new one; the database's
schema version (older ones brought up to date at open, newer ones refused with one line)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from pipeline.backends import data_dir_problem
from pipeline.local.backup import BackupError, backup, restore
from pipeline.local.database import SCHEMA_VERSION, Database, SchemaError
from tests.support.clients import ClientFactory
from tests.support.images import jpeg_bytes
from tests.support.settings import local_settings
from web.__main__ import main as web_main


async def test_a_backup_taken_during_uploads_restores_every_image_acknowledged_before_it(
    tmp_path: Path, make_client: ClientFactory
) -> None:
    data = tmp_path / "data"
    api = await make_client(local_settings(data))
    before = {f"before{n}": jpeg_bytes(64 + n, 48) for n in range(15)}
    for name, body in before.items():
        assert (await api.put(f"/images/{name}", data=body)).status == 202
    assert (await api.delete("/images/before0")).status == 204  # gone before: not in the backup
    del before["before0"]
    stop = asyncio.Event()
    during: list[str] = []

    async def burst() -> None:
        n = 0
        while not stop.is_set():
            name = f"during{n}"
            if (await api.put(f"/images/{name}", data=jpeg_bytes(40, 30 + n % 40))).status == 202:
                during.append(name)
            n += 1

    uploading = asyncio.create_task(burst())
    while len(during) < 3:  # the burst is under way
        await asyncio.sleep(0.01)
    report = await asyncio.to_thread(backup, data, tmp_path / "backup")
    stop.set()
    await uploading
    last = len(during)
    assert report.deleted_during_backup == 0 and report.schema_version == SCHEMA_VERSION
    assert report.objects >= len(before), report

    restored = tmp_path / "restored"
    await asyncio.to_thread(restore, tmp_path / "backup", restored)
    conn = sqlite3.connect(restored / "state.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    again = await make_client(local_settings(restored))  # the same user's key, issued anew
    for name, body in before.items():
        response = await again.get(f"/download/image?image_id={name}")
        assert response.status == 200, (name, await response.text())
        assert await response.read() == body, name
    assert (await again.get("/download/image?image_id=before0")).status == 404
    # Uploads that raced the backup are there whole or not at all: none is a record without bytes.
    kept = 0
    for name in during[:last]:
        record = await again.get(f"/images/{name}")
        if record.status == 404:
            continue
        assert (await again.get(f"/download/image?image_id={name}")).status == 200, name
        kept += 1
    assert kept >= 1  # the ones acknowledged before the backup began, at least


def test_restore_goes_only_into_a_new_or_empty_directory_and_refuses_a_damaged_backup(
    tmp_path: Path,
) -> None:
    with pytest.raises(BackupError, match="not a data directory"):
        backup(tmp_path / "nothing", tmp_path / "b")
    data = tmp_path / "data"
    asyncio.run(_open_and_close(data))
    backup(data, tmp_path / "b")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(BackupError, match="not an empty directory"):
        restore(tmp_path / "b", tmp_path / "busy")
    with pytest.raises(BackupError, match="not an empty directory"):
        backup(data, tmp_path / "busy")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["backup.json", "objects", "state.db"]
    (tmp_path / "b" / "state.db").write_bytes(b"not a database" * 100)
    with pytest.raises(BackupError, match="cannot be read"):
        restore(tmp_path / "b", tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "b" / "backup.json").write_text("{")
    with pytest.raises(BackupError, match="is not a backup"):
        restore(tmp_path / "b", tmp_path / "new")


async def _open_and_close(root: Path) -> None:
    db = await Database(root / "state.db").open()
    await db.close()


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


async def test_a_database_from_before_versions_is_brought_up_to_date_and_a_newer_one_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.db"
    await _open_and_close(tmp_path)
    assert _version(path) == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 0")  # as every database made before versions were kept
    conn.commit()
    conn.close()
    await _open_and_close(tmp_path)
    assert _version(path) == SCHEMA_VERSION
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    problem = data_dir_problem(local_settings(tmp_path))
    assert problem == (
        f"{path} has schema version {SCHEMA_VERSION + 1}, newer than this release's "
        f"{SCHEMA_VERSION}: run the release that wrote it (or a later one), or restore a backup "
        "this release made"
    )
    assert web_main(["--data-dir", str(tmp_path), "--port", "0", "--admin-port", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {problem}"
    with pytest.raises(SchemaError):
        await _open_and_close(tmp_path)
    assert _version(path) == SCHEMA_VERSION + 1  # untouched
