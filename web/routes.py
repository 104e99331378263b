"""The route table, in one place."""

from __future__ import annotations

from aiohttp import web

from web import openapi
from web.handlers import download, health, images, links, presigned, public, ui, upload, variants, webhook
from web.middlewares import error_response


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


def setup_routes(app: web.Application) -> None:
    _routes(app)
    ui.setup(app)
    for route in app.router.routes():
        if isinstance(route, web.ResourceRoute):
            route._expect_handler = expect_continue  # (aiohttp sets it only when a route is added)


def _routes(app: web.Application) -> None:
    app.router.add_post("/upload", upload.compat_upload)
    app.router.add_get("/download/image", download.download_image)
    app.router.add_get("/download/thumbnail", download.download_thumbnail)
    app.router.add_get("/images", images.list_images)
    app.router.add_post("/images", upload.post_image)
    app.router.add_post("/images/upload-url", presigned.create_upload_url)
    app.router.add_put("/uploads/{user_id}/{image_id}", presigned.put_upload)
    # `upload-url` is a route, never an image id (`RESERVED_IMAGE_IDS`).
    image = "/images/{image_id:(?!upload-url$)[^/]+}"
    app.router.add_put(image, upload.put_image)
    app.router.add_get(image, images.image_status)
    app.router.add_delete(image, images.delete_image)
    app.router.add_patch(image, public.patch_image)
    app.router.add_get("/images/{image_id}/url", links.create_link)
    app.router.add_get("/images/{image_id}/variant", variants.get_variant)
    app.router.add_put("/images/{image_id}/focal-point", variants.put_focal_point)
    app.router.add_get("/links/{user_id}/{image_id}/{rendition}", links.follow_link)
    app.router.add_get("/p/{token}/{version}/{name}", public.follow_public)
    app.router.add_get("/webhook", webhook.get_webhook)
    app.router.add_put("/webhook", webhook.put_webhook)
    app.router.add_delete("/webhook", webhook.delete_webhook)
    app.router.add_get("/health/live", health.live)
    app.router.add_get("/health/ready", health.ready)
    app.router.add_get("/metrics", health.metrics)
    app.router.add_get("/openapi.json", openapi.openapi_json)
    app.router.add_get("/docs", openapi.docs)
