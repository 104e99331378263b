"""Open the local backend on a data directory: the database, the object store, the queues."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from config.settings import Settings
from pipeline.core.changes import Changes
from pipeline.core.ports import Backend, MessageQueue, ObjectStore
from pipeline.local.database import Database
from pipeline.local.files import Space, prepare
from pipeline.local.provision import provision_local
from pipeline.local.queue import LocalQueue
from pipeline.local.storage import LocalStorage
from pipeline.local.tables import LocalTables

log = logging.getLogger(__name__)
DATABASE_NAME = "state.db"


#: What keeps the objects elsewhere (an S3-compatible store, `pipeline.backends`), given the
#: main queue, which the store's writes of originals are announced on.
ObjectsElsewhere = Callable[[MessageQueue], ObjectStore]


@asynccontextmanager
async def open_local(
    settings: Settings, *, sweep: bool = False, objects: ObjectsElsewhere | None = None
) -> AsyncIterator[Backend]:
    """Every piece of state under `settings.local.data_dir`, provisioned (idempotently) on open;
    the objects too, unless `objects` keeps them elsewhere.

    `sweep` also removes blobs a crash left unnamed: a walk of every stored file, so only the
    serving process and `reconcile` ask for it, not every short command.
    """
    root = settings.local.data_dir
    assert root is not None
    await asyncio.to_thread(prepare, root)  # `DataDirError`: the entry points print it, exit 2
    space = Space(root, settings.local.min_free_bytes)
    db = Database(root / DATABASE_NAME)
    db.on_full = space.release
    await db.open()
    try:
        await provision_local(db, settings)
        main = await LocalQueue.named(db, settings.aws.queue_name)
        storage: ObjectStore
        if objects is not None:
            storage = objects(main)
            await asyncio.to_thread(space.check)  # the database's disk keeps its reserve all the same
        else:
            storage = local = LocalStorage(db, root / "objects", space)
            await local.check_space(probe=True)  # makes the reserve file where there is room
            if sweep and (swept := await local.sweep_orphans()):
                log.info("removed %d unnamed blobs left by an interrupted write", swept)
        tables = LocalTables(db)
        await tables.expire(time.time())  # what DynamoDB's TTL would have removed meanwhile
        yield Backend(
            "local",
            storage,
            main,
            await LocalQueue.named(db, settings.aws.dlq_name),
            tables,
            await LocalQueue.named(db, settings.aws.outbox_name),
            await LocalQueue.named(db, settings.aws.outbox_dlq_name),
            # A write by any process (another API worker, a consumer) wakes this one's long polls.
            changes=Changes(probe=db.data_version),
        )
    finally:
        await db.close()
