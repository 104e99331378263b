"""The caller's completion webhook: `GET`, `PUT` and `DELETE /webhook`."""

from __future__ import annotations

from aiohttp import web

from pipeline.core.errors import InvalidField, WebhookNotSet
from pipeline.webhooks.urls import check_url
from web.bodies import json_object
from web.identity import resolve_user
from web.keys import SETTINGS, WEBHOOKS


async def get_webhook(request: web.Request) -> web.Response:
    """The URL events go to and the secret they are signed with; 404 `webhook_not_set` if none."""
    user_id = await resolve_user(request)
    hook = await request.app[WEBHOOKS].get(user_id)
    if hook is None:
        raise WebhookNotSet()
    return web.json_response(hook.public())


async def put_webhook(request: web.Request) -> web.Response:
    """`{"url": ..., "rotate_secret": false}`: set where `image.ready`/`image.failed` events go.

    The signing secret is created with the first URL and kept when the URL changes, so a receiver
    need not be redeployed; `rotate_secret: true` replaces it.
    """
    user_id = await resolve_user(request)
    body = await json_object(request)
    rotate = body.get("rotate_secret", False)
    if not isinstance(rotate, bool):
        raise InvalidField("rotate_secret must be true or false")
    url = check_url(body.get("url"), request.app[SETTINGS].webhooks.allow_private)
    hook = await request.app[WEBHOOKS].put(user_id, url, new_secret=rotate)
    return web.json_response(hook.public())


async def delete_webhook(request: web.Request) -> web.Response:
    """Stop sending events (204, also when none was set)."""
    user_id = await resolve_user(request)
    await request.app[WEBHOOKS].delete(user_id)
    return web.Response(status=204)
