"""Where things live in the buckets, and the strict patterns ids must match to get there.

Nothing a client sends becomes part of a key without passing these patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from config.settings import RenditionSpec

USER_ID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
IMAGE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: A key between the images table's other items (digest notes, `#sha256:...`) and every image id
#: (a letter or digit first): a query by id for images alone asks for keys above it.
IMAGE_IDS_ABOVE = "$"


def valid_user_id(value: str) -> bool:
    return USER_ID_RE.fullmatch(value) is not None


#: Ids that name API routes under `/images/` rather than images.
RESERVED_IMAGE_IDS = frozenset({"upload-url"})


def valid_image_id(value: str) -> bool:
    return IMAGE_ID_RE.fullmatch(value) is not None and value not in RESERVED_IMAGE_IDS


@dataclass(frozen=True)
class ImageRef:
    """One original in the source bucket and everything derived from it in the destination."""

    source_key: str

    @classmethod
    def of(cls, user_id: str, image_id: str) -> ImageRef:
        """The key of an API upload; callers validate both ids first."""
        return cls(f"{user_id}/{image_id}")

    @property
    def owner_and_id(self) -> tuple[str, str]:
        """The record's key: the first path segment owns the image (a user id for API uploads;
        any prefix for objects written to the bucket by other means)."""
        owner, _, image_id = self.source_key.partition("/")
        return (owner, image_id) if image_id else ("-", owner)

    def rendition_key(self, spec: RenditionSpec) -> str:
        """Deterministic, so reprocessing overwrites instead of duplicating."""
        return f"{self.source_key}/{spec.filename}"

    def variants_prefix(self, etag: str | None = None) -> str:
        """Where the on-demand variants of this image are: of one original (`etag`) or of any."""
        return f"{self.source_key}/{VARIANTS}/" + (f"{etag.strip(chr(34))}/" if etag else "")

    def variant_key(self, etag: str, name: str) -> str:
        """Keyed by the original's ETag: a replaced original's variants are never served again."""
        return self.variants_prefix(etag) + name


#: The folder of an image's variants, beside its renditions (no rendition file is named so).
VARIANTS = "variants"


def source_key_of(dest_key: str) -> str:
    """The original a rendition (`{source}/{file}`) or a variant (`{source}/variants/{etag}/{name}`)
    in the destination bucket was made from."""
    head, _, _ = dest_key.rpartition("/")
    parent = head.rpartition("/")[0]  # drops the ETag folder
    original, _, marker = parent.rpartition("/")
    return original if marker == VARIANTS and original.count("/") == 1 else head
