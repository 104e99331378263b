"""Public images: permanent, unguessable, versioned URLs that any CDN may keep for good.

A public image's URLs are `{delivery}/p/{token}/{version}/{name}`:
- `token` is the image's owner, id and a random nonce of 96 bits, sealed with AES-SIV under a key
  derived from the deployment's signing secret: it names the image without an index to look it up
  in, and cannot be made or changed without the key. The nonce is kept in the record while the
  image is public: making it private removes it (every URL answers 404 at once), making it public
  again draws a new one, so old URLs never come back.
- `version` names the upload (from its original's ETag): a replaced original gets new URLs and
  the old ones answer 404, never the new bytes; so what a URL answers never changes, and it is
  sent `Cache-Control: public, max-age=31536000, immutable`.
- `name` is `original.{ext}`, a rendition's file name (`256.jpg`), a preset (`card.webp`, or
  `card.auto` where the format is negotiated, with `Vary: Accept`), or a variant's link name with
  the owner's signature of it (`w400-contain-q80.webp?s=`): anonymous clients never choose sizes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from config.settings import OUTPUT_FORMATS
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import valid_image_id, valid_user_id
from pipeline.imaging.variants import VariantSpec
from web.links import version_of

#: The `Cache-Control` of everything a public URL answers with its bytes.
IMMUTABLE = "public, max-age=31536000, immutable"
#: Bytes of randomness in a public image's nonce (96 bits).
NONCE_BYTES = 12
_KEY_CONTEXT = b"image-service public urls v1"
_SEP = b"\x00"


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


class PublicUrls:
    """Seals and opens public tokens, and signs public variant names, with one deployment's key."""

    def __init__(self, secret: bytes) -> None:
        key = hmac.new(secret, _KEY_CONTEXT, hashlib.sha512).digest()  # 64 bytes: AES-256-SIV
        self._siv = AESSIV(key)
        self._signing = hmac.new(secret, _KEY_CONTEXT + b" variants", hashlib.sha256).digest()
        # Every public GET opens its token: the few thousand hottest are kept opened (bounded).
        self.open = functools.lru_cache(maxsize=4096)(self._open)

    def token(self, user_id: str, image_id: str, nonce: str) -> str:
        plain = user_id.encode() + _SEP + image_id.encode() + _SEP + bytes.fromhex(nonce)
        sealed = self._siv.encrypt(plain, None)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def _open(self, token: str) -> tuple[str, str, str] | None:
        """(owner, image id, nonce) of a token this deployment sealed; None for anything else."""
        if not 16 < len(token) < 256 or not token.isascii():
            return None
        try:
            sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            plain = self._siv.decrypt(sealed, None)
        except (InvalidTag, ValueError, binascii.Error):
            return None
        user, _, rest = plain.partition(_SEP)
        image, _, nonce = rest.partition(_SEP)
        try:
            user_id, image_id = user.decode(), image.decode()
        except UnicodeDecodeError:
            return None
        if not (valid_user_id(user_id) and valid_image_id(image_id)) or len(nonce) != NONCE_BYTES:
            return None
        return user_id, image_id, nonce.hex()

    def signature(self, token: str, version: str, name: str) -> str:
        """The owner's signature of a variant `name` on its image's public URL: what lets an
        anonymous client have exactly that variant made (HMAC; 128 bits, hex)."""
        message = f"{token}/{version}/{name}".encode()
        return hmac.new(self._signing, message, hashlib.sha256).hexdigest()[:32]

    def check(self, token: str, version: str, name: str, signature: str) -> bool:
        return hmac.compare_digest(self.signature(token, version, name).encode(), signature.encode())


def extension(fmt: str) -> str:
    """A file extension for an image format (`jpeg`: jpg)."""
    return OUTPUT_FORMATS.get(fmt, {"gif": "gif", "tiff": "tiff", "heif": "heic"}.get(fmt, fmt))


def base_of(delivery: str, record: ImageRecord, urls: PublicUrls) -> str | None:
    """`{delivery}/p/{token}/{version}` of a public image, or None while it is private."""
    nonce = record.public_nonce
    if nonce is None or not record.source_etag:
        return None
    token = urls.token(record.owner, record.image_id, nonce)
    return f"{delivery}/p/{token}/{version_of(record.source_etag)}"


def variant_url(base: str, urls: PublicUrls, spec: VariantSpec, negotiated: bool) -> str:
    """A variant's public URL, signed for exactly this spec."""
    name = spec.link_name(negotiated)
    _, token, version = base.rsplit("/", 2)
    return f"{base}/{name}?s={urls.signature(token, version, name)}"
