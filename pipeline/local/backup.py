"""Back up a data directory while it serves, and restore one into a new directory.

A backup is a directory: `state.db` (SQLite's online backup: one consistent snapshot of every
record, key, queue and object row, taken while other processes write), the blobs that snapshot
names under `objects/blobs/`, `demo-keys.json` if there is one, and `backup.json` (when, which
schema, how many objects and bytes). Blobs never change under their name and are unlinked only
after the row naming them is gone, so the blobs are copied around the snapshot:

1. every blob there is now (most of what the snapshot will name, copied while uploads go on);
2. the snapshot;
3. the blobs the snapshot names that arrived after step 1. One deleted in the moment between
   the snapshot and its copy (an image deleted during the backup) is left out with its object
   row, and counted in the report: the backup then holds that image's record without its bytes,
   as if the delete had half happened, which `python -m pipeline gc` finishes.
   Blobs copied in step 1 that the snapshot no longer names (deleted before it) are dropped.

An image acknowledged before the backup began is in it, byte for byte, unless it was deleted
meanwhile. Restoring copies the backup into a directory that is new or empty (never over a live
one), checks the database's integrity and that every blob it names is there.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.local.backend import DATABASE_NAME
from pipeline.local.database import SchemaError, check_schema
from pipeline.local.files import DIR_MODE, FILE_MODE

DATABASE = DATABASE_NAME
BLOBS = Path("objects") / "blobs"
MANIFEST = "backup.json"
#: Files beside the database that a backup carries when they exist.
EXTRA_FILES = ("demo-keys.json",)


class BackupError(Exception):
    """A backup or restore that cannot be made; the message is the one line to print."""


@dataclass(frozen=True)
class BackupReport:
    """What a backup holds (also written as its `backup.json`)."""

    created_at: str
    schema_version: int
    objects: int
    bytes: int
    #: Images deleted while the backup ran, between its snapshot and the copy of their bytes.
    deleted_during_backup: int


def backup(root: Path, out: Path) -> BackupReport:
    """Back up the data directory `root` (which may be serving) into `out`, new or empty."""
    try:
        return _backup(root, out)
    except sqlite3.Error as exc:
        raise BackupError(f"{root / DATABASE} cannot be backed up: {exc}") from None


def _backup(root: Path, out: Path) -> BackupReport:
    source_db = root / DATABASE
    if not source_db.is_file():
        raise BackupError(f"{root} holds no {DATABASE}: not a data directory")
    _new_or_empty(out)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    early = _copy_tree(root / BLOBS, out / BLOBS)  # 1. what there is now
    _snapshot(source_db, out / DATABASE)  # 2. one consistent moment
    snapshot = sqlite3.connect(out / DATABASE, isolation_level=None)
    try:
        # One file, no -wal or -shm beside it: a backup opens read-only, from read-only media too.
        snapshot.execute("PRAGMA journal_mode = DELETE")
        named = {str(row[0]) for row in snapshot.execute("SELECT DISTINCT blob FROM objects")}
        gone = []
        for name in sorted(named - early):  # 3. what arrived since step 1
            try:
                _copy(root / BLOBS / name, out / BLOBS / name)
            except FileNotFoundError:
                gone.append(name)
        if gone:
            snapshot.executemany("DELETE FROM objects WHERE blob = ?", [(name,) for name in gone])
        for name in early - named:
            (out / BLOBS / name).unlink()
        objects, size = snapshot.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects").fetchone()
        version = int(snapshot.execute("PRAGMA user_version").fetchone()[0])
    finally:
        snapshot.close()
    _fsync(out / DATABASE)
    for name in EXTRA_FILES:
        if (root / name).is_file():
            _copy(root / name, out / name)
    report = BackupReport(started, version, int(objects), int(size), len(gone))
    _write_private(out / MANIFEST, json.dumps(asdict(report), indent=2) + "\n")
    return report


def restore(backup_dir: Path, root: Path) -> BackupReport:
    """Restore the backup `backup_dir` into `root`, a directory that is new or empty; a restore
    that fails part way leaves `root` empty again."""
    try:
        return _restore(backup_dir, root)
    except sqlite3.Error as exc:
        raise BackupError(f"{backup_dir / DATABASE} cannot be read: {exc}") from None


def _restore(backup_dir: Path, root: Path) -> BackupReport:
    try:
        report = BackupReport(**json.loads((backup_dir / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BackupError(f"{backup_dir} is not a backup ({MANIFEST}: {exc})") from None
    try:
        check_schema(backup_dir / DATABASE)
    except SchemaError as exc:
        raise BackupError(str(exc)) from None
    _check(backup_dir / DATABASE, backup_dir / BLOBS)
    _new_or_empty(root)
    try:
        _copy_tree(backup_dir / BLOBS, root / BLOBS)
        for name in (DATABASE, *EXTRA_FILES):
            if (backup_dir / name).is_file():
                _copy(backup_dir / name, root / name)
        _check(root / DATABASE, root / BLOBS)
    except BaseException:
        for child in root.iterdir():  # it was new or empty: nothing of anyone else's is in it
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
    return report


def _check(database: Path, blobs: Path) -> None:
    """The database is whole and every blob it names is there."""
    conn = sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)
    try:
        verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            raise BackupError(f"{database} is damaged: {verdict}")
        names = [str(row[0]) for row in conn.execute("SELECT DISTINCT blob FROM objects")]
    finally:
        conn.close()
    if missing := [name for name in names if not (blobs / name).is_file()]:
        raise BackupError(f"{len(missing)} blob(s) named in {database} are missing, e.g. {missing[0]}")


def _new_or_empty(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BackupError(f"{path} exists and is not an empty directory: choose a new one")
    _private_dirs(path)
    os.chmod(path, DIR_MODE)


def _snapshot(source: Path, target: Path) -> None:
    """SQLite's online backup: pages are copied in steps, and restarted should another connection
    write meanwhile, so the copy is one committed state of the database."""
    src = sqlite3.connect(source, timeout=10)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    os.chmod(target, FILE_MODE)


def _private_dirs(path: Path) -> None:
    """`path` and any parents missing, each 0700 (`mkdir(parents=True)` gives parents the umask's)."""
    if not path.is_dir():
        _private_dirs(path.parent)
        path.mkdir(mode=DIR_MODE, exist_ok=True)


def _copy_tree(source: Path, target: Path) -> set[str]:
    """Copy every file under `source` (blobs: `xx/name`); the names copied."""
    copied: set[str] = set()
    _private_dirs(target)
    if not source.is_dir():
        return copied
    for folder in sorted(source.iterdir()):
        if not folder.is_dir():
            continue
        for blob in sorted(folder.iterdir()):
            name = f"{folder.name}/{blob.name}"
            try:
                _copy(blob, target / name)
            except FileNotFoundError:  # deleted while we walked: the snapshot will not name it
                continue
            copied.add(name)
    return copied


def _copy(source: Path, target: Path) -> None:
    """Copy, private, flushed to disk (`FileNotFoundError` if `source` is gone)."""
    _private_dirs(target.parent)
    with open(source, "rb") as reader:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with open(fd, "wb") as writer:
            shutil.copyfileobj(reader, writer, 1024 * 1024)
            writer.flush()
            os.fsync(writer.fileno())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with open(fd, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
