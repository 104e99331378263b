"""An image record as every reader sees it: its state derived from what the API and the consumer
wrote, and the fields a client is shown. Written by `pipeline.core.records`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypedDict

from pipeline.core import reservations
from pipeline.core.items import Item
from pipeline.core.timing import epoch_iso

State = Literal["awaiting_upload", "pending", "ready", "failed"]
#: The record field holding a public image's URL nonce (`web.public`); absent while private.
PUBLIC_FIELD: Final = "public_nonce"


class UploadFacts(TypedDict, total=False):
    """What the record says of an image's original: the one definition of the fields an upload
    (`pipeline.core.uploads`), an upload URL's reservation (`web.handlers.presigned`) and a job
    that read the original itself (`pipeline.consumer.jobs`) write. None removes a field. The
    consumer's result (`result_*`, `renditions`, `info`, `error`, ...) is `RecordStore`'s own."""

    file_name: str
    content_type: str
    #: Detected from the bytes, never from the client's claim.
    format: str
    bytes: int
    sha256: str | None
    #: When `python -m pipeline gc` removes the image (epoch seconds); None: never.
    expires_at: int | None
    #: DynamoDB's TTL: the backstop for a record gc has not removed.
    purge_at: int | None
    #: Whether the owner had a webhook at upload time (only then does the consumer look it up).
    notify: bool
    #: `PUBLIC_FIELD`: the nonce of a public image's URLs; None: private; `KEEP_PUBLIC`
    #: (`pipeline.core.records`): public, with the nonce the record has if it has one.
    public_nonce: object
    #: `reservations.FIELD`: None clears it (an upload took the id, or its URL was used).
    awaiting_upload: None
    #: `reservations.USED`: the reservation whose URL put these bytes (bytes put through it again
    #: are checked against it); None clears it.
    presigned_upload: dict[str, Any] | None


@dataclass(frozen=True)
class ImageRecord:
    owner: str
    image_id: str
    item: Item = field(repr=False)
    #: For a record just written: the item it replaced (None: it created the record).
    replaced: Item | None = field(default=None, repr=False, compare=False)

    @property
    def freed_variant_bytes(self) -> int:
        """Variant bytes this write gave up: those its record counted for another original.
        Whichever write first records a new original (the upload's or the consumer's, in either
        order) sees them, exactly once: each write is conditional on the revision it read."""
        old = self.replaced
        etag = str(self.item.get("source_etag", ""))
        if old is None or not counted_for_another(old, etag):
            return 0
        return int(old.get("variant_bytes", 0))

    @property
    def public_nonce(self) -> str | None:
        """The random part of the image's public URLs while it is public; None while private."""
        nonce = self.item.get(PUBLIC_FIELD)
        return nonce if isinstance(nonce, str) and nonce else None

    @property
    def state(self) -> State:
        if self.item.get(reservations.FIELD) is not None:
            return "awaiting_upload"
        if self.item.get("result_etag") and self.item.get("result_etag") == self.item.get("source_etag"):
            return "ready" if self.item.get("result_state") == "ready" else "failed"
        return "pending"

    @property
    def source_etag(self) -> str:
        return str(self.item.get("source_etag", ""))

    @property
    def bytes(self) -> int:
        return int(self.item.get("bytes", 0))

    @property
    def variant_bytes(self) -> int:
        """Bytes of the variants stored for the current original (counted in the owner's usage)."""
        return int(self.item.get("variant_bytes", 0))

    @property
    def variant_count(self) -> int:
        return int(self.item.get("variant_count", 0))

    @property
    def variant_names(self) -> frozenset[str] | None:
        """Names of the variants counted for the current original; None when the record counts
        variants without naming them (written before names were kept): then only storage knows."""
        names = self.item.get("variant_names")
        if names is None:
            return frozenset() if self.variant_count == 0 else None
        return frozenset(names)

    @property
    def renditions(self) -> dict[str, dict[str, Any]]:
        renditions: dict[str, dict[str, Any]] = (
            self.item.get("renditions", {}) if self.state == "ready" else {}
        )
        return renditions

    @property
    def mezzanine(self) -> dict[str, Any] | None:
        """The mezzanine made with the renditions of the current original (its key, width and
        height), if one was: variants that fit inside it read it instead of the original."""
        made = self.item.get("mezzanine") if self.state == "ready" else None
        return made if isinstance(made, dict) else None

    @property
    def error(self) -> dict[str, str] | None:
        return self.item.get("error") if self.state == "failed" else None

    def public(self) -> dict[str, Any]:
        """The fields a client sees (URLs are added by the web tier)."""
        item = self.item
        body: dict[str, Any] = {
            "image_id": self.image_id,
            "status": self.state,
            "file_name": item.get("file_name") or None,
            "format": item.get("format"),  # detected from the bytes at upload
            "content_type": item.get("content_type"),
            "bytes": item.get("bytes"),
            "sha256": item.get("sha256"),
            "etag": self.source_etag or None,
            "created_at": item.get("created_at"),
            "updated_at": item.get("updated_at"),
            "focal_point": item.get("focal_point"),
            # Its renditions were copied from this image of the same owner, made from the same bytes.
            "duplicate_of": item.get("duplicate_of"),
            "expires_at": epoch_iso(item.get("expires_at")),
            "public": self.public_nonce is not None,
        }
        if self.variant_count:
            names = self.variant_names
            body["variants"] = {
                "count": self.variant_count,
                "bytes": self.variant_bytes,
                "names": sorted(names) if names is not None else None,
            }
        if self.state == "ready":
            info = item.get("info", {})
            body.update({k: info[k] for k in ("format", "width", "height") if k in info})
            body["placeholder"] = item.get("placeholder")
        if self.state == "failed":
            body["error"] = self.error
        if (reserved := reservations.Reservation.of(item)) is not None:
            body["upload_expires_at"] = epoch_iso(reserved.expires_at)
        return {k: v for k, v in body.items() if v is not None}


def counted_for_another(old: Item | None, etag: str) -> bool:
    """Whether `old` counts variants of an original other than `etag` (`variant_etag` names the
    original its variant counters are for)."""
    return old is not None and old.get("variant_etag") not in (None, etag)
