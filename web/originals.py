"""Which bytes an image's original is served as: the file as uploaded, or, while it carries
private metadata (`IMGSVC_STRIP_ORIGINALS`, on by default), its stripped copy
(`pipeline.imaging.strip`), made on the first request by a variant worker and stored beside the
image's variants. Every way an original leaves the service comes here: the owner's download (who
may ask `?as_uploaded=true`), signed links and public URLs.
"""

from __future__ import annotations

from aiohttp import web

from config.settings import Settings
from pipeline.core.errors import ImageChanged, NotFound
from pipeline.core.image_record import ImageRecord
from pipeline.core.layout import ImageRef
from pipeline.imaging.variants import StrippedOriginal
from web.keys import SETTINGS
from web.serving import serve_object, serve_variant


def stripped_copy(settings: Settings, record: ImageRecord) -> StrippedOriginal | None:
    """The stripped copy to serve instead of `record`'s original, or None to serve the original:
    stripping is off, or the worker that made its renditions found nothing private in it (an
    image processed before that was read is stripped all the same), or it is a GIF (no EXIF)."""
    if not settings.imaging.strip_originals:
        return None
    item = record.item
    fmt = str(item.get("format") or "")
    metadata = item.get("metadata")
    if fmt in ("", "gif") or (isinstance(metadata, dict) and not metadata.get("private")):
        return None
    content_type = str(item.get("content_type") or f"image/{fmt}")
    return StrippedOriginal(None, None, format=fmt, original_type=content_type)


async def serve_original(
    request: web.Request, ref: ImageRef, record: ImageRecord, *, as_uploaded: bool = False
) -> web.StreamResponse:
    """Stream the original of `record` (pinned to its upload), stripped unless `as_uploaded`."""
    settings = request.app[SETTINGS]
    copy = None if as_uploaded else stripped_copy(settings, record)
    if copy is not None:
        return await serve_variant(request, ref, record, copy, negotiated=False)
    try:
        return await serve_object(
            request, settings.aws.source_bucket, ref.source_key, if_match=record.source_etag
        )
    except NotFound:
        raise ImageChanged() from None
