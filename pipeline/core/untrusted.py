"""Parsing what clients and queues send, with bounds: numbers and dates in ASCII only, JSON of
bounded size and depth and of valid Unicode, text that encodes.

Python's own parsers are generous where a service must not be: `str.isdigit()` is true for
superscripts and Arabic-Indic digits (some of which `int()` then refuses), `json.loads` of a
deeply nested document raises `RecursionError`, not `ValueError`, and decodes `"\\ud800"` to a
string no encoder accepts; `email.utils.parsedate` reads any year, which `datetime` then refuses
with `OverflowError`. These helpers turn every such input into one well-known refusal (or, for
headers the RFC says to ignore, into None), so callers answer it with a clear error.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import parsedate
from typing import Any

#: Nesting deeper than this is refused: no document the service reads needs more than a few levels.
MAX_JSON_DEPTH = 32
#: An HTTP date is 29 characters (`Sun, 06 Nov 1994 08:49:37 GMT`); much longer is none.
MAX_HTTP_DATE = 64
#: What `ascii_number` reads: digits with an optional point and exponent (a JSON number, unsigned).
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?", re.ASCII)
#: In a decoded `str` a surrogate code point is always a lone one (pairs decode to one character).
_SURROGATE = re.compile("[\ud800-\udfff]")


class Malformed(ValueError):
    """The input is not what it claims to be (the message says why); callers map it to their error."""


def ascii_int(raw: str, lo: int, hi: int) -> int | None:
    """`raw` as an int in [lo, hi], or None unless it is 1-18 ASCII digits in that range."""
    if not (0 < len(raw) <= 18 and raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if lo <= value <= hi else None


def ascii_flag(raw: str) -> bool | None:
    """`true` or `1`, `false` or `0` (any case), or None for anything else."""
    value = raw.lower()
    return True if value in ("true", "1") else False if value in ("false", "0") else None


def ascii_number(raw: str, lo: float, hi: float) -> float | None:
    """`raw` as a float in [lo, hi], or None unless it is a plain ASCII decimal (`2`, `0.5`, `.5`,
    `1e-3`); `float()` would also take `٣`, `1_0`, ` 5`, `nan` and `inf`."""
    if len(raw) > 32 or not _DECIMAL.fullmatch(raw):
        return None
    value = float(raw)
    return value if lo <= value <= hi else None


def loads(text: str | bytes, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads` that refuses documents over `max_bytes`, nested deeper than `max_depth`, or
    with a string holding a lone surrogate (`"\\udc80"`: valid JSON syntax, but no Unicode text;
    it would fail later, wherever the string is encoded, stored or sent on)."""
    if len(text) > max_bytes:
        raise Malformed(f"the document is larger than {max_bytes} bytes")
    try:
        document = json.loads(text)
    except RecursionError:
        raise Malformed(f"the document is nested deeper than {max_depth} levels") from None
    except (ValueError, TypeError):
        raise Malformed("the document is not valid JSON") from None
    if depth(document, max_depth) > max_depth:
        raise Malformed(f"the document is nested deeper than {max_depth} levels")
    if not _valid_unicode(document):
        raise Malformed("the document has a string with a lone surrogate (\\ud800-\\udfff)")
    return document


def utf8_text(raw: str) -> str:
    """`raw` with every lone surrogate replaced by U+FFFD, so that it encodes as UTF-8.

    aiohttp decodes request and multipart part headers with `surrogateescape`: a byte that is not
    UTF-8 (a Latin-1 file name, say) arrives as a lone surrogate, and `UnicodeEncodeError` would
    come out of whatever encodes the string later (`quote`, a hash, an AWS request).
    """
    if raw.isascii():
        return raw
    return raw.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def http_date(raw: str | None) -> datetime | None:
    """An HTTP date (RFC 9110 5.6.7) as an aware datetime, or None for anything else.

    Used instead of aiohttp's `request.if_modified_since`, which lets `OverflowError` out of a
    20-digit year and reads Arabic-Indic digits. RFC 9110 13.1.3: a recipient ignores a
    conditional header whose value is not a valid date, so a bad one is None, never an error.
    """
    if raw is None or len(raw) > MAX_HTTP_DATE or not raw.isascii():
        return None
    parts = parsedate(raw)
    if parts is None:
        return None
    try:
        return datetime(*parts[:6], tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def _valid_unicode(document: Any) -> bool:
    """No string in `document` (keys included) holds a surrogate code point; iterative, like `depth`."""
    stack = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if not node.isascii() and _SURROGATE.search(node):
                return False
        elif isinstance(node, dict):
            stack.extend(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return True


def depth(document: Any, stop_after: int = MAX_JSON_DEPTH) -> int:
    """How deeply lists and objects nest in `document` (a scalar is 0); stops counting past `stop_after`.

    Iterative, so a document that `json.loads` could still build (up to the interpreter's
    recursion limit) is measured without recursing.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > stop_after:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest
