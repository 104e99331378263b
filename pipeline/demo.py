"""The embedded stack's demo users: the original system's five user ids, each with a fresh key.

The embedded endpoint keeps everything in memory, so every start creates the users again and
issues new keys; they are logged and written (mode 0600) to a file for scripts and people.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from config.settings import SEED_USER_IDS, Settings
from pipeline.accounts import Accounts
from pipeline.aws import AwsClients
from pipeline.tables import Tables

log = logging.getLogger(__name__)


async def seed_demo_users(clients: AwsClients, settings: Settings) -> dict[str, str]:
    """Create the demo users, issue one key each, write them to the demo keys file."""
    accounts = Accounts(Tables(clients.dynamodb, settings.aws))
    keys = {}
    for number, user_id in enumerate(SEED_USER_IDS, 1):
        await accounts.create_user(user_id, f"demo user {number}")
        keys[user_id] = (await accounts.issue_key(user_id)).key
    path = settings.accounts.demo_keys_file
    write_secret_file(path, json.dumps({"keys": keys}, indent=2) + "\n")
    for user_id, key in keys.items():
        log.info("demo user user_id=%s key=%s", user_id, key)
    log.info("demo API keys written to %s (use: Authorization: Bearer <key>)", path.resolve())
    return keys


def write_secret_file(path: Path, text: str) -> None:
    """Readable by its owner only, from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def read_demo_keys(path: Path) -> dict[str, str]:
    """The keys a running embedded stack wrote, by user id."""
    keys: dict[str, str] = json.loads(path.read_text())["keys"]
    return keys
