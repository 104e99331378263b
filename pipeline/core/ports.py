"""The few interfaces the pipeline and the web tier talk to, whichever backend is behind them.

Two backends implement them: AWS (`pipeline.aws.storage.Storage` over S3, `pipeline.aws.queue.Queue`
over SQS, `pipeline.aws.tables.Table` over DynamoDB; moto in embedded mode and tests) and local
(`pipeline.local.storage.LocalStorage`, `pipeline.local.queue.LocalQueue`,
`pipeline.local.tables.LocalTable`: files and SQLite). The contract tests
(`tests/test_contract_*.py`) run the same cases against both, so what is written against these
protocols behaves alike on either.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pipeline.core.changes import Changes
from pipeline.core.items import Change, Condition, Item, Write
from pipeline.core.objects import ListedObject, ObjectMeta, Part, StoredUpload

if TYPE_CHECKING:
    from pipeline.core.originals import Original


#: SQS's longest DelaySeconds (the local queue keeps the same bound).
MAX_DELAY_SECONDS = 900


@dataclass(frozen=True)
class Message:
    """One received queue message."""

    id: str
    receipt_handle: str
    body: str
    receive_count: int
    attributes: Mapping[str, str] = field(default_factory=dict)


class MultipartStore(Protocol):
    """Resumable uploads into an object store, as S3's multipart uploads: begun, sent a part at a
    time (each may be sent again), listed, then completed into one object or aborted. Completing
    one into the source bucket announces it as any upload is."""

    async def start_parts(self, bucket: str, key: str, content_type: str, metadata: Mapping[str, str]) -> str:
        """A new multipart upload to `key`: its id."""
        ...

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
        """Part `number`, exactly `length` bytes (else `UploadMismatch`), through this process
        (the local backend's part URLs); its ETag. `NotFound`: no such upload. A store that
        must hold the part whole reserves it from `lease` first."""
        ...

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[Part]:
        """The parts received, by number. `NotFound`: no such upload (completed or aborted)."""
        ...

    async def complete_parts(self, bucket: str, key: str, upload_id: str, parts: Sequence[Part]) -> str:
        """The object made of `parts`, in order: its ETag. `NotFound`: no such upload."""
        ...

    async def abort_parts(self, bucket: str, key: str, upload_id: str) -> None:
        """Drop the upload and its parts; idempotent."""
        ...


class ObjectStore(MultipartStore, Protocol):
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

    #: How long a receive under way when its reader stops may take to bring its messages
    #: (`pipeline.core.polling`): an answering SQS long poll crosses the network; a local claim
    #: is one short transaction.
    stop_grace: float

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
        above: str | None = None,
    ) -> tuple[list[Item], Item | None]:
        """One page of the items under `hash_value`, in range order; `above`: only those whose
        range key sorts after it (a key condition: what it leaves out is never read)."""
        ...

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


class Presigner(Protocol):
    """Presigned URLs straight to the object store (S3's); the local backend has none."""

    async def presign_get(self, bucket: str, key: str, expires: int, **params: Any) -> str: ...

    async def presign_put(
        self, bucket: str, key: str, expires: int, content_type: str, length: int, metadata: dict[str, str]
    ) -> tuple[str, dict[str, str]]: ...

    async def presign_part(
        self, bucket: str, key: str, upload_id: str, number: int, length: int, expires: int
    ) -> str: ...


@dataclass(frozen=True)
class Backend:
    """The ports of one backend, opened for this process (`pipeline.backends` opens it)."""

    kind: Literal["aws", "local"]
    storage: ObjectStore
    main: MessageQueue
    dlq: MessageQueue
    tables: TableSet
    #: The webhook outbox and its DLQ (`pipeline.webhooks.outbox`).
    outbox: MessageQueue
    outbox_dlq: MessageQueue
    #: Presigned links straight to the store (None on the local backend: the API serves the bytes).
    presigner: Presigner | None = field(default=None, repr=False)
    #: Run first in every worker process, with no arguments (picklable): what makes reading
    #: originals quick there (the AWS backend's S3 client); None where there is nothing to do.
    prepare_reads: Callable[[], object] | None = field(default=None, repr=False)
    #: Record changes made in this process, for its long polls (`pipeline.core.changes`).
    changes: Changes = field(default_factory=Changes, repr=False)

    def queues(self) -> dict[str, MessageQueue]:
        """Every queue by the label its depth is sampled under."""
        return {"main": self.main, "dlq": self.dlq, "webhooks": self.outbox, "webhooks_dlq": self.outbox_dlq}

    async def presign_get(self, bucket: str, key: str, expires: int, **params: Any) -> str | None:
        """A presigned GET URL, or None where objects are only served by the API (local)."""
        if self.presigner is None:
            return None
        return await self.presigner.presign_get(bucket, key, expires, **params)

    async def presign_part(
        self, bucket: str, key: str, upload_id: str, number: int, length: int, expires: int
    ) -> str | None:
        """A presigned URL for one part of a multipart upload, of exactly `length` bytes; None
        on the local backend (its API takes the parts)."""
        if self.presigner is None:
            return None
        return await self.presigner.presign_part(bucket, key, upload_id, number, length, expires)

    async def presign_put(
        self, bucket: str, key: str, expires: int, content_type: str, length: int, metadata: dict[str, str]
    ) -> tuple[str, dict[str, str]] | None:
        """A presigned PUT URL that accepts only this key, length, type and metadata, and the
        headers its request must carry; None on the local backend (the API takes the bytes)."""
        if self.presigner is None:
            return None
        return await self.presigner.presign_put(bucket, key, expires, content_type, length, metadata)
