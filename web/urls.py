"""Public URLs of an image and its renditions, as the API hands them out."""

from __future__ import annotations

from urllib.parse import urlencode


def status_url(user_id: str, image_id: str, then: str = "") -> str:
    """The image's own URL, or (`then`: "/upload-parts", ...) one of its sub-resources'."""
    return f"/images/{image_id}{then}?{urlencode({'user_id': user_id})}"


def original_url(user_id: str, image_id: str) -> str:
    return f"/download/image?{urlencode({'user_id': user_id, 'image_id': image_id})}"


def thumbnail_url(user_id: str, image_id: str, size: str) -> str:
    return f"/download/thumbnail?{urlencode({'user_id': user_id, 'image_id': image_id, 'size': size})}"
