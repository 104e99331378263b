"""The browser UI: one static page and its assets, talking to the public API with the user's key.

No build step: plain HTML, CSS and JavaScript in `web/static/`. The page gets a strict Content
Security Policy (scripts and styles only from this origin, nothing inline) and sends no Referer,
so the signed links it shows never leak to other sites.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import mimetypes
from collections.abc import Callable, Mapping
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from pipeline.core.errors import NotFound
from web.conditional import not_modified
from web.keys import BACKEND, SETTINGS

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
ASSETS = frozenset(p.name for p in STATIC_DIR.iterdir() if p.is_file() and p.name != "index.html")
#: The page's note of the upload modes offered (its content is replaced by this deployment's).
MODES_META = b'<meta name="upload-modes" content="api">'
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob: http: https:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


async def index(request: web.Request) -> web.Response:
    """`GET /ui`: the single page (sign in, upload, gallery). Where presigned uploads are offered,
    the page may also connect to the storage origin their URLs point at."""
    headers = PAGE_HEADERS
    origin = await _upload_origin(request)
    if origin:
        policy = headers["Content-Security-Policy"].replace(
            "connect-src 'self'", f"connect-src 'self' {origin}"
        )
        headers = {**headers, "Content-Security-Policy": policy}
    # The upload modes the deployment offers, for the page to choose without a refused request.
    settings = request.app[SETTINGS]
    modes = ",".join(sorted(settings.web.upload_modes))
    meta = f'<meta name="upload-modes" content="{modes}">'
    if settings.aws.mode in ("embedded", "local"):  # where this process wrote the demo users' keys
        where = html.escape(str(settings.accounts.demo_keys_file.resolve()), quote=True)
        meta += f'\n  <meta name="demo-keys" content="{where}">'
    return await _static(request, "index.html", headers, lambda body: body.replace(MODES_META, meta.encode()))


async def _upload_origin(request: web.Request) -> str | None:
    """The scheme and host of this deployment's presigned upload URLs (S3's), if it offers them;
    signing one is local computation."""
    settings = request.app[SETTINGS]
    if "presigned" not in settings.web.upload_modes:
        return None
    signed = await request.app[BACKEND].presign_put(
        settings.aws.source_bucket, "origin", 60, "image/jpeg", 1, {}
    )
    if signed is None:  # the local backend: its upload URLs are this API's own
        return None
    parts = urlsplit(signed[0])
    return f"{parts.scheme}://{parts.netloc}"


async def root(request: web.Request) -> web.Response:
    """`GET /`: people who open the server's address land on the UI."""
    raise web.HTTPFound("/ui")


async def asset(request: web.Request) -> web.Response:
    """`GET /ui/assets/{name}`: only the files shipped in `web/static/` (a missing one is a JSON 404,
    which aiohttp's own static route does not give)."""
    name = request.match_info["name"]
    if name not in ASSETS:
        raise NotFound(f"no asset {name!r}")
    return await _static(request, name, {"Cache-Control": "no-cache"})


async def _static(
    request: web.Request,
    name: str,
    headers: Mapping[str, str],
    transform: Callable[[bytes], bytes] | None = None,
) -> web.Response:
    """One file of `web/static/` (a few KB: read whole), with an ETag for revalidation.

    Not aiohttp's `FileResponse`: its conditional and Range parsing dropped the connection on a
    20-digit year in If-Modified-Since, If-Unmodified-Since or If-Range, and answered a bad Range
    with an empty 416. Range is ignored here, as RFC 9110 14.2 allows.
    """
    path = STATIC_DIR / name
    body, modified = await asyncio.to_thread(lambda: (path.read_bytes(), path.stat().st_mtime))
    if transform is not None:
        body = transform(body)
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    headers = {**headers, "ETag": etag, "Last-Modified": formatdate(modified, usegmt=True)}
    if not_modified(request.headers, etag, modified):
        return web.Response(status=304, headers=headers)
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return web.Response(body=body, content_type=content_type, headers=headers)


def setup(app: web.Application) -> None:
    app.router.add_get("/", root)
    app.router.add_get("/ui", index)
    app.router.add_get("/ui/assets/{name}", asset)
