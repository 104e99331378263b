"""One backend's ports as the tests hold them, and provisioning a stack on moto as the embedded
stack does (the demo users included)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config.settings import SEED_USER_IDS, Settings
from pipeline.aws.clients import AwsClients
from pipeline.aws.provision import provision
from pipeline.aws.tables import Tables
from pipeline.core.accounts import Accounts


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


def provisioned(settings: Settings) -> bool:
    """Whether `provision_with_users` made `settings`' resources in this session already."""
    return settings.aws.source_bucket in _PROVISIONED
