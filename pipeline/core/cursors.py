"""The listing's cursor: the last record of a page, opaque to clients and checked when it comes
back (a cursor is untrusted input: bounded, of the caller's own images only)."""

from __future__ import annotations

import base64
import binascii
import json

from pipeline.core import untrusted
from pipeline.core.errors import InvalidField
from pipeline.core.items import Item

#: Our cursors are under 300 characters; anything much longer was not made here.
MAX_CURSOR_LENGTH = 1024


def encode_cursor(last: Item) -> str:
    raw = json.dumps([last["user_id"], last["image_id"], last["created_key"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, owner: str) -> Item:
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        user_id, image_id, created_key = untrusted.loads(raw, max_bytes=MAX_CURSOR_LENGTH, max_depth=1)
    except (binascii.Error, ValueError, TypeError):  # untrusted.Malformed is a ValueError
        raise InvalidField("cursor is not one this API returned") from None
    if user_id != owner or not all(isinstance(v, str) for v in (image_id, created_key)):
        raise InvalidField("cursor is not one this API returned")
    return {"user_id": user_id, "image_id": image_id, "created_key": created_key}
