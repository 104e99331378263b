"""Byte ranges (RFC 9110 section 14): which part of an object a GET asks for.

Written out rather than taken from aiohttp's `request.http_range`, which turns `bytes=-0` into
"from 0 to the end" (a 206 of the whole file where the RFC says 416) and accepts digits that are
not ASCII. One range is served; a request for several gets the whole object, as the RFC allows.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.core.errors import RangeNotSatisfiable
from pipeline.core.untrusted import ascii_int

#: Longer Range headers are not ours to parse (ignored: the whole object is sent).
MAX_HEADER = 256
_MAX_POSITION = 10**18 - 1


def parse_range(headers: Mapping[str, str], size: int, etag: str) -> tuple[int, int] | None:
    """One inclusive (first, last) byte range, or None for the whole object.

    Raises `RangeNotSatisfiable` (416) for a well-formed range that selects nothing: starting at
    or past the end, or a suffix of zero bytes. A malformed header is ignored (RFC 9110 14.2).
    """
    header = headers.get("Range")
    if header is None:
        return None
    if_range = headers.get("If-Range")
    if if_range is not None and if_range.strip() != etag:
        return None  # the client's copy is stale: send it the whole, current object
    if len(header) > MAX_HEADER:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_raw, dash, last_raw = spec.strip().partition("-")
    if not dash:
        return None
    first_raw, last_raw = first_raw.strip(), last_raw.strip()
    if not first_raw:  # suffix: the last N bytes
        suffix = ascii_int(last_raw, 0, _MAX_POSITION)
        if suffix is None:
            return None
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(f"the object has {size} bytes")
        return max(0, size - suffix), size - 1
    first = ascii_int(first_raw, 0, _MAX_POSITION)
    last = ascii_int(last_raw, 0, _MAX_POSITION) if last_raw else _MAX_POSITION
    if first is None or last is None or last < first:
        return None
    if first >= size:
        raise RangeNotSatisfiable(f"the object has {size} bytes")
    return first, min(last, size - 1)
