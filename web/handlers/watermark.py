"""The caller's watermark: `GET`, `PUT` and `DELETE /watermark`. The image variants lay over
themselves with `watermark=true` (`web.watermarks`)."""

from __future__ import annotations

from aiohttp import web

from pipeline.core.errors import TooLarge, WatermarkNotSet
from web.identity import resolve_user
from web.keys import ACCOUNTS, SETTINGS
from web.watermarks import Overlay, checked


async def get_watermark(request: web.Request) -> web.Response:
    """What the watermark is (format, size, digest); 404 `watermark_not_set` if none."""
    user_id = await resolve_user(request)
    overlay = Overlay.of_item((await request.app[ACCOUNTS].user(user_id)).get("watermark"))
    if overlay is None:
        raise WatermarkNotSet()
    return web.json_response(overlay.public())


async def put_watermark(request: web.Request) -> web.Response:
    """The body is the watermark image (PNG, WebP or JPEG, at most
    `IMGSVC_VARIANT_WATERMARK_MAX_BYTES`): kept with the user; variants made with the previous
    one are not served for `watermark=true` again (their name holds its digest)."""
    user_id = await resolve_user(request)
    limits = request.app[SETTINGS].variants
    most = limits.watermark_max_bytes
    if (request.content_length or 0) > most:
        raise TooLarge(f"a watermark may be at most {most} bytes")
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > most:
            raise TooLarge(f"a watermark may be at most {most} bytes")
    overlay = checked(bytes(body), limits)
    await request.app[ACCOUNTS].set_watermark(user_id, overlay.as_item())
    return web.json_response(overlay.public())


async def delete_watermark(request: web.Request) -> web.Response:
    """No watermark any more (204, also when none was set)."""
    user_id = await resolve_user(request)
    await request.app[ACCOUNTS].set_watermark(user_id, None)
    return web.Response(status=204)
