"""Parsing what clients and queues send, with bounds: numbers in ASCII only, JSON of bounded size
and depth.

Python's own parsers are generous where a service must not be: `str.isdigit()` is true for
superscripts and Arabic-Indic digits (some of which `int()` then refuses), and `json.loads`
of a deeply nested document raises `RecursionError`, not `ValueError`. These helpers turn every
such input into one well-known refusal, so callers answer it with a clear error.
"""

from __future__ import annotations

import json
from typing import Any

#: Nesting deeper than this is refused: no document the service reads needs more than a few levels.
MAX_JSON_DEPTH = 32


class Malformed(ValueError):
    """The input is not what it claims to be (the message says why); callers map it to their error."""


def ascii_int(raw: str, lo: int, hi: int) -> int | None:
    """`raw` as an int in [lo, hi], or None unless it is 1-18 ASCII digits in that range."""
    if not (0 < len(raw) <= 18 and raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if lo <= value <= hi else None


def loads(text: str | bytes, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads` that refuses documents over `max_bytes` or nested deeper than `max_depth`."""
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
    return document


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
