"""Users and their API keys, in the users and keys tables (DynamoDB, or the local backend's).

A key is `isk_<key id>_<secret>`: the key id (public, shown in listings) finds the record in one
read; the secret is 256 random bits, stored only as its SHA-256 (a fast hash is right for
random secrets: there is nothing to brute-force) and compared in constant time. The whole key
is shown once, when it is created.

A web process remembers the keys it verified for `key_cache_seconds` (default 10; 0 remembers
nothing), as API Gateway's authorizer cache does: most requests then cost no read of the keys
table. A key revoked or rotated elsewhere stops working within that many seconds in every
process; one revoked through the same `Accounts` stops at once. Only verified keys are
remembered (a prober's guesses never fill the cache), at most `KEY_CACHE_ENTRIES` of them, and a
remembered key id still needs its secret: the cache holds the secret's digest, not a verdict.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cachetools import TTLCache

from pipeline.core.errors import InvalidCredentials, KeyNotFound, KeyRevoked, UnknownUser
from pipeline.core.items import ConditionFailed, Missing, Present, Remove, Set, SetDefault
from pipeline.core.layout import valid_user_id
from pipeline.core.ports import TableSet
from pipeline.core.timing import now_iso

#: Verified keys one process remembers at most (about 200 bytes each).
#: Seconds a key that passed stays known to be good (a refused address may still present it).
KNOWN_GOOD_SECONDS = 3600.0
KEY_CACHE_ENTRIES = 10_000

KEY_RE = re.compile(r"isk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    """A key as created: the only time its secret exists outside the caller's hands."""

    key_id: str
    user_id: str
    key: str

    @property
    def prefix(self) -> str:
        return f"isk_{self.key_id}"


class Accounts:
    """Create users, issue, list, revoke and rotate keys, and authenticate a presented key."""

    def __init__(self, tables: TableSet, *, key_cache_seconds: float = 0) -> None:
        self._tables = tables
        #: key id -> (secret digest, user id) of keys verified here lately.
        self._verified: TTLCache[str, tuple[str, str]] | None = (
            TTLCache(KEY_CACHE_ENTRIES, key_cache_seconds) if key_cache_seconds > 0 else None
        )
        #: key id -> when it was last read, for keys that passed here within `KNOWN_GOOD_SECONDS`:
        #: from an address refused for failures, only these get a read, at most one per
        #: `key_cache_seconds` each (a prober cannot make a key id good; a user can keep using one).
        self._known_good: TTLCache[str, float] = TTLCache(KEY_CACHE_ENTRIES, KNOWN_GOOD_SECONDS)
        self._reread_every = max(key_cache_seconds, 1.0)

    async def create_user(self, user_id: str | None = None, name: str = "") -> str:
        """Idempotent for a given id (the demo users are created at every embedded start)."""
        user_id = user_id or str(uuid.uuid4())
        if not valid_user_id(user_id):
            raise ValueError("a user id is a lowercase UUID")
        with contextlib.suppress(ConditionFailed):
            await self._tables.users.put(
                {
                    "user_id": user_id,
                    "name": name,
                    "created_at": now_iso(),
                    "bytes_used": 0,
                    "image_count": 0,
                },
                Missing("user_id"),
            )
        return user_id

    async def set_public_by_default(self, user_id: str, public: bool) -> dict[str, Any]:
        """Whether the user's new images are public unless an upload says otherwise."""
        try:
            return await self._tables.users.update(
                {"user_id": user_id}, [Set("public_by_default", public)], Present("user_id")
            )
        except ConditionFailed:
            raise UnknownUser() from None

    async def set_watermark(self, user_id: str, watermark: dict[str, Any] | None) -> None:
        """Keep (or, with None, drop) the user's watermark image: its bytes (base64) and what
        they are, bounded by the API (`web.watermarks`), in the user's record."""
        change = Set("watermark", watermark) if watermark is not None else Remove("watermark")
        try:
            await self._tables.users.update({"user_id": user_id}, [change], Present("user_id"))
        except ConditionFailed:
            raise UnknownUser() from None

    async def user(self, user_id: str) -> dict[str, Any]:
        found = await self._tables.users.get({"user_id": user_id})
        if found is None:
            raise UnknownUser()
        return found

    async def users(self) -> list[dict[str, Any]]:
        return sorted(await self._tables.users.scan_all(), key=lambda u: str(u["created_at"]))

    async def issue_key(self, user_id: str) -> NewKey:
        await self.user(user_id)
        key_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        await self._tables.keys.put(
            {"key_id": key_id, "user_id": user_id, "secret_sha256": _digest(secret), "created_at": now_iso()},
            Missing("key_id"),
        )
        return NewKey(key_id, user_id, f"isk_{key_id}_{secret}")

    async def restore_key(self, user_id: str, key: str) -> NewKey:
        """Make a key issued before work again (the embedded stack's demo keys survive a restart).

        Idempotent for the same user and secret; a malformed key, or a key id that already names
        another user's or another secret's key, is a `ValueError`.
        """
        match = KEY_RE.fullmatch(key)
        if match is None:
            raise ValueError("a key is isk_<16 hex>_<43 url-safe characters>")
        key_id, secret = match.groups()
        await self.user(user_id)
        item = {
            "key_id": key_id,
            "user_id": user_id,
            "secret_sha256": _digest(secret),
            "created_at": now_iso(),
        }
        try:
            await self._tables.keys.put(item, Missing("key_id"))
        except ConditionFailed:
            found = await self._tables.keys.get({"key_id": key_id}) or {}
            same = found.get("user_id") == user_id and found.get("secret_sha256") == item["secret_sha256"]
            if not same or found.get("revoked_at"):
                raise ValueError(f"key id {key_id} is taken by another key") from None
        return NewKey(key_id, user_id, key)

    async def keys(self, user_id: str) -> list[dict[str, Any]]:
        """A user's keys, oldest first, without any secret material."""
        items, _ = await self._tables.keys.query(user_id, index="by_user")
        return [
            {k: item.get(k) for k in ("key_id", "user_id", "created_at", "revoked_at")}
            | {"prefix": f"isk_{item['key_id']}"}
            for item in items
        ]

    async def revoke(self, key_id: str) -> dict[str, Any]:
        try:
            return await self._tables.keys.update(
                {"key_id": key_id}, [SetDefault("revoked_at", now_iso())], Present("key_id")
            )
        except ConditionFailed:
            raise KeyNotFound() from None
        finally:  # after the write: a check that read the key before it cannot cache it again
            if self._verified is not None:
                self._verified.pop(key_id, None)

    async def rotate(self, key_id: str) -> NewKey:
        """A new key for the same user; the old one is revoked once the new one exists."""
        item = await self._tables.keys.get({"key_id": key_id})
        if item is None:
            raise KeyNotFound()
        if item.get("revoked_at"):  # rotating would hand a revoked key's holder a working one
            raise KeyRevoked(f"key {key_id} was revoked at {item['revoked_at']}; create a new key instead")
        new = await self.issue_key(str(item["user_id"]))
        await self.revoke(key_id)
        return new

    async def authenticate(self, presented: str, *, only_remembered: bool = False) -> str:
        """The user id the key belongs to, or `InvalidCredentials`. `only_remembered`: answer
        from the keys this process verified lately, never reading one (`InvalidCredentials` for
        any other), for callers refusing to spend a read on a probing address."""
        match = KEY_RE.fullmatch(presented)
        if match is None:
            raise InvalidCredentials()
        key_id, secret = match.groups()
        digest = _digest(secret)
        remembered = self._verified.get(key_id) if self._verified is not None else None
        if remembered is not None:
            expected, user_id = remembered
            if not hmac.compare_digest(digest, expected):
                raise InvalidCredentials()
            return user_id
        if only_remembered:
            last = self._known_good.get(key_id)
            if last is None or time.monotonic() - last < self._reread_every:
                raise InvalidCredentials()
            self._known_good[key_id] = time.monotonic()  # whatever the read finds: one per period
        item = await self._tables.keys.get({"key_id": key_id})
        expected = str(item["secret_sha256"]) if item else _digest("")
        # Compare even for unknown ids, so timing does not tell which key ids exist.
        if not hmac.compare_digest(digest, expected) or item is None or item.get("revoked_at"):
            raise InvalidCredentials()
        user_id = str(item["user_id"])
        if self._verified is not None:
            self._verified[key_id] = (expected, user_id)
        self._known_good[key_id] = time.monotonic()
        return user_id
