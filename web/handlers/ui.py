"""The browser UI: one static page and its assets, talking to the public API with the user's key.

No build step: plain HTML, CSS and JavaScript in `web/static/`. The page gets a strict Content
Security Policy (scripts and styles only from this origin, nothing inline) and sends no Referer,
so the signed links it shows never leak to other sites.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from pipeline.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ASSETS = frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file() and p.name != "index.html")
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob: http: https:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def index(request: web.Request) -> web.FileResponse:
    """`GET /ui`: the single page (sign in, upload, gallery)."""
    return web.FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


async def root(request: web.Request) -> web.Response:
    """`GET /`: people who open the server's address land on the UI."""
    raise web.HTTPFound("/ui")


async def asset(request: web.Request) -> web.FileResponse:
    """`GET /ui/assets/{name}`: only the files shipped in `web/static/` (a missing one is a JSON 404,
    which aiohttp's own static route does not give)."""
    name = request.match_info["name"]
    if name not in ASSETS:
        raise NotFound(f"no asset {name!r}")
    return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})


def setup(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/ui", index)
    app.router.add_get("/ui/assets/{name}", asset)
