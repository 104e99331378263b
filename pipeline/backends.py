"""Open the backend a process runs on: AWS (real, or the embedded moto) or local (a data dir).

Everything above this module (consumer, jobs, handlers, CLIs) receives a `Backend` and talks
to its ports; only this module knows which clients or files are behind them.

May import: `config`, `pipeline.core` and both backends, `pipeline.aws` and `pipeline.local` (the
local one lazily, so AWS processes never load it).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from config.settings import Settings
from pipeline.aws.clients import AwsClients, aws_errors, open_clients
from pipeline.aws.provision import provision
from pipeline.aws.queue import Queue
from pipeline.aws.storage import Storage
from pipeline.aws.tables import Tables
from pipeline.core.changes import Changes
from pipeline.core.errors import StorageUnavailable
from pipeline.core.ports import MessageQueue, ObjectStore, TableSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """The ports of one backend, opened for this process."""

    kind: Literal["aws", "local"]
    storage: ObjectStore
    main: MessageQueue
    dlq: MessageQueue
    tables: TableSet
    #: The webhook outbox and its DLQ (`pipeline.webhooks.outbox`).
    outbox: MessageQueue
    outbox_dlq: MessageQueue
    #: The AWS clients behind the ports (None on the local backend): only for what has no port,
    #: presigned S3 links and the operator tools that speak to AWS itself.
    clients: AwsClients | None = field(default=None, repr=False)
    #: Record changes made in this process, for its long polls (`pipeline.core.changes`).
    changes: Changes = field(default_factory=Changes, repr=False)

    def queues(self) -> dict[str, MessageQueue]:
        """Every queue by the label its depth is sampled under."""
        return {"main": self.main, "dlq": self.dlq, "webhooks": self.outbox, "webhooks_dlq": self.outbox_dlq}

    async def presign_get(self, bucket: str, key: str, expires: int, **params: Any) -> str | None:
        """A presigned S3 GET URL, or None where objects are only served by the API (local)."""
        if self.clients is None:
            return None
        with aws_errors(StorageUnavailable):
            url: str = await self.clients.s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key, **params}, ExpiresIn=expires
            )
        return url

    async def presign_put(
        self, bucket: str, key: str, expires: int, content_type: str, length: int, metadata: dict[str, str]
    ) -> tuple[str, dict[str, str]] | None:
        """A presigned S3 PUT URL that accepts only this key, length, type and metadata, and the
        headers its request must carry; None on the local backend (the API takes the bytes)."""
        if self.clients is None:
            return None
        with aws_errors(StorageUnavailable):
            url: str = await self.clients.s3.generate_presigned_url(
                "put_object",
                Params={
                    "Bucket": bucket,
                    "Key": key,
                    "ContentType": content_type,
                    "ContentLength": length,
                    "Metadata": metadata,
                },
                ExpiresIn=expires,
            )
        headers = {"Content-Type": content_type} | {f"x-amz-meta-{k}": v for k, v in metadata.items()}
        return url, headers


async def aws_backend(clients: AwsClients, settings: Settings) -> Backend:
    """The AWS ports over already open clients (queue URLs resolved once, here)."""
    aws = settings.aws
    main, dlq, outbox, outbox_dlq = [
        await Queue.named(clients.sqs, name)
        for name in (aws.queue_name, aws.dlq_name, aws.outbox_name, aws.outbox_dlq_name)
    ]
    tables = Tables(clients.dynamodb, aws)
    return Backend("aws", Storage(clients.s3, settings.aws), main, dlq, tables, outbox, outbox_dlq, clients)


@asynccontextmanager
async def open_backend(
    settings: Settings, *, provision_first: bool = False, maintain: bool = False
) -> AsyncIterator[Backend]:
    """The backend `settings` name, open for the block. `provision_first` creates its resources
    (embedded and local only: against AWS, provisioning is an explicit command); `maintain`
    clears what an interrupted write left on the local backend (the serving process does it)."""
    if settings.aws.data_dir is not None:
        from pipeline.local.backend import open_local  # the local backend is not imported on AWS

        async with open_local(settings, sweep=maintain) as backend:
            yield backend
        return
    async with open_clients(settings.aws) as clients:
        if provision_first and settings.aws.mode == "embedded":
            await provision(clients, settings)
        yield await aws_backend(clients, settings)


def data_dir_problem(settings: Settings) -> str | None:
    """Why the local backend's data directory cannot be used (one line, for the entry points to
    print before starting anything), or None; it is created, and its modes narrowed, if need be."""
    if settings.aws.mode != "local" or settings.aws.data_dir is None:
        return None
    from pipeline.local.files import DataDirError, prepare

    try:
        prepare(settings.aws.data_dir)
    except DataDirError as exc:
        return str(exc)
    return None
