"""Object storage of the local backend: blobs as files, their index in SQLite.

An object is a row (bucket, key → blob file, size, ETag, type, metadata); the blob is written
to a temporary file, fsynced and renamed into `blobs/` before the row that names it is
committed, so a reader sees either the old object or the whole new one, and a crash leaves at
worst an unnamed blob (swept by `sweep_orphans`). Putting into a bucket that notifies a queue
inserts the S3-shaped event in the same transaction as the row: the original is stored and
its job enqueued together, or neither is.

Readers open the blob file once and keep the descriptor, so an object replaced or deleted
while it is being streamed still streams whole (POSIX unlink semantics). ETags are the MD5 of
the bytes, quoted, as S3 gives for a single PUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pipeline.core.errors import (
    EmptyUpload,
    ImageChanged,
    InsufficientStorage,
    NotFound,
    RangeNotSatisfiable,
    StorageUnavailable,
    TooLarge,
    UploadMismatch,
)
from pipeline.core.events import object_created
from pipeline.core.formats import CONTENT_TYPES, MAGIC_BYTES_NEEDED, check_format
from pipeline.core.objects import (
    JsonDocuments,
    ListedObject,
    ObjectMeta,
    OversizeObject,
    Part,
    StoredUpload,
    one_chunk,
)
from pipeline.core.originals import FileOriginal, Original
from pipeline.local.database import Database
from pipeline.local.files import DIR_MODE, FILE_MODE, FULL, UNWRITABLE, Space
from pipeline.local.parts import Parts
from pipeline.local.queue import enqueue

if TYPE_CHECKING:
    from pipeline.core.ports import BufferLease

_COLUMNS = "blob, size, etag, last_modified, content_type, metadata"
_FIND = (
    "SELECT o.blob, o.size, o.etag, o.last_modified, o.content_type, o.metadata FROM buckets b"
    " LEFT JOIN objects o ON o.bucket = b.name AND o.key = ? WHERE b.name = ?"
)
#: Blobs younger than this are never swept: another process may be about to commit its row.
ORPHAN_AGE_SECONDS = 3600
LIST_PAGE = 1000
#: Objects up to this size are opened and read on the event loop's thread: a rendition is read
#: from the page cache in microseconds, where each hop to a thread and back costs more than that
#: under load. A cold disk can make one such read slow, as it can nginx's (which reads the same
#: way without `aio`); larger objects are read on threads, a chunk at a time.
INLINE_READ = 64 * 1024


#: The memory, per process, for the bytes of recently served small blobs (thumbnails, mostly).
SMALL_BLOBS_BYTES = 32 * 1024 * 1024


class SmallBlobs:
    """Recently read small blobs by name, least recently used first out, within `budget` bytes."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._held = 0
        self._blobs: OrderedDict[str, bytes] = OrderedDict()

    def get(self, name: str) -> bytes | None:
        data = self._blobs.get(name)
        if data is not None:
            self._blobs.move_to_end(name)
        return data

    def put(self, name: str, data: bytes) -> None:
        if len(data) > self._budget or name in self._blobs:
            return
        self._blobs[name] = data
        self._held += len(data)
        while self._held > self._budget:
            self._held -= len(self._blobs.popitem(last=False)[1])


def _span(meta: ObjectMeta, byte_range: tuple[int, int] | None, if_match: str | None) -> tuple[int, int]:
    """The first and last byte to send of `meta`'s object."""
    if if_match is not None and if_match != meta.etag:
        raise ImageChanged()
    if byte_range is None:
        return 0, meta.size - 1
    if byte_range[0] >= meta.size:
        raise RangeNotSatisfiable()
    return byte_range[0], min(byte_range[1], meta.size - 1)


async def create_bucket(db: Database, name: str, notify_queue: str | None = None) -> None:
    """Create a bucket (idempotent); puts into it send an ObjectCreated event to `notify_queue`."""
    await db.write(
        lambda conn: conn.execute(
            "INSERT INTO buckets (name, notify_queue) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET notify_queue = excluded.notify_queue",
            (name, notify_queue),
        )
    )


def _meta(row: tuple[Any, ...]) -> ObjectMeta:
    """The metadata of an object's row; each caller gets its own (the parsing is remembered)."""
    size, etag, modified, content_type, metadata = _parsed(row)
    return ObjectMeta(size, etag, modified, content_type, dict(metadata))


@functools.lru_cache(maxsize=4096)
def _parsed(row: tuple[Any, ...]) -> tuple[int, str, datetime, str, tuple[tuple[str, str], ...]]:
    """A row's fields parsed (remembered: a public image's row is read again and again)."""
    _, size, etag, modified, content_type, metadata = row
    modified_at = datetime.fromtimestamp(float(modified), UTC).replace(microsecond=0)
    return int(size), str(etag), modified_at, str(content_type), tuple(json.loads(metadata).items())


class LocalStorage(JsonDocuments):
    """The same methods as `pipeline.aws.storage.Storage`, over a directory and the database."""

    def __init__(self, db: Database, root: Path, space: Space | None = None) -> None:
        self._db = db
        self._blobs = root / "blobs"
        self._blobs_dir = str(self._blobs)
        self._tmp = root / "tmp"
        self._space = space or Space(root, 0)
        self._small_blobs = SmallBlobs(SMALL_BLOBS_BYTES)
        for folder in (root, self._blobs, self._tmp):
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self._parts = Parts(root / "parts")

    async def check_space(self, *, probe: bool = False) -> str:
        """`ok`, `disk_low` or `storage_unwritable` (`pipeline.local.files.Space`); without `probe`, from
        the free space alone (cheap enough for every upload)."""
        space = self._space
        if probe:
            return await asyncio.to_thread(space.check)
        free = await asyncio.to_thread(space.free)
        return "disk_low" if free < space.min_free else "ok"

    # -- reading -------------------------------------------------------------------------------

    async def _row(self, bucket: str, key: str) -> tuple[Any, ...]:
        def find(conn: sqlite3.Connection) -> tuple[Any, ...] | None:
            # One statement (one snapshot): no row, no bucket; a row of NULLs, no such object.
            return conn.execute(_FIND, (key, bucket)).fetchone()  # type: ignore[no-any-return]

        row = await self._db.lookup(find, cache_key=("object", bucket, key))
        if row is None:
            raise NotFound(f"no bucket {bucket!r}")
        if row[0] is None:
            raise NotFound()
        return tuple(row)

    async def _open(self, bucket: str, key: str) -> tuple[ObjectMeta, bytes | IO[bytes]]:
        """The object's metadata and its bytes: whole for an object of at most `INLINE_READ`
        bytes (from the memory of small blobs: a blob's bytes never change under its name, a put
        writes a new one), else an open file (a replace cannot tear them apart)."""
        for _ in range(3):
            row = await self._row(bucket, key)
            name = row[0]
            small = int(row[1]) <= INLINE_READ
            if small and (data := self._small_blobs.get(name)) is not None:
                return _meta(row), data
            try:
                # On this thread: opening a file costs less than the hop to a thread (see `INLINE_READ`).
                file = open(os.path.join(self._blobs_dir, name), "rb")  # noqa: ASYNC230, SIM115
            except FileNotFoundError:  # replaced (and its old blob removed) between the two steps
                continue
            if not small:
                return _meta(row), file
            with file:
                data = file.read()
            self._small_blobs.put(name, data)
            return _meta(row), data
        raise NotFound()

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        return _meta(await self._row(bucket, key))

    async def locate(self, bucket: str, key: str, max_bytes: int) -> Original:
        row = await self._row(bucket, key)
        return FileOriginal(str(self._blobs / row[0]), _meta(row), max_bytes)

    async def etag_of(self, bucket: str, key: str) -> str | None:
        try:
            return (await self.head(bucket, key)).etag
        except NotFound:
            return None

    async def check_bucket(self, bucket: str) -> None:
        def exists(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM buckets WHERE name = ?", (bucket,)).fetchone() is not None

        if not await self._db.read(exists):
            raise StorageUnavailable(f"no bucket {bucket!r} in {self._db.path} (not provisioned)")

    async def read(self, bucket: str, key: str, max_bytes: int) -> tuple[ObjectMeta, bytes]:
        meta, opened = await self._open(bucket, key)
        if isinstance(opened, bytes):
            if meta.size > max_bytes:
                raise OversizeObject(meta, max_bytes)
            return meta, opened
        with opened:
            if meta.size > max_bytes:
                raise OversizeObject(meta, max_bytes)
            return meta, await asyncio.to_thread(opened.read)

    async def stream(
        self,
        bucket: str,
        key: str,
        byte_range: tuple[int, int] | None = None,
        *,
        if_match: str | None = None,
        chunk_size: int = 256 * 1024,
    ) -> tuple[ObjectMeta, AsyncGenerator[bytes, None]]:
        meta, file = await self._open(bucket, key)
        if isinstance(file, bytes):
            start, end = _span(meta, byte_range, if_match)
            return meta, one_chunk(file[start : end + 1])
        try:
            start, end = _span(meta, byte_range, if_match)
        except BaseException:
            file.close()
            raise

        async def chunks() -> AsyncGenerator[bytes, None]:
            with file:
                left = end - start + 1
                if left <= INLINE_READ:  # a small range of a large object
                    file.seek(start)
                    yield file.read(left)
                    return
                await asyncio.to_thread(file.seek, start)
                while left > 0:
                    chunk = await asyncio.to_thread(file.read, min(chunk_size, left))
                    if not chunk:
                        break
                    left -= len(chunk)
                    yield chunk

        return meta, chunks()

    # -- writing -------------------------------------------------------------------------------

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        blob = _Blob(self._tmp, self._space)
        try:
            await blob.write(data)
            return await self._commit(bucket, key, blob, content_type, metadata or {})
        finally:
            blob.discard()

    async def upload_stream(
        self,
        bucket: str,
        key: str,
        chunks: AsyncIterator[bytes],
        *,
        max_bytes: int,
        part_size: int,
        allowed_formats: frozenset[str],
        metadata: Mapping[str, str],
        lease: BufferLease | None = None,
    ) -> StoredUpload:
        """Stream `chunks` into a temporary file, checking type and size as they come; nothing
        is visible (or enqueued) unless the whole body arrived and passed. Each chunk goes to the
        file as it comes: no buffer beyond it is held, so `lease` never needs to grow."""
        blob = _Blob(self._tmp, self._space)
        head = bytearray()
        fmt: str | None = None
        try:
            async for chunk in chunks:
                if blob.size + len(chunk) > max_bytes:
                    raise TooLarge(f"the upload is larger than the {max_bytes} bytes allowed")
                if fmt is None:
                    head += chunk[: MAGIC_BYTES_NEEDED - len(head)]
                    if len(head) >= MAGIC_BYTES_NEEDED:
                        fmt = check_format(bytes(head), allowed_formats)
                await blob.write(chunk)
            if blob.size == 0:
                raise EmptyUpload()
            if fmt is None:
                fmt = check_format(bytes(head), allowed_formats)
            etag = await self._commit(bucket, key, blob, CONTENT_TYPES[fmt], metadata)
            return StoredUpload(key, blob.size, fmt, etag)
        finally:
            blob.discard()

    async def copy(
        self,
        bucket: str,
        source: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        """A second name for the same bytes (a hard link: nothing is copied or written again but
        the directory entry and the row); each name goes with its own object."""
        row = await self._row(bucket, source)
        meta, source_blob = _meta(row), str(row[0])
        name = f"{uuid.uuid4().hex[:2]}/{uuid.uuid4().hex}"
        try:
            await asyncio.to_thread(_link, self._blobs / source_blob, self._blobs / name)
        except FileNotFoundError:  # replaced or deleted since its row was read
            raise NotFound() from None
        await self._commit_row(bucket, key, name, meta.size, meta.etag, content_type, metadata)

    async def _commit(
        self, bucket: str, key: str, blob: _Blob, content_type: str, metadata: Mapping[str, str]
    ) -> str:
        name = await blob.seal(self._blobs)
        etag = f'"{blob.md5.hexdigest()}"'
        await self._commit_row(bucket, key, name, blob.size, etag, content_type, metadata)
        return etag

    async def _commit_row(
        self,
        bucket: str,
        key: str,
        name: str,
        size: int,
        etag: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None:
        """Name the blob `name` as the object `key` (the blob is on disk already)."""

        def commit(conn: sqlite3.Connection) -> str | None:
            found = conn.execute("SELECT notify_queue FROM buckets WHERE name = ?", (bucket,)).fetchone()
            if found is None:
                raise NotFound(f"no bucket {bucket!r}")
            old = conn.execute(
                "SELECT blob FROM objects WHERE bucket = ? AND key = ?", (bucket, key)
            ).fetchone()
            conn.execute(
                f"INSERT OR REPLACE INTO objects (bucket, key, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (bucket, key, name, size, etag, time.time(), content_type, json.dumps(dict(metadata))),
            )
            if found[0]:
                enqueue(conn, found[0], object_created(bucket, key, size, etag), {})
            return None if old is None else str(old[0])

        try:
            replaced = await self._db.write(commit)
        except BaseException:
            await asyncio.to_thread(_unlink, self._blobs / name)
            raise
        if replaced is not None:
            await asyncio.to_thread(_unlink, self._blobs / replaced)
        self._db.changes.notify_all()

    # -- resumable uploads (`pipeline.local.parts`) ------------------------------------------

    async def start_parts(self, bucket: str, key: str, content_type: str, metadata: Mapping[str, str]) -> str:
        await self.check_bucket(bucket)
        with disk_errors(self._space):
            return await asyncio.to_thread(self._parts.start, bucket, key, content_type, metadata)

    async def put_part(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        chunks: AsyncIterator[bytes],
        length: int,
        lease: BufferLease | None = None,
    ) -> str:
        """Streamed to its file as it comes: no buffer beyond a chunk, so `lease` never grows."""
        folder, _ = await asyncio.to_thread(self._parts.upload, bucket, key, upload_id)
        with disk_errors(self._space):
            return await self._parts.write(folder, number, chunks, length)

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[Part]:
        folder, _ = await asyncio.to_thread(self._parts.upload, bucket, key, upload_id)
        return await asyncio.to_thread(Parts.listed, folder)

    async def complete_parts(self, bucket: str, key: str, upload_id: str, parts: Sequence[Part]) -> str:
        """The parts, in order, copied into one blob, committed as any object (announced on the
        source bucket's queue in the same transaction); then the parts go."""
        folder, described = await asyncio.to_thread(self._parts.upload, bucket, key, upload_id)
        claimed = await asyncio.to_thread(self._parts.claim, folder)  # one join at a time
        blob = _Blob(self._tmp, self._space)
        try:
            held = {p.number: p for p in await asyncio.to_thread(Parts.listed, claimed)}
            if any(held.get(p.number) != p for p in parts):
                raise UploadMismatch("a part named is not the one received: list the parts again")
            source = Parts.chunks(claimed, list(parts))
            while chunk := await asyncio.to_thread(next, source, b""):
                await blob.write(chunk)
            metadata = {str(k): str(v) for k, v in described.get("metadata", {}).items()}
            etag = await self._commit(bucket, key, blob, str(described["content_type"]), metadata)
        except BaseException:
            await asyncio.to_thread(self._parts.release, claimed, folder)
            raise
        finally:
            blob.discard()
        await asyncio.to_thread(self._parts.drop, claimed)
        return etag

    async def abort_parts(self, bucket: str, key: str, upload_id: str) -> None:
        try:
            folder, _ = await asyncio.to_thread(self._parts.upload, bucket, key, upload_id)
        except NotFound:
            return
        await asyncio.to_thread(self._parts.drop, folder)

    async def delete_many(self, bucket: str, keys: list[str]) -> None:
        """Idempotent: keys that do not exist are not an error (S3 semantics)."""
        if not keys:
            return

        def delete(conn: sqlite3.Connection) -> list[str]:
            blobs = []
            for key in keys:
                row = conn.execute(
                    "DELETE FROM objects WHERE bucket = ? AND key = ? RETURNING blob", (bucket, key)
                ).fetchone()
                if row is not None:
                    blobs.append(str(row[0]))
            return blobs

        for name in await self._db.write(delete):
            await asyncio.to_thread(_unlink, self._blobs / name)

    async def list_objects(self, bucket: str, prefix: str = "") -> AsyncIterator[list[ListedObject]]:
        """Every object under `prefix`, a page (at most `LIST_PAGE`) at a time, in key order."""
        after = ""
        while True:
            rows = await self._db.read(
                lambda conn, after=after: conn.execute(  # type: ignore[misc]
                    "SELECT key, size, etag, last_modified FROM objects"
                    " WHERE bucket = ? AND key > ? AND substr(key, 1, ?) = ? ORDER BY key LIMIT ?",
                    (bucket, after, len(prefix), prefix, LIST_PAGE),
                ).fetchall()
            )
            if not rows:
                return
            yield [
                ListedObject(str(k), int(size), str(etag), datetime.fromtimestamp(float(m), UTC))
                for k, size, etag, m in rows
            ]
            after = str(rows[-1][0])

    async def abort_stale_uploads(self, bucket: str, older_than: datetime, *, dry_run: bool = False) -> int:
        """Remove the temporary files of uploads begun before `older_than` and never finished
        (a crash mid-upload; they belong to no bucket, so any bucket's call does it), and the
        bucket's resumable uploads begun before it and never completed."""
        cutoff = older_than.timestamp()

        def stale() -> int:
            found = self._parts.stale(bucket, cutoff, dry_run=dry_run)
            for path in self._tmp.glob("*"):
                try:
                    stale = path.is_file() and path.stat().st_mtime < cutoff
                except FileNotFoundError:  # an upload that just finished
                    continue
                if stale:
                    found += 1
                    if not dry_run:
                        _unlink(path)
            return found

        return await asyncio.to_thread(stale)

    async def sweep_orphans(self, min_age: float = ORPHAN_AGE_SECONDS) -> int:
        """Remove blobs no row names (a crash between writing a blob and committing its row) and
        stale temporary files; returns how many were removed."""
        named = {
            str(row[0])
            for row in await self._db.read(lambda c: c.execute("SELECT blob FROM objects").fetchall())
        }
        return await asyncio.to_thread(self._sweep, named, time.time() - min_age)

    def _sweep(self, named: set[str], older_than: float) -> int:
        removed = 0
        for directory, relative in ((self._tmp, False), (self._blobs, True)):
            for path in directory.rglob("*"):
                if not path.is_file():
                    continue
                name = str(path.relative_to(self._blobs)) if relative else None
                if (name is None or name not in named) and path.stat().st_mtime < older_than:
                    _unlink(path)
                    removed += 1
        return removed


@contextlib.contextmanager
def disk_errors(space: Space) -> Iterator[None]:
    """A full disk is `InsufficientStorage` (and releases the reserve, so deletes go on); one that
    cannot be written is `StorageUnavailable`."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FULL:
            space.release()
            raise InsufficientStorage() from exc
        if exc.errno in UNWRITABLE:
            raise StorageUnavailable(f"the data directory cannot be written: {exc.strerror}") from exc
        raise


def _create(path: Path) -> IO[bytes]:
    """A new file readable by the owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb")


class _Blob:
    """One object's bytes on their way to disk: a temporary file, hashed as it is written."""

    def __init__(self, tmp: Path, space: Space) -> None:
        self._space = space
        self._path = tmp / uuid.uuid4().hex
        self._file: IO[bytes] | None = None
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    async def write(self, data: bytes) -> None:
        with disk_errors(self._space):
            if self._file is None:
                self._file = await asyncio.to_thread(_create, self._path)
            self.md5.update(data)
            self.size += len(data)
            await asyncio.to_thread(self._file.write, data)

    async def seal(self, blobs: Path) -> str:
        """fsync, then move under `blobs`; returns the blob's name there."""
        if self._file is None:
            await self.write(b"")
        name = f"{self._path.name[:2]}/{self._path.name}"
        with disk_errors(self._space):
            await asyncio.to_thread(self._seal, blobs / name)
        return name

    def _seal(self, target: Path) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target.parent.mkdir(mode=DIR_MODE, exist_ok=True)
        os.rename(self._path, target)
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    def discard(self) -> None:
        """Drop what was not sealed (a refused or failed upload leaves nothing behind)."""
        if self._file is not None and not self._file.closed:
            self._file.close()
        _unlink(self._path)


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(mode=DIR_MODE, exist_ok=True)
    os.link(source, target)
    # The new name shares its source's inode and so its age: made young, so that a sweep that
    # listed the named blobs before this name's row committed does not take it for an orphan.
    os.utime(target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the new name survives a power cut
    finally:
        os.close(directory)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)
