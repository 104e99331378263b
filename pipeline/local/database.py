"""The local backend's SQLite database: one file under the data directory, in WAL mode.

Every call runs a function on the connection's own thread, inside one transaction, so a
transaction is a plain Python function that no other coroutine's statements can interleave
with (an async driver that exposes single statements would need a lock around each
transaction anyway). Writes take the write lock up front (`BEGIN IMMEDIATE`), so two processes
sharing the directory wait for each other (`busy_timeout`) instead of failing on upgrade.

The schema carries a version (`PRAGMA user_version`): a database of an older version is brought
up to this one at open (`MIGRATIONS`, all steps in one transaction), and one of a newer version
(made by a later release) is refused with one line (`check_schema`), never half-read.

`synchronous=FULL` makes a commit durable across power loss, not only across `kill -9`
(which WAL's `NORMAL` already survives): an upload answered 202 is never rolled back.

Point reads (one item or one object by its key: every public GET, download and key check) run on
the caller's thread instead, on a read-only connection of their own: in WAL a reader never waits
for a writer, and a lookup in a warm page cache costs a few microseconds where the hop to the
thread and back costs hundreds under load (`scripts/bench_delivery.py`: one serving process went
from about 650 to about N public GETs a second). A reader that would have to wait (another process
recovering the WAL after a crash) does not: it takes the thread's path.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from pipeline.core.errors import DatabaseUnavailable, InsufficientStorage
from pipeline.local.files import create_private

T = TypeVar("T")
#: Point reads remembered per reading thread until the database changes (then all are forgotten).
CACHED_LOOKUPS = 4096
#: How long a statement waits for another process's write lock before giving up (transient).
BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    dead_letter TEXT,
    max_receive_count INTEGER,
    visibility_timeout INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    body TEXT NOT NULL,
    attributes TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (queue, visible_at, sent_at);
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    content_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY (bucket, key)
);
CREATE TABLE IF NOT EXISTS items (
    tbl TEXT NOT NULL,
    hash TEXT NOT NULL,
    range TEXT NOT NULL,
    ix_hash TEXT,
    ix_range TEXT,
    doc TEXT NOT NULL,
    PRIMARY KEY (tbl, hash, range)
);
CREATE INDEX IF NOT EXISTS items_by_index ON items (tbl, ix_hash, ix_range);
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    notify_queue TEXT
);
"""


#: The schema's version, written in `PRAGMA user_version`. 0 is a database made before versions
#: were kept, whose schema is version 1's.
SCHEMA_VERSION = 1
#: The SQL that takes a database from version N to N + 1, by N.
MIGRATIONS: dict[int, str] = {}


class SchemaError(Exception):
    """The database was made by a newer release; the message is the one line to print."""


def _newer(path: Path, version: int) -> SchemaError:
    return SchemaError(
        f"{path} has schema version {version}, newer than this release's {SCHEMA_VERSION}: run the "
        "release that wrote it (or a later one), or restore a backup this release made"
    )


def check_schema(path: Path) -> None:
    """`SchemaError` if the database at `path` is of a newer schema than this release reads (a
    missing database is a new one)."""
    if not path.exists():
        return
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()
    if version > SCHEMA_VERSION:
        raise _newer(path, version)


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Create the schema, or bring it up to `SCHEMA_VERSION` a step at a time; the version it was.

    A database already at this version is only read (no lock taken: an open must not wait for
    another process's long write). Otherwise the write lock is taken, the version read again
    (another process may have migrated meanwhile), and every step applied in that one
    transaction: a failed migration leaves the database as it was."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found == SCHEMA_VERSION:
        return found
    if found > SCHEMA_VERSION:
        raise _newer(path, found)
    conn.execute("BEGIN IMMEDIATE")
    try:
        found = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if found > SCHEMA_VERSION:
            raise _newer(path, found)
        for statement in SCHEMA.split(";"):  # CREATE ... IF NOT EXISTS: version 1, or a no-op
            if statement.strip():
                conn.execute(statement)
        for version in range(max(found, 1), SCHEMA_VERSION):
            for statement in MIGRATIONS[version].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return found


class Database:
    """One SQLite connection, used from one thread; every call is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.name}")
        self._conn: sqlite3.Connection | None = None
        #: One read-only connection per thread that asked for a point read (the event loop's).
        self._readers = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        #: Called when a write finds the disk full (`pipeline.local.files.Space.release`).
        self.on_full: Callable[[], None] = lambda: None
        #: Wake-ups for long polls of this process (other processes are seen by polling).
        self.changes = Changes()

    async def open(self) -> Database:
        await self._call(self._connect)
        return self

    def _connect(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_private(self.path)  # SQLite gives its -wal and -shm files the database's mode
        # isolation_level=None: we issue BEGIN ourselves, so the module never opens one implicitly.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        try:
            migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a write transaction: committed when it returns, rolled back if it raises."""
        return await self._call(self._transaction, fn, "BEGIN IMMEDIATE")

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on one consistent snapshot."""
        return await self._call(self._transaction, fn, "BEGIN")

    async def lookup(self, fn: Callable[[sqlite3.Connection], T], cache_key: Hashable | None = None) -> T:
        """Run `fn`, ONE statement reading a few rows by key, on this thread (see the module's
        docstring): a statement outside a transaction is its own snapshot. On the database's
        thread instead if this thread's reader would have to wait. With `cache_key` (which must
        name the statement and its arguments), an answer is remembered until the database
        changes; a remembered answer is shared, so it must be immutable."""
        if self._conn is not None:
            try:
                reader = self._reader()
                if cache_key is None:
                    return fn(reader.conn)
                return reader.cached(fn, cache_key)
            except sqlite3.OperationalError:
                pass  # busy, or the reader cannot open: the thread's path waits or says why
        return await self.read(fn)

    def data_version(self) -> int:
        """A number that moves whenever any connection, of any process, commits (read on this
        thread's reader: one statement that reads no table)."""
        if self._conn is None:
            raise DatabaseUnavailable("the local database is closed")
        return self._reader().version()

    def _reader(self) -> _Reader:
        reader: _Reader | None = getattr(self._readers, "reader", None)
        if reader is None:
            # timeout=0: never wait on the event loop's thread; mode=ro: it cannot write by mistake.
            conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=0,
                isolation_level=None, check_same_thread=False,
            )  # fmt: skip
            with self._reader_lock:
                self._reader_conns.append(conn)
            reader = self._readers.reader = _Reader(conn)
        return reader

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], begin: str) -> T:
        conn = self._conn
        if conn is None:
            raise DatabaseUnavailable("the local database is closed")
        conn.execute(begin)
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, fn, *args)
        except sqlite3.OperationalError as exc:  # locked past busy_timeout, disk full, I/O error
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                self.on_full()
                raise InsufficientStorage() from exc
            raise DatabaseUnavailable(f"local database: {exc}") from exc

    async def close(self) -> None:
        with self._reader_lock:
            readers, self._reader_conns = self._reader_conns, []
        for reader in readers:
            reader.close()
        self._readers = threading.local()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
        self._thread.shutdown(wait=True)


class _Reader:
    """One thread's read-only connection, and the answers it remembers for the database's
    current `data_version`."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._version = -1
        self._answers: dict[Hashable, object] = {}

    def version(self) -> int:
        return int(self.conn.execute("PRAGMA data_version").fetchone()[0])

    def cached(self, fn: Callable[[sqlite3.Connection], T], key: Hashable) -> T:
        version = self.version()
        answers = self._answers
        if version != self._version or len(answers) >= CACHED_LOOKUPS:
            answers.clear()
            self._version = version
        elif key in answers:
            return answers[key]  # type: ignore[return-value]
        answer = answers[key] = fn(self.conn)
        return answer


class Changes:
    """Wake-ups for long polls in this process when a message is sent to a queue."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, queue: str) -> None:
        if event := self._events.get(queue):
            event.set()

    def notify_all(self) -> None:
        """After a write that may have enqueued to any queue (an object put into a bucket)."""
        for event in self._events.values():
            event.set()

    async def wait(self, queue: str, seconds: float) -> None:
        event = self._events.setdefault(queue, asyncio.Event())
        try:
            async with asyncio.timeout(seconds):
                await event.wait()
        except TimeoutError:
            return
        event.clear()
