"""The demo users: the original system's five user ids, each with a key.

The embedded endpoint keeps everything in memory, so every start creates the users again. Their
keys are logged and written (mode 0600) to a file for scripts and people; when that file already
holds a well-formed key for a demo user, the same key is issued again, so browser tabs and
scripts keep working across restarts. Anything else in the file (unreadable, malformed, keys of
other users) is ignored: such users get new keys and the file is rewritten.

A data directory (the local backend) keeps its users and keys: the demo users are created on
its first start only (`seed_demo_once`), and later starts leave accounts as they are.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from config.settings import SEED_USER_IDS, Settings
from pipeline.core.accounts import Accounts
from pipeline.core.ports import TableSet

log = logging.getLogger(__name__)


async def seed_demo_users(tables: TableSet, settings: Settings) -> dict[str, str]:
    """Create the demo users, keep or issue one key each, write them to the demo keys file."""
    accounts = Accounts(tables)
    path = settings.accounts.demo_keys_file
    previous = _previous_keys(path)
    keys, kept = {}, []
    for number, user_id in enumerate(SEED_USER_IDS, 1):
        await accounts.create_user(user_id, f"demo user {number}")
        if user_id in previous:
            try:
                keys[user_id] = (await accounts.restore_key(user_id, previous[user_id])).key
                kept.append(user_id)
                continue
            except ValueError as exc:
                log.warning("demo key not reused user_id=%s reason=%s; issuing a new one", user_id, exc)
        keys[user_id] = (await accounts.issue_key(user_id)).key
    write_secret_file(path, json.dumps({"keys": keys}, indent=2) + "\n")
    for user_id, key in keys.items():
        log.info("demo user user_id=%s key=%s", user_id, key)
    if kept:
        log.info(
            "demo API keys kept from the previous start for %d of %d users (delete %s for new ones)",
            len(kept),
            len(keys),
            path.resolve(),
        )
    log.info("demo API keys written to %s (use: Authorization: Bearer <key>)", path.resolve())
    return keys


async def seed_demo_once(tables: TableSet, settings: Settings) -> None:
    """Seed the demo users into a durable backend that has no users yet; leave one that has."""
    users = await Accounts(tables).users()
    if users:
        log.info("keeping the %d users and their keys of %s", len(users), settings.local.data_dir)
        return
    await seed_demo_users(tables, settings)


def _previous_keys(path: Path) -> dict[str, str]:
    """The demo users' keys a previous start wrote, or none when the file is missing or not ours."""
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # unreadable, not UTF-8, not JSON
        log.warning("demo keys file not used path=%s reason=%s; issuing new keys", path, type(exc).__name__)
        return {}
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, dict):
        log.warning("demo keys file not used path=%s reason=no keys object; issuing new keys", path)
        return {}
    return {u: k for u, k in keys.items() if u in SEED_USER_IDS and isinstance(k, str)}


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
