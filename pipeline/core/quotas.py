"""Per-user quotas, on the usage counters of the user's item in the users table.

The counters change only with the image records (`RecordStore`), by atomic `ADD` in the record
write's transaction; `limit` is the condition that transaction carries, so concurrent uploads
through any number of web processes cannot together cross a quota. `check` refuses early what
would certainly cross one, `refusal` says which one a refused write crossed. A quota of 0 is no
limit.
"""

from __future__ import annotations

import logging

from config.settings import AccountSettings
from pipeline.core.errors import ByteQuotaExceeded, ImageQuotaExceeded, PermanentError, UnknownUser
from pipeline.core.items import AllOf, AnyOf, AtMost, Condition, Item, Missing
from pipeline.core.ports import ItemTable

log = logging.getLogger(__name__)


class Usage:
    def __init__(self, users: ItemTable, accounts: AccountSettings) -> None:
        self._users = users
        self._max_bytes = accounts.quota_bytes
        self._max_images = accounts.quota_images

    @property
    def limits_bytes(self) -> bool:
        """Whether a charge of bytes can be refused (else it only keeps the count)."""
        return self._max_bytes > 0

    async def check(
        self, user_id: str, *, new_image: bool, incoming: int | None, replaced_bytes: int
    ) -> Item:
        """Refuse early, before any byte is stored, what would certainly cross a quota; returns
        the user's item (the upload learns from it whether to notify a webhook)."""
        user = await self._users.get({"user_id": user_id})
        if user is None:
            raise UnknownUser()
        if new_image and self._max_images and int(user.get("image_count", 0)) >= self._max_images:
            raise ImageQuotaExceeded()
        used_after = int(user.get("bytes_used", 0)) - replaced_bytes + (incoming or 0)
        if self._max_bytes and incoming is not None and used_after > self._max_bytes:
            raise ByteQuotaExceeded()
        return user

    def limit(self, delta_bytes: int, delta_images: int) -> Condition | None:
        """The condition on the user's counters under which adding these deltas stays within the
        quotas (None: nothing to hold); for a record write's transaction (`RecordStore`)."""
        conditions: list[Condition] = []
        if self._max_images and delta_images > 0:
            room = self._max_images - delta_images
            conditions.append(AnyOf((Missing("image_count"), AtMost("image_count", room))))
        if self._max_bytes and delta_bytes > 0:
            room = self._max_bytes - delta_bytes
            conditions.append(AnyOf((Missing("bytes_used"), AtMost("bytes_used", room))))
        return AllOf(tuple(conditions)) if conditions else None

    async def refusal(self, user_id: str, delta_images: int) -> PermanentError:
        """Which quota a refused change crossed (read afresh), or that the user is gone."""
        user = await self._users.get({"user_id": user_id})
        if user is None:
            return UnknownUser()
        if (
            self._max_images
            and delta_images > 0
            and int(user.get("image_count", 0)) + delta_images > self._max_images
        ):
            return ImageQuotaExceeded()
        return ByteQuotaExceeded()
