"""Presigned uploads: the reservation an image record holds until its bytes arrive.

`POST /images/upload-url` writes a record that is only a reservation: the length and type the
URL allows, a random token, and when the URL stops working; the owner's quota is charged its
length in the same transaction as any upload's. The client then puts the bytes straight into
the source bucket (S3 checks the signed length, type and metadata), and the consumer, reading the
object S3's event names, completes the record: the object must carry the reservation's token
and have exactly its length and a format of its type. A mismatch (possible where nothing checks
signatures, as in the embedded endpoint, or for bytes of another format than the type signed)
ends the image `failed` with the reason, its quota given back and the object removed. A
reservation never used is released by `python -m pipeline gc` once its URL has expired.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from pipeline.core.errors import UploadMismatch
from pipeline.core.formats import detect_format

#: The record's field holding the reservation (absent once the upload arrived).
FIELD: Final = "awaiting_upload"
#: Where a completed reservation moves: its URL works until it expires, and bytes put through it
#: again are checked against it like the first.
USED: Final = "presigned_upload"
#: The object metadata (`x-amz-meta-reservation`) naming the reservation bytes were put for.
METADATA_KEY = "reservation"
#: Seconds past its URL's expiry before gc releases a reservation: a PUT that began just before
#: the expiry may still be arriving.
RELEASE_MARGIN_SECONDS = 600


@dataclass(frozen=True)
class Reservation:
    token: str
    content_length: int
    #: `image/<format>`, as `pipeline.core.formats.detect_format` names formats.
    content_type: str
    #: When the URL stops working (epoch seconds).
    expires_at: int
    #: A resumable upload's: the store's multipart upload id and the size of each part but the
    #: last (None: one PUT).
    upload_id: str | None = None
    part_size: int | None = None

    @property
    def format(self) -> str:
        return self.content_type.removeprefix("image/")

    @property
    def part_count(self) -> int:
        """How many parts the upload is in (1 for one PUT)."""
        return -(-self.content_length // self.part_size) if self.part_size else 1

    def part_length(self, number: int) -> int | None:
        """The exact length part `number` must have; None for a number outside the upload."""
        if not 1 <= number <= self.part_count:
            return None
        size = self.part_size or self.content_length
        return min(size, self.content_length - (number - 1) * size)

    def as_item(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def of(cls, item: Mapping[str, Any], field: str = FIELD) -> Reservation | None:
        """The reservation a record holds, or None once its upload arrived (or never was one)."""
        held = item.get(field)
        if not isinstance(held, Mapping):
            return None
        upload_id, part_size = held.get("upload_id"), held.get("part_size")
        return cls(
            str(held.get("token", "")),
            int(held.get("content_length", 0)),
            str(held.get("content_type", "")),
            int(held.get("expires_at", 0)),
            str(upload_id) if upload_id else None,
            int(part_size) if part_size else None,
        )

    @classmethod
    def named(cls, item: Mapping[str, Any], token: str) -> Reservation | None:
        """The record's reservation, held or used, whose token is `token`; None if it has none."""
        for field in (FIELD, USED):
            held = cls.of(item, field)
            if held is not None and hmac.compare_digest(held.token.encode(), token.encode()):
                return held
        return None

    @classmethod
    def live(cls, item: Mapping[str, Any], now: float | None = None) -> Reservation | None:
        """The reservation a record holds whose URL may still be used (or whose PUT may still be
        arriving): the id is not free for another upload until gc may release it."""
        held = cls.of(item)
        if held is None or held.released_by(time.time() if now is None else now):
            return None
        return held

    def released_by(self, now: float) -> bool:
        """Whether gc may release it: its URL expired long enough ago for no PUT to be under way."""
        return self.expires_at + RELEASE_MARGIN_SECONDS <= now

    def mismatch(self, size: int, head: bytes | None) -> UploadMismatch | None:
        """Why the object that arrived (`size` bytes starting with `head`; None: not read) is not
        the one the URL was made for; None if it is (as far as what was read tells)."""
        if size != self.content_length:
            return UploadMismatch(f"the upload has {size} bytes; its URL was made for {self.content_length}")
        if head is None:
            return None
        found = detect_format(head)
        if found != self.format:
            return UploadMismatch(
                f"the upload is {'not an image format we know' if found is None else found}; "
                f"its URL was made for {self.content_type}"
            )
        return None
