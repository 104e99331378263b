"""Check a data directory: who may read it, room on its disk, and its database (schema version,
integrity). It changes nothing (`python -m web --data-dir` narrows wide modes itself at start);
the database is opened read-only, which SQLite allows only beside its -wal and -shm files."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
from pathlib import Path

from pipeline.core.findings import Finding
from pipeline.local.backend import DATABASE_NAME
from pipeline.local.database import SCHEMA_VERSION
from pipeline.local.files import DIR_MODE, FILE_MODE


def diagnose(root: Path, min_free_bytes: int) -> list[Finding]:
    if not root.is_dir():
        return [Finding("data directory", False, f"{root} does not exist or is not a directory")]
    modes = _modes(root)
    if not modes.ok:  # SQLite would give the -wal and -shm files it makes the database's wide mode
        skipped = Finding("database", False, "not opened while the directory's modes are wide")
        return [modes, _disk(root, min_free_bytes), skipped]
    return [modes, _disk(root, min_free_bytes), *_database(root / DATABASE_NAME)]


def _modes(root: Path) -> Finding:
    wide = []
    for folder, dirs, files in os.walk(root):
        for name, limit in [*((d, DIR_MODE) for d in dirs), *((f, FILE_MODE) for f in files)]:
            path = Path(folder) / name
            try:
                mode = stat.S_IMODE(path.lstat().st_mode)
            except FileNotFoundError:  # a temporary file or a deleted blob of a serving directory
                continue
            if mode & ~limit:
                wide.append(path)
        if len(wide) > 5:
            break
    if stat.S_IMODE(root.stat().st_mode) & ~DIR_MODE:
        wide.insert(0, root)
    if wide:
        shown = ", ".join(str(p) for p in wide[:3])
        return Finding(
            "file modes", False, f"readable by others: {shown} (the service narrows them at start)"
        )
    return Finding("file modes", True, "0700 directories, 0600 files")


def _disk(root: Path, min_free_bytes: int) -> Finding:
    free = shutil.disk_usage(root).free
    detail = f"{free / 2**30:.1f} GiB free, uploads refused under {min_free_bytes / 2**20:.0f} MiB"
    return Finding("free disk", free > min_free_bytes, detail)


def _database(path: Path) -> list[Finding]:
    if not path.exists():
        return [Finding("database", False, f"{path} does not exist: start `python -m web --data-dir` once")]
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        verdict = str(conn.execute("PRAGMA quick_check").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        return [Finding("database", False, f"{path} cannot be read: {exc}")]
    finally:
        conn.close()
    schema = (
        Finding("schema", True, f"version {version}")
        if version in (0, SCHEMA_VERSION)
        else Finding(
            "schema", version < SCHEMA_VERSION, f"version {version}, this release's is {SCHEMA_VERSION}"
        )
    )
    return [schema, Finding("database integrity", verdict == "ok", verdict)]
