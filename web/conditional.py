"""Conditional GET (RFC 9110 section 13): is the client's copy still the current one?

Read here, for downloads and the UI's files alike, rather than through aiohttp: its
`request.if_modified_since` (which its `FileResponse` uses too) lets `OverflowError` out of a date
with a 20-digit year, and reads dates written in Arabic-Indic digits.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.core.untrusted import http_date


def not_modified(headers: Mapping[str, str], etag: str, modified: float) -> bool:
    """True when the client's copy is current (answer 304): `If-None-Match` names `etag`, or,
    without it, `If-Modified-Since` is no earlier than `modified` (a Unix time). A date that is
    not a valid HTTP date is ignored, as RFC 9110 13.1.3 asks."""
    if_none_match = headers.get("If-None-Match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or etag in tags
    since = http_date(headers.get("If-Modified-Since"))
    return since is not None and int(modified) <= int(since.timestamp())
