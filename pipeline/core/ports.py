"""The few interfaces the pipeline and the web tier talk to, whichever backend is behind them.

Two backends implement them: AWS (`pipeline.aws.storage.Storage` over S3, `pipeline.aws.queue.Queue`
over SQS, `pipeline.aws.tables.Table` over DynamoDB; moto in embedded mode and tests) and local
(`pipeline.local.storage.LocalStorage`, `pipeline.local.queue.LocalQueue`,
`pipeline.local.tables.LocalTable`: files and SQLite). The contract tests
(`tests/test_contract_*.py`) run the same cases against both, so what is written against these
protocols behaves alike on either.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.aws.queue import Message
from pipeline.aws.storage import ListedObject, StoredUpload
from pipeline.core.items import Change, Condition, Item, Write
from pipeline.core.objects import ObjectMeta

if TYPE_CHECKING:
    from pipeline.core.originals import Original


class ObjectStore(Protocol):
    """Buckets of objects: originals in the source bucket, renditions in the destination."""

    async def head(self, bucket: str, key: str) -> ObjectMeta: ...

    async def etag_of(self, bucket: str, key: str) -> str | None: ...

    async def check_bucket(self, bucket: str) -> None: ...

    async def check_space(self, *, probe: bool = False) -> str:
        """`ok`, or why this store cannot take new bytes now: `disk_low`, `storage_unwritable`
        (a local data directory; `probe` also tries a write)."""
        ...

    async def read(self, bucket: str, key: str, max_bytes: int) -> tuple[ObjectMeta, bytes]: ...

    async def locate(self, bucket: str, key: str, max_bytes: int) -> Original:
        """Where a worker process reads the object itself (`pipeline.core.originals`); `NotFound` if
        this store can tell already that there is none."""
        ...

    async def stream(
        self,
        bucket: str,
        key: str,
        byte_range: tuple[int, int] | None = None,
        *,
        if_match: str | None = None,
        chunk_size: int = 256 * 1024,
    ) -> tuple[ObjectMeta, AsyncGenerator[bytes, None]]: ...

    async def put(
        self,
        bucket: str,
        key: str,
        data: bytes,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> str: ...

    async def put_json(
        self, bucket: str, key: str, document: Mapping[str, Any], metadata: Mapping[str, str] | None = None
    ) -> None: ...

    async def get_json(self, bucket: str, key: str) -> dict[str, Any] | None: ...

    def list_objects(self, bucket: str, prefix: str = "") -> AsyncIterator[list[ListedObject]]: ...

    async def abort_stale_uploads(self, bucket: str, older_than: datetime, *, dry_run: bool = False) -> int:
        """End uploads begun before `older_than` and never completed (S3 multipart uploads; the
        local store's unfinished temporary files); how many there were."""
        ...

    async def copy(
        self,
        bucket: str,
        source: str,
        key: str,
        content_type: str,
        metadata: Mapping[str, str],
    ) -> None: ...

    async def delete_many(self, bucket: str, keys: list[str]) -> None: ...

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
    ) -> StoredUpload: ...


class BufferLease(Protocol):
    """Memory an upload may hold, reserved as its buffer grows (`web.admission.Lease`)."""

    async def grow_to(self, size: int) -> None: ...


class MessageQueue(Protocol):
    """A queue with SQS's semantics: leases (visibility timeouts), receive counts, redrive."""

    async def receive(
        self, max_messages: int, wait_seconds: int, visibility_timeout: int | None = None
    ) -> list[Message]: ...

    async def delete_batch(self, handles: Sequence[tuple[str, str]]) -> dict[str, str]: ...

    async def delete(self, receipt_handle: str) -> None: ...

    async def change_visibility(self, receipt_handle: str, seconds: int) -> None: ...

    async def send(
        self, body: str, attributes: Mapping[str, str] | None = None, *, delay_seconds: int = 0
    ) -> str: ...

    async def depth(self) -> dict[str, int]: ...

    async def purge(self) -> None: ...


class ItemTable(Protocol):
    """Items under a key, with conditional writes and one secondary index."""

    name: str

    async def get(self, key: Mapping[str, Any], *, consistent: bool = True) -> Item | None: ...

    async def put(self, item: Mapping[str, Any], condition: Condition | None = None) -> None: ...

    async def update(
        self, key: Mapping[str, Any], changes: Sequence[Change], condition: Condition | None = None
    ) -> Item: ...

    async def delete(self, key: Mapping[str, Any], condition: Condition | None = None) -> Item | None: ...

    async def query(
        self,
        hash_value: str,
        *,
        index: str | None = None,
        forward: bool = True,
        limit: int | None = None,
        start: Mapping[str, Any] | None = None,
    ) -> tuple[list[Item], Item | None]: ...

    async def scan_all(self) -> list[Item]: ...

    async def transact(self, writes: Sequence[Write]) -> None:
        """All of `writes` (on tables of this backend, this one or others, each item at most
        once) or none: `TransactionRefused` names the first whose condition failed."""
        ...


class TableSet(Protocol):
    """The service's tables, by role."""

    @property
    def users(self) -> ItemTable: ...

    @property
    def keys(self) -> ItemTable: ...

    @property
    def images(self) -> ItemTable: ...

    @property
    def throttle(self) -> ItemTable: ...

    @property
    def config(self) -> ItemTable: ...

    @property
    def requests(self) -> ItemTable: ...
