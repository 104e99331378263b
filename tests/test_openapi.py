"""OpenAPI: every route is described and the document is valid OpenAPI 3.1."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

Client = TestClient[Any, Any]


async def test_every_route_is_described_and_the_document_is_valid(api: Client) -> None:
    document = await (await api.get("/openapi.json")).json()
    from openapi_spec_validator import validate  # jsonschema: 0.7 s to import, only here

    validate(document)  # OpenAPI 3.1 schema
    described = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    routes = {
        (route.resource.canonical, route.method.lower())
        for route in api.server.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    pages = {
        ("/openapi.json", "get"),
        ("/docs", "get"),
        ("/", "get"),
        ("/ui", "get"),
        ("/ui/assets/{name}", "get"),
    }
    assert routes - pages <= described
    page = await api.get("/docs")
    assert page.status == 200 and "/images/{image_id}/url" in await page.text()
