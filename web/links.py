"""Signed links: a URL that works without the API key until it expires.

`HMAC-SHA256(secret, "user/image/rendition/version/expires")` over everything the link grants,
compared in constant time. The version names the upload the link was made for (from its
original's ETag), so a link never serves the bytes of a later upload under the same id.
The secret is a setting, or (when unset) one random secret created once in the config table
with a conditional write, so every web process signs and verifies alike.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import re
import secrets
import time

from pipeline.core.errors import InvalidLink, LinkExpired
from pipeline.core.items import ConditionFailed, Missing
from pipeline.core.ports import ItemTable
from pipeline.core.untrusted import ascii_int

SECRET_NAME = "link-signing-secret"
_HEX = re.compile(r"[0-9a-f]{1,64}")


async def shared_secret(config: ItemTable, configured: str) -> bytes:
    """The configured secret, or the one every process shares through the config table."""
    if configured:
        return configured.encode()
    with contextlib.suppress(ConditionFailed):  # another process created it first: use theirs
        await config.put({"name": SECRET_NAME, "value": secrets.token_urlsafe(32)}, Missing("name"))
    item = await config.get({"name": SECRET_NAME})
    assert item is not None
    return str(item["value"]).encode()


@functools.lru_cache(maxsize=4096)
def version_of(etag: str) -> str:
    """A short, URL-safe name for one upload of an image, derived from its original's ETag."""
    return hashlib.sha256(etag.strip('"').encode()).hexdigest()[:16]


class LinkSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _signature(self, user_id: str, image_id: str, rendition: str, version: str, expires: int) -> str:
        message = f"{user_id}/{image_id}/{rendition}/{version}/{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(
        self, user_id: str, image_id: str, rendition: str, version: str, seconds: int
    ) -> tuple[str, int]:
        expires = int(time.time()) + seconds
        return self._signature(user_id, image_id, rendition, version, expires), expires

    def verify(
        self, user_id: str, image_id: str, rendition: str, version: str, expires: str, signature: str
    ) -> None:
        """Raises `InvalidLink` for anything tampered with or malformed, `LinkExpired` for a good
        but old link. Every string here came from a URL: any character may be in it."""
        when = ascii_int(expires, 0, 10**12)
        if when is None or not _HEX.fullmatch(version) or not _HEX.fullmatch(signature):
            raise InvalidLink()
        expected = self._signature(user_id, image_id, rendition, version, when)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise InvalidLink()
        if when < time.time():
            raise LinkExpired()
