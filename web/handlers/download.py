"""Downloads of originals and renditions: the original system's routes and their options."""

from __future__ import annotations

from aiohttp import web

from config.settings import OUTPUT_FORMATS
from pipeline.core.errors import ImageChanged, ImageNotFound, InvalidField, RenditionNotFound
from pipeline.core.untrusted import ascii_flag
from web.keys import RECORDS, SETTINGS
from web.originals import serve_original
from web.serving import VARY, best_for, image_ref, locate, serve_object


async def download_image(request: web.Request) -> web.StreamResponse:
    """`GET /download/image?user_id=&image_id=[&as_uploaded=true]`: the original, without its
    private metadata unless its owner (the only caller who finds it) asks for it as uploaded."""
    _, _, ref = await image_ref(request)
    as_uploaded = ascii_flag(request.query.get("as_uploaded", "false"))
    if as_uploaded is None:
        raise InvalidField("as_uploaded must be true or false")
    record = await request.app[RECORDS].read(ref)
    if record is None or record.state == "awaiting_upload":
        raise ImageNotFound()
    try:
        return await serve_original(request, ref, record, as_uploaded=as_uploaded)
    except ImageChanged:  # replaced or deleted since the record was read
        raise ImageNotFound() from None


async def download_thumbnail(request: web.Request) -> web.StreamResponse:
    """`GET /download/thumbnail?user_id=&image_id=[&size=]`: a rendition, once it is ready."""
    _, _, ref = await image_ref(request)
    settings = request.app[SETTINGS]
    specs = settings.imaging.renditions
    size = request.query.get("size") or specs[0].name
    spec = settings.imaging.rendition(size)
    if spec is None:
        raise InvalidField(f"size must be one of {', '.join(s.name for s in specs)}")
    fmt = request.query.get("format")
    if fmt is not None and fmt != "auto" and fmt not in OUTPUT_FORMATS:
        raise InvalidField(f"format must be one of auto, {', '.join(OUTPUT_FORMATS)}")
    same_size = [s for s in specs if s.max_side == spec.max_side]
    if fmt == "auto":  # the best format this client accepts, same size
        spec = best_for(request.headers.get("Accept", ""), same_size)
        request[VARY] = "Accept"
    elif fmt is not None and fmt != spec.format:
        match = next((s for s in same_size if s.format == fmt), None)
        if match is None:
            raise RenditionNotFound(
                f"no {fmt} rendition of size {spec.max_side} is made; the renditions are "
                + ", ".join(s.name for s in specs)
            )
        spec = match
    found = await locate(request, ref, spec.name)
    if isinstance(found, web.Response):
        return found
    return await serve_object(request, found.bucket, found.key, source_etag=found.source_etag)
