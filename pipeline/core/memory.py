"""Give freed memory back to the system after a burst, instead of keeping the high-water mark.

glibc serves large allocations (an upload's part buffer, megabytes) with `mmap` at first, but
raises that threshold to the largest block freed so far (up to 32 MiB): after the first burst
of uploads, every later buffer comes from the heap, where freed blocks stay with the process. A
fixed threshold keeps big buffers on `mmap`, returned to the system the moment they are freed;
`trim()` hands back what the heap can spare once a burst is over. No-ops off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks of at least this size (part buffers, and the 256 KiB chunks of every transfer) are
#: mapped, and unmapped when freed: glibc's own starting value, kept from moving. Keeping the
#: chunks off the heap is what lets it shrink after a burst (measured, BENCHMARKS.md: 1 MiB left
#: ~70 MiB behind after 150 x 8 MiB uploads, this ~5 MiB, for ~10% more CPU per streamed MiB).
MMAP_THRESHOLD = 256 * 1024
#: Free memory the heap keeps at its top before shrinking (a fixed mmap threshold also pins this
#: one at 128 KiB, and the heap would shrink and regrow, faulting pages in, on every chunk).
TRIM_THRESHOLD = 16 * 1024 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def keep_big_blocks_mapped() -> None:
    """Fix glibc's mmap and trim thresholds (called once, at process start)."""
    if _LIBC is None:
        return
    if not (
        _LIBC.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and _LIBC.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ):
        log.warning("mallopt refused; freed upload buffers may stay with the process")


def trim() -> None:
    """Return the heap's free memory to the system (a few milliseconds)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
