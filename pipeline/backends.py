"""Open the backend a process runs on: AWS (real, or the embedded moto) or local (a data dir).

Everything above this module (consumer, jobs, handlers, CLIs) receives a `Backend` and talks
to its ports; only this module knows which clients or files are behind them.

May import: `config`, `pipeline.core` and both backends, `pipeline.aws` and `pipeline.local`, each
lazily: an AWS process never loads the local backend, and a process on a data directory never
loads aiobotocore, botocore and boto3 (tens of MB in every serving process and worker) unless
its objects are in an S3-compatible store (`IMGSVC_S3_ENDPOINT_URL`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from config.settings import Settings
from pipeline.core.ports import Backend

if TYPE_CHECKING:
    from pipeline.aws.clients import AwsClients
    from pipeline.local.backend import ObjectsElsewhere

log = logging.getLogger(__name__)


async def aws_backend(clients: AwsClients, settings: Settings) -> Backend:
    """The AWS ports over already open clients (queue URLs resolved once, here)."""
    from pipeline.aws.announcing import AnnouncingStorage
    from pipeline.aws.originals import prepare_reads
    from pipeline.aws.presign import S3Presigner
    from pipeline.aws.queue import Queue
    from pipeline.aws.storage import Storage
    from pipeline.aws.tables import Tables

    aws = settings.aws
    main, dlq, outbox, outbox_dlq = [
        await Queue.named(clients.sqs, name)
        for name in (aws.queue_name, aws.dlq_name, aws.outbox_name, aws.outbox_dlq_name)
    ]
    tables = Tables(clients.dynamodb, aws)
    # A store that sends no events has the service announce what it writes (`announcing`).
    storage = Storage(clients.s3, aws) if aws.s3_notifications else AnnouncingStorage(clients.s3, aws, main)
    return Backend(
        "aws",
        storage,
        main,
        dlq,
        tables,
        outbox,
        outbox_dlq,
        presigner=S3Presigner(clients),
        prepare_reads=functools.partial(prepare_reads, settings.aws),
    )


@asynccontextmanager
async def _objects_in_s3(settings: Settings, *, provision: bool) -> AsyncIterator[ObjectsElsewhere]:
    """The local backend's objects in an S3-compatible store (`IMGSVC_S3_ENDPOINT_URL`), its
    buckets made if need be with `provision` (the serving process and `pipeline provision`; not
    every short command). Whatever the store's notifications, none can reach the local queue,
    so the service announces the originals it writes (`AnnouncingStorage`), its own presigned
    upload routes included (they write through it)."""
    from pipeline.aws.announcing import AnnouncingStorage
    from pipeline.aws.clients import open_s3
    from pipeline.aws.provision import provision_buckets

    async with open_s3(settings.aws) as s3:
        if provision:
            await provision_buckets(s3, settings)
        yield functools.partial(AnnouncingStorage, s3, settings.aws)


@asynccontextmanager
async def open_backend(
    settings: Settings, *, provision_first: bool = False, maintain: bool = False
) -> AsyncIterator[Backend]:
    """The backend `settings` name, open for the block. `provision_first` creates its resources
    (embedded and local only: against AWS, provisioning is an explicit command; the local
    backend provisions its data directory on every open, and its S3 store's buckets only when
    asked); `maintain`
    clears what an interrupted write left on the local backend (the serving process does it)."""
    if settings.local.data_dir is not None:
        from pipeline.local.backend import open_local  # the local backend is not imported on AWS

        if settings.aws.s3_endpoint_url:
            from pipeline.aws.originals import prepare_reads

            objects_in_s3 = _objects_in_s3(settings, provision=provision_first)
            async with objects_in_s3 as objects, open_local(settings, objects=objects) as backend:
                yield dataclasses.replace(
                    backend, prepare_reads=functools.partial(prepare_reads, settings.aws)
                )
            return
        async with open_local(settings, sweep=maintain) as backend:
            yield backend
        return
    from pipeline.aws.clients import open_clients
    from pipeline.aws.provision import provision

    async with open_clients(settings.aws) as clients:
        if provision_first and settings.aws.mode == "embedded":
            await provision(clients, settings)
        yield await aws_backend(clients, settings)


def data_dir_problem(settings: Settings) -> str | None:
    """Why the local backend's data directory cannot be used (one line, for the entry points to
    print before starting anything), or None; it is created, and its modes narrowed, if need be."""
    if settings.aws.mode != "local" or settings.local.data_dir is None:
        return None
    from pipeline.local.backend import DATABASE_NAME
    from pipeline.local.database import SchemaError, check_schema
    from pipeline.local.files import DataDirError, prepare

    try:
        prepare(settings.local.data_dir)
        check_schema(settings.local.data_dir / DATABASE_NAME)
    except (DataDirError, SchemaError) as exc:
        return str(exc)
    return None
