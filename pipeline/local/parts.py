"""The local backend's resumable uploads: S3's multipart uploads as files, so its API offers the
same begin / part / list / complete / abort as S3 gives AWS clients.

An upload is a directory under `parts/`, named by its random id, holding `upload.json` (its
bucket, key, type and metadata) and one file a part, `{number:05d}-{md5}`: a part is written to
a temporary name, checked for its length, then renamed in place of any earlier copy of the same
number, so a part sent again (a dropped connection, a retry) replaces the old one whole. The
directory goes when the upload is completed (`LocalStorage.complete_parts` copies the parts
into one blob) or aborted, or by `python -m pipeline gc` once it is older than the stale age.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.errors import NotFound, UploadMismatch
from pipeline.core.objects import Part
from pipeline.local.files import DIR_MODE, FILE_MODE

UPLOAD_FILE = "upload.json"
_ID = re.compile(r"[0-9a-f]{32}")
_PART = re.compile(r"(\d{5})-([0-9a-f]{32})")
#: Bytes read from a part at a time when its parts become one blob.
COPY_CHUNK = 1024 * 1024


class Parts:
    """The uploads under one directory (`{data dir}/objects/parts`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

    def start(self, bucket: str, key: str, content_type: str, metadata: Mapping[str, str]) -> str:
        upload_id = uuid.uuid4().hex
        folder = self.root / upload_id
        folder.mkdir(mode=DIR_MODE)
        described = {"bucket": bucket, "key": key, "content_type": content_type, "metadata": dict(metadata)}
        with os.fdopen(
            os.open(folder / UPLOAD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "w"
        ) as f:
            json.dump(described, f)
        return upload_id

    def upload(self, bucket: str, key: str, upload_id: str) -> tuple[Path, dict[str, Any]]:
        """The upload's directory and description; `NotFound` for an id that is not one of
        this bucket and key's (ids come from clients: checked before any path is made)."""
        if not _ID.fullmatch(upload_id):
            raise NotFound("no such upload")
        folder = self.root / upload_id
        try:
            described: dict[str, Any] = json.loads((folder / UPLOAD_FILE).read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            raise NotFound("no such upload") from None
        if (described.get("bucket"), described.get("key")) != (bucket, key):
            raise NotFound("no such upload")
        return folder, described

    async def write(self, folder: Path, number: int, chunks: AsyncIterator[bytes], length: int) -> str:
        """Part `number`, exactly `length` bytes, in place of any earlier copy: its ETag."""
        temporary = folder / f".{number:05d}.{uuid.uuid4().hex}"
        md5, size = hashlib.md5(usedforsecurity=False), 0
        handle = await asyncio.to_thread(os.open, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(handle, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > length:
                        raise UploadMismatch(f"part {number} must have {length} bytes")
                    md5.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
                if size != length:
                    raise UploadMismatch(f"part {number} has {size} bytes; it must have {length}")
                await asyncio.to_thread(out.flush)
            await asyncio.to_thread(self._place, folder, number, temporary, md5.hexdigest())
        finally:
            temporary.unlink(missing_ok=True)
        return f'"{md5.hexdigest()}"'

    @staticmethod
    def _place(folder: Path, number: int, temporary: Path, digest: str) -> None:
        target = folder / f"{number:05d}-{digest}"
        try:
            os.replace(temporary, target)
        except FileNotFoundError:  # joined, aborted or dropped while the part came
            raise NotFound("no such upload") from None
        for older in folder.glob(f"{number:05d}-*"):
            if older != target:
                older.unlink(missing_ok=True)

    @staticmethod
    def listed(folder: Path) -> list[Part]:
        """The parts received; `NotFound` once the upload is claimed for joining, or dropped."""
        parts = []
        try:
            for path in folder.iterdir():
                if found := _PART.fullmatch(path.name):
                    parts.append(Part(int(found[1]), f'"{found[2]}"', path.stat().st_size))
        except FileNotFoundError:
            raise NotFound("no such upload") from None
        return sorted(parts, key=lambda p: p.number)

    @staticmethod
    def chunks(folder: Path, parts: list[Part]) -> Iterator[bytes]:
        """The parts' bytes in order (a thread reads them)."""
        for part in parts:
            with open(folder / f"{part.number:05d}-{part.etag.strip(chr(34))}", "rb") as source:
                while chunk := source.read(COPY_CHUNK):
                    yield chunk

    def claim(self, folder: Path) -> Path:
        """Take the upload for joining (a rename: one request wins; `NotFound` for the others).
        A part sent meanwhile finds no upload (410)."""
        claimed = self.root / f".joining-{folder.name}"
        try:
            os.rename(folder, claimed)
        except FileNotFoundError:
            raise NotFound("no such upload") from None
        return claimed

    def release(self, claimed: Path, folder: Path) -> None:
        """Give a claimed upload back (its join failed: the client may ask again)."""
        os.rename(claimed, folder)

    def drop(self, folder: Path) -> None:
        """Renamed away first, so no part lands in it while it goes."""
        gone = self.root / f".gone-{uuid.uuid4().hex}"
        try:
            os.rename(folder, gone)
        except FileNotFoundError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def stale(self, bucket: str, older_than: float, *, dry_run: bool) -> int:
        """Drop uploads of `bucket` begun before `older_than` (epoch seconds) and never finished,
        and, by its age alone, a folder with no description (a crash as it began, or a removal
        cut short)."""
        found = 0
        for folder in self.root.iterdir():
            described = folder / UPLOAD_FILE
            try:
                if described.stat().st_mtime >= older_than:
                    continue
                if json.loads(described.read_text())["bucket"] != bucket:
                    continue
            except (OSError, ValueError, KeyError):
                try:
                    if folder.stat().st_mtime >= older_than:
                        continue
                except OSError:
                    continue
            found += 1
            if not dry_run:
                self.drop(folder)
        return found
