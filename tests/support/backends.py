"""One backend's ports as the tests hold them, and provisioning a stack on moto as the embedded
stack does (the demo users included)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from config.settings import SEED_USER_IDS, Settings
from pipeline.aws.clients import AwsClients, open_clients
from pipeline.aws.provision import provision
from pipeline.aws.tables import Tables
from pipeline.backends import aws_backend
from pipeline.core.accounts import Accounts
from tests.support.settings import env_for


@dataclass
class Backend:
    """The storage and queues of one backend, provisioned with a test's unique names."""

    name: str
    settings: Settings
    storage: Any  # Storage | LocalStorage: the same methods
    main: Any  # Queue | LocalQueue
    dlq: Any
    tables: Any  # Tables | LocalTables
    ports: Any  # the pipeline.backends.Backend the others come from


#: The AWS backend's contract targets (issue 30): moto, MiniStack, and the local backend beside
#: them; a contract module applies it to its tests (`pytestmark`).
CONTRACT_TARGETS = pytest.mark.parametrize(
    "backend",
    [
        pytest.param("aws", marks=pytest.mark.moto),
        pytest.param("ministack", marks=pytest.mark.ministack),
        "local",
    ],
    indirect=True,
)

#: The storage contract's targets and the API's, end to end: those, and SeaweedFS for the
#: objects, an S3-compatible store that is not AWS and sends no events, with queues and tables
#: on moto ("seaweedfs") or in the local backend's data directory ("seaweedfs-local").
STORAGE_TARGETS = pytest.mark.parametrize(
    "backend",
    [
        *CONTRACT_TARGETS.args[1],
        pytest.param("seaweedfs", marks=[pytest.mark.seaweedfs, pytest.mark.moto]),
        pytest.param("seaweedfs-local", marks=pytest.mark.seaweedfs),
    ],
    indirect=True,
)

#: The resources (by source bucket name) this session has provisioned already.
_PROVISIONED: set[str] = set()


async def provision_with_users(clients: AwsClients, settings: Settings) -> None:
    """Provision, and create the demo users as the embedded stack does: an object put straight
    into the source bucket is processed only under a known user's id."""
    await provision(clients, settings)
    _PROVISIONED.add(settings.aws.source_bucket)
    accounts = Accounts(Tables(clients.dynamodb, settings.aws))
    for user_id in SEED_USER_IDS:
        await accounts.create_user(user_id)


@asynccontextmanager
async def aws_stack(name: str, endpoint: str, **env: str) -> AsyncIterator[Backend]:
    """The AWS backend on an emulator at `endpoint` (moto or MiniStack), with resources of its own
    (`env` on top of the tests' environment), provisioned as the embedded stack does."""
    settings = Settings.from_env(env_for(endpoint, **env))
    async with open_clients(settings.aws) as clients:
        await provision(clients, settings)
        ports = await aws_backend(clients, settings)
        for message in await ports.main.receive(10, 0):  # S3's test event for the notification
            await ports.main.delete(message.receipt_handle)
        yield Backend(name, settings, ports.storage, ports.main, ports.dlq, ports.tables, ports)


def provisioned(settings: Settings) -> bool:
    """Whether `provision_with_users` made `settings`' resources in this session already."""
    return settings.aws.source_bucket in _PROVISIONED
