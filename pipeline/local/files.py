"""The data directory itself: who may read it, whether it can be written, and room to delete in.

Everything under it is the deployment's secrets (the link-signing secret and key hashes in
`state.db`) and its users' originals: the directory is 0700 and its files 0600, whatever the
umask, and wider modes found at start are narrowed with a warning. A directory that cannot be
created or written is one line and exit code 2 at start, not a traceback at the first upload.

A full disk must not lock users out of freeing space: deleting an image writes to SQLite's
write-ahead log before anything is freed. A reserve file of a few MiB is kept, and released the
moment a write finds the disk full, so deletes go on; it is made again once there is room.
Uploads are refused (507) while free space is under `IMGSVC_MIN_FREE_BYTES`, before they fill
the disk, and readiness says `disk_low` or `storage_unwritable`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import uuid
from pathlib import Path

log = logging.getLogger(__name__)
DIR_MODE = 0o700
FILE_MODE = 0o600
RESERVE_NAME = "reserve"
RESERVE_BYTES = 8 * 1024 * 1024
#: Errors that mean the disk (or the user's quota on it) is full.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Errors that mean the directory cannot be written at all.
UNWRITABLE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: What a data directory holds that is the deployment's secrets or users' data.
_SECRET_FILES = ("state.db", "state.db-wal", "state.db-shm", "demo-keys.json", RESERVE_NAME)
_PRIVATE_DIRS = ("objects", "objects/blobs", "objects/tmp")


class DataDirError(Exception):
    """The data directory cannot be used; the message is the one line to print."""


def prepare(root: Path) -> None:
    """Create the data directory (0700) or check it, narrow wider modes, and prove it writable."""
    try:
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError(f"the data directory {root} cannot be created: {exc.strerror}") from None
    if not root.is_dir():
        raise DataDirError(f"the data directory {root} is not a directory")
    narrowed = [p for p in (root, *(root / d for d in _PRIVATE_DIRS)) if _narrow(p, DIR_MODE)]
    narrowed += [p for p in (root / f for f in _SECRET_FILES) if _narrow(p, FILE_MODE)]
    if narrowed:
        log.warning(
            "data directory modes narrowed to 0700/0600 (they let other local users read secrets "
            "or originals): %s",
            ", ".join(str(p) for p in narrowed),
        )
    probe = root / f".probe-{uuid.uuid4().hex}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        probe.unlink()
    except OSError as exc:
        raise DataDirError(f"the data directory {root} cannot be written: {exc.strerror}") from None


def _narrow(path: Path, mode: int) -> bool:
    """Take group and other permissions off `path`; whether it had any."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return False
    if not current & 0o077:
        return False
    with contextlib.suppress(OSError):  # not ours to change: the warning still says so
        path.chmod(current & mode)
    return True


def create_private(path: Path) -> None:
    """Create an empty file readable by the owner only, unless it exists."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


class Space:
    """The free space of one data directory, and its reserve file."""

    def __init__(self, root: Path, min_free: int) -> None:
        self.root = root
        self.min_free = min_free
        self._reserve = root / RESERVE_NAME

    def free(self) -> int:
        return shutil.disk_usage(self.root).free

    def release(self) -> None:
        """The disk is full: give the reserve back so that deletes can go on."""
        try:
            self._reserve.unlink()
        except FileNotFoundError:
            return
        log.error("data directory full: reserve of %d bytes released so deletes can go on", RESERVE_BYTES)

    def check(self) -> str:
        """`ok`, `disk_low` (under `min_free`), or `storage_unwritable` (blocking: a probe write);
        the reserve is made again once there is room for it."""
        probe = self.root / f".probe-{uuid.uuid4().hex}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            probe.unlink()
        except OSError as exc:
            if exc.errno in FULL:
                self.release()
                return "disk_low"
            return "storage_unwritable"
        free = self.free()
        if not self._reserve.exists() and free > self.min_free + RESERVE_BYTES:
            self._make_reserve()
        return "disk_low" if free < self.min_free else "ok"

    def _make_reserve(self) -> None:
        try:
            descriptor = os.open(self._reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
            try:
                os.posix_fallocate(descriptor, 0, RESERVE_BYTES)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except (OSError, AttributeError) as exc:  # no room after all, or no fallocate here
            with contextlib.suppress(OSError):
                self._reserve.unlink()
            log.warning("no reserve file in the data directory: %s", exc)
