"""Signed links: a URL that works without the API key until it expires.

`HMAC-SHA256(secret, "user/image/rendition/expires")` over everything the link grants, compared
in constant time. The secret is a setting, or (when unset) one random secret created once in the
config table with a conditional write, so every web process signs and verifies alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
import time

from pipeline.errors import InvalidLink, LinkExpired
from pipeline.tables import ConditionFailed, Table

SECRET_NAME = "link-signing-secret"


async def shared_secret(config: Table, configured: str) -> bytes:
    """The configured secret, or the one every process shares through the config table."""
    if configured:
        return configured.encode()
    with contextlib.suppress(ConditionFailed):  # another process created it first: use theirs
        await config.put(
            {"name": SECRET_NAME, "value": secrets.token_urlsafe(32)},
            "attribute_not_exists(#n)",
            names={"#n": "name"},
        )
    item = await config.get({"name": SECRET_NAME})
    assert item is not None
    return str(item["value"]).encode()


class LinkSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _signature(self, user_id: str, image_id: str, rendition: str, expires: int) -> str:
        message = f"{user_id}/{image_id}/{rendition}/{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, user_id: str, image_id: str, rendition: str, seconds: int) -> tuple[str, int]:
        expires = int(time.time()) + seconds
        return self._signature(user_id, image_id, rendition, expires), expires

    def verify(self, user_id: str, image_id: str, rendition: str, expires: str, signature: str) -> None:
        """Raises `InvalidLink` for anything tampered with, `LinkExpired` for a good but old link."""
        if not expires.isdigit() or len(expires) > 12:
            raise InvalidLink()
        expected = self._signature(user_id, image_id, rendition, int(expires))
        if not hmac.compare_digest(expected, signature):
            raise InvalidLink()
        if int(expires) < time.time():
            raise LinkExpired()
