"""The routes: the OpenAPI document's operations (`web.openapi`), and the pages around them."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from web import openapi
from web.handlers import (
    download,
    health,
    images,
    links,
    multipart,
    presigned,
    public,
    ui,
    upload,
    usage,
    variants,
    watermark,
    webhook,
)
from web.keys import SETTINGS
from web.middlewares import error_response

HANDLERS = (
    download,
    health,
    images,
    links,
    multipart,
    presigned,
    public,
    upload,
    usage,
    variants,
    watermark,
    webhook,
)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue` is answered 100 as aiohttp does; any other expectation is a JSON
    417 (aiohttp's own answer, raised before the middlewares, would be text/plain)."""
    if request.version != (1, 1):
        return None  # HTTP/1.0 has no expectations: ignored, as aiohttp does
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(
            417, "expectation_failed", "the only expectation understood is Expect: 100-continue"
        )
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


#: The handler modules an `operationId` ("module.function") names.
MODULES = {module.__name__.rsplit(".", 1)[1]: module for module in HANDLERS}
#: Routes narrower than their documented template (aiohttp patterns): `upload-url` is a route of
#: its own, never an image id (`RESERVED_IMAGE_IDS`).
NARROWER = {"/images/{image_id}": "/images/{image_id:(?!upload-url$)[^/]+}"}


def handler_of(operation_id: str) -> Handler:
    module, _, name = operation_id.partition(".")
    handler: Handler = getattr(MODULES[module], name)
    return handler


def setup_routes(app: web.Application) -> None:
    """Every operation of the OpenAPI document (built here, once), then the pages around it."""
    settings = app[SETTINGS]
    document = app[openapi.DOCUMENT] = openapi.build(settings.imaging, settings.variants)
    for method, template, operation_id in document.operations():
        path, handler = NARROWER.get(template, template), handler_of(operation_id)
        if method == "get":
            app.router.add_get(path, handler)  # and HEAD
        else:
            app.router.add_route(method.upper(), path, handler)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    app.router.add_get("/docs", openapi.docs)
    ui.setup(app)
    for route in app.router.routes():
        if isinstance(route, web.ResourceRoute):
            route._expect_handler = expect_continue  # (aiohttp sets it only when a route is added)
