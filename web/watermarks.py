"""Watermarks: the image a variant with `watermark=true` has laid over it (its owner's, uploaded
with `PUT /watermark` and kept in their user record) or with `watermark=site` (the deployment's,
`IMGSVC_VARIANT_WATERMARK_FILE`, read once at start). Both are small (at most
`IMGSVC_VARIANT_WATERMARK_MAX_BYTES`), checked from their header here (the web tier decodes
nothing) and decoded by the worker that makes the variant, which gets the bytes with the job.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import ConfigError, VariantSettings
from pipeline.core.errors import (
    FormatNotAllowed,
    InvalidField,
    PermanentError,
    TooLarge,
    TooManyPixels,
    WatermarkNotSet,
)
from pipeline.core.formats import check_format, read_header_prefix
from pipeline.imaging.variants import VariantSpec

#: What a watermark may be: formats with transparency, and JPEG.
FORMATS = ("png", "webp", "jpeg")


@dataclass(frozen=True)
class Overlay:
    """A watermark image: its bytes and the digest variants made with it are named by."""

    data: bytes
    digest: str
    format: str
    width: int
    height: int

    def public(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "width": self.width,
            "height": self.height,
            "bytes": len(self.data),
            "digest": self.digest,
        }

    def as_item(self) -> dict[str, Any]:
        return {**self.public(), "data": base64.b64encode(self.data).decode()}

    @classmethod
    def of_item(cls, item: object) -> Overlay | None:
        if not isinstance(item, dict) or "data" not in item:
            return None
        data = base64.b64decode(str(item["data"]))
        return cls(data, str(item["digest"]), str(item["format"]), int(item["width"]), int(item["height"]))


def checked(data: bytes, limits: VariantSettings) -> Overlay:
    """An overlay from uploaded bytes: one of `FORMATS`, within the size and side limits, its
    dimensions read from its header. Errors are the upload's (413, 415, 422)."""
    if len(data) > limits.watermark_max_bytes:
        raise TooLarge(f"a watermark may be at most {limits.watermark_max_bytes} bytes")
    if not data:
        raise InvalidField("a watermark is an image: the body is empty")
    fmt = check_format(data[:64], FORMATS)
    info = read_header_prefix(data, fmt)
    if info is None:
        raise FormatNotAllowed("the watermark's header could not be read")
    if max(info.width, info.height) > limits.watermark_max_side:
        raise TooManyPixels(
            f"a watermark may be at most {limits.watermark_max_side} pixels on its longest side"
        )
    return Overlay(data, hashlib.sha256(data).hexdigest()[:12], fmt, info.width, info.height)


def site_overlay(limits: VariantSettings) -> Overlay | None:
    """The deployment's watermark, read and checked at start (`ConfigError` naming the setting
    if it cannot be), or None if there is none."""
    if not limits.watermark_file:
        return None
    try:
        return checked(Path(limits.watermark_file).read_bytes(), limits)
    except OSError as exc:
        raise ConfigError(f"IMGSVC_VARIANT_WATERMARK_FILE: {exc}") from None
    except PermanentError as exc:  # what an upload would be told
        raise ConfigError(f"IMGSVC_VARIANT_WATERMARK_FILE: {exc.message}") from None


def overlay_for(spec: VariantSpec, owner: dict[str, Any] | None, site: Overlay | None) -> Overlay | None:
    """The watermark `spec` is made with (None if it uses none); `WatermarkNotSet` if it names
    one there is not. `owner`: the image owner's user record, read only when it is needed."""
    if spec.ops.watermark is None:
        return None
    found = site if spec.ops.watermark == "site" else Overlay.of_item((owner or {}).get("watermark"))
    if found is None:
        raise WatermarkNotSet(
            "this deployment has no watermark (IMGSVC_VARIANT_WATERMARK_FILE)"
            if spec.ops.watermark == "site"
            else None
        )
    return found
