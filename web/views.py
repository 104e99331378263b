"""How an image is shown to clients: its description, and links that work without a key.

Shared by the handlers that answer with image descriptions (status, listing, uploads) or links.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from pipeline.core.errors import HostNotAllowed
from pipeline.core.image_record import ImageRecord
from web import urls
from web.keys import BACKEND, LINKS, PUBLIC, SETTINGS
from web.links import version_of
from web.public import base_of, extension

#: How long a listing's thumbnail links work (capped by the link maximum): a gallery shows a
#: thumbnail once, so the link only has to outlive the page load, with room for a slow network.
THUMBNAIL_LINK_SECONDS = 3600


def describe(request: web.Request, user_id: str, record: ImageRecord) -> dict[str, Any]:
    """An image as clients see it: the record's public fields and where to fetch things (its
    public URLs too, while it is public)."""
    body: dict[str, Any] = {"user_id": user_id, **record.public()}
    if (public := public_urls(request, record)) is not None:
        body["public_urls"] = public
    body["status_url"] = urls.status_url(user_id, record.image_id)
    body["original_url"] = urls.original_url(user_id, record.image_id)
    if record.state == "ready":
        body["renditions"] = {
            name: {
                "url": urls.thumbnail_url(user_id, record.image_id, name),
                **{k: r.get(k) for k in ("width", "height", "bytes", "content_type")},
            }
            for name, r in record.renditions.items()
        }
    return body


async def thumbnail_links(request: web.Request, user_id: str, record: ImageRecord) -> dict[str, str]:
    """Links that need no key to the image's stored renditions, each signed once (none before
    they are made): `thumbnail_url`, the first rendition's, and `thumbnail_srcset`, every one
    with its width (the browser takes the smallest that fills its tile at its pixel ratio).

    `<img>` cannot send the key; with these in the listing a gallery needs no request per image,
    and makes and charges nothing (a variant per tile, made on its first view and counted against
    its owner, was what it asked for before). Each link is the one `GET /images/{id}/url` makes
    (`link_to`)."""
    links: dict[str, str] = {}
    candidates = []
    for position, spec in enumerate(request.app[SETTINGS].imaging.renditions):
        url = await _rendition_link(request, user_id, record, spec.name)
        if url is None:
            continue
        if position == 0:
            links["thumbnail_url"] = url
        width = record.renditions[spec.name].get("width")
        if isinstance(width, int):
            candidates.append(f"{url} {width}w")
    if candidates:
        links["thumbnail_srcset"] = ", ".join(candidates)
    return links


async def _rendition_link(
    request: web.Request, user_id: str, record: ImageRecord, rendition: str
) -> str | None:
    settings = request.app[SETTINGS]
    made = record.renditions.get(rendition)  # empty unless ready
    if made is None:
        return None
    seconds = min(THUMBNAIL_LINK_SECONDS, settings.accounts.link_max_seconds)
    url, _ = await link_to(
        request,
        user_id,
        record.image_id,
        rendition,
        settings.aws.dest_bucket,
        str(made["key"]),
        record.source_etag,
        seconds,
    )
    return url


async def link_to(
    request: web.Request,
    user_id: str,
    image_id: str,
    rendition: str,
    bucket: str,
    key: str,
    source_etag: str,
    seconds: int,
) -> tuple[str, int]:
    """A URL that serves `rendition` without a key for `seconds`, and when it expires: HMAC-signed
    and pinned to the upload whose original has `source_etag`, or presigned by S3 with
    `IMGSVC_LINKS=s3`. Local computation either way: no request leaves the process."""
    if request.app[SETTINGS].accounts.links == "s3":
        url = await request.app[BACKEND].presign_get(bucket, key, seconds)
        if url is not None:  # None on the local backend: settings refuse that combination
            return url, int(datetime.now(UTC).timestamp()) + seconds
    return signed_link(request, user_id, image_id, rendition, source_etag, seconds)


def signed_link(
    request: web.Request, user_id: str, image_id: str, name: str, source_etag: str, seconds: int
) -> tuple[str, int]:
    """An HMAC-signed `/links/...` URL for `name` (a rendition, `original` or a variant's link
    name) of the upload whose original has `source_etag`, and when it expires."""
    version = version_of(source_etag)
    signature, expires = request.app[LINKS].sign(user_id, image_id, name, version, seconds)
    query = urlencode({"v": version, "expires": expires, "sig": signature})
    return f"{public_base(request)}/links/{user_id}/{image_id}/{name}?{query}", expires


def public_urls(request: web.Request, record: ImageRecord) -> dict[str, str] | None:
    """Every public URL of a public image (its original, each rendition made, each preset), or
    None while it is private or the deployment serves no public images."""
    settings = request.app[SETTINGS]
    if not settings.web.public_images:
        return None
    if record.public_nonce is None:
        return None
    try:
        delivery = delivery_base(request)
    except HostNotAllowed:  # no URL on a host we do not serve; the answer stands without them
        return None
    base = base_of(delivery, record, request.app[PUBLIC])
    if base is None:
        return None
    urls = {"original": f"{base}/original.{extension(str(record.item.get('format') or 'jpeg'))}"}
    for spec in settings.imaging.renditions:
        if spec.name in record.renditions:
            urls[spec.name] = f"{base}/{spec.filename}"
    for name, query in settings.variants.presets:
        fmt = dict(query).get("format", "jpeg")
        urls[name] = f"{base}/{name}.{'auto' if fmt == 'auto' else extension(fmt)}"
    return urls


def delivery_base(request: web.Request) -> str:
    """Where public URLs point: `IMGSVC_DELIVERY_URL` (a CDN's host), else where the API is."""
    return request.app[SETTINGS].web.delivery_url or public_base(request)


def public_base(request: web.Request) -> str:
    """Where clients reach this API: `IMGSVC_PUBLIC_URL`, else the scheme and host they used,
    if that host is one `IMGSVC_ALLOWED_HOSTS` names: a link must never point where a forged
    `Host` header says (a link to `evil.example` handed to a user who trusts ours)."""
    web_settings = request.app[SETTINGS].web
    if web_settings.public_url:
        return web_settings.public_url
    host = request.host
    if not host_allowed(host, web_settings.allowed_hosts):
        raise HostNotAllowed(
            f"links are made for IMGSVC_PUBLIC_URL or a host in IMGSVC_ALLOWED_HOSTS; "
            f"this request named Host: {host[:100]}"
        )
    return f"{request.scheme}://{host}"


_HOST = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(:[0-9]{1,5})?")
#: Hosts links may follow when `IMGSVC_ALLOWED_HOSTS` names none: this machine's.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """Whether `host` (a Host header, port and all) is one of `allowed` (names without ports; a
    leading `.` allows subdomains, `*` any host), or loopback when `allowed` is empty."""
    name = host.strip().lower()
    if not _HOST.fullmatch(name):  # userinfo, paths, spaces: never a host we make links on
        return False
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    for pattern in allowed or LOOPBACK_HOSTS:
        if pattern in ("*", name) or (pattern.startswith(".") and name.endswith(pattern)):
            return True
    return False
