"""Reading small JSON request bodies the same way everywhere (415 and 400 with their codes)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from pipeline.core.errors import InvalidJson, UnsupportedMediaType
from pipeline.core.untrusted import Malformed, loads


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; bodies over the app's `client_max_size` are 413 before this,
    nesting deeper than `untrusted.MAX_JSON_DEPTH` is 400."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType("send the request body as application/json")
    raw = await request.read()
    try:
        body = loads(raw, max_bytes=request.client_max_size)
    except Malformed as exc:
        raise InvalidJson(f"the request body is not acceptable JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidJson("the request body must be a JSON object")
    return body
