"""`GET /images/{image_id}/variant`: any size, crop and format, made once and then streamed;
`PUT /images/{image_id}/focal-point`: where `crop=focal` centres its cut."""

from __future__ import annotations

from aiohttp import web

from pipeline.core.errors import ImageNotFound, InvalidField
from pipeline.imaging.variants import parse_variant
from web.bodies import json_object
from web.keys import RECORDS, SETTINGS
from web.serving import image_ref, not_ready, serve_variant
from web.views import describe


async def get_variant(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    user_id, image_id, ref = await image_ref(request, request.match_info["image_id"])
    spec, negotiated = parse_variant(request.query, request.headers.get("Accept", ""), settings.variants)
    record = await request.app[RECORDS].read(ref)
    if record is None:
        raise ImageNotFound()
    if record.state != "ready":
        return not_ready(record, user_id, image_id, settings.web.retry_after)
    return await serve_variant(request, ref, record, spec, negotiated)


async def put_focal_point(request: web.Request) -> web.Response:
    """Fractions of the displayed image, from its top left corner: `{"x": 0.3, "y": 0.6}`."""
    user_id, _, ref = await image_ref(request, request.match_info["image_id"])
    body = await json_object(request)
    point = {axis: _fraction(body, axis) for axis in ("x", "y")}
    records = request.app[RECORDS]
    updated = await records.set_focal_point(ref, point)
    if updated is None:
        raise ImageNotFound()
    return web.json_response(describe(request, user_id, updated))


def _fraction(body: dict[str, object], axis: str) -> float:
    value = body.get(axis)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise InvalidField(f"{axis} must be a number from 0 to 1 (a fraction of the displayed image)")
    # Four decimals is finer than any pixel of a 4096-pixel variant, and keeps the number
    # within what DynamoDB stores (no subnormals such as 2e-309).
    return round(float(value), 4)
