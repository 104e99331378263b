"""What the upload routes read from a request besides its bytes: the `public` and expiry
options, and what charges the owner's decode budget. Storing the upload is
`pipeline.core.uploads`."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from pipeline.core.errors import InvalidField, PublicImagesDisabled
from pipeline.core.image_record import PUBLIC_FIELD, ImageRecord, UploadFacts
from pipeline.core.records import KEEP_PUBLIC
from pipeline.core.untrusted import ascii_flag, ascii_int
from web.keys import SETTINGS, UPLOAD_RATES
from web.public import new_nonce


def parse_public(raw: object) -> bool | None:
    """An upload's `public` option (a query value, a form field or a JSON boolean); None: not given."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and (value := ascii_flag(raw)) is not None:
        return value
    raise InvalidField("public must be true or false")


def visibility_facts(
    request: web.Request, raw: object, user: Mapping[str, Any], previous: ImageRecord | None
) -> UploadFacts:
    """The record's visibility after an upload: as asked (`public`), else the owner's default
    for a new image, else as it was; a public image keeps its URL nonce when replaced (its URLs'
    version changes, so old ones stop answering). `PublicImagesDisabled` where forbidden."""
    allowed = request.app[SETTINGS].web.public_images
    wanted = parse_public(raw)
    if wanted and not allowed:
        raise PublicImagesDisabled()
    if wanted is None:
        if previous is not None:
            return {}
        wanted = bool(user.get("public_by_default")) and allowed
    if not wanted:
        return {PUBLIC_FIELD: None}
    return {PUBLIC_FIELD: KEEP_PUBLIC if previous is not None else new_nonce()}


def expiry_from(request: web.Request, days: object) -> int | None:
    """When the image expires (epoch seconds): `expires_in_days` (a whole number from 1 to
    36500, from the query or the JSON body), else the deployment's retention; None: never."""
    retention = request.app[SETTINGS].accounts.retention_days
    if days is None or days == "":
        return int(time.time()) + retention * 86_400 if retention else None
    longest = retention or 36_500
    value = ascii_int(days, 1, longest) if isinstance(days, str) else days
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= longest:
        raise InvalidField(
            f"expires_in_days must be a whole number of days from 1 to {longest}"
            + (" (this deployment keeps images no longer)" if longest < 36_500 else "")
        )
    return int(time.time()) + value * 86_400


def upload_charge(request: web.Request, user_id: str) -> Callable[[float], None]:
    """What charges an upload of `user_id` to its decode budget (`IMGSVC_USER_UPLOAD_MEGAPIXELS_*`)."""
    buckets = request.app[UPLOAD_RATES]
    return lambda megapixels: buckets.take(user_id, megapixels)
