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


#: The order of the first cursors, which named none (`pipeline.core.listing.Listing.order`).
FIRST_ORDER = "created-desc"


def encode_cursor(last: Item, order: str = FIRST_ORDER) -> str:
    """`last`: the whole record a page ended with (its keys in the table and in the index)."""
    fields = [last["user_id"], last["image_id"], last["created_key"]]
    raw = json.dumps(fields if order == FIRST_ORDER else [*fields, order]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, owner: str, order: str = FIRST_ORDER) -> Item:
    """The record's keys to go on from; refused unless made for `owner` and in this `order`."""
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        fields = untrusted.loads(raw, max_bytes=MAX_CURSOR_LENGTH, max_depth=1)
        user_id, image_id, created_key, made_for = (*fields, FIRST_ORDER) if len(fields) == 3 else fields
    except (binascii.Error, ValueError, TypeError):  # untrusted.Malformed is a ValueError
        raise InvalidField("cursor is not one this API returned") from None
    if user_id != owner or not all(isinstance(v, str) for v in (image_id, created_key)):
        raise InvalidField("cursor is not one this API returned")
    if made_for != order:
        raise InvalidField("cursor belongs to a listing in another order: start again without it")
    return {"user_id": user_id, "image_id": image_id, "created_key": created_key}
