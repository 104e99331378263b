"""`GET /usage`: what the caller stores against their quotas, for a UI's bar and for clients that
would rather not learn it from a refused upload."""

from __future__ import annotations

from aiohttp import web

from web.identity import resolve_user
from web.keys import ACCOUNTS, SETTINGS


async def get_usage(request: web.Request) -> web.Response:
    """Images and bytes counted (originals and variants, as the quotas count them) and the
    quotas (null: none)."""
    user_id = await resolve_user(request)
    user = await request.app[ACCOUNTS].user(user_id)
    accounts = request.app[SETTINGS].accounts
    return web.json_response(
        {
            "images": int(user.get("image_count", 0)),
            "bytes": int(user.get("bytes_used", 0)),
            "quota_images": accounts.quota_images or None,
            "quota_bytes": accounts.quota_bytes or None,
        }
    )
