"""Who is calling. The one place the caller's identity is resolved.

For now the caller names a user id (query or JSON body) and it must be one of the five seed
users of the original system; API keys replace this later without touching any handler.
"""

from __future__ import annotations

from aiohttp import web

from config.settings import SEED_USER_IDS
from pipeline.errors import InvalidField, MissingField, UnknownUser
from pipeline.layout import valid_user_id


def resolve_user(request: web.Request, claimed: object = None) -> str:
    """Return the caller's user id; `claimed` is a user id from a JSON body, if any."""
    value = claimed if claimed is not None else request.query.get("user_id")
    if value is None or value == "":
        raise MissingField("user_id is required")
    if not isinstance(value, str) or not valid_user_id(value):
        raise InvalidField("user_id must be a lowercase UUID")
    if value not in SEED_USER_IDS:
        raise UnknownUser()
    return value
